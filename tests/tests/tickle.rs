//! Connections follow the VIP: the sock_diag dump and abort of a VIP's TCP
//! sockets, the tickle ACK, and their use by vipd at a move.

use std::{
    collections::BTreeSet,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use socket2::{Domain, Socket, Type};
use vipd::net::sockdiag::{CONNECTED, ESTABLISHED, SockDiag};
use vipd_tests::lab::{in_new_netns, ip_here, require_root};

/// A small generator for drawn cases; the seed is printed so a failure
/// can be replayed.
struct Draw(u64);

impl Draw {
    fn new() -> Draw {
        let seed = std::env::var("TICKLE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .expect("clock after 1970")
                    .as_nanos() as u64
            });
        eprintln!("TICKLE_SEED={seed}");
        Draw(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

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
}

#[test]
fn sock_diag_lists_and_aborts_only_the_vips_connections() {
    require_root();
    let mut draw = Draw::new();
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

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
