//! The address-conflict probe, engine side: which VIPs a pass may add at
//! once (held by the cluster before, or just probed free), the probes in
//! flight (on blocking threads, so a probe's wait never holds up the
//! engine's lease renewals), their answers, and the VIPs found in use by a
//! host outside the cluster, probed again every `--probe-retry`. The frames
//! are `net::probe`'s.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::{Engine, unix_ms};
use crate::{
    net::{
        Placement,
        netlink::NetSnapshot,
        probe::{self, Answers, ProbeError, ProbeTiming},
    },
    reconcile::{Plan, Verdict},
    role::Role,
    vip::Vip,
};

/// A host outside the cluster answered for a VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct InUse {
    pub mac: [u8; 6],
    pub interface: String,
    pub since_unix_ms: u64,
}

/// One finished probe of the VIPs of one interface.
pub(super) struct ProbeDone {
    interface: String,
    vips: Vec<Vip>,
    result: Result<Answers, ProbeError>,
}

pub(super) struct Probing {
    /// `None`: probing is off (`--probe-wait 0`).
    timing: Option<ProbeTiming>,
    retry: Duration,
    /// VIPs this agent held since it started (a VIP put back after a hand
    /// deletion is not probed again).
    held_here: BTreeSet<Vip>,
    /// Probed free: the next pass adds them.
    free: BTreeSet<Vip>,
    running: BTreeSet<Vip>,
    in_use: BTreeMap<Vip, InUse>,
    /// When a VIP found in use (or whose probe failed) is probed again.
    next_probe: BTreeMap<Vip, tokio::time::Instant>,
    done_tx: mpsc::UnboundedSender<ProbeDone>,
    pub(super) done_rx: mpsc::UnboundedReceiver<ProbeDone>,
}

impl Probing {
    pub(super) fn new(timing: Option<ProbeTiming>, retry: Duration) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Probing {
            timing,
            retry,
            held_here: BTreeSet::new(),
            free: BTreeSet::new(),
            running: BTreeSet::new(),
            in_use: BTreeMap::new(),
            next_probe: BTreeMap::new(),
            done_tx,
            done_rx,
        }
    }

    /// The host answering for `vip`, if a probe found one.
    pub(super) fn in_use(&self, vip: &Vip) -> Option<&InUse> {
        self.in_use.get(vip)
    }

    /// When the next VIP is due to be probed again.
    pub(super) fn due(&self) -> Option<tokio::time::Instant> {
        self.next_probe.values().min().copied()
    }

    /// Forgets what a follower has no use for: a new leader term probes
    /// afresh. VIPs held here stay cleared.
    pub(super) fn step_down(&mut self) {
        self.free.clear();
        self.in_use.clear();
        self.next_probe.clear();
    }
}

impl Engine {
    /// What a pass's gate is made of: the VIPs it may add without probing
    /// (held by the cluster as ZooKeeper records it, held by this agent,
    /// or probed free) and those found in use; `None` with probing off.
    pub(super) fn probe_sets(&self) -> Option<(BTreeSet<Vip>, BTreeSet<Vip>)> {
        self.probing.timing?;
        let p = &self.probing;
        let mut cleared = self.applied.record.held.clone();
        cleared.extend(p.held_here.iter().copied());
        cleared.extend(p.free.iter().copied());
        Some((cleared, p.in_use.keys().copied().collect()))
    }

