//! The XDP program itself: the kernel runs it on hand-made frames
//! (BPF_PROG_TEST_RUN) and we check the action, the frame out and the exact
//! counter change; one test attaches it to a veth pair. Every test runs in a
//! network namespace of its own (unshared by its thread), so the interfaces
//! it makes vanish with it. The IPv6 (Neighbor Discovery) cases are in
//! `xdp_program/ndp.rs`.

#[path = "xdp_program/ndp.rs"]
mod ndp;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    process::Command,
    time::Duration,
};

use vipd::{
    config::XdpMode,
    vip::Vip,
    xdp::{AttachedMode, Conflict, ConflictReader, XdpProgram},
};
use vipd_common::{ArpCounters, HeldVip, NO_EXPIRY};
use vipd_tests::lab::{ifindex_here as ifindex, in_new_netns as in_netns};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const OUR_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];
const ASKER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x0a];
const FOREIGN_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x0f];
const BROADCAST: [u8; 6] = [0xff; 6];
const VIP: [u8; 4] = [192, 0, 2, 100];
const OTHER_VIP: [u8; 4] = [192, 0, 2, 101];
const UNWATCHED: [u8; 4] = [192, 0, 2, 200];
const ASKER_IP: [u8; 4] = [192, 0, 2, 10];

// ---------------------------------------------------------------------------
// The namespace each test runs in (`in_netns`: a fresh one per test).

/// Runs `ip` with `args` in this thread's namespace, panicking with its
/// output when it fails.
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

/// Makes an interface (one end of a veth pair, as this kernel may lack the
/// dummy driver) and returns its ifindex.
fn iface(name: &str) -> u32 {
    let peer = format!("{name}p");
    ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
    ifindex(name)
}

// ---------------------------------------------------------------------------
// Frames, built field by field.

/// An Ethernet frame carrying an ARP packet, every field settable so a test
/// can break any one of them.
#[derive(Clone, Copy)]
struct ArpFrame {
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    /// (TPID, TCI) of one VLAN tag.
    vlan: Option<([u8; 2], [u8; 2])>,
    ethertype: [u8; 2],
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

const OPER_REQUEST: [u8; 2] = [0, 1];
const OPER_REPLY: [u8; 2] = [0, 2];
const TAG_8021Q: ([u8; 2], [u8; 2]) = ([0x81, 0x00], [0x00, 0x64]);
const TAG_8021AD: ([u8; 2], [u8; 2]) = ([0x88, 0xa8], [0x00, 0x65]);

impl ArpFrame {
    /// A broadcast who-has `tpa`, tell `spa` from `sha`.
    fn request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Self {
        ArpFrame {
            eth_dst: BROADCAST,
            eth_src: sha,
            vlan: None,
            ethertype: [0x08, 0x06],
            htype: [0, 1],
            ptype: [0x08, 0x00],
            hlen: 6,
            plen: 4,
            oper: OPER_REQUEST,
            sha,
            spa,
            tha: [0; 6],
            tpa,
        }
    }

    /// A unicast reply: `spa` is at `sha`, to the asker.
    fn reply(sha: [u8; 6], spa: [u8; 4]) -> Self {
        ArpFrame {
            eth_dst: ASKER_MAC,
            oper: OPER_REPLY,
            tha: ASKER_MAC,
            tpa: ASKER_IP,
            ..Self::request(sha, spa, ASKER_IP)
        }
    }

    /// A gratuitous announcement, request form (as `arping -U`).
    fn gratuitous(sha: [u8; 6], vip: [u8; 4]) -> Self {
        ArpFrame {
            tha: BROADCAST,
            ..Self::request(sha, vip, vip)
        }
    }

    /// The answer the program must send to this request for a VIP it
    /// holds: a unicast reply from OUR_MAC to the asker, its tag kept.
    fn answer(self) -> Self {
        ArpFrame {
            eth_dst: self.sha,
            eth_src: OUR_MAC,
            oper: OPER_REPLY,
            sha: OUR_MAC,
            spa: self.tpa,
            tha: self.sha,
            tpa: self.spa,
            ..self
        }
    }

