//! An address another host uses is never taken: before a VIP the cluster
//! never held is first configured, the leader probes the segment (ARP
//! probes from 0.0.0.0, DAD solicitations from ::) and leaves the VIP alone
//! while a host outside the cluster answers; a VIP the cluster held is
//! taken over at once, without a probe; a cluster node's own answer is no
//! conflict. Three vipds at their default settings, a real ZooKeeper, real
//! frames on the lab segment.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use serde_json::Value;
use vipd_tests::{
    cluster::{Cluster, ZkKind, ip_set, monitors, within},
    lab::{ArpFrame, HostIf, NdpFrame},
};

/// One cluster at a time (a ZooKeeper JVM and three vipds each).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The default `--probe-retry`: a freed address is taken within it.
const PROBE_RETRY: Duration = Duration::from_secs(5);

/// The row of `vip` in a node's `vipctl status --json`.
fn row(status: &Value, vip: &str) -> Value {
    status["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["vip"] == vip)
        .cloned()
        .unwrap_or(Value::Null)
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether `f` is an address probe for `ip`: an ARP request from 0.0.0.0,
/// or a DAD solicitation from ::.
fn is_probe_arp(a: &ArpFrame, ip: IpAddr) -> bool {
    a.op == ArpFrame::REQUEST && a.spa == Ipv4Addr::UNSPECIFIED && IpAddr::V4(a.tpa) == ip
}

fn is_probe_ndp(n: &NdpFrame, ip: IpAddr) -> bool {
    n.icmp_type == NdpFrame::SOLICITATION
        && n.src == Ipv6Addr::UNSPECIFIED
        && IpAddr::V6(n.target) == ip
}

/// A client on the segment owns 192.0.2.200 and 2001:db8:0:1::200; the
/// service names them besides 192.0.2.100. The leader holds .100; the
/// other two are added on no node, the leader's status says which MAC
/// answers for them, an observer's neighbour entry keeps the client's MAC.
/// Once the client lets its addresses go, the leader takes them within the
/// re-probe period.
#[test]
fn an_address_another_host_answers_for_is_not_taken_until_it_is_free() {
    let _serial = serial();
    let mut c = Cluster::new("probe-conflict", ZkKind::Standalone, 3);
    c.enable_ipv6();
    let taken = ["192.0.2.200", "2001:db8:0:1::200"];
    c.client.add_addr("eth0", "192.0.2.200/24");
    c.client.add_addr6("eth0", "2001:db8:0:1::200/64");
    let client_mac = c.client.mac_bytes("eth0");
    // Another host that talks to the client's address: its neighbour entry
    // must keep the client's MAC.
    let observer = c.lab.add_host("obs", &[HostIf::on(0, "192.0.2.60/24")]);
    within(Duration::from_secs(5), || {
        observer.has_carrier("eth0") && observer.ping(Ipv4Addr::new(192, 0, 2, 200))
    })
    .expect("the observer reaches the client's address");
    let mon = monitors(&c);
    let free_vip = "192.0.2.100";
    c.vip_ok(&["set", "web", free_vip, taken[0], taken[1]]);
    c.start_all();

    let (leader, _) = c
        .wait_sole_holder_ips(&ip_set(&[free_vip]), None, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("the free VIP: {e}"));
    // The leader's status reports both conflicts, naming the client's MAC.
    let reported = within(Duration::from_secs(10), || {
        let s = c.status(leader);
        taken.iter().all(|v| {
            let r = row(&s, v);
            r["state"] == "address_in_use" && r["in_use_by"] == mac_text(client_mac).as_str()
        })
    });
    // Leave time for a wrong add to show, then look at every node.
    std::thread::sleep(Duration::from_secs(2));
    for (i, m) in mon.iter().enumerate() {
        for v in taken {
            let ip: IpAddr = v.parse().unwrap();
            let changes = m.changes_of(ip);
            assert!(
                changes.is_empty(),
                "{v}, the client's address, was added or removed on {}: {changes:?}",
                c.nodes[i].id
            );
        }
    }
    reported.unwrap_or_else(|e| {
        panic!(
            "the leader's status does not report both conflicts: {e}: {}",
            c.status(leader)["vips"]
        )
    });
    let neigh = observer.neigh(Ipv4Addr::new(192, 0, 2, 200));
    assert_eq!(
        neigh.as_ref().and_then(|n| n.lladdr.clone()),
        Some(mac_text(client_mac)),
        "the observer's neighbour entry for 192.0.2.200: {neigh:?}"
    );
    let metrics_ok = c.status(leader)["probes"]["in_use"].as_u64().unwrap_or(0) >= 2;
    assert!(metrics_ok, "probes counted: {}", c.status(leader)["probes"]);

    // The client lets its addresses go: the leader takes them within the
    // re-probe period (plus a probe and a pass).
    let freed = Instant::now();
    c.client.del_addr("eth0", "192.0.2.200/24");
    c.client
        .ip(&["-6", "addr", "del", "2001:db8:0:1::200/64", "dev", "eth0"]);
    let all = ip_set(&[free_vip, taken[0], taken[1]]);
    let (holder, took) = c
        .wait_sole_holder_ips(&all, None, PROBE_RETRY + Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("the freed addresses were not taken: {e}"));
    assert_eq!(holder, leader);
    eprintln!("freed addresses taken {took:?} after they were freed");
    let s = c.status(leader);
    for v in taken {
        assert_eq!(row(&s, v)["state"], "held", "{}", row(&s, v));
    }
    assert!(freed.elapsed() < PROBE_RETRY + Duration::from_secs(5));
}

/// The first leader probes the VIPs before it adds them (the cluster never
/// held them) and records them in ZooKeeper; killed, the next leader adds
/// them at once: no probe frame for them between the kill and its add.
#[test]
fn a_vip_the_cluster_held_is_taken_over_without_a_probe() {
    let _serial = serial();
    let mut c = Cluster::new("probe-takeover", ZkKind::Standalone, 3);
    c.enable_ipv6();
    let vips = ["192.0.2.100", "2001:db8:0:1::100"];
    let ips: BTreeSet<IpAddr> = ip_set(&vips);
    let cap = c.client.capture("eth0", libc::ETH_P_ALL as u16);
    c.vip_ok(&["set", "web", vips[0], vips[1]]);
    let t0 = Instant::now();
    c.start_all();
    let (first, _) = c
        .wait_sole_holder_ips(&ips, None, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("first leader: {e}"));
    let first_held = Instant::now();
    // Probes seen before the first leader's adds: the cluster never held
    // these VIPs, so they were probed.
    let probes_of = |ip: IpAddr, from: Instant, to: Instant| -> usize {
        let arp = cap
            .arp_frames()
            .into_iter()
            .filter(|(f, a)| f.at >= from && f.at <= to && is_probe_arp(a, ip))
            .count();
        let ndp = cap
            .ndp_frames()
            .into_iter()
            .filter(|(f, n)| f.at >= from && f.at <= to && is_probe_ndp(n, ip))
            .count();
        arp + ndp
    };
    for ip in &ips {
        let n = probes_of(*ip, t0, first_held);
        assert!(
            n >= 1,
            "no address probe for {ip} before the first leader held it"
        );
    }
    // The record is written once the VIPs are held.
    within(Duration::from_secs(5), || {
        c.nodes[first]
            .vipd
            .as_ref()
            .is_some_and(|p| p.stderr().contains("held-VIP record written"))
    })
    .unwrap_or_else(|e| panic!("the held record was never written: {e}"));

    let killed = Instant::now();
    c.kill_vipd(first);
    let (next, took) = c
        .wait_sole_holder_ips(&ips, Some(first), Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("takeover: {e}"));
    // Seen held at `held`: no probe from the kill until 500 ms later.
    let held = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    for ip in &ips {
        let n = probes_of(*ip, killed, held + Duration::from_millis(500));
        assert_eq!(
            n, 0,
            "{ip}: {n} probe frames between the kill and 500 ms after the takeover"
        );
    }
    let s = c.status(next);
    assert_eq!(
        s["probes"]["probed"], 0,
        "the new leader probed: {}",
        s["probes"]
    );
    eprintln!("takeover {took:?} after the kill, without a probe");
}

/// A follower still has the VIPs (leftovers without vipd's mark): its
/// kernel answers the leader's probes from a cluster node's MAC, which is
/// not a conflict. The leader adds them and counts cluster answers.
#[test]
fn a_cluster_nodes_own_answer_is_not_a_conflict() {
    let _serial = serial();
    let mut c = Cluster::new("probe-own", ZkKind::Standalone, 3);
    c.enable_ipv6();
    c.start_all();
    let leader = within(Duration::from_secs(15), || {
        (0..3).any(|i| c.try_status(i).is_some_and(|s| s["role"] == "leader"))
    })
    .map(|_| {
        (0..3)
            .find(|&i| c.status(i)["role"] == "leader")
            .expect("a leader")
    })
    .unwrap_or_else(|e| panic!("no leader: {e}"));
    let follower = (leader + 1) % 3;
    eprintln!(
        "follower {} eth0 {}",
        c.nodes[follower].id,
        c.nodes[follower].host.mac("eth0")
    );
    let vips = ["192.0.2.100", "2001:db8:0:1::100"];
    c.nodes[follower].host.add_addr("eth0", "192.0.2.100/24");
    c.nodes[follower]
        .host
        .add_addr6("eth0", "2001:db8:0:1::100/64");
    // The members' MACs are published once the vipds run.
    c.vip_ok(&["set", "web", vips[0], vips[1]]);
    let held = within(Duration::from_secs(10), || {
        let s = c.status(leader);
        vips.iter().all(|v| row(&s, v)["state"] == "held")
    });
    let s = c.status(leader);
    held.unwrap_or_else(|e| panic!("the leader did not add the VIPs: {e}: {}", s["vips"]));
    let answers = s["probes"]["cluster_answers"].as_u64();
    assert_eq!(
        answers,
        Some(2),
        "the follower's answers were not seen as the cluster's: {}",
        s["probes"]
    );
    assert_eq!(s["probes"]["in_use"], 0, "{}", s["probes"]);
    let log = c.nodes[leader].vipd.as_ref().unwrap().stderr();
    assert!(
        log.contains("answered by a cluster node"),
        "no log line for the cluster's own answer"
    );
}
