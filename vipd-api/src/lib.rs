//! What vipd's control socket answers, as types: the agent builds its
//! answers from them, vipctl reads them back, the tests check them. A crate
//! of its own, on serde alone, so that a reader (the tests, xtask) needs
//! neither the agent nor its eBPF build. docs/API.md describes these types;
//! a test here fails when the two differ.
//!
//! Addresses are `IpAddr`: the agent's validated `Vip` serializes to the
//! same text, and a reader has no use for the validation.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

#[cfg(test)]
mod schema;

/// One request line on the control socket: `{"request":"status"}`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status,
    ArpStats,
}

/// The answer to a request the agent cannot read.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorAnswer {
    pub error: String,
}

/// This node's role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Not the leader (also: fenced, stepping down, not yet elected).
    #[default]
    Follower,
    /// The leader: places and announces every configured VIP.
    Leader,
}

impl Role {
    /// The role as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Leader => "leader",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `vipctl status`: everything the agent shows about itself.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub node_id: String,
    /// `static` (single node, `--static-vips`) or `zookeeper`.
    pub mode: String,
    pub role: Role,
    /// The leader term last applied by the engine.
    pub term: u64,
    /// Leader terms this agent started (becoming leader, or a new term).
    pub leader_terms: u64,
    /// One entry per configured VIP, IPv4 first.
    pub vips: Vec<VipStatus>,
    pub last_reconcile: ReconcileSummary,
    pub xdp: XdpStatus,
    /// Foreign claims of our VIPs, per VIP.
    pub conflicts: BTreeMap<IpAddr, ConflictStatus>,
    pub lease: LeaseStatus,
    /// Announcement frames, per VIP.
    pub announcements: BTreeMap<IpAddr, AnnounceStats>,
    /// TCP handoff (connections published, tickles sent, sockets
    /// aborted), per VIP; empty with `--tcp-handoff false`.
    #[serde(default)]
    pub tcp_handoff: BTreeMap<IpAddr, TcpHandoffStats>,
    /// `None` in single-node mode.
    pub zookeeper: Option<ZooKeeperStatus>,
    pub links: LinkHealth,
    pub probes: ProbeStats,
    /// `None` without health checks.
    pub health: Option<HealthStatus>,
}

impl Status {
    /// The entry of `vip`, if it is configured.
    pub fn vip(&self, vip: IpAddr) -> Option<&VipStatus> {
        self.vips.iter().find(|v| v.vip == vip)
    }

    /// Whether `vip` is held here.
    pub fn holds(&self, vip: IpAddr) -> bool {
        self.vip(vip).is_some_and(|v| v.state == VipState::Held)
    }
}

/// What became of one configured VIP on the last pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

impl VipState {
    /// The state as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            VipState::Held => "held",
            VipState::NoRoute => "no_route",
            VipState::OperatorAddress => "operator_address",
            VipState::Error => "error",
            VipState::NotLeader => "not_leader",
            VipState::Probing => "probing",
            VipState::AddressInUse => "address_in_use",
        }
    }

    /// Every state, for tests and documentation.
    pub const ALL: [VipState; 7] = [
        VipState::Held,
        VipState::NoRoute,
        VipState::OperatorAddress,
        VipState::Error,
        VipState::NotLeader,
        VipState::Probing,
        VipState::AddressInUse,
    ];
}

/// One VIP as the engine last saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipStatus {
    pub vip: IpAddr,
    pub state: VipState,
    pub interface: Option<String>,
    pub ifindex: Option<u32>,
    pub prefix_len: Option<u8>,
    pub error: Option<String>,
    /// With `address_in_use`: the MAC of the host answering for it.
    pub in_use_by: Option<String>,
}

