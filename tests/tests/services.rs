//! What the VIP is for: a real iSCSI initiator keeps its storage
//! and a real HTTP client its console through a takeover. Every node runs
//! Debian's `tgtd` (one target, one LUN backed by one image file all nodes
//! share) and `busybox httpd` on the wildcard address; the client uses
//! libiscsi's user-space tools and `busybox wget` through the VIPs.
//!
//! Debian's libiscsi-bin has no tool that writes a caller's data or prints
//! what it reads (upstream's iscsi-dd is not packaged), so the byte-level
//! check is libiscsi's own write-and-compare, `iscsi-test-cu`'s
//! `SCSI.MultipathIO.Simple`: it writes a fill through one path, reads it
//! back through another and compares every byte. Before the fault the fill
//! is written through the VIP (the old leader) and read back through each
//! other node's own portal; the image must keep it through the fault; after
//! the takeover the compare runs through the VIP (the new leader).
//!
//! Stall and outage times are printed, never asserted: what is asserted is
//! that the data, the I/O and the console come back.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use vipd_tests::{
    cluster::{Cluster, ZkKind, vip_set, within},
    lab::{HostIf, Lab},
    services::{
        IMAGE_SIZE, MULTIPATH_LAST_FILL, PERF_POLL, PerfRun, Poller, Sample, Services, console_get,
        gap_around, image_fill, perf_stall, read_capacity, write_and_compare,
    },
};

/// The storage cluster's two stable addresses: the iSCSI portal and the
/// web console, one service of vipd.
const PORTAL: &str = "192.0.2.100";
const CONSOLE: &str = "192.0.2.101";
/// How often the probes run, and how long each may take.
const PROBE_EVERY: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Blocks the multipath compare covers (LBA 0..256).
const COMPARED_BLOCKS: usize = 256;

/// One cluster at a time (see tests/tests/cluster.rs): the takeover and
/// the I/O figures are about vipd, not about clusters fighting over CPUs.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Milliseconds from `a` to `b`, or "-" when either is missing.
fn span(a: Option<Instant>, b: Option<Instant>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:.0} ms", ms(b.saturating_duration_since(a))),
        _ => "- (not seen)".to_string(),
    }
}

/// Signed milliseconds from `fault` to `at`.
fn offset_ms(fault: Instant, at: Instant) -> f64 {
    if at >= fault {
        ms(at - fault)
    } else {
        -ms(fault - at)
    }
}

