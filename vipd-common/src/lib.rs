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
/// Name of the per-CPU map of watched IPv6 VIPs and their NDP counters.
pub const MAP_COUNTERS6: &str = "VIP_COUNTERS6";
/// Name of the map of IPv6 VIPs this node holds (VIP -> [`HeldVip`]).
pub const MAP_HELD6: &str = "HELD_VIPS6";
/// Name of the ring buffer carrying [`ConflictEvent6`]s to the agent.
pub const MAP_CONFLICTS6: &str = "CONFLICTS6";
/// Name of the XDP program in the object.
pub const PROGRAM_NAME: &str = "vipd_xdp";
/// Name of the egress (TCX) program in the object: the fence on the way out.
pub const EGRESS_PROGRAM_NAME: &str = "vipd_egress";

/// Version of the maps' layout (their names, types, keys and values).
/// Pinned maps live under a directory named for it; bump it whenever any
/// of these changes, so a new agent never reads an old layout's entries as
/// its own.
pub const MAPS_LAYOUT: u32 = 1;

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

/// Map key of an IPv6 VIP: its sixteen bytes in network order.
pub type Vip6Key = [u8; 16];

/// ARP traffic about one IPv4 VIP, counted per CPU by the XDP program.
///
/// The same type counts Neighbor Discovery (RFC 4861) for an IPv6 VIP (in
/// [`MAP_COUNTERS6`], see [`NdpCounters`]); only messages that pass the
/// RFC's validation count there:
/// - `requests`: Neighbor Solicitations whose target is the VIP, duplicate
///   address detection probes (source `::`) included;
/// - `xdp_replies`: solicited Neighbor Advertisements the program sent;
/// - `announcements`: Neighbor Advertisements whose target is the VIP, from
///   any MAC (ours included);
/// - `foreign_claims`: for a VIP this node holds, by a MAC that is not the
///   holding interface's: advertisements of it, DAD probes for it, and
///   solicitations sent from it.
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

/// [`ArpCounters`] as the NDP counters of an IPv6 VIP (the field mapping is
/// documented there).
pub type NdpCounters = ArpCounters;

/// Where a VIP this node holds lives: the XDP program answers ARP requests
/// (IPv4) or Neighbor Solicitations (IPv6) for it only on this interface,
/// with this MAC.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldVip {
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// VLAN id the VIP lives on as the program sees frames on `ifindex`:
    /// 0 for untagged frames. A request tagged with another VLAN passes, so
    /// the program never answers for a segment the VIP is not on.
    pub vlan: u16,
    /// [`HELD_ROUTER`] and future bits; 0 for none.
    pub flags: u8,
    pub _pad: [u8; 3],
    /// The leader's lease end on the `bpf_ktime_get_boot_ns` clock (the
    /// host's CLOCK_BOOTTIME, nanoseconds; it counts suspend): the program
    /// answers and reports claims only before it, so a frozen agent's
    /// program falls silent at the lease's end. `u64::MAX`: no lease
    /// (single-node mode). A voluntary release sets it to the moment of the
    /// release.
    pub lease_end_ns: u64,
    /// The end of the fence window on the same clock: from `lease_end_ns`
    /// until here the VIP's address may still be in the kernel, and the
    /// programs drop what would serve it (ingress and egress). Past it the
    /// entry is inert. `u64::MAX` while the agent writes the address (until
    /// the kernel's acknowledgement tells when its lifetime ends).
    pub fence_end_ns: u64,
}

/// [`HeldVip::lease_end_ns`] of an entry that never expires.
pub const NO_EXPIRY: u64 = u64::MAX;

/// [`HeldVip::flags`] bit of an IPv6 VIP whose interface forwards
/// (`net.ipv6.conf.<if>.forwarding`): the program's solicited Neighbor
/// Advertisements carry the Router flag, as the agent's unsolicited ones
/// do. Ignored for IPv4.
pub const HELD_ROUTER: u8 = 1;

/// A foreign claim of a held IPv4 VIP seen by the XDP program, sent to the
/// agent through [`MAP_CONFLICTS`].
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

/// A foreign claim of a held IPv6 VIP seen by the XDP program, sent to the
/// agent through [`MAP_CONFLICTS6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConflictEvent6 {
    /// The VIP, network order.
    pub vip: [u8; 16],
    /// Interface the claim arrived on.
    pub ifindex: u32,
    /// The claimant's hardware address: the advertisement's Target
    /// Link-Layer Address option, a solicitation's Source Link-Layer Address
    /// option, or else the frame's Ethernet source.
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
    unsafe impl aya::Pod for super::ConflictEvent6 {}
}
