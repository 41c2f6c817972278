//! IPv6 VIPs: the program's Neighbor Discovery half on hand-made frames
//! (BPF_PROG_TEST_RUN). Frames in and the expected answers are built here
//! with pnet_packet (its NDP packet types and its ICMPv6 checksum), never
//! with the program's code; each case checks the action, the frame out and
//! the exact counter change of the VIP and of the other watched VIP.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv6Addr,
    time::Duration,
};

use pnet_packet::{
    icmpv6::{
        self, Icmpv6Code, Icmpv6Packet, Icmpv6Type, Icmpv6Types,
        ndp::{
            MutableNeighborAdvertPacket, MutableNeighborSolicitPacket, NdpOption, NdpOptionType,
            NdpOptionTypes, NeighborAdvertFlags, NeighborAdvertPacket,
        },
    },
    ip::{IpNextHeaderProtocol, IpNextHeaderProtocols},
    ipv6::{Ipv6Packet, MutableIpv6Packet},
};
use vipd::{
    vip::Vip,
    xdp::{Conflict, ConflictReader, XdpProgram},
};
use vipd_common::{ArpCounters, HELD_ROUTER, HeldVip, NO_EXPIRY, NdpCounters};

use super::{
    ASKER_IP, ASKER_MAC, ArpFrame, FOREIGN_ANNOUNCEMENT, FOREIGN_MAC, FOREIGN_REQUEST, NONE,
    ONE_ANNOUNCEMENT, ONE_CLAIM, ONE_REQUEST, OUR_MAC, Ran, TAG_8021AD, TAG_8021Q, XDP_PASS,
    XDP_TX, assert_claim_cases, assert_passed, held_at, iface, in_netns, run_counted, runtime,
};

const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
const OTHER_VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x101);
const UNWATCHED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x200);
const ASKER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const ASKER_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x0a);
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

const ONE_ANSWER: ArpCounters = ArpCounters {
    requests: 1,
    xdp_replies: 1,
    ..NONE
};

/// The solicited-node multicast address of `addr` (RFC 4291 2.7.1).
fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, o[13], o[14], o[15],
    ])
}

