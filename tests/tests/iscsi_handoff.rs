//! iSCSI sessions follow the VIP: a real target (tgtd) on two nodes, libiscsi's
//! initiator (iscsi-perf) reading through the VIP on the client, vipd at its
//! defaults. Through a planned handover, a link cut of the holder and a
//! SIGKILL of the leader, each session's connection must break right after
//! the new holder's announcement reaches the client (the tickle's reset),
//! and reads must come back without waiting for the initiator's
//! retransmission timer (200 ms at least); a node that let the VIP go keeps
//! no session on it.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use vipd::net::sockdiag::{CONNECTED, ESTABLISHED, SockDiag};
use vipd_tests::{
    cluster::{Cluster, ZkKind, within},
    draw::Draw,
    iscsi::target_connections,
    lab::{CaptureOptions, Host, require_root},
    services::{ISCSI_PORT, IoCompletions, PerfRun, Services},
    tickle::{Reset, is_announcement_or_reset},
};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
/// From the new holder's announcement at the client to each session's
/// reset: a few ms with the tickle; without it the reset waits for the
/// initiator's next retransmission, 200 ms (its minimum timeout) or more.
const BREAK_BOUND: Duration = Duration::from_millis(100);
/// From the announcement to the first read through the new holder: the
/// reset, libiscsi's reconnect and login, under a shared CPU.
const READ_BOUND: Duration = Duration::from_millis(150);

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `vipctl handover`.
    Handover,
    /// The holder's links lose carrier.
    Cut,
    /// SIGKILL of the leader's vipd.
    Kill,
}

fn vipctl_admin(c: &Cluster, args: &[&str]) {
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
}

/// Connections node `i` last published for [`VIP`], per its status.
fn published(c: &Cluster, i: usize) -> u64 {
    c.try_status(i)
        .and_then(|s| s["tcp_handoff"][VIP.to_string()]["published"].as_u64())
        .unwrap_or(0)
}

/// The connected TCP sockets in `host`'s namespace whose local address is
/// `ip` (sock_diag, as vipd sees them).
fn sockets_on(host: &Host, ip: IpAddr) -> usize {
    host.in_netns(|| {
        SockDiag::open()
            .and_then(|mut d| d.connections(&BTreeSet::from([ip]), CONNECTED))
            .map(|v| v.len())
            .unwrap_or_else(|e| panic!("sock_diag in {}: {e}", host.name()))
    })
}

