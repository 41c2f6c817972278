//! The engine: one task that owns the node's VIP state. It takes the role
//! and VIPs the source wants (`role::Desired`), netlink events, timers and
//! XDP conflict events, plans with `reconcile::plan`, and executes: netlink
//! writes, XDP map updates, announcements. It reports what it holds back to
//! the source so leadership is released only once the VIPs are gone (no
//! two nodes hold a VIP at once).
//! The loop and the lease live here; one reconcile pass in `pass`, its
//! XDP side (map entries, attaching, delivery checks) in `xdp`, foreign
//! claims in `conflicts`, what it publishes in `status`.

mod conflicts;
mod pass;
mod probing;
mod settings;
mod status;
mod writes;
mod xdp;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use tokio::{
    sync::{mpsc, watch},
    time::{MissedTickBehavior, sleep_until},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub(crate) use self::settings::EngineSettings;
pub(crate) use self::status::{
    ConflictStatus, EngineStatus, LinkHealth, VipState, VipStatus, fence_state,
};
use self::{
    probing::Probing,
    writes::{WriteKind, Written},
};
use crate::{
    announce::Announcer,
    net::{
        Link, Placement,
        netlink::{NetEvent, Netlink},
        tickle::Tickler,
    },
    role::{Desired, EngineReport, Role},
    vip::Vip,
    xdp::{Conflict, ConflictReader, XdpProgram},
};

/// The XDP side, shared with the API (counters) behind a lock.
pub(crate) type SharedXdp = Arc<Mutex<XdpProgram>>;

/// The sync rounds of a leader term (every VIP re-checked and announced
/// `garp_rounds` times, `garp_interval` apart): `remaining` more rounds,
/// the next due at `next`.
struct SyncRounds {
    remaining: u32,
    next: tokio::time::Instant,
}

pub(crate) struct Engine {
    settings: EngineSettings,
    netlink: Netlink,
    announcer: Announcer,
    xdp_program: Option<SharedXdp>,
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
    /// Failed adds in a row per VIP: two make it one this node cannot
    /// serve (reported to the source, published for the leader).
    add_failures: BTreeMap<Vip, crate::reconcile::AddFailure>,
    /// Foreign claims of our VIPs, as last seen (published as status).
    conflicts: BTreeMap<Vip, ConflictStatus>,
    /// Where each VIP we hold lives, as of the last pass: what a lease
    /// renewal renews.
    held: BTreeMap<Vip, Placement>,
    /// When this term's addresses' lifetimes were last renewed (`None`:
    /// not yet): [`crate::role::LeaseGrant::renews_addresses`].
    addresses_renewed: Option<Instant>,
    /// The first VIP the last lease renewal had no time left for.
    renew_resume: Option<Vip>,
    /// When native XDP attachments are next checked for lost answers
    /// (`None`: there are none).
    delivery_check: Option<tokio::time::Instant>,
    /// The last interface seen for each configured VIP: a link set down
    /// takes its routes along, but it is still the VIP's interface (and the
    /// leader must hand over when it stays down).
    vip_links: BTreeMap<Vip, u32>,
    /// Since when some VIP interface is down: the leader hands over only
    /// after a grace, so a link that flaps back costs no move.
    links_down_since: Option<tokio::time::Instant>,
    /// Down interfaces as last reported (after the grace).
    links_down: BTreeSet<String>,
    /// The next re-announcement after the sync rounds (every `garp_refresh`).
    refresh: Option<tokio::time::Instant>,
    /// The address-conflict probe: what may be added at once, what waits.
    probing: Probing,
    /// Passes finished, failed ones included (the heartbeat).
    passes: u64,
    /// The configured VIPs that have XDP entries (all of them unless there
    /// are more than the maps hold), as of the last pass.
    xdp_fits: BTreeSet<Vip>,
    /// Configured VIPs without XDP entries, per family, as last logged.
    xdp_over: xdp::XdpOver,
    /// What the held maps hold, served and fenced entries alike.
    xdp_written: BTreeMap<Vip, vipd_common::HeldVip>,
    /// Per VIP whose address this agent wrote: the latest its address can
    /// be in the kernel (programs' clock; `u64::MAX` while a write waits
    /// for its acknowledgement).
    fence_ends: BTreeMap<Vip, u64>,
    /// The TCP handoff: told which VIPs this node gains and releases.
    tickler: Option<Tickler>,
}

impl Engine {
    pub(crate) fn new(
        settings: EngineSettings,
        netlink: Netlink,
        announcer: Announcer,
        xdp_program: Option<SharedXdp>,
        desired: watch::Receiver<Desired>,
        report: watch::Sender<EngineReport>,
        status: watch::Sender<EngineStatus>,
    ) -> Self {
        if xdp_program.is_some() {
            status.send_modify(|s| s.xdp_setting = Some(settings.xdp_mode));
        }
        Engine {
            probing: Probing::new(settings.probe, settings.probe_retry),
            settings,
            netlink,
            announcer,
            xdp_program,
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
            add_failures: BTreeMap::new(),
            conflicts: BTreeMap::new(),
            held: BTreeMap::new(),
            addresses_renewed: None,
            renew_resume: None,
            delivery_check: None,
            vip_links: BTreeMap::new(),
            links_down_since: None,
            links_down: BTreeSet::new(),
            refresh: None,
            passes: 0,
            xdp_fits: BTreeSet::new(),
            xdp_over: xdp::XdpOver::default(),
            xdp_written: BTreeMap::new(),
            fence_ends: BTreeMap::new(),
            tickler: None,
        }
    }

