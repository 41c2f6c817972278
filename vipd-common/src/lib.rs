//! Plain data shared by the agent and its XDP program.
//!
//! Every type here is `#[repr(C)]`, holds addresses as bytes in network
//! order, and carries no `bool` or enum, so both halves agree on the layout.
#![no_std]

/// Name of the per-CPU map of watched VIPs and their ARP counters.
pub const MAP_COUNTERS: &str = "VIP_COUNTERS";
/// Name of the map of VIPs this node holds (VIP -> [`HeldVip`]).
pub const MAP_HELD: &str = "HELD_VIPS";
/// Name of the ring buffer carrying [`ConflictEvent`]s to the agent.
pub const MAP_CONFLICTS: &str = "CONFLICTS";
/// Name of the XDP program in the object.
pub const PROGRAM_NAME: &str = "vipd_xdp";

/// Maximum number of VIPs the maps can hold.
pub const MAX_VIPS: u32 = 8192;
/// Size of the conflict ring buffer in bytes (a power of two, page multiple).
pub const CONFLICT_RING_BYTES: u32 = 64 * 1024;

/// Map key: an IPv4 address as its four bytes in network order.
///
/// Stored as a `u32` built with `from_ne_bytes` of the network-order bytes, so
/// both halves can compare it directly against the bytes of a frame.
pub type VipKey = u32;

/// Builds the map key of an address given in network order.
#[inline(always)]
pub const fn vip_key(octets: [u8; 4]) -> VipKey {
    u32::from_ne_bytes(octets)
}

/// Returns the network-order bytes of a map key.
#[inline(always)]
pub const fn vip_octets(key: VipKey) -> [u8; 4] {
    key.to_ne_bytes()
}

/// ARP traffic about one VIP, counted per CPU by the XDP program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArpCounters {
    /// ARP requests whose target address is the VIP.
    pub requests: u64,
    /// Requests answered by the XDP program itself (XDP_TX).
    pub xdp_replies: u64,
    /// ARP replies and gratuitous announcements whose sender address is the
    /// VIP, from any MAC (ours included, as seen coming back in).
    pub announcements: u64,
    /// Replies, announcements or requests sent from a VIP this node holds,
    /// by a MAC that is not the holding interface's: another node claims
    /// (or uses) our VIP.
    pub foreign_claims: u64,
}

impl ArpCounters {
    /// Adds another CPU's counters to these.
    pub fn accumulate(&mut self, other: &ArpCounters) {
        self.requests += other.requests;
        self.xdp_replies += other.xdp_replies;
        self.announcements += other.announcements;
        self.foreign_claims += other.foreign_claims;
    }
}

/// Where a VIP this node holds lives: the XDP program answers ARP requests for
/// it only on this interface, with this MAC.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldVip {
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// VLAN id the VIP lives on as the program sees frames on `ifindex`:
    /// 0 for untagged frames. A request tagged with another VLAN passes, so
    /// the program never answers for a segment the VIP is not on.
    pub vlan: u16,
    pub _pad: [u8; 4],
    /// The leader's lease end on the `bpf_ktime_get_ns` clock
    /// (CLOCK_MONOTONIC, nanoseconds): the program answers and reports
    /// claims only before it, so a frozen agent's program falls silent at
    /// the lease's end (R16). `u64::MAX`: no lease (single-node mode).
    pub expires_ns: u64,
}

/// [`HeldVip::expires_ns`] of an entry that never expires.
pub const NO_EXPIRY: u64 = u64::MAX;

/// A foreign claim seen by the XDP program, sent to the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConflictEvent {
    /// The VIP, network order.
    pub vip: [u8; 4],
    /// Interface the claim arrived on.
    pub ifindex: u32,
    /// Sender hardware address of the claim.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` data without padding holes that could leak
    // (explicit padding fields), valid for every bit pattern.
    unsafe impl aya::Pod for super::ArpCounters {}
    unsafe impl aya::Pod for super::HeldVip {}
    unsafe impl aya::Pod for super::ConflictEvent {}
}
