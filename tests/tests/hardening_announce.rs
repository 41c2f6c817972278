//! Announcements under a short lease, in a real cluster: three vipd
//! processes against a real ZooKeeper (at `--session-timeout 1s --lease
//! 200ms`, or at the defaults with a queue longer than the default lease),
//! the leader SIGKILLed, and a capture on the client's interface
//! that must see the new leader announce every VIP (from its MAC) while
//! the lease keeps being renewed, however long the paced queue takes.
//! Privileged: these need root and fail without it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use vipd_tests::{
    cluster::{Cluster, ZkKind, ms},
    lab::{CaptureOptions, is_announcement, parse_mac, require_root},
};

/// The settings of the issue: a 1 s session and a 200 ms lease.
const SESSION: Duration = Duration::from_secs(1);
const LEASE: &str = "200ms";

/// One cluster at a time (a ZooKeeper JVM and three vipds each).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `n` IPv4 VIPs from 192.0.2.100 up (at most 150: the data segment is a /24).
fn v4_vips(n: u8) -> Vec<IpAddr> {
    assert!(n <= 150);
    (0..n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100 + i)))
        .collect()
}

/// `n` IPv6 VIPs in the data segment's 2001:db8:0:1::/64, from ::1:0 up.
fn v6_vips(n: u16) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 1, i)))
        .collect()
}

/// [`unannounced_after_takeover`], failing with the VIPs never announced.
fn assert_all_announced_after_takeover(
    hint: &str,
    vips: &[IpAddr],
    short: bool,
    bound_every: (Duration, Duration),
) {
    let (missing, sent) = unannounced_after_takeover(hint, vips, short, &[], bound_every);
    assert!(
        missing.is_empty(),
        "the new leader announced {sent} of {} VIPs; never announced ({}): {}",
        vips.len(),
        missing.len(),
        show(&missing)
    );
}

/// The takeover scenario: `vips` in one service, the leader SIGKILLed, and
/// the VIPs the new leader did NOT announce (from its own MAC) within
/// `bound` of holding them all, with how many it did.
/// `short`: at the issue's `--session-timeout 1s --lease 200ms`; else at
/// vipd's default session and lease. The cluster is looked at every
/// `every` while it elects (dumps of thousands of addresses on three nodes
/// are CPU the nodes need).
fn unannounced_after_takeover(
    hint: &str,
    vips: &[IpAddr],
    short: bool,
    extra: &[&str],
    (bound, every): (Duration, Duration),
) -> (BTreeSet<IpAddr>, usize) {
    require_root();
    let mut c = Cluster::new(hint, ZkKind::Standalone, 3);
    if vips.iter().any(IpAddr::is_ipv6) {
        c.enable_ipv6();
    }
    let set: BTreeSet<IpAddr> = vips.iter().copied().collect();
    let texts: Vec<String> = vips.iter().map(ToString::to_string).collect();
    let mut args = vec!["set", "web"];
    args.extend(texts.iter().map(String::as_str));
    c.vip_ok(&args);
    if short {
        let mut flags = vec!["--lease", LEASE];
        flags.extend_from_slice(extra);
        c.start_all_with(SESSION, &flags);
    } else {
        c.start_all_flags(extra);
    }
    let (old, took) = c
        .wait_sole_holder_ips_every(&set, None, Duration::from_secs(120), every)
        .unwrap_or_else(|e| panic!("[{hint}] first election: {}", &e[..e.len().min(400)]));
    eprintln!(
        "[{hint}] {} holds {} VIPs after {:.0} ms",
        c.nodes[old].id,
        set.len(),
        ms(took)
    );

    let capture = c.client.capture_with(
        "eth0",
        CaptureOptions {
            proto: libc::ETH_P_ALL as u16,
            keep: Some(is_announcement),
            realtime: true,
        },
    );
    let killed = Instant::now();
    c.kill_vipd(old);
    let (new, _) = c
        .wait_sole_holder_ips_every(&set, Some(old), Duration::from_secs(60), every)
        .unwrap_or_else(|e| panic!("[{hint}] no takeover: {}", &e[..e.len().min(400)]));
    let held_at = Instant::now();
    let mac = parse_mac(&c.nodes[new].host.mac("eth0")).expect("node MAC");
    let announced = |frames: &[vipd_tests::lab::CapturedFrame]| -> BTreeMap<IpAddr, Instant> {
        let mut first = BTreeMap::new();
        for f in frames.iter().filter(|f| f.at >= killed) {
            for ip in [
                f.arp().map(|a| IpAddr::V4(a.spa)),
                f.ndp().map(|n| IpAddr::V6(n.target)),
            ]
            .into_iter()
            .flatten()
            {
                if set.contains(&ip) && f.announces(ip) == Some(mac) {
                    first.entry(ip).or_insert(f.at);
                }
            }
        }
        first
    };
    // Poll until every VIP was announced or the bound passed.
    let deadline = held_at + bound;
    while Instant::now() < deadline && announced(&capture.frames()).len() < set.len() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let first = announced(&capture.stop());
    let last = first.values().max().map(|t| ms(*t - killed));
    eprintln!(
        "[{hint}] {} took over; it announced {} of {} VIPs, the last {:?} ms after the kill (bound {:?} after holding)",
        c.nodes[new].id,
        first.len(),
        set.len(),
        last,
        bound
    );
    let status = c.status(new);
    let dropped: u64 = status["announcements"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|v| v["dropped"].as_u64())
        .sum();
    eprintln!("[{hint}] announcement frames the new leader dropped unsent: {dropped}");
    let missing: BTreeSet<IpAddr> = set
        .difference(&first.keys().copied().collect())
        .copied()
        .collect();
    (missing, first.len())
}

