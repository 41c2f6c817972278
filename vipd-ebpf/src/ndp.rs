//! Neighbor Discovery (RFC 4861) for IPv6 VIPs: count solicitations and
//! advertisements, answer solicitations for held VIPs with a solicited
//! advertisement, report foreign claims. Only messages that pass the RFC's
//! validation (7.1.1, 7.1.2) count or get an answer; the rest pass to the
//! kernel, which drops them the same way.
//!
//! Decisions the RFC leaves open, for the responder:
//! - A solicitation is answered only when sent to the target's
//!   solicited-node multicast address (resolution) or to the target itself
//!   (unreachability detection); any other destination is not one we
//!   understand: it passes uncounted.
//! - The checked messages are at most [`ND_MAX_LEN`] bytes (the fixed part
//!   and five option blocks); longer ones pass uncounted.
//! - The answer is always 32 bytes (the fixed part and one Target
//!   Link-Layer Address option): a solicitation of another length is
//!   resized with `bpf_xdp_adjust_tail`; where the driver cannot resize
//!   the frame, it passes (counted) and the kernel answers.
//! - A duplicate address detection probe (source `::`) passes: the kernel
//!   defends an address it has. For a held VIP it is a claim.
//! - A fenced VIP's solicitations, probes included, are dropped (counted as
//!   requests): neither the program nor the kernel answers.

use core::mem::size_of;

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use vipd_common::{ConflictEvent6, HELD_ROUTER, HeldVip, NdpCounters, Vip6Key};

use crate::{
    CONFLICTS6, EthHdr, L2, Phase, VIP_COUNTERS6, fence::fenced6, held6, ingress_ifindex,
    is_unicast, ptr_at,
};

const IPPROTO_ICMPV6: u8 = 58;
const ND_NEIGHBOR_SOLICIT: u8 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;
const ND_OPT_SOURCE_LINKADDR: u8 = 1;
const ND_OPT_TARGET_LINKADDR: u8 = 2;
/// Neighbor Discovery messages must arrive with the hop limit they were
/// sent with: from off link they could not.
const ND_HOP_LIMIT: u8 = 255;
/// A solicitation or advertisement without options.
const ND_MIN_LEN: usize = 24;
/// The longest solicitation or advertisement the program checks.
const ND_MAX_LEN: usize = 64;
/// Options are multiples of 8 bytes, and so are valid messages.
const ND_BLOCK: usize = 8;
const NA_FLAG_ROUTER: u8 = 0x80;
const NA_FLAG_SOLICITED: u8 = 0x40;
const NA_FLAG_OVERRIDE: u8 = 0x20;
/// The answer's ICMPv6 length: the fixed part and a Target Link-Layer
/// Address option.
const NA_LEN: usize = ND_MIN_LEN + ND_BLOCK;

