//! The fence: between a held VIP's lease end and its fence end the node
//! must not serve the VIP, whatever its agent does. The programs run on
//! hand-made frames (BPF_PROG_TEST_RUN): the ingress XDP program drops ARP
//! requests and Neighbor Solicitations for the VIP and every packet
//! addressed to it; before the lease end it behaves as it always did; past
//! the fence end the entry is inert. Every test runs in a network namespace
//! of its own.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
    time::{Duration, Instant},
};

use pnet_packet::icmpv6::{self, Icmpv6Packet};
use vipd::{vip::Vip, xdp::XdpProgram};
use vipd_common::HeldVip;
use vipd_tests::{
    draw::Draw,
    lab::{ifindex_here, in_new_netns},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const OUR_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x0a];
const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const OTHER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x101);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
/// The VLAN of the tagged cases.
const VLAN: u16 = 100;

// ---------------------------------------------------------------------------
// Frames: what a client sends to reach a VIP.

/// What a frame asks of the node that holds `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A broadcast ARP request for the address.
    ArpRequest,
    /// A Neighbor Solicitation to the address's solicited-node group.
    NsMulticast,
    /// A Neighbor Solicitation to the address itself (unreachability
    /// detection).
    NsUnicast,
    /// A TCP SYN to the address (IPv4).
    Syn4,
    /// A TCP SYN to the address (IPv6).
    Syn6,
    /// A UDP datagram to the address (IPv4).
    Udp4,
}

const KINDS: [Kind; 6] = [
    Kind::ArpRequest,
    Kind::NsMulticast,
    Kind::NsUnicast,
    Kind::Syn4,
    Kind::Syn6,
    Kind::Udp4,
];

impl Kind {
    /// Whether the program answers this frame itself for a VIP it holds.
    fn answered(self) -> bool {
        matches!(self, Kind::ArpRequest | Kind::NsMulticast | Kind::NsUnicast)
    }

    /// The address this frame is about when it is about the VIP or, with
    /// `other`, about an address the node does not hold.
    fn frame(self, other: bool, vlan: Option<u16>) -> Vec<u8> {
        let (a4, a6) = if other {
            (OTHER4, OTHER6)
        } else {
            (VIP4, VIP6)
        };
        let (dst_mac, ethertype, payload) = match self {
            Kind::ArpRequest => ([0xff; 6], [0x08, 0x06], arp_request(a4)),
            Kind::NsMulticast => {
                let group = solicited_node(a6);
                (multicast_mac(group), [0x86, 0xdd], solicit(group, a6))
            }
            Kind::NsUnicast => (OUR_MAC, [0x86, 0xdd], solicit(a6, a6)),
            Kind::Syn4 => (OUR_MAC, [0x08, 0x00], ipv4(a4, 6, &tcp_syn())),
            Kind::Udp4 => (OUR_MAC, [0x08, 0x00], ipv4(a4, 17, &udp())),
            Kind::Syn6 => (OUR_MAC, [0x86, 0xdd], ipv6(a6, 6, &tcp_syn())),
        };
        ethernet(dst_mac, ethertype, vlan, &payload)
    }
}

fn ethernet(dst: [u8; 6], ethertype: [u8; 2], vlan: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(18 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&CLIENT_MAC);
    if let Some(id) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&id.to_be_bytes());
    }
    f.extend_from_slice(&ethertype);
    f.extend_from_slice(payload);
    f
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    p.extend_from_slice(&CLIENT_MAC);
    p.extend_from_slice(&CLIENT4.octets());
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&target.octets());
    p
}

fn ipv4(dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    ipv4_from(CLIENT4, dst, protocol, payload)
}

