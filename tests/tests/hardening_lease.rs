//! The lease against what ZooKeeper and the other nodes actually do: a
//! server that grants a shorter session than vipd asked for, and a next in
//! line whose own settings differ from the leader's. Three (or two) vipd
//! processes in lab namespaces, a real ZooKeeper; every node's address
//! events are recorded (netlink, one monotonic clock) and replayed to
//! assert that no VIP was ever on two nodes at once.
//!
//! The fault's moment and kind are drawn from a seed, printed with every
//! run; `HARDENING_LEASE_SEED=<n>` replays one.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use vipd_tests::{
    cluster::{Cluster, ZkKind, assert_no_overlap, leader_of, monitors, ms, vip_set, within},
    draw::Draw,
    zk::ZkOptions,
};

const WEB: [&str; 2] = ["192.0.2.100", "192.0.2.101"];

/// One cluster at a time (a ZooKeeper JVM and its vipds each).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How a node is cut from ZooKeeper (its eth1; the data segment stays).
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// The bridge port detached: carrier kept, nothing arrives.
    Silent,
    /// The bridge port down: the node loses carrier.
    LinkDown,
}

impl Cut {
    fn draw(d: &mut Draw) -> Cut {
        if d.coin() { Cut::Silent } else { Cut::LinkDown }
    }

    fn apply(self, c: &Cluster, node: usize) {
        let host = &c.nodes[node].host;
        match self {
            Cut::Silent => c.lab.isolate(host, "eth1"),
            Cut::LinkDown => c.lab.cut_peer(host, "eth1"),
        }
    }

    fn undo(self, c: &Cluster, node: usize) {
        let host = &c.nodes[node].host;
        match self {
            Cut::Silent => c.lab.rejoin(host, "eth1"),
            Cut::LinkDown => c.lab.restore_peer(host, "eth1"),
        }
    }
}

/// Cuts `old` (which holds `vips`) from ZooKeeper, waits for another node
/// to hold them alone, asserts no VIP was on two nodes from the cut until a
/// while after the takeover, then reconnects `old` and waits until it
/// follows the new leader. Returns the new leader and when it held the
/// VIPs alone, after the cut.
fn cut_and_take_over(
    c: &Cluster,
    vips: &BTreeSet<Ipv4Addr>,
    old: usize,
    cut: Cut,
    within_limit: Duration,
    what: &str,
) -> (usize, Duration) {
    let mons = monitors(c);
    let initial = c.holdings(vips);
    let at = Instant::now();
    cut.apply(c, old);
    let taken = c.wait_sole_holder(vips, Some(old), within_limit);
    // Let a late removal (or a late add) show in the events.
    std::thread::sleep(Duration::from_millis(1500));
    assert_no_overlap(c, &mons, vips, &initial, at, what);
    let (new, took) = taken.unwrap_or_else(|e| panic!("{what}: no node took over: {e}"));
    eprintln!(
        "[{what}] {:?} cut of {}: {} holds the VIPs alone {:.0} ms after it",
        cut,
        c.nodes[old].id,
        c.nodes[new].id,
        ms(took)
    );
    cut.undo(c, old);
    within(Duration::from_secs(15), || {
        c.try_status(old).is_some_and(|s| {
            s["role"] == "follower" && leader_of(&s).as_deref() == Some(c.nodes[new].id.as_str())
        })
    })
    .unwrap_or_else(|e| {
        panic!(
            "{what}: {} never followed after the cut: {e}",
            c.nodes[old].id
        )
    });
    assert_eq!(
        c.sole_holder(vips),
        Some(new),
        "{what}: after the reconnect"
    );
    (new, took)
}

