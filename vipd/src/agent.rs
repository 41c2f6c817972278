//! The engine: one task that owns the node's VIP state. It takes the role
//! and VIPs the source wants (`role::Desired`), netlink events, timers and
//! XDP conflict events, plans with `reconcile::plan`, and executes: netlink
//! writes, XDP map updates, announcements. It reports what it holds back to
//! the source so leadership is released only once the VIPs are gone (R3).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv6Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tokio::{
    sync::{mpsc, watch},
    time::{MissedTickBehavior, sleep_until},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, instrument, warn};
use vipd_common::{HELD_ROUTER, HeldVip};

use crate::{
    announce::{Announcement, Announcer},
    arp_offload::{ArpOffload, ConflictReader, ConflictReader6, OffloadError, XdpAttachment},
    config::{EngineArgs, XdpArgs, XdpMode},
    net::{
        AddrState, Link, Placement,
        ndp::forwarding,
        netlink::{NetEvent, NetSnapshot, Netlink, enable_promote_secondaries, monitor},
    },
    reconcile::{self, Action, Verdict},
    role::{Desired, EngineReport, Role},
    vip::Vip,
};

/// The XDP side, shared with the API (counters) behind a lock.
pub type SharedOffload = Arc<Mutex<ArpOffload>>;

/// What became of one configured VIP on the last pass. Serialized as the
/// strings of docs/API.md (`vips[].state`).
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum VipState {
    /// Configured here with vipd's mark.
    Held,
    /// No route matches: it cannot be served from this node.
    NoRoute,
    /// An unmarked address equal to the VIP exists: left alone.
    OperatorAddress,
    /// Adding (or removing a stale copy) failed.
    Error,
    /// Configured for the cluster; this node does not lead.
    NotLeader,
}

/// One VIP as the engine last saw it, for `vipctl status`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VipStatus {
    pub vip: Vip,
    pub state: VipState,
    pub interface: Option<String>,
    pub ifindex: Option<u32>,
    pub prefix_len: Option<u8>,
    pub error: Option<String>,
}

/// Outcome of the last reconcile pass.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReconcileSummary {
    pub passes: u64,
    pub at_unix_ms: u64,
    pub duration_us: u64,
    pub added: usize,
    pub removed: usize,
    pub errors: Vec<String>,
    pub error_passes: u64,
    /// Sum of all passes' durations, for a mean.
    pub duration_us_total: u64,
    /// Every pass's duration, for the metrics page's histogram.
    #[serde(skip)]
    pub durations: crate::metrics::PassDurations,
}

/// A foreign claim of one of our VIPs, as last seen.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConflictStatus {
    pub events: u64,
    pub last_mac: Option<String>,
    pub last_interface: Option<String>,
    pub last_unix_ms: Option<u64>,
}

/// Everything the engine shows the API.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EngineStatus {
    pub role: Role,
    pub term: u64,
    /// Leader terms this agent started (becoming leader, or a new term).
    pub leader_terms: u64,
    pub vips: Vec<VipStatus>,
    pub last_reconcile: ReconcileSummary,
    /// Where the program is attached, in which mode and why.
    pub xdp_attached: Vec<XdpAttachment>,
    /// The `--xdp-mode` setting (`None` until the engine starts).
    pub xdp_setting: Option<XdpMode>,
    pub xdp_errors: Vec<String>,
    pub conflicts: BTreeMap<Vip, ConflictStatus>,
    /// VIP -> interface name, for every VIP the engine knows a place for.
    pub interfaces: BTreeMap<Vip, String>,
    /// Lease renewals applied (address lifetimes and XDP expiry), R16.
    pub lease: LeaseStatus,
    /// VIP interfaces down or without carrier (R18).
    pub links: LinkHealth,
}

/// The VIP interfaces' state (R18): down ones withdraw this node after the
/// grace.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct LinkHealth {
    /// Interfaces of configured VIPs that are down or without carrier now.
    pub down: Vec<String>,
    /// Milliseconds they have been down (None: every one is up).
    pub down_for_ms: Option<u64>,
    /// Down past the grace: this node does not stand, a leader hands over.
    pub withdrawn: bool,
}

/// What the engine did with the leader's lease.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LeaseStatus {
    /// Milliseconds of lease left at the last renewal (None: no lease).
    pub remaining_ms_at_renewal: Option<u64>,
    pub address_lifetime_s: Option<u32>,
    pub renewals: u64,
    /// Time spent renewing, all renewals together and the last one.
    pub renewal_us_total: u64,
    pub last_renewal_us: u64,
    /// Address renewals that failed.
    pub errors: u64,
    /// Times the lease ran out while the engine still led.
    pub expired: u64,
}

/// The R8 sync task of a leader term: `remaining` more rounds, the next due
/// at `next`.
struct SyncRounds {
    remaining: u32,
    next: tokio::time::Instant,
}

