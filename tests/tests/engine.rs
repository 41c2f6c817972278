//! Integration tests of the VIP engine (and the first XDP test): a real
//! vipd in a lab host, observed as a user would see it, with `ip -j addr`,
//! frames on the wire, a client's neighbour table and `vipctl`.
//!
//! The tests run one at a time (`serial`): several measure timing (announce
//! rounds, repair latency) on a machine with few cores.

use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use vipd_tests::lab::{
    ArpFrame, CapturedFrame, Host, HostIf, Lab, fmt_mac, vipctl_bin, wait_until,
};
use vipd_tests::vipd::Vipd;

const VIP_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const VIP_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
const VIP_NET1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
const BROADCAST: [u8; 6] = [0xff; 6];
const POLL: Duration = Duration::from_millis(10);

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time; a failed test must not block the others.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn br0(addr: &str) -> HostIf<'_> {
    HostIf { bridge: 0, addr }
}

fn br1(addr: &str) -> HostIf<'_> {
    HostIf { bridge: 1, addr }
}

fn br2(addr: &str) -> HostIf<'_> {
    HostIf { bridge: 2, addr }
}

/// The entry of `vip` in a `vipctl status --json` answer.
fn vip_entry(status: &Value, vip: Ipv4Addr) -> Value {
    status["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["vip"].as_str() == Some(&vip.to_string()))
        .cloned()
        .unwrap_or_else(|| panic!("no entry for {vip} in status {status:#}"))
}

/// (interface, VIP, prefix) of every VIP the status says is held, sorted.
fn held_in_status(status: &Value) -> Vec<(String, Ipv4Addr, u8)> {
    let mut held: Vec<_> = status["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["state"] == "held")
        .map(|v| {
            (
                v["interface"].as_str().unwrap_or("?").to_string(),
                v["vip"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| {
                        panic!("unreadable vip in {v}");
                    }),
                v["prefix_len"]
                    .as_u64()
                    .and_then(|p| u8::try_from(p).ok())
                    .unwrap_or(0),
            )
        })
        .collect();
    held.sort();
    held
}

/// Every IPv4 address of `host` as `ip -j addr` shows it: (interface, address, prefix), sorted.
fn ip_addrs(host: &Host) -> Vec<(String, Ipv4Addr, u8)> {
    let out = host.ip(&["-j", "-4", "addr", "show"]);
    let json: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j addr: {e}: {out}"));
    let mut addrs = Vec::new();
    for link in json.as_array().into_iter().flatten() {
        let ifname = link["ifname"].as_str().unwrap_or("?");
        for a in link["addr_info"].as_array().into_iter().flatten() {
            let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) else {
                continue;
            };
            addrs.push((
                ifname.to_string(),
                local.parse().expect("an IPv4 address"),
                u8::try_from(len).expect("prefix fits u8"),
            ));
        }
    }
    addrs.sort();
    addrs
}

/// The addresses of `host` equal to one of `vips`.
fn vip_addrs(host: &Host, vips: &[Ipv4Addr]) -> Vec<(String, Ipv4Addr, u8)> {
    ip_addrs(host)
        .into_iter()
        .filter(|(_, a, _)| vips.contains(a))
        .collect()
}

fn place(ifname: &str, vip: Ipv4Addr, prefix: u8) -> (String, Ipv4Addr, u8) {
    (ifname.to_string(), vip, prefix)
}

/// Waits until `ip -j addr` shows exactly `want` among `vips`.
fn wait_vips(host: &Host, vips: &[Ipv4Addr], want: &[(String, Ipv4Addr, u8)], within: Duration) {
    let mut want = want.to_vec();
    want.sort();
    if let Err(e) = wait_until(within, POLL, || vip_addrs(host, vips) == want) {
        panic!(
            "{}: VIPs on the interfaces are {:?}, want {want:?} ({e})",
            host.name(),
            vip_addrs(host, vips)
        );
    }
}

/// vipd on `host` for VIP_A alone (192.0.2.100, with `extra` flags), once
/// the VIP stands on eth0 in br0's /24.
fn start_holding_vip_a(lab: &Lab, host: &Host, extra: &[&str]) -> Vipd {
    let vipd = Vipd::start(lab, host, "192.0.2.100", extra);
    wait_vips(
        host,
        &[VIP_A],
        &[place("eth0", VIP_A, 24)],
        Duration::from_secs(3),
    );
    vipd
}

/// ARP frames that mention `vip` (as sender or target), in arrival order.
fn frames_about(frames: &[CapturedFrame], vip: Ipv4Addr) -> Vec<(CapturedFrame, ArpFrame)> {
    frames
        .iter()
        .filter_map(|f| f.arp().map(|a| (f.clone(), a)))
        .filter(|(_, a)| a.spa == vip || a.tpa == vip)
        .collect()
}

/// The frames announcing `vip` (sender address the VIP), without the
/// address-conflict probes for it (sender 0.0.0.0) that precede its first add.
fn announcements_about(frames: &[CapturedFrame], vip: Ipv4Addr) -> Vec<(CapturedFrame, ArpFrame)> {
    frames_about(frames, vip)
        .into_iter()
        .filter(|(_, a)| !a.spa.is_unspecified())
        .collect()
}

fn describe(frames: &[(CapturedFrame, ArpFrame)]) -> String {
    let Some(first) = frames.first().map(|(f, _)| f.at) else {
        return "no frames".to_string();
    };
    frames
        .iter()
        .map(|(f, a)| {
            format!(
                "+{:>4}ms op {} {} -> {} sha {} spa {} tha {} tpa {}",
                f.at.duration_since(first).as_millis(),
                a.op,
                fmt_mac(a.eth_src),
                fmt_mac(a.eth_dst),
                fmt_mac(a.sha),
                a.spa,
                fmt_mac(a.tha),
                a.tpa
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether an XDP program (any mode) is attached to `ifname`, as `ip -j link` shows.
fn xdp_attached(host: &Host, ifname: &str) -> bool {
    let out = host.ip(&["-j", "link", "show", "dev", ifname]);
    let json: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j link: {e}: {out}"));
    json[0].get("xdp").is_some()
}

/// `vipctl cleanup` run inside `host`'s namespace.
fn vipctl_cleanup(host: &Host) -> std::process::Output {
    host.exec(&[vipctl_bin().into_os_string(), "cleanup".into()])
}

// ---------------------------------------------------------------------------
// 1. Placement: on the interface whose route covers the VIP

#[test]
fn vips_are_placed_by_longest_prefix_match() {
    let _serial = serial();
    let lab = Lab::new("placement");
    let n1 = lab.add_host(
        "n1",
        &[
            br0("192.0.2.11/24"),
            br1("198.51.100.11/24"),
            // A /25: 203.0.113.200 is outside it and matches only the default route.
            br2("203.0.113.11/25"),
        ],
    );
    n1.add_default_route("203.0.113.1");
    // A longer prefix inside eth1's /24 points elsewhere (the longest prefix wins: /24 over /16).
    n1.ip(&["route", "add", "198.51.100.128/25", "dev", "eth2"]);
    let vip_longer = Ipv4Addr::new(198, 51, 100, 200);
    let vip_default = Ipv4Addr::new(203, 0, 113, 200);
    let vips = [VIP_A, VIP_NET1, vip_longer, vip_default];

    let vipd = Vipd::start(
        &lab,
        &n1,
        "192.0.2.100,198.51.100.100,198.51.100.200,203.0.113.200",
        &[],
    );
    let want = vec![
        place("eth0", VIP_A, 24),
        place("eth1", VIP_NET1, 24),
        place("eth2", vip_longer, 25),
        place("eth2", vip_default, 32),
    ];
    wait_vips(&n1, &vips, &want, Duration::from_secs(3));

    let status = vipd.status();
    assert_eq!(status["mode"], "static", "{status:#}");
    assert_eq!(status["role"], "leader", "{status:#}");
    for (ifname, vip, prefix) in &want {
        let e = vip_entry(&status, *vip);
        assert_eq!(e["state"], "held", "{vip}: {e}");
        assert_eq!(e["interface"].as_str(), Some(ifname.as_str()), "{vip}: {e}");
        assert_eq!(
            e["prefix_len"].as_u64(),
            Some(u64::from(*prefix)),
            "{vip}: {e}"
        );
        assert!(e["error"].is_null(), "{vip}: {e}");
    }
    let mut sorted = want.clone();
    sorted.sort();
    assert_eq!(held_in_status(&status), sorted);
}

// ---------------------------------------------------------------------------
// 2. Announcements: at once, in sync rounds, paced

/// Starts vipd with 200 ms x 6 rounds in `mode` and checks every frame the
/// client sees about the VIP, their timing, and the client's neighbour entry.
fn announcements(hint: &str, mode: &str) {
    let _serial = serial();
    let lab = Lab::new(hint);
    let n1 = lab.add_host("n1", &[br0("192.0.2.11/24")]);
    let client = lab.add_host("c1", &[br0("192.0.2.21/24")]);
    let mac_text = n1.mac("eth0");
    let mac = n1.mac_bytes("eth0");
    let stale_mac = "02:00:00:00:00:99";
    client.ip(&[
        "neigh",
        "replace",
        "192.0.2.100",
        "lladdr",
        stale_mac,
        "dev",
        "eth0",
        "nud",
        "stale",
    ]);
    let capture = client.capture_arp("eth0");

    // Watches the client's entry from before the start: `Vipd::start` waits
    // for vipctl, which may take longer than the switch itself.
    let (vipd, switched_at) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if client
                    .neigh(VIP_A)
                    .and_then(|n| n.lladdr)
                    .is_some_and(|l| l == mac_text)
                {
                    return Some(Instant::now());
                }
                std::thread::sleep(POLL);
            }
            None
        });
        let vipd = Vipd::start(
            &lab,
            &n1,
            "192.0.2.100",
            &[
                // Rounds count from the start of the term; the VIP is
                // added (and first announced) once its address-conflict
                // probe is done, 200 ms in: the first round at 400 ms comes
                // after it.
                "--garp-interval",
                "400ms",
                "--garp-rounds",
                "6",
                "--garp-mode",
                mode,
            ],
        );
        (vipd, watcher.join().expect("neighbour watcher"))
    });

    let per_round: &[u16] = match mode {
        "request" => &[ArpFrame::REQUEST],
        "reply" => &[ArpFrame::REPLY],
        "both" => &[ArpFrame::REQUEST, ArpFrame::REPLY],
        other => panic!("unknown mode {other}"),
    };
    let want = 7 * per_round.len();
    let _ = wait_until(Duration::from_secs(5), POLL, || {
        announcements_about(&capture.frames(), VIP_A).len() >= want
    });
    // Quiet for two intervals after the last frame: no 8th round.
    let last = announcements_about(&capture.frames(), VIP_A)
        .last()
        .map(|(f, _)| f.at)
        .expect("at least one frame about the VIP");
    std::thread::sleep(
        (last + Duration::from_millis(850)).saturating_duration_since(Instant::now()),
    );
    let captured = capture.stop();
    let frames = announcements_about(&captured, VIP_A);
    let text = describe(&frames);
    println!("announcements, mode {mode}:\n{text}");
    // A VIP never held is probed for before it is first added: every probe
    // goes out before the first announcement.
    let first = frames.first().map(|(f, _)| f.at).expect("an announcement");
    let late_probes: Vec<_> = frames_about(&captured, VIP_A)
        .into_iter()
        .filter(|(f, a)| a.spa.is_unspecified() && f.at >= first)
        .collect();
    assert!(
        late_probes.is_empty(),
        "mode {mode}: probes after the first announcement:\n{}",
        describe(&late_probes)
    );
    assert_eq!(
        frames.len(),
        want,
        "mode {mode}: want 1 + 6 rounds of {per_round:?} about {VIP_A}, got:\n{text}"
    );

    for (f, a) in &frames {
        assert!(
            !f.outgoing,
            "the client itself sent an ARP frame about the VIP:\n{text}"
        );
        assert_eq!(a.eth_dst, BROADCAST, "not broadcast:\n{text}");
        assert_eq!(
            a.eth_src, mac,
            "Ethernet source is not n1's eth0 MAC:\n{text}"
        );
        assert_eq!(a.sha, mac, "sha is not n1's eth0 MAC:\n{text}");
        assert_eq!((a.spa, a.tpa), (VIP_A, VIP_A), "spa/tpa:\n{text}");
        match a.op {
            ArpFrame::REQUEST => assert_eq!(a.tha, BROADCAST, "request form tha:\n{text}"),
            ArpFrame::REPLY => assert_eq!(a.tha, mac, "reply form tha:\n{text}"),
            op => panic!("ARP op {op}:\n{text}"),
        }
    }
    let rounds: Vec<&[(CapturedFrame, ArpFrame)]> = frames.chunks(per_round.len()).collect();
    for round in &rounds {
        let ops: Vec<u16> = round.iter().map(|(_, a)| a.op).collect();
        assert_eq!(
            ops, per_round,
            "each round sends {per_round:?} in order:\n{text}"
        );
        let spread = round[round.len() - 1].0.at.duration_since(round[0].0.at);
        assert!(
            spread < Duration::from_millis(50),
            "one round's frames {spread:?} apart:\n{text}"
        );
    }
    let switched = switched_at.map(|t| t.duration_since(vipd.spawned_at));
    let first_at = rounds[0][0].0.at.duration_since(vipd.spawned_at);
    let gaps: Vec<Duration> = rounds
        .windows(2)
        .map(|w| w[1][0].0.at.duration_since(w[0][0].0.at))
        .collect();
    println!(
        "mode {mode}: first frame {first_at:?} after spawn, neighbour switched by {switched:?}, round gaps {:?}",
        gaps.iter().map(Duration::as_millis).collect::<Vec<_>>()
    );
    assert!(
        first_at <= Duration::from_secs(1),
        "first announcement {first_at:?} after vipd started:\n{text}"
    );
    // The first round comes 400 ms after the term started, less the probe
    // that delayed the add's own announcement; the rounds then 400 ms apart.
    assert!(
        gaps[0] <= Duration::from_millis(460),
        "the first round {:?} after the add's announcement:\n{text}",
        gaps[0]
    );
    for gap in &gaps[1..] {
        assert!(
            (Duration::from_millis(340)..=Duration::from_millis(460)).contains(gap),
            "rounds must be 400 ms +- 60 ms apart, saw {gap:?}:\n{text}"
        );
    }
    // The client's stale entry names our MAC within 1 s of the start.
    let switched = switched.unwrap_or_else(|| {
        panic!(
            "client's entry for {VIP_A} is still {:?}, want {mac_text}",
            client.neigh(VIP_A)
        )
    });
    assert!(
        switched <= Duration::from_secs(1),
        "client's entry for {VIP_A} switched to our MAC {switched:?} after vipd started (limit 1 s)"
    );
}

