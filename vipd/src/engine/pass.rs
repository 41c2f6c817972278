//! One reconcile pass: snapshot (read the kernel), plan (`reconcile::plan`),
//! execute (remove and add addresses, hold the VIPs in the XDP maps,
//! announce), report (to the source, and the status).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use tracing::{debug, error, info, instrument, warn};
use vipd_common::HeldVip;

use super::{
    Engine, LinkHealth, VipState, VipStatus,
    probing::mac_text,
    unix_ms,
    writes::{WriteKind, Written},
};
use crate::{
    net::{
        AddrState, Address, Placement, netlink::NetSnapshot, sysctl::enable_promote_secondaries,
        tickle::Fenced,
    },
    reconcile::{self, Action, AddFailure, AddressPlan, Facts, Holdings, Plan, ProbeGate, Verdict},
    role::{EngineReport, Role},
    vip::Vip,
};

/// What executing a plan's address changes came to.
#[derive(Default)]
struct Executed {
    added: usize,
    removed: usize,
    /// Why each VIP whose change failed did not make it.
    failed: BTreeMap<Vip, String>,
    /// The kernel's error for each add that failed.
    add_errors: BTreeMap<Vip, String>,
    /// Our addresses the plan removes that are still there (refused by the
    /// secondaries guard, or the removal failed).
    not_removed: Vec<Address>,
    /// The VIPs whose address this pass removed.
    removed_vips: Vec<Vip>,
    errors: Vec<String>,
}

impl Engine {
    /// One reconcile pass: snapshot -> plan -> execute -> report.
    /// `announce_all`: announce every VIP held after the pass (start of a
    /// term, sync rounds), not only those just added.
    #[instrument(level = "debug", skip(self), fields(role = ?self.applied.role, term = self.applied.term))]
    pub(super) async fn reconcile(&mut self, announce_all: bool) {
        let started = Instant::now();
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
        let probe_sets = self.probe_sets();
        let probe = match &probe_sets {
            None => ProbeGate::Off,
            Some((cleared, in_use)) => ProbeGate::On { cleared, in_use },
        };
        let plan = reconcile::plan(&Facts {
            leader: self.applied.role == Role::Leader,
            lease_valid: self.lease_valid(),
            vips: &self.applied.vips,
            routes: &snap.routes,
            addresses: &snap.addresses,
            links: &snap.links,
            announce_all,
            probe,
        });
        let mut done = Executed::default();
        self.log_unusable(&snap, &plan.addresses, &mut done);
        self.forget_removed(&plan.addresses, &mut done);
        self.remove(&snap, &plan.addresses, &mut done).await;
        self.add(&snap, &plan.addresses, &mut done).await;
        self.count_add_failures(&snap, &plan.addresses, &done);
        let holdings = plan.outcome(&done.failed.keys().copied().collect());
        let xdp_errors = self.sync_xdp(&snap, &holdings);
        self.tell_tickler(&holdings.held, &done.removed_vips);
        // What is queued goes out only while held, under the current lease.
        self.announcer.hold(
            holdings.held.iter().map(|(vip, p)| (*vip, p.ifindex)),
            self.lease_end(),
        );
        if !holdings.announce.is_empty() && self.lease_valid() {
            self.announcer.announce(holdings.announce.clone());
        }
        self.held = holdings.held.clone();
        self.after_pass_probes(&snap, &plan, &holdings.held);
        self.report_pass(&snap, &plan, &holdings, done, xdp_errors, started);
    }

    /// The handoff learns of each VIP gained, before its announcement is
    /// queued (its tickles wait for that announcement), and of each VIP
    /// whose address this pass removed and that is not held now.
    fn tell_tickler(&self, held: &BTreeMap<Vip, Placement>, removed: &[Vip]) {
        let Some(t) = &self.tickler else { return };
        for vip in held.keys().filter(|v| !self.held.contains_key(v)) {
            t.acquired(*vip);
        }
        for vip in removed.iter().filter(|v| !held.contains_key(v)) {
            t.released(*vip, self.fenced(*vip));
        }
    }