fn show(missing: &BTreeSet<IpAddr>) -> String {
    let v: Vec<String> = missing.iter().take(12).map(ToString::to_string).collect();
    format!(
        "{}{}",
        v.join(", "),
        if missing.len() > 12 { ", ..." } else { "" }
    )
}

/// 150 IPv4 VIPs (300 frames, both forms, at the default 500 frames/s:
/// 0.6 s of pacing, far longer than one 200 ms lease): every one of them
/// is announced by the new leader within 4 s of its holding them all.
#[test]
fn every_vip_of_150_is_announced_after_a_takeover_under_a_200ms_lease() {
    let _serial = serial();
    let vips = v4_vips(150);
    assert_all_announced_after_takeover(
        "ha-150",
        &vips,
        true,
        (Duration::from_secs(4), Duration::from_millis(10)),
    );
}

/// 1000 VIPs at vipd's DEFAULT session and lease (2 s, renewed every
/// 500 ms) and the default `garp_rate` (500 frames/s): 150 IPv4 (two frames
/// each) and 850 IPv6 (one advertisement each) are 1150 frames, 2.3 s of
/// pacing, longer than the lease the queue started under. Every VIP is
/// announced by the new leader within 15 s of its holding them all (2.3 s
/// of pacing, the sync round that repeats the queue 1 s later, and room for
/// a loaded machine). Not 8192, the XDP maps' capacity: the lab's 8192 would
/// be 8042 IPv6 addresses, and this kernel's cost of adding or renewing an
/// IPv6 address grows with the addresses already there (8042 take about
/// 12 s of kernel CPU to add and 15 s to renew, 1000 about 0.2 s), so no
/// lease holds them; docs/OPERATIONS.md gives the limit.
#[test]
fn every_vip_of_1000_is_announced_after_a_takeover_at_the_default_lease() {
    let _serial = serial();
    let mut vips = v4_vips(150);
    vips.extend(v6_vips(1000 - 150));
    assert_eq!(vips.len(), 1000);
    assert_all_announced_after_takeover(
        "ha-1000",
        &vips,
        false,
        (Duration::from_secs(15), Duration::from_millis(100)),
    );
}