#[test]
fn announces_request_form_once_then_six_rounds() {
    announcements("garp_request", "request");
}

#[test]
fn announces_reply_form_once_then_six_rounds() {
    announcements("garp_reply", "reply");
}

#[test]
fn announces_both_forms_once_then_six_rounds() {
    announcements("garp_both", "both");
}

// ---------------------------------------------------------------------------
// 3. Repair: a VIP removed by hand comes back

/// Deletes VIP_A by hand `times` times and returns how long each took to
/// come back, polling `ip -j addr` every 2 ms.
fn repair_times(n1: &Host, times: usize, limit: Duration) -> Vec<Duration> {
    let mut took = Vec::new();
    for _ in 0..times {
        n1.del_addr("eth0", "192.0.2.100/24");
        let back = wait_until(limit, Duration::from_millis(2), || {
            n1.ipv4_addrs("eth0").contains(&(VIP_A, 24))
        })
        .unwrap_or_else(|e| panic!("{VIP_A} deleted by hand is not back: {e}"));
        took.push(back);
        std::thread::sleep(Duration::from_millis(100));
    }
    took
}

#[test]
fn vip_deleted_by_hand_is_back_at_once() {
    let _serial = serial();
    let lab = Lab::new("repair_events");
    let n1 = lab.add_host("n1", &[br0("192.0.2.11/24")]);
    let vipd = start_holding_vip_a(&lab, &n1, &[]);
    let took = repair_times(&n1, 5, Duration::from_secs(2));
    println!("repair with netlink events: {took:?}");
    for t in &took {
        assert!(
            *t <= Duration::from_millis(100),
            "repair took {t:?} (limit 100 ms); all: {took:?}; vipd stderr:\n{}",
            vipd.process.stderr()
        );
    }
    assert_eq!(vip_addrs(&n1, &[VIP_A]), vec![place("eth0", VIP_A, 24)]);
    assert_eq!(vip_entry(&vipd.status(), VIP_A)["state"], "held");
}

