//! The XDP half on the wire: a real vipd (single-node mode) in a lab host,
//! a client asking for the VIP with `arping` and raw frames, an intruder
//! claiming it. Each test checks what the client sees (replies, their MAC,
//! its neighbour entry) against what `vipctl arp stats --json` reports.
//!
//! Most tests run vipd with `--xdp-mode generic`: on veth, native XDP_TX
//! frames never reach the peer unless the peer runs an XDP program itself
//! (docs/DESIGN.md, facts), and these tests must see the replies on the client. The
//! `default_mode_*` tests run with no `--xdp-mode` at all (vipd must pick a
//! mode that delivers on veth), and the `forced_native_*` tests force native
//! mode where its answers are lost, to see vipd fall back. `arp_ignore=8` on
//! the node makes the kernel answer no ARP at all there, so an answer the
//! client gets can only come from the XDP program; the `--no-xdp` test
//! checks that control both ways.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use serde_json::Value;
use vipd_tests::{
    lab::{ArpFrame, Host, HostIf, Lab, fmt_mac, packet_socket, vipctl_bin, wait_until},
    vipd::{Vipd, holds, try_vipctl},
};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const OTHER_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
/// A VIP n1 has no route for: watched by the program, never held.
const UNROUTED_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 77);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const BROADCAST: [u8; 6] = [0xff; 6];

/// How long vipd gets to hold its VIP after start (it is ready in well under
/// a second on an idle machine; other helpers share the 2 cores).
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The lab: n1 runs vipd (192.0.2.11), c1 is the client (192.0.2.50), and
/// n2 (192.0.2.12) the intruder when a test asks for one.
struct Rig {
    n1: Host,
    c1: Host,
    n2: Option<Host>,
    // Last: torn down after the handles above are gone.
    lab: Lab,
}

impl Rig {
    fn new(hint: &str, intruder: bool) -> Rig {
        let lab = Lab::new(hint);
        let n1 = lab.add_host("n1", &[HostIf::on(0, "192.0.2.11/24")]);
        let c1 = lab.add_host("c1", &[HostIf::on(0, "192.0.2.50/24")]);
        let n2 = intruder.then(|| lab.add_host("n2", &[HostIf::on(0, "192.0.2.12/24")]));
        Rig { n1, c1, n2, lab }
    }

    fn n2(&self) -> &Host {
        self.n2.as_ref().expect("this rig has no intruder")
    }

    /// `arp_ignore` on n1's eth0 and `all` (the kernel uses the larger).
    fn arp_ignore(&self, value: &str) {
        self.n1.sysctl("net.ipv4.conf.all.arp_ignore", value);
        self.n1.sysctl("net.ipv4.conf.eth0.arp_ignore", value);
    }

    /// Starts vipd on n1 serving `vips` (comma-separated) with `extra` flags
    /// and nothing else (vipd's defaults), and waits until it holds every one
    /// of them that has a route (and, with XDP, until the program is attached
    /// to eth0, in the mode `--xdp-mode` names if `extra` has one).
    fn start_vipd(&self, vips: &str, extra: &[&str]) -> Vipd {
        let mut args = vec!["--static-vips", vips];
        args.extend_from_slice(extra);
        let socket = Vipd::new_socket(&self.lab, &self.n1);
        let vipd = Vipd::spawn_args(&self.n1, socket, &args, &[]);
        let xdp = !extra.contains(&"--no-xdp");
        let mode = extra
            .iter()
            .position(|a| *a == "--xdp-mode")
            .map(|i| extra[i + 1]);
        let want: Vec<&str> = vips
            .split(',')
            .filter(|v| *v != UNROUTED_VIP.to_string())
            .collect();
        vipd.wait_until_status(
            &format!("held {want:?} with XDP on eth0 (mode {mode:?}) unless --no-xdp"),
            READY_TIMEOUT,
            |st| {
                let attached = st["xdp"]["attached"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|a| a["interface"] == "eth0" && mode.is_none_or(|m| a["mode"] == m));
                want.iter().all(|vip| holds(st, vip)) && (attached || !xdp)
            },
        );
        vipd
    }

    /// The client's `arping` for `ip`, `count` requests 200 ms apart, with a
    /// capture running on the client meanwhile. Returns what arping saw and
    /// how many requests for `ip` went out of the client's eth0.
    fn arping_counted(&self, ip: Ipv4Addr, count: u32) -> (vipd_tests::lab::Arping, usize) {
        let cap = self.c1.capture_arp("eth0");
        let result = self.c1.arping(ip, count, "eth0");
        std::thread::sleep(Duration::from_millis(100));
        let sent = cap
            .stop()
            .iter()
            .filter_map(|f| f.arp().map(|a| (f.outgoing, a)))
            .filter(|(out, a)| *out && a.op == ArpFrame::REQUEST && a.tpa == ip)
            .count();
        (result, sent)
    }
}

