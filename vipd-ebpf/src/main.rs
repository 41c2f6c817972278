//! vipd's XDP program: counts ARP traffic per watched VIP, answers ARP
//! requests for the VIPs this node holds (XDP_TX), and reports foreign claims
//! of held VIPs to the agent. Anything it does not fully understand passes.
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{HashMap, PerCpuHashMap, RingBuf},
    programs::XdpContext,
};
use vipd_common::{
    ArpCounters, CONFLICT_RING_BYTES, ConflictEvent, HeldVip, MAX_VIPS, VipKey, vip_key,
};

/// Watched VIPs and their counters; a VIP absent here is not counted.
#[map(name = "VIP_COUNTERS")]
static VIP_COUNTERS: PerCpuHashMap<VipKey, ArpCounters> =
    PerCpuHashMap::with_max_entries(MAX_VIPS, 0);

/// VIPs this node holds: answered in the kernel on their interface.
#[map(name = "HELD_VIPS")]
static HELD_VIPS: HashMap<VipKey, HeldVip> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Foreign claims of held VIPs, for the agent.
#[map(name = "CONFLICTS")]
static CONFLICTS: RingBuf = RingBuf::with_byte_size(CONFLICT_RING_BYTES, 0);

const ETH_P_ARP: [u8; 2] = [0x08, 0x06];
const ETH_P_8021Q: [u8; 2] = [0x81, 0x00];
const ETH_P_8021AD: [u8; 2] = [0x88, 0xa8];
const ARPHRD_ETHER: [u8; 2] = [0x00, 0x01];
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const ARPOP_REQUEST: [u8; 2] = [0x00, 0x01];
const ARPOP_REPLY: [u8; 2] = [0x00, 0x02];

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

/// An ARP packet for IPv4 over Ethernet (RFC 826), 28 bytes.
#[repr(C)]
struct EthArp {
    htype: [u8; 2],
    ptype: [u8; 2],
    hlen: u8,
    plen: u8,
    oper: [u8; 2],
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

#[xdp]
pub fn vipd_xdp(ctx: XdpContext) -> u32 {
    match try_vipd_xdp(&ctx) {
        Ok(action) => action,
        Err(()) => xdp_action::XDP_PASS,
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

/// Finds the ARP payload behind an Ethernet header with at most one VLAN tag.
#[inline(always)]
fn arp_header(ctx: &XdpContext) -> Result<(*mut EthHdr, *mut EthArp, u16), ()> {
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
    if ethertype != ETH_P_ARP {
        return Err(());
    }
    let arp: *mut EthArp = ptr_at(ctx, offset)?;
    // SAFETY: bounds checked by `ptr_at`.
    let a = unsafe { &*arp };
    if a.htype != ARPHRD_ETHER || a.ptype != ETH_P_IP || a.hlen != 6 || a.plen != 4 {
        return Err(());
    }
    Ok((eth, arp, vlan_id))
}

#[inline(always)]
fn is_unicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0 && *mac != [0u8; 6]
}

#[inline(always)]
fn try_vipd_xdp(ctx: &XdpContext) -> Result<u32, ()> {
    let (eth, arp, vlan_id) = arp_header(ctx)?;
    // SAFETY: `arp_header` bounds-checked both headers; the frame is ours to
    // read and rewrite for the duration of the program.
    let (eth, arp) = unsafe { (&mut *eth, &mut *arp) };

    if arp.oper == ARPOP_REQUEST && arp.spa != arp.tpa {
        // Asking from our VIP means using it: a claim, though no
        // announcement. Checked before the frame may be rewritten.
        on_request_sender(ctx, arp);
        let vip = arp.tpa;
        return Ok(on_request(ctx, eth, arp, vip, vlan_id));
    }
    if arp.oper == ARPOP_REPLY || arp.oper == ARPOP_REQUEST {
        // A reply, or a gratuitous announcement (either form): the sender
        // says where its address lives.
        on_announcement(ctx, arp);
    }
    Ok(xdp_action::XDP_PASS)
}

/// The held entry of `key` if its lease has not ended: after the expiry the
/// VIP is not ours, whatever the agent (frozen, maybe) last wrote.
#[inline(always)]
fn held_now(key: VipKey) -> Option<HeldVip> {
    // SAFETY: read-only lookup; the value is copied out at once.
    let held = (unsafe { HELD_VIPS.get(key) }).copied()?;
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    (now < held.expires_ns).then_some(held)
}

/// An ARP request for `vip`: count it, and answer it here when this node
/// holds the VIP on the interface the request came in on.
#[inline(always)]
fn on_request(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    arp: &mut EthArp,
    vip: [u8; 4],
    vlan_id: u16,
) -> u32 {
    let key = vip_key(vip);
    let Some(counters) = VIP_COUNTERS.get_ptr_mut(key) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: a per-CPU value of this CPU; nothing else writes it meanwhile.
    let counters = unsafe { &mut *counters };
    counters.requests += 1;

    let Some(held) = held_now(key) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: `ctx.ctx` points at the kernel's xdp_md for this run.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    if held.ifindex != ingress
        || held.vlan != vlan_id
        || !is_unicast(&arp.sha)
        || !is_unicast(&eth.src)
        || arp.sha == held.mac
        || eth.src == held.mac
    {
        return xdp_action::XDP_PASS;
    }

    // Rewrite the request into the reply the kernel would send: to the
    // asker's hardware address, from ours, VLAN tag (if any) untouched.
    let asker_mac = arp.sha;
    let asker_ip = arp.spa;
    eth.dst = asker_mac;
    eth.src = held.mac;
    arp.oper = ARPOP_REPLY;
    arp.sha = held.mac;
    arp.spa = vip;
    arp.tha = asker_mac;
    arp.tpa = asker_ip;
    counters.xdp_replies += 1;
    xdp_action::XDP_TX
}

/// A reply or gratuitous announcement saying where `spa` lives: count it, and
/// report it as a conflict when it claims a held VIP for another MAC.
#[inline(always)]
fn on_announcement(ctx: &XdpContext, arp: &EthArp) {
    let key = vip_key(arp.spa);
    let Some(counters) = VIP_COUNTERS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a per-CPU value of this CPU.
    let counters = unsafe { &mut *counters };
    counters.announcements += 1;
    check_claim(ctx, arp, key, counters);
}

/// A request sent from `spa`: a conflict when `spa` is a held VIP and the
/// sender is not us.
#[inline(always)]
fn on_request_sender(ctx: &XdpContext, arp: &EthArp) {
    let key = vip_key(arp.spa);
    let Some(counters) = VIP_COUNTERS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a per-CPU value of this CPU.
    let counters = unsafe { &mut *counters };
    check_claim(ctx, arp, key, counters);
}

/// Counts and reports a claim of held VIP `key` (the sender address) by a
/// MAC that is not the holding interface's.
#[inline(always)]
fn check_claim(ctx: &XdpContext, arp: &EthArp, key: VipKey, counters: &mut ArpCounters) {
    let Some(held) = held_now(key) else {
        return;
    };
    if arp.sha == held.mac {
        return;
    }
    counters.foreign_claims += 1;
    // SAFETY: `ctx.ctx` points at the kernel's xdp_md for this run.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let event = ConflictEvent {
        vip: arp.spa,
        ifindex,
        mac: arp.sha,
        _pad: [0; 2],
    };
    // A full ring drops the event; the counter still tells the story.
    let _ = CONFLICTS.output::<ConflictEvent>(&event, 0);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