#[repr(C)]
struct Ipv6Hdr {
    version_class_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

/// The fixed part of a Neighbor Solicitation or Advertisement (24 bytes).
#[repr(C)]
struct NdMsg {
    kind: u8,
    code: u8,
    checksum: [u8; 2],
    /// Advertisements: R, S, O in the first byte; solicitations: reserved.
    flags: [u8; 4],
    target: [u8; 16],
}

/// A Source or Target Link-Layer Address option for Ethernet (8 bytes).
#[repr(C)]
struct LinkAddrOpt {
    kind: u8,
    /// In units of 8 bytes: 1 for Ethernet.
    len: u8,
    mac: [u8; 6],
}

/// The answer from its IPv6 header on.
#[repr(C)]
struct NaPacket {
    ip: Ipv6Hdr,
    msg: NdMsg,
    tlla: LinkAddrOpt,
}

/// What a valid solicitation or advertisement says.
struct NdMessage {
    kind: u8,
    src: [u8; 16],
    dst: [u8; 16],
    flags: u8,
    target: Vip6Key,
    /// The first Source Link-Layer Address option.
    slla: Option<[u8; 6]>,
    /// The first Target Link-Layer Address option.
    tlla: Option<[u8; 6]>,
}

/// An IPv6 frame (the ethertype says so): a Neighbor Solicitation or
/// Advertisement is counted, answered or reported; anything else passes.
#[inline(always)]
pub(crate) fn try_ndp(ctx: &XdpContext, l2: &L2) -> Result<u32, ()> {
    let nd = validated(ctx, l2.offset)?;
    // SAFETY: `l2_header` bounds-checked the Ethernet header.
    let eth_src = unsafe { (*l2.eth).src };
    if nd.kind == ND_NEIGHBOR_SOLICIT {
        Ok(on_solicit(ctx, l2, &nd, eth_src))
    } else {
        on_advert(ctx, &nd, eth_src);
        Ok(xdp_action::XDP_PASS)
    }
}

/// The IPv6 header at `l3` and the NDP message behind it, checked as RFC
/// 4861 7.1.1 and 7.1.2 say (the checks common to both kinds; the rest in
/// `on_solicit` and `on_advert`): hop limit 255, code 0, length at least
/// 24, target not multicast, every option of a non-zero length inside the
/// message, and a correct ICMPv6 checksum.
#[inline(always)]
fn validated(ctx: &XdpContext, l3: usize) -> Result<NdMessage, ()> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3)?;
    // SAFETY: bounds checked by `ptr_at`.
    let ip = unsafe { &*ip };
    // No extension headers: NDP messages carry none in practice, and a
    // frame with them passes to the kernel.
    if ip.version_class_flow[0] >> 4 != 6 || ip.next_header != IPPROTO_ICMPV6 {
        return Err(());
    }
    let len = usize::from(u16::from_be_bytes(ip.payload_len));
    if !(ND_MIN_LEN..=ND_MAX_LEN).contains(&len) || len % ND_BLOCK != 0 {
        return Err(());
    }
    let icmp = l3 + size_of::<Ipv6Hdr>();
    let msg: *const NdMsg = ptr_at(ctx, icmp)?;
    // SAFETY: bounds checked by `ptr_at`.
    let msg = unsafe { &*msg };
    if (msg.kind != ND_NEIGHBOR_SOLICIT && msg.kind != ND_NEIGHBOR_ADVERT)
        || msg.code != 0
        || ip.hop_limit != ND_HOP_LIMIT
        || is_multicast(&msg.target)
    {
        return Err(());
    }

    // One pass over the message in blocks of 8 bytes, each block read at a
    // constant distance from the header (bounds checked one by one): sum
    // it for the checksum and, where an option starts, read the option.
    let mut sum = sum_words(&ip.src) + sum_words(&ip.dst) + len as u32 + u32::from(IPPROTO_ICMPV6);
    let mut next_option = ND_MIN_LEN / ND_BLOCK;
    let mut slla = None;
    let mut tlla = None;
    for block in 0..ND_MAX_LEN / ND_BLOCK {
        if block * ND_BLOCK >= len {
            break;
        }
        let bytes: *const [u8; ND_BLOCK] = ptr_at(ctx, icmp + block * ND_BLOCK)?;
        // SAFETY: bounds checked by `ptr_at`; copied out at once.
        let bytes = unsafe { *bytes };
        sum += sum_words(&bytes);
        if block != next_option {
            continue;
        }
        let (kind, units) = (bytes[0], usize::from(bytes[1]));
        if units == 0 {
            return Err(());
        }
        if kind == ND_OPT_SOURCE_LINKADDR || kind == ND_OPT_TARGET_LINKADDR {
            // On Ethernet a link-layer address option is one block; the
            // kernel drops a message with another (ndisc_opt_addr_data).
            if units != 1 {
                return Err(());
            }
            let mac = [bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]];
            // Duplicates: the first one counts, as in the kernel.
            if kind == ND_OPT_SOURCE_LINKADDR && slla.is_none() {
                slla = Some(mac);
            } else if kind == ND_OPT_TARGET_LINKADDR && tlla.is_none() {
                tlla = Some(mac);
            }
        }
        next_option = block + units;
    }
    // An option that runs past the message's end.
    if next_option * ND_BLOCK != len {
        return Err(());
    }
    if fold(sum) != 0xffff {
        return Err(());
    }
    Ok(NdMessage {
        kind: msg.kind,
        src: ip.src,
        dst: ip.dst,
        flags: msg.flags[0],
        target: msg.target,
        slla,
        tlla,
    })
}