/// The row of `vip` in `vipctl arp stats --json`.
fn row(stats: &Value, vip: Ipv4Addr) -> Value {
    stats["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["vip"] == vip.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("no row for {vip} in arp stats: {stats}"))
}

fn counter(stats: &Value, vip: Ipv4Addr, field: &str) -> u64 {
    let r = row(stats, vip);
    r[field]
        .as_u64()
        .unwrap_or_else(|| panic!("arp stats for {vip}: {field} is not a number: {r}"))
}

/// What `ip -d link show eth0` says about XDP on n1, e.g. `xdpgeneric/id:42`,
/// or `None` when no program is attached.
fn xdp_on(host: &Host, ifname: &str) -> Option<String> {
    let out = host.ip(&["-d", "link", "show", "dev", ifname]);
    out.split_whitespace()
        .find(|w| w.starts_with("xdp"))
        .map(str::to_string)
}

/// An Ethernet + ARP frame (42 bytes). `hlen` 6 unless a test breaks it.
#[expect(
    clippy::too_many_arguments,
    reason = "every ARP field, named at the call"
)]
fn arp_bytes(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    op: u16,
    sha: [u8; 6],
    spa: Ipv4Addr,
    tha: [u8; 6],
    tpa: Ipv4Addr,
    hlen: u8,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, hlen, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa.octets());
    f
}

/// A broadcast who-has `tpa`, tell `spa` at `mac`.
fn request(mac: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    arp_bytes(BROADCAST, mac, 1, mac, spa, [0; 6], tpa, 6)
}

/// A gratuitous ARP, request form (as `arping -U`): `vip` is at `mac`.
fn claim(mac: [u8; 6], vip: Ipv4Addr) -> Vec<u8> {
    arp_bytes(BROADCAST, mac, 1, mac, vip, BROADCAST, vip, 6)
}

/// Sends `frames` out of `ifname` of `host` from a raw AF_PACKET socket,
/// `gap` apart. Returns when the last one is sent.
fn send_frames(host: &Host, ifname: &str, frames: &[Vec<u8>], gap: Duration) {
    host.in_netns(|| {
        let socket = packet_socket(ifname, 0)
            .unwrap_or_else(|e| panic!("packet socket on {ifname} in {}: {e}", host.netns()));
        for (i, frame) in frames.iter().enumerate() {
            if i > 0 && !gap.is_zero() {
                std::thread::sleep(gap);
            }
            let n = socket.send(frame).expect("sending a frame");
            assert_eq!(n, frame.len(), "short send");
        }
    });
}

#[test]
fn xdp_answers_when_the_kernel_does_not() {
    let rig = Rig::new("xw_answer", false);
    rig.arp_ignore("8");
    let vipd = rig.start_vipd("192.0.2.100", &["--xdp-mode", "generic"]);
    let n1_mac = rig.n1.mac("eth0");
    let before = vipd.arp_stats();
    assert_eq!(before["xdp"], true, "{before}");
    assert_eq!(before["role"], "leader", "{before}");

    let (arping, sent) = rig.arping_counted(VIP, 5);
    let after = vipd.arp_stats();
    assert!(
        sent >= 5,
        "capture saw {sent} requests, arping says {}",
        arping.sent
    );
    assert_eq!(
        arping.received as usize, sent,
        "every request answered although the kernel answers none (arp_ignore 8): {arping:?}"
    );
    assert!(
        arping.reply_macs.iter().all(|m| *m == n1_mac),
        "replies must carry n1's eth0 MAC {n1_mac}: {:?}",
        arping.reply_macs
    );
    let d = |f: &str| counter(&after, VIP, f) - counter(&before, VIP, f);
    assert_eq!(d("requests"), sent as u64, "requests counted: {after}");
    assert_eq!(
        d("xdp_replies"),
        sent as u64,
        "XDP replies counted: {after}"
    );
    let r = row(&after, VIP);
    assert_eq!(r["held"], true, "{r}");
    assert_eq!(r["interface"], "eth0", "{r}");
    assert_eq!(counter(&after, VIP, "foreign_claims"), 0, "{r}");
    assert!(vipd.process.is_running());
}

