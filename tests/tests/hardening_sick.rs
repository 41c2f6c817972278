//! A sick agent and what vipd runs: a leader whose engine hangs or panics
//! hands over without two holders; health checks and the hook run without
//! vipd's capabilities, in a minimal environment, in a process group killed
//! whole at the timeout, and unsafe programs are refused; a huge znode does
//! not flood the status or the log.

use std::{
    collections::BTreeSet,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use vipd_tests::{
    cluster::{Cluster, ZkKind, assert_no_overlap, monitors, vip_set, within},
    lab::{HostIf, Lab, require_root, vipd_bin},
    vipd::Vipd,
};

const WEB: [&str; 2] = ["192.0.2.100", "192.0.2.101"];
/// vipd's default session timeout.
const DEFAULT_T: Duration = Duration::from_secs(6);

/// One cluster at a time (a ZooKeeper JVM and vipds each).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes an executable script (root-owned, 0755) into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("writing a script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

/// Two nodes serving WEB at the default settings, each with the debug
/// engine fault file armed (absent until the test writes it).
fn sick_cluster(hint: &str) -> (Cluster, BTreeSet<std::net::Ipv4Addr>, usize, Vec<PathBuf>) {
    let mut c = Cluster::new(hint, ZkKind::Standalone, 2);
    c.vip_ok(&["set", "web", WEB[0], WEB[1]]);
    let faults: Vec<PathBuf> = (0..2)
        .map(|i| c.lab.dir().join(format!("engine-fault-{i}")))
        .collect();
    for (i, f) in faults.iter().enumerate() {
        let f = f.display().to_string();
        c.start_vipd_env(i, DEFAULT_T, &[], &[("VIPD_DEBUG_ENGINE_FAULT", &f)]);
    }
    for i in 0..2 {
        within(Duration::from_secs(15), || c.try_status(i).is_some())
            .unwrap_or_else(|e| panic!("vipd {i} never answered: {e}"));
    }
    let vips = vip_set(&WEB);
    let leader = c.first_leader(hint, &vips);
    (c, vips, leader, faults)
}

/// A leader whose engine hangs stops renewing: the other node takes over,
/// and the VIPs are never on both nodes.
#[test]
fn hung_leader_engine_hands_over_without_two_holders() {
    require_root();
    let _serial = serial();
    let (c, vips, old, faults) = sick_cluster("sick-hang");
    let mons = monitors(&c);
    let initial = c.holdings(&vips);
    let hung = Instant::now();
    std::fs::write(&faults[old], "hang").unwrap();
    let r = c.wait_sole_holder(&vips, Some(old), Duration::from_secs(15));
    let (new, took) = r.unwrap_or_else(|e| {
        panic!(
            "nobody took over from a leader with a hung engine: {e}; holdings {:?}; old leader's status {:?}",
            c.holdings(&vips),
            c.try_status(old).map(|s| s["zookeeper"].clone())
        )
    });
    assert_ne!(new, old);
    // The hung node must not come back as leader (it is not fit to lead).
    for _ in 0..50 {
        assert_eq!(c.sole_holder(&vips), Some(new), "after the takeover");
        std::thread::sleep(Duration::from_millis(40));
    }
    assert_no_overlap(&c, &mons, &vips, &initial, hung, "sick-hang");
    eprintln!(
        "[sick-hang] engine hung on {}; {} holds the VIPs {:.0} ms later",
        c.nodes[old].id,
        c.nodes[new].id,
        took.as_secs_f64() * 1000.0
    );
    let log = c.nodes[old].vipd.as_ref().unwrap().stderr();
    assert!(
        log.contains("engine has not applied"),
        "no log line about the stalled engine:\n{log}"
    );
}

/// A panic in the leader's engine aborts vipd (non-zero exit): its VIPs
/// leave and the other node takes over, never both at once.
#[test]
fn panicking_leader_aborts_and_hands_over() {
    require_root();
    let _serial = serial();
    let (c, vips, old, faults) = sick_cluster("sick-panic");
    let mons = monitors(&c);
    let initial = c.holdings(&vips);
    let at = Instant::now();
    std::fs::write(&faults[old], "panic").unwrap();
    let p = c.nodes[old].vipd.as_ref().unwrap();
    let status = p.wait_timeout(Duration::from_secs(10));
    let status = status.unwrap_or_else(|| {
        panic!(
            "vipd kept running after its engine panicked; status {:?}",
            c.try_status(old).map(|s| s["role"].clone())
        )
    });
    assert!(!status.success(), "exit status {status:?}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    let (new, took) = c
        .wait_sole_holder(&vips, Some(old), Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("no takeover after the panic: {e}"));
    assert_ne!(new, old);
    assert_no_overlap(&c, &mons, &vips, &initial, at, "sick-panic");
    eprintln!(
        "[sick-panic] vipd aborted ({status:?}); {} took over {:.0} ms after the panic",
        c.nodes[new].id,
        took.as_secs_f64() * 1000.0
    );
    let log = p.stderr();
    assert!(log.contains("panic"), "no panic in the log:\n{log}");
}

/// One host on a lab segment, for single-node runs.
fn one_host(hint: &str) -> (Lab, vipd_tests::lab::Host) {
    let lab = Lab::new(hint);
    let h = lab.add_host("n1", &[HostIf::on(0, "192.0.2.11/24")]);
    (lab, h)
}

/// The lines of /proc/self/status of a process started by vipd, and its
/// environment, as the scripts below record them.
const REPORT: &str = r#"grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/$$/status > "$OUT.status.tmp"
tr '\0' '\n' < /proc/$$/environ > "$OUT.env.tmp"
mv "$OUT.status.tmp" "$OUT.status"; mv "$OUT.env.tmp" "$OUT.env""#;

/// A check and the on-change hook each record their capabilities and
/// environment: every capability set is empty, no_new_privs is set, and
/// the environment holds PATH, LANG and (the hook) VIPD_* only.
#[test]
fn checks_and_hooks_run_without_capabilities_in_a_minimal_environment() {
    require_root();
    let (lab, host) = one_host("sick-caps");
    let dir = lab.dir().join("scripts");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = |n: &str| lab.dir().join(n).display().to_string();
    let check = script(
        &dir,
        "check",
        &format!("OUT={}\n{REPORT}\nexit 0", out("check")),
    );
    let hook = script(
        &dir,
        "hook",
        &format!("OUT={}\n{REPORT}\nexit 0", out("hook")),
    );
    let check_arg = format!("exec:{}", check.display());
    let hook_arg = hook.display().to_string();
    let vipd = Vipd::start_env(
        &lab,
        &host,
        "192.0.2.100",
        &["--check", &check_arg, "--on-change", &hook_arg],
        &[("VIPD_SECRET_TEST", "leaked"), ("HOME", "/root")],
    );
    for who in ["check", "hook"] {
        let status = PathBuf::from(out(&format!("{who}.status")));
        within(Duration::from_secs(10), || status.exists())
            .unwrap_or_else(|e| panic!("the {who} never ran: {e}"));
        let text = std::fs::read_to_string(&status).unwrap();
        for line in text.lines() {
            let (k, v) = line.split_once(':').unwrap();
            let v = v.trim();
            let want = if k == "NoNewPrivs" {
                "1"
            } else {
                "0000000000000000"
            };
            assert_eq!(v, want, "the {who}'s {k} is {v}:\n{text}");
        }
        assert_eq!(text.lines().count(), 6, "{text}");
        let env = std::fs::read_to_string(out(&format!("{who}.env"))).unwrap();
        for line in env.lines().filter(|l| !l.is_empty()) {
            let (k, v) = line.split_once('=').unwrap();
            let ok = match k {
                "PATH" => v == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG" => v == "C",
                // Only the hook gets the documented variables.
                "VIPD_ROLE" | "VIPD_NODE" | "VIPD_TERM" | "VIPD_VIPS" => who == "hook",
                _ => false,
            };
            assert!(ok, "the {who}'s environment has {line:?}:\n{env}");
        }
        assert!(env.contains("PATH="), "{env}");
    }
    drop(vipd);
}

/// PIDs of processes whose command line contains `marker`.
fn pids_with(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(marker) {
            out.push(pid);
        }
    }
    out
}

/// A check that forks a sleeper and hangs: at its timeout, no process of
/// its group is left.
#[test]
fn a_check_that_forks_leaves_no_process_at_its_timeout() {
    require_root();
    let (lab, host) = one_host("sick-fork");
    // A sleep length no other process uses: it finds the leftovers.
    let marker = format!("{}.{}", 400 + std::process::id() % 500, std::process::id());
    let check = script(
        lab.dir(),
        "forking-check",
        &format!("sleep {marker} &\nsleep {marker}\n"),
    );
    let arg = format!("exec:{}", check.display());
    let vipd = Vipd::start(
        &lab,
        &host,
        "192.0.2.100",
        &[
            "--check",
            &arg,
            "--check-timeout",
            "300ms",
            "--check-interval",
            "1s",
        ],
    );
    // Two timed-out runs.
    vipd.wait_until_status("two failed check runs", Duration::from_secs(10), |s| {
        s["health"]["checks"][0]["failures"].as_u64() >= Some(2)
    });
    let left = within(Duration::from_millis(500), || pids_with(&marker).is_empty());
    let pids = pids_with(&marker);
    for p in &pids {
        // SAFETY: kill(2) on PIDs this test's check started.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    assert!(
        left.is_ok(),
        "processes of the timed-out check are left: {pids:?}"
    );
    drop(vipd);
}

/// vipd refuses (exit 2, naming the path and why) a check or hook program
/// that is writable by group or others, not owned by root, or in a
/// directory writable by others; a root-owned 0755 program in a 0755
/// directory starts.
#[test]
fn unsafe_check_and_hook_programs_are_refused() {
    require_root();
    let lab = Lab::new("sick-refuse");
    let base = lab.dir().join("progs");
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    // (name, file mode, file owner, dir mode, what the error must say)
    let cases: [(&str, u32, u32, u32, &str); 6] = [
        ("o-w", 0o757, 0, 0o755, "writable by others"),
        ("g-w", 0o775, 0, 0o755, "writable by its group"),
        ("nobody", 0o755, 65534, 0o755, "not owned by root"),
        ("dir-o-w", 0o755, 0, 0o757, "writable by others"),
        ("dir-nobody", 0o755, 0, 0o755, "not owned by root"),
        ("ok", 0o755, 0, 0o755, ""),
    ];
    for (name, mode, owner, dir_mode, want) in cases {
        let dir = base.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(dir_mode)).unwrap();
        if name == "dir-nobody" {
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        }
        let p = script(&dir, "prog", "exit 0");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        if owner != 0 {
            std::os::unix::fs::chown(&p, Some(owner), Some(owner)).unwrap();
        }
        assert_eq!(std::fs::metadata(&p).unwrap().uid(), owner);
        for flag in ["--check", "--on-change"] {
            let value = if flag == "--check" {
                format!("exec:{}", p.display())
            } else {
                p.display().to_string()
            };
            let socket = lab.dir().join(format!("{name}.sock"));
            // Single-node mode, no interfaces touched: vipd is refused
            // before it loads anything, or it starts and is stopped.
            let mut child = std::process::Command::new(vipd_bin())
                .args([
                    "--config",
                    "/dev/null",
                    "--no-xdp",
                    "--static-vips",
                    "192.0.2.100",
                ])
                .args([flag, &value])
                .arg("--api-socket")
                .arg(&socket)
                .env("NO_COLOR", "1")
                .stderr(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut exited = None;
            while Instant::now() < deadline {
                if let Some(s) = child.try_wait().unwrap() {
                    exited = Some(s);
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if exited.is_none() {
                // SAFETY: kill(2) on the vipd this test started.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            }
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            if want.is_empty() {
                assert!(exited.is_none(), "{name} {flag}: refused: {err}");
            } else {
                assert_eq!(
                    exited.and_then(|s| s.code()),
                    Some(2),
                    "{name} {flag}: not refused ({exited:?}): {err}"
                );
                assert!(
                    err.contains(want) && err.contains(&dir.display().to_string()),
                    "{name} {flag}: the error does not say {want:?} and name the path: {err}"
                );
            }
        }
    }
}

/// A 1 MB service znode written by another client: the error in the status
/// and the log lines stay short; the other service keeps its VIPs.
#[test]
fn a_one_megabyte_znode_keeps_status_and_log_short() {
    require_root();
    let _serial = serial();
    let mut c = Cluster::new("sick-big", ZkKind::Standalone, 1);
    c.vip_ok(&["set", "web", WEB[0], WEB[1]]);
    c.vip_ok(&["set", "db", "192.0.2.110"]);
    c.start_all_with(DEFAULT_T, &[]);
    let web = vip_set(&WEB);
    let leader = c.first_leader("sick-big", &web);
    let path = format!("/vipd/{}/services/db", c.cluster);
    let big: Vec<u8> = std::iter::repeat_n(b'x', 1_000_000).collect();
    let hosts = c.hosts.clone();
    let credential = c.admin.zk_credential();
    c.admin.in_netns(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = zookeeper_client::Client::connector()
                .with_session_timeout(Duration::from_secs(5))
                .with_auth("digest", credential.as_bytes())
                .connect(&hosts)
                .await
                .unwrap();
            client.set_data(&path, &big, None).await.unwrap();
        })
    });
    within(Duration::from_secs(5), || {
        c.try_status(leader)
            .is_some_and(|s| s["zookeeper"]["services"]["db"]["error"].is_string())
    })
    .unwrap_or_else(|e| panic!("no error for db: {e}"));
    let s = c.status(leader);
    let err = s["zookeeper"]["services"]["db"]["error"].as_str().unwrap();
    assert!(
        err.len() < 400 && err.contains("1000000 bytes"),
        "error of {} bytes: {:.500}",
        err.len(),
        err
    );
    let whole = s.to_string();
    assert!(whole.len() < 20_000, "status of {} bytes", whole.len());
    for _ in 0..25 {
        assert!(web.is_subset(&c.held(leader, &web)), "web lost its VIPs");
        std::thread::sleep(Duration::from_millis(40));
    }
    let log = c.nodes[leader].vipd.as_ref().unwrap().stderr();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(
        longest < 2000,
        "a log line of {longest} bytes: {:.300}",
        log.lines().max_by_key(|l| l.len()).unwrap_or("")
    );
}

/// What the XDP maps hold per family (`MAX_VIPS` in vipd-common).
const XDP_CAPACITY: usize = 8192;

/// The IPv6 VIPs of the capacity test: 2001:db8:0:1::1:0 and up.
fn many_vips(n: usize) -> Vec<std::net::Ipv6Addr> {
    let base = u128::from("2001:db8:0:1::1:0".parse::<std::net::Ipv6Addr>().unwrap());
    (0..n as u128).map(|i| (base + i).into()).collect()
}

/// `GET /metrics` on `addr` from inside `host`.
fn metrics_body(host: &vipd_tests::lab::Host, addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    host.in_netns(|| {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        Some(buf.split_once("\r\n\r\n")?.1.to_string())
    })
}

/// More VIPs than the XDP maps hold, in single-node mode at the default
/// settings (XDP on): every VIP is still configured on the interface (the
/// kernel answers for those without an XDP entry), and the excess shows in
/// `vipctl status`, in the metrics and in one log line.
#[test]
fn more_vips_than_the_xdp_maps_hold_are_all_configured_and_reported() {
    require_root();
    let _serial = serial();
    let lab = Lab::new("sick-many");
    let host = lab.add_host("n1", &[HostIf::on(0, "192.0.2.11/24")]);
    host.add_addr6("eth0", "2001:db8:0:1::11/64");
    let extra = 5;
    let vips = many_vips(XDP_CAPACITY + extra);
    // In a file: the list is longer than one argument may be.
    let conf = lab.dir().join("many.toml");
    let list: Vec<String> = vips.iter().map(ToString::to_string).collect();
    std::fs::write(&conf, format!("static_vips = \"{}\"\n", list.join(","))).unwrap();
    let conf = conf.display().to_string();
    let listen = "127.0.0.1:9473";
    let vipd = Vipd::spawn_args(
        &host,
        Vipd::new_socket(&lab, &host),
        &[
            "--config",
            &conf,
            "--xdp-mode",
            "generic",
            "--metrics-listen",
            listen,
        ],
        &[],
    );
    let held = |s: &serde_json::Value| {
        s["vips"]
            .as_array()
            .map_or(0, |v| v.iter().filter(|v| v["state"] == "held").count())
    };
    let mut last = None;
    let done = within(Duration::from_secs(240), || {
        assert!(
            vipd.process.is_running(),
            "vipd exited: {:?}\n{}",
            vipd.process.try_status(),
            vipd.process.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
        last = vipd.try_vipctl(&["status", "--json"]);
        last.as_ref().is_some_and(|s| held(s) == vips.len())
    });
    let s = last.unwrap_or_default();
    done.unwrap_or_else(|e| {
        panic!(
            "not every VIP held: {e}; {} of {} held; xdp {}; last_reconcile {}",
            held(&s),
            vips.len(),
            s["xdp"],
            s["last_reconcile"]
        )
    });
    // In the kernel, every one of them.
    let on: BTreeSet<std::net::Ipv6Addr> = host
        .ipv6_addrs("eth0")
        .into_iter()
        .map(|a| a.addr)
        .collect();
    let missing: Vec<_> = vips.iter().filter(|v| !on.contains(v)).take(5).collect();
    assert!(missing.is_empty(), "not on eth0: {missing:?}...");
    // The report: status, metric, one log line.
    assert_eq!(s["xdp"]["capacity"], XDP_CAPACITY, "xdp {}", s["xdp"]);
    assert_eq!(s["xdp"]["over_capacity"], extra, "xdp {}", s["xdp"]);
    let errors = s["xdp"]["errors"].as_array().map_or(0, Vec::len);
    assert_eq!(errors, 0, "XDP errors: {:.600}", s["xdp"]["errors"]);
    let body = metrics_body(&host, listen.parse().unwrap()).expect("GET /metrics");
    let line = body
        .lines()
        .find(|l| l.starts_with("vipd_xdp_vips_over_capacity "))
        .unwrap_or_else(|| panic!("no vipd_xdp_vips_over_capacity metric"));
    assert_eq!(line, format!("vipd_xdp_vips_over_capacity {extra}"));
    // More passes change nothing: still one line.
    let passes = vipd.passes();
    host.add_addr6("eth0", "2001:db8:0:2::11/64");
    within(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(200));
        vipd.passes() > passes
    })
    .unwrap_or_else(|e| panic!("no pass after an address change: {e}"));
    let log = vipd.process.stderr();
    let reports: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("more VIPs than the XDP maps hold"))
        .collect();
    assert_eq!(reports.len(), 1, "{reports:#?}");
    assert!(
        reports[0].contains(&format!("{extra} VIPs have no XDP entry"))
            && reports[0].contains("capacity=8192"),
        "{}",
        reports[0]
    );
}
