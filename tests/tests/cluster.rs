//! Cluster integration tests: real vipd processes in lab
//! namespaces against a real ZooKeeper on the management bridge. Each test
//! builds its own lab and ZooKeeper. What is checked is what an operator
//! would see: addresses in each node's namespace (read through netlink),
//! `vipctl status --json`, and a client's TCP connection to the VIP.
//! Address events are recorded per namespace with one monotonic clock, so
//! "the old leader removed the VIP before the new one added it" is measured,
//! not inferred.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use vipd_tests::cluster::{
    Cluster, SESSION_TIMEOUT, ZkKind, gap_ms, leader_of, monitors, ms, timeline, vip_set, within,
};

const WEB: [&str; 2] = ["192.0.2.100", "192.0.2.101"];

/// One cluster at a time: each runs a ZooKeeper JVM (or three) and three
/// vipds, and the timing limits (failover within T + 1 s) are about vipd,
/// not about seven clusters fighting over two cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
const PORT: u16 = 8080;

/// A three-node cluster serving `web` = [.100, .101], with its first leader.
fn web_cluster(hint: &str, kind: ZkKind) -> (Cluster, BTreeSet<Ipv4Addr>, usize) {
    web_cluster_with(hint, kind, |_| {})
}

/// [`web_cluster`] with `prep` run before the vipds start.
fn web_cluster_with(
    hint: &str,
    kind: ZkKind,
    prep: impl FnOnce(&Cluster),
) -> (Cluster, BTreeSet<Ipv4Addr>, usize) {
    let mut c = Cluster::new(hint, kind, 3);
    prep(&c);
    c.vip_ok(&["set", "web", WEB[0], WEB[1]]);
    let start = Instant::now();
    c.start_all();
    let vips = vip_set(&WEB);
    let (leader, _) = c
        .wait_sole_holder(&vips, None, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("first election: {e}"));
    eprintln!(
        "[{hint}] {} holds {vips:?} {:.0} ms after the vipds were started",
        c.nodes[leader].id,
        ms(start.elapsed())
    );
    (c, vips, leader)
}

/// Every node's status agrees that `leader` leads, and only it says "leader".
fn assert_statuses_agree(c: &Cluster, leader: usize, skip: &[usize]) -> Result<(), String> {
    for i in (0..c.nodes.len()).filter(|i| !skip.contains(i)) {
        let s = c
            .try_status(i)
            .ok_or_else(|| format!("{}: no status", c.nodes[i].id))?;
        let want_role = if i == leader { "leader" } else { "follower" };
        if s["role"] != want_role || leader_of(&s).as_deref() != Some(c.nodes[leader].id.as_str()) {
            return Err(format!(
                "{}: role {} leader {:?}, expected role {want_role} leader {}",
                c.nodes[i].id,
                s["role"],
                leader_of(&s),
                c.nodes[leader].id
            ));
        }
    }
    Ok(())
}