#[test]
fn released_vip_is_not_answered() {
    let rig = Rig::new("xw_release", false);
    rig.arp_ignore("8");
    let vipd = rig.start_vipd("192.0.2.100", &["--xdp-mode", "generic"]);
    let answered = rig.c1.arping(VIP, 2, "eth0");
    assert_eq!(
        answered.received, 2,
        "held VIP answered first: {answered:?}"
    );

    // SIGTERM: vipd clears the held map, removes the VIP and detaches.
    let status = vipd.process.terminate(Duration::from_secs(10));
    assert!(
        status.success(),
        "vipd exit on SIGTERM: {status}\n{}",
        vipd.process.stderr()
    );
    assert!(
        !rig.n1.ipv4_addrs("eth0").iter().any(|(a, _)| *a == VIP),
        "VIP still on eth0 after a clean stop: {:?}",
        rig.n1.ipv4_addrs("eth0")
    );
    assert_eq!(
        xdp_on(&rig.n1, "eth0"),
        None,
        "XDP left attached after a clean stop"
    );
    let silent = rig.c1.arping(VIP, 3, "eth0");
    assert_eq!(silent.received, 0, "stopped vipd still answers: {silent:?}");

    // A vipd serving another VIP: the program runs, and answers only that one.
    let vipd = rig.start_vipd("192.0.2.101", &["--xdp-mode", "generic"]);
    assert!(
        xdp_on(&rig.n1, "eth0").is_some(),
        "XDP attached for 192.0.2.101"
    );
    let other = rig.c1.arping(OTHER_VIP, 2, "eth0");
    assert_eq!(other.received, 2, "the held VIP is answered: {other:?}");
    let released = rig.c1.arping(VIP, 3, "eth0");
    assert_eq!(
        released.received, 0,
        "a VIP no longer configured is answered: {released:?}"
    );
    let stats = vipd.arp_stats();
    assert!(
        !stats["vips"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["vip"] == VIP.to_string()),
        "192.0.2.100 is neither configured nor watched now: {stats}"
    );
}

/// Nothing answers a VIP past its lease, agent alive or not: the program
/// is pinned, so it outlives a SIGKILL. A single-node VIP has no lease: it
/// is still answered while its address stays, until `vipctl cleanup`
/// removes the address and the pinned program; then nothing answers.
#[test]
fn killed_vipd_leaves_no_responder_after_cleanup() {
    let rig = Rig::new("xw_kill", false);
    rig.arp_ignore("8");
    let vipd = rig.start_vipd("192.0.2.100", &["--xdp-mode", "generic"]);
    let attached = xdp_on(&rig.n1, "eth0");
    assert!(
        attached
            .as_deref()
            .is_some_and(|x| x.starts_with("xdpgeneric")),
        "generic XDP on eth0 while vipd runs: {attached:?}"
    );
    let answered = rig.c1.arping(VIP, 2, "eth0");
    assert_eq!(answered.received, 2, "{answered:?}");

    assert!(vipd.process.kill(libc::SIGKILL));
    assert!(
        vipd.process.wait_timeout(Duration::from_secs(5)).is_some(),
        "vipd survived SIGKILL"
    );
    assert!(
        xdp_on(&rig.n1, "eth0").is_some_and(|x| x.starts_with("xdpgeneric")),
        "the pinned program outlives the kill"
    );
    // The VIP address itself stays (nothing ran to remove it).
    assert!(
        rig.n1.ipv4_addrs("eth0").iter().any(|(a, _)| *a == VIP),
        "a killed vipd cannot remove its VIP: {:?}",
        rig.n1.ipv4_addrs("eth0")
    );
    let out = rig
        .n1
        .exec(&[vipctl_bin().into_os_string(), "cleanup".into()]);
    assert!(
        out.status.success(),
        "vipctl cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Err(e) = wait_until(Duration::from_secs(3), Duration::from_millis(20), || {
        xdp_on(&rig.n1, "eth0").is_none()
    }) {
        panic!(
            "XDP still attached after cleanup ({:?}): {e}",
            xdp_on(&rig.n1, "eth0")
        );
    }
    let bpftool = rig.n1.exec_ok(&["bpftool", "net", "show", "dev", "eth0"]);
    assert!(
        !bpftool.contains("vipd_xdp"),
        "bpftool still lists the program: {bpftool}"
    );
    let silent = rig.c1.arping(VIP, 3, "eth0");
    assert_eq!(silent.received, 0, "answers after cleanup: {silent:?}");
}