#[test]
fn vip_deleted_by_hand_is_back_on_the_timer_without_events() {
    let _serial = serial();
    let lab = Lab::new("repair_timer");
    let n1 = lab.add_host("n1", &[br0("192.0.2.11/24")]);
    let _vipd = start_holding_vip_a(
        &lab,
        &n1,
        &["--netlink-events", "false", "--reconcile-interval", "1s"],
    );
    let took = repair_times(&n1, 2, Duration::from_millis(1500));
    println!("repair on the 1 s timer (no netlink events): {took:?}");
    assert_eq!(vip_addrs(&n1, &[VIP_A]), vec![place("eth0", VIP_A, 24)]);
}

// ---------------------------------------------------------------------------
// 4. Stale placement and operator addresses

#[test]
fn vip_left_on_the_wrong_interface_moves() {
    let _serial = serial();
    let lab = Lab::new("wrong_if");
    let n1 = lab.add_host("n1", &[br0("192.0.2.11/24"), br1("198.51.100.11/24")]);
    let first = start_holding_vip_a(&lab, &n1, &[]);
    first.stop(libc::SIGKILL, Duration::from_secs(5));
    assert_eq!(
        vip_addrs(&n1, &[VIP_A]),
        vec![place("eth0", VIP_A, 24)],
        "SIGKILL leaves the VIP"
    );

    // Now the route says the VIP belongs on eth1 (as /32).
    n1.ip(&["route", "add", "192.0.2.100/32", "dev", "eth1"]);
    let second = Vipd::start(&lab, &n1, "192.0.2.100", &[]);
    wait_vips(
        &n1,
        &[VIP_A],
        &[place("eth1", VIP_A, 32)],
        Duration::from_secs(3),
    );
    let e = vip_entry(&second.status(), VIP_A);
    assert_eq!(e["state"], "held", "{e}");
    assert_eq!(e["interface"], "eth1", "{e}");
    assert_eq!(e["prefix_len"], 32, "{e}");
    assert_eq!(
        n1.ipv4_addrs("eth0"),
        vec![(Ipv4Addr::new(192, 0, 2, 11), 24)],
        "eth0 keeps only its own address"
    );
}