pub struct Engine {
    engine: EngineArgs,
    xdp: XdpArgs,
    netlink: Netlink,
    announcer: Announcer,
    offload: Option<SharedOffload>,
    desired: watch::Receiver<Desired>,
    report: watch::Sender<EngineReport>,
    status: watch::Sender<EngineStatus>,
    applied: Desired,
    sync: Option<SyncRounds>,
    last_conflict_answer: HashMap<Vip, Instant>,
    /// Conflict answers the rate limit held back, due when it allows: a
    /// burst of claims must not end with the other node's word on the wire.
    pending_conflict_answers: BTreeMap<Vip, tokio::time::Instant>,
    last_conflict_log: HashMap<Vip, Instant>,
    /// Interfaces as of the last pass, by ifindex.
    links: HashMap<u32, Link>,
    /// Whether each interface holding an IPv6 VIP forwards IPv6, read on
    /// every pass: the XDP program's advertisements carry the Router flag
    /// then, as the unsolicited ones do.
    routers: HashMap<u32, bool>,
    /// The problem last logged per VIP (no route, operator address).
    reported: HashMap<Vip, VipState>,
    /// Foreign claims of our VIPs, as last seen (published as status).
    conflicts: BTreeMap<Vip, ConflictStatus>,
    /// Where each VIP we hold lives, as of the last pass: what a lease
    /// renewal renews.
    held: BTreeMap<Vip, Placement>,
    /// When native XDP attachments are next checked for lost answers
    /// (`None`: there are none).
    delivery_check: Option<tokio::time::Instant>,
    /// The last interface seen for each configured VIP: a link set down
    /// takes its routes along, but it is still the VIP's interface (R18).
    vip_links: BTreeMap<Vip, u32>,
    /// Since when some VIP interface is down (R18 grace).
    links_down_since: Option<tokio::time::Instant>,
    /// Down interfaces as last reported (after the grace).
    links_down: BTreeSet<String>,
    /// The next re-announcement after the sync rounds (R19).
    refresh: Option<tokio::time::Instant>,
}

/// Conflict answers per VIP are at most this frequent, so two agents
/// claiming one VIP cannot start an ARP storm.
const CONFLICT_ANSWER_EVERY: Duration = Duration::from_secs(1);
/// One log line per burst of conflict events per VIP.
const CONFLICT_LOG_EVERY: Duration = Duration::from_secs(5);