    /// Whether the egress fence drops `vip`'s frames now, and until when:
    /// its held entry as last written, and the egress program on every
    /// interface a frame could leave by.
    fn fenced(&self, vip: Vip) -> Fenced {
        let (Some(xdp), Some(entry)) = (&self.xdp_program, self.xdp_written.get(&vip)) else {
            return Fenced::No;
        };
        let on: BTreeSet<String> = xdp
            .lock()
            .expect("XDP program lock")
            .egress_fenced()
            .into_iter()
            .collect();
        let everywhere = self
            .links
            .values()
            .filter(|l| l.name != "lo")
            .all(|l| on.contains(&l.name));
        if everywhere {
            Fenced::Until {
                fence_end_ns: entry.fence_end_ns,
            }
        } else {
            Fenced::No
        }
    }

    /// Logs our copies DAD left unusable; a failed DAD is an error of the
    /// pass: another host answered for the VIP, a conflict to look into.
    fn log_unusable(&self, snap: &NetSnapshot, plan: &AddressPlan, done: &mut Executed) {
        for (vip, address) in &plan.unusable {
            let ifname = self.name_in(snap, address.ifindex);
            if address.state == AddrState::DadFailed {
                let msg = format!(
                    "VIP {vip} on {ifname} failed duplicate address detection (another host answers for it): removed, and added again without DAD"
                );
                error!(vip = %vip, ifname = %ifname, "{msg}");
                done.errors.push(msg);
            } else {
                warn!(vip = %vip, ifname = %ifname, state = ?address.state,
                      "VIP address is not usable yet; replacing it with one without DAD");
            }
        }
    }

    /// The XDP map stops answering for a VIP before its address goes: what
    /// the last pass held, on this pass's links, but the VIPs to remove,
    /// which stay fenced until their addresses are surely gone.
    fn forget_removed(&mut self, plan: &AddressPlan, done: &mut Executed) {
        let removing = plan.removing();
        if removing.is_empty() || self.xdp_program.is_none() {
            return;
        }
        let keep: BTreeMap<Vip, HeldVip> = self
            .xdp_entries()
            .into_iter()
            .filter(|(v, _)| !removing.contains(v))
            .collect();
        if let Err(e) = self.hold_in_xdp(keep) {
            done.errors.push(format!("XDP held map: {e}"));
        }
    }