#[test]
fn operator_address_equal_to_a_vip_is_left_alone() {
    let _serial = serial();
    let lab = Lab::new("operator_addr");
    let n1 = lab.add_host("n1", &[br0("192.0.2.11/24")]);
    let client = lab.add_host("c1", &[br0("192.0.2.21/24")]);
    n1.add_addr("eth0", "192.0.2.100/24");
    // Any add or delete of 192.0.2.100 by anyone shows up here.
    let monitor = n1.spawn(["ip", "-4", "monitor", "address"]);
    let capture = client.capture_arp("eth0");
    std::thread::sleep(Duration::from_millis(100));

    let vipd = Vipd::start(
        &lab,
        &n1,
        "192.0.2.100,192.0.2.101",
        &["--reconcile-interval", "300ms"],
    );
    wait_vips(
        &n1,
        &[VIP_A, VIP_B],
        &[place("eth0", VIP_A, 24), place("eth0", VIP_B, 24)],
        Duration::from_secs(3),
    );
    // Through several periodic passes.
    let passes = vipd.passes();
    wait_until(Duration::from_secs(3), POLL, || vipd.passes() >= passes + 3)
        .expect("three more periodic passes");
    let status = vipd.status();
    let e = vip_entry(&status, VIP_A);
    assert_eq!(e["state"], "operator_address", "{status:#}");
    assert_eq!(e["interface"], "eth0", "{e}");
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|m| m.contains("192.0.2.100")),
        "the error names the VIP: {e}"
    );
    assert_eq!(vip_entry(&status, VIP_B)["state"], "held", "{status:#}");
    assert_eq!(held_in_status(&status), vec![place("eth0", VIP_B, 24)]);

    let (exit, took) = vipd.stop(libc::SIGTERM, Duration::from_secs(5));
    assert!(exit.success(), "vipd exit {exit}");
    println!("SIGTERM with an operator address: exit in {took:?}");
    assert_eq!(
        vip_addrs(&n1, &[VIP_A, VIP_B]),
        vec![place("eth0", VIP_A, 24)],
        "the operator's 192.0.2.100 stays, vipd's 192.0.2.101 goes"
    );

    std::thread::sleep(Duration::from_millis(100));
    let log = monitor.stdout();
    monitor.terminate(Duration::from_secs(1));
    assert!(
        !log.contains("192.0.2.100/"),
        "vipd touched the operator's address:\n{log}"
    );
    assert!(
        log.contains("192.0.2.101/"),
        "the monitor saw nothing:\n{log}"
    );
    let frames = capture.stop();
    let ours = frames_about(&frames, VIP_A);
    assert!(
        ours.is_empty(),
        "the operator's address was announced:\n{}",
        describe(&ours)
    );
    assert!(
        !frames_about(&frames, VIP_B).is_empty(),
        "no announcement of 192.0.2.101 seen: the capture saw nothing"
    );
}

