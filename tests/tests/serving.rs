//! Serving (health checks, link state, drain, the hook) in a real cluster: ZooKeeper on the
//! management bridge (eth1), the VIPs on the data bridge (eth0), so a fault
//! on the data side leaves every ZooKeeper session healthy. Each test records
//! every node's address events (netlink, one monotonic clock), asserts that
//! no VIP was ever on two nodes at once, and prints the times it measured.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use vipd_tests::cluster::{
    Cluster, ZkKind, assert_no_overlap, handover_times, leader_of, monitors, ms, vip_set, within,
};

const WEB: [&str; 2] = ["192.0.2.100", "192.0.2.101"];
/// The port every node serves on its data side (the "service" behind the VIP).
const PORT: u16 = 8080;

/// One cluster at a time (a ZooKeeper JVM and three vipds each).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `n` nodes serving WEB with `extra` flags, and the first leader.
fn cluster(hint: &str, n: usize, extra: &[&str]) -> (Cluster, BTreeSet<Ipv4Addr>, usize) {
    let mut c = Cluster::new(hint, ZkKind::Standalone, n);
    c.vip_ok(&["set", "web", WEB[0], WEB[1]]);
    c.start_all_with(vipd_tests::cluster::SESSION_TIMEOUT, extra);
    let vips = vip_set(&WEB);
    let leader = c.first_leader(hint, &vips);
    (c, vips, leader)
}

/// The latest add of a handover (ms after its start), from
/// [`handover_times`].
fn latest_add(times: &[(f64, f64)]) -> f64 {
    times
        .iter()
        .fold(0.0, |last, &(_, add)| f64::max(last, add))
}

/// The client reaches a VIP's service on node `want` within `timeout`.
fn served_by(c: &Cluster, vip: Ipv4Addr, want: usize, timeout: Duration, what: &str) {
    let banner = format!("served-by {}", c.nodes[want].host.name());
    let mut last = None;
    within(timeout, || {
        last = c.client.tcp_probe(vip, PORT, Duration::from_millis(300));
        last.as_deref().is_some_and(|b| b.contains(&banner))
    })
    .unwrap_or_else(|e| {
        panic!("{what}: the client never reached {banner} at {vip}: {e}; last {last:?}")
    });
}