/// Outcome of the last reconcile pass, and totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// The XDP program: the setting, where it is attached and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdpStatus {
    /// False with `--no-xdp`.
    pub enabled: bool,
    /// `--xdp-mode`; `None` with `--no-xdp` (or before the engine starts).
    pub setting: Option<XdpSetting>,
    pub attached: Vec<XdpAttachment>,
    pub errors: Vec<String>,
    /// VIPs the XDP maps hold, per family.
    pub capacity: u32,
    /// Configured VIPs beyond it (both families): the kernel alone answers
    /// for them.
    pub over_capacity: usize,
    /// The fence outlives the agent: the programs' links and maps are
    /// pinned in `bpf_dir`, so a killed or frozen vipd's VIPs are fenced
    /// at their lease end by the kernel alone.
    #[serde(default)]
    pub pinned: bool,
    /// Where the fence is pinned (`--bpf-dir`); `None`: nowhere.
    #[serde(default)]
    pub bpf_dir: Option<String>,
    /// Every VIP with an entry in the programs' held maps, and its fence.
    /// A VIP not listed has none: inert, the programs leave it alone.
    #[serde(default)]
    pub fence: Vec<VipFence>,
}

/// The programs' view of one VIP: served until its lease end, fenced from
/// then until the end of its window, inert after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipFence {
    pub vip: IpAddr,
    pub state: FenceState,
    /// `serving`: the lease's end; `fenced`: the window's end (wall clock,
    /// ms since the Unix epoch). `None`: no end (a VIP without a lease, or
    /// fenced until vipd clears it).
    pub until_unix_ms: Option<u64>,
}

/// The fence state of a VIP in the programs' maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FenceState {
    /// Before its lease end: answered and served.
    Serving,
    /// Between its lease end and its window's end: nothing answers, nothing
    /// enters or leaves with the VIP.
    Fenced,
    /// Past its window: left alone.
    Inert,
}

impl FenceState {
    pub fn as_str(self) -> &'static str {
        match self {
            FenceState::Serving => "serving",
            FenceState::Fenced => "fenced",
            FenceState::Inert => "inert",
        }
    }

    /// Every state, for tests and documentation.
    pub const ALL: [FenceState; 3] = [FenceState::Serving, FenceState::Fenced, FenceState::Inert];
}

/// The `--xdp-mode` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpSetting {
    Auto,
    Native,
    Generic,
}

/// The mode an interface's program runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachedMode {
    Native,
    Generic,
}

impl AttachedMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
        }
    }
}

/// One interface the program is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdpAttachment {
    pub interface: String,
    pub mode: AttachedMode,
    /// The driver as ethtool names it (`None` if it could not be read).
    pub driver: Option<String>,
    /// Why this mode, in words.
    pub reason: String,
    /// Why this mode, as a stable code (`configured`, `driver_native`,
    /// `driver_loses_native_tx`, `native_refused`, `fallback`, `adopted`).
    pub reason_code: String,
}

/// A foreign claim of one of our VIPs, as last seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictStatus {
    pub events: u64,
    pub last_mac: Option<String>,
    pub last_interface: Option<String>,
    pub last_unix_ms: Option<u64>,
}

/// What the engine did with the leader's lease.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// Announcement frames of one VIP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceStats {
    pub frames_sent: u64,
    pub last_sent_unix_ms: Option<u64>,
    /// Frames that could not be sent (socket open or send failed).
    pub errors: u64,
    /// Frames dropped unsent: the VIP was no longer held there, or the
    /// lease had run out, when their turn came.
    pub dropped: u64,
}

/// The TCP handoff of one VIP since start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpHandoffStats {
    /// Connections in this node's last publish of the VIP.
    pub published: u64,
    /// Connections over the cap, left out of the last publish.
    pub publish_overflow: u64,
    /// Tickle ACKs sent to the clients of the VIP's last holder.
    pub tickles_sent: u64,
    /// Tickles that could not be sent.
    pub tickle_errors: u64,
    /// Local TCP sockets aborted after the VIP was released.
    pub aborted: u64,
    /// Releases of an IPv6 VIP whose sockets were left alone because the
    /// egress fence was not dropping the VIP's frames.
    pub not_aborted: u64,
}