// ---------------------------------------------------------------------------
// 5. Status agrees with the kernel

#[test]
fn status_reports_what_ip_shows() {
    let _serial = serial();
    let lab = Lab::new("status_vs_ip");
    let n1 = lab.add_host("n1", &[br0("192.0.2.11/24"), br1("198.51.100.11/24")]);
    let vips = [VIP_A, VIP_B, VIP_NET1];
    let vipd = Vipd::start(&lab, &n1, "192.0.2.100,192.0.2.101,198.51.100.100", &[]);

    let agree = |want: Vec<(String, Ipv4Addr, u8)>, what: &str| {
        let mut want = want;
        want.sort();
        let ok = wait_until(Duration::from_secs(3), POLL, || {
            vip_addrs(&n1, &vips) == want && held_in_status(&vipd.status()) == want
        });
        assert!(
            ok.is_ok(),
            "{what}: want {want:?}; ip shows {:?}; status holds {:?}",
            vip_addrs(&n1, &vips),
            held_in_status(&vipd.status())
        );
    };
    let at_start = vec![
        place("eth0", VIP_A, 24),
        place("eth0", VIP_B, 24),
        place("eth1", VIP_NET1, 24),
    ];
    agree(at_start.clone(), "at start");
    // A route change moves a VIP; status follows.
    n1.ip(&["route", "add", "192.0.2.101/32", "dev", "eth1"]);
    agree(
        vec![
            place("eth0", VIP_A, 24),
            place("eth1", VIP_B, 32),
            place("eth1", VIP_NET1, 24),
        ],
        "after a /32 route to eth1",
    );
    n1.ip(&["route", "del", "192.0.2.101/32", "dev", "eth1"]);
    agree(at_start, "after the /32 route is gone");
    let status = vipd.status();
    for vip in vips {
        let e = vip_entry(&status, vip);
        let ifname = e["interface"].as_str().expect("interface");
        let ifindex = n1.ip(&["-j", "link", "show", "dev", ifname]);
        let ifindex: Value = serde_json::from_str(&ifindex).expect("ip -j link");
        assert_eq!(e["ifindex"], ifindex[0]["ifindex"], "{vip}: {e}");
    }
}

