//! Tests of the lab harness itself: the topology carries traffic, the
//! observation tools see it, and a lab leaves nothing behind, also on panic.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vipd_tests::lab::{ArpFrame, HostIf, Lab, fmt_mac, wait_until};

const N1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const N2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);

fn two_hosts(hint: &str) -> (Lab, vipd_tests::lab::Host, vipd_tests::lab::Host) {
    let lab = Lab::new(hint);
    let n1 = lab.add_host(
        "n1",
        &[
            HostIf::on(0, "192.0.2.11/24"),
            HostIf::on(2, "203.0.113.11/24"),
        ],
    );
    let n2 = lab.add_host(
        "n2",
        &[
            HostIf::on(0, "192.0.2.12/24"),
            HostIf::on(2, "203.0.113.12/24"),
        ],
    );
    lab.wait_links(&n1);
    lab.wait_links(&n2);
    (lab, n1, n2)
}

fn netns_names() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn proc_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn hosts_on_one_bridge_ping_each_other() {
    let (lab, n1, n2) = two_hosts("ping");
    assert!(n1.ping(N2), "n1 -> n2 on br0");
    assert!(n2.ping(N1), "n2 -> n1 on br0");
    assert!(n1.ping(Ipv4Addr::new(203, 0, 113, 12)), "n1 -> n2 on br2");
    // Each host only has its own interfaces, and the root namespace has none of them.
    assert_eq!(n1.ipv4_addrs("eth0"), vec![(N1, 24)]);
    assert_eq!(
        n2.ipv4_addrs("eth1"),
        vec![(Ipv4Addr::new(203, 0, 113, 12), 24)]
    );
    let n2_mac = n2.mac("eth0");
    let entry = n1.neigh(N2).expect("n1 learned n2 from the ping");
    assert_eq!(entry.lladdr.as_deref(), Some(n2_mac.as_str()));
    assert_eq!(entry.dev, "eth0");
    assert!(n1.neigh(Ipv4Addr::new(192, 0, 2, 99)).is_none());
    let root = Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&root.stdout).contains(n1.peer_name("eth0")),
        "a veth end leaked into the root namespace"
    );
    drop(lab);
}

#[test]
fn tcp_server_in_one_host_is_reached_from_the_other() {
    let (_lab, n1, n2) = two_hosts("tcp");
    let server = n1.tcp_echo_server(N1, 8080);
    let banner = n2.tcp_probe(N1, 8080, Duration::from_secs(2));
    assert_eq!(banner.as_deref(), Some("served-by n1\n"));
    assert_eq!(server.served(), 1);
    // Nothing listens on n2, and nothing answers once the server is gone.
    assert_eq!(n1.tcp_probe(N2, 8080, Duration::from_millis(500)), None);
    drop(server);
    assert_eq!(n2.tcp_probe(N1, 8080, Duration::from_millis(500)), None);
    // FREEBIND: a server may wait on an address that arrives later (a VIP).
    let vip = Ipv4Addr::new(192, 0, 2, 100);
    let _vip_server = n1.tcp_echo_server(vip, 80);
    assert_eq!(n2.tcp_probe(vip, 80, Duration::from_millis(500)), None);
    n1.add_addr("eth0", "192.0.2.100/32");
    assert_eq!(
        n2.tcp_probe(vip, 80, Duration::from_secs(2)).as_deref(),
        Some("served-by n1\n")
    );
}

