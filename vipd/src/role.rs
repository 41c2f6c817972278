//! The contract between a source of truth (static flags or ZooKeeper) and the
//! engine: the source says what this node should do; the engine says what it
//! has done, so the source can release leadership only once VIPs are gone.

use std::collections::BTreeSet;

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
}