/// Starts vipd for the conflict tests: no sync rounds (so every announcement
/// after start answers a conflict) and both GARP forms (two frames each).
fn conflict_rig(hint: &str) -> (Rig, Vipd) {
    let rig = Rig::new(hint, true);
    let vipd = rig.start_vipd(
        "192.0.2.100",
        &[
            "--xdp-mode",
            "generic",
            "--garp-rounds",
            "0",
            "--garp-mode",
            "both",
        ],
    );
    // Let the start-up announcement go out before counting.
    std::thread::sleep(Duration::from_millis(300));
    // The client learns the VIP the ordinary way.
    assert!(rig.c1.ping(VIP), "client pings the VIP");
    let n1_mac = rig.n1.mac("eth0");
    let entry = rig
        .c1
        .neigh(VIP)
        .expect("client has a neighbour entry for the VIP");
    assert_eq!(entry.lladdr.as_deref(), Some(n1_mac.as_str()), "{entry:?}");
    (rig, vipd)
}

#[test]
fn a_foreign_claim_is_reported_and_answered() {
    let (rig, vipd) = conflict_rig("xw_conflict");
    let n1_mac = rig.n1.mac("eth0");
    let n2_mac = rig.n2().mac("eth0");
    let before = vipd.arp_stats();
    let cap = rig.c1.capture_arp("eth0");

    // Three claims in well under a second, as a second holder (keepalived
    // sends a burst of five) would.
    let claims = vec![claim(rig.n2().mac_bytes("eth0"), VIP); 3];
    send_frames(rig.n2(), "eth0", &claims, Duration::from_millis(200));
    let last_claim = Instant::now();

    // The client ends with n1's MAC.
    let back = wait_until(Duration::from_secs(2), Duration::from_millis(20), || {
        rig.c1.neigh(VIP).and_then(|n| n.lladdr) == Some(n1_mac.clone())
            && last_claim.elapsed() > Duration::from_millis(1200)
    });
    std::thread::sleep(Duration::from_millis(200));
    let frames = cap.stop();
    let after = vipd.arp_stats();
    let entry = rig.c1.neigh(VIP);
    assert!(
        back.is_ok() && entry.as_ref().and_then(|n| n.lladdr.as_deref()) == Some(n1_mac.as_str()),
        "client entry for the VIP should end with n1's MAC {n1_mac} (n2 is {n2_mac}): {entry:?}; \
         arp stats {after}\nvipd log:\n{}",
        vipd.process.stderr()
    );

    // vipd saw and reported it.
    let d = |f: &str| counter(&after, VIP, f) - counter(&before, VIP, f);
    assert_eq!(d("foreign_claims"), 3, "every claim counted: {after}");
    assert_eq!(
        d("announcements_seen"),
        3,
        "every claim is an announcement: {after}"
    );
    assert_eq!(
        row(&after, VIP)["last_foreign_mac"],
        n2_mac.as_str(),
        "{after}"
    );
    let status = vipd.status();
    let conflict = &status["conflicts"][VIP.to_string()];
    assert_eq!(
        conflict["last_mac"],
        n2_mac.as_str(),
        "status conflicts: {status}"
    );
    assert!(conflict["events"].as_u64().unwrap_or(0) >= 1, "{status}");
    assert!(
        d("announcements_sent") >= 2,
        "vipd re-announced (2 frames each): {after}"
    );

    // On the wire: n1's gratuitous ARP after n2's last claim.
    let n2_claims: Vec<Instant> = frames
        .iter()
        .filter_map(|f| f.arp().map(|a| (f.at, a)))
        .filter(|(_, a)| fmt_mac(a.sha) == n2_mac && a.is_gratuitous() && a.spa == VIP)
        .map(|(at, _)| at)
        .collect();
    assert_eq!(n2_claims.len(), 3, "the client saw n2's claims");
    let last_n2 = *n2_claims.last().expect("claims");
    let answer = frames.iter().any(|f| {
        f.arp().is_some_and(|a| {
            f.at > last_n2
                && fmt_mac(a.eth_src) == n1_mac
                && fmt_mac(a.sha) == n1_mac
                && a.is_gratuitous()
                && a.spa == VIP
        })
    });
    assert!(
        answer,
        "no gratuitous ARP from n1 after n2's last claim reached the client"
    );
}