    /// The plan's removals, as one batch (one dump for all the checks). A
    /// removal the plan says guards secondaries needs `promote_secondaries`
    /// on first, or it is not made.
    async fn remove(&mut self, snap: &NetSnapshot, plan: &AddressPlan, done: &mut Executed) {
        let mut to_remove: Vec<(Vip, Address)> = Vec::new();
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
                    done.errors.push(msg.clone());
                    done.failed.insert(*vip, msg);
                    done.not_removed.push(address.clone());
                    continue;
                }
                to_remove.push((*vip, address.clone()));
            }
        }
        if to_remove.is_empty() {
            return;
        }
        let addresses: Vec<Address> = to_remove.iter().map(|(_, a)| a.clone()).collect();
        let results = self.netlink.remove_vips(&addresses).await;
        for ((vip, address), (_, result)) in to_remove.iter().zip(results) {
            match result {
                Ok(()) => {
                    done.removed += 1;
                    self.fence_removed(*vip);
                    done.removed_vips.push(*vip);
                    info!(vip = %vip, ifname = %self.name_in(snap, address.ifindex),
                          prefix_len = address.prefix_len, "VIP removed");
                }
                Err(e) => {
                    error!(vip = %vip, error = %e, "cannot remove VIP");
                    done.errors.push(e.to_string());
                    done.failed.insert(*vip, e.to_string());
                    done.not_removed.push(address.clone());
                }
            }
        }
    }

    /// The plan's adds, with vipd's mark and the lease's lifetime.
    async fn add(&mut self, snap: &NetSnapshot, plan: &AddressPlan, done: &mut Executed) {
        let adds: Vec<(Vip, Placement)> = plan
            .actions
            .iter()
            .filter_map(|action| match action {
                Action::Add { vip, placement } => Some((*vip, *placement)),
                _ => None,
            })
            .collect();
        if !self.lease_valid() {
            for (vip, _) in &adds {
                let msg = format!("not adding VIP {vip}: the lease has ended");
                debug!(vip = %vip, "{msg}");
                done.failed.insert(*vip, msg);
            }
            return;
        }
        let outcomes = self.write_addresses(WriteKind::Add, &adds).await;
        for ((vip, placement), outcome) in adds.iter().zip(outcomes) {
            match outcome {
                Written::Late => {
                    let msg = format!("not adding VIP {vip}: too little of the lease is left");
                    debug!(vip = %vip, "{msg}");
                    done.failed.insert(*vip, msg);
                }
                Written::Sent(_, Ok(())) => {
                    info!(vip = %vip, ifname = %self.name_in(snap, placement.ifindex),
                          prefix_len = placement.prefix_len, "VIP added");
                    done.added += 1;
                }
                Written::Sent(_, Err(e)) => {
                    // One line per new error, not one per pass.
                    let again = self
                        .add_failures
                        .get(vip)
                        .is_some_and(|f| f.placement == *placement && f.error == e.to_string());
                    if again {
                        debug!(vip = %vip, error = %e, "cannot add VIP (again)");
                    } else {
                        error!(vip = %vip, error = %e, "cannot add VIP");
                    }
                    done.errors.push(e.to_string());
                    done.failed.insert(*vip, e.to_string());
                    done.add_errors.insert(*vip, e.to_string());
                }
            }
        }
    }

    /// Counts failed adds in a row per VIP (a success, a route to another
    /// place or the VIP leaving the configuration forgets them); the
    /// count decides whether this node can serve the VIP.
    fn count_add_failures(&mut self, snap: &NetSnapshot, plan: &AddressPlan, done: &Executed) {
        for action in &plan.actions {
            let Action::Add { vip, placement } = action else {
                continue;
            };
            match done.add_errors.get(vip) {
                Some(error) => {
                    let f = self.add_failures.entry(*vip).or_insert(AddFailure {
                        placement: *placement,
                        count: 0,
                        error: String::new(),
                    });
                    if f.placement != *placement {
                        f.placement = *placement;
                        f.count = 0;
                    }
                    f.count += 1;
                    f.error.clone_from(error);
                }
                None if !done.failed.contains_key(vip) => {
                    self.add_failures.remove(vip);
                }
                None => {}
            }
        }
        let vips = &self.applied.vips;
        self.add_failures
            .retain(|v, f| vips.contains(v) && snap.routes.placement(*v) == Some(f.placement));
    }

    /// Tells the source what this node holds now and publishes the pass's
    /// status: one entry per configured VIP.
    fn report_pass(
        &mut self,
        snap: &NetSnapshot,
        plan: &Plan,
        holdings: &Holdings,
        done: Executed,
        xdp_errors: Vec<String>,
        started: Instant,
    ) {
        let Executed {
            added,
            removed,
            mut failed,
            not_removed,
            errors,
            ..
        } = done;
        let (statuses, interfaces) = self.vip_statuses(snap, plan, holdings, &mut failed);
        self.send_report(snap, plan, holdings, &not_removed);
        self.status.send_modify(|s| {
            s.role = self.applied.role;
            s.term = self.applied.term;
            s.vips = statuses;
            s.xdp_errors = xdp_errors;
            s.xdp_over_capacity = self.xdp_over.total();
            s.interfaces = interfaces;
            if let Some(xdp) = &self.xdp_program {
                s.xdp_attached = xdp.lock().expect("XDP program lock").attachments();
            }
        });
        self.schedule_delivery_check();
        self.finish_pass(started, added, removed, errors);
    }

    /// One status per configured VIP, and the interface of each that has
    /// one; `failed` gains the reason of each VIP not served.
    fn vip_statuses(
        &mut self,
        snap: &NetSnapshot,
        plan: &Plan,
        holdings: &Holdings,
        failed: &mut BTreeMap<Vip, String>,
    ) -> (Vec<VipStatus>, BTreeMap<Vip, String>) {
        let mut statuses = Vec::new();
        let mut interfaces = BTreeMap::new();
        for (vip, verdict) in &plan.addresses.verdicts {
            let (state, placement, ifindex) = self.verdict_state(*vip, verdict, holdings, failed);
            let name = ifindex.map(|i| self.name_in(snap, i));
            if let Some(n) = &name {
                interfaces.insert(*vip, n.clone());
            }
            statuses.push(VipStatus {
                vip: vip.ip(),
                state,
                interface: name,
                ifindex,
                prefix_len: placement.map(|p| p.prefix_len),
                error: if state == VipState::Held {
                    None
                } else {
                    failed.get(vip).cloned()
                },
                in_use_by: (state == VipState::AddressInUse)
                    .then(|| self.probing.in_use(vip).map(|u| mac_text(u.mac)))
                    .flatten(),
            });
        }
        if !plan.holding {
            for vip in &self.applied.vips {
                let place = snap.routes.placement(*vip);
                let name = place.map(|p| self.name_in(snap, p.ifindex));
                if let Some(n) = &name {
                    interfaces.insert(*vip, n.clone());
                }
                statuses.push(VipStatus {
                    vip: vip.ip(),
                    state: VipState::NotLeader,
                    interface: name,
                    ifindex: place.map(|p| p.ifindex),
                    prefix_len: place.map(|p| p.prefix_len),
                    error: failed.get(vip).cloned(),
                    in_use_by: None,
                });
            }
        }

        (statuses, interfaces)
    }

    /// The state a verdict leaves `vip` in, its placement and interface;
    /// the reason is added to `failed` unless the VIP is held.
    fn verdict_state(
        &mut self,
        vip: Vip,
        verdict: &Verdict,
        holdings: &Holdings,
        failed: &mut BTreeMap<Vip, String>,
    ) -> (VipState, Option<Placement>, Option<u32>) {
        match verdict {
            Verdict::InPlace { placement } | Verdict::Add { placement } => {
                let state = if holdings.held.contains_key(&vip) {
                    self.reported.remove(&vip);
                    VipState::Held
                } else {
                    VipState::Error
                };
                (state, Some(*placement), Some(placement.ifindex))
            }
            Verdict::NoRoute => {
                let msg = format!("no route matches VIP {vip}: it cannot be served from this node");
                if self.first_report(vip, VipState::NoRoute) {
                    error!(vip = %vip, "{msg}");
                }
                failed.entry(vip).or_insert(msg);
                (VipState::NoRoute, None, None)
            }
            Verdict::OperatorAddress { ifindex } => {
                let msg = format!(
                    "VIP {vip} is already configured on this node without vipd's mark (an operator's address): left alone, not announced"
                );
                if self.first_report(vip, VipState::OperatorAddress) {
                    warn!(vip = %vip, ifindex, "{msg}");
                }
                failed.entry(vip).or_insert(msg);
                (VipState::OperatorAddress, None, Some(*ifindex))
            }
            Verdict::Probe { placement } => {
                let msg = format!(
                    "VIP {vip} is probed before it is first added: the cluster never held it, and another host might use the address"
                );
                failed.entry(vip).or_insert(msg);
                (VipState::Probing, Some(*placement), Some(placement.ifindex))
            }
            Verdict::InUse { placement } => {
                let msg = match self.probing.in_use(&vip) {
                    Some(u) => format!(
                        "VIP {vip} not added: {} (a host outside the cluster) answers for it on {}; probed again every {:?}",
                        mac_text(u.mac),
                        u.interface,
                        self.settings.probe_retry
                    ),
                    None => format!("VIP {vip} not added: another host answers for it"),
                };
                failed.entry(vip).or_insert(msg);
                (
                    VipState::AddressInUse,
                    Some(*placement),
                    Some(placement.ifindex),
                )
            }
        }
    }

    /// Tells the source what this node holds now, if that changed.
    fn send_report(
        &mut self,
        snap: &NetSnapshot,
        plan: &Plan,
        holdings: &Holdings,
        not_removed: &[Address],
    ) {
        let (servable, unservable) =
            reconcile::servable(&self.applied.vips, &snap.routes, &self.add_failures);
        let report = EngineReport {
            role: self.applied.role,
            term: self.applied.term,
            held: plan.on_node(holdings, &snap.addresses, not_removed),
            servable,
            unservable,
            links_down: self.links_down.clone(),
            macs: snap
                .links
                .iter()
                .map(|l| l.mac)
                .filter(|m| *m != [0; 6])
                .collect(),
            // Brought up to date by `finish_pass`, next.
            passes: self.passes,
            lease_applied: self.report.borrow().lease_applied,
        };
        self.report.send_if_modified(|r| {
            if *r == report {
                false
            } else {
                *r = report;
                true
            }
        });
    }

    /// The interfaces of configured VIPs that are down now (not up, or
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
            warn!(interfaces = ?down, grace = ?self.settings.link_grace, "a VIP interface is down or without carrier");
            self.links_down_since = Some(now);
        }
        let since = self.links_down_since;
        let past_grace = since.is_some_and(|s| now >= s + self.settings.link_grace);
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

    pub(super) fn finish_pass(
        &mut self,
        started: Instant,
        added: usize,
        removed: usize,
        errors: Vec<String>,
    ) {
        self.passes += 1;
        self.beat();
        let took = started.elapsed();
        let duration_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.status.send_modify(|s| {
            let r = &mut s.last_reconcile;
            s.pass_durations.observe(took);
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
}