/// A ZooKeeper capped at 1 s sessions (maxSessionTimeout=1000, tickTime
/// 100 ms) and three vipds at their default settings (they ask for 6 s and
/// would lease 2 s). Each leads on the lease the granted session allows
/// and says so in its status; the leader, cut from ZooKeeper at a drawn
/// moment and in a drawn way, loses its VIPs before the next node adds them.
#[test]
fn a_session_shorter_than_asked_shortens_the_lease_and_gives_no_two_holders() {
    let _serial = serial();
    let what = "hl-cap";
    let mut draw = Draw::from_env(what, "HARDENING_LEASE_SEED");
    let granted = Duration::from_millis(1000);
    let opts = ZkOptions {
        tick_time: Some(Duration::from_millis(100)),
        max_session_timeout: Some(granted),
        ..ZkOptions::default()
    };
    let mut c = Cluster::with_zk_options(what, ZkKind::Standalone, 3, &opts);
    c.vip_ok(&["set", "web", WEB[0], WEB[1]]);
    for i in 0..c.nodes.len() {
        c.start_vipd_flags(i, &[]);
    }
    for i in 0..c.nodes.len() {
        c.wait_api(i);
    }
    let vips = vip_set(&WEB);
    let mut leader = c.first_leader(what, &vips);
    for round in 1..=2 {
        // Anywhere in the renewal cycle, and past the first second of a term.
        let wait = draw.duration_below(Duration::from_millis(1500));
        let cut = Cut::draw(&mut draw);
        eprintln!("[{what}] round {round}: cut {cut:?} after {wait:?}");
        std::thread::sleep(wait);
        (leader, _) = cut_and_take_over(
            &c,
            &vips,
            leader,
            cut,
            Duration::from_secs(10),
            &format!("{what} round {round}"),
        );
    }
    // What the operator sees: the lease each node leads on, and why.
    let lease_ms = u64::try_from((granted / 3).as_millis()).expect("small");
    for i in 0..c.nodes.len() {
        let s = c.status(i);
        let zk = &s["zookeeper"];
        assert_eq!(zk["lease_ms"], lease_ms, "{}: {s}", c.nodes[i].id);
        let why = zk["lease_adjusted"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no lease_adjusted in the status: {s}", c.nodes[i].id));
        assert!(
            why.contains("1000 ms") && why.contains("maxSessionTimeout"),
            "{}: {why}",
            c.nodes[i].id
        );
        let socket = c.nodes[i].socket.display().to_string();
        let out = c.vipctl_on(i, &["status", "--api-socket", &socket]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("lease {lease_ms} ms")) && text.contains("maxSessionTimeout"),
            "{}: vipctl status:\n{text}",
            c.nodes[i].id
        );
    }
}

/// A rolling change of settings: the leader at the defaults (a 2 s lease
/// renewed every 500 ms), the next node started with `--session-timeout 1s`
/// (its own lease 333 ms). With no fault the leader keeps its term and the
/// VIPs stay on it alone; cut from ZooKeeper, it loses them before the next
/// node, which waits by the leader's stated lease, adds them.
#[test]
fn a_successor_with_a_shorter_lease_waits_by_the_leaders_lease() {
    let _serial = serial();
    let what = "hl-mix";
    let mut draw = Draw::from_env(what, "HARDENING_LEASE_SEED");
    let mut c = Cluster::new(what, ZkKind::Standalone, 2);
    c.vip_ok(&["set", "web", WEB[0], WEB[1]]);
    c.start_vipd_flags(0, &[]);
    c.wait_api(0);
    let vips = vip_set(&WEB);
    let leader = c.first_leader(what, &vips);
    assert_eq!(leader, 0);
    let term = c.status(0)["zookeeper"]["term"].clone();
    assert!(term.is_u64(), "the leader's term: {term}");

    let mons = monitors(&c);
    let initial = c.holdings(&vips);
    let started = Instant::now();
    c.start_vipd_flags(1, &["--session-timeout", "1s"]);
    c.wait_api(1);
    // The next node reads the leader's lease as soon as it follows; give it
    // at least 6 s (twelve of the leader's renewals, eighteen of its own
    // takeover waits) to do the wrong thing.
    let mut deposed = None;
    let mut samples = 0;
    while started.elapsed() < Duration::from_secs(7) {
        let s = c.status(0);
        samples += 1;
        if s["role"] != "leader" || s["zookeeper"]["term"] != term {
            deposed = Some((ms(started.elapsed()), s));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_no_overlap(&c, &mons, &vips, &initial, started, what);
    if let Some((at, s)) = deposed {
        panic!(
            "{what}: the healthy leader lost its term {term} {at:.0} ms after the next node started: {s}"
        );
    }
    assert_eq!(
        c.sole_holder(&vips),
        Some(0),
        "{what}: after {samples} samples"
    );
    let follower = c.status(1);
    assert_eq!(follower["role"], "follower", "{follower}");
    assert_eq!(
        follower["zookeeper"]["leader"], "n1",
        "the next node follows n1: {follower}"
    );

    // Now a real fault: the leader fences at its own lease's end, and the
    // next node takes over only after the leader's rule (2.6 s), not its own.
    let wait = draw.duration_below(Duration::from_millis(500));
    let cut = Cut::draw(&mut draw);
    eprintln!("[{what}] cut {cut:?} after {wait:?}");
    std::thread::sleep(wait);
    let (new, took) = cut_and_take_over(&c, &vips, 0, cut, Duration::from_secs(10), what);
    assert_eq!(new, 1);
    // The leader's last renewal that reached ZooKeeper was sent at most
    // about 500 ms before the cut (a renewal in flight at the cut may be
    // lost: then at most 1 s), and the next node waits 2.6 s from its
    // first sight of it. By its own 454 ms wait it would have taken over
    // within about 1 s of the cut.
    assert!(
        took >= Duration::from_millis(1500),
        "{what}: the next node took over {:.0} ms after the cut, before the leader's lease could end",
        ms(took)
    );
}