/// The Ethernet multicast address of an IPv6 multicast address (RFC 2464 7).
fn multicast_mac(addr: Ipv6Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// A link-layer address option (type 1 source, 2 target) for `mac`.
fn ll_option(kind: NdpOptionType, mac: [u8; 6]) -> NdpOption {
    NdpOption {
        option_type: kind,
        length: 1,
        data: mac.to_vec(),
    }
}

/// A nonce option (RFC 3971 5.3, type 14), as Linux adds to DAD probes.
fn nonce_option() -> NdpOption {
    NdpOption {
        option_type: NdpOptionType(14),
        length: 1,
        data: vec![1, 2, 3, 4, 5, 6],
    }
}

/// An Ethernet frame carrying an IPv6 Neighbor Solicitation or
/// Advertisement, every field settable so a test can break any one of them.
#[derive(Clone)]
struct NdpFrame {
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    vlan: Option<([u8; 2], [u8; 2])>,
    version: u8,
    next_header: IpNextHeaderProtocol,
    hop_limit: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    /// IPv6 payload length; `None`: the ICMPv6 message's.
    payload_len: Option<u16>,
    kind: Icmpv6Type,
    code: u8,
    /// NA flags (R, S, O in the top bits); ignored for an NS.
    flags: u8,
    target: Ipv6Addr,
    options: Vec<NdpOption>,
    /// Bytes after the options (inside the ICMPv6 message).
    trailer: Vec<u8>,
    /// Changes the message before its checksum is computed (for what
    /// pnet's types refuse to build).
    edit: Option<fn(&mut [u8])>,
    /// Flips the checksum pnet computed.
    bad_checksum: bool,
    /// Bytes after the IPv6 packet (Ethernet padding).
    padding: usize,
}

impl NdpFrame {
    /// Who has `target`, tell `src` at `mac`: to the solicited-node
    /// address, with a Source Link-Layer Address option.
    fn solicit(mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Self {
        let dst = solicited_node(target);
        NdpFrame {
            eth_dst: multicast_mac(dst),
            eth_src: mac,
            vlan: None,
            version: 6,
            next_header: IpNextHeaderProtocols::Icmpv6,
            hop_limit: 255,
            src,
            dst,
            payload_len: None,
            kind: Icmpv6Types::NeighborSolicit,
            code: 0,
            flags: 0,
            target,
            options: vec![ll_option(NdpOptionTypes::SourceLLAddr, mac)],
            trailer: Vec::new(),
            edit: None,
            bad_checksum: false,
            padding: 0,
        }
    }

    /// A duplicate address detection probe for `target` from `mac`.
    fn dad(mac: [u8; 6], target: Ipv6Addr) -> Self {
        NdpFrame {
            options: Vec::new(),
            ..Self::solicit(mac, Ipv6Addr::UNSPECIFIED, target)
        }
    }

    /// An unsolicited advertisement (Override) of `target` at `mac`, to
    /// all nodes.
    fn unsolicited_advert(mac: [u8; 6], target: Ipv6Addr) -> Self {
        NdpFrame {
            eth_dst: ALL_NODES_MAC,
            dst: ALL_NODES,
            kind: Icmpv6Types::NeighborAdvert,
            flags: NeighborAdvertFlags::Override,
            options: vec![ll_option(NdpOptionTypes::TargetLLAddr, mac)],
            ..Self::solicit(mac, target, target)
        }
    }

    /// The answer the kernel would give `ns` for `vip` held at `mac`.
    fn answer_to(ns: &NdpFrame, mac: [u8; 6]) -> Self {
        NdpFrame {
            eth_dst: ns.eth_src,
            eth_src: mac,
            vlan: ns.vlan,
            src: ns.target,
            dst: ns.src,
            kind: Icmpv6Types::NeighborAdvert,
            flags: NeighborAdvertFlags::Solicited | NeighborAdvertFlags::Override,
            options: vec![ll_option(NdpOptionTypes::TargetLLAddr, mac)],
            ..Self::solicit(mac, ns.target, ns.target)
        }
    }

    /// [`NdpFrame::answer_to`] from a node whose interface forwards: the
    /// Router flag set too.
    fn router_answer_to(ns: &NdpFrame, mac: [u8; 6]) -> Self {
        NdpFrame {
            flags: NeighborAdvertFlags::Router
                | NeighborAdvertFlags::Solicited
                | NeighborAdvertFlags::Override,
            ..Self::answer_to(ns, mac)
        }
    }

    fn tagged(self, tag: ([u8; 2], [u8; 2])) -> Self {
        NdpFrame {
            vlan: Some(tag),
            ..self
        }
    }

    /// The ICMPv6 message, checksum included.
    fn icmp(&self) -> Vec<u8> {
        let options_len: usize = self.options.iter().map(|o| 2 + o.data.len()).sum();
        let mut msg = vec![0u8; 24 + options_len];
        if self.kind == Icmpv6Types::NeighborAdvert {
            let mut na = MutableNeighborAdvertPacket::new(&mut msg).expect("NA buffer");
            na.set_icmpv6_type(self.kind);
            na.set_icmpv6_code(Icmpv6Code(self.code));
            na.set_flags(self.flags);
            na.set_target_addr(self.target);
            na.set_options(&self.options);
        } else {
            let mut ns = MutableNeighborSolicitPacket::new(&mut msg).expect("NS buffer");
            ns.set_icmpv6_type(self.kind);
            ns.set_icmpv6_code(Icmpv6Code(self.code));
            ns.set_target_addr(self.target);
            ns.set_options(&self.options);
        }
        msg.extend_from_slice(&self.trailer);
        if let Some(edit) = self.edit {
            edit(&mut msg);
        }
        let sum = icmpv6::checksum(
            &Icmpv6Packet::new(&msg).expect("ICMPv6 packet"),
            &self.src,
            &self.dst,
        );
        let sum = if self.bad_checksum { sum ^ 0x0101 } else { sum };
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
        msg
    }

    fn bytes(&self) -> Vec<u8> {
        let icmp = self.icmp();
        let mut ip = vec![0u8; 40];
        {
            let mut h = MutableIpv6Packet::new(&mut ip).expect("IPv6 buffer");
            h.set_version(self.version);
            h.set_payload_length(
                self.payload_len
                    .unwrap_or(u16::try_from(icmp.len()).expect("short message")),
            );
            h.set_next_header(self.next_header);
            h.set_hop_limit(self.hop_limit);
            h.set_source(self.src);
            h.set_destination(self.dst);
        }
        let mut f = Vec::with_capacity(18 + 40 + icmp.len() + self.padding);
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        if let Some((tpid, tci)) = self.vlan {
            f.extend_from_slice(&tpid);
            f.extend_from_slice(&tci);
        }
        f.extend_from_slice(&[0x86, 0xdd]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&icmp);
        f.resize(f.len() + self.padding, 0xee);
        f
    }
}

/// Checks the ICMPv6 checksum of an answer `frame` (untagged or tagged)
/// with pnet's function, and that it is a solicited, overriding NA.
fn assert_valid_na(frame: &[u8], what: &str) {
    assert_valid_na_flags(
        frame,
        NeighborAdvertFlags::Solicited | NeighborAdvertFlags::Override,
        what,
    );
}

/// [`assert_valid_na`] for an answer with NA flags `flags`.
fn assert_valid_na_flags(frame: &[u8], flags: u8, what: &str) {
    let l3 = if frame[12..14] == [0x86, 0xdd] {
        14
    } else {
        18
    };
    let ip = Ipv6Packet::new(&frame[l3..]).expect("IPv6 header");
    assert_eq!(ip.get_payload_length(), 32, "{what}: payload length");
    assert_eq!(ip.get_hop_limit(), 255, "{what}: hop limit");
    let icmp_bytes = &frame[l3 + 40..];
    assert_eq!(icmp_bytes.len(), 32, "{what}: nothing after the NA");
    let icmp = Icmpv6Packet::new(icmp_bytes).expect("ICMPv6");
    assert_eq!(
        icmp.get_checksum(),
        icmpv6::checksum(&icmp, &ip.get_source(), &ip.get_destination()),
        "{what}: ICMPv6 checksum"
    );
    let na = NeighborAdvertPacket::new(icmp_bytes).expect("NA");
    assert_eq!(na.get_icmpv6_type(), Icmpv6Types::NeighborAdvert, "{what}");
    assert_eq!(na.get_flags(), flags, "{what}: NA flags");
}

// ---------------------------------------------------------------------------
// The program under test, for IPv6.

/// A loaded program watching VIP6 and OTHER_VIP6, holding none.
fn loaded6() -> XdpProgram {
    let mut program = XdpProgram::load().expect("loading the XDP program");
    let watched: BTreeSet<Ipv6Addr> = [VIP6, OTHER_VIP6].into();
    program.set_watched(&vips6(watched)).expect("set_watched");
    program
}

/// Runs `test` in a fresh namespace with [`holding6`] on xdp0 (its
/// ifindex and the program).
fn held6(vlan: u16, test: impl FnOnce(u32, XdpProgram) + Send) {
    in_netns(|| {
        let ifindex = iface("xdp0");
        test(ifindex, holding6(ifindex, vlan));
    });
}

/// A loaded program watching VIP6 and OTHER_VIP6, holding VIP6 on
/// `ifindex`, VLAN `vlan`.
fn holding6(ifindex: u32, vlan: u16) -> XdpProgram {
    let mut program = loaded6();
    program
        .set_held(&held6_map([(VIP6, held_at(ifindex, vlan, NO_EXPIRY))]))
        .expect("set_held");
    program
}

fn counters6_of(program: &XdpProgram, vip: Ipv6Addr) -> NdpCounters {
    *counters6(program)
        .get(&vip)
        .unwrap_or_else(|| panic!("{vip} is not watched"))
}

/// The counters of the watched IPv6 VIPs.
fn counters6(program: &XdpProgram) -> BTreeMap<Ipv6Addr, NdpCounters> {
    program
        .counters()
        .expect("reading counters")
        .into_iter()
        .filter_map(|(vip, c)| Some((vip.v6()?, c)))
        .collect()
}

fn vip6(addr: Ipv6Addr) -> Vip {
    Vip::new_v6(addr).expect("test VIP is valid")
}

/// The VIPs of `addrs`, for `set_watched`.
fn vips6(addrs: impl IntoIterator<Item = Ipv6Addr>) -> BTreeSet<Vip> {
    addrs.into_iter().map(vip6).collect()
}

/// The held entries of `entries`, for `set_held`.
fn held6_map(entries: impl IntoIterator<Item = (Ipv6Addr, HeldVip)>) -> BTreeMap<Vip, HeldVip> {
    entries.into_iter().map(|(a, h)| (vip6(a), h)).collect()
}

/// Runs `frame` once and returns the action, the frame out, and how the
/// counters of VIP6 and OTHER_VIP6 changed.
fn run6(program: &XdpProgram, frame: &[u8], ingress: u32) -> Ran {
    run_counted(program, frame, ingress, |p| {
        (counters6_of(p, VIP6), counters6_of(p, OTHER_VIP6))
    })
}

/// Asserts that `frame` passes unchanged and changes the counters of VIP6
/// by `expected` (and OTHER_VIP6's not at all).
fn assert_passes6(
    program: &XdpProgram,
    frame: &[u8],
    ingress: u32,
    expected: NdpCounters,
    what: &str,
) {
    assert_passed(run6(program, frame, ingress), frame, (expected, NONE), what);
}

/// Asserts that `ns` is answered with exactly `expected` (checksum checked
/// on its own too), counting one solicitation and one answer.
fn assert_answered(program: &XdpProgram, ns: &NdpFrame, ingress: u32, what: &str) {
    let expected = NdpFrame::answer_to(ns, OUR_MAC).bytes();
    let (action, out, delta, other) = run6(program, &ns.bytes(), ingress);
    assert_eq!(action, XDP_TX, "{what}: answered in XDP");
    assert_eq!(out, expected, "{what}: the NA bytes");
    assert_valid_na(&out, what);
    assert_eq!(delta, ONE_ANSWER, "{what}: counters of the VIP");
    assert_eq!(other, NONE, "{what}: counters of the other VIP");
}

fn next_event6(
    rt: &tokio::runtime::Runtime,
    reader: &mut ConflictReader,
    wait: Duration,
) -> Option<Conflict> {
    rt.block_on(async {
        tokio::time::timeout(wait, reader.next())
            .await
            .ok()
            .flatten()
    })
}

fn event6(vip: Ipv6Addr, ifindex: u32, mac: [u8; 6]) -> Conflict {
    Conflict {
        vip: vip6(vip),
        ifindex,
        mac,
    }
}

// ---------------------------------------------------------------------------
// Held: answered in the kernel with the exact advertisement.

#[test]
fn ns_for_held_vip_is_answered_with_the_exact_na() {
    held6(0, |ifindex, program| {
        let ns = NdpFrame::solicit(ASKER_MAC, ASKER6, VIP6);

        // The expected answer, byte by byte, for the first case (the other
        // cases build it with the same, independent, builder).
        #[rustfmt::skip]
        let literal: [u8; 86] = [
            // eth dst = asker, eth src = ours, IPv6
            0x02, 0x00, 0x5e, 0x00, 0x00, 0x0a,  0x02, 0x00, 0x5e, 0x00, 0x00, 0x01,  0x86, 0xdd,
            // version 6, class 0, flow 0; payload 32; ICMPv6; hop limit 255
            0x60, 0, 0, 0,  0, 32,  58,  255,
            // source: the VIP
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0,  0, 0, 0, 0, 0, 0, 0x01, 0x00,
            // destination: the asker
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0,  0, 0, 0, 0, 0, 0, 0x00, 0x10,
            // NA, code 0, checksum (checked below), S+O, target = VIP
            136, 0,  0, 0,  0x60, 0, 0, 0,
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0,  0, 0, 0, 0, 0, 0, 0x01, 0x00,
            // Target Link-Layer Address option: ours
            2, 1,  0x02, 0x00, 0x5e, 0x00, 0x00, 0x01,
        ];
        let (action, out, delta, other) = run6(&program, &ns.bytes(), ifindex);
        assert_eq!(
            action, XDP_TX,
            "a held VIP's solicitation is answered in XDP"
        );
        let mut without_sum = out.clone();
        without_sum[56..58].copy_from_slice(&[0, 0]);
        assert_eq!(without_sum, literal, "NA bytes (checksum aside)");
        assert_eq!(out, NdpFrame::answer_to(&ns, OUR_MAC).bytes());
        assert_valid_na(&out, "NS with SLLA");
        assert_eq!((delta, other), (ONE_ANSWER, NONE));

        // Without options (24 bytes): grown into the 32-byte answer.
        let bare = NdpFrame {
            options: Vec::new(),
            ..ns.clone()
        };
        assert_answered(&program, &bare, ifindex, "NS without options");
        // Unicast to the VIP (unreachability detection).
        let nud = NdpFrame {
            eth_dst: OUR_MAC,
            dst: VIP6,
            ..ns.clone()
        };
        assert_answered(&program, &nud, ifindex, "NS to the VIP itself");
        // More options (40 bytes): shrunk into the answer.
        let longer = NdpFrame {
            options: vec![
                ll_option(NdpOptionTypes::SourceLLAddr, ASKER_MAC),
                nonce_option(),
            ],
            ..ns.clone()
        };
        assert_answered(&program, &longer, ifindex, "NS with SLLA and nonce");
        // Ethernet padding after the packet: not in the answer.
        let padded = NdpFrame {
            padding: 6,
            ..ns.clone()
        };
        assert_answered(&program, &padded, ifindex, "padded NS");
        // From a link-local address, answered to it.
        let link_local = NdpFrame::solicit(ASKER_MAC, ASKER_LINK_LOCAL, VIP6);
        assert_answered(&program, &link_local, ifindex, "link-local solicitor");
        // The longest message checked: 64 bytes (five option blocks).
        let longest = NdpFrame {
            options: vec![
                ll_option(NdpOptionTypes::SourceLLAddr, ASKER_MAC),
                nonce_option(),
                nonce_option(),
                nonce_option(),
                nonce_option(),
            ],
            ..ns.clone()
        };
        assert_answered(&program, &longest, ifindex, "64-byte NS");
        // The SLLA option may differ from the frame's source (a proxy):
        // the answer goes to the frame's source.
        let proxied = NdpFrame {
            options: vec![ll_option(NdpOptionTypes::SourceLLAddr, FOREIGN_MAC)],
            ..ns.clone()
        };
        assert_answered(&program, &proxied, ifindex, "SLLA not the source");
    });
}

/// A held VIP whose entry has HELD_ROUTER (its interface forwards): the
/// answer carries the Router flag too, checksum to match; the bit cleared
/// again, it does not. Untagged and tagged.
#[test]
fn ns_answer_carries_the_router_flag_exactly_when_the_entry_says_so() {
    in_netns(|| {
        let ifindex = iface("xdp0");
        let mut program = loaded6();
        let plain = NdpFrame::solicit(ASKER_MAC, ASKER6, VIP6);
        let tagged = plain.clone().tagged(TAG_8021Q);
        for (flags, router) in [(HELD_ROUTER, true), (0, false), (HELD_ROUTER, true)] {
            for (ns, vlan, flags_at) in [(&plain, 0, 58), (&tagged, 100, 62)] {
                let what = format!("router {router}, VLAN {vlan}");
                let held = HeldVip {
                    flags,
                    ..held_at(ifindex, vlan, NO_EXPIRY)
                };
                program
                    .set_held(&held6_map([(VIP6, held)]))
                    .expect("set_held");
                let want = if router {
                    NdpFrame::router_answer_to(ns, OUR_MAC)
                } else {
                    NdpFrame::answer_to(ns, OUR_MAC)
                };
                let (action, out, delta, other) = run6(&program, &ns.bytes(), ifindex);
                assert_eq!(action, XDP_TX, "{what}");
                assert_eq!(out, want.bytes(), "{what}: NA bytes");
                // R S O in the NA's first flags byte.
                let byte = if router { 0xe0 } else { 0x60 };
                assert_eq!(out[flags_at], byte, "{what}: flags byte");
                assert_valid_na_flags(&out, want.flags, &what);
                assert_eq!((delta, other), (ONE_ANSWER, NONE), "{what}");
            }
        }
    });
}

#[test]
fn vlan_tagged_ns_is_answered_keeping_the_tag() {
    // TAG_8021Q carries VLAN 100, TAG_8021AD VLAN 101.
    held6(100, |ifindex, program| {
        let ns = NdpFrame::solicit(ASKER_MAC, ASKER6, VIP6);
        assert_answered(
            &program,
            &ns.clone().tagged(TAG_8021Q),
            ifindex,
            "802.1Q VLAN 100",
        );
        let bare = NdpFrame {
            options: Vec::new(),
            ..ns.clone()
        };
        assert_answered(
            &program,
            &bare.tagged(TAG_8021Q),
            ifindex,
            "802.1Q, no options",
        );
        // Another VLAN, or none: counted, not ours to answer.
        assert_passes6(
            &program,
            &ns.clone().tagged(TAG_8021AD).bytes(),
            ifindex,
            ONE_REQUEST,
            "802.1ad VLAN 101",
        );
        assert_passes6(&program, &ns.bytes(), ifindex, ONE_REQUEST, "untagged");

        // Held untagged: an 802.1ad-tagged one counts, passes.
        let untagged = holding6(ifindex, 0);
        assert_passes6(
            &untagged,
            &ns.clone().tagged(TAG_8021AD).bytes(),
            ifindex,
            ONE_REQUEST,
            "tagged NS, VIP untagged",
        );
        assert_answered(&untagged, &ns, ifindex, "untagged NS, VIP untagged");
    });
}

#[test]
fn ns_for_unwatched_and_for_unheld_vip_is_not_answered() {
    held6(0, |ifindex, program| {
        // Unwatched: nothing counted anywhere.
        let unwatched = NdpFrame::solicit(ASKER_MAC, ASKER6, UNWATCHED6).bytes();
        assert_passes6(&program, &unwatched, ifindex, NONE, "unwatched address");
        assert_eq!(
            counters6(&program).len(),
            2,
            "only the watched VIPs have counters"
        );
        // Watched, not held: counted for that VIP, passed.
        let unheld = NdpFrame::solicit(ASKER_MAC, ASKER6, OTHER_VIP6).bytes();
        let (action, out, delta, other) = run6(&program, &unheld, ifindex);
        assert_eq!((action, out.as_slice()), (XDP_PASS, unheld.as_slice()));
        assert_eq!((delta, other), (NONE, ONE_REQUEST), "watched, unheld");
        // And with nothing held at all.
        let none_held = loaded6();
        let ns = NdpFrame::solicit(ASKER_MAC, ASKER6, VIP6).bytes();
        assert_passes6(&none_held, &ns, ifindex, ONE_REQUEST, "nothing held");
        // No IPv4 VIP is counted for any of it.
        assert!(
            none_held
                .counters()
                .expect("counters")
                .keys()
                .all(|v| v.is_ipv6())
        );
    });
}

#[test]
fn ns_for_held_vip_is_not_answered_where_it_must_not_be() {
    in_netns(|| {
        let ifindex = iface("xdp0");
        let elsewhere = iface("xdp1");
        let mut program = holding6(ifindex, 0);
        let ns = NdpFrame::solicit(ASKER_MAC, ASKER6, VIP6);
        let bytes = ns.bytes();
        assert_passes6(&program, &bytes, elsewhere, ONE_REQUEST, "other ifindex");
        assert_passes6(&program, &bytes, 0, ONE_REQUEST, "no ifindex");

        let multicast = [0x33, 0x33, 0, 0, 0, 0x0a];
        let cases = [
            (
                "multicast eth src",
                NdpFrame {
                    eth_src: multicast,
                    ..ns.clone()
                },
            ),
            (
                "zero eth src",
                NdpFrame {
                    eth_src: [0; 6],
                    ..ns.clone()
                },
            ),
            ("from our own MAC", NdpFrame::solicit(OUR_MAC, ASKER6, VIP6)),
            (
                "SLLA ours, eth src not",
                NdpFrame {
                    options: vec![ll_option(NdpOptionTypes::SourceLLAddr, OUR_MAC)],
                    ..ns.clone()
                },
            ),
        ];
        for (what, frame) in cases {
            assert_passes6(&program, &frame.bytes(), ifindex, ONE_REQUEST, what);
        }

        // Answered only before the lease's end: a frozen agent's claims end with its lease.
        let now = std::time::Instant::now();
        let past = vipd::xdp::program_ns(now) - 1_000_000;
        program
            .set_held(&held6_map([(VIP6, held_at(ifindex, 0, past))]))
            .expect("set_held");
        assert_passes6(&program, &bytes, ifindex, ONE_REQUEST, "expired entry");
        let until = now + Duration::from_millis(300);
        program
            .set_held(&held6_map([(
                VIP6,
                held_at(ifindex, 0, vipd::xdp::program_ns(until)),
            )]))
            .expect("set_held");
        assert_eq!(run6(&program, &bytes, ifindex).0, XDP_TX, "before expiry");
        std::thread::sleep(until.saturating_duration_since(std::time::Instant::now()));
        assert_passes6(&program, &bytes, ifindex, ONE_REQUEST, "after expiry");
        let claim = NdpFrame::unsolicited_advert(FOREIGN_MAC, VIP6).bytes();
        assert_passes6(
            &program,
            &claim,
            ifindex,
            ONE_ANNOUNCEMENT,
            "foreign NA about an expired VIP: no claim",
        );
    });
}

// ---------------------------------------------------------------------------
// Validation (RFC 4861 7.1.1, 7.1.2): what fails it passes, uncounted.

#[test]
fn invalid_ndp_passes_uncounted() {
    held6(0, |ifindex, program| {
        let ns = NdpFrame::solicit(ASKER_MAC, ASKER6, VIP6);
        let na = NdpFrame::unsolicited_advert(FOREIGN_MAC, VIP6);
        let cases: Vec<(&str, NdpFrame)> = vec![
            (
                "hop limit 64",
                NdpFrame {
                    hop_limit: 64,
                    ..ns.clone()
                },
            ),
            (
                "hop limit 254",
                NdpFrame {
                    hop_limit: 254,
                    ..ns.clone()
                },
            ),
            (
                "bad checksum",
                NdpFrame {
                    bad_checksum: true,
                    ..ns.clone()
                },
            ),
            (
                "bad checksum, no options",
                NdpFrame {
                    options: Vec::new(),
                    bad_checksum: true,
                    ..ns.clone()
                },
            ),
            (
                "code 1",
                NdpFrame {
                    code: 1,
                    ..ns.clone()
                },
            ),
            (
                "multicast target",
                NdpFrame {
                    target: ALL_NODES,
                    ..ns.clone()
                },
            ),
            (
                "multicast source",
                NdpFrame {
                    src: ALL_NODES,
                    ..ns.clone()
                },
            ),
            (
                "option of length 0",
                NdpFrame {
                    // The SLLA option's length byte.
                    edit: Some(|msg| msg[25] = 0),
                    ..ns.clone()
                },
            ),
            (
                "SLLA of two blocks",
                NdpFrame {
                    // SLLA, then a nonce; the SLLA's length byte says 2
                    // blocks (inside the 40-byte message).
                    options: vec![
                        ll_option(NdpOptionTypes::SourceLLAddr, ASKER_MAC),
                        nonce_option(),
                    ],
                    edit: Some(|msg| msg[25] = 2),
                    ..ns.clone()
                },
            ),
            (
                "option running past the message",
                NdpFrame {
                    // A nonce of one block whose length byte says 2, in a
                    // 32-byte message.
                    options: vec![nonce_option()],
                    edit: Some(|msg| msg[25] = 2),
                    ..ns.clone()
                },
            ),
            (
                "ICMPv6 length 16",
                NdpFrame {
                    payload_len: Some(16),
                    ..ns.clone()
                },
            ),
            (
                "length not a multiple of 8",
                NdpFrame {
                    trailer: vec![0; 4],
                    ..ns.clone()
                },
            ),
            (
                "longer than 64 bytes (six option blocks)",
                NdpFrame {
                    options: vec![
                        ll_option(NdpOptionTypes::SourceLLAddr, ASKER_MAC),
                        nonce_option(),
                        nonce_option(),
                        nonce_option(),
                        nonce_option(),
                        nonce_option(),
                    ],
                    ..ns.clone()
                },
            ),
            (
                "IPv6 payload length beyond the frame",
                NdpFrame {
                    payload_len: Some(40),
                    ..ns.clone()
                },
            ),
            (
                "to all nodes, not the solicited-node address",
                NdpFrame {
                    eth_dst: ALL_NODES_MAC,
                    dst: ALL_NODES,
                    ..ns.clone()
                },
            ),
            (
                "to another unicast address",
                NdpFrame {
                    eth_dst: OUR_MAC,
                    dst: OTHER_VIP6,
                    ..ns.clone()
                },
            ),
            (
                "to the solicited-node address of another target",
                NdpFrame {
                    dst: solicited_node(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, 0x200)),
                    ..ns.clone()
                },
            ),
            (
                "DAD probe with an SLLA option",
                NdpFrame {
                    options: vec![ll_option(NdpOptionTypes::SourceLLAddr, ASKER_MAC)],
                    ..NdpFrame::dad(ASKER_MAC, VIP6)
                },
            ),
            (
                "DAD probe to the VIP itself",
                NdpFrame {
                    dst: VIP6,
                    ..NdpFrame::dad(ASKER_MAC, VIP6)
                },
            ),
            (
                "IP version 4 in an IPv6 header",
                NdpFrame {
                    version: 4,
                    ..ns.clone()
                },
            ),
            (
                "next header UDP",
                NdpFrame {
                    next_header: IpNextHeaderProtocols::Udp,
                    ..ns.clone()
                },
            ),
            (
                "next header hop-by-hop options",
                NdpFrame {
                    next_header: IpNextHeaderProtocols::Hopopt,
                    ..ns.clone()
                },
            ),
            (
                "ICMPv6 echo request",
                NdpFrame {
                    kind: Icmpv6Types::EchoRequest,
                    ..ns.clone()
                },
            ),
            (
                "router solicitation",
                NdpFrame {
                    kind: Icmpv6Types::RouterSolicit,
                    ..ns.clone()
                },
            ),
            (
                "NA with hop limit 64",
                NdpFrame {
                    hop_limit: 64,
                    ..na.clone()
                },
            ),
            (
                "NA with a bad checksum",
                NdpFrame {
                    bad_checksum: true,
                    ..na.clone()
                },
            ),
            (
                "NA to all nodes with the Solicited flag",
                NdpFrame {
                    flags: NeighborAdvertFlags::Solicited | NeighborAdvertFlags::Override,
                    ..na.clone()
                },
            ),
        ];
        for (what, frame) in &cases {
            assert_passes6(&program, &frame.bytes(), ifindex, NONE, what);
        }
        // The unbroken frames do count (the breakage, not the frame, was
        // the reason), so every case above tested what it names.
        assert_answered(&program, &ns, ifindex, "the valid NS");
        assert_passes6(
            &program,
            &na.bytes(),
            ifindex,
            FOREIGN_ANNOUNCEMENT,
            "the valid NA",
        );
    });
}

#[test]
fn truncated_ndp_frames_pass_uncounted() {
    in_netns(|| {
        let ifindex = iface("xdp0");
        let plain = NdpFrame::solicit(ASKER_MAC, ASKER6, VIP6).bytes();
        let tagged = NdpFrame::solicit(ASKER_MAC, ASKER6, VIP6)
            .tagged(TAG_8021Q)
            .bytes();
        assert_eq!((plain.len(), tagged.len()), (86, 90));
        let cuts: [(&str, &[u8]); 12] = [
            ("Ethernet header only", &plain[..14]),
            ("14 + 39: one byte short of IPv6", &plain[..14 + 39]),
            ("IPv6 header, no ICMPv6", &plain[..54]),
            ("54 + 23: one byte short of the NS", &plain[..54 + 23]),
            ("NS fixed part, option missing", &plain[..54 + 24]),
            ("54 + 31: one byte short of the option", &plain[..54 + 31]),
            ("VLAN: 14 + 3, inside the tag", &tagged[..14 + 3]),
            ("VLAN: 18, tag but no IPv6", &tagged[..18]),
            ("VLAN: 18 + 39, one byte short of IPv6", &tagged[..18 + 39]),
            (
                "VLAN: 58 + 23, one byte short of the NS",
                &tagged[..58 + 23],
            ),
            ("VLAN: NS fixed part, option missing", &tagged[..58 + 24]),
            (
                "VLAN: 58 + 31, one byte short of the option",
                &tagged[..58 + 31],
            ),
        ];
        let watching = loaded6();
        for (what, frame) in cuts {
            assert_passes6(&watching, frame, 0, NONE, what);
        }
        // Held (untagged and on VLAN 100): still neither counted nor answered.
        for vlan in [0, 100] {
            let program = holding6(ifindex, vlan);
            for (what, frame) in cuts {
                assert_passes6(&program, frame, ifindex, NONE, what);
            }
        }
        // The whole frames do count.
        assert_answered(
            &holding6(ifindex, 0),
            &NdpFrame::solicit(ASKER_MAC, ASKER6, VIP6),
            ifindex,
            "whole frame",
        );
    });
}

// ---------------------------------------------------------------------------
// Claims of a held VIP: DAD probes, foreign advertisements, solicitations
// sent from it.

#[test]
fn dad_probe_passes_and_is_a_claim_of_a_held_vip() {
    in_netns(|| {
        let rt = runtime();
        let ifindex = iface("xdp0");
        let mut program = holding6(ifindex, 0);
        let mut reader = rt
            .block_on(async { program.take_conflicts() })
            .expect("take_conflicts");

        let probe = NdpFrame::dad(ASKER_MAC, VIP6).bytes();
        // With a nonce option, as Linux sends them.
        let with_nonce = NdpFrame {
            options: vec![nonce_option()],
            ..NdpFrame::dad(ASKER_MAC, VIP6)
        }
        .bytes();
        for (frame, what) in [
            (probe, "DAD probe for the held VIP"),
            (with_nonce, "DAD probe with a nonce"),
        ] {
            assert_passes6(&program, &frame, ifindex, FOREIGN_REQUEST, what);
            assert_eq!(
                next_event6(&rt, &mut reader, Duration::from_secs(2)),
                Some(event6(VIP6, ifindex, ASKER_MAC)),
                "{what}"
            );
        }
        // Our own probe coming back: no claim.
        let ours = NdpFrame::dad(OUR_MAC, VIP6).bytes();
        assert_passes6(&program, &ours, ifindex, ONE_REQUEST, "our own DAD probe");
        // For a watched, unheld VIP: a solicitation, no claim.
        let unheld = NdpFrame::dad(ASKER_MAC, OTHER_VIP6).bytes();
        let (action, _, delta, other) = run6(&program, &unheld, ifindex);
        assert_eq!(action, XDP_PASS);
        assert_eq!((delta, other), (NONE, ONE_REQUEST));
        assert_eq!(
            next_event6(&rt, &mut reader, Duration::from_millis(200)),
            None,
            "no event for our own probe or an unheld VIP"
        );
    });
}

#[test]
fn foreign_na_of_held_vip_is_counted_and_reported_once() {
    in_netns(|| {
        let rt = runtime();
        let ifindex = iface("xdp0");
        let mut program = holding6(ifindex, 0);
        let mut reader = rt.block_on(async { program.take_conflicts().expect("take_conflicts") });
        assert!(
            program.take_conflicts().is_err(),
            "the ring buffers can be taken once"
        );

        let other = iface("xdp1");
        assert_claim_cases(
            &program,
            run6,
            |wait| next_event6(&rt, &mut reader, wait),
            vec![
                (
                    "foreign NA",
                    NdpFrame::unsolicited_advert(FOREIGN_MAC, VIP6).bytes(),
                    ifindex,
                    (FOREIGN_ANNOUNCEMENT, NONE),
                    Some(event6(VIP6, ifindex, FOREIGN_MAC)),
                ),
                // Our own advertisement coming back: counted, no claim, no event.
                (
                    "our own NA",
                    NdpFrame::unsolicited_advert(OUR_MAC, VIP6).bytes(),
                    ifindex,
                    (ONE_ANNOUNCEMENT, NONE),
                    None,
                ),
                // The option decides, not the frame's source (a bridge, a proxy).
                (
                    "our TLLA from another source",
                    NdpFrame {
                        eth_src: FOREIGN_MAC,
                        ..NdpFrame::unsolicited_advert(OUR_MAC, VIP6)
                    }
                    .bytes(),
                    ifindex,
                    (ONE_ANNOUNCEMENT, NONE),
                    None,
                ),
                // A solicited NA without TLLA, unicast, on another interface:
                // the frame's source is the claimant.
                (
                    "NA without TLLA",
                    NdpFrame {
                        eth_dst: ASKER_MAC,
                        dst: ASKER6,
                        flags: NeighborAdvertFlags::Solicited,
                        options: Vec::new(),
                        ..NdpFrame::unsolicited_advert(FOREIGN_MAC, VIP6)
                    }
                    .bytes(),
                    other,
                    (FOREIGN_ANNOUNCEMENT, NONE),
                    Some(event6(VIP6, other, FOREIGN_MAC)),
                ),
                // A solicitation sent from our VIP by another MAC: that node
                // uses our VIP. A claim of it; the solicitation counts for its
                // target.
                (
                    "asked from our VIP by another MAC",
                    NdpFrame::solicit(FOREIGN_MAC, VIP6, OTHER_VIP6).bytes(),
                    ifindex,
                    (ONE_CLAIM, ONE_REQUEST),
                    Some(event6(VIP6, ifindex, FOREIGN_MAC)),
                ),
                // Our own kernel soliciting from the VIP is no claim.
                (
                    "asked from our VIP by our own MAC",
                    NdpFrame::solicit(OUR_MAC, VIP6, OTHER_VIP6).bytes(),
                    ifindex,
                    (NONE, ONE_REQUEST),
                    None,
                ),
                // A foreign advertisement of a watched, unheld VIP is no claim.
                (
                    "foreign announcement of an unheld VIP",
                    NdpFrame::unsolicited_advert(FOREIGN_MAC, OTHER_VIP6).bytes(),
                    ifindex,
                    (NONE, ONE_ANNOUNCEMENT),
                    None,
                ),
            ],
        );
    });
}

// ---------------------------------------------------------------------------
// Map upkeep.

#[test]
fn v6_maps_follow_set_watched_set_held_and_clear_held() {
    held6(0, |ifindex, mut program| {
        let ns = NdpFrame::solicit(ASKER_MAC, ASKER6, VIP6);
        assert_answered(&program, &ns, ifindex, "held");

        // Watched set changes: counters kept for VIPs still watched.
        let third = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x102);
        program
            .set_watched(&vips6([VIP6, OTHER_VIP6, third]))
            .expect("set_watched");
        let counters = counters6(&program);
        assert_eq!(
            counters.keys().copied().collect::<Vec<_>>(),
            vec![VIP6, OTHER_VIP6, third]
        );
        assert_eq!(counters[&VIP6], ONE_ANSWER, "kept");
        assert_eq!(counters[&third], NONE, "new, zeroed");
        program
            .set_watched(&vips6([VIP6, OTHER_VIP6]))
            .expect("set_watched");
        assert_eq!(counters6(&program).len(), 2);

        // clear_held empties the v6 map too.
        program.clear_held().expect("clear_held");
        assert_passes6(
            &program,
            &ns.bytes(),
            ifindex,
            ONE_REQUEST,
            "after clear_held",
        );
        // Back, then released through set_held.
        let held = BTreeMap::from([(VIP6, held_at(ifindex, 0, NO_EXPIRY))]);
        program.set_held(&held6_map(held)).expect("set_held");
        assert_answered(&program, &ns, ifindex, "held again");
        program.set_held(&BTreeMap::new()).expect("set_held(empty)");
        assert_passes6(
            &program,
            &ns.bytes(),
            ifindex,
            ONE_REQUEST,
            "after set_held(empty)",
        );
        // Moved to another interface: answered there only.
        let other = iface("xdp1");
        program
            .set_held(&held6_map([(VIP6, held_at(other, 0, NO_EXPIRY))]))
            .expect("set_held(moved)");
        assert_passes6(&program, &ns.bytes(), ifindex, ONE_REQUEST, "old interface");
        assert_answered(&program, &ns, other, "new interface");
        // No IPv4 VIP appears in the maps through any of it.
        assert!(
            program
                .counters()
                .expect("counters")
                .keys()
                .all(|v| v.is_ipv6())
        );

        // Unwatched: not counted, not answered even while held.
        program
            .set_watched(&BTreeSet::new())
            .expect("set_watched(empty)");
        let (action, _) = program.test_run(&ns.bytes(), other).expect("test_run");
        assert_eq!(action, XDP_PASS, "held but unwatched: passes");
        assert!(counters6(&program).is_empty());
    });
}

