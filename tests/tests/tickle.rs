//! Connections follow the VIP: the sock_diag dump and abort of a VIP's TCP
//! sockets, the tickle ACK, and their use by vipd at a move.

use std::{
    collections::BTreeSet,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use socket2::{Domain, Socket, Type};
use vipd::net::sockdiag::{CONNECTED, ESTABLISHED, SockDiag};
use vipd_tests::{
    cluster::{Cluster, ZkKind, within},
    draw::Draw,
    lab::{CaptureOptions, Host, HostIf, Lab, in_new_netns, ip_here, require_root, vipctl_bin},
    tickle::{Clients, HoldServer, Reset, is_announcement_or_reset},
    vipd::Vipd,
};

/// A connection from `client` (bound to that address) to `server`; returns
/// the client's stream and the server's accepted one.
fn connect(listener: &TcpListener, client: IpAddr, server: SocketAddr) -> (TcpStream, TcpStream) {
    let domain = if server.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, None).expect("client socket");
    s.bind(&SocketAddr::new(client, 0).into())
        .expect("bind client");
    s.connect(&server.into()).expect("connect to the server");
    let c: TcpStream = s.into();
    let (a, _) = listener.accept().expect("accept");
    (c, a)
}

fn listener(addr: SocketAddr) -> TcpListener {
    TcpListener::bind(addr).unwrap_or_else(|e| panic!("listen on {addr}: {e}"))
}

/// The loopback interface with the VIPs, another address of the node, and the
/// clients' addresses (local connections: the server's side has the VIP as
/// its local address, as on a real node).
fn node_addresses() {
    ip_here("link set lo up");
    for a in [
        "192.0.2.10/24",
        "192.0.2.11/24",
        "192.0.2.50/24",
        "192.0.2.51/24",
    ] {
        ip_here(&format!("addr add {a} dev lo"));
    }
    for a in ["2001:db8::10/64", "2001:db8::11/64", "2001:db8::50/64"] {
        ip_here(&format!("addr add {a} dev lo nodad"));
    }
    // The kernel installs an IPv6 address's local route a moment after
    // the address: a connection before it finds no route.
    for a in ["2001:db8::10", "2001:db8::11", "2001:db8::50"] {
        let routed =
            vipd_tests::lab::wait_until(Duration::from_secs(5), Duration::from_millis(1), || {
                !ip_here(&format!("-6 route show table local {a}"))
                    .trim()
                    .is_empty()
            });
        assert!(routed.is_ok(), "no local route for {a}");
    }
}

