//! Several vipd instances on one host (one network namespace): each keeps
//! its own VIPs under its own ownership mark, `vipctl cleanup --instance`
//! removes one instance's addresses only, a second instance on an
//! interface another one serves is refused at start, and the default
//! instance is what a host with one vipd always ran. Privileged: these need
//! root and fail without it.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use vipd::{instance::mark_of, net::netlink::Netlink};
use vipd_tests::{
    lab::{AddrMonitor, Host, HostIf, Lab, require_root, vipctl_bin, vipd_bin},
    vipd::Vipd,
};

const VIP_A: &str = "192.0.2.100";
const VIP_B: &str = "198.51.100.100";

/// A lab host with eth0 on br0 (192.0.2.0/24) and eth1 on br1
/// (198.51.100.0/24).
fn two_interface_host(lab: &Lab) -> Host {
    lab.add_host(
        "h",
        &[
            HostIf::on(0, "192.0.2.11/24"),
            HostIf::on(1, "198.51.100.11/24"),
        ],
    )
}

/// Whether `ip` is on the host and carries ownership mark `mark`, read
/// through netlink inside the host's namespace.
fn marked(host: &Host, ip: &str, mark: u8) -> Option<bool> {
    let ip: IpAddr = ip.parse().unwrap();
    host.in_netns(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let nl = Netlink::new().unwrap().with_mark(mark);
            let all = nl.addresses().await.unwrap();
            all.iter().find(|a| a.addr == ip).map(|a| a.owned)
        })
    })
}

fn has(host: &Host, ifname: &str, ip: &str) -> bool {
    let ip: Ipv4Addr = ip.parse().unwrap();
    host.ipv4_addrs(ifname).iter().any(|(a, _)| *a == ip)
}

