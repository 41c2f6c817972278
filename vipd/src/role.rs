//! The contract between a source of truth (static flags or ZooKeeper) and the
//! engine: the source says what this node should do; the engine says what it
//! has done, so the source can release leadership only once VIPs are gone.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use crate::vip::Vip;

/// This node's role: the API's type, so the status shows it as it is.
pub use vipd_api::Role;

/// What the source wants of the engine. Sent on a `watch` channel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub role: Role,
    /// Every VIP configured for the cluster (all services merged). Followers
    /// watch them (ARP counters); only a leader places them.
    pub vips: BTreeSet<Vip>,
    /// Leader term: a new value starts a new term (fresh announcements and a
    /// new round of sync passes), even when `role` stays `Leader`.
    pub term: u64,
    /// The leader's lease, which bounds how long it may hold the VIPs:
    /// `None` in single-node mode, where nothing
    /// expires. A change of `lease` alone is a renewal, never a new term.
    pub lease: Option<LeaseGrant>,
    /// What the cluster remembers for the address-conflict probe (empty in
    /// single-node mode). Like the lease, a change of it starts no term.
    pub record: ClusterRecord,
}

/// How long the leader may hold its VIPs, as the engine needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The lease ends here (monotonic clock): no address is added or renewed,
    /// no frame announced, no ARP answered in XDP from then on.
    pub until: Instant,
    /// Valid and preferred lifetime of every VIP address, whole seconds,
    /// when the renewal was answered at once (see [`LeaseGrant::lifetime_at`]).
    pub address_lifetime: u32,
    /// The lease's rules, for the lifetime of a write made later.
    pub times: vipd_lease::LeaseTimes,
}

impl LeaseGrant {
    /// The lifetime to write into an address at `now`: the whole lifetime
    /// when the renewal was answered at once, less when its answer came
    /// late, `None` when no lifetime of 1 s would leave the kernel before a
    /// successor may take over (the address then keeps the lifetime it
    /// has). Counted from the renewal's send, as the successor's wait is,
    /// so a killed or frozen agent's address is gone before the takeover
    /// however late ZooKeeper answered.
    pub fn lifetime_at(&self, now: Instant) -> Option<u32> {
        self.times
            .lifetime_at(self.until, now, vipd_lease::KERNEL_LIFETIME_SLACK)
    }

    /// Whether this grant should renew addresses last renewed (or added)
    /// at `last`: when their lifetime would have less than half left at
    /// this lease's end. A lifetime no longer than the lease (leases from
    /// 1 s on) renews at every grant; a 1 s lifetime under a 200 ms lease
    /// about every 0.3 s, not at each of the lease's 80 renewals a second.
    /// Renewing less often only makes a dead agent's address go sooner.
    pub(crate) fn renews_addresses(&self, last: Option<Instant>) -> bool {
        let half = Duration::from_secs(u64::from(self.address_lifetime)) / 2;
        last.is_none_or(|last| last + half < self.until)
    }
}

impl Desired {
    /// Whether the lease (if any) still runs at `now`.
    pub fn lease_valid(&self, now: Instant) -> bool {
        self.lease.is_none_or(|l| now < l.until)
    }

    /// Whether `other` differs from this only in its lease (and record).
    pub(crate) fn same_but_lease(&self, other: &Desired) -> bool {
        self.role == other.role && self.term == other.term && self.vips == other.vips
    }
}