#[test]
fn sock_diag_lists_and_aborts_only_the_vips_connections() {
    require_root();
    let mut draw = Draw::from_env("tickle", "TICKLE_SEED");
    let (n4, n6, n_mapped, n_other) = (
        1 + draw.below(20) as usize,
        1 + draw.below(20) as usize,
        1 + draw.below(10) as usize,
        1 + draw.below(10) as usize,
    );
    in_new_netns(|| {
        node_addresses();
        let vip4: SocketAddr = "192.0.2.10:80".parse().unwrap();
        let vip6: SocketAddr = "[2001:db8::10]:80".parse().unwrap();
        let other: SocketAddr = "192.0.2.11:80".parse().unwrap();
        let l4 = listener(vip4);
        let l6 = listener(vip6);
        let lo = listener(other);
        // A dual-stack listener: its IPv4 connections are IPv6 sockets.
        let dual = listener("[::]:443".parse().unwrap());
        let mut vip_conns = Vec::new();
        let mut other_conns = Vec::new();
        for _ in 0..n4 {
            vip_conns.push(connect(&l4, "192.0.2.50".parse().unwrap(), vip4));
        }
        for _ in 0..n6 {
            vip_conns.push(connect(&l6, "2001:db8::50".parse().unwrap(), vip6));
        }
        for _ in 0..n_mapped {
            vip_conns.push(connect(
                &dual,
                "192.0.2.51".parse().unwrap(),
                "192.0.2.10:443".parse().unwrap(),
            ));
        }
        for _ in 0..n_other {
            other_conns.push(connect(&lo, "192.0.2.50".parse().unwrap(), other));
        }
        // The IPv6 listener on another address and the mapped connections
        // to the other address are not the VIPs'.
        other_conns.push(connect(
            &dual,
            "192.0.2.50".parse().unwrap(),
            "192.0.2.11:443".parse().unwrap(),
        ));

        let vips: BTreeSet<IpAddr> = [vip4.ip(), vip6.ip()].into();
        let mut diag = SockDiag::open().expect("open sock_diag");
        let found = diag.connections(&vips, ESTABLISHED).expect("dump");
        let found_pairs: BTreeSet<(SocketAddr, SocketAddr)> =
            found.iter().map(|c| (c.local, c.remote)).collect();
        let expected: BTreeSet<(SocketAddr, SocketAddr)> = vip_conns
            .iter()
            .map(|(c, a)| {
                let local = a.local_addr().unwrap();
                let local = SocketAddr::new(unmap(local.ip()), local.port());
                let peer = c.local_addr().unwrap();
                (local, SocketAddr::new(unmap(peer.ip()), peer.port()))
            })
            .collect();
        assert_eq!(
            found_pairs, expected,
            "the dump lists exactly the server sockets on the VIPs ({n4} IPv4, {n6} IPv6, {n_mapped} v4-mapped)"
        );
        assert_eq!(found.len(), expected.len(), "no socket listed twice");

        for conn in &found {
            diag.destroy(conn).expect("destroy");
        }
        // Destroying what is gone is not an error.
        diag.destroy(&found[0]).expect("destroy again");
        for (i, (_client, accepted)) in vip_conns.iter_mut().enumerate() {
            accepted
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut b = [0u8; 1];
            let r = accepted.read(&mut b);
            let kind = r.as_ref().map_err(std::io::Error::kind);
            assert_eq!(
                kind.err(),
                Some(ErrorKind::ConnectionAborted),
                "server socket {i} aborted: read gave {r:?}"
            );
        }
        assert!(
            diag.connections(&vips, CONNECTED).expect("dump").is_empty(),
            "nothing left on the VIPs"
        );
        for (client, accepted) in &mut other_conns {
            client
                .write_all(b"x")
                .expect("other connection still writes");
            let mut b = [0u8; 1];
            accepted
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            accepted
                .read_exact(&mut b)
                .expect("other connection still reads");
        }
        drop(l4);
        drop(l6);
        drop(lo);
        drop(dual);
    });
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

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// How a test moves the VIP away from its holder.
#[derive(Clone, Copy, Debug)]
enum Move {
    /// `vipctl handover`: a planned move.
    Handover,
    /// SIGKILL of the leader's vipd: the next in line takes over at the
    /// lease's end.
    Kill,
}

fn vipctl_admin(c: &Cluster, args: &[&str]) -> String {
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

/// Connections published for `vip` per node `i`'s status (the handoff
/// counters), if it answers.
fn published(c: &Cluster, i: usize, vip: IpAddr) -> Option<u64> {
    let s = c.try_status(i)?;
    s["tcp_handoff"][vip.to_string()]["published"].as_u64()
}

/// A real client with `n` idle connections to the VIP on the leader; the
/// VIP moves (`how`); every connection must fail right after the new
/// holder's announcement reaches the client (the tickle's reset), not by
/// a timer (an idle connection has none: without the tickle it would
/// never fail).
fn connections_fail_right_after_the_move(hint: &str, vip: IpAddr, how: Move, n: usize) {
    require_root();
    let mut c = Cluster::new(hint, ZkKind::Standalone, 2);
    if vip.is_ipv6() {
        c.enable_ipv6();
    }
    c.vip_ok(&["set", "web", &vip.to_string()]);
    c.start_all();
    let vips = BTreeSet::from([vip]);
    let (old, _) = c
        .wait_sole_holder_ips(&vips, None, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("[{hint}] first election: {e}"));
    let new = 1 - old;
    let port = 3260;
    let _servers: Vec<HoldServer> = c
        .nodes
        .iter()
        .map(|node| HoldServer::start(&node.host, vip, port))
        .collect();
    let clients = Clients::connect(&c.client, SocketAddr::new(vip, port), n);
    within(Duration::from_secs(10), || {
        published(&c, old, vip) == Some(n as u64)
    })
    .unwrap_or_else(|e| {
        panic!(
            "[{hint}] the leader never published its {n} connections: {e}; its handoff status: {:?}",
            c.try_status(old).map(|s| s["tcp_handoff"].clone())
        )
    });
    let capture = c.client.capture_with(
        "eth0",
        CaptureOptions {
            proto: libc::ETH_P_ALL as u16,
            keep: Some(is_announcement_or_reset),
            realtime: false,
        },
    );
    let new_mac = c.nodes[new].host.mac_bytes("eth0");
    let old_mac = c.nodes[old].host.mac_bytes("eth0");
    // A planned move publishes once more first: connections opened just
    // before it (after the last periodic publish) are tickled too.
    let late = match how {
        Move::Handover => Some(Clients::connect(&c.client, SocketAddr::new(vip, port), 20)),
        Move::Kill => None,
    };
    let at = Instant::now();
    match how {
        Move::Handover => {
            vipctl_admin(&c, &["handover"]);
        }
        Move::Kill => c.kill_vipd(old),
    }
    c.wait_sole_holder_ips(&vips, Some(old), Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("[{hint}] the VIP never moved: {e}"));
    let failed_now = || {
        let mut f = clients.failed();
        if let Some(l) = &late {
            f.extend(l.failed());
        }
        f
    };
    let all_failed = within(Duration::from_secs(5), || {
        failed_now().iter().all(Option::is_some)
    });
    let frames = capture.stop();
    let announced = frames
        .iter()
        .filter(|f| f.at >= at && !f.outgoing)
        .find(|f| f.announces(vip) == Some(new_mac))
        .map(|f| f.at)
        .unwrap_or_else(|| panic!("[{hint}] no announcement of {vip} from the new holder seen"));
    let failed = failed_now();
    let n = failed.len();
    let left = failed.iter().filter(|f| f.is_none()).count();
    assert!(
        all_failed.is_ok(),
        "[{hint}] {left} of {n} client connections never failed after the move to {}: not tickled",
        c.nodes[new].id
    );
    let times: Vec<Instant> = failed.into_iter().flatten().collect();
    let first = *times.iter().min().unwrap();
    let last = *times.iter().max().unwrap();
    eprintln!(
        "[{hint}] {how:?}: announcement {:.1} ms after the fault; {n} connections failed {:.1} .. {:.1} ms after it",
        ms(announced - at),
        signed_ms(first, announced),
        signed_ms(last, announced),
    );
    // The capture thread stamps a frame when it reads it: allow it 5 ms
    // of lag behind the client's socket.
    assert!(
        first + Duration::from_millis(5) >= announced,
        "[{hint}] a connection failed {:.1} ms before the new holder's announcement: not the tickle",
        signed_ms(first, announced)
    );
    assert!(
        last < announced + Duration::from_secs(1),
        "[{hint}] the last connection failed {:.1} ms after the announcement",
        signed_ms(last, announced)
    );
    // Every connection was reset by the new holder, and the old one sent
    // the client no reset at all (its aborts' resets stay inside it).
    let resets: Vec<Reset> = frames
        .iter()
        .filter(|f| f.at >= at && !f.outgoing)
        .filter_map(|f| Reset::parse(&f.bytes))
        .filter(|r| r.src.ip() == vip && r.src.port() == port)
        .collect();
    let from_old = resets.iter().filter(|r| r.eth_src == old_mac).count();
    assert_eq!(
        from_old, 0,
        "[{hint}] the old holder {} sent the client {from_old} reset(s) from {vip}",
        c.nodes[old].id
    );
    let mut locals: Vec<SocketAddr> = clients.locals.clone();
    if let Some(l) = &late {
        locals.extend(&l.locals);
    }
    let unreset: Vec<&SocketAddr> = locals
        .iter()
        .filter(|l| !resets.iter().any(|r| r.eth_src == new_mac && r.dst == **l))
        .collect();
    assert!(
        unreset.is_empty(),
        "[{hint}] {} of {n} connections saw no reset from the new holder: {:?}",
        unreset.len(),
        &unreset[..unreset.len().min(5)]
    );
    if let Move::Handover = how {
        // The old holder let go of its side.
        let left = within(Duration::from_secs(2), || {
            sockets_on(&c.nodes[old].host, vip) == 0
        });
        assert!(
            left.is_ok(),
            "[{hint}] the old holder still has {} socket(s) on {vip}",
            sockets_on(&c.nodes[old].host, vip)
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn signed_ms(t: Instant, base: Instant) -> f64 {
    if t >= base {
        ms(t - base)
    } else {
        -ms(base - t)
    }
}

#[test]
fn tickle_after_a_handover_resets_every_ipv4_client() {
    let n = 100 + Draw::from_env("tickle", "TICKLE_SEED").below(200) as usize;
    connections_fail_right_after_the_move(
        "tk-ho4",
        "192.0.2.100".parse().unwrap(),
        Move::Handover,
        n,
    );
}

#[test]
fn tickle_after_a_leader_sigkill_resets_every_ipv4_client() {
    let n = 100 + Draw::from_env("tickle", "TICKLE_SEED").below(200) as usize;
    connections_fail_right_after_the_move(
        "tk-kill4",
        "192.0.2.100".parse().unwrap(),
        Move::Kill,
        n,
    );
}

#[test]
fn tickle_after_a_handover_resets_every_ipv6_client() {
    let n = 100 + Draw::from_env("tickle", "TICKLE_SEED").below(200) as usize;
    connections_fail_right_after_the_move(
        "tk-ho6",
        "2001:db8:0:1::100".parse().unwrap(),
        Move::Handover,
        n,
    );
}

#[test]
fn tickle_after_a_leader_sigkill_resets_every_ipv6_client() {
    let n = 100 + Draw::from_env("tickle", "TICKLE_SEED").below(200) as usize;
    connections_fail_right_after_the_move(
        "tk-kill6",
        "2001:db8:0:1::100".parse().unwrap(),
        Move::Kill,
        n,
    );
}

/// The cost the publish interval's default rests on: 1000 VIPs with 10
/// connections each (10,000 of 20,000 sockets in the namespace are the
/// VIPs'), dumped and grouped as the leader does every interval. Asserts
/// the dump finds every one; prints what it took.
#[test]
fn a_dump_of_ten_thousand_connections_on_a_thousand_vips_finds_them_all() {
    require_root();
    in_new_netns(|| {
        ip_here("link set lo up");
        ip_here("addr add 192.0.2.50/32 dev lo");
        let mut batch = String::new();
        let vips: Vec<std::net::Ipv4Addr> = (0..1000u32)
            .map(|i| std::net::Ipv4Addr::from(0xc633_0000 + i + 1)) // 198.51.0.x..
            .collect();
        for v in &vips {
            batch.push_str(&format!("addr add {v}/32 dev lo\n"));
        }
        let file = std::env::temp_dir().join(format!("tickle-addrs-{}", std::process::id()));
        std::fs::write(&file, batch).unwrap();
        ip_here(&format!("-batch {}", file.display()));
        std::fs::remove_file(&file).unwrap();
        // The server's side stays in the accept queue (established
        // sockets all the same): 10,000 descriptors, not 20,000.
        std::fs::write("/proc/sys/net/core/somaxconn", "20000").unwrap();
        let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        l.bind(&"0.0.0.0:80".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        l.listen(20000).unwrap();
        let mut conns = Vec::new();
        for v in &vips {
            for _ in 0..10 {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                s.bind(&"192.0.2.50:0".parse::<SocketAddr>().unwrap().into())
                    .unwrap();
                s.connect(&SocketAddr::new(IpAddr::V4(*v), 80).into())
                    .expect("connect");
                conns.push(s);
            }
        }
        let set: BTreeSet<IpAddr> = vips.iter().map(|v| IpAddr::V4(*v)).collect();
        let mut diag = SockDiag::open().unwrap();
        let mut took = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let found = diag.connections(&set, ESTABLISHED).expect("dump");
            took.push(t.elapsed());
            assert_eq!(found.len(), 10_000, "every connection of every VIP");
        }
        took.sort();
        eprintln!(
            "dump of 10,000 VIP connections among 20,000 sockets: median {:.1} ms (min {:.1}, max {:.1})",
            ms(took[2]),
            ms(took[0]),
            ms(took[4])
        );
        drop(conns);
        drop(l);
    });
}

/// A SIGKILLed vipd leaves its VIP and the services' sessions on it;
/// `vipctl cleanup` removes the address and aborts exactly the sockets on
/// it: a session on the node's own address stays.
#[test]
fn cleanup_after_a_sigkill_aborts_the_sockets_on_the_vip_only() {
    require_root();
    let mut draw = Draw::from_env("tickle cleanup", "TICKLE_SEED");
    let (on_vip, on_own) = (1 + draw.below(30) as usize, 1 + draw.below(10) as usize);
    let lab = Lab::new("tk-clean");
    let n1 = lab.add_host("n1", &[HostIf::on(0, "192.0.2.11/24")]);
    let client = lab.add_host("client", &[HostIf::on(0, "192.0.2.50/24")]);
    let vip: IpAddr = "192.0.2.100".parse().unwrap();
    let own: IpAddr = "192.0.2.11".parse().unwrap();
    let vipd = Vipd::start(&lab, &n1, &vip.to_string(), &[]);
    vipd.wait_held(&[vip]);
    let port = 3260;
    let _server = HoldServer::start(&n1, vip, port);
    let _to_vip = Clients::connect(&client, SocketAddr::new(vip, port), on_vip);
    let _to_own = Clients::connect(&client, SocketAddr::new(own, port), on_own);
    within(Duration::from_secs(5), || {
        sockets_on(&n1, vip) == on_vip && sockets_on(&n1, own) == on_own
    })
    .unwrap_or_else(|e| panic!("the server never accepted every connection: {e}"));
    vipd.stop(libc::SIGKILL, Duration::from_secs(5));
    let out = n1.exec(&[vipctl_bin().into_os_string(), "cleanup".into()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "vipctl cleanup failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = sockets_on(&n1, vip);
    assert_eq!(
        left, 0,
        "{left} of {on_vip} socket(s) on the VIP {vip} left after vipctl cleanup:\n{text}"
    );
    assert_eq!(
        sockets_on(&n1, own),
        on_own,
        "vipctl cleanup touched sockets on the node's own address {own}:\n{text}"
    );
    assert!(
        text.contains(&format!("aborted {on_vip} TCP socket(s) on {vip}")),
        "vipctl cleanup did not say what it aborted:\n{text}"
    );
}
