//! ARP (RFC 826) for IPv4 VIPs: count requests and announcements, answer
//! requests for held VIPs, drop requests for fenced ones, report foreign
//! claims.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use vipd_common::{ArpCounters, ConflictEvent, HeldVip, VipKey, vip_key};

use crate::{
    CONFLICTS, EthHdr, L2, Phase, VIP_COUNTERS, fence::fenced4, held4, ingress_ifindex, is_unicast,
    ptr_at,
};

const ARPHRD_ETHER: [u8; 2] = [0x00, 0x01];
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const ARPOP_REQUEST: [u8; 2] = [0x00, 0x01];
const ARPOP_REPLY: [u8; 2] = [0x00, 0x02];

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

/// An ARP frame (the ethertype says so): count it, answer it or report it.
#[inline(always)]
pub(crate) fn try_arp(ctx: &XdpContext, l2: &L2) -> Result<u32, ()> {
    let arp: *mut EthArp = ptr_at(ctx, l2.offset)?;
    // SAFETY: `l2_header` and `ptr_at` bounds-checked both headers; the frame
    // is ours to read and rewrite for the duration of the program.
    let (eth, arp) = unsafe { (&mut *l2.eth, &mut *arp) };
    if arp.htype != ARPHRD_ETHER || arp.ptype != ETH_P_IP || arp.hlen != 6 || arp.plen != 4 {
        return Err(());
    }

    if arp.oper == ARPOP_REQUEST && arp.spa != arp.tpa {
        // Asking from our VIP means using it: a claim, though no
        // announcement. Checked before the frame may be rewritten.
        on_request_sender(ctx, arp);
        let vip = arp.tpa;
        return Ok(on_request(ctx, eth, arp, vip, l2.vlan_id));
    }
    if arp.oper == ARPOP_REPLY || arp.oper == ARPOP_REQUEST {
        // A reply, or a gratuitous announcement (either form): the sender
        // says where its address lives.
        on_announcement(ctx, arp);
    }
    Ok(xdp_action::XDP_PASS)
}

/// The held entry of `key` if its lease has not ended.
#[inline(always)]
fn held_now(key: VipKey) -> Option<HeldVip> {
    match held4(key) {
        Some((held, Phase::Leased)) => Some(held),
        _ => None,
    }
}

/// An ARP request for `vip`: count it, and answer it here when this node
/// holds the VIP on the interface the request came in on. Fenced: dropped
/// wherever it arrives, so the kernel does not answer either.
#[inline(always)]
fn on_request(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    arp: &mut EthArp,
    vip: [u8; 4],
    vlan_id: u16,
) -> u32 {
    let key = vip_key(vip);
    let fenced = fenced4(key);
    let Some(counters) = VIP_COUNTERS.get_ptr_mut(key) else {
        return if fenced {
            xdp_action::XDP_DROP
        } else {
            xdp_action::XDP_PASS
        };
    };
    // SAFETY: a per-CPU value of this CPU; nothing else writes it meanwhile.
    let counters = unsafe { &mut *counters };
    counters.requests += 1;
    if fenced {
        return xdp_action::XDP_DROP;
    }

    let Some(held) = held_now(key) else {
        return xdp_action::XDP_PASS;
    };
    if held.ifindex != ingress_ifindex(ctx)
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
    let event = ConflictEvent {
        vip: arp.spa,
        ifindex: ingress_ifindex(ctx),
        mac: arp.sha,
        _pad: [0; 2],
    };
    // A full ring drops the event; the counter still tells the story.
    let _ = CONFLICTS.output::<ConflictEvent>(&event, 0);
}