/// Two instances in one namespace, each with its own interface and VIP
/// (the second named through VIPD_INSTANCE, as a unit file would): over
/// 10 s, neither touches the other's VIP (no address events), both VIPs are
/// there in every sample, each carries its instance's mark; then
/// `vipctl cleanup --instance b` (after b was SIGKILLed) removes b's VIP
/// and leaves a's.
#[test]
fn two_instances_in_one_namespace_keep_their_own_vips() {
    require_root();
    let lab = Lab::new("inst-two");
    let host = two_interface_host(&lab);
    let a = Vipd::start(&lab, &host, VIP_A, &[]);
    let b = Vipd::start_env(&lab, &host, VIP_B, &[], &[("VIPD_INSTANCE", "b")]);
    a.wait_held(&[VIP_A]);
    b.wait_held(&[VIP_B]);
    let monitor = AddrMonitor::start(&host);
    let start = Instant::now();
    let mut samples = 0;
    let mut missing = Vec::new();
    while start.elapsed() < Duration::from_secs(10) {
        let (ha, hb) = (has(&host, "eth0", VIP_A), has(&host, "eth1", VIP_B));
        samples += 1;
        if !(ha && hb) {
            missing.push((start.elapsed(), ha, hb));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let vips: [Ipv4Addr; 2] = [VIP_A.parse().unwrap(), VIP_B.parse().unwrap()];
    let events: Vec<_> = monitor
        .events()
        .into_iter()
        .filter(|e| vips.contains(&e.addr.addr))
        .collect();
    eprintln!(
        "[inst-two] {} address events of the two VIPs in 10 s; {} of {samples} samples missed one",
        events.len(),
        missing.len()
    );
    assert!(
        events.len() <= 2,
        "{} address events of the two VIPs in 10 s (the instances fight over each other's VIP); first: {:?}",
        events.len(),
        &events[..events.len().min(6)]
    );
    assert!(
        missing.is_empty(),
        "a VIP was missing in {} of {samples} samples (elapsed, a held, b held): {:?}",
        missing.len(),
        &missing[..missing.len().min(6)]
    );
    assert_eq!(
        marked(&host, VIP_A, 0x76),
        Some(true),
        "a's VIP has mark 0x76"
    );
    assert_eq!(
        marked(&host, VIP_B, mark_of("b")),
        Some(true),
        "b's VIP has b's mark {}",
        mark_of("b")
    );
    assert_eq!(
        marked(&host, VIP_B, 0x76),
        Some(false),
        "b's VIP is not a's"
    );

    // b dies without cleaning up; the service manager runs cleanup for b.
    let (status, _) = b.stop(libc::SIGKILL, Duration::from_secs(5));
    assert!(!status.success());
    assert!(has(&host, "eth1", VIP_B), "b's VIP stays after SIGKILL");
    let monitor = AddrMonitor::start(&host);
    let out = host.exec(&[
        vipctl_bin().display().to_string(),
        "cleanup".into(),
        "--instance".into(),
        "b".into(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "vipctl cleanup --instance b: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(VIP_B),
        "cleanup says what it removed: {stdout}"
    );
    assert!(!has(&host, "eth1", VIP_B), "b's VIP removed by cleanup");
    assert!(has(&host, "eth0", VIP_A), "a's VIP kept by b's cleanup");
    std::thread::sleep(Duration::from_millis(200));
    let touched_a: Vec<_> = monitor
        .events()
        .into_iter()
        .filter(|e| e.addr.addr == vips[0])
        .collect();
    assert!(
        touched_a.is_empty(),
        "b's cleanup touched a's VIP: {touched_a:?}"
    );
    a.wait_held(&[VIP_A]);
}

/// A second instance whose VIP lives on an interface the first serves is
/// refused at start: it exits non-zero naming the interface and the other
/// instance, and adds nothing. So is one whose mark is the first's.
#[test]
fn a_second_instance_on_a_served_interface_is_refused() {
    require_root();
    let lab = Lab::new("inst-same");
    let host = two_interface_host(&lab);
    let a = Vipd::start(&lab, &host, VIP_A, &[]);
    a.wait_held(&[VIP_A]);
    let monitor = AddrMonitor::start(&host);
    let second = "192.0.2.101";
    for (extra, words) in [
        (
            &["--instance", "b"][..],
            &["interface eth0", "\"default\""][..],
        ),
        (
            &["--instance", "c", "--instance-mark", "118"],
            &["ownership mark 118", "\"default\""],
        ),
    ] {
        let b = Vipd::spawn(
            &host,
            Vipd::new_socket(&lab, &host),
            &[],
            second,
            extra,
            &[],
        );
        let status = b
            .process
            .wait_timeout(Duration::from_secs(15))
            .unwrap_or_else(|| {
                panic!(
                    "vipd {extra:?} on a served interface kept running; stderr:\n{}",
                    b.process.stderr()
                )
            });
        let stderr = b.process.stderr();
        assert!(!status.success(), "{extra:?}: exit {status}");
        for w in words {
            assert!(
                stderr.contains(w),
                "{extra:?}: no {w:?} in the error:\n{stderr}"
            );
        }
    }
    let ip: Ipv4Addr = second.parse().unwrap();
    assert!(
        monitor.events().iter().all(|e| e.addr.addr != ip),
        "a refused instance added its VIP"
    );
    assert!(!has(&host, "eth0", second));
    a.wait_held(&[VIP_A]);
}

/// The default instance is what one vipd per host always was: mark 0x76
/// on its addresses, the control socket /run/vipd/vipd.sock, both shown by
/// check-config; a bad instance name is refused with the name in the
/// error, before anything is touched.
#[test]
fn the_default_instance_keeps_its_mark_and_socket() {
    require_root();
    let lab = Lab::new("inst-default");
    let host = two_interface_host(&lab);
    let check = |args: &[&str]| {
        let mut argv = vec![
            vipd_bin().display().to_string(),
            "check-config".into(),
            "--config".into(),
            "/dev/null".into(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        host.exec(&argv)
    };
    let out = check(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("instance \"default\": ownership mark 118")
            && text.contains("control socket /run/vipd/vipd.sock"),
        "{text}"
    );
    let out = check(&["--instance", "b"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("ownership mark {}", mark_of("b")))
            && text.contains("/run/vipd/b.sock"),
        "{text}"
    );
    for bad in ["a/b", "../x", "-x", "a b"] {
        let out = check(&[&format!("--instance={bad}")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
    }
    let a = Vipd::start(&lab, &host, VIP_A, &[]);
    a.wait_held(&[VIP_A]);
    assert_eq!(vipd::net::VIPD_ADDR_PROTO, 0x76);
    assert_eq!(
        marked(&host, VIP_A, 0x76),
        Some(true),
        "mark 0x76 on the default instance's VIP"
    );
}