#[test]
fn capture_sees_the_arp_request_arping_sends() {
    let (_lab, n1, n2) = two_hosts("arp");
    let capture = n1.capture_arp("eth0");
    let result = n2.arping(N1, 2, "eth0");
    assert_eq!(result.sent, 2, "{}", result.stdout);
    assert_eq!(result.received, 2, "{}", result.stdout);
    let n1_mac = n1.mac("eth0");
    assert_eq!(result.reply_macs, vec![n1_mac.clone(); 2]);

    let n2_mac = n2.mac("eth0");
    let frames = capture.stop();
    let arp: Vec<(bool, ArpFrame)> = frames
        .iter()
        .filter_map(|f| f.arp().map(|a| (f.outgoing, a)))
        .collect();
    let requests: Vec<_> = arp
        .iter()
        .filter(|(out, a)| !out && a.op == ArpFrame::REQUEST && a.tpa == N1)
        .collect();
    assert_eq!(requests.len(), 2, "requests seen on n1: {arp:?}");
    assert!(
        requests
            .iter()
            .all(|(_, a)| fmt_mac(a.sha) == n2_mac && a.spa == N2)
    );
    let replies = arp
        .iter()
        .filter(|(out, a)| *out && a.op == ArpFrame::REPLY && fmt_mac(a.sha) == n1_mac)
        .count();
    assert_eq!(replies, 2, "replies sent by n1: {arp:?}");
    assert!(frames.windows(2).all(|w| w[0].at <= w[1].at));
}

/// The bench's link faults: both of a node's links at once, in one batch.
#[test]
fn cut_peers_and_isolate_all_take_every_named_link() {
    let (lab, n1, n2) = two_hosts("cutall");
    let far = Ipv4Addr::new(203, 0, 113, 11);
    assert!(n2.ping(N1) && n2.ping(far));
    lab.cut_peers(&n1, &["eth0", "eth1"]);
    wait_until(Duration::from_secs(2), Duration::from_millis(10), || {
        !n1.has_carrier("eth0") && !n1.has_carrier("eth1")
    })
    .expect("carrier loss on both links after cut_peers");
    assert!(!n2.ping(N1) && !n2.ping(far));
    lab.restore_peer(&n1, "eth0");
    lab.restore_peer(&n1, "eth1");
    wait_until(Duration::from_secs(3), Duration::from_millis(50), || {
        n2.ping(N1) && n2.ping(far)
    })
    .expect("ping on both links after restore_peer");

    lab.isolate_all(&n1, &["eth0", "eth1"]);
    assert!(n1.has_carrier("eth0") && n1.has_carrier("eth1"));
    assert!(!n2.ping(N1) && !n2.ping(far));
    lab.rejoin(&n1, "eth0");
    // Only the named links: eth1 stays cut off after eth0 rejoins.
    wait_until(Duration::from_secs(3), Duration::from_millis(50), || {
        n2.ping(N1)
    })
    .expect("ping after rejoin");
    assert!(!n2.ping(far), "eth1 still isolated");
}

#[test]
fn cut_peer_gives_carrier_loss_and_isolate_does_not() {
    let (lab, n1, n2) = two_hosts("cut");
    assert!(n1.has_carrier("eth0"));
    lab.cut_peer(&n1, "eth0");
    wait_until(Duration::from_secs(2), Duration::from_millis(10), || {
        !n1.has_carrier("eth0")
    })
    .expect("carrier loss after cut_peer");
    assert!(!n2.ping(N1));
    lab.restore_peer(&n1, "eth0");
    wait_until(Duration::from_secs(3), Duration::from_millis(50), || {
        n2.ping(N1)
    })
    .expect("ping after restore_peer");

    lab.isolate(&n1, "eth0");
    assert!(n1.has_carrier("eth0"), "isolate keeps the carrier");
    assert!(!n2.ping(N1));
    lab.rejoin(&n1, "eth0");
    wait_until(Duration::from_secs(3), Duration::from_millis(50), || {
        n2.ping(N1)
    })
    .expect("ping after rejoin");

    n1.link_down("eth0");
    assert!(!n2.ping(N1));
    assert_eq!(
        n1.ipv4_addrs("eth0"),
        vec![(N1, 24)],
        "link down keeps the address"
    );
    n1.link_up("eth0");
    wait_until(Duration::from_secs(3), Duration::from_millis(50), || {
        n2.ping(N1)
    })
    .expect("ping after link_up");
}