/// The leader's data link loses carrier (its ZooKeeper link stays up).
/// After the grace it hands over; the client is served by the new leader;
/// with the link back, the old leader stands again without taking over.
#[test]
fn leader_data_link_lost_hands_over_after_the_grace() {
    let _serial = serial();
    let (c, vips, old) = cluster("sv-link", 3, &["--link-grace", "200ms"]);
    let servers: Vec<_> = c
        .nodes
        .iter()
        .map(|n| n.host.tcp_echo_server(Ipv4Addr::UNSPECIFIED, PORT))
        .collect();
    let vip = *vips.iter().next().unwrap();
    served_by(&c, vip, old, Duration::from_secs(5), "sv-link before");
    let mons = monitors(&c);
    let initial = c.holdings(&vips);
    let host = c.nodes[old].host.clone();
    let cut = Instant::now();
    c.lab.cut_peer(&host, "eth0");
    let (new, _) = c
        .wait_sole_holder(&vips, Some(old), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("sv-link: no takeover: {e}"));
    std::thread::sleep(Duration::from_millis(300));
    let times = handover_times(&c, &mons, &vips, old, new, cut, "sv-link");
    let took = latest_add(&times);
    assert_no_overlap(&c, &mons, &vips, &initial, cut, "sv-link");
    eprintln!(
        "[sv-link] carrier lost on {} eth0: {} holds the VIPs {took:.0} ms after the cut (grace 200 ms)",
        c.nodes[old].id, c.nodes[new].id
    );
    let served_at = Instant::now();
    served_by(&c, vip, new, Duration::from_secs(5), "sv-link after");
    eprintln!(
        "[sv-link] client served by {} {:.0} ms after the cut",
        c.nodes[new].id,
        ms(served_at.elapsed() + (served_at - cut))
    );
    let s = c.status(old);
    assert!(
        s["zookeeper"]["withdrawn"]
            .as_str()
            .is_some_and(|w| w.contains("eth0")),
        "{s:#}"
    );
    assert_eq!(s["links"]["down"][0], "eth0", "{s:#}");
    // Back: stands again (a new candidacy, last in line), no preemption.
    let mons = monitors(&c);
    let initial = c.holdings(&vips);
    let back = Instant::now();
    c.lab.restore_peer(&host, "eth0");
    within(Duration::from_secs(5), || {
        c.try_status(old).is_some_and(|s| {
            s["zookeeper"]["withdrawn"].is_null() && s["links"]["down"] == serde_json::json!([])
        })
    })
    .unwrap_or_else(|e| panic!("sv-link: the old leader never stood again: {e}"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.sole_holder(&vips),
        Some(new),
        "sv-link: preempted after the link came back"
    );
    assert_no_overlap(&c, &mons, &vips, &initial, back, "sv-link back");
    assert_eq!(
        leader_of(&c.status(old)).as_deref(),
        Some(c.nodes[new].id.as_str())
    );
    drop(servers);
}

/// A flap shorter than the grace moves nothing.
#[test]
fn a_flap_shorter_than_the_grace_moves_nothing() {
    let _serial = serial();
    let (c, vips, old) = cluster("sv-flap", 2, &["--link-grace", "1s"]);
    let host = c.nodes[old].host.clone();
    c.lab.cut_peer(&host, "eth0");
    std::thread::sleep(Duration::from_millis(300));
    c.lab.restore_peer(&host, "eth0");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.sole_holder(&vips), Some(old), "{:?}", c.holdings(&vips));
    assert!(c.status(old)["zookeeper"]["withdrawn"].is_null());
}

