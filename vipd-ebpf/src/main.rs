//! vipd's XDP program: counts ARP (IPv4) and Neighbor Discovery (IPv6)
//! traffic per watched VIP, answers ARP requests and Neighbor Solicitations
//! for the VIPs this node holds (XDP_TX), and reports foreign claims of held
//! VIPs to the agent. Between a held VIP's lease end and its fence end it
//! drops what would serve the VIP (`fence`). Anything it does not fully
//! understand passes.
#![no_std]
#![no_main]

mod arp;
mod fence;
mod ndp;

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuHashMap, RingBuf},
    programs::XdpContext,
};
use vipd_common::{
    ArpCounters, CONFLICT_RING_BYTES, HeldVip, MAX_VIPS, NdpCounters, Vip6Key, VipKey,
};

pub(crate) use fence::{Phase, held4, held6};

/// Watched IPv4 VIPs and their counters; a VIP absent here is not counted.
#[map(name = "VIP_COUNTERS")]
static VIP_COUNTERS: PerCpuHashMap<VipKey, ArpCounters> =
    PerCpuHashMap::with_max_entries(MAX_VIPS, 0);

/// IPv4 VIPs this node holds: answered in the kernel on their interface.
#[map(name = "HELD_VIPS")]
static HELD_VIPS: HashMap<VipKey, HeldVip> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Foreign claims of held IPv4 VIPs, for the agent.
#[map(name = "CONFLICTS")]
static CONFLICTS: RingBuf = RingBuf::with_byte_size(CONFLICT_RING_BYTES, 0);

/// Watched IPv6 VIPs and their NDP counters.
#[map(name = "VIP_COUNTERS6")]
static VIP_COUNTERS6: PerCpuHashMap<Vip6Key, NdpCounters> =
    PerCpuHashMap::with_max_entries(MAX_VIPS, 0);

/// IPv6 VIPs this node holds: Neighbor Solicitations for them are answered
/// in the kernel on their interface.
#[map(name = "HELD_VIPS6")]
static HELD_VIPS6: HashMap<Vip6Key, HeldVip> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Foreign claims of held IPv6 VIPs, for the agent.
#[map(name = "CONFLICTS6")]
static CONFLICTS6: RingBuf = RingBuf::with_byte_size(CONFLICT_RING_BYTES, 0);

pub(crate) const ETH_P_ARP: [u8; 2] = [0x08, 0x06];
pub(crate) const ETH_P_IP: [u8; 2] = [0x08, 0x00];
pub(crate) const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
pub(crate) const ETH_P_8021Q: [u8; 2] = [0x81, 0x00];
pub(crate) const ETH_P_8021AD: [u8; 2] = [0x88, 0xa8];

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    ethertype: [u8; 2],
}

#[repr(C)]
struct VlanHdr {
    tci: [u8; 2],
    ethertype: [u8; 2],
}

/// Where the payload of an Ethernet frame starts, and what it is.
struct L2 {
    eth: *mut EthHdr,
    ethertype: [u8; 2],
    /// Offset of the payload from the frame's start (14, or 18 when tagged).
    offset: usize,
    /// VLAN id of the one tag, 0 if untagged.
    vlan_id: u16,
}

#[xdp]
pub fn vipd_xdp(ctx: XdpContext) -> u32 {
    match try_vipd_xdp(&ctx) {
        Ok(action) => action,
        Err(()) => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn try_vipd_xdp(ctx: &XdpContext) -> Result<u32, ()> {
    let l2 = l2_header(ctx)?;
    if l2.ethertype == ETH_P_ARP {
        arp::try_arp(ctx, &l2)
    } else if l2.ethertype == ETH_P_IPV6 {
        if fence::ipv6_to_fenced(ctx, l2.offset)? {
            return Ok(xdp_action::XDP_DROP);
        }
        ndp::try_ndp(ctx, &l2)
    } else if l2.ethertype == ETH_P_IP {
        if fence::ipv4_to_fenced(ctx, l2.offset)? {
            return Ok(xdp_action::XDP_DROP);
        }
        Ok(xdp_action::XDP_PASS)
    } else {
        Ok(xdp_action::XDP_PASS)
    }
}

/// Returns a pointer to a `T` at `offset`, after checking that every byte of
/// it lies inside the frame.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}

/// The Ethernet header and at most one VLAN tag.
#[inline(always)]
fn l2_header(ctx: &XdpContext) -> Result<L2, ()> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: `ptr_at` checked that the header lies inside the frame.
    let mut ethertype = unsafe { (*eth).ethertype };
    let mut offset = size_of::<EthHdr>();
    let mut vlan_id = 0u16;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let vlan: *mut VlanHdr = ptr_at(ctx, offset)?;
        // SAFETY: bounds checked by `ptr_at`.
        let (tci, inner) = unsafe { ((*vlan).tci, (*vlan).ethertype) };
        vlan_id = u16::from_be_bytes(tci) & 0x0fff;
        ethertype = inner;
        offset += size_of::<VlanHdr>();
    }
    Ok(L2 {
        eth,
        ethertype,
        offset,
        vlan_id,
    })
}

#[inline(always)]
fn is_unicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0 && *mac != [0u8; 6]
}

/// The interface the frame came in on.
#[inline(always)]
fn ingress_ifindex(ctx: &XdpContext) -> u32 {
    // SAFETY: `ctx.ctx` points at the kernel's xdp_md for this run.
    unsafe { (*ctx.ctx).ingress_ifindex }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
