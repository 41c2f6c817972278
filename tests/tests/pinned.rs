//! The fence survives the agent: vipd pins its XDP and egress links and its
//! maps in the host's bpffs (the lab mounts one per host and hands it over
//! as VIPD_BPF_DIR). A SIGKILLed leader's VIPs are fenced at lease end by
//! the kernel alone, while their addresses are still in its kernel; a
//! restarted vipd adopts the pinned links (same link, new program, never
//! detached); `vipctl cleanup` and a graceful stop remove it all.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use vipd_tests::{
    cluster::{Cluster, ZkKind, vip_set},
    draw::Draw,
    lab::{Host, HostIf, Lab, vipctl_bin, vipd_bin},
    probe::{Observer, Options, Target},
    vipd::Vipd,
};

const VIP: &str = "192.0.2.100";
/// Interval between two probe rounds.
const EVERY: Duration = Duration::from_millis(10);
/// A round sent this soon after the latest possible lease end may still
/// have met the lease (a frame in flight, the send time taken around it).
const TOLERANCE: Duration = Duration::from_millis(5);

/// SIGKILL of the leader, nothing cleaned up: from its lease end on, the
/// old node answers no probe (ARP, SYN) sent to its MAC.
fn killed_leader_serves_nothing_after_its_lease(
    hint: &str,
    session: Duration,
    lease: Duration,
    flags: &[&str],
) {
    let mut draw = Draw::from_env(hint, "VIPD_TEST_SEED");
    let mut c = Cluster::new(hint, ZkKind::Standalone, 3);
    c.vip_ok(&["set", "web", VIP]);
    c.start_all_with(session, flags);
    let vips = vip_set(&[VIP]);
    let old = c.first_leader(hint, &vips);
    // The leader's status: pinned, the VIP serving until its lease end.
    let status = c.status(old);
    let xdp = &status["xdp"];
    assert_eq!(xdp["pinned"], true, "{xdp}");
    let fence = xdp["fence"]
        .as_array()
        .and_then(|f| f.iter().find(|e| e["vip"] == VIP))
        .unwrap_or_else(|| panic!("no fence entry for {VIP}: {xdp}"));
    assert_eq!(fence["state"], "serving", "{fence}");
    assert!(fence["until_unix_ms"].as_u64().is_some(), "{fence}");
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
    // The kill lands anywhere in a renewal interval.
    std::thread::sleep(Duration::from_millis(400) + draw.duration_below(lease));

    let killed = Instant::now();
    c.kill_vipd(old);
    let (new, _) = c
        .wait_sole_holder(&vips, Some(old), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("no takeover from a killed leader: {e}"));
    // Past the old address's lifetime and the kernel's slack, whatever
    // the last renewal was.
    std::thread::sleep(Duration::from_millis(3500).saturating_sub(killed.elapsed()));
    let seen = observer.stop();

    let lease_end = killed + lease + TOLERANCE;
    let sent: std::collections::BTreeMap<u32, Instant> =
        seen.rounds.iter().map(|r| (r.seq, r.sent)).collect();
    let by_old = |from: Instant, to: Instant| -> Vec<(u32, f64)> {
        seen.answers
            .iter()
            .filter(|a| a.node == old)
            .filter_map(|a| Some((a.round, *sent.get(&a.round)?)))
            .filter(|(_, at)| *at >= from && *at < to)
            .map(|(round, at)| {
                (
                    round,
                    at.saturating_duration_since(killed).as_secs_f64() * 1e3,
                )
            })
            .collect()
    };
    assert!(
        !by_old(seen.started, killed).is_empty(),
        "the probe never saw the leader {} serve before the kill",
        c.nodes[old].id
    );
    let gone = seen
        .addr_changes
        .iter()
        .filter(|ch| ch.node == old && !ch.added && ch.at >= killed)
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
        "{} (SIGKILLed at +0, lease {} ms, address gone at {:?} ms) answered {} probes sent after its lease end: {}",
        c.nodes[old].id,
        lease.as_millis(),
        gone.map(|g| g.saturating_duration_since(killed).as_millis()),
        after.len(),
        shown.join(", ")
    );
    // Nobody cleaned up: the pinned fence is still there.
    let pins = pins_of(&c.nodes[old].host);
    assert!(
        pins.iter().any(|p| p.starts_with("xdp-")) && pins.iter().any(|p| p == "HELD_VIPS"),
        "the killed node's pinned fence: {pins:?}"
    );
    eprintln!(
        "[{hint}] {} killed; address gone {:?} ms after; no answer after +{} ms; {} holds the VIP",
        c.nodes[old].id,
        gone.map(|g| g.saturating_duration_since(killed).as_millis()),
        (lease + TOLERANCE).as_millis(),
        c.nodes[new].id
    );
    if let Some(g) = gone {
        eprintln!("[{hint}] the address outlived the lease: {}", g > lease_end);
    }
}