/// The leader's service dies (a `tcp:` check fails): it hands over;
/// when the service is back it stands again but does not take the VIPs
/// back from the healthy leader.
#[test]
fn failing_tcp_check_hands_over_and_recovery_does_not_preempt() {
    let _serial = serial();
    let check = format!("tcp:127.0.0.1:{PORT}");
    let flags = [
        "--check",
        &check,
        "--check-interval",
        "200ms",
        "--check-timeout",
        "200ms",
        "--check-fall",
        "2",
        "--check-rise",
        "2",
    ];
    let mut c = Cluster::new("sv-tcp", ZkKind::Standalone, 3);
    c.vip_ok(&["set", "web", WEB[0], WEB[1]]);
    let mut servers: Vec<_> = c
        .nodes
        .iter()
        .map(|n| Some(n.host.tcp_echo_server(Ipv4Addr::UNSPECIFIED, PORT)))
        .collect();
    c.start_all_with(vipd_tests::cluster::SESSION_TIMEOUT, &flags);
    let vips = vip_set(&WEB);
    let (old, _) = c
        .wait_sole_holder(&vips, None, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("sv-tcp first election: {e}"));
    std::thread::sleep(Duration::from_millis(500));
    let s = c.status(old);
    assert_eq!(s["health"]["healthy"], true, "{s:#}");
    let mons = monitors(&c);
    let initial = c.holdings(&vips);
    let killed = Instant::now();
    servers[old] = None;
    let (new, _) = c
        .wait_sole_holder(&vips, Some(old), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("sv-tcp: no takeover: {e}"));
    std::thread::sleep(Duration::from_millis(300));
    let times = handover_times(&c, &mons, &vips, old, new, killed, "sv-tcp");
    let took = latest_add(&times);
    assert_no_overlap(&c, &mons, &vips, &initial, killed, "sv-tcp");
    eprintln!(
        "[sv-tcp] service killed on {}: {} holds the VIPs {took:.0} ms later (interval 200 ms, fall 2)",
        c.nodes[old].id, c.nodes[new].id
    );
    let s = c.status(old);
    assert_eq!(s["health"]["healthy"], false, "{s:#}");
    assert!(
        s["zookeeper"]["withdrawn"]
            .as_str()
            .is_some_and(|w| w.contains(&check)),
        "{s:#}"
    );
    let text = c.vipctl_on(
        old,
        &[
            "status",
            "--api-socket",
            &c.nodes[old].socket.display().to_string(),
        ],
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("health UNHEALTHY") && text.contains(&check),
        "{text}"
    );
    // Recovery: healthy again, stands again, no preemption.
    let mons = monitors(&c);
    let initial = c.holdings(&vips);
    let back = Instant::now();
    servers[old] = Some(
        c.nodes[old]
            .host
            .tcp_echo_server(Ipv4Addr::UNSPECIFIED, PORT),
    );
    within(Duration::from_secs(5), || {
        c.try_status(old).is_some_and(|s| {
            s["health"]["healthy"] == true && s["zookeeper"]["withdrawn"].is_null()
        })
    })
    .unwrap_or_else(|e| panic!("sv-tcp: the old leader never stood again: {e}"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.sole_holder(&vips), Some(new), "sv-tcp: preempted");
    assert_no_overlap(&c, &mons, &vips, &initial, back, "sv-tcp back");
}

/// A check that hangs fails at its timeout; vipctl status answers at
/// once meanwhile, and the node does not stand.
#[test]
fn hanging_exec_check_fails_at_its_timeout_and_status_still_answers() {
    let _serial = serial();
    let mut c = Cluster::new("sv-hang", ZkKind::Standalone, 1);
    c.vip_ok(&["set", "web", WEB[0]]);
    let started = Instant::now();
    c.start_all_with(
        vipd_tests::cluster::SESSION_TIMEOUT,
        &[
            "--check",
            "exec:/bin/sleep 30",
            "--check-timeout",
            "500ms",
            "--check-interval",
            "1s",
        ],
    );
    let socket = c.nodes[0].socket.display().to_string();
    let mut slowest = Duration::ZERO;
    let unhealthy = within(Duration::from_secs(5), || {
        let t = Instant::now();
        let out = c.vipctl_on(0, &["status", "--json", "--api-socket", &socket]);
        slowest = slowest.max(t.elapsed());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["health"]["checks"][0]["healthy"] == false
    })
    .unwrap_or_else(|e| panic!("sv-hang: never unhealthy: {e}"));
    let s = c.status(0);
    eprintln!(
        "[sv-hang] unhealthy {:.0} ms after vipd answered ({:.0} ms after start; timeout 500 ms); slowest vipctl status {:.0} ms",
        ms(unhealthy),
        ms(started.elapsed()),
        ms(slowest)
    );
    assert!(
        s["health"]["checks"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no answer within 500ms")),
        "{s:#}"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "vipctl status took {slowest:?}"
    );
    assert_eq!(s["role"], "follower", "{s:#}");
    assert!(c.held(0, &vip_set(&WEB[..1])).is_empty());
}

/// The hook sees the leader's term and its end in order (SIGTERM of
/// the leader, a planned move: zero overlap, the gap printed), and the
/// successor's new term.
#[test]
fn hook_sees_transitions_in_order_and_sigterm_moves_without_overlap() {
    let _serial = serial();
    let mut c = Cluster::new("sv-hook", ZkKind::Standalone, 2);
    let dir = c.lab.dir().to_path_buf();
    let hook = dir.join("hook");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$VIPD_ROLE $VIPD_TERM $VIPD_VIPS\" >> {}/hook-$VIPD_NODE.log\n",
            dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    c.vip_ok(&["set", "web", WEB[0], WEB[1]]);
    let hook_s = hook.display().to_string();
    c.start_all_with(
        vipd_tests::cluster::SESSION_TIMEOUT,
        &["--on-change", &hook_s],
    );
    let vips = vip_set(&WEB);
    let (old, _) = c
        .wait_sole_holder(&vips, None, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("sv-hook first election: {e}"));
    std::thread::sleep(Duration::from_millis(500));
    let log = |i: usize| {
        std::fs::read_to_string(dir.join(format!("hook-{}.log", c.nodes[i].id))).unwrap_or_default()
    };
    let mons = monitors(&c);
    let initial = c.holdings(&vips);
    let term = Instant::now();
    c.signal_vipd(old, libc::SIGTERM);
    let new = 1 - old;
    c.wait_sole_holder(&vips, Some(old), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("sv-hook: no takeover after SIGTERM: {e}"));
    std::thread::sleep(Duration::from_millis(500));
    let times = handover_times(&c, &mons, &vips, old, new, term, "sv-hook sigterm");
    let took = latest_add(&times);
    assert_no_overlap(&c, &mons, &vips, &initial, term, "sv-hook sigterm");
    eprintln!("[sv-hook] SIGTERM of the leader: successor holds the VIPs {took:.1} ms later");
    within(Duration::from_secs(5), || {
        log(old)
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("follower"))
    })
    .unwrap_or_else(|e| {
        panic!(
            "sv-hook: the old leader's hook never saw follower: {e}; log {:?}",
            log(old)
        )
    });
    let roles = |text: &str| -> Vec<String> {
        let mut r: Vec<String> = text
            .lines()
            .map(|l| l.split(' ').next().unwrap_or_default().to_string())
            .collect();
        r.dedup();
        r
    };
    let old_log = log(old);
    assert_eq!(roles(&old_log), ["leader", "follower"], "{old_log}");
    // The VIPs are new to the cluster, so the first term may start holding
    // none while they are probed; the leader then holds both.
    let first = old_log
        .lines()
        .find(|l| l.split(' ').nth(2).is_some_and(|v| !v.is_empty()))
        .unwrap_or_default();
    assert!(
        first.starts_with("leader") && first.ends_with("192.0.2.100,192.0.2.101"),
        "{old_log}"
    );
    within(Duration::from_secs(5), || {
        log(new).lines().any(|l| l.starts_with("leader"))
    })
    .unwrap_or_else(|e| {
        panic!(
            "sv-hook: the new leader's hook never saw leader: {e}; {:?}",
            log(new)
        )
    });
    let new_log = log(new);
    let t_old: u64 = first.split(' ').nth(1).unwrap().parse().unwrap();
    let t_new: u64 = new_log
        .lines()
        .find(|l| l.starts_with("leader"))
        .and_then(|l| l.split(' ').nth(1))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        t_new > t_old,
        "terms {t_old} then {t_new}: {old_log} / {new_log}"
    );
    eprintln!("[sv-hook] old leader's hook: {old_log:?}; new leader's: {new_log:?}");
}