#[test]
fn a_claim_storm_gets_rate_limited_answers() {
    let (rig, vipd) = conflict_rig("xw_storm");
    let n1_mac = rig.n1.mac("eth0");
    let n2_mac = rig.n2().mac_bytes("eth0");
    let before = vipd.arp_stats();

    // 50 claims within a second.
    let started = Instant::now();
    send_frames(
        rig.n2(),
        "eth0",
        &vec![claim(n2_mac, VIP); 50],
        Duration::from_millis(18),
    );
    let storm = started.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    let after = vipd.arp_stats();

    let d = |f: &str| counter(&after, VIP, f) - counter(&before, VIP, f);
    assert_eq!(d("foreign_claims"), 50, "every claim counted: {after}");
    let frames = d("announcements_sent");
    // Two frames per answer (--garp-mode both). One answer per second per
    // VIP: the first claim, maybe one for the rest of the storm's second,
    // maybe one more for claims right after that.
    let answers = frames / 2;
    println!("storm of 50 claims in {storm:?}: {answers} answers ({frames} frames)");
    assert!(
        (1..=3).contains(&answers),
        "{answers} answers ({frames} frames) to 50 claims in {storm:?}: at least one, at most 3 \
         (1/s per VIP)\n{after}\nvipd log:\n{}",
        vipd.process.stderr()
    );
    assert!(
        storm < Duration::from_millis(1300),
        "the storm took {storm:?}"
    );
    let entry = rig.c1.neigh(VIP);
    assert_eq!(
        entry.as_ref().and_then(|n| n.lladdr.as_deref()),
        Some(n1_mac.as_str()),
        "client entry after the storm: {entry:?}"
    );
    let warnings = vipd
        .process
        .stderr()
        .lines()
        .filter(|l| l.contains("another node claims a VIP we hold"))
        .count();
    assert_eq!(
        warnings,
        1,
        "one log line per burst:\n{}",
        vipd.process.stderr()
    );
}

#[test]
fn counters_equal_the_frames_sent() {
    let rig = Rig::new("xw_counters", false);
    let vips = format!("{VIP},{UNROUTED_VIP}");
    let vipd = rig.start_vipd(&vips, &["--xdp-mode", "generic"]);
    let c1_mac = rig.c1.mac_bytes("eth0");
    let n1_mac = rig.n1.mac_bytes("eth0");
    let other_mac = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x77];
    let before = vipd.arp_stats();
    assert_eq!(row(&before, UNROUTED_VIP)["held"], false, "{before}");

    const N: usize = 7; // requests for the held VIP
    const K: usize = 4; // requests for the watched, unheld VIP
    const M: usize = 5; // replies about the watched, unheld VIP
    let mut frames = Vec::new();
    frames.extend(vec![request(c1_mac, CLIENT_IP, VIP); N]);
    frames.extend(vec![request(c1_mac, CLIENT_IP, UNROUTED_VIP); K]);
    frames.extend(vec![
        arp_bytes(
            n1_mac,
            other_mac,
            2,
            other_mac,
            UNROUTED_VIP,
            n1_mac,
            Ipv4Addr::new(192, 0, 2, 11),
            6
        );
        M
    ]);
    // Not counted: malformed (hlen 5), and a request for an unwatched address.
    frames.extend(vec![
        arp_bytes(
            BROADCAST, c1_mac, 1, c1_mac, CLIENT_IP, [0; 6], VIP, 5
        );
        3
    ]);
    frames.extend(vec![
        request(
            c1_mac,
            CLIENT_IP,
            Ipv4Addr::new(192, 0, 2, 200)
        );
        2
    ]);
    let cap = rig.c1.capture_arp("eth0");
    send_frames(&rig.c1, "eth0", &frames, Duration::from_millis(2));
    std::thread::sleep(Duration::from_millis(200));
    let seen = cap.stop();
    let after = vipd.arp_stats();

    let d = |vip, f: &str| counter(&after, vip, f) - counter(&before, vip, f);
    assert_eq!(d(VIP, "requests"), N as u64, "{after}");
    assert_eq!(d(VIP, "xdp_replies"), N as u64, "{after}");
    assert_eq!(d(VIP, "announcements_seen"), 0, "{after}");
    assert_eq!(d(VIP, "foreign_claims"), 0, "{after}");
    assert_eq!(d(UNROUTED_VIP, "requests"), K as u64, "{after}");
    assert_eq!(d(UNROUTED_VIP, "xdp_replies"), 0, "{after}");
    assert_eq!(d(UNROUTED_VIP, "announcements_seen"), M as u64, "{after}");
    assert_eq!(
        d(UNROUTED_VIP, "foreign_claims"),
        0,
        "not held, so no claim: {after}"
    );
    assert!(
        !after["vips"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["vip"] == "192.0.2.200"),
        "{after}"
    );
    // The replies the client got: one per well-formed request for the VIP.
    let replies = seen
        .iter()
        .filter_map(|f| f.arp().map(|a| (f.outgoing, a)))
        .filter(|(out, a)| !out && a.op == ArpFrame::REPLY && a.spa == VIP && a.sha == n1_mac)
        .count();
    assert_eq!(replies, N, "replies on the wire");
}