impl Engine {
    #[expect(
        clippy::too_many_arguments,
        reason = "the engine's wiring, built once in main"
    )]
    pub fn new(
        engine: EngineArgs,
        xdp: XdpArgs,
        netlink: Netlink,
        announcer: Announcer,
        offload: Option<SharedOffload>,
        desired: watch::Receiver<Desired>,
        report: watch::Sender<EngineReport>,
        status: watch::Sender<EngineStatus>,
    ) -> Self {
        if offload.is_some() {
            status.send_modify(|s| s.xdp_setting = Some(xdp.mode));
        }
        Engine {
            engine,
            xdp,
            netlink,
            announcer,
            offload,
            desired,
            report,
            status,
            applied: Desired::default(),
            sync: None,
            last_conflict_answer: HashMap::new(),
            pending_conflict_answers: BTreeMap::new(),
            last_conflict_log: HashMap::new(),
            links: HashMap::new(),
            routers: HashMap::new(),
            reported: HashMap::new(),
            conflicts: BTreeMap::new(),
            held: BTreeMap::new(),
            delivery_check: None,
            vip_links: BTreeMap::new(),
            links_down_since: None,
            links_down: BTreeSet::new(),
            refresh: None,
        }
    }

    /// Runs until `cancel`, then steps down: stop announcing, stop XDP
    /// replies, remove the VIPs, report that nothing is held.
    /// `conflicts` and `conflicts6` are the XDP program's reports of
    /// foreign claims, ARP and NDP.
    pub async fn run(
        mut self,
        mut conflicts: Option<ConflictReader>,
        mut conflicts6: Option<ConflictReader6>,
        cancel: CancellationToken,
    ) {
        let mut events = if self.engine.netlink_events {
            match monitor() {
                Ok(rx) => Some(rx),
                Err(e) => {
                    error!(error = %e, "cannot watch netlink events; reconciling on the timer only");
                    None
                }
            }
        } else {
            None
        };
        let mut tick = tokio::time::interval(self.engine.reconcile_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await;

        // First pass: whatever role we start in (a follower cleans residue, R6).
        let first = self.desired.borrow_and_update().clone();
        self.apply(first).await;

        loop {
            let sync_due = self.sync.as_ref().map(|s| s.next);
            let grace_due = match self.links_down_since {
                Some(since) if self.links_down.is_empty() => Some(since + self.engine.link_grace),
                _ => None,
            };
            let conflict_due = self.pending_conflict_answers.values().min().copied();
            let lease_end = match (self.applied.role, self.applied.lease) {
                (Role::Leader, Some(l)) => Some(tokio::time::Instant::from_std(l.until)),
                _ => None,
            };
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                changed = self.desired.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let d = self.desired.borrow_and_update().clone();
                    self.apply(d).await;
                }
                // Our own adds and renewals (R16: one per VIP per renewal)
                // describe what we just wrote: no pass for them.
                Some(ev) = recv_opt(&mut events) => if ev != NetEvent::OwnAddress {
                    self.debounce(ev, events.as_mut()).await;
                    self.reconcile(false).await;
                },
                () = sleep_opt(lease_end) => self.lease_ran_out().await,
                Some(c) = next_conflict(&mut conflicts) => self.on_conflict(c),
                Some(c) = next_conflict(&mut conflicts6) => self.on_conflict6(c),
                () = sleep_opt(sync_due) => self.sync_round().await,
                () = sleep_opt(self.refresh) => self.refresh_round().await,
                // The grace ran out: a pass reports the interfaces still down.
                () = sleep_opt(grace_due) => self.reconcile(false).await,
                () = sleep_opt(conflict_due) => self.answer_due_conflicts(),
                () = sleep_opt(self.delivery_check) => self.check_delivery(),
                _ = tick.tick() => self.reconcile(false).await,
            }
        }
        self.step_down("shutdown").await;
    }

    /// Applies what the source wants now.
    async fn apply(&mut self, d: Desired) {
        if self.applied.role == Role::Leader && self.applied.same_but_lease(&d) {
            self.applied.lease = d.lease;
            self.renew_lease().await;
            return;
        }
        let was_leader = self.applied.role == Role::Leader;
        let new_term = d.role == Role::Leader && (!was_leader || d.term != self.applied.term);
        if was_leader && d.role != Role::Leader {
            self.applied = d;
            self.step_down("lost leadership").await;
            return;
        }
        self.applied = d;
        if new_term {
            info!(
                term = self.applied.term,
                vips = self.applied.vips.len(),
                "leader term starts"
            );
            self.status.send_modify(|s| s.leader_terms += 1);
        }
        self.reconcile(new_term).await;
        if new_term {
            // The R8 rounds count from the term's first announcement.
            self.sync = (self.engine.garp_rounds > 0).then(|| SyncRounds {
                remaining: self.engine.garp_rounds,
                next: tokio::time::Instant::now() + self.engine.garp_interval,
            });
            self.refresh = None;
            if self.sync.is_none() {
                self.start_refresh();
            }
        }
    }

    /// Stops announcing and answering, removes every VIP we hold, reports.
    async fn step_down(&mut self, why: &str) {
        self.sync = None;
        self.refresh = None;
        self.pending_conflict_answers.clear();
        self.announcer.clear();
        if let Some(off) = &self.offload
            && let Err(e) = off.lock().expect("offload lock").clear_held()
        {
            error!(error = %e, "cannot clear the XDP held-VIP map");
        }
        if self.applied.role == Role::Leader {
            self.applied.role = Role::Follower;
        }
        info!(reason = why, "stepping down: removing VIPs");
        self.reconcile(false).await;
    }

    /// An acknowledged lease renewal (R16): restart every held address's
    /// kernel lifetime, with vipd's mark, and move the XDP entries' expiry.
    /// No reconcile pass: nothing but the lease changed.
    async fn renew_lease(&mut self) {
        let Some(lease) = self.applied.lease else {
            return;
        };
        let started = Instant::now();
        let mut errors = 0;
        for (vip, placement) in &self.held {
            // Checked before each write: a vipd resumed after a freeze must
            // not put back what the kernel let expire.
            if Instant::now() >= lease.until {
                warn!("lease ran out while renewing; no more renewals");
                break;
            }
            if let Err(e) = self
                .netlink
                .renew_vip(*vip, *placement, lease.address_lifetime)
                .await
            {
                errors += 1;
                warn!(vip = %vip, error = %e, "cannot renew the VIP's lifetime");
            }
        }
        if let Some(off) = &self.offload
            && self.xdp.responder
            && Instant::now() < lease.until
        {
            let entries = self.xdp_entries();
            if let Err(e) = set_held(&mut off.lock().expect("offload lock"), &entries) {
                warn!(error = %e, "cannot extend the XDP held-VIP entries");
            }
        }
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let remaining = lease.until.saturating_duration_since(Instant::now());
        self.status.send_modify(|s| {
            let l = &mut s.lease;
            l.renewals += 1;
            l.renewal_us_total = l.renewal_us_total.saturating_add(took);
            l.last_renewal_us = took;
            l.errors += errors;
            l.remaining_ms_at_renewal = Some(u64::try_from(remaining.as_millis()).unwrap_or(0));
            l.address_lifetime_s = Some(lease.address_lifetime);
        });
    }

    /// The lease ended while we led (the source did not renew it in time):
    /// fence here too, whatever the source says next.
    async fn lease_ran_out(&mut self) {
        warn!("the lease ran out; stepping down until a renewed lease arrives");
        self.status.send_modify(|s| s.lease.expired += 1);
        self.step_down("lease ran out").await;
    }

    /// When the lease (if any) ends: announcements still queued then are
    /// dropped.
    fn lease_end(&self) -> Option<tokio::time::Instant> {
        self.applied
            .lease
            .map(|l| tokio::time::Instant::from_std(l.until))
    }

    /// Whether the lease (if any) still runs now.
    fn lease_valid(&self) -> bool {
        self.applied.lease_valid(Instant::now())
    }

    /// One R8 round: re-check every VIP and announce each one held.
    async fn sync_round(&mut self) {
        let Some(s) = self.sync.as_mut() else { return };
        s.remaining -= 1;
        let left = s.remaining;
        if left == 0 {
            self.sync = None;
            self.start_refresh();
        } else {
            s.next += self.engine.garp_interval;
        }
        debug!(rounds_left = left, "sync round");
        self.reconcile(true).await;
    }

    /// After the R8 rounds: re-announce every `garp_refresh` (R19).
    fn start_refresh(&mut self) {
        self.refresh = (!self.engine.garp_refresh.is_zero() && self.applied.role == Role::Leader)
            .then(|| tokio::time::Instant::now() + self.engine.garp_refresh);
    }

    /// One refresh: re-check every VIP and announce each one held (as a
    /// sync round; the announcer paces it).
    async fn refresh_round(&mut self) {
        self.refresh = None;
        if self.applied.role != Role::Leader {
            return;
        }
        debug!("refresh round");
        self.reconcile(true).await;
        self.start_refresh();
    }

    /// R18: the interfaces of configured VIPs that are down now (not up, or
    /// without carrier), from the last pass's links. A VIP's interface is
    /// the one its route picks, else the last one seen for it (a link set
    /// down loses its routes).
    fn update_links(&mut self, snap: &NetSnapshot) {
        let mut down = BTreeSet::new();
        self.vip_links.retain(|v, _| self.applied.vips.contains(v));
        for vip in &self.applied.vips {
            let ifindex = match snap.routes.placement(*vip) {
                Some(p) => {
                    self.vip_links.insert(*vip, p.ifindex);
                    Some(p.ifindex)
                }
                None => self.vip_links.get(vip).copied(),
            };
            if let Some(i) = ifindex {
                match snap.link(i) {
                    Some(l) if l.up => {}
                    Some(l) => {
                        down.insert(l.name.clone());
                    }
                    None => {
                        self.vip_links.remove(vip);
                    }
                }
            }
        }
        let now = tokio::time::Instant::now();
        if down.is_empty() {
            if self.links_down_since.take().is_some() {
                info!("every VIP interface is up");
            }
        } else if self.links_down_since.is_none() {
            warn!(interfaces = ?down, grace = ?self.engine.link_grace, "a VIP interface is down or without carrier");
            self.links_down_since = Some(now);
        }
        let since = self.links_down_since;
        let past_grace = since.is_some_and(|s| now >= s + self.engine.link_grace);
        let links_down = if past_grace {
            down.clone()
        } else {
            BTreeSet::new()
        };
        if past_grace && links_down != self.links_down {
            warn!(interfaces = ?links_down, "VIP interface down past the grace: this node cannot serve its VIPs");
        }
        self.links_down = links_down;
        let status = LinkHealth {
            down: down.into_iter().collect(),
            down_for_ms: since.map(|s| u64::try_from((now - s).as_millis()).unwrap_or(u64::MAX)),
            withdrawn: !self.links_down.is_empty(),
        };
        self.status.send_if_modified(|s| {
            let changed = s.links != status;
            s.links = status;
            changed
        });
    }

    /// Waits out a burst of netlink events so it costs one pass.
    async fn debounce(&mut self, first: NetEvent, events: Option<&mut mpsc::Receiver<NetEvent>>) {
        let mut overrun = first == NetEvent::Overrun;
        if let Some(rx) = events {
            if !self.engine.event_debounce.is_zero() {
                tokio::time::sleep(self.engine.event_debounce).await;
            }
            while let Ok(ev) = rx.try_recv() {
                overrun |= ev == NetEvent::Overrun;
            }
        }
        if overrun {
            warn!("netlink event queue overran; state is re-read in full");
        }
    }

    fn on_conflict(&mut self, ev: vipd_common::ConflictEvent) {
        let Ok(vip) = Vip::new(ev.vip.into()) else {
            return;
        };
        self.on_claim(vip, ev.ifindex, ev.mac);
    }

    /// A foreign NDP claim (an advertisement of our VIP, a DAD probe for
    /// it, a solicitation from it): handled as an ARP one, and answered
    /// with one unsolicited NA.
    fn on_conflict6(&mut self, ev: vipd_common::ConflictEvent6) {
        let Ok(vip) = Vip::new_v6(ev.vip.into()) else {
            return;
        };
        self.on_claim(vip, ev.ifindex, ev.mac);
    }

    /// Another node claims `vip` from `mac` on `ifindex`: count it, log it
    /// (rate-limited), and, if we lead, answer with an announcement (at most
    /// one per VIP per [`CONFLICT_ANSWER_EVERY`]).
    fn on_claim(&mut self, vip: Vip, ifindex: u32, mac: [u8; 6]) {
        let now = Instant::now();
        let mac = crate::net::format_mac(&mac);
        let ifname = self.link_name(ifindex);
        let st = self.conflicts.entry(vip).or_default();
        st.events += 1;
        st.last_mac = Some(mac.clone());
        st.last_interface = ifname.clone();
        st.last_unix_ms = Some(unix_ms());
        let events = st.events;
        let st = st.clone();
        self.status.send_modify(|s| {
            s.conflicts.insert(vip, st);
        });
        if self
            .last_conflict_log
            .get(&vip)
            .is_none_or(|t| now.duration_since(*t) >= CONFLICT_LOG_EVERY)
        {
            self.last_conflict_log.insert(vip, now);
            warn!(vip = %vip, foreign_mac = %mac, interface = ifname.as_deref().unwrap_or("?"),
                  events, "another node claims a VIP we hold; answering with an announcement");
        }
        if self.applied.role != Role::Leader {
            return;
        }
        if let Some(last) = self.last_conflict_answer.get(&vip)
            && now.duration_since(*last) < CONFLICT_ANSWER_EVERY
        {
            // Held back, not dropped: answered when the limit allows.
            let due = tokio::time::Instant::from_std(*last + CONFLICT_ANSWER_EVERY);
            self.pending_conflict_answers.entry(vip).or_insert(due);
            return;
        }
        self.answer_conflict(vip, now);
    }

    /// Answers the conflicts whose held-back answer is due.
    fn answer_due_conflicts(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<Vip> = self
            .pending_conflict_answers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(vip, _)| *vip)
            .collect();
        for vip in due {
            self.answer_conflict(vip, Instant::now());
        }
    }

    /// Announces `vip` again if we lead and hold it.
    fn answer_conflict(&mut self, vip: Vip, now: Instant) {
        self.pending_conflict_answers.remove(&vip);
        if self.applied.role != Role::Leader || !self.lease_valid() {
            return;
        }
        if let Some(p) = self.held.get(&vip)
            && let Some(mac) = self.link_mac(p.ifindex)
        {
            let ifindex = p.ifindex;
            self.last_conflict_answer.insert(vip, now);
            self.announcer
                .announce_until(vec![Announcement { vip, ifindex, mac }], self.lease_end());
        }
    }

    /// Whether `state` is news for `vip` (so a standing problem is logged
    /// once, not on every pass).
    fn first_report(&mut self, vip: Vip, state: VipState) -> bool {
        self.reported.insert(vip, state) != Some(state)
    }

    fn link_name(&self, ifindex: u32) -> Option<String> {
        self.links.get(&ifindex).map(|l| l.name.clone())
    }

    fn link_mac(&self, ifindex: u32) -> Option<[u8; 6]> {
        self.links.get(&ifindex).map(|l| l.mac)
    }

    /// One reconcile pass. `announce_all`: announce every VIP held after the
    /// pass (start of a term, sync rounds), not only those just added.
    #[instrument(level = "debug", skip(self), fields(role = ?self.applied.role, term = self.applied.term))]
    async fn reconcile(&mut self, announce_all: bool) {
        let started = Instant::now();
        let leader = self.applied.role == Role::Leader;
        let mut errors = Vec::new();
        let snap = match self.netlink.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot read the kernel's addresses and routes");
                self.finish_pass(started, 0, 0, vec![e.to_string()]);
                return;
            }
        };
        self.links = snap.links.iter().map(|l| (l.ifindex, l.clone())).collect();
        self.update_links(&snap);
        let empty = BTreeSet::new();
        let wanted = if leader { &self.applied.vips } else { &empty };
        let plan = reconcile::plan(wanted, &snap.routes, &snap.addresses);
        for (vip, address) in &plan.unusable {
            let ifname = self.name_in(&snap, address.ifindex);
            if address.state == AddrState::DadFailed {
                // Reported as an error of the pass: another host answered
                // for the VIP, which is also a conflict to look into.
                let msg = format!(
                    "VIP {vip} on {ifname} failed duplicate address detection (another host answers for it): removed, and added again without DAD"
                );
                error!(vip = %vip, ifname = %ifname, "{msg}");
                errors.push(msg);
            } else {
                warn!(vip = %vip, ifname = %ifname, state = ?address.state,
                      "VIP address is not usable yet; replacing it with one without DAD");
            }
        }

        // Removals first, and the XDP map forgets a VIP before it goes.
        let removing: BTreeSet<Vip> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove { vip, .. } => Some(*vip),
                Action::Add { .. } => None,
            })
            .collect();
        if !removing.is_empty()
            && let Some(off) = &self.offload
        {
            // What the last pass held, on this pass's links.
            let keep: BTreeMap<Vip, HeldVip> = self
                .xdp_entries()
                .into_iter()
                .filter(|(v, _)| !removing.contains(v))
                .collect();
            if let Err(e) = set_held(&mut off.lock().expect("offload lock"), &keep) {
                errors.push(format!("XDP held map: {e}"));
            }
        }
        let mut added = Vec::new();
        let mut failed: BTreeMap<Vip, String> = BTreeMap::new();
        let mut removed = 0;
        // Removals first, as one batch (one dump for all the checks).
        let mut to_remove: Vec<(Vip, crate::net::Address)> = Vec::new();
        for action in &plan.actions {
            if let Action::Remove {
                vip,
                address,
                guards_secondaries,
            } = action
            {
                if *guards_secondaries
                    && let Some(link) = snap.link(address.ifindex)
                    && let Err(e) = enable_promote_secondaries(&link.name)
                {
                    let msg = format!(
                        "not removing VIP {vip} from {}: it is its subnet's primary address and promote_secondaries cannot be enabled ({e}); removing it would delete the operator's addresses in that subnet",
                        link.name
                    );
                    error!(vip = %vip, ifname = %link.name, "{msg}");
                    errors.push(msg.clone());
                    failed.insert(*vip, msg);
                    continue;
                }
                to_remove.push((*vip, address.clone()));
            }
        }
        if !to_remove.is_empty() {
            let addresses: Vec<crate::net::Address> =
                to_remove.iter().map(|(_, a)| a.clone()).collect();
            let results = self.netlink.remove_vips(&addresses).await;
            for ((vip, address), (_, result)) in to_remove.iter().zip(results) {
                match result {
                    Ok(()) => {
                        removed += 1;
                        info!(vip = %vip, ifname = %self.name_in(&snap, address.ifindex),
                              prefix_len = address.prefix_len, "VIP removed");
                    }
                    Err(e) => {
                        error!(vip = %vip, error = %e, "cannot remove VIP");
                        errors.push(e.to_string());
                        failed.insert(*vip, e.to_string());
                    }
                }
            }
        }
        let lifetime = self.applied.lease.map(|l| l.address_lifetime);
        for action in &plan.actions {
            if let Action::Add { vip, placement } = action {
                // R16: checked before each write, never one after the lease.
                if !self.lease_valid() {
                    let msg = format!("not adding VIP {vip}: the lease has run out");
                    debug!(vip = %vip, "{msg}");
                    failed.insert(*vip, msg);
                    continue;
                }
                match self.netlink.add_vip_for(*vip, *placement, lifetime).await {
                    Ok(()) => {
                        info!(vip = %vip, ifname = %self.name_in(&snap, placement.ifindex),
                              prefix_len = placement.prefix_len, "VIP added");
                        added.push((*vip, *placement));
                    }
                    Err(e) => {
                        error!(vip = %vip, error = %e, "cannot add VIP");
                        errors.push(e.to_string());
                        failed.insert(*vip, e.to_string());
                    }
                }
            }
        }
        // What we hold now, per the plan and what succeeded.
        let mut held: BTreeMap<Vip, Placement> = BTreeMap::new();
        let mut statuses = Vec::new();
        let mut no_route = BTreeSet::new();
        let mut interfaces = BTreeMap::new();
        for (vip, verdict) in &plan.verdicts {
            let (state, placement, ifindex) = match verdict {
                Verdict::InPlace { placement } => {
                    (VipState::Held, Some(*placement), Some(placement.ifindex))
                }
                Verdict::Add { placement } => {
                    if failed.contains_key(vip) {
                        (VipState::Error, Some(*placement), Some(placement.ifindex))
                    } else {
                        (VipState::Held, Some(*placement), Some(placement.ifindex))
                    }
                }
                Verdict::NoRoute => {
                    no_route.insert(*vip);
                    let msg =
                        format!("no route matches VIP {vip}: it cannot be served from this node");
                    if self.first_report(*vip, VipState::NoRoute) {
                        error!(vip = %vip, "{msg}");
                    }
                    failed.entry(*vip).or_insert(msg);
                    (VipState::NoRoute, None, None)
                }
                Verdict::OperatorAddress { ifindex } => {
                    let msg = format!(
                        "VIP {vip} is already configured on this node without vipd's mark (an operator's address): left alone, not announced"
                    );
                    if self.first_report(*vip, VipState::OperatorAddress) {
                        warn!(vip = %vip, ifindex, "{msg}");
                    }
                    failed.entry(*vip).or_insert(msg);
                    (VipState::OperatorAddress, None, Some(*ifindex))
                }
            };
            if state == VipState::Held
                && let Some(p) = placement
            {
                held.insert(*vip, p);
                self.reported.remove(vip);
            }
            let name = ifindex.map(|i| self.name_in(&snap, i));
            if let Some(n) = &name {
                interfaces.insert(*vip, n.clone());
            }
            statuses.push(VipStatus {
                vip: *vip,
                state,
                interface: name,
                ifindex,
                prefix_len: placement.map(|p| p.prefix_len),
                error: if state == VipState::Held {
                    None
                } else {
                    failed.get(vip).cloned()
                },
            });
        }
        if !leader {
            for vip in &self.applied.vips {
                let place = snap.routes.placement(*vip);
                let name = place.map(|p| self.name_in(&snap, p.ifindex));
                if let Some(n) = &name {
                    interfaces.insert(*vip, n.clone());
                }
                statuses.push(VipStatus {
                    vip: *vip,
                    state: VipState::NotLeader,
                    interface: name,
                    ifindex: place.map(|p| p.ifindex),
                    prefix_len: place.map(|p| p.prefix_len),
                    error: failed.get(vip).cloned(),
                });
            }
        }

        // XDP: attach where VIPs live, watch every configured VIP, hold ours.
        let xdp_errors = self.sync_xdp(&snap, &held);

        // Announce: what was added (R7), or everything held (new term, R8).
        let to_announce: Vec<Announcement> = held
            .iter()
            .filter(|(vip, _)| announce_all || added.iter().any(|(a, _)| a == *vip))
            .filter_map(|(vip, p)| {
                let mac = snap.link(p.ifindex)?.mac;
                Some(Announcement {
                    vip: *vip,
                    ifindex: p.ifindex,
                    mac,
                })
            })
            .collect();
        if leader && !to_announce.is_empty() && self.lease_valid() {
            self.announcer.announce_until(to_announce, self.lease_end());
        }
        self.held = if leader {
            held.clone()
        } else {
            BTreeMap::new()
        };

        let report = EngineReport {
            role: self.applied.role,
            term: self.applied.term,
            held: snap_held_after(&snap, &held, &plan),
            no_route,
            links_down: self.links_down.clone(),
        };
        self.report.send_if_modified(|r| {
            if *r == report {
                false
            } else {
                *r = report;
                true
            }
        });
        self.status.send_modify(|s| {
            s.role = self.applied.role;
            s.term = self.applied.term;
            s.vips = statuses;
            s.xdp_errors = xdp_errors;
            s.interfaces = interfaces;
            if let Some(off) = &self.offload {
                s.xdp_attached = off.lock().expect("offload lock").attachments();
            }
        });
        self.schedule_delivery_check();
        self.finish_pass(started, added.len(), removed, errors);
    }

    /// Checks that native XDP answers leave their interfaces; where they do
    /// not, the offload has moved the interface to generic mode.
    fn check_delivery(&mut self) {
        self.delivery_check = None;
        let Some(off) = &self.offload else { return };
        let mut off = off.lock().expect("offload lock");
        if off.check_delivery() {
            let attached = off.attachments();
            self.status.send_modify(|s| s.xdp_attached = attached);
        }
        drop(off);
        self.schedule_delivery_check();
    }

    /// Keeps a delivery check due while any native attachment is checked.
    fn schedule_delivery_check(&mut self) {
        let next = self
            .offload
            .as_ref()
            .and_then(|o| o.lock().expect("offload lock").next_delivery_check());
        let now = tokio::time::Instant::now();
        self.delivery_check = match (next, self.delivery_check) {
            (None, _) => None,
            (Some(after), Some(due)) => Some(due.min(now + after)),
            (Some(after), None) => Some(now + after),
        };
    }

    fn finish_pass(&mut self, started: Instant, added: usize, removed: usize, errors: Vec<String>) {
        let took = started.elapsed();
        let duration_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.status.send_modify(|s| {
            let r = &mut s.last_reconcile;
            r.durations.observe(took);
            r.passes += 1;
            r.at_unix_ms = unix_ms();
            r.duration_us = duration_us;
            r.duration_us_total = r.duration_us_total.saturating_add(duration_us);
            r.added = added;
            r.removed = removed;
            if !errors.is_empty() {
                r.error_passes += 1;
            }
            r.errors = errors;
        });
    }

    fn name_in(&self, snap: &NetSnapshot, ifindex: u32) -> String {
        snap.link(ifindex)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("if{ifindex}"))
    }

    /// The XDP held-map entries for what we hold (renewals: nothing moved).
    fn xdp_entries(&self) -> BTreeMap<Vip, HeldVip> {
        let expires_ns = self.xdp_expiry();
        self.held
            .iter()
            .filter_map(|(vip, p)| {
                let mac = self.links.get(&p.ifindex)?.mac;
                Some((*vip, self.held_vip(*vip, p.ifindex, mac, expires_ns)))
            })
            .collect()
    }

    /// The held-map entry of `vip` on interface `ifindex` with `mac`: the
    /// Router flag as read on the last pass (IPv6 only).
    fn held_vip(&self, vip: Vip, ifindex: u32, mac: [u8; 6], expires_ns: u64) -> HeldVip {
        let router = vip.v6().is_some() && self.routers.get(&ifindex) == Some(&true);
        HeldVip {
            ifindex,
            mac,
            vlan: 0,
            flags: if router { HELD_ROUTER } else { 0 },
            _pad: [0; 3],
            expires_ns,
        }
    }

    /// Reads `net.ipv6.conf.<if>.forwarding` of every interface holding an
    /// IPv6 VIP in `held`. Unreadable counts as not forwarding: a host's
    /// advertisement never claims to be a router by mistake.
    fn refresh_routers(&mut self, snap: &NetSnapshot, held: &BTreeMap<Vip, Placement>) {
        let mut routers = HashMap::new();
        for (vip, p) in held.iter().filter(|(v, _)| v.v6().is_some()) {
            if routers.contains_key(&p.ifindex) {
                continue;
            }
            let Some(link) = snap.link(p.ifindex) else {
                continue;
            };
            let router = forwarding(&link.name).unwrap_or_else(|error| {
                debug!(vip = %vip, ifname = %link.name, %error, "cannot read IPv6 forwarding; Router flag off");
                false
            });
            if self.routers.get(&p.ifindex) != Some(&router) {
                debug!(ifname = %link.name, router, "IPv6 forwarding of a VIP interface");
            }
            routers.insert(p.ifindex, router);
        }
        self.routers = routers;
    }

    /// The lease's end on the XDP program's clock (R16).
    fn xdp_expiry(&self) -> u64 {
        self.applied
            .lease
            .map_or(vipd_common::NO_EXPIRY, |l| monotonic_ns(l.until))
    }

    /// Attaches the XDP program where VIPs live (and where the operator
    /// named), watches every configured VIP and holds exactly `held`.
    fn sync_xdp(&mut self, snap: &NetSnapshot, held: &BTreeMap<Vip, Placement>) -> Vec<String> {
        let expires_ns = self.xdp_expiry();
        if self.offload.is_some() {
            self.refresh_routers(snap, held);
        }
        let Some(off) = &self.offload else {
            return Vec::new();
        };
        let mut off = off.lock().expect("offload lock");
        let mut errors = Vec::new();
        let mut ifnames: BTreeSet<String> = self.xdp.interfaces.iter().cloned().collect();
        for vip in &self.applied.vips {
            if let Some(p) = snap.routes.placement(*vip)
                && let Some(l) = snap.link(p.ifindex)
            {
                ifnames.insert(l.name.clone());
            }
        }
        let attached: BTreeSet<String> = off.attached().into_iter().map(|(n, _)| n).collect();
        for name in ifnames.difference(&attached) {
            if name == "lo" {
                continue;
            }
            match off.attach(name, self.xdp.mode) {
                Ok(_) => {}
                Err(e) => {
                    error!(ifname = %name, error = %e, "cannot attach the XDP program");
                    errors.push(e.to_string());
                }
            }
        }
        let watched: BTreeSet<Vip> = self
            .applied
            .vips
            .iter()
            .copied()
            .filter(|v| v.v4().is_some())
            .collect();
        let watched6: BTreeSet<Ipv6Addr> =
            self.applied.vips.iter().filter_map(|v| v.v6()).collect();
        if let Err(e) = off.set_watched(&watched) {
            errors.push(e.to_string());
        }
        if let Err(e) = off.set_watched6(&watched6) {
            errors.push(e.to_string());
        }
        let entries: BTreeMap<Vip, HeldVip> =
            if self.xdp.responder && self.applied.role == Role::Leader {
                held.iter()
                    .filter_map(|(vip, p)| {
                        let mac = snap.link(p.ifindex)?.mac;
                        Some((*vip, self.held_vip(*vip, p.ifindex, mac, expires_ns)))
                    })
                    .collect()
            } else {
                BTreeMap::new()
            };
        if let Err(e) = set_held(&mut off, &entries) {
            errors.push(e.to_string());
        }
        errors
    }
}

