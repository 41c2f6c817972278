//! IPv6 VIPs against the kernel and on the wire: placement
//! over the IPv6 main table, addresses without DAD and with vipd's mark,
//! the lease's lifetime, `dadfailed` repair, unsolicited Neighbor
//! Advertisements, and a 3-node cluster failing over a v4 and a v6 VIP of
//! one service while a client follows by NDP and TCP.
//!
//! Privileged: the netlink tests run in namespaces of their own (unshared by
//! a dedicated thread); the others in lab namespaces.

use std::{
    future::Future,
    net::{IpAddr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use vipd::{
    announce::{Announcement, Announcer},
    net::{
        AddrState, Address, Placement,
        garp::{GarpMode, GarpSocket},
        netlink::{NetEvent, Netlink, monitor},
    },
    vip::Vip,
};
use vipd_tests::vipd::Vipd;
use vipd_tests::{
    cluster::{Cluster, ZkKind, ip_set, monitors, within},
    lab::{
        AddrMonitor, ArpCapture, Host, HostIf, Lab, NdpFrame, NlAddr6, fmt_mac, ip_here as ip,
        wait_until,
    },
};

mod own_netns;
use own_netns::{ifindex, in_netns, place, vip};

/// vipd's ownership mark (IFA_PROTO), as vipd::net::VIPD_ADDR_PROTO.
const MARK: u8 = vipd::net::VIPD_ADDR_PROTO;

static SERIAL: Mutex<()> = Mutex::new(());

/// One lab test at a time: they measure pacing and takeovers on a small
/// machine.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- netlink, in a namespace of the test's own ----

fn sysctl(key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).unwrap_or_else(|e| panic!("{path}: {e}"));
}

/// An up veth end `name` (peer `<name>p`, up too) with DAD on, as a
/// default kernel has it, so a VIP added without IFA_F_NODAD would show.
fn iface(name: &str) {
    ip(&format!("link add {name} type veth peer name {name}p"));
    for n in [name.to_string(), format!("{name}p")] {
        sysctl(&format!("net.ipv6.conf.{n}.disable_ipv6"), "0");
        sysctl(&format!("net.ipv6.conf.{n}.accept_dad"), "1");
        ip(&format!("link set {n} up"));
    }
}

/// The kernel's view of `addr`, if present.
async fn find(nl: &Netlink, addr: &str) -> Option<Address> {
    let addr: IpAddr = addr.parse().unwrap();
    nl.addresses()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.addr == addr)
}

