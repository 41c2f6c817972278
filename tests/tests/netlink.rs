//! The netlink layer against the kernel: dumps, marked VIPs, removal that
//! spares the operator's addresses, the event monitor, promote_secondaries.
//! Privileged: each test runs in a network namespace of its own, unshared by
//! a dedicated thread, which vanishes with that thread.

use std::time::Duration;

use tokio::sync::mpsc;
use vipd::{
    net::{
        AddrState, Address, Placement, Route,
        netlink::{NetError, NetEvent, Netlink, monitor},
        sysctl::enable_promote_secondaries,
    },
    vip::Vip,
};
use vipd_tests::lab::ip_here as ip;

mod own_netns;
use own_netns::{ifindex, in_netns, place, vip};

/// An up interface with carrier: one end of a veth pair (this kernel
/// has no dummy driver), the peer `<name>p` up too. IPv4 only: these are
/// the IPv4 tests, and a fresh interface's IPv6 link-local address would
/// add its own events to the ones they count (tests/tests/ipv6.rs has
/// IPv6's).
fn iface(name: &str) {
    ip(&format!("link add {name} type veth peer name {name}p"));
    for n in [format!("{name}p"), name.to_string()] {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{n}/disable_ipv6"), "1")
            .expect("turning IPv6 off on a test interface");
        ip(&format!("link set {n} up"));
    }
}

fn addr(ifindex: u32, a: &str, prefix_len: u8, owned: bool) -> Address {
    Address {
        ifindex,
        addr: a.parse().unwrap(),
        prefix_len,
        owned,
        state: AddrState::Usable,
        secondary: false,
    }
}

/// `a` as a secondary: another address of its subnet came first.
fn secondary(a: Address) -> Address {
    Address {
        secondary: true,
        ..a
    }
}

/// IPv4 addresses on the given interfaces, in dump order (IPv6 has its
/// own tests, in tests/tests/ipv6.rs).
async fn addresses_on(nl: &Netlink, ifindexes: &[u32]) -> Vec<Address> {
    nl.addresses()
        .await
        .unwrap()
        .into_iter()
        .filter(|a| ifindexes.contains(&a.ifindex) && a.addr.is_ipv4())
        .collect()
}

/// Interface d0 with the operator's 192.0.2.1/24, and the VIP
/// 192.0.2.100 with its placement there (not added yet).
async fn d0_and_its_vip() -> (Netlink, u32, Vip, Placement) {
    iface("d0");
    ip("addr add 192.0.2.1/24 dev d0");
    let nl = Netlink::new().unwrap();
    let d0 = ifindex(&nl, "d0").await;
    let v = vip("192.0.2.100");
    let placement = place(&nl, v).await;
    (nl, d0, v, placement)
}