#[test]
fn without_xdp_the_kernel_answers() {
    let rig = Rig::new("xw_noxdp", false);
    // First the control for every other test: arp_ignore 8 silences the kernel.
    rig.arp_ignore("8");
    let vipd = rig.start_vipd("192.0.2.100", &["--no-xdp"]);
    assert_eq!(xdp_on(&rig.n1, "eth0"), None, "--no-xdp attaches nothing");
    let silent = rig.c1.arping(VIP, 3, "eth0");
    assert_eq!(silent.received, 0, "arp_ignore 8 without XDP: {silent:?}");

    rig.arp_ignore("0");
    let n1_mac = rig.n1.mac("eth0");
    let (arping, sent) = rig.arping_counted(VIP, 4);
    assert!(sent >= 4, "{arping:?}");
    assert_eq!(
        arping.received as usize, sent,
        "the kernel answers: {arping:?}"
    );
    assert!(arping.reply_macs.iter().all(|m| *m == n1_mac), "{arping:?}");
    let stats = vipd.arp_stats();
    assert_eq!(stats["xdp"], false, "{stats}");
    assert_eq!(stats["role"], "leader", "{stats}");
    let r = row(&stats, VIP);
    assert_eq!(r["held"], true, "{r}");
    assert_eq!(
        (r["requests"].as_u64(), r["xdp_replies"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    assert!(vipd.process.is_running());
}

// ------------------------------------------------------ the XDP mode on veth

/// iSCSI's port: the service the seed's VIPs exist for.
const PORT: u16 = 3260;

/// The XDP attachment of n1's eth0 in a status answer.
fn eth0_attachment(status: &Value) -> Value {
    status["xdp"]["attached"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["interface"] == "eth0")
        .cloned()
        .unwrap_or_else(|| panic!("no XDP attachment on eth0: {status}"))
}

/// The client reaches the VIP the way a user would: every ARP request
/// answered, by the XDP program, with n1's MAC; and a TCP connection to the
/// VIP served by n1. The client's neighbour table is flushed before each,
/// so each resolves the VIP afresh.
fn client_reaches_vip(rig: &Rig, vipd: &Vipd, arpings: u32) {
    rig.c1.ip(&["neigh", "flush", "dev", "eth0"]);
    let before = vipd.arp_stats();
    let (arping, sent) = rig.arping_counted(VIP, arpings);
    let after = vipd.arp_stats();
    let n1_mac = rig.n1.mac("eth0");
    assert!(
        sent >= arpings as usize,
        "capture saw {sent} requests: {arping:?}"
    );
    assert_eq!(
        arping.received as usize, sent,
        "every request answered: {arping:?}"
    );
    assert!(
        arping.reply_macs.iter().all(|m| *m == n1_mac),
        "replies carry n1's MAC {n1_mac}: {arping:?}"
    );
    let answered = counter(&after, VIP, "xdp_replies") - counter(&before, VIP, "xdp_replies");
    assert_eq!(answered, sent as u64, "the XDP program answered: {after}");

    rig.c1.ip(&["neigh", "flush", "dev", "eth0"]);
    let banner = rig.c1.tcp_probe(VIP, PORT, Duration::from_secs(3));
    assert_eq!(
        banner.as_deref(),
        Some("served-by n1\n"),
        "TCP to {VIP}:{PORT} from the client"
    );
}

/// Error-level lines of a vipd log.
fn error_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" ERROR ")).collect()
}