#[test]
fn a_killed_leader_at_a_200ms_lease_is_fenced_by_the_kernel_alone() {
    killed_leader_serves_nothing_after_its_lease(
        "pin-kill-200",
        Duration::from_secs(1),
        Duration::from_millis(200),
        &["--lease", "200ms"],
    );
}

#[test]
fn a_killed_leader_at_the_default_lease_is_fenced_by_the_kernel_alone() {
    // Session timeout 3 s: the default lease is a third of it.
    killed_leader_serves_nothing_after_its_lease(
        "pin-kill-default",
        Duration::from_secs(3),
        Duration::from_secs(1),
        &[],
    );
}

/// Names of the pins in `host`'s bpf dir (this build's layout).
fn pins_of(host: &Host) -> Vec<String> {
    let Some(dir) = host.bpf_dir() else {
        panic!("the lab mounted no bpffs for {}", host.name());
    };
    let layout = dir.join(format!("layout-{}", vipd_common::MAPS_LAYOUT));
    let mut names: Vec<String> = std::fs::read_dir(&layout)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The pinned XDP link of `host`'s eth0: (link id, program id).
fn xdp_link(host: &Host) -> Option<(u64, u64)> {
    let dir = host.bpf_dir()?;
    let layout = dir.join(format!("layout-{}", vipd_common::MAPS_LAYOUT));
    let pin = std::fs::read_dir(&layout)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("xdp-"))
        })?;
    link_ids(&pin)
}

fn link_ids(pin: &Path) -> Option<(u64, u64)> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(pin)
        .output()
        .expect("bpftool");
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((v["id"].as_u64()?, v["prog_id"].as_u64()?))
}

/// The XDP program id on `ifname` in `host`, as `ip link` shows it.
fn xdp_prog(host: &Host, ifname: &str) -> Option<u64> {
    let out = host.ip(&["-j", "-d", "link", "show", "dev", ifname]);
    let json: Value = serde_json::from_str(&out).ok()?;
    let xdp = json[0].get("xdp")?;
    xdp["prog"]["id"]
        .as_u64()
        .or_else(|| xdp["attached"][0]["prog"]["id"].as_u64())
        .or(Some(0))
}

fn single_node(hint: &str) -> (Lab, Host, Host) {
    let lab = Lab::new(hint);
    let n1 = lab.add_host(
        "n1",
        &[HostIf {
            bridge: 0,
            addr: "192.0.2.11/24",
        }],
    );
    let n2 = lab.add_host(
        "n2",
        &[HostIf {
            bridge: 0,
            addr: "192.0.2.12/24",
        }],
    );
    (lab, n1, n2)
}

/// A vipd killed and started again on the same node: the new one adopts
/// the pinned XDP link (same link id, its own program), and `ip link`
/// never shows eth0 without a program in between. A graceful stop then
/// removes the pins, and the program leaves eth0.
#[test]
fn a_restarted_vipd_adopts_the_pinned_links_without_a_gap() {
    let (lab, n1, _n2) = single_node("pin-restart");
    let vipd = Vipd::start(&lab, &n1, VIP, &[]);
    vipd.wait_held(&[VIP]);
    let (link_before, prog_before) =
        xdp_link(&n1).unwrap_or_else(|| panic!("no pinned XDP link: {:?}", pins_of(&n1)));
    assert_eq!(
        xdp_prog(&n1, "eth0"),
        Some(prog_before),
        "eth0 runs the pinned link's program"
    );

    // Sample eth0's program from before the kill to after the adoption.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, n1) = (stop.clone(), n1.clone());
        std::thread::spawn(move || {
            let mut samples: Vec<(Instant, Option<u64>)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                samples.push((Instant::now(), xdp_prog(&n1, "eth0")));
            }
            samples
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    vipd.stop(libc::SIGKILL, Duration::from_secs(5));
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let again = Vipd::start(&lab, &n1, VIP, &[]);
    again.wait_held(&[VIP]);
    let (link_after, prog_after) = xdp_link(&n1).expect("pinned XDP link after the restart");
    // The new program is on eth0 once the sampler sees it.
    wait_for(Duration::from_secs(5), || {
        xdp_prog(&n1, "eth0") == Some(prog_after)
    });
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler");

    let gaps: Vec<u128> = samples
        .iter()
        .filter(|(_, p)| p.is_none())
        .map(|(at, _)| at.saturating_duration_since(killed).as_millis())
        .collect();
    assert!(
        samples.len() > 20,
        "too few samples of eth0: {}",
        samples.len()
    );
    assert!(
        gaps.is_empty(),
        "eth0 had no XDP program in {} of {} samples during the restart (ms after the kill: {:?})",
        gaps.len(),
        samples.len(),
        &gaps[..gaps.len().min(20)]
    );
    assert_eq!(link_after, link_before, "the same link, adopted");
    assert_ne!(prog_after, prog_before, "the new vipd's program on it");
    let seen: Vec<u64> = samples.iter().filter_map(|(_, p)| *p).collect();
    assert!(
        seen.contains(&prog_before) && seen.contains(&prog_after),
        "{seen:?}"
    );
    let status = again.status();
    let row = status["xdp"]["attached"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["interface"] == "eth0"))
        .cloned()
        .unwrap_or_else(|| panic!("eth0 not attached: {status}"));
    assert_eq!(row["reason_code"], "adopted", "{row}");
    // The status says the fence is pinned, where, and the VIP's state (no
    // lease in single-node mode: serving without an end).
    let xdp = &status["xdp"];
    assert_eq!(xdp["pinned"], true, "{xdp}");
    let dir = n1.bpf_dir().expect("lab bpffs");
    assert_eq!(xdp["bpf_dir"], dir.display().to_string(), "{xdp}");
    let fence = xdp["fence"]
        .as_array()
        .and_then(|f| f.iter().find(|e| e["vip"] == VIP))
        .unwrap_or_else(|| panic!("no fence entry for {VIP}: {xdp}"));
    assert_eq!(fence["state"], "serving", "{fence}");
    assert_eq!(fence["until_unix_ms"], Value::Null, "{fence}");

    // A graceful stop removes the pinned fence.
    let (exit, _) = again.stop(libc::SIGTERM, Duration::from_secs(10));
    assert!(exit.success(), "vipd stopped with {exit:?}");
    assert_eq!(
        pins_of(&n1),
        Vec::<String>::new(),
        "pins after a graceful stop"
    );
    assert_eq!(
        xdp_prog(&n1, "eth0"),
        None,
        "XDP left eth0 after a graceful stop"
    );
}