#[test]
fn sysctl_and_sockets_are_per_namespace() {
    let (_lab, n1, n2) = two_hosts("sysctl");
    n1.sysctl("net.ipv4.conf.eth0.arp_ignore", "1");
    assert_eq!(n1.sysctl_get("net.ipv4.conf.eth0.arp_ignore"), "1");
    assert_eq!(n2.sysctl_get("net.ipv4.conf.eth0.arp_ignore"), "0");
    let out = n1.exec_ok(&["cat", "/proc/sys/net/ipv4/conf/eth0/arp_ignore"]);
    assert_eq!(out.trim(), "1");
    // A thread in n2 sees n2's interfaces, not the root namespace's.
    let names =
        n2.in_netns(|| std::fs::read_to_string("/proc/thread-self/net/dev").expect("read net/dev"));
    assert!(
        names.contains("eth1:") && !names.contains("eth2:"),
        "{names}"
    );
}

#[test]
fn processes_log_to_files_and_are_killed() {
    let (lab, n1, _n2) = two_hosts("proc");
    let p = n1.spawn([
        "sh",
        "-c",
        "echo out; echo err >&2; ip -o -4 addr show dev eth0; exec sleep 600",
    ]);
    wait_until(Duration::from_secs(3), Duration::from_millis(20), || {
        p.stdout().contains("192.0.2.11/24")
    })
    .expect("the child runs in n1");
    assert!(p.stdout().starts_with("out\n"));
    assert_eq!(p.stderr(), "err\n");
    assert!(p.stdout_path().starts_with(lab.dir()));
    assert!(p.is_running());
    let status = p.terminate(Duration::from_secs(2));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGTERM)
    );
    assert!(!p.kill(libc::SIGKILL), "no signal to a reaped process");

    // Paths and owned strings work as argv too (vipd_bin() is a PathBuf).
    let argv = vec![
        std::path::PathBuf::from("/bin/sh").into_os_string(),
        "-c".into(),
        "echo $LAB_TEST_VAR; exit 3".into(),
    ];
    let q = n1.spawn_env(argv, &[("LAB_TEST_VAR", "from-env")]);
    let status = q
        .wait_timeout(Duration::from_secs(3))
        .expect("exits by itself");
    assert_eq!(status.code(), Some(3));
    assert_eq!(q.stdout(), "from-env\n");
}

#[test]
fn drop_removes_namespaces_and_processes() {
    let (lab, n1, n2) = two_hosts("drop");
    let prefix = lab.prefix().to_string();
    let dir = lab.dir().to_path_buf();
    let a = n1.spawn(["sleep", "600"]);
    // Ignores SIGTERM: teardown must escalate to SIGKILL.
    let b = n2.spawn(["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"]);
    let ours: Vec<String> = netns_names()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert_eq!(ours.len(), 3, "bridge + 2 hosts: {ours:?}");
    assert!(proc_alive(a.pid()) && proc_alive(b.pid()));
    drop(lab);
    assert!(
        netns_names().iter().all(|n| !n.starts_with(&prefix)),
        "left behind: {:?}",
        netns_names()
    );
    assert!(!proc_alive(a.pid()), "pid {} still there", a.pid());
    assert!(!proc_alive(b.pid()), "pid {} still there", b.pid());
    assert!(!dir.exists(), "{} still there", dir.display());
}

#[test]
fn a_panicking_test_still_cleans_up() {
    let seen = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let (lab, n1, _n2) = two_hosts("panic");
        let p = n1.spawn(["sleep", "600"]);
        *seen.lock().unwrap() = Some((lab.prefix().to_string(), lab.dir().to_path_buf(), p.pid()));
        panic!("deliberate panic with a live lab");
    });
    assert!(result.is_err());
    let (prefix, dir, pid) = seen.into_inner().unwrap().expect("the closure ran");
    assert!(netns_names().iter().all(|n| !n.starts_with(&prefix)));
    assert!(!proc_alive(pid), "pid {pid} survived the panic");
    assert!(!dir.exists());
}