    /// Tells `tickler` of every VIP gained (before its announcement) and
    /// released (after its address is gone).
    pub(crate) fn with_tickler(mut self, tickler: Option<Tickler>) -> Self {
        self.tickler = tickler;
        self
    }

    /// Runs until `cancel`, then steps down: stop announcing, stop XDP
    /// replies, remove the VIPs, report that nothing is held.
    /// `conflicts` are the XDP program's reports of foreign claims (ARP
    /// and NDP).
    pub(crate) async fn run(
        mut self,
        mut conflicts: Option<ConflictReader>,
        cancel: CancellationToken,
    ) {
        let mut events = if self.settings.netlink_events {
            match self.netlink.monitor() {
                Ok(rx) => Some(rx),
                Err(e) => {
                    error!(error = %e, "cannot watch netlink events; reconciling on the timer only");
                    None
                }
            }
        } else {
            None
        };
        let mut tick = tokio::time::interval(self.settings.reconcile_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await;

        // First pass: whatever role we start in (a follower removes the VIPs
        // an earlier term or a crash left behind).
        let first = self.desired.borrow_and_update().clone();
        self.apply(first).await;

        loop {
            #[cfg(debug_assertions)]
            debug_fault().await;
            let sync_due = self.sync.as_ref().map(|s| s.next);
            let grace_due = match self.links_down_since {
                Some(since) if self.links_down.is_empty() => Some(since + self.settings.link_grace),
                _ => None,
            };
            let conflict_due = self.pending_conflict_answers.values().min().copied();
            let lease_end = match (self.applied.role, self.applied.lease) {
                (Role::Leader, Some(l)) => Some(tokio::time::Instant::from_std(l.until)),
                _ => None,
            };
            let probe_due = match self.applied.role {
                Role::Leader => self.probing.due(),
                Role::Follower => None,
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
                // Our own adds and renewals (one per VIP per lease renewal)
                // describe what we just wrote: no pass for them.
                Some(ev) = recv_opt(&mut events) => if ev != NetEvent::OwnAddress {
                    self.debounce(ev, events.as_mut()).await;
                    self.reconcile(false).await;
                },
                () = sleep_opt(lease_end) => self.lease_ran_out().await,
                Some(c) = next_conflict(&mut conflicts) => self.on_conflict(c),
                () = sleep_opt(sync_due) => self.sync_round().await,
                () = sleep_opt(self.refresh) => self.refresh_round().await,
                // The grace ran out: a pass reports the interfaces still down.
                () = sleep_opt(grace_due) => self.reconcile(false).await,
                () = sleep_opt(conflict_due) => self.answer_due_conflicts(),
                () = sleep_opt(self.delivery_check) => self.check_delivery(),
                Some(done) = self.probing.done_rx.recv() => {
                    self.on_probe_done(done);
                    self.reconcile(false).await;
                }
                // A VIP found in use is due to be probed again.
                () = sleep_opt(probe_due) => self.reconcile(false).await,
                _ = tick.tick() => self.reconcile(false).await,
            }
        }
        self.step_down("shutdown").await;
    }

    /// Applies what the source wants now.
    async fn apply(&mut self, d: Desired) {
        if self.applied.role == Role::Leader && self.applied.same_but_lease(&d) {
            let renewed = self.applied.lease != d.lease;
            let recorded = self.applied.record != d.record;
            self.applied.lease = d.lease;
            self.applied.record = d.record;
            if renewed {
                self.renew_lease().await;
            }
            // A VIP the probe holds back may be cleared by the record now.
            if recorded {
                self.reconcile(false).await;
            }
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
            self.addresses_renewed = None;
            info!(
                term = self.applied.term,
                vips = self.applied.vips.len(),
                "leader term starts"
            );
            self.status.send_modify(|s| s.leader_terms += 1);
        }
        self.reconcile(new_term).await;
        if new_term {
            // The sync rounds count from the term's first announcement.
            self.sync = (self.settings.garp_rounds > 0).then(|| SyncRounds {
                remaining: self.settings.garp_rounds,
                next: tokio::time::Instant::now() + self.settings.garp_interval,
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
        self.addresses_renewed = None;
        self.refresh = None;
        self.pending_conflict_answers.clear();
        self.probing.step_down();
        self.announcer.clear();
        // The lease ends now for every entry: fenced until its address is
        // surely gone from the kernel.
        if let Err(e) = self.hold_in_xdp(BTreeMap::new()) {
            error!(error = %e, "cannot fence the XDP held-VIP entries");
        }
        if self.applied.role == Role::Leader {
            self.applied.role = Role::Follower;
        }
        info!(reason = why, "stepping down: removing VIPs");
        self.reconcile(false).await;
    }

    /// An acknowledged lease renewal (and only that) may extend an address:
    /// restart every held address's kernel lifetime, with vipd's mark (when
    /// the lifetime has run down enough to need it), and move the XDP
    /// entries' expiry.
    /// No reconcile pass: nothing but the lease changed.
    async fn renew_lease(&mut self) {
        let Some(lease) = self.applied.lease else {
            return;
        };
        // Announcements still queued go on under the renewed lease.
        self.announcer.extend(self.lease_end());
        let started = Instant::now();
        let mut errors = 0;
        let mut addresses = lease.renews_addresses(self.addresses_renewed);
        if addresses && lease.lifetime_at(started).is_none() {
            // Answered so late that even 1 s of lifetime would outlive a
            // successor's takeover: the addresses keep what they have, and
            // the next renewal answered in time renews them.
            warn!(
                lease_left_ms = lease.until.saturating_duration_since(started).as_millis(),
                "lease renewal answered too late to extend the VIPs' kernel lifetime"
            );
            addresses = false;
        }
        if addresses {
            self.addresses_renewed = Some(started);
        }
        // Resumed where the last renewal ran out of lease, so a pass cut
        // short never leaves the same VIPs behind twice.
        let writes: Vec<(Vip, Placement)> = if addresses {
            let from = self.renew_resume.take();
            let (head, tail): (Vec<_>, Vec<_>) = self
                .held
                .iter()
                .map(|(vip, placement)| (*vip, *placement))
                .partition(|(vip, _)| from.is_some_and(|from| *vip >= from));
            head.into_iter().chain(tail).collect()
        } else {
            Vec::new()
        };
        let outcomes = self.write_addresses(WriteKind::Renew, &writes).await;
        let mut late = 0;
        for ((vip, _), outcome) in writes.iter().zip(outcomes) {
            match outcome {
                Written::Sent(_, Ok(())) => {}
                Written::Sent(_, Err(e)) => {
                    errors += 1;
                    warn!(vip = %vip, error = %e, "cannot renew the VIP's lifetime");
                }
                Written::Late => {
                    if late == 0 {
                        self.renew_resume = Some(*vip);
                    }
                    late += 1;
                }
            }
        }
        if late > 0 {
            warn!(
                late,
                of = writes.len(),
                "lease ran low while renewing; the rest are renewed first next time"
            );
        }
        if self.xdp_program.is_some() && self.settings.xdp_responder && Instant::now() < lease.until
        {
            let entries = self.xdp_entries();
            if let Err(e) = self.hold_in_xdp(entries) {
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
        self.beat();
    }

    /// Tells the source the engine is alive: passes finished and the lease
    /// grant applied (the source stops renewing a lease its engine ignores).
    fn beat(&self) {
        let (passes, lease) = (self.passes, self.applied.lease.map(|l| l.until));
        self.report.send_if_modified(|r| {
            let changed = r.passes != passes || r.lease_applied != lease;
            r.passes = passes;
            r.lease_applied = lease;
            changed
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
    /// dropped, unless a renewal extends it first.
    fn lease_end(&self) -> Option<tokio::time::Instant> {
        self.lease()
            .map(|l| tokio::time::Instant::from_std(l.until))
    }

    /// Whether the lease (if any) still runs now.
    fn lease_valid(&self) -> bool {
        self.lease().is_none_or(|l| Instant::now() < l.until)
    }

    /// The lease in force: the applied one, or a renewal of it that arrived
    /// while this task was busy (a pass adding thousands of VIPs outlasts a
    /// short lease; its renewals wait in `desired` until the pass ends, and
    /// are as valid as applied ones: the source granted them).
    fn lease(&self) -> Option<crate::role::LeaseGrant> {
        let applied = self.applied.lease?;
        if self.applied.role != Role::Leader {
            return Some(applied);
        }
        let desired = self.desired.borrow();
        match desired.lease {
            Some(newer) if desired.same_but_lease(&self.applied) && newer.until > applied.until => {
                Some(newer)
            }
            _ => Some(applied),
        }
    }

    /// One sync round: re-check every VIP and announce each one held.
    async fn sync_round(&mut self) {
        let Some(s) = self.sync.as_mut() else { return };
        s.remaining -= 1;
        let left = s.remaining;
        if left == 0 {
            self.sync = None;
            self.start_refresh();
        } else {
            s.next += self.settings.garp_interval;
        }
        debug!(rounds_left = left, "sync round");
        self.reconcile(true).await;
    }

    /// After the sync rounds: re-announce every `garp_refresh` (zero: never),
    /// so a receiver that missed them still learns where the VIPs live.
    fn start_refresh(&mut self) {
        self.refresh = (!self.settings.garp_refresh.is_zero() && self.applied.role == Role::Leader)
            .then(|| tokio::time::Instant::now() + self.settings.garp_refresh);
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

    /// Waits out a burst of netlink events so it costs one pass.
    async fn debounce(&mut self, first: NetEvent, events: Option<&mut mpsc::Receiver<NetEvent>>) {
        let mut overrun = first == NetEvent::Overrun;
        if let Some(rx) = events {
            if !self.settings.event_debounce.is_zero() {
                tokio::time::sleep(self.settings.event_debounce).await;
            }
            while let Ok(ev) = rx.try_recv() {
                overrun |= ev == NetEvent::Overrun;
            }
        }
        if overrun {
            warn!("netlink event queue overran; state is re-read in full");
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
}

/// Tests only (debug builds): when the file named by
/// `VIPD_DEBUG_ENGINE_FAULT` exists, the engine hangs (`hang`) or panics
/// (`panic`) here, so the integration tests can make a sick engine. A
/// release build has no such code.
#[cfg(debug_assertions)]
async fn debug_fault() {
    let Some(path) = std::env::var_os("VIPD_DEBUG_ENGINE_FAULT") else {
        return;
    };
    match std::fs::read_to_string(path).as_deref().map(str::trim) {
        Ok("hang") => {
            warn!("debug fault: the engine hangs");
            std::future::pending::<()>().await;
        }
        Ok("panic") => panic!("debug fault: the engine panics"),
        _ => {}
    }
}

async fn recv_opt(rx: &mut Option<mpsc::Receiver<NetEvent>>) -> Option<NetEvent> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_conflict(r: &mut Option<ConflictReader>) -> Option<Conflict> {
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

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
