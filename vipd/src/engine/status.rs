//! What the engine publishes for the API, `vipctl status` and the metrics
//! page: output only, never read back by the engine.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{config::XdpMode, role::Role, vip::Vip, xdp::XdpAttachment};

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
    /// Never held by the cluster: being probed for another host using the
    /// address before it is first added.
    Probing,
    /// A host outside the cluster answers for the address: not added,
    /// probed again every `--probe-retry`.
    AddressInUse,
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
    /// With `address_in_use`: the MAC of the host answering for it.
    pub in_use_by: Option<String>,
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
    /// Configured VIPs beyond what the XDP maps hold (both families): the
    /// kernel answers ARP/NDP for them, XDP neither answers nor counts.
    pub xdp_over_capacity: usize,
    pub conflicts: BTreeMap<Vip, ConflictStatus>,
    /// VIP -> interface name, for every VIP the engine knows a place for.
    pub interfaces: BTreeMap<Vip, String>,
    /// Lease renewals applied (address lifetimes and XDP expiry), R16.
    pub lease: LeaseStatus,
    /// VIP interfaces down or without carrier (R18).
    pub links: LinkHealth,
    /// Address-conflict probes, counted per VIP probed.
    pub probes: ProbeStats,
}

/// What the address-conflict probes found, one count per VIP probed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProbeStats {
    pub probed: u64,
    /// Nobody answered: added.
    pub free: u64,
    /// Only cluster nodes answered (a leftover copy): added.
    pub cluster_answers: u64,
    /// A host outside the cluster answered: not added.
    pub in_use: u64,
    /// Probes that could not be made (a socket error).
    pub errors: u64,
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
            (VipState::Probing, "probing"),
            (VipState::AddressInUse, "address_in_use"),
        ];
        for (state, text) in all {
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::Value::from(text)
            );
        }
    }
}