    /// After a pass: what it held is cleared for good (until it leaves the
    /// configuration); the VIPs it holds back are probed, unless a probe is
    /// running or the retry is not due.
    pub(super) fn after_pass_probes(
        &mut self,
        snap: &NetSnapshot,
        plan: &Plan,
        held: &BTreeMap<Vip, Placement>,
    ) {
        let leading = self.applied.role == Role::Leader && self.lease_valid();
        let configured = &self.applied.vips;
        let p = &mut self.probing;
        p.held_here.extend(held.keys().copied());
        p.held_here.retain(|v| configured.contains(v));
        p.in_use.retain(|v, _| configured.contains(v));
        p.next_probe.retain(|v, _| configured.contains(v));
        p.free.clear();
        let Some(timing) = p.timing else { return };
        if !leading {
            return;
        }
        let now = tokio::time::Instant::now();
        let mut by_link: BTreeMap<u32, Vec<Vip>> = BTreeMap::new();
        for (vip, verdict) in &plan.addresses.verdicts {
            let (Verdict::Probe { placement } | Verdict::InUse { placement }) = verdict else {
                continue;
            };
            if p.running.contains(vip) || p.next_probe.get(vip).is_some_and(|t| *t > now) {
                continue;
            }
            by_link.entry(placement.ifindex).or_default().push(*vip);
        }
        for (ifindex, vips) in by_link {
            let Some(link) = snap.link(ifindex) else {
                continue;
            };
            let (interface, mac, tx) = (link.name.clone(), link.mac, p.done_tx.clone());
            debug!(interface = %interface, vips = ?vips.iter().map(ToString::to_string).collect::<Vec<_>>(),
                   "probing VIPs the cluster never held before adding them");
            for vip in &vips {
                p.running.insert(*vip);
                p.next_probe.remove(vip);
            }
            tokio::task::spawn_blocking(move || {
                let result = probe::probe(ifindex, mac, &vips, timing);
                let _ = tx.send(ProbeDone {
                    interface,
                    vips,
                    result,
                });
            });
        }
    }

    /// Takes in one finished probe: a VIP nobody answered for, or only a
    /// cluster node, is free (the next pass adds it); one a foreign MAC
    /// answered for is in use, and probed again after `--probe-retry`.
    pub(super) fn on_probe_done(&mut self, done: ProbeDone) {
        let ProbeDone {
            interface,
            vips,
            result,
        } = done;
        let retry_at = tokio::time::Instant::now() + self.probing.retry;
        for vip in &vips {
            self.probing.running.remove(vip);
        }
        let answers = match result {
            Ok(a) => a,
            Err(e) => {
                error!(interface = %interface, error = %e, "address probe failed; the VIPs are not added until a probe succeeds");
                self.status.send_modify(|s| s.probes.errors += 1);
                for vip in vips {
                    self.probing.next_probe.insert(vip, retry_at);
                }
                return;
            }
        };
        let mut cluster: BTreeSet<[u8; 6]> = self.applied.record.macs.clone();
        cluster.extend(self.links.values().map(|l| l.mac));
        debug!(interface = %interface, cluster_macs = ?cluster.iter().map(|m| mac_text(*m)).collect::<Vec<_>>(), "address probe done");
        let (mut free, mut from_cluster, mut in_use) = (0, 0, 0);
        for (vip, macs) in answers {
            let foreign: Vec<[u8; 6]> = macs.difference(&cluster).copied().collect();
            if let Some(mac) = foreign.first().copied() {
                in_use += 1;
                self.probing.next_probe.insert(vip, retry_at);
                let was = self.probing.in_use.get(&vip).map(|u| u.mac);
                if was != Some(mac) {
                    error!(vip = %vip, interface = %interface, mac = %mac_text(mac), retry = ?self.probing.retry,
                           "VIP not added: a host outside the cluster answers for this address; probing again periodically");
                    self.probing.in_use.insert(
                        vip,
                        InUse {
                            mac,
                            interface: interface.clone(),
                            since_unix_ms: unix_ms(),
                        },
                    );
                } else {
                    debug!(vip = %vip, mac = %mac_text(mac), "VIP still in use by another host");
                }
                continue;
            }
            if macs.is_empty() {
                free += 1;
            } else {
                from_cluster += 1;
                warn!(vip = %vip, interface = %interface,
                      macs = ?macs.iter().map(|m| mac_text(*m)).collect::<Vec<_>>(),
                      "address probe answered by a cluster node, not a foreign host: adding the VIP");
            }
            if self.probing.in_use.remove(&vip).is_some() {
                info!(vip = %vip, interface = %interface, "the host that used the VIP's address no longer answers; adding the VIP");
            }
            self.probing.next_probe.remove(&vip);
            self.probing.free.insert(vip);
        }
        self.status.send_modify(|s| {
            let p = &mut s.probes;
            p.probed += (free + from_cluster + in_use) as u64;
            p.free += free as u64;
            p.cluster_answers += from_cluster as u64;
            p.in_use += in_use as u64;
        });
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub(super) fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