/// Coordination as this node sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZooKeeperStatus {
    /// `connecting`, `connected`, `disconnected`, `expired` or `closed`.
    pub session: String,
    /// Node id of the current leader, as last seen.
    pub leader: Option<String>,
    pub is_leader: bool,
    /// The leader's term: the sequence number of its election znode.
    pub term: Option<u64>,
    /// Elected, but not acting as leader: the lease ran out without an
    /// acknowledged renewal.
    pub fenced: bool,
    pub services: BTreeMap<String, ServiceStatus>,
    /// VIPs named by more than one service: served once, reported.
    pub duplicate_vips: Vec<IpAddr>,
    /// On the leader: VIPs it cannot serve, with why, while no standing
    /// member can serve more.
    pub unplaceable: BTreeMap<IpAddr, String>,
    pub last_error: Option<String>,
    /// Why this node does not stand for election now; None: it stands.
    pub withdrawn: Option<String>,
    /// The lease this node leads on in the current session.
    pub lease_ms: u64,
    /// The session timeout ZooKeeper granted the current session.
    pub granted_session_ms: Option<u64>,
    /// Why `lease_ms` is not the configured lease, or why this node does
    /// not stand on this session; None: as configured.
    pub lease_adjusted: Option<String>,
    /// Znodes of the cluster's tree anyone who reaches ZooKeeper may change.
    pub tree_acl: TreeAcl,
}

/// What one service's znode gives this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// The VIPs served for it (the last good ones while `error` is set).
    pub vips: Vec<IpAddr>,
    /// Entries of the list that are not VIPs: dropped, the others kept.
    #[serde(default)]
    pub refused: Vec<RefusedValue>,
    /// Why the znode's data cannot be parsed at all; `None` when it parses.
    pub error: Option<String>,
    /// `vips` are the last good configuration, kept while `error` is set.
    #[serde(default)]
    pub last_good: bool,
}

/// One entry of a service's list that is not a VIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedValue {
    /// The entry as written (JSON text when it is not a string), shortened.
    pub value: String,
    pub reason: String,
}

/// The cluster's tree as last searched for znodes anyone may change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeAcl {
    /// How many znodes are open; 0 when all are protected.
    pub open_znodes: usize,
    /// The first few of them.
    pub examples: Vec<String>,
}

/// The VIP interfaces' state: down ones withdraw this node after the grace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkHealth {
    /// Interfaces of configured VIPs that are down or without carrier now.
    pub down: Vec<String>,
    /// Milliseconds they have been down (None: every one is up).
    pub down_for_ms: Option<u64>,
    /// Down past the grace: this node does not stand, a leader hands over.
    pub withdrawn: bool,
}

/// What the address-conflict probes found, one count per VIP probed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// The health checks; `healthy` is what the election reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// Every check healthy (false while one has no result yet).
    pub healthy: bool,
    pub checks: Vec<CheckStatus>,
}

/// One health check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckStatus {
    /// As given on the command line.
    pub check: String,
    /// `None` before its first result.
    pub healthy: Option<bool>,
    pub consecutive_ok: u32,
    pub consecutive_failed: u32,
    pub runs: u64,
    pub failures: u64,
    /// Why the last run failed (None after a success).
    pub last_error: Option<String>,
    pub last_duration_ms: Option<u64>,
}

/// `vipctl arp stats`: the XDP program's counters per VIP.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ArpStats {
    pub role: Role,
    pub xdp: bool,
    pub vips: Vec<ArpStatsRow>,
}

/// One row of `vipctl arp stats`. For an IPv6 VIP the counters are of
/// Neighbor Discovery: solicitations for requests, the XDP program's
/// solicited advertisements for replies, advertisements of the VIP for
/// announcements, unsolicited Neighbor Advertisements for announcements
/// sent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ArpStatsRow {
    pub vip: IpAddr,
    pub interface: Option<String>,
    pub held: bool,
    /// ARP requests for the VIP seen by the XDP program.
    pub requests: u64,
    /// Requests answered by the XDP program.
    pub xdp_replies: u64,
    /// Replies and gratuitous announcements about the VIP seen coming in.
    pub announcements_seen: u64,
    /// Gratuitous ARP frames this agent sent for the VIP.
    pub announcements_sent: u64,
    /// Claims of the VIP from a MAC that is not ours, while we held it.
    pub foreign_claims: u64,
    pub last_foreign_mac: Option<String>,
}