/// IPv6 routes of the main table as `ip -6 route` prints them.
fn v6_routes() -> Vec<String> {
    ip("-6 route show table main")
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn placement_follows_the_ipv6_main_table() {
    in_netns(|| async {
        iface("d0");
        iface("d1");
        ip("-6 addr add 2001:db8:0:1::1/64 dev d0 nodad");
        ip("-6 route add 2001:db8:0:1:0:1::/96 dev d1");
        ip("-6 route add default via 2001:db8:0:1::fe dev d0");
        let nl = Netlink::new().unwrap();
        let (d0, d1) = (ifindex(&nl, "d0").await, ifindex(&nl, "d1").await);
        let routes = nl.routes().await.unwrap();
        for (v, ifindex, prefix_len) in [
            ("2001:db8:0:1::100", d0, 64),
            ("2001:db8:0:1:0:1::7", d1, 96),
            ("2001:db8:9::9", d0, 128),
        ] {
            assert_eq!(
                routes.placement(vip(v)),
                Some(Placement {
                    ifindex,
                    prefix_len
                }),
                "{v} in {routes:?}"
            );
        }
        // Local and multicast routes (table local) never place a VIP; the
        // kernel's link-local prefixes are there but match no valid VIP.
        assert!(
            routes
                .routes
                .iter()
                .all(|r| !r.dst.is_ipv6() || !matches!(r.dst, IpAddr::V6(a) if a.is_multicast())),
            "{routes:?}"
        );
        ip("-6 route del default via 2001:db8:0:1::fe dev d0");
        assert_eq!(
            nl.routes().await.unwrap().placement(vip("2001:db8:9::9")),
            None
        );
    });
}

#[test]
fn v6_vip_is_added_marked_without_dad_and_without_a_route_of_its_own() {
    in_netns(|| async {
        iface("d0");
        ip("-6 addr add 2001:db8:0:1::1/64 dev d0 nodad");
        let nl = Netlink::new().unwrap();
        let d0 = ifindex(&nl, "d0").await;
        let before = v6_routes();
        let v = vip("2001:db8:0:1::100");
        let p = place(&nl, v).await;
        assert_eq!(
            p,
            Placement {
                ifindex: d0,
                prefix_len: 64
            }
        );
        nl.add_vip(v, p).await.unwrap();
        nl.add_vip(v, p).await.unwrap(); // already there: fine
        assert_eq!(
            find(&nl, "2001:db8:0:1::100").await,
            Some(Address {
                ifindex: d0,
                addr: v.ip(),
                prefix_len: 64,
                owned: true,
                state: AddrState::Usable,
                secondary: false,
            })
        );
        let shown = ip("-6 addr show dev d0");
        let line = shown
            .lines()
            .find(|l| l.contains("2001:db8:0:1::100/64"))
            .unwrap_or_else(|| panic!("ip addr does not show the VIP:\n{shown}"));
        assert!(!line.contains("tentative"), "{line}");
        assert!(
            line.contains("nodad") && line.contains("noprefixroute"),
            "{line}"
        );
        assert_eq!(v6_routes(), before, "the VIP added a route");

        // A /128 VIP (default route only) works the same way.
        ip("-6 route add default via 2001:db8:0:1::fe dev d0");
        let far = vip("2001:db8:9::9");
        nl.add_vip(far, place(&nl, far).await).await.unwrap();
        let a = find(&nl, "2001:db8:9::9").await.unwrap();
        assert_eq!(
            (a.prefix_len, a.owned, a.state),
            (128, true, AddrState::Usable)
        );

        nl.remove_vip(&a).await.unwrap();
        let ours = find(&nl, "2001:db8:0:1::100").await.unwrap();
        nl.remove_vip(&ours).await.unwrap();
        assert_eq!(find(&nl, "2001:db8:0:1::100").await, None);
        assert!(
            ip("-6 addr show dev d0").contains("2001:db8:0:1::1/64"),
            "the node's own address stays"
        );
    });
}

#[test]
fn v6_operator_addresses_are_never_removed() {
    in_netns(|| async {
        iface("d0");
        ip("-6 addr add 2001:db8:0:1::1/64 dev d0 nodad");
        ip("-6 addr add 2001:db8:0:1::50/64 dev d0 nodad");
        let nl = Netlink::new().unwrap();
        let operator = find(&nl, "2001:db8:0:1::50").await.unwrap();
        assert!(!operator.owned);
        assert!(nl.remove_vip(&operator).await.is_err());
        let forged = Address {
            owned: true,
            ..operator.clone()
        };
        assert!(
            nl.remove_vip(&forged).await.is_err(),
            "the fresh dump stops it"
        );
        let v = vip("2001:db8:0:1::100");
        nl.add_vip(v, place(&nl, v).await).await.unwrap();
        let removed = nl.remove_all_marked().await.unwrap();
        assert_eq!(
            removed.iter().map(|a| a.addr).collect::<Vec<_>>(),
            vec![v.ip()]
        );
        assert!(find(&nl, "2001:db8:0:1::50").await.is_some());
        assert!(find(&nl, "2001:db8:0:1::1").await.is_some());
    });
}

#[test]
fn v6_lifetime_is_renewed_with_mark_and_flags_and_runs_out() {
    in_netns(|| async {
        iface("d0");
        ip("-6 addr add 2001:db8:0:1::1/64 dev d0 nodad");
        let nl = Netlink::new().unwrap();
        // Once both ends have their link-local address (the kernel adds it,
        // and its fe80::/64 route, when the pair has carrier) and it has
        // done its DAD, nothing else changes here: every event and route
        // below is the renewal's.
        wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            ["d0", "d0p"].iter().all(|n| {
                let shown = ip(&format!("-6 addr show dev {n} scope link"));
                shown.contains("fe80::") && !shown.contains("tentative")
            })
        })
        .expect("both ends have a link-local address out of tentative");
        let before = v6_routes();
        let v = vip("2001:db8:0:1::100");
        let p = place(&nl, v).await;
        nl.add_vip_for(v, p, Some(3)).await.unwrap();
        let shown = ip("-6 addr show dev d0");
        assert!(shown.contains("valid_lft 3sec"), "{shown}");
        // The kernel finishes an added address in a work queue: its
        // notification and then its local route. Both before the monitor.
        wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            ip("-6 route show table local").contains("2001:db8:0:1::100")
        })
        .expect("the VIP's local route");
        nl.renew_vip(v, p, 3).await.unwrap();
        let mut events = monitor().unwrap();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            nl.renew_vip(v, p, 3).await.unwrap();
            let mut seen = Vec::new();
            while let Ok(Some(e)) =
                tokio::time::timeout(Duration::from_millis(100), events.recv()).await
            {
                seen.push(e);
            }
            assert_eq!(
                seen,
                vec![NetEvent::OwnAddress],
                "a renewal is vipd's own event, and only that"
            );
            let a = find(&nl, "2001:db8:0:1::100").await.expect("renewed");
            assert!(a.owned, "a renewal keeps vipd's mark");
            assert_eq!(a.state, AddrState::Usable);
            let shown = ip("-6 addr show dev d0");
            let line = shown
                .lines()
                .find(|l| l.contains("2001:db8:0:1::100/64"))
                .unwrap();
            assert!(
                line.contains("nodad") && line.contains("noprefixroute"),
                "a renewal keeps the flags: {line}"
            );
            assert_eq!(v6_routes(), before, "a renewal added a route");
        }
        // Renewals stop: the kernel removes the address by itself.
        let last = Instant::now();
        let gone = wait_until(Duration::from_secs(8), Duration::from_millis(20), || {
            !ip("-6 addr show dev d0").contains("2001:db8:0:1::100")
        });
        assert!(gone.is_ok(), "the VIP outlived its lifetime");
        let after = last.elapsed();
        println!(
            "ipv6 lifetime: valid_lft 3 s, address gone {:.2} s after the last renewal",
            after.as_secs_f64()
        );
        assert!(after >= Duration::from_millis(2500), "{after:?}");
    });
}

// -- raw RTM_NEWADDR, to make an address vipd never would: marked, with DAD --