// ---------------------------------------------------------------------------
// 6. Shutdown, crash and cleanup

#[test]
fn sigterm_removes_every_vip_and_stops_announcing() {
    let _serial = serial();
    let lab = Lab::new("sigterm");
    let n1 = lab.add_host("n1", &[br0("192.0.2.11/24"), br1("198.51.100.11/24")]);
    let client = lab.add_host("c1", &[br0("192.0.2.21/24")]);
    let capture = client.capture_arp("eth0");
    // Rounds still going when SIGTERM arrives.
    let vipd = Vipd::start(
        &lab,
        &n1,
        "192.0.2.100,198.51.100.100",
        &["--garp-interval", "100ms", "--garp-rounds", "100"],
    );
    wait_vips(
        &n1,
        &[VIP_A, VIP_NET1],
        &[place("eth0", VIP_A, 24), place("eth1", VIP_NET1, 24)],
        Duration::from_secs(3),
    );
    wait_until(Duration::from_secs(2), POLL, || {
        frames_about(&capture.frames(), VIP_A).len() >= 3
    })
    .expect("announcement rounds are running");

    let (exit, took) = vipd.stop(libc::SIGTERM, Duration::from_secs(5));
    let exited_at = Instant::now();
    println!("SIGTERM: exit {exit} after {took:?}");
    assert!(
        exit.success(),
        "vipd exit {exit}; stderr:\n{}",
        vipd.process.stderr()
    );
    assert_eq!(
        vip_addrs(&n1, &[VIP_A, VIP_NET1]),
        vec![],
        "VIPs left behind"
    );
    assert_eq!(
        ip_addrs(&n1),
        vec![
            place("eth0", Ipv4Addr::new(192, 0, 2, 11), 24),
            place("eth1", Ipv4Addr::new(198, 51, 100, 11), 24),
            place("lo", Ipv4Addr::LOCALHOST, 8),
        ]
    );

    assert!(
        !xdp_attached(&n1, "eth0") && !xdp_attached(&n1, "eth1"),
        "an XDP program outlived vipd"
    );
    // Nobody answers for the VIP any more (no XDP responder outliving vipd).
    let probe = client.arping(VIP_A, 2, "eth0");
    assert_eq!(
        probe.received, 0,
        "someone still answers for {VIP_A}:\n{}",
        probe.stdout
    );
    let late: Vec<_> = frames_about(&capture.stop(), VIP_A)
        .into_iter()
        .filter(|(f, a)| !f.outgoing && f.at > exited_at && a.spa == VIP_A)
        .collect();
    assert!(
        late.is_empty(),
        "frames about {VIP_A} after exit:\n{}",
        describe(&late)
    );
}