/// One call per operation for both families: every subset of three IPv4
/// and three IPv6 VIPs, watched and then partly held through `set_watched`
/// and `set_held` with mixed sets, lands in the right family's maps (the
/// counters show exactly the watched VIPs; exactly the held ones are
/// answered, by ARP or NDP); one conflict reader brings the claims of both
/// families.
#[test]
fn one_api_keeps_both_families_maps_from_mixed_vip_sets() {
    in_netns(|| {
        let rt = runtime();
        let ifindex = iface("xdp0");
        let v4: [[u8; 4]; 3] = [[192, 0, 2, 100], [192, 0, 2, 101], [198, 51, 100, 7]];
        let v6: [Ipv6Addr; 3] = [
            VIP6,
            OTHER_VIP6,
            Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7),
        ];
        let all: Vec<Vip> = v4
            .iter()
            .map(|o| Vip::new((*o).into()).expect("valid"))
            .chain(v6.iter().map(|a| vip6(*a)))
            .collect();
        // The frame that asks for `vip` in its family.
        let ask = |vip: Vip| match (vip.v4(), vip.v6()) {
            (Some(a), _) => ArpFrame::request(ASKER_MAC, ASKER_IP, a.octets()).bytes(),
            (_, Some(a)) => NdpFrame::solicit(ASKER_MAC, ASKER6, a).bytes(),
            _ => unreachable!("a VIP is of one family"),
        };
        let mut program = XdpProgram::load().expect("loading the XDP program");
        for watched_mask in 0u32..64 {
            let watched: BTreeSet<Vip> = (0..6)
                .filter(|i| watched_mask & (1 << i) != 0)
                .map(|i| all[i])
                .collect();
            program.set_watched(&watched).expect("set_watched");
            let counted: BTreeSet<Vip> =
                program.counters().expect("counters").into_keys().collect();
            assert_eq!(counted, watched, "watched set {watched_mask:06b}");
            // Held: every other watched VIP, the pattern shifting with the set.
            let held: BTreeMap<Vip, HeldVip> = watched
                .iter()
                .enumerate()
                .filter(|(i, _)| (i + watched_mask as usize).is_multiple_of(2))
                .map(|(_, v)| (*v, held_at(ifindex, 0, NO_EXPIRY)))
                .collect();
            program.set_held(&held).expect("set_held");
            for vip in &all {
                let (action, _) = program.test_run(&ask(*vip), ifindex).expect("test_run");
                let want = if held.contains_key(vip) {
                    XDP_TX
                } else {
                    XDP_PASS
                };
                assert_eq!(
                    action,
                    want,
                    "{vip} with watched set {watched_mask:06b}, held {:?}",
                    held.keys().collect::<Vec<_>>()
                );
            }
        }
        // The claims of both families come through one reader.
        let (a4, a6) = (all[0], all[3]);
        program.set_watched(&[a4, a6].into()).expect("set_watched");
        program
            .set_held(&BTreeMap::from([
                (a4, held_at(ifindex, 0, NO_EXPIRY)),
                (a6, held_at(ifindex, 0, NO_EXPIRY)),
            ]))
            .expect("set_held");
        let mut reader = rt
            .block_on(async { program.take_conflicts() })
            .expect("take_conflicts");
        let claims = [
            (ArpFrame::gratuitous(FOREIGN_MAC, v4[0]).bytes(), a4),
            (NdpFrame::unsolicited_advert(FOREIGN_MAC, v6[0]).bytes(), a6),
        ];
        for (frame, vip) in claims {
            let (action, _) = program.test_run(&frame, ifindex).expect("test_run");
            assert_eq!(action, XDP_PASS, "a claim of {vip} passes");
            assert_eq!(
                next_event6(&rt, &mut reader, Duration::from_secs(2)),
                Some(Conflict {
                    vip,
                    ifindex,
                    mac: FOREIGN_MAC
                }),
                "the claim of {vip}"
            );
        }
        program.clear_held().expect("clear_held");
        for vip in [a4, a6] {
            let (action, _) = program.test_run(&ask(vip), ifindex).expect("test_run");
            assert_eq!(action, XDP_PASS, "{vip} after clear_held");
        }
    });
}