/// Makes the XDP held maps hold exactly `entries`: IPv4 VIPs in the ARP
/// map, IPv6 VIPs in the NDP map. Both are written even when one fails;
/// the first error is returned.
fn set_held(off: &mut ArpOffload, entries: &BTreeMap<Vip, HeldVip>) -> Result<(), OffloadError> {
    let v4: BTreeMap<Vip, HeldVip> = entries
        .iter()
        .filter(|(v, _)| v.v4().is_some())
        .map(|(v, h)| (*v, *h))
        .collect();
    let v6: BTreeMap<Ipv6Addr, HeldVip> = entries
        .iter()
        .filter_map(|(v, h)| Some((v.v6()?, *h)))
        .collect();
    let r4 = off.set_held(&v4);
    let r6 = off.set_held6(&v6);
    r4.and(r6)
}

/// VIPs configured with our mark once the pass's actions ran.
fn snap_held_after(
    snap: &NetSnapshot,
    held: &BTreeMap<Vip, Placement>,
    plan: &reconcile::Plan,
) -> BTreeSet<Vip> {
    let mut out: BTreeSet<Vip> = held.keys().copied().collect();
    // Marked addresses the plan did not touch successfully still count: a
    // failed removal leaves the VIP on this node, and the source must know.
    for a in snap.addresses.iter().filter(|a| a.owned) {
        if let Ok(v) = Vip::from_ip(a.addr) {
            let planned_removal = plan
                .actions
                .iter()
                .any(|x| matches!(x, Action::Remove { address, .. } if address == a));
            if !planned_removal {
                out.insert(v);
            }
        }
    }
    out
}