    fn tagged(self, tag: ([u8; 2], [u8; 2])) -> Self {
        ArpFrame {
            vlan: Some(tag),
            ..self
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(46);
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        if let Some((tpid, tci)) = self.vlan {
            f.extend_from_slice(&tpid);
            f.extend_from_slice(&tci);
        }
        f.extend_from_slice(&self.ethertype);
        f.extend_from_slice(&self.htype);
        f.extend_from_slice(&self.ptype);
        f.push(self.hlen);
        f.push(self.plen);
        f.extend_from_slice(&self.oper);
        f.extend_from_slice(&self.sha);
        f.extend_from_slice(&self.spa);
        f.extend_from_slice(&self.tha);
        f.extend_from_slice(&self.tpa);
        f
    }
}

// ---------------------------------------------------------------------------
// The program under test.

fn vip(octets: [u8; 4]) -> Vip {
    Vip::new(Ipv4Addr::from(octets)).expect("test VIP is valid")
}

/// A loaded program watching VIP and OTHER_VIP, holding none.
fn loaded() -> XdpProgram {
    let mut program = XdpProgram::load().expect("loading the XDP program");
    let watched: BTreeSet<Vip> = [vip(VIP), vip(OTHER_VIP)].into();
    program.set_watched(&watched).expect("set_watched");
    program
}

/// A loaded program watching VIP and OTHER_VIP and holding VIP on `ifindex`.
fn holding(ifindex: u32) -> XdpProgram {
    holding_on_vlan(ifindex, 0)
}

/// Like [`holding`], with the VIP on VLAN `vlan` of `ifindex`.
fn holding_on_vlan(ifindex: u32, vlan: u16) -> XdpProgram {
    let mut program = loaded();
    let held = vip_held(held_at(ifindex, vlan, NO_EXPIRY));
    program.set_held(&held).expect("set_held");
    program
}

/// What the agent writes for a VIP it holds: answered on `ifindex`, VLAN
/// `vlan` (0: untagged), with OUR_MAC, until `lease_end_ns` (no fence
/// window after it).
fn held_at(ifindex: u32, vlan: u16, lease_end_ns: u64) -> HeldVip {
    HeldVip {
        ifindex,
        mac: OUR_MAC,
        vlan,
        flags: 0,
        _pad: [0; 3],
        lease_end_ns,
        // No fence window: past its lease the entry is inert.
        fence_end_ns: lease_end_ns,
    }
}

/// The held map with VIP alone in it.
fn vip_held(held: HeldVip) -> BTreeMap<Vip, HeldVip> {
    BTreeMap::from([(vip(VIP), held)])
}

fn counters_of(program: &XdpProgram, octets: [u8; 4]) -> ArpCounters {
    *program
        .counters()
        .expect("reading counters")
        .get(&vip(octets))
        .unwrap_or_else(|| panic!("{} is not watched", Ipv4Addr::from(octets)))
}

/// What one frame did: the action, the frame out, and how the counters of
/// the VIP and of the other watched VIP changed.
type Ran = (u32, Vec<u8>, ArpCounters, ArpCounters);

/// Runs `frame` once; `both` reads the counters of the VIP and of the other
/// watched VIP of the family under test, before and after.
fn run_counted(
    program: &XdpProgram,
    frame: &[u8],
    ingress: u32,
    both: impl Fn(&XdpProgram) -> (ArpCounters, ArpCounters),
) -> Ran {
    let before = both(program);
    let (action, out) = program.test_run(frame, ingress).expect("BPF_PROG_TEST_RUN");
    let after = both(program);
    (
        action,
        out,
        diff(after.0, before.0),
        diff(after.1, before.1),
    )
}

/// Runs `frame` once and returns the action, the frame out, and how the
/// counters of VIP and OTHER_VIP changed.
fn run(program: &XdpProgram, frame: &[u8], ingress: u32) -> Ran {
    run_counted(program, frame, ingress, |p| {
        (counters_of(p, VIP), counters_of(p, OTHER_VIP))
    })
}

fn diff(after: ArpCounters, before: ArpCounters) -> ArpCounters {
    ArpCounters {
        requests: after.requests - before.requests,
        xdp_replies: after.xdp_replies - before.xdp_replies,
        announcements: after.announcements - before.announcements,
        foreign_claims: after.foreign_claims - before.foreign_claims,
    }
}

const NONE: ArpCounters = ArpCounters {
    requests: 0,
    xdp_replies: 0,
    announcements: 0,
    foreign_claims: 0,
};
const ONE_REQUEST: ArpCounters = ArpCounters {
    requests: 1,
    ..NONE
};
/// A request answered by the program.
const ANSWERED: ArpCounters = ArpCounters {
    requests: 1,
    xdp_replies: 1,
    ..NONE
};
const ONE_ANNOUNCEMENT: ArpCounters = ArpCounters {
    announcements: 1,
    ..NONE
};

/// `counters` with a claim of the VIP by another MAC on top.
const fn claimed(counters: ArpCounters) -> ArpCounters {
    ArpCounters {
        foreign_claims: counters.foreign_claims + 1,
        ..counters
    }
}
/// A claim of a held VIP by another MAC, counted on its own.
const ONE_CLAIM: ArpCounters = claimed(NONE);
/// Another MAC announcing a VIP we hold.
const FOREIGN_ANNOUNCEMENT: ArpCounters = claimed(ONE_ANNOUNCEMENT);
/// Another MAC asking about a VIP we hold as if it were its own (a DAD probe).
const FOREIGN_REQUEST: ArpCounters = claimed(ONE_REQUEST);

/// Asserts that `frame`, which `ran`, passed unchanged and changed the
/// counters of the VIP by `vip_want` and of the other watched VIP by
/// `other_want`.
fn assert_passed(
    ran: Ran,
    frame: &[u8],
    (vip_want, other_want): (ArpCounters, ArpCounters),
    what: &str,
) {
    let (action, out, vip_delta, other_delta) = ran;
    assert_eq!(action, XDP_PASS, "{what}: action");
    assert_eq!(out, frame, "{what}: the frame must pass unchanged");
    assert_eq!(vip_delta, vip_want, "{what}: counters of the VIP");
    assert_eq!(other_delta, other_want, "{what}: counters of the other VIP");
}

/// Asserts that `frame` passes unchanged and changes the counters of VIP by
/// `expected` (and OTHER_VIP's not at all).
fn assert_passes(
    program: &XdpProgram,
    frame: &[u8],
    ingress: u32,
    expected: ArpCounters,
    what: &str,
) {
    assert_passed(run(program, frame, ingress), frame, (expected, NONE), what);
}

// ---------------------------------------------------------------------------
// The loader: built where the kernel's BTF cannot be read, without hiding it
// from anyone else.

#[test]
fn the_loader_parses_no_kernel_btf_and_hides_it_from_nobody_else() {
    use vipd::xdp::loader::{KernelBtf, loader};
    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
    let before = std::fs::metadata(VMLINUX)
        .unwrap_or_else(|e| panic!("{VMLINUX} is a prerequisite of this test: {e}"))
        .len();
    assert!(before > 0, "{VMLINUX} is empty");
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();

    let (built, how) = loader();
    assert_eq!(
        how,
        KernelBtf::Hidden,
        "as root the loader thread can hide the file"
    );
    // aya's loader prints the BTF it holds: none was parsed.
    let shown = format!("{built:?}");
    assert!(
        shown.contains("btf: None"),
        "the loader parsed the kernel's BTF: {}",
        &shown[..shown.len().min(300)]
    );
    // Nobody else lost it: this thread, a new thread, and the mount table.
    assert_eq!(std::fs::metadata(VMLINUX).unwrap().len(), before);
    let other = std::thread::spawn(|| std::fs::metadata(VMLINUX).map(|m| m.len()))
        .join()
        .unwrap();
    assert_eq!(other.unwrap(), before, "another thread still reads it");
    assert_eq!(
        std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
        mounts_before,
        "the process's mount table changed"
    );
    // The program loads from such a loader (the path vipd takes).
    in_netns(|| drop(loaded()));
}

// ---------------------------------------------------------------------------
// Watched, not held: count and pass.

#[test]
fn request_for_watched_vip_passes_and_counts_a_request() {
    in_netns(|| {
        let program = loaded();
        let frame = ArpFrame::request(ASKER_MAC, ASKER_IP, VIP).bytes();
        assert_passes(&program, &frame, 0, ONE_REQUEST, "request");
        // A second one counts again: the counter is a count, not a flag.
        assert_passes(&program, &frame, 0, ONE_REQUEST, "second request");
        assert_eq!(counters_of(&program, VIP).requests, 2);
    });
}

#[test]
fn reply_about_watched_vip_counts_an_announcement() {
    in_netns(|| {
        let program = loaded();
        let frame = ArpFrame::reply(FOREIGN_MAC, VIP).bytes();
        assert_passes(&program, &frame, 0, ONE_ANNOUNCEMENT, "reply");
    });
}

#[test]
fn gratuitous_arp_counts_an_announcement_not_a_request() {
    in_netns(|| {
        let program = loaded();
        // Request form (`arping -U`): spa == tpa, tha broadcast.
        let request_form = ArpFrame::gratuitous(FOREIGN_MAC, VIP).bytes();
        assert_passes(
            &program,
            &request_form,
            0,
            ONE_ANNOUNCEMENT,
            "gratuitous request",
        );
        // Request form with tha zero (as some stacks send it).
        let zero_tha = ArpFrame {
            tha: [0; 6],
            ..ArpFrame::gratuitous(FOREIGN_MAC, VIP)
        }
        .bytes();
        assert_passes(
            &program,
            &zero_tha,
            0,
            ONE_ANNOUNCEMENT,
            "gratuitous request, tha 0",
        );
        // Reply form (`arping -A`): broadcast, spa == tpa, tha = own MAC.
        let reply_form = ArpFrame {
            eth_dst: BROADCAST,
            oper: OPER_REPLY,
            tha: FOREIGN_MAC,
            tpa: VIP,
            ..ArpFrame::gratuitous(FOREIGN_MAC, VIP)
        }
        .bytes();
        assert_passes(
            &program,
            &reply_form,
            0,
            ONE_ANNOUNCEMENT,
            "gratuitous reply",
        );
    });
}

#[test]
fn vlan_tagged_request_counts_a_request() {
    in_netns(|| {
        let program = loaded();
        let q = ArpFrame::request(ASKER_MAC, ASKER_IP, VIP)
            .tagged(TAG_8021Q)
            .bytes();
        assert_eq!(q.len(), 46);
        assert_passes(&program, &q, 0, ONE_REQUEST, "802.1Q request");
        let ad = ArpFrame::request(ASKER_MAC, ASKER_IP, VIP)
            .tagged(TAG_8021AD)
            .bytes();
        assert_passes(&program, &ad, 0, ONE_REQUEST, "802.1ad request");
    });
}

#[test]
fn non_arp_frame_passes_uncounted() {
    in_netns(|| {
        let program = loaded();
        // An IPv4/UDP frame whose bytes at the ARP offsets would read as a
        // request for the VIP if the program ignored the ethertype.
        let mut frame = ArpFrame::request(ASKER_MAC, ASKER_IP, VIP).bytes();
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_passes(&program, &frame, 0, NONE, "IPv4 ethertype");
        let mut ipv6 = ArpFrame::request(ASKER_MAC, ASKER_IP, VIP).bytes();
        ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_passes(&program, &ipv6, 0, NONE, "IPv6 ethertype");
        // A VLAN tag with a non-ARP payload.
        let mut tagged = ArpFrame::request(ASKER_MAC, ASKER_IP, VIP)
            .tagged(TAG_8021Q)
            .bytes();
        tagged[16..18].copy_from_slice(&[0x08, 0x00]);
        assert_passes(&program, &tagged, 0, NONE, "VLAN-tagged IPv4");
        // Two stacked tags: the program reads one only, so the frame passes.
        let mut stacked = ArpFrame::request(ASKER_MAC, ASKER_IP, VIP)
            .tagged(TAG_8021AD)
            .bytes();
        stacked.splice(16..16, [0x81, 0x00, 0x00, 0x64]);
        assert_passes(&program, &stacked, 0, NONE, "two VLAN tags");
    });
}

#[test]
fn malformed_arp_passes_uncounted() {
    in_netns(|| {
        let program = loaded();
        let base = ArpFrame::request(ASKER_MAC, ASKER_IP, VIP);
        let broken = [
            (
                "htype 6 (IEEE 802)",
                ArpFrame {
                    htype: [0, 6],
                    ..base
                },
            ),
            (
                "ptype IPv6",
                ArpFrame {
                    ptype: [0x86, 0xdd],
                    ..base
                },
            ),
            ("hlen 8", ArpFrame { hlen: 8, ..base }),
            ("plen 16", ArpFrame { plen: 16, ..base }),
            (
                "oper 0",
                ArpFrame {
                    oper: [0, 0],
                    ..base
                },
            ),
            (
                "oper 3 (RARP request)",
                ArpFrame {
                    oper: [0, 3],
                    ..base
                },
            ),
            (
                "oper 0x0101",
                ArpFrame {
                    oper: [1, 1],
                    ..base
                },
            ),
            // A reply about the VIP, broken the same ways, counts nothing either.
            (
                "reply, hlen 0",
                ArpFrame {
                    hlen: 0,
                    ..ArpFrame::reply(FOREIGN_MAC, VIP)
                },
            ),
            (
                "reply, ptype 0",
                ArpFrame {
                    ptype: [0, 0],
                    ..ArpFrame::reply(FOREIGN_MAC, VIP)
                },
            ),
        ];
        for (what, frame) in broken {
            assert_passes(&program, &frame.bytes(), 0, NONE, what);
        }
    });
}

#[test]
fn truncated_frames_pass_uncounted() {
    in_netns(|| {
        let program = loaded();
        // The kernel itself refuses to run a program on less than an
        // Ethernet header (bpf_test_init: EINVAL), as no driver hands one
        // to XDP: the 0- and 13-byte cases are refused before the program.
        for len in [0usize, 13] {
            let frame = &ArpFrame::request(ASKER_MAC, ASKER_IP, VIP).bytes()[..len];
            let err = program
                .test_run(frame, 0)
                .expect_err("the kernel must refuse a frame shorter than 14 bytes");
            let text = format!("{:?}", err);
            assert!(
                text.contains("22") || text.contains("Invalid argument"),
                "{len} bytes: unexpected error {text}"
            );
            assert_eq!(counters_of(&program, VIP), NONE, "{len} bytes");
        }
        let plain = ArpFrame::request(ASKER_MAC, ASKER_IP, VIP).bytes();
        let tagged = ArpFrame::request(ASKER_MAC, ASKER_IP, VIP)
            .tagged(TAG_8021Q)
            .bytes();
        let cuts: [(&str, &[u8]); 5] = [
            ("Ethernet header only", &plain[..14]),
            ("14 + 27: one byte short of ARP", &plain[..14 + 27]),
            ("VLAN: 14 + 3, inside the tag", &tagged[..14 + 3]),
            ("VLAN: 18, tag but no ARP", &tagged[..18]),
            ("VLAN: 18 + 27, one byte short of ARP", &tagged[..18 + 27]),
        ];
        for (what, frame) in cuts {
            assert_passes(&program, frame, 0, NONE, what);
        }
        // The same cuts of a held VIP's request are not answered either.
        let mut program = program;
        let ifindex = iface("xdp0");
        program
            .set_held(&vip_held(held_at(ifindex, 0, NO_EXPIRY)))
            .expect("set_held");
        for (what, frame) in cuts {
            assert_passes(&program, frame, ifindex, NONE, what);
        }
        // The whole frame still counts: the cuts, not the frame, were the reason.
        assert_passes(&program, &plain[..14 + 28], 0, ONE_REQUEST, "whole frame");
    });
}

#[test]
fn request_for_unwatched_address_counts_nothing() {
    in_netns(|| {
        let program = loaded();
        let frame = ArpFrame::request(ASKER_MAC, ASKER_IP, UNWATCHED).bytes();
        assert_passes(
            &program,
            &frame,
            0,
            NONE,
            "request for an unwatched address",
        );
        let reply = ArpFrame::reply(FOREIGN_MAC, UNWATCHED).bytes();
        assert_passes(
            &program,
            &reply,
            0,
            NONE,
            "reply about an unwatched address",
        );
        let counters = program.counters().expect("counters");
        assert_eq!(
            counters.len(),
            2,
            "only the watched VIPs have counters: {counters:?}"
        );
    });
}

// ---------------------------------------------------------------------------
// Held: answer in the kernel, on the right interface only.

#[test]
fn held_vip_request_is_answered_with_the_exact_reply() {
    in_netns(|| {
        let ifindex = iface("xdp0");
        let program = holding(ifindex);
        let request = ArpFrame::request(ASKER_MAC, ASKER_IP, VIP).bytes();
        #[rustfmt::skip]
        let expected: [u8; 42] = [
            // eth dst = asker, eth src = ours, ARP
            0x02, 0x00, 0x5e, 0x00, 0x00, 0x0a,  0x02, 0x00, 0x5e, 0x00, 0x00, 0x01,  0x08, 0x06,
            // Ethernet, IPv4, 6, 4, reply
            0x00, 0x01,  0x08, 0x00,  6, 4,  0x00, 0x02,
            // sha = ours, spa = VIP
            0x02, 0x00, 0x5e, 0x00, 0x00, 0x01,  192, 0, 2, 100,
            // tha = asker, tpa = asker
            0x02, 0x00, 0x5e, 0x00, 0x00, 0x0a,  192, 0, 2, 10,
        ];
        assert_eq!(
            ArpFrame::request(ASKER_MAC, ASKER_IP, VIP).answer().bytes(),
            expected,
            "the tests' own answer builder"
        );
        let (action, out, delta, other) = run(&program, &request, ifindex);
        assert_eq!(action, XDP_TX, "a held VIP's request is answered in XDP");
        assert_eq!(out, expected, "reply bytes");
        assert_eq!(delta, ANSWERED);
        assert_eq!(other, NONE);

        // A padded minimum-size frame (60 bytes): the padding comes back as is.
        let mut padded = request.clone();
        padded.resize(60, 0xee);
        let (action, out, delta, _) = run(&program, &padded, ifindex);
        assert_eq!(action, XDP_TX);
        assert_eq!(&out[..42], &expected[..]);
        assert_eq!(&out[42..], &[0xee; 18][..]);
        assert_eq!(delta, ANSWERED);

        // An ARP probe (RFC 5227, spa 0.0.0.0) is answered to 0.0.0.0, as the
        // kernel itself does.
        let probe = ArpFrame::request(ASKER_MAC, [0; 4], VIP).bytes();
        let (action, out, delta, _) = run(&program, &probe, ifindex);
        assert_eq!(action, XDP_TX);
        let reply = ArpFrame::request(ASKER_MAC, [0; 4], VIP).answer();
        assert_eq!(out, reply.bytes());
        assert_eq!(delta, ANSWERED);
    });
}

#[test]
fn held_vip_vlan_request_is_answered_keeping_the_tag() {
    in_netns(|| {
        let ifindex = iface("xdp0");
        for tag in [TAG_8021Q, TAG_8021AD] {
            let vid = u16::from_be_bytes(tag.1) & 0x0fff;
            let request = ArpFrame::request(ASKER_MAC, ASKER_IP, VIP)
                .tagged(tag)
                .bytes();
            // Held untagged, or on another VLAN: not our segment, it passes.
            for other in [0, vid + 1] {
                let program = holding_on_vlan(ifindex, other);
                let (action, out, delta, _) = run(&program, &request, ifindex);
                assert_eq!(action, XDP_PASS, "held on VLAN {other}, asked on {vid}");
                assert_eq!(out, request, "passed unchanged");
                assert_eq!(
                    delta,
                    ArpCounters {
                        requests: 1,
                        ..NONE
                    }
                );
            }
            let program = holding_on_vlan(ifindex, vid);
            let reply = ArpFrame::request(ASKER_MAC, ASKER_IP, VIP)
                .tagged(tag)
                .answer()
                .bytes();
            let (action, out, delta, _) = run(&program, &request, ifindex);
            assert_eq!(action, XDP_TX);
            assert_eq!(out, reply);
            assert_eq!(&out[12..16], &request[12..16], "the tag is kept");
            assert_eq!(delta, ANSWERED);
        }
    });
}

#[test]
fn held_vip_is_not_answered_where_it_must_not_be() {
    in_netns(|| {
        let ifindex = iface("xdp0");
        let elsewhere = iface("xdp1");
        let program = holding(ifindex);
        let request = ArpFrame::request(ASKER_MAC, ASKER_IP, VIP);

        // The right request on another interface: the kernel decides there.
        assert_passes(
            &program,
            &request.bytes(),
            elsewhere,
            ONE_REQUEST,
            "other ifindex",
        );
        // No ingress interface at all (ifindex 0).
        assert_passes(&program, &request.bytes(), 0, ONE_REQUEST, "no ifindex");

        // A watched but unheld VIP: counted for that VIP, not answered.
        let unheld = ArpFrame::request(ASKER_MAC, ASKER_IP, OTHER_VIP).bytes();
        let (action, out, delta, other) = run(&program, &unheld, ifindex);
        assert_eq!(
            (action, out.as_slice()),
            (XDP_PASS, unheld.as_slice()),
            "unheld VIP"
        );
        assert_eq!((delta, other), (NONE, ONE_REQUEST), "unheld VIP counters");
        // An unwatched address.
        let unwatched = ArpFrame::request(ASKER_MAC, ASKER_IP, UNWATCHED).bytes();
        assert_passes(&program, &unwatched, ifindex, NONE, "unwatched address");

        // Senders we must never send a unicast reply to.
        let multicast_mac = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x0a];
        let cases = [
            (
                "multicast sha",
                ArpFrame {
                    sha: multicast_mac,
                    ..request
                },
            ),
            (
                "broadcast sha",
                ArpFrame {
                    sha: BROADCAST,
                    ..request
                },
            ),
            (
                "zero sha",
                ArpFrame {
                    sha: [0; 6],
                    ..request
                },
            ),
            (
                "multicast eth src",
                ArpFrame {
                    eth_src: multicast_mac,
                    ..request
                },
            ),
            (
                "zero eth src",
                ArpFrame {
                    eth_src: [0; 6],
                    ..request
                },
            ),
            // Our own request coming back (a loop, or our own kernel asking).
            (
                "from our own MAC",
                ArpFrame::request(OUR_MAC, ASKER_IP, VIP),
            ),
            (
                "sha ours, eth src not",
                ArpFrame {
                    sha: OUR_MAC,
                    ..request
                },
            ),
            (
                "eth src ours, sha not",
                ArpFrame {
                    eth_src: OUR_MAC,
                    ..request
                },
            ),
        ];
        for (what, frame) in cases {
            assert_passes(&program, &frame.bytes(), ifindex, ONE_REQUEST, what);
        }
        assert_eq!(
            counters_of(&program, VIP).xdp_replies,
            0,
            "nothing was answered"
        );
    });
}

/// A held entry answers only before its expiry (the lease's end on
/// the program's `bpf_ktime_get_ns` clock), whatever the agent does after.
#[test]
fn expired_entry_is_not_answered() {
    in_netns(|| {
        let ifindex = iface("xdp0");
        let mut program = loaded();
        let request = ArpFrame::request(ASKER_MAC, ASKER_IP, VIP).bytes();
        let entry = |lease_end_ns| vip_held(held_at(ifindex, 0, lease_end_ns));
        let now = std::time::Instant::now();
        // Expired a millisecond ago: counted, passed to the kernel.
        let past = vipd::xdp::program_ns(now) - 1_000_000;
        program.set_held(&entry(past)).expect("set_held");
        assert_passes(&program, &request, ifindex, ONE_REQUEST, "expired entry");
        // Valid for 300 ms: answered, then no longer, with no agent action.
        let until = now + Duration::from_millis(300);
        program
            .set_held(&entry(vipd::xdp::program_ns(until)))
            .expect("set_held");
        assert_eq!(run(&program, &request, ifindex).0, XDP_TX, "before expiry");
        std::thread::sleep(until.saturating_duration_since(std::time::Instant::now()));
        assert_passes(&program, &request, ifindex, ONE_REQUEST, "after expiry");
        // A foreign claim of an expired VIP is not ours to report either.
        let claim = ArpFrame::gratuitous(FOREIGN_MAC, VIP).bytes();
        let (_, _, d, _) = run(&program, &claim, ifindex);
        assert_eq!(d.foreign_claims, 0, "claim of an expired VIP: {d:?}");
    });
}

#[test]
fn released_vip_is_no_longer_answered() {
    in_netns(|| {
        let ifindex = iface("xdp0");
        let mut program = holding(ifindex);
        let request = ArpFrame::request(ASKER_MAC, ASKER_IP, VIP).bytes();
        assert_eq!(run(&program, &request, ifindex).0, XDP_TX, "held: answered");
        program.clear_held().expect("clear_held");
        assert_passes(&program, &request, ifindex, ONE_REQUEST, "after clear_held");
        // And back, then released through set_held.
        let held = vip_held(held_at(ifindex, 0, NO_EXPIRY));
        program.set_held(&held).expect("set_held");
        assert_eq!(run(&program, &request, ifindex).0, XDP_TX, "held again");
        program.set_held(&BTreeMap::new()).expect("set_held(empty)");
        assert_passes(
            &program,
            &request,
            ifindex,
            ONE_REQUEST,
            "after set_held(empty)",
        );
        // Moved to another interface: answered there only.
        let other = iface("xdp1");
        let moved = vip_held(held_at(other, 0, NO_EXPIRY));
        program.set_held(&moved).expect("set_held(moved)");
        assert_passes(&program, &request, ifindex, ONE_REQUEST, "old interface");
        assert_eq!(run(&program, &request, other).0, XDP_TX, "new interface");
    });
}

// ---------------------------------------------------------------------------
// Conflicts: another MAC claims a VIP we hold.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// One claim case: what it is, the frame, the interface it comes in on,
/// the counter changes of the VIP and of the other watched VIP, and the
/// conflict event it must raise (`None`: none).
type ClaimCase<'a, E> = (&'a str, Vec<u8>, u32, (ArpCounters, ArpCounters), Option<E>);