// ---------------------------------------------------------------------------
// On the wire: a real client's kernel takes the answer.

/// Sends `frame` out of `ifname` from a raw AF_PACKET socket of this
/// thread's namespace.
fn send_raw(ifname: &str, frame: &[u8]) {
    let socket = vipd_tests::lab::packet_socket(ifname, 0)
        .unwrap_or_else(|e| panic!("packet socket on {ifname}: {e}"));
    assert_eq!(socket.send(frame).expect("send"), frame.len(), "short send");
}

/// Generic mode on n1's veth (native XDP_TX frames would not reach the
/// peer on veth, docs/DESIGN.md facts). n1 has no address at all, so only
/// the program can answer for VIP6: the client's kernel resolves VIP6 to
/// n1's MAC, and raw solicitations of 32 and 24 bytes (the latter grown by
/// the program) come back as the exact advertisement.
#[test]
fn held_vip_is_resolved_by_a_real_client_through_the_program() {
    let lab = vipd_tests::lab::Lab::new("xdp-ndp");
    let no_addr = vipd_tests::lab::HostIf::on(0, "");
    let n1 = lab.add_host("n1", &[no_addr]);
    let c1 = lab.add_host("c1", &[no_addr]);
    c1.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8::10/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    let n1_mac = n1.mac_bytes("eth0");
    let c1_mac = c1.mac_bytes("eth0");

    n1.in_netns(|| {
        let mut program = XdpProgram::load().expect("loading the XDP program");
        program
            .attach("eth0", vipd::config::XdpMode::Generic)
            .expect("attach in generic mode");
        program.set_watched(&vips6([VIP6])).expect("set_watched");
        let held = HeldVip {
            mac: n1_mac,
            ..held_at(super::ifindex("eth0"), 0, NO_EXPIRY)
        };
        program
            .set_held(&held6_map([(VIP6, held)]))
            .expect("set_held");

        // The client's kernel resolves the VIP (a datagram to it).
        c1.in_netns(|| {
            let socket = std::net::UdpSocket::bind("[2001:db8::10]:0").expect("bind");
            socket.send_to(b"x", "[2001:db8::100]:9").expect("send_to");
        });
        let neigh = || c1.ip(&["-6", "neigh", "show", "2001:db8::100", "dev", "eth0"]);
        let mac_text = n1.mac("eth0");
        vipd_tests::lab::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            let n = neigh();
            n.contains(&mac_text) && n.contains("REACHABLE")
        })
        .unwrap_or_else(|e| panic!("client's neighbour entry for VIP6: {e}: {}", neigh()));

        // Raw solicitations, with and without SLLA, and their exact answers.
        let capture = c1.capture("eth0", 0x86dd);
        let with_slla = NdpFrame::solicit(c1_mac, ASKER6, VIP6);
        let bare = NdpFrame {
            options: Vec::new(),
            ..with_slla.clone()
        };
        let expected = NdpFrame::answer_to(&with_slla, n1_mac).bytes();
        assert_eq!(expected, NdpFrame::answer_to(&bare, n1_mac).bytes());
        // How many frames of exactly `bytes` reached the client.
        let arrived = |bytes: &[u8]| {
            capture
                .frames()
                .iter()
                .filter(|f| !f.outgoing && f.bytes == bytes)
                .count()
        };
        // The client sends `ns`; waits until `n` answers of `want` arrived.
        let ask = |ns: &NdpFrame, want: &[u8], n: usize, what: &str| {
            c1.in_netns(|| send_raw("eth0", &ns.bytes()));
            vipd_tests::lab::wait_until(Duration::from_secs(3), Duration::from_millis(10), || {
                arrived(want) >= n
            })
            .unwrap_or_else(|e| panic!("{what} on the client: {e}"));
        };
        ask(&with_slla, &expected, 1, "answer 1");
        ask(&bare, &expected, 2, "answer 2");

        // The interface forwards (the agent then sets HELD_ROUTER): the
        // answer that reaches the client carries the Router flag.
        let router_expected = NdpFrame::router_answer_to(&with_slla, n1_mac).bytes();
        let as_router = HeldVip {
            flags: HELD_ROUTER,
            ..held
        };
        program
            .set_held(&held6_map([(VIP6, as_router)]))
            .expect("set_held (router)");
        ask(&bare, &router_expected, 1, "answer with the Router flag");
        assert_eq!(
            arrived(&expected),
            2,
            "no answer without the flag meanwhile"
        );
        // Back to a host: the flag goes.
        program
            .set_held(&held6_map([(VIP6, held)]))
            .expect("set_held (host)");
        ask(&bare, &expected, 3, "answer without the Router flag");
        assert_eq!(arrived(&router_expected), 1, "one answer with the flag");

        let counters = counters6(&program)[&VIP6];
        assert!(
            counters.xdp_replies >= 5 && counters.requests >= counters.xdp_replies,
            "{counters:?}"
        );

        // Released: the same solicitation goes unanswered (nobody else
        // has the address), so the answers above were the program's.
        program.clear_held().expect("clear_held");
        c1.in_netns(|| send_raw("eth0", &bare.bytes()));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(arrived(&expected), 3, "no answer once released");
        capture.stop();
    });
}