/// What the engine has done. Sent on a `watch` channel after every pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineReport {
    /// The role and term the engine last applied.
    pub role: Role,
    pub term: u64,
    /// VIPs configured on this node (with vipd's mark) after the last pass.
    pub held: BTreeSet<Vip>,
    /// The configured VIPs this node can serve: a route matches and adding
    /// them has not failed twice in a row. Computed on every pass, whatever
    /// the role, and published for the leader to compare.
    pub servable: BTreeSet<Vip>,
    /// The configured VIPs it cannot serve, with why (no route, or the
    /// kernel's error from the last add).
    pub unservable: BTreeMap<Vip, String>,
    /// Interfaces of wanted VIPs that have been down or without carrier for
    /// longer than the grace: this node cannot serve, it withdraws.
    pub links_down: BTreeSet<String>,
    /// The MACs of this node's interfaces: an answer to an address probe
    /// from one of them comes from the cluster, not from a foreign host.
    pub macs: BTreeSet<[u8; 6]>,
    /// Passes the engine finished (failed ones too) and the end of the last
    /// lease grant it applied: its heartbeat. A leader whose engine shows
    /// neither for [`engine_stall_bound`] stops renewing.
    pub passes: u64,
    pub lease_applied: Option<Instant>,
}

/// The shortest time an engine can take to apply a new lease grant
/// before it counts as stuck.
const MIN_ENGINE_STALL: Duration = Duration::from_secs(2);

/// How long a leader's engine may go without finishing a pass or applying
/// the newest lease grant before the leader stops renewing: the lease (a
/// grant not applied within it has expired unused, and the node's VIPs with
/// it), but at least 2 s, several times the longest pass measured (adding
/// thousands of VIPs takes a few hundred milliseconds), so a short lease
/// does not turn a big pass into a handover.
pub(crate) fn engine_stall_bound(lease: Duration) -> Duration {
    lease.max(MIN_ENGINE_STALL)
}

/// What the cluster remembers that the address-conflict probe needs, as
/// the source last read it. Sent on a `watch` channel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterRecord {
    /// VIPs the cluster has held: added at once, never probed, so a
    /// takeover is never delayed.
    pub held: BTreeSet<Vip>,
    /// Every member's interface MACs: an answer from one of them is no
    /// conflict.
    pub macs: BTreeSet<[u8; 6]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Renewals every 12.5 ms of a 200 ms lease (1 s lifetime), and every
    /// 500 ms of a 2 s lease (2 s lifetime): which grants renew addresses.
    fn renewing_acks(lease: Duration, every: Duration, lifetime: u32, acks: u32) -> Vec<u32> {
        let t0 = Instant::now();
        let mut last = None;
        let mut out = Vec::new();
        for k in 0..acks {
            let sent = t0 + every * k;
            let acked = sent + 2 * MS;
            let grant = LeaseGrant {
                until: sent + lease,
                address_lifetime: lifetime,
                times: vipd_lease::LeaseTimes::new(lease * 4, Some(lease), 100 * MS)
                    .expect("lease times"),
            };
            if grant.renews_addresses(last) {
                last = Some(acked);
                out.push(k);
            }
        }
        out
    }

    #[test]
    fn a_stuck_engine_is_given_the_lease_but_at_least_two_seconds() {
        assert_eq!(engine_stall_bound(200 * MS), Duration::from_secs(2));
        assert_eq!(engine_stall_bound(2000 * MS), Duration::from_secs(2));
        assert_eq!(
            engine_stall_bound(Duration::from_secs(8)),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn addresses_renew_when_half_their_lifetime_is_gone_by_the_lease_end() {
        // 200 ms lease: renew when last + 500 ms < sent + 200 ms, so the
        // address renewed at ack 0 (2 ms) is renewed again by the grant
        // sent at 312.5 ms (ack 25), then 25 acks later: every 312.5 ms.
        let short = renewing_acks(200 * MS, Duration::from_micros(12_500), 1, 80);
        assert_eq!(short, vec![0, 25, 50, 75]);
        // So the address always has more than 0.6 s left, well past the
        // 200 ms lease of the last acknowledged renewal.
        // 2 s lease, 2 s lifetime: every grant renews.
        let long = renewing_acks(2000 * MS, 500 * MS, 2, 8);
        assert_eq!(long, (0..8).collect::<Vec<_>>());
        // 1.9 s lease, 1 s lifetime (rounded down): every grant too.
        let mid = renewing_acks(1900 * MS, 475 * MS, 1, 8);
        assert_eq!(mid, (0..8).collect::<Vec<_>>());
    }
}
