//! The contract between a source of truth (static flags or ZooKeeper) and the
//! engine: the source says what this node should do; the engine says what it
//! has done, so the source can release leadership only once VIPs are gone.

use std::{collections::BTreeSet, time::Instant};

use serde::Serialize;

use crate::vip::Vip;

/// This node's role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Not the leader (also: fenced, stepping down, not yet elected).
    #[default]
    Follower,
    /// The leader: places and announces every configured VIP.
    Leader,
}

/// What the source wants of the engine. Sent on a `watch` channel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub role: Role,
    /// Every VIP configured for the cluster (all services merged). Followers
    /// watch them (ARP counters); only a leader places them.
    pub vips: BTreeSet<Vip>,
    /// Leader term: a new value starts a new term (fresh announcements and a
    /// new R8 sync task), even when `role` stays `Leader`.
    pub term: u64,
    /// The leader's lease (R16): `None` in single-node mode, where nothing
    /// expires. A change of `lease` alone is a renewal, never a new term.
    pub lease: Option<LeaseGrant>,
}

/// How long the leader may hold its VIPs, as the engine needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The lease ends here (monotonic clock): no address is added or renewed,
    /// no frame announced, no ARP answered in XDP from then on.
    pub until: Instant,
    /// Valid and preferred lifetime of every VIP address, whole seconds.
    pub address_lifetime: u32,
}

impl Desired {
    /// Whether the lease (if any) still runs at `now`.
    pub fn lease_valid(&self, now: Instant) -> bool {
        self.lease.is_none_or(|l| now < l.until)
    }

    /// Whether `other` differs from this only in its lease.
    pub fn same_but_lease(&self, other: &Desired) -> bool {
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
    /// Wanted VIPs that no route matches (R4): a leader should give up.
    pub no_route: BTreeSet<Vip>,
    /// Interfaces of wanted VIPs that have been down or without carrier for
    /// longer than the grace (R18): this node cannot serve, it withdraws.
    pub links_down: BTreeSet<String>,
}
