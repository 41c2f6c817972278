//! IPv6 VIPs (issue 13, R17) against the kernel and on the wire: placement
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
    process::Command,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use vipd::{
    announce::{Announcement, Announcer},
    net::{
        AddrState, Address, Placement,
        garp::GarpMode,
        netlink::{NetEvent, Netlink, monitor},
    },
    vip::Vip,
};
use vipd_tests::{
    cluster::within,
    lab::{Host, HostIf, Lab, NdpFrame, fmt_mac, in_new_netns, wait_until},
};

/// vipd's ownership mark (IFA_PROTO), as vipd::net::VIPD_ADDR_PROTO.
const MARK: u8 = vipd::net::VIPD_ADDR_PROTO;

static SERIAL: Mutex<()> = Mutex::new(());

/// One lab test at a time: they measure pacing and takeovers on a small
/// machine.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- netlink, in a namespace of the test's own ----

/// Runs `test` on a current-thread runtime in a fresh network namespace.
fn in_netns<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = ()>,
{
    in_new_netns(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(test())
    })
}

/// Runs `ip <args>` in this thread's namespace and returns its stdout.
fn ip(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("running `ip` (iproute2 must be installed)");
    assert!(
        out.status.success(),
        "`ip {args}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 from ip")
}

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

async fn ifindex(nl: &Netlink, name: &str) -> u32 {
    nl.links()
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("link {name} not in the dump"))
        .ifindex
}

fn vip(s: &str) -> Vip {
    s.parse().unwrap()
}

async fn place(nl: &Netlink, v: Vip) -> Placement {
    nl.routes()
        .await
        .unwrap()
        .placement(v)
        .unwrap_or_else(|| panic!("no route for {v}"))
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
        let before = v6_routes();
        let v = vip("2001:db8:0:1::100");
        let p = place(&nl, v).await;
        nl.add_vip_for(v, p, Some(3)).await.unwrap();
        let shown = ip("-6 addr show dev d0");
        assert!(shown.contains("valid_lft 3sec"), "{shown}");
        // Once the interface's own link-local address has done its DAD,
        // nothing else changes here: every event below is the renewal's.
        wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            !ip("-6 addr show").contains("tentative")
        })
        .expect("the link-local addresses leave tentative");
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
        let usable = wait_async(Duration::from_secs(5), || async {
            find_on(&nl, "2001:db8:0:1::200", d0)
                .await
                .is_some_and(|a| a.state == AddrState::Usable)
        })
        .await;
        assert!(
            usable.is_ok(),
            "DAD never ended: {}",
            ip("-6 addr show dev d0")
        );
        // Duplicate: DAD fails.
        add_marked_with_dad(d0, "2001:db8:0:1::100".parse().unwrap(), 64);
        let failed = wait_async(Duration::from_secs(5), || async {
            find_on(&nl, "2001:db8:0:1::100", d0)
                .await
                .is_some_and(|a| a.state == AddrState::DadFailed)
        })
        .await;
        assert!(
            failed.is_ok(),
            "DAD never failed: {}",
            ip("-6 addr show dev d0")
        );
        println!(
            "ipv6 dad: a duplicate address was dadfailed {:.2} s after it was added",
            failed.unwrap().as_secs_f64()
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
    let a = lab.add_host(
        "a",
        &[HostIf {
            bridge: 0,
            addr: "192.0.2.11/24",
        }],
    );
    let b = lab.add_host(
        "b",
        &[HostIf {
            bridge: 0,
            addr: "192.0.2.12/24",
        }],
    );
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