async fn recv_opt(rx: &mut Option<mpsc::Receiver<NetEvent>>) -> Option<NetEvent> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_conflict<E: aya::Pod>(r: &mut Option<ConflictReader<E>>) -> Option<E> {
    match r {
        Some(r) => r.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// `at` on CLOCK_MONOTONIC in nanoseconds, the clock of the XDP program's
/// `bpf_ktime_get_ns` (std's `Instant` reads the same clock on Linux, but
/// keeps its value private: convert through the distance from now).
pub fn monotonic_ns(at: Instant) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    let now_ns = u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0);
    let now = Instant::now();
    let ahead = u64::try_from(at.saturating_duration_since(now).as_nanos()).unwrap_or(u64::MAX);
    let behind = u64::try_from(now.saturating_duration_since(at).as_nanos()).unwrap_or(u64::MAX);
    now_ns.saturating_add(ahead).saturating_sub(behind)
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vip_states_serialize_as_the_api_strings() {
        let all = [
            (VipState::Held, "held"),
            (VipState::NoRoute, "no_route"),
            (VipState::OperatorAddress, "operator_address"),
            (VipState::Error, "error"),
            (VipState::NotLeader, "not_leader"),
        ];
        for (state, text) in all {
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::Value::from(text)
            );
        }
    }
}