/// A valid Neighbor Solicitation: count it, and answer it here when this
/// node holds the target on the interface (and VLAN) it came in on.
#[inline(always)]
fn on_solicit(ctx: &XdpContext, l2: &L2, nd: &NdMessage, eth_src: [u8; 6]) -> u32 {
    // The remaining checks of RFC 4861 7.1.1, and our rule on destinations.
    if is_multicast(&nd.src) {
        return xdp_action::XDP_PASS;
    }
    let dad = nd.src == [0; 16];
    let to_solicited_node = nd.dst == solicited_node(&nd.target);
    if dad && (!to_solicited_node || nd.slla.is_some()) {
        return xdp_action::XDP_PASS;
    }
    if !to_solicited_node && nd.dst != nd.target {
        return xdp_action::XDP_PASS;
    }
    if !dad {
        // Soliciting from our VIP means using it: a claim. Checked before
        // the frame may be rewritten.
        on_solicit_sender(ctx, &nd.src, nd.slla.unwrap_or(eth_src));
    }

    let fenced = fenced6(&nd.target);
    let Some(counters) = VIP_COUNTERS6.get_ptr_mut(nd.target) else {
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

    let Some(held) = held_now(&nd.target) else {
        return xdp_action::XDP_PASS;
    };
    if dad {
        // Another node wants the address: the kernel defends it (it holds
        // the VIP), the agent hears of it.
        if eth_src != held.mac {
            claim(ctx, counters, &nd.target, eth_src);
        }
        return xdp_action::XDP_PASS;
    }
    if held.ifindex != ingress_ifindex(ctx)
        || held.vlan != l2.vlan_id
        || !is_unicast(&eth_src)
        || eth_src == held.mac
        || nd.slla == Some(held.mac)
    {
        return xdp_action::XDP_PASS;
    }
    if answer(ctx, l2.offset, nd, eth_src, &held).is_err() {
        return xdp_action::XDP_PASS;
    }
    counters.xdp_replies += 1;
    xdp_action::XDP_TX
}

/// Rewrites the solicitation at `l3` into the solicited advertisement the
/// kernel would send (S=1, O=1, R=1 only when the entry says the interface
/// forwards, with our link-layer address), unicast
/// to the solicitor's hardware and IPv6 addresses. The VLAN tag, if any,
/// stays. Fails, the frame unchanged, when it cannot be resized.
#[inline(always)]
fn answer(
    ctx: &XdpContext,
    l3: usize,
    nd: &NdMessage,
    solicitor_mac: [u8; 6],
    held: &HeldVip,
) -> Result<(), ()> {
    let have = ctx.data_end() - ctx.data();
    let want = l3 + size_of::<NaPacket>();
    if have != want {
        // Frames are at most a few KB: the difference fits an i32.
        let delta = want as i32 - have as i32;
        // SAFETY: `ctx.ctx` is this run's xdp_md; every packet pointer is
        // derived again below, after the resize.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return Err(());
        }
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let na: *mut NaPacket = ptr_at(ctx, l3)?;
    let vip = nd.target;
    let solicitor = nd.src;
    let flags = na_flags(held);
    // SAFETY: both bounds checked by `ptr_at` after the resize; the frame is
    // ours to rewrite.
    let (eth, na) = unsafe { (&mut *eth, &mut *na) };
    eth.dst = solicitor_mac;
    eth.src = held.mac;
    na.ip = Ipv6Hdr {
        version_class_flow: [0x60, 0, 0, 0],
        payload_len: (NA_LEN as u16).to_be_bytes(),
        next_header: IPPROTO_ICMPV6,
        hop_limit: ND_HOP_LIMIT,
        src: vip,
        dst: solicitor,
    };
    na.msg = NdMsg {
        kind: ND_NEIGHBOR_ADVERT,
        code: 0,
        checksum: na_checksum(&vip, &solicitor, &held.mac, flags),
        flags: [flags, 0, 0, 0],
        target: vip,
    };
    na.tlla = LinkAddrOpt {
        kind: ND_OPT_TARGET_LINKADDR,
        len: 1,
        mac: held.mac,
    };
    Ok(())
}

/// The answer's flags byte: Solicited and Override, and Router when the
/// VIP's interface forwards (RFC 4861 7.2.4: as the kernel sets it).
#[inline(always)]
fn na_flags(held: &HeldVip) -> u8 {
    let router = if held.flags & HELD_ROUTER != 0 {
        NA_FLAG_ROUTER
    } else {
        0
    };
    NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE | router
}

/// The ICMPv6 checksum of the answer: the pseudo-header (RFC 8200 8.1) and
/// the fixed 32 bytes, all known without reading the frame.
#[inline(always)]
fn na_checksum(vip: &[u8; 16], solicitor: &[u8; 16], mac: &[u8; 6], flags: u8) -> [u8; 2] {
    let sum = sum_words(vip)
        + sum_words(solicitor)
        + NA_LEN as u32
        + u32::from(IPPROTO_ICMPV6)
        // type, code; the checksum itself counts as zero
        + (u32::from(ND_NEIGHBOR_ADVERT) << 8)
        // flags, reserved
        + (u32::from(flags) << 8)
        // target
        + sum_words(vip)
        // option type, length
        + ((u32::from(ND_OPT_TARGET_LINKADDR) << 8) | 1)
        + sum_words(mac);
    (!fold(sum)).to_be_bytes()
}

/// A valid Neighbor Advertisement: count it for its target, and report it
/// as a conflict when it claims a held VIP for another MAC.
#[inline(always)]
fn on_advert(ctx: &XdpContext, nd: &NdMessage, eth_src: [u8; 6]) {
    // RFC 4861 7.1.2: to a multicast destination, the Solicited flag is 0.
    if is_multicast(&nd.dst) && nd.flags & NA_FLAG_SOLICITED != 0 {
        return;
    }
    let Some(counters) = VIP_COUNTERS6.get_ptr_mut(nd.target) else {
        return;
    };
    // SAFETY: a per-CPU value of this CPU.
    let counters = unsafe { &mut *counters };
    counters.announcements += 1;
    let Some(held) = held_now(&nd.target) else {
        return;
    };
    // The option is what neighbours cache; without one, the frame's source.
    let mac = nd.tlla.unwrap_or(eth_src);
    if mac != held.mac {
        claim(ctx, counters, &nd.target, mac);
    }
}

/// A solicitation sent from `src` with link-layer address `mac`: a claim
/// when `src` is a held VIP and `mac` is not ours.
#[inline(always)]
fn on_solicit_sender(ctx: &XdpContext, src: &Vip6Key, mac: [u8; 6]) {
    let Some(counters) = VIP_COUNTERS6.get_ptr_mut(src) else {
        return;
    };
    // SAFETY: a per-CPU value of this CPU.
    let counters = unsafe { &mut *counters };
    let Some(held) = held_now(src) else {
        return;
    };
    if mac != held.mac {
        claim(ctx, counters, src, mac);
    }
}

/// Counts a claim of held VIP `vip` by `mac` and reports it to the agent.
#[inline(always)]
fn claim(ctx: &XdpContext, counters: &mut NdpCounters, vip: &Vip6Key, mac: [u8; 6]) {
    counters.foreign_claims += 1;
    let event = ConflictEvent6 {
        vip: *vip,
        ifindex: ingress_ifindex(ctx),
        mac,
        _pad: [0; 2],
    };
    // A full ring drops the event; the counter still tells the story.
    let _ = CONFLICTS6.output::<ConflictEvent6>(&event, 0);
}

/// The held entry of `key` if its lease has not ended.
#[inline(always)]
fn held_now(key: &Vip6Key) -> Option<HeldVip> {
    match held6(key) {
        Some((held, Phase::Leased)) => Some(held),
        _ => None,
    }
}

#[inline(always)]
fn is_multicast(addr: &[u8; 16]) -> bool {
    addr[0] == 0xff
}

/// The solicited-node multicast address of `target` (RFC 4291 2.7.1).
#[inline(always)]
fn solicited_node(target: &[u8; 16]) -> [u8; 16] {
    [
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, target[13], target[14], target[15],
    ]
}

/// The sum of `bytes` as 16-bit big-endian words (`N` even).
#[inline(always)]
fn sum_words<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// Folds a sum of 16-bit words into its ones' complement sum. Two folds
/// suffice for the at most 60 words summed here.
#[inline(always)]
fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}