/// Waits up to `within` for `want`, skipping other events.
async fn expect_event(rx: &mut mpsc::Receiver<NetEvent>, want: NetEvent, within: Duration) {
    let found = tokio::time::timeout(within, async {
        while let Some(event) = rx.recv().await {
            if event == want {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no {want:?} event within {within:?}");
}

fn read_promote(ifname: &str) -> String {
    std::fs::read_to_string(format!(
        "/proc/sys/net/ipv4/conf/{ifname}/promote_secondaries"
    ))
    .unwrap()
    .trim()
    .to_string()
}

/// Turns promotion off for `ifname` and "all" (the kernel ORs them), as
/// a namespace may inherit systemd's `promote_secondaries = 1`.
fn disable_promote(ifname: &str) {
    for name in ["all", ifname] {
        std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{name}/promote_secondaries"),
            "0",
        )
        .unwrap();
    }
}

#[test]
fn dumps_report_what_ip_set_up() {
    in_netns(|| async {
        iface("d0");
        ip("link set d0 address 02:00:00:00:00:01");
        ip("addr add 192.0.2.1/24 dev d0");
        ip("addr add 192.0.2.2/24 dev d0"); // secondary
        iface("d1");
        ip("addr add 198.51.100.1/24 dev d1");
        ip("route add default dev d1");
        ip("route add 203.0.113.128/25 dev d0 metric 50");
        ip("route add blackhole 203.0.113.64/26");
        ip("route add 203.0.113.0/24 dev d0 table 100");
        ip("link add d2 type veth peer name d2p"); // stays down

        let nl = Netlink::new().unwrap();
        let snap = nl.snapshot().await.unwrap();
        let by_name = |n: &str| snap.links.iter().find(|l| l.name == n).unwrap().clone();
        let (d0, d1, d2) = (by_name("d0"), by_name("d1"), by_name("d2"));
        assert!(d0.up && d1.up && !d2.up, "{:?}", snap.links);
        assert_eq!(d0.mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(snap.link(d0.ifindex), Some(&d0));
        assert_eq!(by_name("lo").mac, [0; 6]);

        let route = |dst: &str, prefix_len, ifindex, metric| Route {
            dst: dst.parse().unwrap(),
            prefix_len,
            ifindex,
            gateway: None,
            metric,
        };
        let mut routes: Vec<Route> = snap
            .routes
            .routes
            .iter()
            .filter(|r| r.dst.is_ipv4())
            .cloned()
            .collect();
        routes.sort_by_key(|r| (r.dst, r.prefix_len));
        assert_eq!(
            routes,
            vec![
                route("0.0.0.0", 0, d1.ifindex, 0),
                route("192.0.2.0", 24, d0.ifindex, 0),
                route("198.51.100.0", 24, d1.ifindex, 0),
                route("203.0.113.128", 25, d0.ifindex, 50),
            ],
            "main-table unicast routes only (no table 100, no blackhole, no local)"
        );

        assert_eq!(
            addresses_on(&nl, &[d0.ifindex, d1.ifindex]).await,
            vec![
                addr(d0.ifindex, "192.0.2.1", 24, false),
                secondary(addr(d0.ifindex, "192.0.2.2", 24, false)),
                addr(d1.ifindex, "198.51.100.1", 24, false),
            ]
        );
        assert_eq!(snap.addresses, nl.addresses().await.unwrap());

        // Concurrent callers (clones share the socket) take turns
        // instead of getting EBUSY.
        let other = nl.clone();
        let (a, b, c) = tokio::join!(nl.routes(), other.links(), nl.addresses());
        assert_eq!(a.unwrap(), snap.routes);
        assert_eq!(b.unwrap(), snap.links);
        assert_eq!(c.unwrap(), snap.addresses);
    });
}

#[test]
fn add_vip_marks_it_and_is_idempotent() {
    in_netns(|| async {
        let (nl, d0, v, placement) = d0_and_its_vip().await;
        assert_eq!(
            placement,
            Placement {
                ifindex: d0,
                prefix_len: 24
            }
        );

        nl.add_vip(v, placement).await.unwrap();
        nl.add_vip(v, placement).await.unwrap();

        assert_eq!(
            addresses_on(&nl, &[d0]).await,
            vec![
                addr(d0, "192.0.2.1", 24, false),
                secondary(addr(d0, "192.0.2.100", 24, true))
            ]
        );
        let shown = ip("-4 addr show dev d0");
        let line = shown
            .lines()
            .find(|l| l.contains("192.0.2.100/24"))
            .unwrap_or_else(|| panic!("ip addr does not show the VIP:\n{shown}"));
        assert!(!line.contains("brd"), "VIP added with a broadcast: {line}");
    });
}

#[test]
fn remove_vip_only_removes_marked_addresses() {
    in_netns(|| async {
        iface("d0");
        ip("addr add 192.0.2.1/24 dev d0");
        ip("addr add 192.0.2.50/24 dev d0"); // the operator's, equal to a VIP
        let nl = Netlink::new().unwrap();
        let d0 = ifindex(&nl, "d0").await;

        let operator = secondary(addr(d0, "192.0.2.50", 24, false));
        assert!(matches!(
            nl.remove_vip(&operator).await,
            Err(NetError::NotOwned { .. })
        ));
        // A caller with a stale or wrong idea of ownership is stopped
        // by the fresh dump.
        let forged = Address {
            owned: true,
            ..operator.clone()
        };
        assert!(matches!(
            nl.remove_vip(&forged).await,
            Err(NetError::NotOwned { .. })
        ));
        assert!(addresses_on(&nl, &[d0]).await.contains(&operator));
        assert!(ip("-4 addr show dev d0").contains("192.0.2.50/24"));

        let v = vip("192.0.2.100");
        nl.add_vip(v, place(&nl, v).await).await.unwrap();
        let marked = secondary(addr(d0, "192.0.2.100", 24, true));
        assert!(addresses_on(&nl, &[d0]).await.contains(&marked));
        nl.remove_vip(&marked).await.unwrap();
        assert_eq!(
            addresses_on(&nl, &[d0]).await,
            vec![addr(d0, "192.0.2.1", 24, false), operator]
        );
        assert!(!ip("-4 addr show dev d0").contains("192.0.2.100"));

        nl.remove_vip(&marked).await.unwrap(); // already gone
    });
}

#[test]
fn remove_all_marked_leaves_operator_addresses() {
    in_netns(|| async {
        iface("d0");
        ip("addr add 192.0.2.1/24 dev d0");
        ip("addr add 192.0.2.50/24 dev d0");
        iface("d1");
        ip("route add 198.51.100.0/24 dev d1");
        let nl = Netlink::new().unwrap();
        let (d0, d1) = (ifindex(&nl, "d0").await, ifindex(&nl, "d1").await);
        for v in ["192.0.2.100", "192.0.2.101", "198.51.100.100"] {
            let v = vip(v);
            nl.add_vip(v, place(&nl, v).await).await.unwrap();
        }
        // Added after the VIP, so the VIP is its subnet's primary: the
        // cleanup must not take this one down with it.
        ip("addr add 198.51.100.1/24 dev d1");
        disable_promote("d1");

        let mut removed = nl.remove_all_marked().await.unwrap();
        removed.sort_by_key(|a| a.addr);
        assert_eq!(
            removed,
            vec![
                secondary(addr(d0, "192.0.2.100", 24, true)),
                secondary(addr(d0, "192.0.2.101", 24, true)),
                addr(d1, "198.51.100.100", 24, true),
            ]
        );
        assert_eq!(
            addresses_on(&nl, &[d0, d1]).await,
            vec![
                addr(d0, "192.0.2.1", 24, false),
                secondary(addr(d0, "192.0.2.50", 24, false)),
                addr(d1, "198.51.100.1", 24, false),
            ]
        );
        assert_eq!(nl.remove_all_marked().await.unwrap(), vec![]);
    });
}

#[test]
fn monitor_reports_address_and_link_changes() {
    in_netns(|| async {
        iface("d0");
        ip("addr add 192.0.2.1/24 dev d0");
        iface("d1");
        let nl = Netlink::new().unwrap();
        let v = vip("192.0.2.100");
        nl.add_vip(v, place(&nl, v).await).await.unwrap();

        let mut events = monitor().unwrap();
        // veth carrier changes reach netlink late (linkwatch): let
        // them pass; no address changed after the subscription.
        let mut late = Vec::new();
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(300), events.recv()).await
        {
            late.push(event);
            assert!(late.len() < 1000, "events keep coming: {late:?}");
        }
        assert!(!late.contains(&NetEvent::Address), "{late:?}");

        ip("addr del 192.0.2.100/24 dev d0");
        expect_event(&mut events, NetEvent::Address, Duration::from_secs(1)).await;
        ip("link set d0 down");
        expect_event(&mut events, NetEvent::Link, Duration::from_secs(1)).await;
        ip("route add 198.51.100.0/24 dev d1");
        expect_event(&mut events, NetEvent::Route, Duration::from_secs(1)).await;
    });
}

/// The lines `ip` prints for one address (the address line and the
/// lifetime line after it).
fn addr_lines(ifname: &str, cidr: &str) -> Option<String> {
    let shown = ip(&format!("-4 addr show dev {ifname}"));
    let lines: Vec<&str> = shown.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.contains(&format!("inet {cidr} ")))?;
    Some(lines[i..(i + 2).min(lines.len())].join("\n"))
}

#[test]
fn lifetimes_are_set_renewed_with_the_mark_and_expire() {
    in_netns(|| async {
        let (nl, d0, v, p) = d0_and_its_vip().await;
        let mut events = monitor().unwrap();
        nl.add_vip_for(v, p, Some(3)).await.unwrap();
        let shown = addr_lines("d0", "192.0.2.100/24").expect("VIP shown");
        assert!(
            shown.contains("dynamic") && shown.contains("valid_lft 3sec preferred_lft 3sec"),
            "{shown}"
        );
        expect_event(&mut events, NetEvent::OwnAddress, Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        nl.renew_vip(v, p, 3).await.unwrap();
        let shown = addr_lines("d0", "192.0.2.100/24").expect("VIP shown");
        assert!(shown.contains("valid_lft 3sec"), "renewed: {shown}");
        assert!(
            addresses_on(&nl, &[d0])
                .await
                .contains(&secondary(addr(d0, "192.0.2.100", 24, true))),
            "the renewal kept vipd's mark"
        );
        // A renewal is vipd's own event, never a plain Address one.
        let mut seen = Vec::new();
        while let Ok(Some(e)) =
            tokio::time::timeout(Duration::from_millis(200), events.recv()).await
        {
            seen.push(e);
        }
        assert!(seen.contains(&NetEvent::OwnAddress), "{seen:?}");
        assert!(!seen.contains(&NetEvent::Address), "{seen:?}");
        // Left alone, it leaves by itself.
        nl.renew_vip(v, p, 1).await.unwrap();
        let renewed = std::time::Instant::now();
        expect_event(&mut events, NetEvent::Address, Duration::from_secs(3)).await;
        let gone = renewed.elapsed();
        assert!(addr_lines("d0", "192.0.2.100/24").is_none());
        assert!(gone >= Duration::from_millis(900), "gone after {gone:?}");
        eprintln!("a VIP with valid_lft 1 was gone {gone:?} after its last renewal");
    });
}

#[test]
fn promote_secondaries_keeps_the_operators_address() {
    in_netns(|| async {
        // The hazard first: with the default, deleting the primary VIP
        // takes the operator's secondary with it.
        iface("d1");
        ip("route add 198.51.100.0/24 dev d1");
        disable_promote("d1");
        let nl = Netlink::new().unwrap();
        let d1 = ifindex(&nl, "d1").await;
        let v = vip("198.51.100.100");
        nl.add_vip(v, place(&nl, v).await).await.unwrap();
        ip("addr add 198.51.100.1/24 dev d1");
        ip("addr del 198.51.100.100/24 dev d1");
        assert_eq!(addresses_on(&nl, &[d1]).await, vec![]);

        iface("d0");
        ip("route add 192.0.2.0/24 dev d0");
        let d0 = ifindex(&nl, "d0").await;
        let v = vip("192.0.2.100");
        nl.add_vip(v, place(&nl, v).await).await.unwrap();
        ip("addr add 192.0.2.1/24 dev d0");
        disable_promote("d0");
        enable_promote_secondaries("d0").unwrap();
        assert_eq!(read_promote("d0"), "1");
        nl.remove_vip(&addr(d0, "192.0.2.100", 24, true))
            .await
            .unwrap();
        assert_eq!(
            addresses_on(&nl, &[d0]).await,
            vec![addr(d0, "192.0.2.1", 24, false)]
        );
    });
}

#[test]
fn remove_vip_enables_promotion_itself_when_needed() {
    in_netns(|| async {
        iface("d0");
        ip("route add 192.0.2.0/24 dev d0");
        let nl = Netlink::new().unwrap();
        let d0 = ifindex(&nl, "d0").await;
        let v = vip("192.0.2.100");
        nl.add_vip(v, place(&nl, v).await).await.unwrap();
        ip("addr add 192.0.2.1/24 dev d0");
        disable_promote("d0");
        nl.remove_vip(&addr(d0, "192.0.2.100", 24, true))
            .await
            .unwrap();
        assert_eq!(read_promote("d0"), "1");
        assert_eq!(
            addresses_on(&nl, &[d0]).await,
            vec![addr(d0, "192.0.2.1", 24, false)]
        );
    });
}