fn ipv4_from(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + payload.len()).expect("short packet");
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let sum = !fold(
        h.chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum(),
    );
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn ipv6(dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> Vec<u8> {
    ipv6_from(CLIENT6, dst, next_header, payload)
}

fn ipv6_from(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("short packet");
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&len.to_be_bytes());
    h.push(next_header);
    h.push(if next_header == 58 { 255 } else { 64 });
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// A TCP SYN from port 40000 to port 80 (its checksum is not checked by
/// anything here).
fn tcp_syn() -> Vec<u8> {
    let mut t = vec![
        0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff,
    ];
    t.extend_from_slice(&[0, 0, 0, 0]);
    t
}

fn udp() -> Vec<u8> {
    vec![0x9c, 0x40, 0, 53, 0, 12, 0, 0, 1, 2, 3, 4]
}

/// A Neighbor Solicitation for `target` sent to `dst`, with a Source
/// Link-Layer Address option and a correct checksum (pnet's).
fn solicit(dst: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let mut msg = vec![135, 0, 0, 0, 0, 0, 0, 0];
    msg.extend_from_slice(&target.octets());
    msg.extend_from_slice(&[1, 1]);
    msg.extend_from_slice(&CLIENT_MAC);
    let sum = icmpv6::checksum(&Icmpv6Packet::new(&msg).expect("ICMPv6"), &CLIENT6, &dst);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv6(dst, 58, &msg)
}

fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

fn multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    u16::try_from(sum).expect("folded twice")
}

// ---------------------------------------------------------------------------
// The entries: where in its life a held VIP is.

/// Where `now` lies in a held entry's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before the lease end: served.
    Leased,
    /// Between the lease end and the fence end: fenced.
    Fenced,
    /// Past the fence end: the entry is inert.
    Inert,
}

const PHASES: [Phase; 3] = [Phase::Leased, Phase::Fenced, Phase::Inert];

/// Lease end and fence end (program clock) that put now in `phase`.
fn ends(phase: Phase, draw: &mut Draw) -> (u64, u64) {
    let now = vipd::xdp::program_ns(Instant::now());
    // A distance from `now` far enough that no test run crosses it: 10 s
    // and up to a quarter of the clock's reading (two of them fit before
    // `now` on a machine up for a minute).
    let mut far = || 10_000_000_000 + draw.below((now / 4).max(1));
    match phase {
        Phase::Leased => {
            let lease_end = now + far();
            (lease_end, lease_end + far())
        }
        Phase::Fenced => (now - far(), now + far()),
        Phase::Inert => {
            let fence_end = now - far();
            (fence_end - far(), fence_end)
        }
    }
}

fn held(ifindex: u32, vlan: u16, (lease_end_ns, fence_end_ns): (u64, u64)) -> HeldVip {
    HeldVip {
        ifindex,
        mac: OUR_MAC,
        vlan,
        flags: 0,
        _pad: [0; 3],
        lease_end_ns,
        fence_end_ns,
    }
}

fn vip4() -> Vip {
    Vip::new(VIP4).expect("test VIP")
}

fn vip6() -> Vip {
    Vip::new_v6(VIP6).expect("test VIP")
}

/// Runs `ip` with `args` in this thread's namespace.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2) failed: is it installed?");
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One end of a new veth pair; its ifindex.
fn iface(name: &str) -> u32 {
    let peer = format!("{name}p");
    ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
    ifindex_here(name)
}

/// The program, watching both VIPs and the other addresses (so only the
/// held map tells them apart), holding nothing yet.
fn loaded() -> XdpProgram {
    let mut program = XdpProgram::load().expect("loading the XDP program");
    let watched: BTreeSet<Vip> = [VIP4, OTHER4]
        .into_iter()
        .map(|a| Vip::new(a).expect("test VIP"))
        .chain([VIP6, OTHER6].map(|a| Vip::new_v6(a).expect("test VIP")))
        .collect();
    program.set_watched(&watched).expect("set_watched");
    program
}

/// What the ingress program must do with `kind` about the VIP in `phase`,
/// arriving where the VIP lives (`home`) or not.
fn ingress_wants(kind: Kind, phase: Phase, home: bool) -> u32 {
    match phase {
        Phase::Fenced => XDP_DROP,
        Phase::Inert => XDP_PASS,
        Phase::Leased if home && kind.answered() => XDP_TX,
        Phase::Leased => XDP_PASS,
    }
}