#[test]
fn after_sigkill_cleanup_removes_vips_and_keeps_operator_addresses() {
    let _serial = serial();
    let lab = Lab::new("cleanup");
    let n1 = lab.add_host("n1", &[br0("192.0.2.11/24"), br1("198.51.100.11/24")]);
    let vipd = Vipd::start(&lab, &n1, "192.0.2.100,198.51.100.100", &[]);
    let placed = [place("eth0", VIP_A, 24), place("eth1", VIP_NET1, 24)];
    wait_vips(&n1, &[VIP_A, VIP_NET1], &placed, Duration::from_secs(3));
    // An operator's address in the VIP's subnet.
    n1.add_addr("eth0", "192.0.2.50/24");

    vipd.stop(libc::SIGKILL, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        vip_addrs(&n1, &[VIP_A, VIP_NET1]),
        placed.to_vec(),
        "after SIGKILL the VIPs stay"
    );

    let out = vipctl_cleanup(&n1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "vipctl cleanup: {} {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ip_addrs(&n1),
        vec![
            place("eth0", Ipv4Addr::new(192, 0, 2, 11), 24),
            place("eth0", Ipv4Addr::new(192, 0, 2, 50), 24),
            place("eth1", Ipv4Addr::new(198, 51, 100, 11), 24),
            place("lo", Ipv4Addr::LOCALHOST, 8),
        ],
        "cleanup said:\n{stdout}"
    );
    // Again: nothing left to remove, still success.
    let again = vipctl_cleanup(&n1);
    assert!(again.status.success(), "second cleanup: {}", again.status);
    assert_eq!(ip_addrs(&n1).len(), 4);
}

/// A VIP that is its subnet's primary address (the interface has no other
/// address in that subnet): removing it must not take the operator's later
/// secondary address with it (docs/DESIGN.md facts, promote_secondaries).
fn primary_vip_host(lab: &Lab) -> Host {
    let n1 = lab.add_host("n1", &[br0("")]);
    // The kernel default, which a namespace may not have: IPv4 settings are
    // inherited from the root namespace, where systemd turns promotion on.
    n1.sysctl("net.ipv4.conf.all.promote_secondaries", "0");
    n1.sysctl("net.ipv4.conf.eth0.promote_secondaries", "0");
    n1.ip(&["route", "add", "192.0.2.0/24", "dev", "eth0"]);
    n1
}

#[test]
fn cleanup_keeps_operator_secondary_of_a_primary_vip() {
    let _serial = serial();
    let lab = Lab::new("cleanup_primary");
    let n1 = primary_vip_host(&lab);
    let vipd = start_holding_vip_a(&lab, &n1, &[]);
    n1.add_addr("eth0", "192.0.2.50/24");
    vipd.stop(libc::SIGKILL, Duration::from_secs(5));
    let out = vipctl_cleanup(&n1);
    assert!(
        out.status.success(),
        "vipctl cleanup: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        n1.ipv4_addrs("eth0"),
        vec![(Ipv4Addr::new(192, 0, 2, 50), 24)],
        "cleanup said: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn sigterm_keeps_operator_secondary_of_a_primary_vip() {
    let _serial = serial();
    let lab = Lab::new("sigterm_primary");
    let n1 = primary_vip_host(&lab);
    let vipd = start_holding_vip_a(&lab, &n1, &[]);
    n1.add_addr("eth0", "192.0.2.50/24");
    let (exit, _) = vipd.stop(libc::SIGTERM, Duration::from_secs(5));
    assert!(
        exit.success(),
        "vipd exit {exit}; stderr:\n{}",
        vipd.process.stderr()
    );
    assert_eq!(
        n1.ipv4_addrs("eth0"),
        vec![(Ipv4Addr::new(192, 0, 2, 50), 24)],
        "vipd stderr:\n{}",
        vipd.process.stderr()
    );
}

// ---------------------------------------------------------------------------
// 7. No route: the VIP is not served here

#[test]
fn vip_without_a_route_is_reported_and_the_others_held() {
    let _serial = serial();
    let lab = Lab::new("no_route");
    let n1 = lab.add_host("n1", &[br0("192.0.2.11/24")]);
    let vipd = Vipd::start(&lab, &n1, "192.0.2.100,198.51.100.100", &[]);
    wait_vips(
        &n1,
        &[VIP_A, VIP_NET1],
        &[place("eth0", VIP_A, 24)],
        Duration::from_secs(3),
    );
    let status = vipd.status();
    let e = vip_entry(&status, VIP_NET1);
    assert_eq!(e["state"], "no_route", "{status:#}");
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|m| m.contains("198.51.100.100")),
        "the error names the VIP: {e}"
    );
    assert_eq!(held_in_status(&status), vec![place("eth0", VIP_A, 24)]);
    wait_until(Duration::from_secs(2), POLL, || {
        vipd.process.stderr().contains("198.51.100.100")
    })
    .unwrap_or_else(|e| {
        panic!(
            "vipd's log does not name 198.51.100.100 ({e}):\n{}",
            vipd.process.stderr()
        )
    });
}

// ---------------------------------------------------------------------------
// 8. XDP ARP counters and responder