fn nlattr(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    out.extend_from_slice(&u16::try_from(len).unwrap().to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Adds `addr/prefix_len` on `ifindex` with vipd's mark but with DAD (no
/// IFA_F_NODAD), as a vipd of another make might have: what the kernel
/// does then is what vipd must cope with.
fn add_marked_with_dad(ifindex: u32, addr: Ipv6Addr, prefix_len: u8) {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE) };
    assert!(
        fd >= 0,
        "netlink socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh socket we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut body = vec![libc::AF_INET6 as u8, prefix_len, 0, 0];
    body.extend_from_slice(&ifindex.to_ne_bytes());
    nlattr(&mut body, libc::IFA_ADDRESS, &addr.octets());
    nlattr(&mut body, 11 /* IFA_PROTO */, &[MARK]);
    let mut msg = Vec::new();
    msg.extend_from_slice(&u32::try_from(16 + body.len()).unwrap().to_ne_bytes());
    msg.extend_from_slice(&libc::RTM_NEWADDR.to_ne_bytes());
    let flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    // SAFETY: msg is valid for its length; the kernel is the default peer.
    let n = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    assert_eq!(n, msg.len() as isize, "{}", std::io::Error::last_os_error());
    let mut ack = [0u8; 1024];
    // SAFETY: ack is valid for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), ack.as_mut_ptr().cast(), ack.len(), 0) };
    assert!(n >= 20, "no netlink ack");
    let errno = i32::from_ne_bytes(ack[16..20].try_into().unwrap());
    assert_eq!(errno, 0, "RTM_NEWADDR refused: errno {}", -errno);
}

#[test]
fn dad_failed_and_tentative_vips_are_seen_for_what_they_are() {
    in_netns(|| async {
        iface("d0");
        ip("-6 addr add 2001:db8:0:1::1/64 dev d0 nodad");
        // The "other host" on the segment: d0's peer already has the VIP.
        ip("-6 addr add 2001:db8:0:1::100/64 dev d0p nodad");
        let nl = Netlink::new().unwrap();
        let d0 = ifindex(&nl, "d0").await;
        // Unique: tentative for at least one retransmission time (1 s),
        // then usable.
        add_marked_with_dad(d0, "2001:db8:0:1::200".parse().unwrap(), 64);
        let a = find_on(&nl, "2001:db8:0:1::200", d0).await.unwrap();
        assert!(a.owned);
        assert_eq!(a.state, AddrState::Tentative, "DAD runs on a fresh address");
        wait_state(&nl, ("d0", d0), "2001:db8:0:1::200", AddrState::Usable)
            .await
            .unwrap_or_else(|e| panic!("DAD never ended: {e}"));
        // Duplicate: DAD fails.
        add_marked_with_dad(d0, "2001:db8:0:1::100".parse().unwrap(), 64);
        let failed = wait_state(&nl, ("d0", d0), "2001:db8:0:1::100", AddrState::DadFailed)
            .await
            .unwrap_or_else(|e| panic!("DAD never failed: {e}"));
        println!(
            "ipv6 dad: a duplicate address was dadfailed {:.2} s after it was added",
            failed.as_secs_f64()
        );
        // vipd's remove works on it like on any of its addresses.
        let a = find_on(&nl, "2001:db8:0:1::100", d0).await.unwrap();
        nl.remove_vip(&a).await.unwrap();
        assert_eq!(find_on(&nl, "2001:db8:0:1::100", d0).await, None);
    });
}

async fn find_on(nl: &Netlink, addr: &str, ifindex: u32) -> Option<Address> {
    let addr: IpAddr = addr.parse().unwrap();
    nl.addresses()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.addr == addr && a.ifindex == ifindex)
}

/// Waits up to 5 s for `addr` on interface `dev` (name, ifindex) to be in
/// `state`: how long that took, or what `ip` shows on `dev` by then.
async fn wait_state(
    nl: &Netlink,
    (ifname, ifindex): (&str, u32),
    addr: &str,
    state: AddrState,
) -> Result<Duration, String> {
    wait_async(Duration::from_secs(5), || async {
        find_on(nl, addr, ifindex)
            .await
            .is_some_and(|a| a.state == state)
    })
    .await
    .map_err(|e| format!("{e}: {}", ip(&format!("-6 addr show dev {ifname}"))))
}

