//! The fence: where a held VIP is in its life, and the ingress checks of
//! IP packets addressed to a fenced VIP.
//!
//! An entry is leased before its lease end (answered, claims reported), fenced
//! from its lease end to its fence end (the address may still be in the
//! kernel: nothing that would serve the VIP gets in or out), and inert after
//! (as if there were no entry: an address an operator adds later is never
//! blocked).

use aya_ebpf::programs::XdpContext;
use vipd_common::{HeldVip, Vip6Key, VipKey};

use crate::{HELD_VIPS, HELD_VIPS6, ptr_at};

/// Where the program's clock is in a held entry's life.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Leased,
    Fenced,
    Inert,
}

/// The phase of `held` now. The clock counts suspend, as the agent's does.
#[inline(always)]
pub(crate) fn phase(held: &HeldVip) -> Phase {
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() };
    if now < held.lease_end_ns {
        Phase::Leased
    } else if now < held.fence_end_ns {
        Phase::Fenced
    } else {
        Phase::Inert
    }
}

/// The held entry of IPv4 VIP `key` and its phase now.
#[inline(always)]
pub(crate) fn held4(key: VipKey) -> Option<(HeldVip, Phase)> {
    // SAFETY: read-only lookup; the value is copied out at once.
    let held = (unsafe { HELD_VIPS.get(key) }).copied()?;
    Some((held, phase(&held)))
}

/// The held entry of IPv6 VIP `key` and its phase now.
#[inline(always)]
pub(crate) fn held6(key: &Vip6Key) -> Option<(HeldVip, Phase)> {
    // SAFETY: read-only lookup; the value is copied out at once.
    let held = (unsafe { HELD_VIPS6.get(key) }).copied()?;
    Some((held, phase(&held)))
}

#[inline(always)]
pub(crate) fn fenced4(key: VipKey) -> bool {
    matches!(held4(key), Some((_, Phase::Fenced)))
}

#[inline(always)]
pub(crate) fn fenced6(key: &Vip6Key) -> bool {
    matches!(held6(key), Some((_, Phase::Fenced)))
}

/// The addresses of an IPv4 header (20 bytes without options; the
/// addresses sit at the same place with them).
#[repr(C)]
struct Ipv4Addrs {
    head: [u8; 12],
    src: [u8; 4],
    dst: [u8; 4],
}

/// The addresses of an IPv6 header.
#[repr(C)]
struct Ipv6Addrs {
    head: [u8; 8],
    src: [u8; 16],
    dst: [u8; 16],
}

/// Whether the IPv4 packet at `l3` is addressed to a fenced VIP.
#[inline(always)]
pub(crate) fn ipv4_to_fenced(ctx: &XdpContext, l3: usize) -> Result<bool, ()> {
    let ip: *const Ipv4Addrs = ptr_at(ctx, l3)?;
    // SAFETY: bounds checked by `ptr_at`; copied out at once.
    let (version, dst) = unsafe { ((*ip).head[0] >> 4, (*ip).dst) };
    Ok(version == 4 && fenced4(vipd_common::vip_key(dst)))
}

/// Whether the IPv6 packet at `l3` is addressed to a fenced VIP.
#[inline(always)]
pub(crate) fn ipv6_to_fenced(ctx: &XdpContext, l3: usize) -> Result<bool, ()> {
    let ip: *const Ipv6Addrs = ptr_at(ctx, l3)?;
    // SAFETY: bounds checked by `ptr_at`; copied out at once.
    let (version, dst) = unsafe { ((*ip).head[0] >> 4, (*ip).dst) };
    Ok(version == 6 && fenced6(&dst))
}

/// TCX verdicts: let the next program (or the stack) decide, or drop.
const TCX_NEXT: i32 = -1;
const TCX_DROP: i32 = 2;
const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
/// Offset of the sender protocol address in an Ethernet/IPv4 ARP packet.
const ARP_SPA: usize = 14;
const IPPROTO_ICMPV6: u8 = 58;
const ND_NEIGHBOR_ADVERT: u8 = 136;
/// Offset of an advertisement's target from the ICMPv6 header.
const NA_TARGET: usize = 8;

/// The egress fence: a frame leaving any interface of the node from a
/// fenced VIP is dropped (IPv4 or IPv6 with the VIP as source: services'
/// replies and old sockets' retransmissions; ARP with the VIP as sender;
/// Neighbor Advertisements for it). Anything else goes on.
#[aya_ebpf::macros::classifier]
pub fn vipd_egress(ctx: aya_ebpf::programs::TcContext) -> i32 {
    match egress_fenced(&ctx) {
        Ok(true) => TCX_DROP,
        _ => TCX_NEXT,
    }
}

#[inline(always)]
fn egress_fenced(ctx: &aya_ebpf::programs::TcContext) -> Result<bool, ()> {
    let mut ethertype: [u8; 2] = ctx.load(12).map_err(|_| ())?;
    let mut l3 = ETH_HLEN;
    if ethertype == crate::ETH_P_8021Q || ethertype == crate::ETH_P_8021AD {
        ethertype = ctx.load(ETH_HLEN + 2).map_err(|_| ())?;
        l3 += VLAN_HLEN;
    }
    if ethertype == crate::ETH_P_ARP {
        let spa: [u8; 4] = ctx.load(l3 + ARP_SPA).map_err(|_| ())?;
        return Ok(fenced4(vipd_common::vip_key(spa)));
    }
    if ethertype == crate::ETH_P_IP {
        let ip: Ipv4Addrs = ctx.load(l3).map_err(|_| ())?;
        return Ok(ip.head[0] >> 4 == 4 && fenced4(vipd_common::vip_key(ip.src)));
    }
    if ethertype == crate::ETH_P_IPV6 {
        let ip: Ipv6Addrs = ctx.load(l3).map_err(|_| ())?;
        if ip.head[0] >> 4 != 6 {
            return Ok(false);
        }
        if fenced6(&ip.src) {
            return Ok(true);
        }
        // next header (byte 6 of the IPv6 header): an advertisement of the
        // VIP sent from another address (link-local) still claims it.
        if ip.head[6] == IPPROTO_ICMPV6 {
            let icmp = l3 + core::mem::size_of::<Ipv6Addrs>();
            let kind: u8 = ctx.load(icmp).map_err(|_| ())?;
            if kind == ND_NEIGHBOR_ADVERT {
                let target: Vip6Key = ctx.load(icmp + NA_TARGET).map_err(|_| ())?;
                return Ok(fenced6(&target));
            }
        }
    }
    Ok(false)
}
