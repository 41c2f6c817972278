//! The fence on a real cluster: three vipd processes in lab namespaces, a
//! real ZooKeeper, and a client probing every node's MAC with raw ARP
//! requests and TCP SYNs for the VIP (tests/src/probe.rs). A leader frozen
//! (SIGSTOP) past its lease serves nothing from its lease's end on, while
//! its address is still in its kernel, and nothing again once resumed.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use vipd_tests::{
    cluster::{Cluster, ZkKind, vip_set},
    probe::{Observer, Options, Target},
};

const VIP: &str = "192.0.2.100";
const SESSION_TIMEOUT: Duration = Duration::from_secs(1);
/// The lease the nodes run: a SIGSTOPped leader's address (lifetime 1 s)
/// outlives it by most of a second.
const LEASE: Duration = Duration::from_millis(300);
/// Interval between two probe rounds.
const EVERY: Duration = Duration::from_millis(10);
/// A round sent this soon after the latest possible lease end may still
/// have met the lease (a frame in flight, the probe's send time taken
/// around the send).
const TOLERANCE: Duration = Duration::from_millis(5);

/// The leader is frozen past its lease (until another node holds the VIP,
/// and longer than its address's lifetime could keep it), then resumed. Its
/// lease ended at the latest one lease after the freeze: no probe sent
/// later is answered by it (no ARP reply, no SYN-ACK or RST), though its
/// kernel still has the address for a while; it answered before the
/// freeze, so the probe saw it.
#[test]
fn a_frozen_leader_serves_nothing_from_its_lease_end_and_never_again() {
    let mut c = Cluster::new("fence-stop", ZkKind::Standalone, 3);
    c.vip_ok(&["set", "web", VIP]);
    let lease = format!("{}ms", LEASE.as_millis());
    c.start_all_with(SESSION_TIMEOUT, &["--lease", &lease]);
    let vips = vip_set(&[VIP]);
    let old = c.first_leader("fence-stop", &vips);
    let targets: Vec<Target> = c
        .nodes
        .iter()
        .map(|n| Target::new(&n.host, "eth0"))
        .collect();
    let vip: IpAddr = VIP.parse().expect("VIP");
    let opts = Options {
        every: EVERY,
        ..Options::default()
    };
    let observer = Observer::start(&c.client, "eth0", targets, vec![vip], opts);
    std::thread::sleep(Duration::from_millis(500));

    let stopped = Instant::now();
    c.signal_vipd(old, libc::SIGSTOP);
    let waited = c.wait_sole_holder(&vips, Some(old), Duration::from_secs(5));
    // Frozen at least this long: the address's lifetime and the kernel's
    // slack are over by then, whatever the last renewal was.
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(stopped.elapsed()));
    let resumed = Instant::now();
    c.signal_vipd(old, libc::SIGCONT);
    let (new, _) = waited.unwrap_or_else(|e| panic!("no takeover from a frozen leader: {e}"));
    // The resumed node has a while to do the wrong thing.
    std::thread::sleep(Duration::from_secs(2));
    let seen = observer.stop();

    let lease_end = stopped + LEASE + TOLERANCE;
    let by_old = |from: Instant, to: Instant| -> Vec<(u32, f64)> {
        let sent: std::collections::BTreeMap<u32, Instant> =
            seen.rounds.iter().map(|r| (r.seq, r.sent)).collect();
        seen.answers
            .iter()
            .filter(|a| a.node == old)
            .filter_map(|a| Some((a.round, *sent.get(&a.round)?, a.kind)))
            .filter(|(_, at, _)| *at >= from && *at < to)
            .map(|(round, at, _)| {
                (
                    round,
                    at.saturating_duration_since(stopped).as_secs_f64() * 1e3,
                )
            })
            .collect()
    };
    let before = by_old(seen.started, stopped);
    assert!(
        !before.is_empty(),
        "the probe never saw the leader {} serve before the freeze",
        c.nodes[old].id
    );
    let gone = seen
        .addr_changes
        .iter()
        .filter(|ch| ch.node == old && !ch.added && ch.at >= stopped)
        .map(|ch| ch.at)
        .min();
    let after = by_old(lease_end, seen.stopped);
    let shown: Vec<String> = after
        .iter()
        .take(20)
        .map(|(round, ms)| format!("round {round} sent +{ms:.0} ms"))
        .collect();
    assert!(
        after.is_empty(),
        "{} (frozen at +0, lease {} ms, address gone at {:?} ms, resumed at +{:.0} ms) answered {} probes sent after its lease end: {}",
        c.nodes[old].id,
        LEASE.as_millis(),
        gone.map(|g| g.saturating_duration_since(stopped).as_millis()),
        resumed.saturating_duration_since(stopped).as_secs_f64() * 1e3,
        after.len(),
        shown.join(", ")
    );
    // The fence, not the address's going, did it: the address outlived
    // the lease.
    let gone = gone.expect("the old leader's address never left");
    assert!(
        gone > lease_end,
        "the address left {:?} after the freeze, within the lease: nothing to fence",
        gone.saturating_duration_since(stopped)
    );
    eprintln!(
        "[fence-stop] {} frozen {:.0} ms; address gone {:.0} ms after the freeze, no answer after +{} ms; {} holds the VIP",
        c.nodes[old].id,
        resumed.saturating_duration_since(stopped).as_secs_f64() * 1e3,
        gone.saturating_duration_since(stopped).as_secs_f64() * 1e3,
        (LEASE + TOLERANCE).as_millis(),
        c.nodes[new].id
    );
}