async fn wait_async<F, Fut>(timeout: Duration, mut cond: F) -> Result<Duration, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(format!("still false after {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- unsolicited Neighbor Advertisements on the wire ----

/// VIPs of both families announced in one batch from host `a`, seen by host
/// `b` on the same bridge: one NA per IPv6 VIP with every field right, the
/// ARP frames of the IPv4 VIPs beside them, all under one per-interface
/// budget; the Router flag follows the interface's forwarding.
#[test]
fn announcer_sends_one_na_per_v6_vip_paced_with_the_arp_frames() {
    let _serial = serial();
    let lab = Lab::new("v6-na");
    let a = lab.add_host("a", &[HostIf::on(0, "192.0.2.11/24")]);
    let b = lab.add_host("b", &[HostIf::on(0, "192.0.2.12/24")]);
    a.add_addr6("eth0", "2001:db8:0:1::11/64");
    // Frames sent before the link is up are lost without a trace.
    within(Duration::from_secs(5), || {
        a.has_carrier("eth0") && b.has_carrier("eth0")
    })
    .expect("both links up");
    let mac = a.mac("eth0");
    let v6: Vec<Vip> = (1..=10)
        .map(|i| vip(&format!("2001:db8:0:1::{:x}", 0x100 + i)))
        .collect();
    let v4 = [vip("192.0.2.100"), vip("192.0.2.101")];
    let capture = b.capture("eth0", libc::ETH_P_ALL as u16);
    // 10 frames per second, bursts of 10: 4 ARP frames (both forms) and
    // 10 NAs are 14 frames, so the last 4 wait 100 ms each.
    let sent_at = announce_from(&a, &v4, &v6, 10);
    let ours = |cap: &vipd_tests::lab::ArpCapture| -> Vec<(Instant, bool)> {
        cap.frames()
            .into_iter()
            .filter(|f| !f.outgoing && fmt_mac(f.bytes[6..12].try_into().unwrap()) == mac)
            .filter_map(|f| {
                if f.arp().is_some() {
                    Some((f.at, false))
                } else {
                    f.ndp()
                        .filter(NdpFrame::is_unsolicited_na)
                        .map(|_| (f.at, true))
                }
            })
            .collect()
    };
    within(Duration::from_secs(5), || ours(&capture).len() >= 14)
        .unwrap_or_else(|e| panic!("14 frames from {mac}: {e}; got {:?}", ours(&capture)));
    let nas: Vec<NdpFrame> = capture
        .ndp_frames()
        .into_iter()
        .filter(|(f, n)| !f.outgoing && n.is_unsolicited_na() && fmt_mac(n.eth_src) == mac)
        .map(|(_, n)| n)
        .collect();
    assert_eq!(nas.len(), 10, "one NA per IPv6 VIP: {nas:?}");
    for (n, want) in nas.iter().zip(&v6) {
        let want = want.v6().unwrap();
        assert_eq!(fmt_mac(n.eth_dst), "33:33:00:00:00:01");
        assert_eq!(
            (n.src, n.dst, n.target),
            (want, "ff02::1".parse().unwrap(), want)
        );
        assert_eq!(n.hop_limit, 255);
        assert_eq!(n.code, 0);
        assert!(n.override_flag && !n.solicited && !n.router, "{n:?}");
        assert_eq!(n.lladdr.map(fmt_mac), Some(mac.clone()));
        assert!(n.checksum_ok, "{n:?}");
    }
    let frames = ours(&capture);
    let (first, last) = (frames[0].0, frames[frames.len() - 1].0);
    let early = frames
        .iter()
        .filter(|(t, _)| *t < first + Duration::from_millis(50))
        .count();
    let spread = last - first;
    println!(
        "ipv6 na pacing: 4 ARP frames + 10 NAs at 10/s: {early} in the first burst, last {:.0} ms after the first ({:.0} ms after the batch)",
        spread.as_secs_f64() * 1000.0,
        (last.saturating_duration_since(sent_at)).as_secs_f64() * 1000.0
    );
    assert!(early <= 10, "the burst is capped at the rate: {early}");
    assert!(spread >= Duration::from_millis(350), "paced: {spread:?}");
    drop(capture);

    // A forwarding interface says so in the Router flag.
    a.sysctl("net.ipv6.conf.eth0.forwarding", "1");
    let capture = b.capture_ndp("eth0");
    announce_from(&a, &[], &v6[..1], 10);
    within(Duration::from_secs(3), || {
        capture
            .ndp_frames()
            .iter()
            .any(|(_, n)| n.is_unsolicited_na() && fmt_mac(n.eth_src) == mac)
    })
    .expect("an NA from the forwarding interface");
    let n = capture
        .ndp_frames()
        .into_iter()
        .find(|(_, n)| n.is_unsolicited_na() && fmt_mac(n.eth_src) == mac)
        .unwrap()
        .1;
    assert!(n.router && n.override_flag && !n.solicited, "{n:?}");
    assert!(n.checksum_ok);
}

/// Runs an Announcer in `host` for one batch (until it has sent it all);
/// returns when the batch was handed over.
fn announce_from(host: &Host, v4: &[Vip], v6: &[Vip], rate: u32) -> Instant {
    let ifindex = host.in_netns(|| {
        // SAFETY: a valid NUL-terminated name.
        unsafe { libc::if_nametoindex(c"eth0".as_ptr()) }
    });
    assert_ne!(ifindex, 0, "no eth0 in {}", host.name());
    let mac: [u8; 6] = host
        .mac("eth0")
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let batch: Vec<Announcement> = v4
        .iter()
        .chain(v6)
        .map(|&vip| Announcement { vip, ifindex, mac })
        .collect();
    let frames = (v4.len() * 2 + v6.len()) as u64;
    host.in_netns(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(async {
                let cancel = CancellationToken::new();
                let (announcer, task) = Announcer::spawn(GarpMode::Both, rate, cancel.clone());
                // Frames go out only for VIPs held where they are sent.
                announcer.hold(batch.iter().map(|a| (a.vip, a.ifindex)), None);
                let at = Instant::now();
                announcer.announce(batch);
                let deadline = Instant::now() + Duration::from_secs(10);
                while announcer.total_sent() < frames && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                assert_eq!(announcer.total_sent(), frames, "{:?}", announcer.stats());
                cancel.cancel();
                task.await.unwrap();
                at
            })
    })
}

// ---- vipd in the lab: one node (static VIPs) ----

const V6_VIP: &str = "2001:db8:0:1::100";
const V4_VIP: &str = "192.0.2.100";

/// A node n1 and a client c on br0, both families.
fn one_node_lab(hint: &str) -> (Lab, Host, Host) {
    let lab = Lab::new(hint);
    let n1 = lab.add_host("n1", &[HostIf::on(0, "192.0.2.11/24")]);
    let client = lab.add_host("c", &[HostIf::on(0, "192.0.2.50/24")]);
    n1.add_addr6("eth0", "2001:db8:0:1::11/64");
    client.add_addr6("eth0", "2001:db8:0:1::50/64");
    within(Duration::from_secs(5), || {
        n1.has_carrier("eth0") && client.has_carrier("eth0")
    })
    .expect("links up");
    (lab, n1, client)
}

/// vipd in single-node mode on `host`, leading `vips`, with debug logs.
fn start_vipd(lab: &Lab, host: &Host, vips: &str, extra: &[&str]) -> Vipd {
    Vipd::start_env(lab, host, vips, extra, &[("RUST_LOG", "info,vipd=debug")])
}

/// The row of `vip` in `vipctl status`.
fn status_row(vipd: &Vipd, vip: &str) -> Value {
    vip_row(&vipd.status(), vip, "vipctl status")
}

/// The `arp stats` row of `vip`.
fn stats_row(vipd: &Vipd, vip: &str) -> Value {
    vip_row(&vipd.arp_stats(), vip, "arp stats")
}

/// The row of `vip` among the `vips` of `report` (`what` names it).
fn vip_row(report: &Value, vip: &str, what: &str) -> Value {
    report["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["vip"] == vip)
        .cloned()
        .unwrap_or_else(|| panic!("no {what} row for {vip}: {report}"))
}

/// Unsolicited NAs for `target` from `mac` seen on a capture.
fn nas_from(cap: &ArpCapture, target: Ipv6Addr, mac: &str) -> Vec<(Instant, NdpFrame)> {
    cap.ndp_frames()
        .into_iter()
        .filter(|(f, n)| {
            !f.outgoing && n.is_unsolicited_na() && n.target == target && fmt_mac(n.eth_src) == mac
        })
        .map(|(f, n)| (f.at, n))
        .collect()
}

/// A v6 VIP beside a v4 one on one node: usable at once (never tentative),
/// announced by NA at once and on each sync round, resolved by a client
/// through the XDP program's answers, counted, repaired when deleted by
/// hand, and defended against a foreign advertisement with one NA per
/// second at most.
#[test]
fn one_node_holds_announces_answers_and_repairs_a_v6_vip() {
    let _serial = serial();
    let (lab, n1, client) = one_node_lab("v6-node");
    let target: Ipv6Addr = V6_VIP.parse().unwrap();
    let n1_mac = n1.mac("eth0");
    let monitor = AddrMonitor::start(&n1);
    let capture = client.capture_ndp("eth0");
    let started = Instant::now();
    let vipd = start_vipd(
        &lab,
        &n1,
        &format!("{V4_VIP},{V6_VIP}"),
        &["--garp-interval", "1s", "--garp-rounds", "2"],
    );

    // Placed by the on-link /64, with the mark, without DAD.
    let held = within(Duration::from_secs(5), || {
        n1.ipv6_addrs("eth0")
            .iter()
            .any(|a| a.addr == target && !a.tentative)
    });
    held.unwrap_or_else(|e| panic!("{e}: {:?}", n1.ipv6_addrs("eth0")));
    let a = n1
        .ipv6_addrs("eth0")
        .into_iter()
        .find(|a| a.addr == target)
        .unwrap();
    assert_eq!(
        (a.prefix_len, a.nodad, a.dadfailed),
        (64, true, false),
        "{a:?}"
    );
    let row = status_row(&vipd, V6_VIP);
    assert_eq!(
        (&row["state"], &row["interface"], &row["prefix_len"]),
        (&Value::from("held"), &Value::from("eth0"), &Value::from(64)),
        "{row}"
    );

    // One NA at once, then one per sync round (two, 1 s apart).
    within(Duration::from_secs(5), || {
        nas_from(&capture, target, &n1_mac).len() >= 3
    })
    .unwrap_or_else(|e| panic!("three NAs: {e}; {:?}", nas_from(&capture, target, &n1_mac)));
    let nas = nas_from(&capture, target, &n1_mac);
    let first = nas[0].0 - started;
    let gaps: Vec<f64> = nas
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).as_secs_f64() * 1000.0)
        .collect();
    println!(
        "ipv6 node: first NA {:.0} ms after vipd was started, then {gaps:.0?} ms apart",
        first.as_secs_f64() * 1000.0
    );
    assert!(
        (800.0..1500.0).contains(&gaps[1]),
        "sync rounds 1 s apart: {gaps:?}"
    );
    // The rounds count from the term's start; the first NA waited for the
    // VIP's address-conflict probe (200 ms), so the first round follows it
    // sooner.
    assert!(
        (500.0..1500.0).contains(&gaps[0]),
        "the first round 1 s after the term started: {gaps:?}"
    );
    for (_, n) in &nas {
        assert!(
            n.override_flag && !n.solicited && !n.router && n.checksum_ok,
            "{n:?}"
        );
        assert_eq!(n.lladdr.map(fmt_mac).as_deref(), Some(n1_mac.as_str()));
    }

    // The client resolves the VIP; the XDP program answers and counts.
    assert!(client.ping(target), "client pings [{V6_VIP}]");
    let neigh = client.neigh(target).expect("a neighbour entry for the VIP");
    assert_eq!(neigh.lladdr.as_deref(), Some(n1_mac.as_str()), "{neigh:?}");
    within(Duration::from_secs(3), || {
        let r = stats_row(&vipd, V6_VIP);
        r["requests"].as_u64() >= Some(1) && r["xdp_replies"].as_u64() >= Some(1)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", stats_row(&vipd, V6_VIP)));
    let row = stats_row(&vipd, V6_VIP);
    println!("ipv6 node: arp stats row {row}");
    assert_eq!(row["held"], true);
    assert_eq!(row["interface"], "eth0");
    assert!(row["announcements_sent"].as_u64() >= Some(3), "{row}");

    // Deleted by hand: added again and announced again.
    let before = nas_from(&capture, target, &n1_mac).len();
    let deleted = Instant::now();
    n1.ip(&["-6", "addr", "del", &format!("{V6_VIP}/64"), "dev", "eth0"]);
    let back = within(Duration::from_secs(5), || {
        n1.ipv6_addrs("eth0").iter().any(|a| a.addr == target)
    });
    back.unwrap_or_else(|e| panic!("never repaired: {e}"));
    let events: Vec<_> = monitor
        .events6()
        .into_iter()
        .filter(|e| e.addr.addr == target && e.at >= deleted)
        .collect();
    let del = events.iter().find(|e| !e.new).map(|e| e.at);
    let add = events.iter().find(|e| e.new).map(|e| e.at);
    if let (Some(d), Some(a)) = (del, add) {
        println!(
            "ipv6 node: hand-deleted VIP back {:.2} ms after its delete event",
            (a - d).as_secs_f64() * 1000.0
        );
    }
    within(Duration::from_secs(3), || {
        nas_from(&capture, target, &n1_mac).len() > before
    })
    .expect("an NA after the repair");

    // A foreign advertisement of our VIP: counted, and answered with one
    // NA, at most one per second however many claims arrive.
    let client_mac = client.mac("eth0");
    let answers_before = nas_from(&capture, target, &n1_mac).len();
    let claimed = Instant::now();
    forge_na(&client, target, 5);
    within(Duration::from_secs(3), || {
        stats_row(&vipd, V6_VIP)["foreign_claims"].as_u64() >= Some(5)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", stats_row(&vipd, V6_VIP)));
    assert_eq!(
        stats_row(&vipd, V6_VIP)["last_foreign_mac"],
        client_mac.as_str()
    );
    std::thread::sleep(Duration::from_millis(1800));
    let answers: Vec<Instant> = nas_from(&capture, target, &n1_mac)[answers_before..]
        .iter()
        .map(|(t, _)| *t)
        .collect();
    println!(
        "ipv6 node: 5 foreign NAs answered by {} NA(s), the first {:.0} ms after the claims",
        answers.len(),
        answers
            .first()
            .map_or(f64::NAN, |t| (*t - claimed).as_secs_f64() * 1000.0)
    );
    assert!(
        (1..=2).contains(&answers.len()),
        "one answer, and one held back by the rate limit at most: {answers:?}"
    );

    // Never tentative, from start to end.
    let tentative: Vec<_> = monitor
        .events6()
        .into_iter()
        .filter(|e| e.addr.addr == target && e.new && e.addr.tentative())
        .collect();
    assert!(tentative.is_empty(), "tentative events: {tentative:?}");
    let status = vipd.process.terminate(Duration::from_secs(5));
    assert!(
        status.success(),
        "vipd exit {status}: {}",
        vipd.process.stderr()
    );
    assert!(
        !n1.ipv6_addrs("eth0").iter().any(|a| a.addr == target),
        "the VIP is removed on shutdown"
    );
}

/// Sends `n` unsolicited NAs for `target` from `host`'s eth0 (another
/// node claiming the VIP).
fn forge_na(host: &Host, target: Ipv6Addr, n: usize) {
    let mac = host.mac_bytes("eth0");
    host.in_netns(|| {
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        let socket = GarpSocket::open(ifindex).expect("packet socket");
        for _ in 0..n {
            socket
                .send(&vipd::net::ndp::na_frame(mac, target, false))
                .expect("send a forged NA");
        }
    });
}

/// The XDP program's answers for a v6 VIP carry the Router flag exactly
/// while the VIP's interface forwards (`net.ipv6.conf.eth0.forwarding` in
/// vipd's namespace, read on every reconcile pass): off, on, off again. The
/// client resolves the VIP afresh each time; its neighbour entry follows
/// the flag, and the program's reply counter shows the answers were its own
/// (the kernel would set the flag the same way).
#[test]
fn xdp_answers_carry_the_router_flag_while_the_interface_forwards() {
    let _serial = serial();
    let (lab, n1, client) = one_node_lab("v6-router");
    let target: Ipv6Addr = V6_VIP.parse().unwrap();
    let n1_mac = n1.mac("eth0");
    let capture = client.capture_ndp("eth0");
    let vipd = start_vipd(&lab, &n1, V6_VIP, &["--reconcile-interval", "300ms"]);
    within(Duration::from_secs(5), || {
        n1.ipv6_addrs("eth0").iter().any(|a| a.addr == target)
    })
    .unwrap_or_else(|e| panic!("VIP never placed: {e}"));
    let answers = || -> Vec<NdpFrame> {
        capture
            .ndp_frames()
            .into_iter()
            .filter(|(f, n)| {
                !f.outgoing
                    && n.icmp_type == NdpFrame::ADVERTISEMENT
                    && n.solicited
                    && n.target == target
                    && fmt_mac(n.eth_src) == n1_mac
            })
            .map(|(_, n)| n)
            .collect()
    };
    let passes = || {
        vipd.status()["last_reconcile"]["passes"]
            .as_u64()
            .unwrap_or(0)
    };
    let replies = || {
        stats_row(&vipd, V6_VIP)["xdp_replies"]
            .as_u64()
            .unwrap_or(0)
    };

    for forwarding in ["0", "1", "0"] {
        let router = forwarding == "1";
        n1.sysctl("net.ipv6.conf.eth0.forwarding", forwarding);
        // Two passes later, one has begun after the change.
        let since = passes();
        within(Duration::from_secs(5), || passes() >= since + 2)
            .unwrap_or_else(|e| panic!("no reconcile passes: {e}: {}", vipd.process.stderr()));
        let (seen, replies_before) = (answers().len(), replies());
        client.ip(&["-6", "neigh", "flush", "dev", "eth0"]);
        assert!(
            client.ping(target),
            "forwarding {forwarding}: client pings the VIP"
        );
        within(Duration::from_secs(3), || answers().len() > seen)
            .unwrap_or_else(|e| panic!("forwarding {forwarding}: no answer: {e}"));
        let new = answers().split_off(seen);
        for n in &new {
            assert!(
                n.router == router && n.override_flag && n.checksum_ok,
                "forwarding {forwarding}: {n:?}"
            );
            assert_eq!(n.lladdr.map(fmt_mac).as_deref(), Some(n1_mac.as_str()));
        }
        let count = u64::try_from(new.len()).unwrap();
        within(Duration::from_secs(3), || {
            replies() >= replies_before + count
        })
        .unwrap_or_else(|e| {
            panic!(
                "forwarding {forwarding}: {count} answers, not all the program's: {e}: {}",
                stats_row(&vipd, V6_VIP)
            )
        });
        let neigh = client.ip(&["-6", "neigh", "show", "to", V6_VIP, "dev", "eth0"]);
        assert_eq!(
            neigh.split_whitespace().any(|w| w == "router"),
            router,
            "forwarding {forwarding}: client's entry {neigh:?}"
        );
        println!("ipv6 router flag: forwarding {forwarding}: {count} answer(s), entry {neigh:?}");
    }
    let status = vipd.process.terminate(Duration::from_secs(5));
    assert!(
        status.success(),
        "vipd exit {status}: {}",
        vipd.process.stderr()
    );
}

/// An address of ours that failed DAD (left by a vipd that added it with
/// DAD, and another host has the VIP): vipd removes it, reports it, and adds
/// the VIP again without DAD. A marked IPv6 address that is no VIP is
/// removed as residue.
#[test]
fn a_dad_failed_vip_is_replaced_and_reported() {
    let _serial = serial();
    let (lab, n1, client) = one_node_lab("v6-dadfail");
    let target: Ipv6Addr = V6_VIP.parse().unwrap();
    // The other host answers DAD for the VIP while n1 probes it.
    client.add_addr6("eth0", &format!("{V6_VIP}/64"));
    n1.in_netns(|| {
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        add_marked_with_dad(ifindex, target, 64);
    });
    within(Duration::from_secs(5), || {
        n1.ipv6_addrs("eth0")
            .iter()
            .any(|a| a.addr == target && a.dadfailed)
    })
    .unwrap_or_else(|e| panic!("DAD never failed: {e}: {:?}", n1.ipv6_addrs("eth0")));
    client.ip(&["-6", "addr", "del", &format!("{V6_VIP}/64"), "dev", "eth0"]);
    // And residue: a marked address no VIP accounts for.
    let residue: Ipv6Addr = "2001:db8:0:1::200".parse().unwrap();
    n1.in_netns(|| {
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        add_marked_with_dad(ifindex, residue, 64);
    });

    let vipd = start_vipd(&lab, &n1, V6_VIP, &[]);
    assert!(
        !n1.ipv6_addrs("eth0").iter().any(|a| a.addr == residue),
        "residue removed by the first pass: {:?}",
        n1.ipv6_addrs("eth0")
    );
    within(Duration::from_secs(5), || {
        n1.ipv6_addrs("eth0")
            .iter()
            .any(|a| a.addr == target && !a.dadfailed && !a.tentative && a.nodad)
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", n1.ipv6_addrs("eth0")));
    let copies = n1
        .ipv6_addrs("eth0")
        .into_iter()
        .filter(|a| a.addr == target)
        .count();
    assert_eq!(copies, 1);
    let logged = within(Duration::from_secs(3), || {
        vipd.process
            .stderr()
            .contains("failed duplicate address detection")
    });
    assert!(logged.is_ok(), "not reported: {}", vipd.process.stderr());
    let row = status_row(&vipd, V6_VIP);
    assert_eq!(row["state"], "held", "{row}");
}

// ---- a cluster ----

const PORT: u16 = 8080;

/// A service with a v4 and a v6 VIP on three nodes: bad IPv6 input is
/// refused without a write; the leader holds both; the client reaches
/// [VIP]:port and resolves the VIP to the leader by NDP; after the leader is
/// killed the new one takes both, the old node's copies run out with their
/// kernel lifetime, the client's `ip -6 neigh` entry switches to the new
/// leader and its TCP connection is served there; a hand-deleted v6 VIP is
/// repaired; no node ever has the VIP tentative; IPv6 residue is removed
/// by every node.
#[test]
fn a_v4_and_a_v6_vip_of_one_service_fail_over_together() {
    let _serial = serial();
    let mut c = Cluster::new("v6-cluster", ZkKind::Standalone, 3);
    c.enable_ipv6();
    for bad in [
        "fe80::1",
        "2001:db8:0:1::100/64",
        "ff02::1",
        "::ffff:192.0.2.100",
        "2001:db8::1%eth0",
        "2001:db8:::1",
        "::1",
        "::",
    ] {
        let out = c.vip(&["set", "web", V4_VIP, bad]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains(bad), "the message names {bad}: {stderr}");
    }
    let list = c.vip_ok(&["list", "--json"]);
    assert!(!list.contains("web"), "nothing was written: {list}");
    c.vip_ok(&["set", "web", V4_VIP, V6_VIP]);
    let list = c.vip_ok(&["list"]);
    assert!(list.contains(V4_VIP) && list.contains(V6_VIP), "{list}");

    let target: Ipv6Addr = V6_VIP.parse().unwrap();
    let v4: std::net::Ipv4Addr = V4_VIP.parse().unwrap();
    let vips = ip_set(&[V4_VIP, V6_VIP]);
    // Residue of an earlier term on every node (marked, no VIP any more):
    // followers and leader alike remove it at their first pass.
    let residue: Ipv6Addr = "2001:db8:0:1::dead".parse().unwrap();
    for n in &c.nodes {
        n.host.in_netns(|| {
            // SAFETY: a valid NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
            add_marked_with_dad(ifindex, residue, 64);
        });
    }
    let mons = monitors(&c);
    let _servers: Vec<_> = c
        .nodes
        .iter()
        .flat_map(|n| {
            [
                n.host.tcp_echo_server(target, PORT),
                n.host.tcp_echo_server(v4, PORT),
            ]
        })
        .collect();
    c.start_all();
    let (old, took) = c
        .wait_sole_holder_ips(&vips, None, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("first election: {e}"));
    println!(
        "ipv6 cluster: {} holds both VIPs {:.0} ms after every vipd answered on its socket",
        c.nodes[old].id,
        took.as_secs_f64() * 1000.0
    );
    within(Duration::from_secs(3), || {
        (0..3).all(|i| !c.addrs6(i).iter().any(|a| a.addr == residue))
    })
    .unwrap_or_else(|e| panic!("residue {residue} left behind: {e}"));
    let s = c.status(old);
    let row = s["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["vip"] == V6_VIP)
        .cloned()
        .unwrap_or_else(|| panic!("no {V6_VIP} in {}", s["vips"]));
    assert_eq!(row["state"], "held", "{row}");
    assert_eq!(row["prefix_len"], 64, "{row}");
    let ours = c
        .addrs6(old)
        .into_iter()
        .find(|a| a.addr == target)
        .expect("the leader has the VIP");
    assert_eq!(ours.proto, Some(MARK), "vipd's mark: {ours:?}");
    assert_ne!(ours.flags & NlAddr6::IFA_F_NODAD, 0, "{ours:?}");
    let socket = c.nodes[old].socket.display().to_string();
    let text = c.vipctl_on(old, &["status", "--api-socket", &socket]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with(V6_VIP) && l.contains("held")),
        "{text}"
    );

    let ids: Vec<String> = c.nodes.iter().map(|n| n.id.clone()).collect();
    let served = |who: usize| format!("served-by {}\n", ids[who]);
    let banner = c.client.tcp_probe(target, PORT, Duration::from_secs(2));
    assert_eq!(
        banner,
        Some(served(old)),
        "[{V6_VIP}]:{PORT} before the kill"
    );
    let old_mac = c.nodes[old].host.mac("eth0");
    assert_eq!(
        c.client.neigh(target).and_then(|n| n.lladdr),
        Some(old_mac.clone())
    );

    let killed = Instant::now();
    c.kill_vipd(old);
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let new_holds = within(Duration::from_secs(5), || {
        others.iter().any(|&i| c.held_ips(i, &vips) == vips)
    });
    let new_took = new_holds.unwrap_or_else(|e| panic!("no takeover: {e}"));
    let new = *others
        .iter()
        .find(|&&i| c.held_ips(i, &vips) == vips)
        .unwrap();
    within(Duration::from_secs(5), || c.held_ips(old, &vips).is_empty())
        .unwrap_or_else(|e| panic!("the killed leader's VIPs never ran out: {e}"));
    let expired = killed.elapsed();
    println!(
        "ipv6 cluster: SIGKILL of {} -> {} holds both VIPs after {:.0} ms; the killed node's copies ran out (kernel lifetime) {:.0} ms after the kill",
        c.nodes[old].id,
        c.nodes[new].id,
        new_took.as_secs_f64() * 1000.0,
        expired.as_secs_f64() * 1000.0
    );
    assert!(
        new_took <= vipd_tests::cluster::SESSION_TIMEOUT + Duration::from_secs(1),
        "{new_took:?}"
    );
    assert_eq!(c.sole_holder_ips(&vips), Some(new));

    let new_mac = c.nodes[new].host.mac("eth0");
    let switched = within(Duration::from_secs(3), || {
        c.client.neigh(target).and_then(|n| n.lladdr) == Some(new_mac.clone())
    });
    let neigh = c.client.neigh(target);
    switched.unwrap_or_else(|e| {
        panic!("client's neighbour entry {neigh:?} never moved to {new_mac}: {e}")
    });
    println!(
        "ipv6 cluster: the client's ip -6 neigh entry pointed at the new leader {:.0} ms after the kill ({neigh:?})",
        killed.elapsed().as_secs_f64() * 1000.0
    );
    let mut last = None;
    within(Duration::from_secs(3), || {
        last = c.client.tcp_probe(target, PORT, Duration::from_millis(300));
        last == Some(served(new))
    })
    .unwrap_or_else(|e| {
        panic!("[{V6_VIP}]:{PORT} never served by the new leader (last {last:?}): {e}")
    });
    assert_eq!(
        c.client.tcp_probe(v4, PORT, Duration::from_secs(2)),
        Some(served(new)),
        "the v4 VIP moved too"
    );

    // Deleted by hand on the new leader: repaired.
    let deleted = Instant::now();
    c.nodes[new]
        .host
        .ip(&["-6", "addr", "del", &format!("{V6_VIP}/64"), "dev", "eth0"]);
    let repaired = within(Duration::from_secs(5), || {
        c.held_ips(new, &vips).contains(&IpAddr::V6(target))
    })
    .unwrap_or_else(|e| panic!("never repaired: {e}"));
    println!(
        "ipv6 cluster: a hand-deleted v6 VIP was back after {:.1} ms (polled)",
        repaired.as_secs_f64() * 1000.0
    );
    let events: Vec<_> = mons[new]
        .events6()
        .into_iter()
        .filter(|e| e.addr.addr == target && e.at >= deleted)
        .collect();
    if let (Some(d), Some(a)) = (
        events.iter().find(|e| !e.new).map(|e| e.at),
        events.iter().find(|e| e.new).map(|e| e.at),
    ) {
        println!(
            "ipv6 cluster: delete event -> add event {:.2} ms",
            (a - d).as_secs_f64() * 1000.0
        );
    }

    // Never tentative, on any node, from start to end.
    for (i, m) in mons.iter().enumerate() {
        let bad: Vec<_> = m
            .events6()
            .into_iter()
            .filter(|e| {
                e.addr.addr == target && e.new && (e.addr.tentative() || e.addr.dadfailed())
            })
            .collect();
        assert!(bad.is_empty(), "{}: {bad:?}", c.nodes[i].id);
    }
}