// ---------------------------------------------------------------------------
// Ingress.

/// Drawn cases: every frame kind, untagged and tagged, arriving where the
/// VIP lives and elsewhere, with the entry leased, fenced or inert at drawn
/// distances from now. Fenced: dropped wherever it arrives (neither the
/// program nor the kernel answers, no service sees it). Leased: as
/// always. Inert: passed, as if there were no entry.
#[test]
fn ingress_fence_drops_what_would_serve_the_vip_between_lease_end_and_fence_end() {
    in_new_netns(|| {
        let home = iface("fen0");
        let away = iface("fen1");
        let mut program = loaded();
        let mut draw = Draw::seeded(0x5eed_0001);
        let mut failures = Vec::new();
        let mut cases = 0;
        for round in 0..4 {
            for phase in PHASES {
                for vlan in [None, Some(VLAN)] {
                    let window = ends(phase, &mut draw);
                    let entry = held(home, vlan.unwrap_or(0), window);
                    program
                        .set_held(&BTreeMap::from([(vip4(), entry), (vip6(), entry)]))
                        .expect("set_held");
                    for kind in KINDS {
                        for (ingress, at_home) in [(home, true), (away, false)] {
                            let frame = kind.frame(false, vlan);
                            let (action, out) = program
                                .test_run(&frame, ingress)
                                .expect("BPF_PROG_TEST_RUN");
                            let want = ingress_wants(kind, phase, at_home);
                            cases += 1;
                            let case = format!(
                                "round {round}: {kind:?} {} {phase:?} (lease end {}, fence end {}) arriving {}",
                                if vlan.is_some() { "tagged" } else { "untagged" },
                                window.0,
                                window.1,
                                if at_home {
                                    "where the VIP lives"
                                } else {
                                    "elsewhere"
                                },
                            );
                            if action != want {
                                failures.push(format!("{case}: action {action}, want {want}"));
                            } else if want == XDP_PASS && out != frame {
                                failures.push(format!("{case}: passed, but changed"));
                            }
                        }
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {cases} cases wrong:\n{}",
            failures.len(),
            failures.join("\n")
        );
    });
}

/// The fence is per VIP: frames about an address next to a fenced VIP
/// (same subnet, watched, not held) pass in every phase of the VIP.
#[test]
fn ingress_fence_leaves_other_addresses_alone() {
    in_new_netns(|| {
        let home = iface("fen0");
        let mut program = loaded();
        let mut draw = Draw::seeded(0x5eed_0002);
        for phase in PHASES {
            for vlan in [None, Some(VLAN)] {
                let entry = held(home, vlan.unwrap_or(0), ends(phase, &mut draw));
                program
                    .set_held(&BTreeMap::from([(vip4(), entry), (vip6(), entry)]))
                    .expect("set_held");
                for kind in KINDS {
                    let frame = kind.frame(true, vlan);
                    let (action, out) = program.test_run(&frame, home).expect("BPF_PROG_TEST_RUN");
                    let case = format!("{kind:?} to the other address, VIP {phase:?}, {vlan:?}");
                    assert_eq!(action, XDP_PASS, "{case}");
                    assert_eq!(out, frame, "{case}: changed");
                }
            }
        }
    });
}

/// An entry whose fence end was set "until cleared" (the agent is writing
/// the address) is fenced from its lease end on, however far away: the
/// kernel may hold the address for as long as the write's lifetime.
#[test]
fn an_entry_fenced_until_cleared_stays_fenced() {
    in_new_netns(|| {
        let home = iface("fen0");
        let mut program = loaded();
        let now = vipd::xdp::program_ns(Instant::now());
        let entry = held(home, 0, (now - 1_000_000, u64::MAX));
        program
            .set_held(&BTreeMap::from([(vip4(), entry), (vip6(), entry)]))
            .expect("set_held");
        for kind in KINDS {
            let (action, _) = program
                .test_run(&kind.frame(false, None), home)
                .expect("BPF_PROG_TEST_RUN");
            assert_eq!(action, XDP_DROP, "{kind:?}, fenced until cleared");
        }
        // And it was no different a moment ago, for the kernel's clock.
        std::thread::sleep(Duration::from_millis(5));
        let (action, _) = program
            .test_run(&Kind::ArpRequest.frame(false, None), home)
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(action, XDP_DROP, "a moment later");
    });
}

// ---------------------------------------------------------------------------
// Egress: what the node sends that would serve the VIP.

const TCX_NEXT: i32 = -1;
const TCX_DROP: i32 = 2;
const LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// What leaves the node from (or about) an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    /// An ARP reply with the address as sender.
    ArpReply,
    /// A gratuitous ARP (request form) for the address.
    Gratuitous,
    /// A TCP SYN-ACK from the address (IPv4).
    SynAck4,
    /// A UDP answer from the address (IPv4).
    Udp4,
    /// A TCP segment from the address (IPv6): an old socket's retransmission.
    Segment6,
    /// A Neighbor Advertisement for the address, from the address.
    Na,
    /// A Neighbor Advertisement for the address, from a link-local address.
    NaLinkLocal,
}

const OUTS: [Out; 7] = [
    Out::ArpReply,
    Out::Gratuitous,
    Out::SynAck4,
    Out::Udp4,
    Out::Segment6,
    Out::Na,
    Out::NaLinkLocal,
];

impl Out {
    fn frame(self, other: bool, vlan: Option<u16>) -> Vec<u8> {
        let (a4, a6) = if other {
            (OTHER4, OTHER6)
        } else {
            (VIP4, VIP6)
        };
        let (ethertype, payload) = match self {
            Out::ArpReply => ([0x08, 0x06], arp_from(2, a4, CLIENT4)),
            Out::Gratuitous => ([0x08, 0x06], arp_from(1, a4, a4)),
            Out::SynAck4 => ([0x08, 0x00], ipv4_from(a4, CLIENT4, 6, &tcp_syn())),
            Out::Udp4 => ([0x08, 0x00], ipv4_from(a4, CLIENT4, 17, &udp())),
            Out::Segment6 => ([0x86, 0xdd], ipv6_from(a6, CLIENT6, 6, &tcp_syn())),
            Out::Na => ([0x86, 0xdd], advert(a6, a6)),
            Out::NaLinkLocal => ([0x86, 0xdd], advert(LINK_LOCAL, a6)),
        };
        let mut f = ethernet(CLIENT_MAC, ethertype, vlan, &payload);
        // From us.
        f[6..12].copy_from_slice(&OUR_MAC);
        f
    }
}

/// An ARP packet of operation `oper` from `spa` at OUR_MAC about `tpa`.
fn arp_from(oper: u8, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 0x08, 0x00, 6, 4, 0, oper];
    p.extend_from_slice(&OUR_MAC);
    p.extend_from_slice(&spa.octets());
    p.extend_from_slice(&CLIENT_MAC);
    p.extend_from_slice(&tpa.octets());
    p
}

/// A solicited Neighbor Advertisement of `target` at OUR_MAC sent from
/// `src` to the client.
fn advert(src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let mut msg = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    msg.extend_from_slice(&target.octets());
    msg.extend_from_slice(&[2, 1]);
    msg.extend_from_slice(&OUR_MAC);
    let sum = icmpv6::checksum(&Icmpv6Packet::new(&msg).expect("ICMPv6"), &src, &CLIENT6);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv6_from(src, CLIENT6, 58, &msg)
}

/// Drawn cases, as for ingress: every kind of frame that would serve the
/// VIP leaving the node, untagged and tagged, with the entry leased, fenced
/// or inert. Fenced: dropped. Otherwise: on to the next program.
#[test]
fn egress_fence_drops_what_is_sent_from_the_vip_between_lease_end_and_fence_end() {
    in_new_netns(|| {
        let home = iface("fen0");
        let mut program = loaded();
        let mut draw = Draw::seeded(0x5eed_0003);
        let mut failures = Vec::new();
        let mut cases = 0;
        for round in 0..4 {
            for phase in PHASES {
                for vlan in [None, Some(VLAN)] {
                    let window = ends(phase, &mut draw);
                    let entry = held(home, vlan.unwrap_or(0), window);
                    program
                        .set_held(&BTreeMap::from([(vip4(), entry), (vip6(), entry)]))
                        .expect("set_held");
                    for out in OUTS {
                        for other in [false, true] {
                            let verdict = program
                                .test_run_egress(&out.frame(other, vlan))
                                .expect("BPF_PROG_TEST_RUN");
                            let want = if phase == Phase::Fenced && !other {
                                TCX_DROP
                            } else {
                                TCX_NEXT
                            };
                            cases += 1;
                            if verdict != want {
                                failures.push(format!(
                                    "round {round}: {out:?} {} {}, VIP {phase:?}: verdict {verdict}, want {want}",
                                    if other { "about the other address" } else { "about the VIP" },
                                    if vlan.is_some() { "tagged" } else { "untagged" },
                                ));
                            }
                        }
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {cases} cases wrong:\n{}",
            failures.len(),
            failures.join("\n")
        );
    });
}

// ---------------------------------------------------------------------------
// Time namespaces: the programs' clock ignores them, the agent's does not.

/// Set in the child this test starts inside a time namespace.
const TIMENS_CHILD: &str = "VIPD_FENCE_TIMENS_CHILD";

/// Run inside a time namespace whose boot and monotonic clocks are days
/// ahead of the host's (`unshare --time`), an entry whose lease ended a
/// second ago by the agent's clock is fenced, and one whose window closed
/// a second ago is inert: the agent's ends are on the host's clock, which
/// the programs read. Without taking the namespace's offset out, the lease
/// would run days more.
#[test]
fn a_vipd_in_a_time_namespace_fences_on_time() {
    if std::env::var_os(TIMENS_CHILD).is_some() {
        let program = loaded_with_held(|now| {
            let second = 1_000_000_000;
            [
                (vip4(), held(0, 0, (now - second, now + 60 * second))),
                (vip6(), held(0, 0, (now - 2 * second, now - second))),
            ]
        });
        let (arp, _) = program
            .test_run(&Kind::ArpRequest.frame(false, None), 0)
            .expect("BPF_PROG_TEST_RUN");
        let (ns, _) = program
            .test_run(&Kind::NsMulticast.frame(false, None), 0)
            .expect("BPF_PROG_TEST_RUN");
        println!("verdicts {arp} {ns}");
        return;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = Command::new("unshare")
        .args(["--time", "--boottime", "864000", "--monotonic", "864000"])
        .arg(&exe)
        .args([
            "--exact",
            "a_vipd_in_a_time_namespace_fences_on_time",
            "--nocapture",
        ])
        .env(TIMENS_CHILD, "1")
        .output()
        .expect("running unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the child in a time namespace failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("verdicts {XDP_DROP} {XDP_PASS}")),
        "in a time namespace 10 days ahead: want a fenced ARP request dropped ({XDP_DROP}) and an inert entry's solicitation passed ({XDP_PASS}); the child said: {stdout}"
    );
}

/// The program holding what `entries` makes of the agent's clock now.
fn loaded_with_held<const N: usize>(
    entries: impl FnOnce(u64) -> [(Vip, HeldVip); N],
) -> XdpProgram {
    let mut program = loaded();
    let now = vipd::xdp::program_ns(Instant::now());
    program
        .set_held(&BTreeMap::from(entries(now)))
        .expect("set_held");
    program
}