#[test]
fn xdp_counts_arp_requests_per_vip_and_answers_them() {
    let _serial = serial();
    let lab = Lab::new("xdp_counts");
    let n1 = lab.add_host("n1", &[br0("192.0.2.11/24")]);
    let n2 = lab.add_host("n2", &[br0("192.0.2.12/24")]);
    let n1_mac = n1.mac("eth0");
    let not_vip = Ipv4Addr::new(192, 0, 2, 222);
    let vipd = start_holding_vip_a(&lab, &n1, &["--xdp-interface", "eth0"]);
    let status = vipd.status();
    assert_eq!(status["xdp"]["enabled"], true, "{status:#}");
    assert!(
        status["xdp"]["attached"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["interface"] == "eth0"),
        "XDP not attached to eth0: {status:#}"
    );

    assert!(
        xdp_attached(&n1, "eth0"),
        "ip link shows no XDP program on eth0"
    );

    let capture = n2.capture_arp("eth0");
    let to_vip = n2.arping(VIP_A, 5, "eth0");
    let to_other = n2.arping(not_vip, 3, "eth0");
    std::thread::sleep(Duration::from_millis(100));
    let frames = capture.stop();

    assert_eq!(to_vip.sent, 5, "{}", to_vip.stdout);
    assert_eq!(
        to_vip.reply_macs,
        vec![n1_mac.clone(); 5],
        "one reply per request, from n1's MAC:\n{}",
        to_vip.stdout
    );
    assert_eq!(to_other.received, 0, "{}", to_other.stdout);

    let requests_sent = |target: Ipv4Addr| {
        frames
            .iter()
            .filter_map(|f| f.arp().map(|a| (f.outgoing, a)))
            .filter(|(out, a)| *out && a.op == ArpFrame::REQUEST && a.tpa == target)
            .count() as u64
    };
    let replies: Vec<ArpFrame> = frames
        .iter()
        .filter(|f| !f.outgoing)
        .filter_map(CapturedFrame::arp)
        .filter(|a| a.op == ArpFrame::REPLY && a.spa == VIP_A)
        .collect();
    assert_eq!(requests_sent(VIP_A), 5, "n2 sent 5 requests for {VIP_A}");
    assert_eq!(
        requests_sent(not_vip),
        3,
        "n2 sent 3 requests for {not_vip}"
    );
    assert_eq!(
        replies.len(),
        5,
        "replies for {VIP_A} seen on n2: {replies:?}"
    );
    assert!(
        replies
            .iter()
            .all(|a| fmt_mac(a.sha) == n1_mac && fmt_mac(a.eth_src) == n1_mac),
        "{replies:?}"
    );

    let stats = vipd.arp_stats();
    println!("arp stats after arping: {stats}");
    assert_eq!(stats["xdp"], true, "{stats}");
    assert_eq!(stats["role"], "leader", "{stats}");
    let rows = stats["vips"].as_array().expect("vips array");
    let row = rows
        .iter()
        .find(|r| r["vip"] == "192.0.2.100")
        .unwrap_or_else(|| panic!("no row for {VIP_A}: {stats}"));
    assert_eq!(
        row["requests"].as_u64(),
        Some(requests_sent(VIP_A)),
        "{row}"
    );
    assert_eq!(row["xdp_replies"].as_u64(), Some(5), "{row}");
    assert_eq!(row["held"], true, "{row}");
    assert_eq!(row["interface"], "eth0", "{row}");
    if let Some(other) = rows.iter().find(|r| r["vip"] == "192.0.2.222") {
        assert_eq!(other["requests"].as_u64(), Some(0), "{other}");
    }

    // Nothing answers or serves a VIP past its lease, agent alive or not.
    // The program is pinned, so it outlives a crash; a single-node VIP has
    // no lease, so it is still answered while its address is there, until
    // `vipctl cleanup` removes the address and the pinned program.
    vipd.stop(libc::SIGKILL, Duration::from_secs(5));
    assert!(
        xdp_attached(&n1, "eth0"),
        "the pinned XDP program outlives the kill"
    );
    let dead = n2.arping(VIP_A, 2, "eth0");
    assert_eq!(dead.received, 2, "answered with vipd dead: {}", dead.stdout);
    assert!(
        dead.reply_macs.iter().all(|m| *m == n1_mac),
        "{}",
        dead.stdout
    );
    let out = vipctl_cleanup(&n1);
    assert!(
        out.status.success(),
        "vipctl cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !xdp_attached(&n1, "eth0"),
        "the XDP program is detached from eth0 once cleanup ran: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let after = n2.arping(VIP_A, 3, "eth0");
    assert_eq!(
        after.received, 0,
        "{VIP_A} answered after cleanup: {}",
        after.stdout
    );
}