/// After a SIGKILL the pinned program stays on eth0; `vipctl cleanup`
/// unpins it (the program leaves eth0) and removes the address.
#[test]
fn vipctl_cleanup_removes_the_pinned_fence() {
    let (lab, n1, _n2) = single_node("pin-cleanup");
    let vipd = Vipd::start(&lab, &n1, VIP, &[]);
    vipd.wait_held(&[VIP]);
    vipd.stop(libc::SIGKILL, Duration::from_secs(5));
    assert!(
        xdp_prog(&n1, "eth0").is_some(),
        "the pinned program outlives the kill"
    );
    let pins = pins_of(&n1);
    assert!(
        pins.iter().any(|p| p.starts_with("egress-")) && pins.iter().any(|p| p.starts_with("xdp-")),
        "{pins:?}"
    );

    let out = n1.exec(&[vipctl_bin().into_os_string(), "cleanup".into()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "vipctl cleanup: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("unpinned"), "{stdout}");
    assert_eq!(
        pins_of(&n1),
        Vec::<String>::new(),
        "pins after cleanup: {stdout}"
    );
    assert_eq!(xdp_prog(&n1, "eth0"), None, "XDP left eth0 after cleanup");
    let addrs = n1.ip(&["-j", "addr", "show", "dev", "eth0"]);
    assert!(
        !addrs.contains(VIP),
        "the VIP's address after cleanup: {addrs}"
    );
}

/// A --bpf-dir that is not on a bpffs: vipd refuses to start, naming the
/// directory, and creates nothing.
#[test]
fn a_bpf_dir_off_bpffs_is_refused_at_start() {
    let (lab, n1, _n2) = single_node("pin-notbpf");
    for sub in ["plain", "plain/deeper/still"] {
        let dir: PathBuf = lab.dir().join(sub);
        let socket = Vipd::new_socket(&lab, &n1);
        let p = n1.spawn_env(
            [
                vipd_bin().into_os_string(),
                "--config".into(),
                "/dev/null".into(),
                "--static-vips".into(),
                VIP.into(),
                "--xdp-mode".into(),
                "generic".into(),
                "--bpf-dir".into(),
                dir.clone().into_os_string(),
                "--api-socket".into(),
                socket.into_os_string(),
            ],
            &[("RUST_LOG", "info")],
        );
        let status = p
            .wait_timeout(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("vipd with --bpf-dir {} kept running", dir.display()));
        let stderr = p.stderr();
        assert!(!status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("{} is not on a BPF file system", dir.display())),
            "{stderr}"
        );
        assert!(!dir.exists(), "{} was created", dir.display());
        assert!(
            !n1.ip(&["-j", "addr", "show", "dev", "eth0"]).contains(VIP),
            "vipd added the VIP before refusing"
        );
        assert_eq!(xdp_prog(&n1, "eth0"), None, "XDP attached before refusing");
    }
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("condition not met within {limit:?}");
}