/// Each probe's outcome, as "+ms:value" (or "+ms:-" for no answer).
fn timeline<T: std::fmt::Debug>(samples: &[Sample<T>], fault: Instant) -> String {
    samples
        .iter()
        .map(|s| {
            let v = s
                .value
                .as_ref()
                .map_or("-".to_string(), |v| format!("{v:?}"));
            format!("{:+.0}:{v}", offset_ms(fault, s.at))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The node's own address on the data segment (its first IPv4 on eth0,
/// added before any VIP).
fn own_addr(c: &Cluster, i: usize) -> Ipv4Addr {
    let vips = vip_set(&[PORTAL, CONSOLE]);
    c.nodes[i]
        .host
        .ipv4_addrs("eth0")
        .into_iter()
        .map(|(a, _)| a)
        .find(|a| !vips.contains(a))
        .unwrap_or_else(|| panic!("{} has no address of its own on eth0", c.nodes[i].id))
}

#[test]
fn services_answer_on_every_node_and_stop_with_the_lab() {
    let _serial = serial();
    let lab = Lab::new("svc-basic");
    let nodes: Vec<_> = (1..=2)
        .map(|i| {
            lab.add_host(
                &format!("n{i}"),
                &[HostIf::on(0, &format!("192.0.2.{}/24", 10 + i))],
            )
        })
        .collect();
    let client = lab.add_host("client", &[HostIf::on(0, "192.0.2.50/24")]);
    let refs: Vec<_> = nodes.iter().collect();
    let mut svc = Services::start(lab.dir(), &refs);
    let addrs = [ip("192.0.2.11"), ip("192.0.2.12")];
    for (i, &addr) in addrs.iter().enumerate() {
        assert_eq!(
            console_get(&client, addr, PROBE_TIMEOUT).as_deref(),
            Some(nodes[i].name()),
            "console of {}",
            nodes[i].name()
        );
        assert_eq!(
            read_capacity(&client, addr, Duration::from_secs(5)),
            Some(IMAGE_SIZE),
            "LUN through {addr}"
        );
        assert_eq!(
            svc.target(i).backing_stores(),
            vec![svc.image().to_path_buf()]
        );
    }
    // Written through n1's target, read back byte for byte through n2's:
    // the LUN is the one shared image.
    assert_eq!(image_fill(svc.image(), COMPARED_BLOCKS), Some(0));
    let run = write_and_compare(&client, addrs);
    eprintln!(
        "[svc-basic] multipath compare: {} asserts passed",
        run.asserts_passed
    );
    assert_eq!(
        image_fill(svc.image(), COMPARED_BLOCKS),
        Some(MULTIPATH_LAST_FILL)
    );
    // A wrong address fails as a failure, not a hang.
    assert_eq!(
        read_capacity(&client, ip("192.0.2.99"), PROBE_TIMEOUT),
        None
    );
    assert_eq!(console_get(&client, ip("192.0.2.99"), PROBE_TIMEOUT), None);

    let pids: Vec<u32> = (0..2).map(|i| svc.target(i).process.pid()).collect();
    let ports: Vec<u32> = (0..2).map(|i| svc.target(i).control_port).collect();
    let procs: Vec<_> = (0..2).map(|i| svc.target(i).process.clone()).collect();
    let stopped = Instant::now();
    svc.stop();
    eprintln!(
        "[svc-basic] tgtd {pids:?} and the consoles stopped in {:.0} ms",
        ms(stopped.elapsed())
    );
    for (p, port) in procs.iter().zip(&ports) {
        assert!(!p.is_running(), "tgtd {} still running", p.pid());
        for f in [
            format!("/var/run/tgtd/socket.{port}"),
            format!("/var/run/tgtd/socket.{port}.lock"),
        ] {
            assert!(!std::path::Path::new(&f).exists(), "{f} left behind");
        }
    }
    assert_eq!(console_get(&client, addrs[0], PROBE_TIMEOUT), None);
}

/// How the leader is taken away.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Both its links lose carrier (a pulled cable, a dead switch port).
    LinkCut,
    /// vipd is SIGKILLed; the node, its tgtd and its console live on.
    Sigkill,
}

fn storage_and_console_survive(fault: Fault, hint: &str) {
    let _serial = serial();
    let mut c = Cluster::new(hint, ZkKind::Standalone, 3);
    let svc = Services::on_cluster(&c);
    c.vip_ok(&["set", "storage", PORTAL, CONSOLE]);
    c.start_all();
    let vips = vip_set(&[PORTAL, CONSOLE]);
    let (portal, console) = (ip(PORTAL), ip(CONSOLE));
    let (old, _) = c
        .wait_sole_holder(&vips, None, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("first election: {e}"));
    let old_id = c.nodes[old].id.clone();

    // Before: the console answers from the leader, the LUN is there.
    let mut seen = None;
    let r = within(Duration::from_secs(5), || {
        seen = console_get(&c.client, console, PROBE_TIMEOUT);
        seen.as_deref() == Some(old_id.as_str())
    });
    r.unwrap_or_else(|e| {
        panic!("console through {console} never named {old_id} (last {seen:?}): {e}")
    });
    assert_eq!(
        read_capacity(&c.client, portal, Duration::from_secs(5)),
        Some(IMAGE_SIZE),
        "LUN through the portal VIP"
    );
    // Written through the VIP (the old leader), compared byte for byte as
    // read back through each other node's own portal: whichever takes
    // over serves these bytes.
    for i in (0..c.nodes.len()).filter(|&i| i != old) {
        let run = write_and_compare(&c.client, [own_addr(&c, i), portal]);
        eprintln!(
            "[{hint}] before: written through {PORTAL} ({old_id}), read back and compared through {} ({}): {} asserts passed",
            own_addr(&c, i),
            c.nodes[i].id,
            run.asserts_passed
        );
    }
    assert_eq!(
        image_fill(svc.image(), COMPARED_BLOCKS),
        Some(MULTIPATH_LAST_FILL),
        "the shared image does not hold what the initiator wrote"
    );

    // Continuous I/O and the probes, running through the fault.
    let perf = PerfRun::start(&c.client, portal);
    let started = Instant::now();
    assert!(
        perf.wait_reads(started, Duration::from_secs(10)),
        "iscsi-perf through {PORTAL} read nothing: {}",
        perf.process.stdout()
    );
    let logins = {
        let client = c.client.clone();
        Poller::start(PROBE_EVERY, move || {
            read_capacity(&client, portal, PROBE_TIMEOUT)
        })
    };
    let web = {
        let client = c.client.clone();
        Poller::start(PROBE_EVERY, move || {
            console_get(&client, console, PROBE_TIMEOUT)
        })
    };
    // Every observer has seen the service working before the fault.
    let warm = within(Duration::from_secs(15), || {
        let ok = |n: usize| n >= 5;
        ok(web
            .samples()
            .iter()
            .filter(|s| s.value.as_deref() == Some(old_id.as_str()))
            .count())
            && ok(logins
                .samples()
                .iter()
                .filter(|s| s.value.is_some())
                .count())
            && perf.reports().iter().filter(|r| r.iops > 0).count() >= 2
    });
    warm.unwrap_or_else(|e| {
        panic!(
            "the probes never settled before the fault: {e}; console {}; logins {}",
            timeline(&web.samples(), Instant::now()),
            timeline(&logins.samples(), Instant::now())
        )
    });

    let fault_at = Instant::now();
    // From when on the old leader can no longer answer through the VIPs.
    let gone_at = match fault {
        Fault::LinkCut => {
            let h = c.nodes[old].host.clone();
            c.lab.cut_peer(&h, "eth0");
            c.lab.cut_peer(&h, "eth1");
            fault_at
        }
        Fault::Sigkill => {
            c.kill_vipd(old);
            // Until vipd's VIP lease lands, a SIGKILLed vipd leaves its VIPs
            // in the kernel until systemd's ExecStopPost runs `vipctl
            // cleanup` (packaging/vipd.service); done here the same way, at
            // once. The takeover then waits for the ZooKeeper session to
            // expire.
            let out = c.vipctl_on(old, &["cleanup"]);
            assert!(
                out.status.success(),
                "vipctl cleanup on {old_id}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                c.held(old, &vips).is_empty(),
                "vipctl cleanup left {:?} on {old_id}",
                c.held(old, &vips)
            );
            Instant::now()
        }
    };
    let (new, took) = c
        .wait_sole_holder(&vips, Some(old), Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("takeover after {fault:?}: {e}"));
    let new_id = c.nodes[new].id.clone();
    let held_at = fault_at + took;
    eprintln!(
        "[{hint}] {fault:?} of {old_id}: {new_id} holds {vips:?} {:.0} ms later",
        ms(took)
    );

    // After: the console from the new node, reads again, new logins again.
    let console_back = within(Duration::from_secs(15), || {
        web.samples()
            .iter()
            .any(|s| s.started > gone_at && s.value.as_deref() == Some(new_id.as_str()))
    });
    let reads_back = perf.wait_reads(held_at, Duration::from_secs(30));
    let logins_back = within(Duration::from_secs(15), || {
        logins
            .samples()
            .iter()
            .any(|s| s.started > gone_at && s.value.is_some())
    });
    // A few more seconds of steady I/O after it came back.
    std::thread::sleep(Duration::from_secs(2));
    let web = web.stop();
    let logins = logins.stop();
    let perf_running = perf.process.is_running();
    let (reports, perf_out) = perf.stop();

    // The figures.
    let (web_last, web_first) = gap_around(&web, gone_at);
    let (login_last, login_first) = gap_around(&logins, gone_at);
    let mut before: Vec<u64> = reports
        .iter()
        .filter(|r| r.at < fault_at && r.iops > 0)
        .map(|r| r.iops)
        .collect();
    before.sort_unstable();
    let steady = before.get(before.len() / 2).copied().unwrap_or(0);
    let stall = perf_stall(&reports, steady);
    let reports_around: Vec<String> = reports
        .iter()
        .filter(|r| r.at + Duration::from_secs(3) > fault_at)
        .map(|r| format!("{:+.0}:{}", offset_ms(fault_at, r.at), r.iops))
        .collect();
    eprintln!("[{hint}] ---- {fault:?}: {old_id} -> {new_id} ----");
    eprintln!(
        "[{hint}] VIPs gone from {old_id}: {:+.0} ms; held by {new_id}: {:+.0} ms (after the fault)",
        offset_ms(fault_at, gone_at),
        ms(took)
    );
    eprintln!(
        "[{hint}] iSCSI stall of the open session (iscsi-perf, reconnecting; {steady} IOPS before): \
         last read -> first read after: {} (last read {}, first read {} after the fault; \
         output read every {} ms)",
        stall.map_or("- (no silence over 1.5 s)".to_string(), |(a, b)| format!(
            "{:.0} ms",
            ms(b - a)
        )),
        stall.map_or("-".to_string(), |(a, _)| format!(
            "{:+.0} ms",
            offset_ms(fault_at, a)
        )),
        stall.map_or("-".to_string(), |(_, b)| format!(
            "{:+.0} ms",
            offset_ms(fault_at, b)
        )),
        PERF_POLL.as_millis(),
    );
    eprintln!(
        "[{hint}] iscsi-perf reports around the fault (ms after it: IOPS since the previous one): {}",
        reports_around.join(" ")
    );
    eprintln!(
        "[{hint}] iSCSI new logins (iscsi-readcapacity16 every {} ms): last success before the VIPs left {old_id} -> first after: {}",
        PROBE_EVERY.as_millis(),
        span(login_last, login_first)
    );
    eprintln!(
        "[{hint}] HTTP console outage (busybox wget every {} ms): last answer before the VIPs left {old_id} -> first after: {}",
        PROBE_EVERY.as_millis(),
        span(web_last, web_first)
    );
    // What must hold.
    let web_timeline = timeline(&web, fault_at);
    console_back.unwrap_or_else(|e| {
        panic!(
            "the console never answered from {new_id} after the fault: {e}; \
             probes (ms after the fault: node): {web_timeline}"
        )
    });
    let before: Vec<_> = web
        .iter()
        .filter(|s| s.at <= fault_at)
        .filter_map(|s| s.value.clone())
        .collect();
    assert!(
        !before.is_empty() && before.iter().all(|n| *n == old_id),
        "before the fault the console must answer from {old_id} only: {web_timeline}"
    );
    let after: Vec<_> = web
        .iter()
        .filter(|s| s.started > gone_at)
        .filter_map(|s| s.value.clone())
        .collect();
    assert!(
        after.iter().all(|n| *n == new_id),
        "after the fault the console must answer from {new_id} only: {web_timeline}"
    );
    logins_back.unwrap_or_else(|e| {
        panic!(
            "no iSCSI login through {PORTAL} after the fault: {e}; \
             probes (ms after the fault: size): {}",
            timeline(&logins, fault_at)
        )
    });
    // The report that ends the silence is printed by the first read after
    // it; the one after that counts only reads of the resumed session.
    let resumed = reports
        .iter()
        .filter(|r| r.at > held_at && r.iops > 0)
        .count();
    assert!(
        reads_back && resumed >= 2 && perf_running,
        "iscsi-perf did not resume reading through {PORTAL} (running: {perf_running}, \
         reports with reads after the takeover: {resumed}):\n{perf_out}"
    );
    // The bytes written before the fault are on the shared image, which the
    // new leader's target serves; compared again through the VIP, now the
    // new leader.
    assert_eq!(
        image_fill(svc.image(), COMPARED_BLOCKS),
        Some(MULTIPATH_LAST_FILL),
        "the shared image changed through the fault"
    );
    assert_eq!(
        svc.target(new).backing_stores(),
        vec![svc.image().to_path_buf()],
        "{new_id}'s target does not serve the shared image"
    );
    let run = write_and_compare(&c.client, [portal, portal]);
    eprintln!(
        "[{hint}] after: written and compared through {PORTAL} ({new_id}): {} asserts passed",
        run.asserts_passed
    );
    assert_eq!(
        read_capacity(&c.client, portal, Duration::from_secs(5)),
        Some(IMAGE_SIZE)
    );
}

#[test]
fn initiator_keeps_its_storage_when_the_leader_is_cut_off() {
    storage_and_console_survive(Fault::LinkCut, "svc-cut");
}

#[test]
fn initiator_keeps_its_storage_when_vipd_is_killed() {
    storage_and_console_survive(Fault::Sigkill, "svc-kill");
}