/// The client's established TCP connections to the portal at `portal`,
/// by its local address `client`: one per libiscsi session.
fn initiator_connections(host: &Host, client: Ipv4Addr, portal: Ipv4Addr) -> BTreeSet<SocketAddr> {
    let portal = SocketAddr::new(IpAddr::V4(portal), ISCSI_PORT);
    host.in_netns(|| {
        SockDiag::open()
            .and_then(|mut d| d.connections(&BTreeSet::from([IpAddr::V4(client)]), ESTABLISHED))
            .unwrap_or_else(|e| panic!("sock_diag in {}: {e}", host.name()))
    })
    .into_iter()
    .filter(|c| c.remote == portal)
    .map(|c| c.local)
    .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn session_follows_the_vip(hint: &str, fault: Fault) {
    require_root();
    // One or two sessions (two iscsi-perf initiators), each its own
    // connection to reset.
    let sessions = 1 + Draw::from_env("iscsi handoff", "ISCSI_SEED").below(2) as usize;
    let mut c = Cluster::new(hint, ZkKind::Standalone, 2);
    c.vip_ok(&["set", "storage", &VIP.to_string()]);
    // vipd's own defaults: session timeout, lease, TCP handoff.
    c.start_all_flags(&[]);
    let vips = BTreeSet::from([IpAddr::V4(VIP)]);
    let (old, _) = c
        .wait_sole_holder_ips(&vips, None, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("[{hint}] first election: {e}"));
    let new = 1 - old;
    let services = Services::on_cluster(&c);
    let io = IoCompletions::start(&c.client, "eth0", VIP);
    let perfs: Vec<PerfRun> = (0..sessions)
        .map(|_| PerfRun::start(&c.client, VIP))
        .collect();
    let started = Instant::now();
    for p in &perfs {
        assert!(
            p.wait_reads(started, Duration::from_secs(20)),
            "[{hint}] iscsi-perf read nothing through {VIP}: {}",
            p.process.stdout()
        );
    }
    let conns = initiator_connections(&c.client, CLIENT, VIP);
    assert_eq!(
        conns.len(),
        sessions,
        "[{hint}] the client's connections to {VIP}:{ISCSI_PORT}: {conns:?}"
    );
    // The leader publishes its connections every 2 s: a SIGKILL or a cut
    // before the first publish would leave its successor nothing to
    // tickle. (With the handoff off nothing is published; the wait then
    // just runs out.)
    let _ = within(Duration::from_secs(10), || {
        published(&c, old) >= sessions as u64
    });
    let capture = c.client.capture_with(
        "eth0",
        CaptureOptions {
            proto: libc::ETH_P_ALL as u16,
            keep: Some(is_announcement_or_reset),
            realtime: true,
        },
    );
    let new_mac = c.nodes[new].host.mac_bytes("eth0");
    let at = Instant::now();
    match fault {
        Fault::Handover => vipctl_admin(&c, &["handover"]),
        Fault::Cut => c.lab.cut_peers(&c.nodes[old].host, &["eth0", "eth1"]),
        Fault::Kill => c.kill_vipd(old),
    }
    c.wait_sole_holder_ips(&vips, Some(old), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("[{hint}] the VIP never moved: {e}"));
    let announced = || {
        capture
            .frames()
            .iter()
            .filter(|f| f.at >= at && !f.outgoing)
            .find(|f| f.announces(IpAddr::V4(VIP)) == Some(new_mac))
            .map(|f| f.at)
    };
    // Until reads flow through the new holder (or long past any timer).
    let _ = within(Duration::from_secs(15), || {
        announced().is_some_and(|a| {
            io.last()
                .is_some_and(|l| l > a + Duration::from_millis(200))
        })
    });
    let frames = capture.stop();
    let completions = io.stop();
    let announced = frames
        .iter()
        .filter(|f| f.at >= at && !f.outgoing)
        .find(|f| f.announces(IpAddr::V4(VIP)) == Some(new_mac))
        .map(|f| f.at)
        .unwrap_or_else(|| panic!("[{hint}] no announcement of {VIP} from the new holder seen"));
    let reset_of = |local: &SocketAddr| {
        frames
            .iter()
            .filter(|f| f.at >= at && !f.outgoing)
            .find(|f| {
                Reset::parse(&f.bytes).is_some_and(|r| {
                    r.src == SocketAddr::new(IpAddr::V4(VIP), ISCSI_PORT) && r.dst == *local
                })
            })
            .map(|f| f.at)
    };
    let resets: Vec<(SocketAddr, Option<Instant>)> =
        conns.iter().map(|l| (*l, reset_of(l))).collect();
    let resumed = completions.iter().find(|t| **t > announced).copied();
    let after = |t: Option<Instant>| {
        t.map_or("never".to_string(), |t| {
            if t >= announced {
                format!("{:.1} ms", ms(t - announced))
            } else {
                format!("-{:.1} ms", ms(announced - t))
            }
        })
    };
    eprintln!(
        "[{hint}] {fault:?}, {sessions} session(s): announcement {:.1} ms after the fault; resets {}; first read {} after it",
        ms(announced - at),
        resets
            .iter()
            .map(|(l, t)| format!("{l} {}", after(*t)))
            .collect::<Vec<_>>()
            .join(", "),
        after(resumed),
    );
    for (local, t) in &resets {
        let t = t.unwrap_or_else(|| {
            panic!(
                "[{hint}] the session from {local} was never reset after the move to {}",
                c.nodes[new].id
            )
        });
        assert!(
            t >= announced && t - announced <= BREAK_BOUND,
            "[{hint}] the session from {local} was reset {} after the new holder's announcement, not within {} ms",
            after(Some(t)),
            BREAK_BOUND.as_millis()
        );
    }
    let resumed = resumed.unwrap_or_else(|| panic!("[{hint}] no read after the move"));
    assert!(
        resumed - announced <= READ_BOUND,
        "[{hint}] the first read came {} after the new holder's announcement, not within {} ms",
        after(Some(resumed)),
        READ_BOUND.as_millis()
    );
    if matches!(fault, Fault::Handover | Fault::Cut) {
        // The old holder let go: no socket on the VIP, no connection in
        // its tgtd.
        let old_target = services.target(old);
        let gone = within(Duration::from_secs(3), || {
            sockets_on(&c.nodes[old].host, IpAddr::V4(VIP)) == 0
                && target_connections(old_target).is_empty()
        });
        assert!(
            gone.is_ok(),
            "[{hint}] the old holder {} still has {} socket(s) on {VIP} and its tgtd the connections {:?}",
            c.nodes[old].id,
            sockets_on(&c.nodes[old].host, IpAddr::V4(VIP)),
            target_connections(old_target)
        );
    }
    drop(perfs);
    drop(services);
}

#[test]
fn iscsi_session_follows_a_planned_handover() {
    session_follows_the_vip("is-ho", Fault::Handover);
}

#[test]
fn iscsi_session_follows_a_link_cut_of_the_holder() {
    session_follows_the_vip("is-cut", Fault::Cut);
}

#[test]
fn iscsi_session_follows_a_leader_sigkill() {
    session_follows_the_vip("is-kill", Fault::Kill);
}