#[test]
fn three_nodes_elect_one_holder_and_agree() {
    let _serial = serial();
    let (c, vips, leader) = web_cluster("cl-elect", ZkKind::Standalone);
    // Stays that way, and every status agrees (followers may take a moment
    // to read the leader's znode).
    within(Duration::from_secs(3), || {
        assert_statuses_agree(&c, leader, &[]).is_ok()
    })
    .unwrap_or_else(|e| {
        panic!(
            "statuses never agreed on {}: {e}; last: {:?}",
            c.nodes[leader].id,
            assert_statuses_agree(&c, leader, &[])
        )
    });
    for _ in 0..20 {
        assert_eq!(
            c.sole_holder(&vips),
            Some(leader),
            "holdings {:?}",
            c.holdings(&vips)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = c.status(leader);
    let held: BTreeSet<String> = s["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["state"] == "held" && v["interface"] == "eth0" && v["prefix_len"] == 24)
        .filter_map(|v| v["vip"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        held,
        WEB.iter().map(|s| s.to_string()).collect(),
        "leader status vips: {}",
        s["vips"]
    );
    assert_eq!(s["zookeeper"]["is_leader"], true, "{}", s["zookeeper"]);
}

#[test]
fn killed_leader_fails_over_and_clients_follow() {
    let _serial = serial();
    let (mut c, vips, old) = web_cluster("cl-kill", ZkKind::Standalone);
    let vip: Ipv4Addr = WEB[0].parse().unwrap();
    let _servers: Vec<_> = c
        .nodes
        .iter()
        .map(|n| n.host.tcp_echo_server(vip, PORT))
        .collect();
    // The client talks to the old leader first, so its neighbour entry
    // points at the old MAC and must be corrected by the new leader's GARP.
    let banner = c.client.tcp_probe(vip, PORT, Duration::from_secs(2));
    assert_eq!(
        banner.as_deref(),
        Some(format!("served-by {}\n", c.nodes[old].id).as_str())
    );
    let killed = Instant::now();
    c.kill_vipd(old);
    let cleanup = c.vipctl_on(old, &["cleanup"]);
    assert!(
        cleanup.status.success(),
        "vipctl cleanup: {}",
        String::from_utf8_lossy(&cleanup.stderr)
    );
    assert!(
        c.held(old, &vips).is_empty(),
        "cleanup left {:?} on {}",
        c.held(old, &vips),
        c.nodes[old].id
    );
    let limit = SESSION_TIMEOUT + Duration::from_secs(1);
    let (new, _) = c
        .wait_sole_holder(&vips, Some(old), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("failover after SIGKILL: {e}"));
    let took = killed.elapsed();
    eprintln!(
        "[cl-kill] {} -> {} in {:.0} ms after SIGKILL (limit {limit:?})",
        c.nodes[old].id,
        c.nodes[new].id,
        ms(took)
    );
    assert!(took <= limit, "failover took {took:?}, limit {limit:?}");
    let want = format!("served-by {}\n", c.nodes[new].id);
    let mut last = None;
    let reached = within(Duration::from_secs(3), || {
        last = c.client.tcp_probe(vip, PORT, Duration::from_millis(300));
        last.as_deref() == Some(want.as_str())
    });
    let neigh = c.client.neigh(vip);
    let new_mac = c.nodes[new].host.mac("eth0");
    eprintln!(
        "[cl-kill] client reached the new leader {:.0} ms after it held the VIPs; neighbour {neigh:?}",
        reached.as_ref().map_or(f64::NAN, |d| ms(*d))
    );
    reached.unwrap_or_else(|e| {
        panic!(
            "client never got {want:?} (last {last:?}; neighbour {neigh:?}, new MAC {new_mac}): {e}"
        )
    });
    assert_eq!(neigh.and_then(|n| n.lladdr), Some(new_mac));
    within(Duration::from_secs(3), || {
        assert_statuses_agree(&c, new, &[old]).is_ok()
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", assert_statuses_agree(&c, new, &[old])));
}

#[test]
fn isolated_leader_drops_vips_and_stays_follower_after_restore() {
    let _serial = serial();
    let (c, vips, old) = web_cluster("cl-isolate", ZkKind::Standalone);
    let mons = monitors(&c);
    let initial = c.holdings(&vips);
    let cut = Instant::now();
    let old_host = c.nodes[old].host.clone();
    c.lab.cut_peer(&old_host, "eth0");
    c.lab.cut_peer(&old_host, "eth1");
    let limit = SESSION_TIMEOUT + Duration::from_secs(1);
    let (new, _) = c
        .wait_sole_holder(&vips, Some(old), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("failover after isolating the leader: {e}"));
    let took = cut.elapsed();
    let dropped = vips
        .iter()
        .map(|v| mons[old].first(false, *v, cut))
        .collect::<Option<Vec<_>>>();
    eprintln!(
        "[cl-isolate] {} -> {} in {:.0} ms; old leader removed its VIPs at {:?} ms after the cut",
        c.nodes[old].id,
        c.nodes[new].id,
        ms(took),
        dropped
            .as_ref()
            .map(|d| d.iter().map(|t| ms(*t - cut).round()).collect::<Vec<_>>())
    );
    assert!(took <= limit, "failover took {took:?}, limit {limit:?}");
    assert!(
        c.held(old, &vips).is_empty(),
        "isolated {} still has {:?}",
        c.nodes[old].id,
        c.held(old, &vips)
    );
    c.lab.restore_peer(&old_host, "eth0");
    c.lab.restore_peer(&old_host, "eth1");
    let restored = Instant::now();
    for _ in 0..150 {
        assert_eq!(
            c.sole_holder(&vips),
            Some(new),
            "after restore ({:.0} ms): holdings {:?}",
            ms(restored.elapsed()),
            c.holdings(&vips)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = c.status(old);
    assert_eq!(s["role"], "follower", "old leader after restore: {s}");
    assert_eq!(
        leader_of(&s).as_deref(),
        Some(c.nodes[new].id.as_str()),
        "old leader's view after restore: {}",
        s["zookeeper"]
    );
    let t = timeline(&mons, &vips, &initial, cut, Instant::now());
    eprintln!(
        "[cl-isolate] handovers {:?}, overlaps {:?}",
        t.handovers, t.overlaps
    );
    assert!(
        t.overlaps.is_empty(),
        "two holders at once: {:?}",
        t.overlaps
    );
}

#[test]
fn leader_cut_from_zookeeper_removes_vips_before_the_new_leader_adds_them() {
    let _serial = serial();
    let (c, vips, mut leader) = web_cluster("cl-zkcut", ZkKind::Standalone);
    let mut gaps = Vec::new();
    for round in 1..=3 {
        let mons = monitors(&c);
        let initial = c.holdings(&vips);
        assert_eq!(c.sole_holder(&vips), Some(leader), "round {round} start");
        let old = leader;
        let old_host = c.nodes[old].host.clone();
        let cut = Instant::now();
        c.lab.isolate(&old_host, "eth1");
        let (new, _) = c
            .wait_sole_holder(&vips, Some(old), SESSION_TIMEOUT + Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("round {round}: failover after cutting ZooKeeper: {e}"));
        let took = cut.elapsed();
        // The node keeps its data link: it must have removed the VIPs itself.
        assert!(old_host.has_carrier("eth0"));
        assert!(c.held(old, &vips).is_empty());
        for &vip in &vips {
            let del = mons[old].first(false, vip, cut).unwrap_or_else(|| {
                panic!(
                    "round {round}: no RTM_DELADDR of {vip} in {}",
                    c.nodes[old].id
                )
            });
            let add = mons[new].first(true, vip, cut).unwrap_or_else(|| {
                panic!(
                    "round {round}: no RTM_NEWADDR of {vip} in {}",
                    c.nodes[new].id
                )
            });
            let gap = gap_ms(del, add);
            eprintln!(
                "[cl-zkcut] round {round} {vip}: {} removed at +{:.0} ms, {} added at +{:.0} ms, gap {gap:.1} ms",
                c.nodes[old].id,
                ms(del - cut),
                c.nodes[new].id,
                ms(add - cut)
            );
            gaps.push(gap);
            assert!(
                del < add,
                "round {round} {vip}: new leader added it {:.1} ms BEFORE the old one removed it",
                -gap
            );
        }
        let t = timeline(&mons, &vips, &initial, cut, Instant::now());
        assert!(
            t.overlaps.is_empty(),
            "round {round}: two holders at once: {:?}",
            t.overlaps
        );
        eprintln!("[cl-zkcut] round {round}: failover in {:.0} ms", ms(took));
        c.lab.rejoin(&old_host, "eth1");
        // The old leader comes back as a follower of the new one and does
        // not take the VIPs back.
        let back = within(Duration::from_secs(8), || {
            c.try_status(old).is_some_and(|s| {
                s["role"] == "follower"
                    && s["zookeeper"]["session"] == "connected"
                    && leader_of(&s).as_deref() == Some(c.nodes[new].id.as_str())
            })
        });
        back.unwrap_or_else(|e| {
            panic!(
                "round {round}: {} did not rejoin as follower: {e}; status {:?}",
                c.nodes[old].id,
                c.try_status(old)
            )
        });
        assert_eq!(c.sole_holder(&vips), Some(new), "round {round} end");
        leader = new;
    }
    eprintln!("[cl-zkcut] overlap gaps (ms, positive = no overlap): {gaps:?}");
}

/// Writes `data` into a service znode with the ZooKeeper client, from the
/// admin namespace, with the cluster's credential (as automation has it).
fn write_znode(c: &Cluster, path: &str, data: &[u8]) {
    let hosts = c.hosts.clone();
    let credential = c.admin.zk_credential();
    c.admin.in_netns(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let client = zookeeper_client::Client::connector()
                .with_session_timeout(Duration::from_secs(5))
                .with_auth("digest", credential.as_bytes())
                .connect(&hosts)
                .await
                .unwrap_or_else(|e| panic!("connect {hosts}: {e}"));
            client
                .set_data(path, data, None)
                .await
                .unwrap_or_else(|e| panic!("set_data {path}: {e}"));
        })
    });
}

#[test]
fn vipctl_changes_reach_the_leader_within_a_second_and_bad_data_stays_local() {
    let _serial = serial();
    let mut c = Cluster::new("cl-vipctl", ZkKind::Standalone, 3);
    c.vip_ok(&["set", "web", "192.0.2.100"]);
    c.start_all();
    let all = vip_set(&["192.0.2.100", "192.0.2.101", "192.0.2.102", "192.0.2.110"]);
    let (leader, _) = c
        .wait_sole_holder(&vip_set(&["192.0.2.100"]), None, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("first election: {e}"));
    // Invalid input: exit 2, nothing written.
    let bad = c.vip(&["set", "web", "192.0.2.300"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let steps: [(&[&str], &[&str]); 5] = [
        (&["set", "web", "192.0.2.101"], &["192.0.2.101"]),
        (
            &["add", "web", "192.0.2.102"],
            &["192.0.2.101", "192.0.2.102"],
        ),
        (&["remove", "web", "192.0.2.101"], &["192.0.2.102"]),
        (&["clear", "web"], &[]),
        (
            &["set", "web", "192.0.2.100", "192.0.2.101"],
            &["192.0.2.100", "192.0.2.101"],
        ),
    ];
    let mut report = Vec::new();
    for (args, want) in steps {
        let want = vip_set(want);
        let t0 = Instant::now();
        c.vip_ok(args);
        let cli = t0.elapsed();
        let took = within(Duration::from_secs(3), || c.held(leader, &all) == want)
            .map(|d| cli + d)
            .unwrap_or_else(|e| {
                panic!(
                    "vipctl vip {}: leader holds {:?}, want {want:?}: {e}",
                    args.join(" "),
                    c.held(leader, &all)
                )
            });
        eprintln!(
            "[cl-vipctl] vip {}: vipctl ran {:.0} ms, address changed {:.0} ms after it started",
            args.join(" "),
            ms(cli),
            ms(took)
        );
        report.push((args.join(" "), took));
    }
    c.vip_ok(&["set", "db", "192.0.2.110"]);
    let web = vip_set(&WEB);
    let with_db = vip_set(&[WEB[0], WEB[1], "192.0.2.110"]);
    within(Duration::from_secs(2), || c.held(leader, &all) == with_db)
        .unwrap_or_else(|e| panic!("db added: {e}; held {:?}", c.held(leader, &all)));
    let path = format!("/vipd/{}/services/db", c.cluster);
    write_znode(&c, &path, b"{\"vips\": [\"192.0.2.110\"");
    let seen = within(Duration::from_secs(2), || {
        c.try_status(leader)
            .is_some_and(|s| s["zookeeper"]["services"]["db"]["error"].is_string())
    });
    let s = c.status(leader);
    seen.unwrap_or_else(|e| panic!("no error for service db in status: {e}: {}", s["zookeeper"]));
    assert!(
        s["zookeeper"]["services"]["web"]["error"].is_null(),
        "{}",
        s["zookeeper"]
    );
    eprintln!(
        "[cl-vipctl] bad znode reported: {}",
        s["zookeeper"]["services"]["db"]["error"]
    );
    for _ in 0..100 {
        let held = c.held(leader, &all);
        assert!(
            web.is_subset(&held),
            "bad data in db removed web's VIPs: leader holds {held:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "[cl-vipctl] after the bad write the leader holds {:?} (db's 192.0.2.110 kept: {})",
        c.held(leader, &all),
        c.held(leader, &all)
            .contains(&"192.0.2.110".parse().unwrap())
    );
    for (what, took) in report {
        assert!(
            took <= Duration::from_secs(1),
            "vipctl vip {what}: address changed after {took:?} (limit 1 s)"
        );
    }
}

#[test]
fn ensemble_server_of_the_leader_dies_vips_stay_on_one_node() {
    let _serial = serial();
    // The nodes cannot reach the quorum's leader, so the server the vipd
    // leader talks to is a quorum follower and the surviving two keep
    // serving without a quorum election. (Killing the quorum leader instead
    // leaves no server serving for the quorum's re-election, about 1 s
    // here: the vipd leader then cannot confirm its session, and fencing
    // makes it drop the VIPs for that time; that case is not "exactly one".)
    let mut quorum_leader = None;
    let (c, vips, leader) = web_cluster_with("cl-zkkill", ZkKind::Ensemble, |c| {
        let q = c
            .zk_quorum_leader()
            .unwrap_or_else(|| panic!("no ensemble member reports Mode: leader (srvr)"));
        c.hide_server_from_nodes(q);
        quorum_leader = Some(q);
    });
    let quorum_leader = quorum_leader.expect("set by prep");
    let ip: Ipv4Addr = format!("203.0.113.{}", 11 + leader).parse().unwrap();
    let server = c
        .zk_server_of(ip)
        .unwrap_or_else(|| panic!("no ZooKeeper server lists a connection from {ip} (cons)"));
    eprintln!(
        "[cl-zkkill] leader {} is connected to server {} ({}); quorum leader is server {}",
        c.nodes[leader].id,
        server + 1,
        c.zk.addr(server),
        quorum_leader + 1
    );
    assert_ne!(
        server, quorum_leader,
        "the nodes were not to reach the quorum leader"
    );
    let mons = monitors(&c);
    let initial = c.holdings(&vips);
    let killed = Instant::now();
    // SAFETY: kill(2) on the java process zk.rs spawned for us; its Drop reaps it.
    let rc = unsafe { libc::kill(c.zk.pid(server) as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill ZooKeeper server {}", server + 1);
    let mut bad = Vec::new();
    let mut samples = 0;
    while killed.elapsed() < Duration::from_secs(10) {
        let h = c.holdings(&vips);
        samples += 1;
        if c.sole_holder(&vips).is_none() {
            bad.push((ms(killed.elapsed()).round(), h));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let end = Instant::now();
    let t = timeline(&mons, &vips, &initial, killed, end);
    eprintln!(
        "[cl-zkkill] {samples} samples, {} without exactly one holder: {:?}; events: overlaps {:?}, longest unheld {:?} ms, handovers {:?}",
        bad.len(),
        bad.iter().take(10).collect::<Vec<_>>(),
        t.overlaps,
        t.longest_unheld,
        t.handovers
    );
    assert!(
        t.overlaps.is_empty(),
        "two holders at once: {:?}",
        t.overlaps
    );
    let (now, _) = c
        .wait_sole_holder(&vips, None, Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("did not converge: {e}"));
    within(Duration::from_secs(3), || {
        assert_statuses_agree(&c, now, &[]).is_ok()
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", assert_statuses_agree(&c, now, &[])));
    assert!(
        bad.is_empty(),
        "{} of {samples} samples (every 20 ms) did not have exactly one holder, first: {:?}",
        bad.len(),
        bad.iter().take(5).collect::<Vec<_>>()
    );
}

#[test]
fn ensemble_server_cut_from_its_quorum_leader_fences_before_takeover() {
    let _serial = serial();
    let (c, vips, leader) = web_cluster("cl-zkpart", ZkKind::Ensemble);
    let ip: Ipv4Addr = format!("203.0.113.{}", 11 + leader).parse().unwrap();
    let server = c
        .zk_server_of(ip)
        .unwrap_or_else(|| panic!("no ZooKeeper server lists a connection from {ip} (cons)"));
    eprintln!(
        "[cl-zkpart] leader {} is connected to server {} ({})",
        c.nodes[leader].id,
        server + 1,
        c.zk.addr(server)
    );
    let mons = monitors(&c);
    let initial = c.holdings(&vips);
    let cut = Instant::now();
    // eth0 of a server namespace is its quorum path (br1); its client path
    // (eth1 on br2) to the leader stays up. The leader's routes to the two
    // other servers become blackholes, so the partitioned server is the
    // only ZooKeeper it can talk to: its session must expire in the quorum
    // and the leader must fence itself before that, from its own heartbeat.
    let zk_host = c.zk_hosts[server].clone();
    let leader_host = c.nodes[leader].host.clone();
    c.lab.isolate(&zk_host, "eth0");
    for other in (0..3).filter(|&i| i != server) {
        leader_host.ip(&[
            "route",
            "replace",
            "blackhole",
            &format!("198.51.100.{}/32", 2 + other),
        ]);
    }
    let (now, _) = c
        .wait_sole_holder(
            &vips,
            Some(leader),
            SESSION_TIMEOUT + Duration::from_secs(4),
        )
        .unwrap_or_else(|e| panic!("no takeover after partitioning the leader's server: {e}"));
    let took = cut.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let t = timeline(&mons, &vips, &initial, cut, Instant::now());
    eprintln!(
        "[cl-zkpart] {} -> {} in {:.0} ms; handovers (vip, from, to, gap ms) {:?}; overlaps {:?}",
        c.nodes[leader].id,
        c.nodes[now].id,
        ms(took),
        t.handovers,
        t.overlaps
    );
    assert!(
        t.overlaps.is_empty(),
        "two holders at once: {:?}",
        t.overlaps
    );
    for &vip in &vips {
        let del = mons[leader]
            .first(false, vip, cut)
            .unwrap_or_else(|| panic!("{vip}: no RTM_DELADDR on the old leader"));
        let add = mons[now]
            .first(true, vip, cut)
            .unwrap_or_else(|| panic!("{vip}: no RTM_NEWADDR on the new leader"));
        eprintln!(
            "[cl-zkpart] {vip}: removed +{:.0} ms, added +{:.0} ms, gap {:.1} ms",
            ms(del - cut),
            ms(add - cut),
            gap_ms(del, add)
        );
        assert!(
            del < add,
            "{vip}: added {:.1} ms before it was removed",
            -gap_ms(del, add)
        );
    }
    assert!(c.held(leader, &vips).is_empty());
}