/// Runs each case in turn through `program` (`run` for the family under
/// test): the frame passes unchanged with its counter changes, raises its
/// event, read by `next` (the ring's next event within a wait), and no
/// other within 200 ms.
fn assert_claim_cases<E: PartialEq + std::fmt::Debug>(
    program: &XdpProgram,
    run: fn(&XdpProgram, &[u8], u32) -> Ran,
    mut next: impl FnMut(Duration) -> Option<E>,
    cases: Vec<ClaimCase<'_, E>>,
) {
    for (what, frame, ingress, counted, event) in cases {
        assert_passed(run(program, &frame, ingress), &frame, counted, what);
        if event.is_some() {
            assert_eq!(next(Duration::from_secs(2)), event, "{what}: its event");
        }
        assert_eq!(
            next(Duration::from_millis(200)),
            None,
            "{what}: no other event"
        );
    }
}

/// The event the program sends when `mac` claims `vip` on `ifindex`.
fn conflict(octets: [u8; 4], ifindex: u32, mac: [u8; 6]) -> Conflict {
    Conflict {
        vip: vip(octets),
        ifindex,
        mac,
    }
}

fn next_event(
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

#[test]
fn foreign_claim_of_held_vip_is_counted_and_reported_once() {
    in_netns(|| {
        let rt = runtime();
        let ifindex = iface("xdp0");
        let mut program = holding(ifindex);
        let mut reader = rt
            .block_on(async { program.take_conflicts() })
            .expect("take_conflicts");
        assert!(
            program.take_conflicts().is_err(),
            "the ring buffer can be taken once"
        );

        let other = iface("xdp1");
        assert_claim_cases(
            &program,
            run,
            |wait| next_event(&rt, &mut reader, wait),
            vec![
                (
                    "foreign gratuitous ARP",
                    ArpFrame::gratuitous(FOREIGN_MAC, VIP).bytes(),
                    ifindex,
                    (FOREIGN_ANNOUNCEMENT, NONE),
                    Some(conflict(VIP, ifindex, FOREIGN_MAC)),
                ),
                // Our own announcement coming back: counted, no claim, no
                // event.
                (
                    "our own gratuitous ARP",
                    ArpFrame::gratuitous(OUR_MAC, VIP).bytes(),
                    ifindex,
                    (ONE_ANNOUNCEMENT, NONE),
                    None,
                ),
                // A foreign reply about the VIP on another interface is a
                // claim too.
                (
                    "foreign reply",
                    ArpFrame::reply(FOREIGN_MAC, VIP).bytes(),
                    other,
                    (FOREIGN_ANNOUNCEMENT, NONE),
                    Some(conflict(VIP, other, FOREIGN_MAC)),
                ),
                // A request asked from our VIP by another MAC: that node
                // uses our VIP. A claim (not an announcement); the request
                // itself counts for the address asked about.
                (
                    "asked from our VIP by another MAC",
                    ArpFrame::request(FOREIGN_MAC, VIP, OTHER_VIP).bytes(),
                    ifindex,
                    (ONE_CLAIM, ONE_REQUEST),
                    Some(conflict(VIP, ifindex, FOREIGN_MAC)),
                ),
                // Our own kernel asking from the VIP is no claim.
                (
                    "asked from our VIP by our own MAC",
                    ArpFrame::request(OUR_MAC, VIP, OTHER_VIP).bytes(),
                    ifindex,
                    (NONE, ONE_REQUEST),
                    None,
                ),
                // A foreign announcement of a watched but unheld VIP is no
                // claim.
                (
                    "foreign announcement of an unheld VIP",
                    ArpFrame::gratuitous(FOREIGN_MAC, OTHER_VIP).bytes(),
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
fn set_watched_keeps_existing_counters_and_drops_unwatched_vips() {
    in_netns(|| {
        let mut program = loaded();
        let request = ArpFrame::request(ASKER_MAC, ASKER_IP, VIP).bytes();
        assert_passes(&program, &request, 0, ONE_REQUEST, "request");
        let third = [192, 0, 2, 102];
        program
            .set_watched(&[vip(VIP), vip(third)].into())
            .expect("set_watched");
        let counters = program.counters().expect("counters");
        assert_eq!(
            counters.keys().copied().collect::<Vec<_>>(),
            vec![vip(VIP), vip(third)],
            "exactly the watched VIPs"
        );
        assert_eq!(counters[&vip(VIP)], ONE_REQUEST, "kept");
        assert_eq!(counters[&vip(third)], NONE, "new, zeroed");
        program
            .set_watched(&BTreeSet::new())
            .expect("set_watched(empty)");
        assert!(program.counters().expect("counters").is_empty());
        // No longer watched: not counted.
        let (action, _) = program.test_run(&request, 0).expect("test_run");
        assert_eq!(action, XDP_PASS);
        assert!(program.counters().expect("counters").is_empty());
    });
}

// ---------------------------------------------------------------------------
// Attachment: owned by the XdpProgram, gone with it.

/// The XDP attachments `bpftool` sees on `ifname`: (mode, program id).
fn bpftool_xdp(ifname: &str) -> Vec<(String, u64)> {
    let out = Command::new("bpftool")
        .args(["-j", "net", "show", "dev", ifname])
        .output()
        .expect("running bpftool failed: is it installed (Debian package bpftool)?");
    assert!(
        out.status.success(),
        "bpftool net show dev {ifname} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    json.as_array()
        .into_iter()
        .flatten()
        .filter_map(|section| section.get("xdp"))
        .filter_map(|xdp| xdp.as_array())
        .flatten()
        .map(|entry| {
            (
                entry["mode"].as_str().unwrap_or_default().to_string(),
                entry["id"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// The program ids of every XDP bpf link the kernel has (bpftool omits the
/// ifindex of a link whose interface is in another namespace). A bpf link (unlike a
/// netlink attachment) is released with the last file descriptor to it, so
/// it cannot outlive the process that made it, also under SIGKILL.
fn bpf_xdp_links() -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .expect("running bpftool failed: is it installed (Debian package bpftool)?");
    assert!(
        out.status.success(),
        "bpftool link show failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    json.as_array()
        .into_iter()
        .flatten()
        .filter(|link| link["type"] == "xdp")
        .filter_map(|link| link["prog_id"].as_u64())
        .collect()
}

#[test]
fn attachment_lives_and_dies_with_the_program() {
    in_netns(|| {
        ip(&[
            "link", "add", "xdpa", "type", "veth", "peer", "name", "xdpb",
        ]);
        ip(&["link", "set", "xdpa", "up"]);
        ip(&["link", "set", "xdpb", "up"]);
        assert!(bpftool_xdp("xdpa").is_empty(), "nothing attached before");

        let mut program = XdpProgram::load().expect("load");
        assert_eq!(
            program
                .attach("xdpa", XdpMode::Generic)
                .expect("attach generic"),
            AttachedMode::Generic
        );
        let seen = bpftool_xdp("xdpa");
        assert_eq!(
            seen.len(),
            1,
            "bpftool sees one XDP program on xdpa: {seen:?}"
        );
        assert_eq!(seen[0].0, "generic");
        // Links are listed for every namespace: ours is the one of the
        // program bpftool saw on xdpa (program ids are unique).
        assert!(
            bpf_xdp_links().contains(&seen[0].1),
            "the attachment is a bpf link owned by this process: {:?}",
            bpf_xdp_links()
        );
        // Idempotent: asking again keeps the attachment and its mode.
        assert_eq!(
            program.attach("xdpa", XdpMode::Auto).expect("attach again"),
            AttachedMode::Generic
        );
        assert_eq!(bpftool_xdp("xdpa").len(), 1);

        // veth's native XDP_TX frames are lost unless its peer runs XDP:
        // Auto gets generic mode there; Native forces driver mode.
        let auto = program.attach("xdpb", XdpMode::Auto).expect("attach auto");
        assert_eq!(auto, AttachedMode::Generic);
        assert_eq!(bpftool_xdp("xdpb")[0].0, "generic");
        program.detach("xdpb").expect("detach xdpb");
        let native = program
            .attach("xdpb", XdpMode::Native)
            .expect("attach native");
        assert_eq!(native, AttachedMode::Native);
        let seen = bpftool_xdp("xdpb");
        assert_eq!(
            seen.len(),
            1,
            "bpftool sees one XDP program on xdpb: {seen:?}"
        );
        assert_eq!(seen[0].0, "driver");
        assert_eq!(
            program.attached(),
            vec![
                ("xdpa".to_string(), AttachedMode::Generic),
                ("xdpb".to_string(), AttachedMode::Native)
            ]
        );
        let why: Vec<(String, &str)> = program
            .attachments()
            .into_iter()
            .map(|a| (a.driver.unwrap_or_default(), a.reason_code))
            .collect();
        assert_eq!(
            why,
            vec![
                ("veth".to_string(), "configured"),
                ("veth".to_string(), "configured")
            ]
        );

        program.detach("xdpb").expect("detach xdpb");
        assert!(bpftool_xdp("xdpb").is_empty(), "detached from xdpb");
        assert!(
            program.detach("xdpb").is_err(),
            "detaching twice is an error"
        );
        assert_eq!(bpftool_xdp("xdpa").len(), 1, "xdpa still attached");

        // A driver without native XDP (bridge) refuses: Auto gets generic.
        ip(&["link", "add", "xdpd", "type", "bridge"]);
        ip(&["link", "set", "xdpd", "up"]);
        assert_eq!(
            program
                .attach("xdpd", XdpMode::Auto)
                .expect("attach bridge"),
            AttachedMode::Generic
        );
        let bridge = program
            .attachments()
            .into_iter()
            .find(|a| a.interface == "xdpd")
            .expect("xdpd attached");
        assert_eq!(
            (bridge.driver.as_deref(), bridge.reason_code),
            (Some("bridge"), "native_refused"),
            "{bridge:?}"
        );
        program.detach("xdpd").expect("detach xdpd");

        // An interface that does not exist is an error naming it.
        let err = program
            .attach("nosuch0", XdpMode::Auto)
            .expect_err("no such interface");
        assert!(err.to_string().contains("nosuch0"), "{err}");

        drop(program);
        assert!(
            bpftool_xdp("xdpa").is_empty(),
            "dropping the XdpProgram detaches"
        );
        assert!(bpftool_xdp("xdpb").is_empty());
    });
}