/// What `--watch` prints before each frame: clear the screen, cursor home.
const CLEAR_SCREEN: &str = "\x1b[2J\x1b[H";

/// `vipctl <args> --zk .. --cluster ..` on the admin host; panics on failure.
fn admin(c: &Cluster, args: &[&str]) -> String {
    let bin = vipd_tests::lab::vipctl_bin().display().to_string();
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--zk", &c.hosts, "--cluster", &c.cluster]);
    let out = c.admin.exec(&argv);
    assert!(
        out.status.success(),
        "vipctl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Drain moves the VIPs (zero overlap, the gap from both nodes'
/// netlink events), a drained node stays out after a restart, undrain lets
/// it stand again (without preempting), and `handover --to` picks the node.
#[test]
fn drain_undrain_and_handover_move_without_overlap() {
    let _serial = serial();
    let (mut c, vips, old) = cluster("sv-drain", 3, &[]);
    // `node list --watch` redraws the table in place every second, like
    // `arp stats --watch`; it must show the drain below.
    let bin = vipd_tests::lab::vipctl_bin().display().to_string();
    let watch = c.admin.spawn([
        bin.as_str(),
        "node",
        "list",
        "--watch",
        "--zk",
        &c.hosts,
        "--cluster",
        &c.cluster,
    ]);
    within(Duration::from_secs(10), || {
        watch.stdout().matches(CLEAR_SCREEN).count() >= 2
    })
    .unwrap_or_else(|e| panic!("sv-drain: node list --watch redrew less than twice: {e}"));
    let mons = monitors(&c);
    let initial = c.holdings(&vips);
    let at = Instant::now();
    admin(&c, &["node", "drain", &c.nodes[old].id.clone()]);
    let (new, _) = c
        .wait_sole_holder(&vips, Some(old), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("sv-drain: no move: {e}"));
    std::thread::sleep(Duration::from_millis(300));
    let times = handover_times(&c, &mons, &vips, old, new, at, "sv-drain drain");
    let took = latest_add(&times);
    assert_no_overlap(&c, &mons, &vips, &initial, at, "sv-drain drain");
    eprintln!(
        "[sv-drain] drain: {} holds the VIPs {took:.1} ms after vipctl started",
        c.nodes[new].id
    );
    let list: serde_json::Value =
        serde_json::from_str(&admin(&c, &["node", "list", "--json"])).unwrap();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == c.nodes[old].id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["drained"], true, "{list:#}");
    assert_eq!(row["role"], "withdrawn", "{list:#}");
    assert!(row["session"].is_string(), "{list:#}");
    let frames_before = watch.stdout().matches(CLEAR_SCREEN).count();
    let old_id = c.nodes[old].id.clone();
    within(Duration::from_secs(5), || {
        let out = watch.stdout();
        let last = out.rsplit(CLEAR_SCREEN).next().unwrap_or_default();
        out.matches(CLEAR_SCREEN).count() > frames_before
            && last
                .lines()
                .any(|l| l.contains(&old_id) && l.contains("withdrawn") && l.contains("yes"))
    })
    .unwrap_or_else(|e| {
        panic!(
            "sv-drain: node list --watch never redrew with {old_id} drained: {e}\n{:?}",
            watch.stdout()
        )
    });
    let frames = watch.stdout().matches(CLEAR_SCREEN).count();
    assert!(
        watch.is_running(),
        "node list --watch stopped: {}",
        watch.stderr()
    );
    watch.terminate(Duration::from_secs(2));
    eprintln!("[sv-drain] node list --watch drew {frames} frames, each after clearing the screen");
    // A drained node stays out across a restart.
    c.kill_vipd(old);
    c.start_vipd(old);
    within(Duration::from_secs(10), || {
        c.try_status(old).is_some_and(|s| {
            s["zookeeper"]["withdrawn"]
                .as_str()
                .is_some_and(|w| w.contains("drained"))
        })
    })
    .unwrap_or_else(|e| panic!("sv-drain: restarted node not withdrawn: {e}"));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.sole_holder(&vips), Some(new));
    admin(&c, &["node", "undrain", &c.nodes[old].id.clone()]);
    within(Duration::from_secs(5), || {
        c.try_status(old)
            .is_some_and(|s| s["zookeeper"]["withdrawn"].is_null())
    })
    .unwrap_or_else(|e| panic!("sv-drain: undrained node never stood: {e}"));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        c.sole_holder(&vips),
        Some(new),
        "sv-drain: undrain preempted"
    );
    // Handover to a named node: the one last in line (the undrained one).
    let mons = monitors(&c);
    let initial = c.holdings(&vips);
    let at = Instant::now();
    let out = admin(&c, &["handover", "--to", &c.nodes[old].id.clone()]);
    let (to, _) = c
        .wait_sole_holder(&vips, Some(new), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("sv-drain: no handover: {e}"));
    assert_eq!(to, old, "{out}");
    std::thread::sleep(Duration::from_millis(300));
    let times = handover_times(&c, &mons, &vips, new, old, at, "sv-drain handover");
    let took = latest_add(&times);
    assert_no_overlap(&c, &mons, &vips, &initial, at, "sv-drain handover");
    eprintln!("[sv-drain] handover --to: {out:?}, {took:.1} ms after vipctl started");
}