/// The metrics page of the vipd in `host` listening on `addr`.
fn metrics(host: &Host, addr: SocketAddr) -> String {
    host.in_netns(|| {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connecting to the metrics endpoint {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .expect("sending the request");
        let mut buf = String::new();
        s.read_to_string(&mut buf).expect("reading the metrics");
        buf
    })
}

/// With no `--xdp-mode` on a veth, vipd attaches in a mode whose answers
/// leave (generic, because of the driver), and the client reaches the VIP.
fn default_mode_case(hint: &str, arp_ignore: &str) {
    let rig = Rig::new(hint, false);
    rig.arp_ignore(arp_ignore);
    let _server = rig.n1.tcp_echo_server(VIP, PORT);
    let vipd = rig.start_vipd("192.0.2.100", &[]);

    let status = vipd.status();
    assert_eq!(status["xdp"]["setting"], "auto", "{status}");
    let a = eth0_attachment(&status);
    assert_eq!(
        (&a["mode"], &a["driver"], &a["reason_code"]),
        (
            &Value::from("generic"),
            &Value::from("veth"),
            &Value::from("driver_loses_native_tx")
        ),
        "{a}"
    );
    assert!(
        a["reason"]
            .as_str()
            .is_some_and(|r| r.contains("driver veth")),
        "{a}"
    );
    let on = xdp_on(&rig.n1, "eth0");
    assert!(
        on.as_deref().is_some_and(|x| x.starts_with("xdpgeneric")),
        "generic XDP on eth0: {on:?}"
    );
    // The operator's table says the same, with the reason.
    let out = rig.n1.exec(&vipd.vipctl_argv(&["status"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("xdp setting auto")
            && text
                .lines()
                .any(|l| l.starts_with("xdp eth0: generic") && l.contains("driver veth")),
        "vipctl status:\n{text}"
    );

    client_reaches_vip(&rig, &vipd, 5);
    let a = eth0_attachment(&vipd.status());
    assert_eq!(
        a["reason_code"], "driver_loses_native_tx",
        "no fallback: {a}"
    );
    let log = vipd.process.stderr();
    assert!(error_lines(&log).is_empty(), "no errors:\n{log}");
}

#[test]
fn default_mode_on_veth_is_reached_with_arp_ignore_0() {
    default_mode_case("xw_default0", "0");
}

#[test]
fn default_mode_on_veth_is_reached_with_arp_ignore_8() {
    default_mode_case("xw_default8", "8");
}

/// Forced native mode where its answers are lost: the client's arping goes
/// unanswered at first, then vipd falls back to generic within a second and
/// the client is answered. Returns the vipd and the fallback reason.
fn falls_back(rig: &Rig, extra: &[&str]) -> (Vipd, Value) {
    let mut flags = vec!["--xdp-mode", "native"];
    flags.extend_from_slice(extra);
    let vipd = rig.start_vipd("192.0.2.100", &flags);
    let a = eth0_attachment(&vipd.status());
    assert_eq!(
        (&a["mode"], &a["reason_code"]),
        (&Value::from("native"), &Value::from("configured")),
        "{a}"
    );
    let on = xdp_on(&rig.n1, "eth0");
    assert!(
        on.as_deref().is_some_and(|x| !x.starts_with("xdpgeneric")),
        "native XDP on eth0: {on:?}"
    );

    // 10 requests, 200 ms apart.
    let n1_mac = rig.n1.mac_bytes("eth0");
    let cap = rig.c1.capture_arp("eth0");
    let arping = rig.c1.arping(VIP, 10, "eth0");
    std::thread::sleep(Duration::from_millis(100));
    let frames = cap.stop();
    let requests: Vec<Instant> = frames
        .iter()
        .filter_map(|f| f.arp().map(|a| (f, a)))
        .filter(|(f, a)| f.outgoing && a.op == ArpFrame::REQUEST && a.tpa == VIP)
        .map(|(f, _)| f.at)
        .collect();
    let replies: Vec<Instant> = frames
        .iter()
        .filter_map(|f| f.arp().map(|a| (f, a)))
        .filter(|(f, a)| !f.outgoing && a.op == ArpFrame::REPLY && a.spa == VIP && a.sha == n1_mac)
        .map(|(f, _)| f.at)
        .collect();
    let log = vipd.process.stderr();
    assert!(
        arping.received < arping.sent,
        "native XDP_TX here must lose the first answers (docs/DESIGN.md, facts), or this test \
         does not exercise the fallback: {arping:?}"
    );
    let (Some(first_request), Some(first_reply)) = (requests.first(), replies.first()) else {
        panic!("no answer after the fallback: {arping:?}\nvipd log:\n{log}");
    };
    let gap = first_reply.duration_since(*first_request);
    println!("first request to first answer: {gap:?} ({arping:?})");
    assert!(
        gap <= Duration::from_secs(1),
        "first answer {gap:?} after the first request: the fallback must come within a second\n{log}"
    );
    let later = requests.iter().filter(|t| *t > first_reply).count();
    let answered_later = replies.len() - 1;
    assert!(
        answered_later >= later,
        "after the fallback every request is answered: {later} requests, {answered_later} \
         answers after the first one ({arping:?})"
    );

    let a = eth0_attachment(&vipd.status());
    assert_eq!(
        (&a["mode"], &a["driver"], &a["reason_code"]),
        (
            &Value::from("generic"),
            &Value::from("veth"),
            &Value::from("fallback")
        ),
        "{a}"
    );
    let on = xdp_on(&rig.n1, "eth0");
    assert!(
        on.as_deref().is_some_and(|x| x.starts_with("xdpgeneric")),
        "generic XDP on eth0 after the fallback: {on:?}"
    );
    let errors = error_lines(&log);
    assert!(
        errors
            .iter()
            .any(|l| l.contains("eth0") && l.contains("driver veth")),
        "an error line names the interface and the driver:\n{log}"
    );
    client_reaches_vip(rig, &vipd, 5);
    (vipd, a)
}

#[test]
fn forced_native_on_veth_falls_back_to_generic() {
    let rig = Rig::new("xw_fallback", false);
    rig.arp_ignore("8");
    let _server = rig.n1.tcp_echo_server(VIP, PORT);
    let listen: SocketAddr = "127.0.0.1:9464".parse().expect("address");
    let (vipd, a) = falls_back(&rig, &["--metrics-listen", "127.0.0.1:9464"]);
    let reason = a["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("fallback from native: ") && reason.contains("XDP_TX errors"),
        "{a}"
    );
    let page = metrics(&rig.n1, listen);
    assert!(
        page.lines().any(|l| l
            == "vipd_xdp_attached{interface=\"eth0\",mode=\"generic\",driver=\"veth\",reason=\"fallback\"} 1"),
        "metrics show the mode and why:\n{page}"
    );
    assert!(vipd.process.is_running());
}

#[test]
fn forced_native_falls_back_when_answers_stick_in_the_peers_queue() {
    let rig = Rig::new("xw_stuck", false);
    rig.arp_ignore("8");
    let _server = rig.n1.tcp_echo_server(VIP, PORT);
    // GRO on the bridge-side end and no XDP there: native XDP_TX frames are
    // taken into its queue and never leave, and no error is counted.
    let peer = rig.n1.peer_name("eth0").to_string();
    rig.lab
        .bridge_netns()
        .exec_ok(&["ethtool", "-K", &peer, "gro", "on"]);
    let (vipd, a) = falls_back(&rig, &[]);
    assert!(
        a["reason"]
            .as_str()
            .is_some_and(|r| r.contains("taken by the driver")),
        "{a}"
    );
    assert!(vipd.process.is_running());
}

#[test]
fn native_with_a_pass_program_on_the_peer_stays_native() {
    let rig = Rig::new("xw_native", false);
    rig.arp_ignore("8");
    // What makes native XDP_TX on a veth deliver: an XDP program on the
    // other end (a vipd with no VIPs, its program passing every frame).
    let peer = rig.n1.peer_name("eth0").to_string();
    let peer_sock = rig.lab.dir().join("peer.sock");
    let bin = vipd_tests::lab::vipd_bin().display().to_string();
    let sock = peer_sock.display().to_string();
    let pass = rig.lab.bridge_netns().spawn([
        bin.as_str(),
        "--config",
        "/dev/null",
        "--static-vips",
        "",
        "--xdp-interface",
        &peer,
        "--xdp-mode",
        "native",
        "--api-socket",
        &sock,
        "--garp-rounds",
        "0",
    ]);
    let up = wait_until(READY_TIMEOUT, Duration::from_millis(50), || {
        assert!(
            pass.is_running(),
            "the pass vipd exited:\n{}",
            pass.stderr()
        );
        try_vipctl(rig.lab.bridge_netns(), &peer_sock, &["status", "--json"]).is_some_and(|st| {
            st["xdp"]["attached"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a["interface"] == peer.as_str() && a["mode"] == "native")
        })
    });
    if let Err(e) = up {
        panic!(
            "the pass vipd did not attach natively to {peer}: {e}\n{}",
            pass.stderr()
        );
    }
    let vipd = rig.start_vipd("192.0.2.100", &["--xdp-mode", "native"]);

    let (arping, sent) = rig.arping_counted(VIP, 10);
    assert!(sent >= 10, "{arping:?}");
    assert_eq!(
        arping.received as usize, sent,
        "native answers delivered: {arping:?}"
    );
    // A few check periods more: still native, nothing logged.
    std::thread::sleep(Duration::from_millis(600));
    let a = eth0_attachment(&vipd.status());
    assert_eq!(
        (&a["mode"], &a["reason_code"]),
        (&Value::from("native"), &Value::from("configured")),
        "{a}"
    );
    let log = vipd.process.stderr();
    assert!(error_lines(&log).is_empty(), "no errors:\n{log}");
    assert!(pass.is_running());
}
