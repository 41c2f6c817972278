//! The engine benchmark: how fast one vipd configures and announces 1, 100
//! and as many VIPs as the lab's address ranges hold, how fast it puts back
//! a VIP deleted by hand, and how fast `vipctl vip set` reaches the leader.
//! Addresses are timed by a netlink listener in the node's namespace, the
//! gratuitous ARP by a capture at a client on the same bridge.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use vipd_tests::{
    lab::{AddrMonitor, ArpFrame, Host, HostIf, Lab, LabProcess, vipctl_bin, vipd_bin},
    zk::ZkServer,
};

use super::{Progress, Summary, fmt_ms, timeline::log_time};

/// The node's own address, its gateway (which need not exist: the default
/// route only has to place the VIPs) and the client's address, all on br0.
const NODE_ADDR: &str = "192.0.2.11/24";
const GATEWAY: &str = "192.0.2.1";
const CLIENT_ADDR: &str = "192.0.2.12/24";
/// The same for IPv6: the VIPs of the IPv6 repair run (2001:db8:1::/64)
/// match only the default route and go on eth0 as /128.
const NODE_ADDR6: &str = "2001:db8::11/64";
const GATEWAY6: &str = "2001:db8::1";
/// Repetitions of the repair and `vipctl vip set` measurements.
const REPAIR_REPS: usize = 20;
const SET_REPS: usize = 10;
/// VIPs held while the repair is measured.
const REPAIR_VIPS: usize = 100;
/// vipd's default pacing (frames per second per interface) and form count
/// (`--garp-mode both`: a request and a reply per VIP).
const GARP_RATE: f64 = 500.0;
const FORMS: usize = 2;
/// The announcer's burst (vipd::announce::MAX_BURST).
const MAX_BURST: usize = 32;
/// Targets.
const TARGET_REPAIR_MS: f64 = 10.0;
const TARGET_SET_MS: f64 = 20.0;
const TARGET_1000_MS: f64 = 1000.0;
const TARGET_RSS_KB: f64 = 13.0 * 1024.0;

/// Every VIP the lab's ranges can hold on one node whose eth0 has
/// 192.0.2.11/24 and a default route: 198.51.100.0/24 and 203.0.113.0/24
/// go on eth0 as /32 (default route), 192.0.2.0/24 as /24 secondaries.
/// Network, broadcast, gateway, node and client addresses are left out.
fn lab_vips() -> Vec<Ipv4Addr> {
    let mut v = Vec::new();
    for net in [[198, 51, 100], [203, 0, 113]] {
        v.extend((1..=254).map(|h| Ipv4Addr::new(net[0], net[1], net[2], h)));
    }
    v.extend(
        (2..=254)
            .filter(|h| ![11, 12].contains(h))
            .map(|h| Ipv4Addr::new(192, 0, 2, h)),
    );
    v
}

/// The IPv6 repair run's VIPs: 2001:db8:1::1 on, off link (default route).
fn lab_vips6() -> Vec<IpAddr> {
    (1..=REPAIR_VIPS as u16)
        .map(|h| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, h)))
        .collect()
}

pub fn run(runs: usize) -> Result<String> {
    let all = lab_vips();
    let sizes = [1, 100, all.len()];
    let lab = Lab::new("bench-engine");
    let node = lab.add_host("n1", &[HostIf::on(0, NODE_ADDR)]);
    node.add_default_route(GATEWAY);
    node.add_addr6("eth0", NODE_ADDR6);
    node.add_default_route6(GATEWAY6, "eth0");
    let client = lab.add_host("c1", &[HostIf::on(0, CLIENT_ADDR)]);
    let empty_config = lab.dir().join("empty.toml");
    std::fs::write(&empty_config, "").context("writing an empty vipd config")?;

    let mut startup: Vec<(usize, Vec<StartupSample>)> = Vec::new();
    for &n in &sizes {
        let mut samples = Vec::new();
        for i in 0..runs {
            let what = format!("engine: {n} VIPs, run {}/{runs}", i + 1);
            samples.push(startup_run(
                &lab,
                &node,
                &client,
                &all[..n],
                &empty_config,
                &what,
            )?);
        }
        startup.push((n, samples));
    }
    let rss_no_xdp = rss_without_xdp(&lab, &node, all[0], &empty_config)?;
    let v4: Vec<IpAddr> = all[..REPAIR_VIPS].iter().map(|&v| v.into()).collect();
    let repair = repair_run(&lab, &node, &v4, &empty_config)?;
    let repair6 = repair_run(&lab, &node, &lab_vips6(), &empty_config)?;
    let set = set_run(&lab, &node, &empty_config)?;
    let renewals = [1, all.len()]
        .into_iter()
        .map(|n| renewal_run(&lab, &node, &empty_config, &all[..n]))
        .collect::<Result<Vec<_>>>()?;
    lab.teardown()
        .map_err(|e| anyhow::anyhow!("lab teardown: {}", e.join("; ")))?;
    Ok(section(
        &startup,
        rss_no_xdp,
        [&repair, &repair6],
        &set,
        &renewals,
        all.len(),
    ))
}

/// One start of vipd with `vips`, timed.
struct StartupSample {
    /// Process start to vipd's "leader term starts".
    to_leader: f64,
    /// Leader term start to the last VIP's NEWADDR.
    configured: f64,
    /// Leader term start to the first gratuitous ARP seen by the client.
    first_garp: f64,
    /// Leader term start to the last frame of the first pass (every VIP in
    /// every form seen once).
    last_garp: f64,
    /// VmHWM, KiB.
    hwm_kb: f64,
    /// VmRSS once the first pass is over, KiB.
    rss_kb: f64,
    /// SIGTERM to exit: stepping down removes every VIP.
    stop: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `b - a` in milliseconds, negative if `b` came first.
fn ms_between(a: Instant, b: Instant) -> f64 {
    if b >= a { ms(b - a) } else { -ms(a - b) }
}

fn vipd_args(config: &Path, socket: &Path) -> Vec<String> {
    vec![
        vipd_bin().display().to_string(),
        "--config".into(),
        config.display().to_string(),
        "--api-socket".into(),
        socket.display().to_string(),
        "--log-format".into(),
        "json".into(),
    ]
}

fn join_vips<A: ToString>(vips: &[A]) -> String {
    vips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// vipd's addresses must be gone between runs: a run starting on residue
/// would time nothing.
fn check_clean(node: &Host) -> Result<()> {
    let addrs = node.ipv4_addrs("eth0");
    if addrs.len() != 1 {
        bail!(
            "n1's eth0 should hold only {NODE_ADDR} between runs, it holds {} addresses \
             (vipd left VIPs behind?)",
            addrs.len()
        );
    }
    Ok(())
}

/// SIGTERM, and the time until vipd exited (it removes its VIPs first), ms.
fn stop_vipd(vipd: &LabProcess, node: &Host) -> Result<f64> {
    let t0 = Instant::now();
    // Generous: removing many VIPs one by one may take long on a busy machine,
    // and a SIGKILL would leave them behind and spoil the next run.
    let status = vipd.terminate(Duration::from_secs(120));
    let took = ms(t0.elapsed());
    if !status.success() {
        bail!(
            "vipd exited with {status} on SIGTERM; its log:\n{}",
            tail(&vipd.stderr(), 30)
        );
    }
    check_clean(node)?;
    Ok(took)
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn ensure_running(vipd: &LabProcess) -> Result<()> {
    if let Some(status) = vipd.try_status() {
        bail!(
            "vipd exited early ({status}); its log:\n{}",
            tail(&vipd.stderr(), 30)
        );
    }
    Ok(())
}

fn startup_run(
    lab: &Lab,
    node: &Host,
    client: &Host,
    vips: &[Ipv4Addr],
    config: &Path,
    what: &str,
) -> Result<StartupSample> {
    check_clean(node)?;
    let want: BTreeSet<Ipv4Addr> = vips.iter().copied().collect();
    let want_ip: BTreeSet<IpAddr> = vips.iter().map(|&v| v.into()).collect();
    let monitor = AddrMonitor::start(node);
    let capture = client.capture_arp("eth0");
    let clock = Clock::now();
    let started = Instant::now();
    let mut args = vipd_args(config, &lab.dir().join("vipd.sock"));
    args.extend(["--static-vips".to_string(), join_vips(vips)]);
    let vipd = node.spawn(&args);

    // The first pass takes about VIPs x forms / rate; allow plenty more.
    let limit = Duration::from_secs_f64(15.0 + 3.0 * (vips.len() * FORMS) as f64 / GARP_RATE);
    let mut progress = Progress::new(what);
    let (configured_at, last_garp_at, first_garp_at) = loop {
        ensure_running(&vipd)?;
        let added = monitor.first_adds(&want_ip);
        let seen = first_garps(&capture, &want);
        progress.update(format!(
            "{}/{} VIPs configured, {}/{} announcement frames",
            added.len(),
            want.len(),
            seen.len(),
            want.len() * FORMS
        ));
        if added.len() == want.len() && seen.len() == want.len() * FORMS {
            let first = capture
                .arp_frames()
                .iter()
                .filter(|(f, a)| !f.outgoing && a.is_gratuitous() && want.contains(&a.spa))
                .map(|(f, _)| f.at)
                .min()
                .expect("frames were seen");
            break (
                added.values().max().copied().expect("VIPs were added"),
                seen.values().max().copied().expect("frames were seen"),
                first,
            );
        }
        if started.elapsed() > limit {
            bail!(
                "{what}: after {limit:?} only {}/{} VIPs configured and {}/{} announcement \
                 frames seen; vipd's log:\n{}",
                added.len(),
                want.len(),
                seen.len(),
                want.len() * FORMS,
                tail(&vipd.stderr(), 30)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let hwm_kb = vm_kb(vipd.pid(), "VmHWM")?;
    let rss_kb = vm_kb(vipd.pid(), "VmRSS")?;
    let log = vipd.stderr();
    let leader =
        log_time(&log, "leader term starts").context("vipd never logged \"leader term starts\"")?;
    let leader = clock.instant(leader);
    let stop = stop_vipd(&vipd, node)?;
    let s = StartupSample {
        to_leader: ms_between(started, leader),
        configured: ms_between(leader, configured_at),
        first_garp: ms_between(leader, first_garp_at),
        last_garp: ms_between(leader, last_garp_at),
        hwm_kb,
        rss_kb,
        stop,
    };
    progress.finish(format!(
        "start->leader {} ms, leader->configured {} ms, ->first GARP {} ms, ->last GARP {} ms, \
         VmHWM {:.1} MiB, SIGTERM->exit {} ms",
        fmt_ms(s.to_leader),
        fmt_ms(s.configured),
        fmt_ms(s.first_garp),
        fmt_ms(s.last_garp),
        s.hwm_kb / 1024.0,
        fmt_ms(s.stop)
    ));
    Ok(s)
}

/// The first gratuitous ARP the client received for each (VIP, form).
fn first_garps(
    capture: &vipd_tests::lab::ArpCapture,
    want: &BTreeSet<Ipv4Addr>,
) -> BTreeMap<(Ipv4Addr, u16), Instant> {
    let mut seen = BTreeMap::new();
    for (f, a) in capture.arp_frames() {
        if f.outgoing || !a.is_gratuitous() || !want.contains(&a.spa) {
            continue;
        }
        if a.op == ArpFrame::REQUEST || a.op == ArpFrame::REPLY {
            seen.entry((a.spa, a.op)).or_insert(f.at);
        }
    }
    seen
}

/// Repair figures: hand deletion to the VIP's NEWADDR, in ms.
struct Repair {
    samples: Vec<f64>,
    misses: usize,
    /// vipd's own account of the repairing pass (`vipctl status`:
    /// last_reconcile.duration_us), ms.
    pass: Vec<f64>,
}

/// Repair figures for `vips`, all of one family, held at once.
fn repair_run(lab: &Lab, node: &Host, vips: &[IpAddr], config: &Path) -> Result<Repair> {
    check_clean(node)?;
    let want: BTreeSet<IpAddr> = vips.iter().copied().collect();
    let monitor = AddrMonitor::start(node);
    let socket = lab.dir().join("vipd.sock");
    let mut args = vipd_args(config, &socket);
    args.extend(["--static-vips".to_string(), join_vips(vips)]);
    let vipd = node.spawn(&args);
    let start = Instant::now();
    while monitor.first_adds(&want).len() < want.len() {
        ensure_running(&vipd)?;
        if start.elapsed() > Duration::from_secs(20) {
            bail!(
                "repair: vipd did not configure its {} VIPs in 20 s",
                want.len()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the first announcement pass and the XDP attach settle.
    std::thread::sleep(Duration::from_millis(1500));
    let family = family(vips);
    let mut progress = Progress::new(format!("engine: hand-deleted {family} VIP back"));
    let mut samples = Vec::new();
    let mut misses = 0;
    let mut pass = Vec::new();
    for (i, vip) in vips.iter().take(REPAIR_REPS).enumerate() {
        ensure_running(&vipd)?;
        let since = Instant::now();
        // /32 or /128: every VIP in this set sits on the default route's
        // interface.
        let host_prefix = if vip.is_ipv4() { 32 } else { 128 };
        node.del_addr("eth0", &format!("{vip}/{host_prefix}"));
        let t0 = Instant::now();
        let back = loop {
            let del = monitor.first_of(false, *vip, since);
            if let Some((d, n)) = del.and_then(|d| Some((d, monitor.first_of(true, *vip, d)?))) {
                break Some(ms_between(d, n));
            }
            if t0.elapsed() > Duration::from_secs(5) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        match back {
            Some(m) => samples.push(m),
            None => misses += 1,
        }
        // Events may still trigger a pass (the announcement does not, but
        // be sure the last pass is the repairing one).
        std::thread::sleep(Duration::from_millis(50));
        if let Some(us) = last_pass_us(&socket) {
            pass.push(us / 1000.0);
        }
        progress.update(format!(
            "{}/{REPAIR_REPS}: {}",
            i + 1,
            back.map_or("not back in 5 s".to_string(), |m| format!(
                "{} ms",
                fmt_ms(m)
            ))
        ));
        std::thread::sleep(Duration::from_millis(200));
    }
    let s = Summary::of(&samples);
    progress.finish(format!(
        "hand-deleted {family} VIP back: {} ms, {misses} not back in 5 s",
        s.map_or("-".into(), |s| s.cell())
    ));
    stop_vipd(&vipd, node)?;
    let left: Vec<String> = node
        .ipv6_addrs("eth0")
        .iter()
        .filter(|a| want.contains(&IpAddr::V6(a.addr)))
        .map(|a| a.addr.to_string())
        .collect();
    if !left.is_empty() {
        bail!("vipd left IPv6 VIPs behind: {}", left.join(", "));
    }
    Ok(Repair {
        samples,
        misses,
        pass,
    })
}

/// "IPv4" or "IPv6": the family of the first of `vips`.
fn family(vips: &[IpAddr]) -> &'static str {
    if vips.first().is_some_and(IpAddr::is_ipv6) {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// vipd's `last_reconcile` from `vipctl status --json`.
fn last_reconcile(socket: &Path) -> Option<serde_json::Value> {
    let out = Command::new(vipctl_bin())
        .args(["status", "--json", "--api-socket"])
        .arg(socket)
        .output()
        .ok()?;
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v["last_reconcile"].take())
}

/// The duration of vipd's last reconcile pass, microseconds.
fn last_pass_us(socket: &Path) -> Option<f64> {
    last_reconcile(socket)?["duration_us"].as_f64()
}

/// `vipctl vip set` figures, ms.
struct SetFigures {
    /// vipctl started to the new VIP's NEWADDR on the leader.
    to_vip: Vec<f64>,
    /// vipctl started to vipctl exited.
    vipctl: Vec<f64>,
    /// vipctl started to vipd's "VIP configuration read".
    to_read: Vec<f64>,
    /// vipd's "VIP configuration read" to the new VIP's NEWADDR.
    vipd_part: Vec<f64>,
    misses: usize,
}

fn set_run(lab: &Lab, node: &Host, config: &Path) -> Result<SetFigures> {
    check_clean(node)?;
    let mut progress = Progress::new("engine: vipctl vip set");
    progress.update("starting ZooKeeper in n1 (127.0.0.1:2181)");
    let zk = ZkServer::start_standalone(Ipv4Addr::LOCALHOST, Some(node.netns()));
    let hosts = zk.connect_string();
    let monitor = AddrMonitor::start(node);
    let clock = Clock::now();
    let mut args = vipd_args(config, &lab.dir().join("vipd.sock"));
    // Every rep adds a VIP the cluster never held, which by design first
    // waits for the address-conflict probe (`--probe-wait`): timed without
    // it, this is the configuration's path to the kernel.
    args.extend(
        [
            "--zk",
            &hosts,
            "--cluster",
            "bench",
            "--node-id",
            "n1",
            "--probe-wait",
            "0s",
        ]
        .map(String::from),
    );
    let vipd = node.spawn(&args);
    let start = Instant::now();
    while log_time(&vipd.stderr(), "leader term starts").is_none() {
        ensure_running(&vipd)?;
        if start.elapsed() > Duration::from_secs(30) {
            bail!(
                "vipd did not become leader within 30 s; its log:\n{}",
                tail(&vipd.stderr(), 30)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let vipctl = vipctl_bin();
    // Outside the lab's `ip netns exec`: the cluster credential by hand.
    let credential = node.zk_credential_file();
    let pool: Vec<Ipv4Addr> = (1..=SET_REPS as u8 + 1)
        .map(|h| Ipv4Addr::new(198, 51, 100, h))
        .collect();
    let mut figures = SetFigures {
        to_vip: Vec::new(),
        vipctl: Vec::new(),
        to_read: Vec::new(),
        vipd_part: Vec::new(),
        misses: 0,
    };
    // Rep 0 creates the service znode and is not counted; each later rep
    // adds one VIP to the list (`set` with the list so far plus one).
    for rep in 0..=SET_REPS {
        ensure_running(&vipd)?;
        let vips = &pool[..=rep];
        let new = vips[rep];
        let mut argv: Vec<String> = ["vip", "--zk", &hosts, "--cluster", "bench", "set", "bench"]
            .map(String::from)
            .to_vec();
        argv.extend(vips.iter().map(ToString::to_string));
        let log_before = vipd.stderr().lines().count();
        let since = Instant::now();
        // A child spawned from a thread inside n1 lives in n1: no `ip netns
        // exec` (its mount namespace work) in the timed path.
        let (t0, t_exit, out) = node.in_netns(|| {
            let t0 = Instant::now();
            let out = Command::new(&vipctl)
                .args(&argv)
                .env("VIPD_ZK_AUTH_FILE", &credential)
                .output();
            (t0, Instant::now(), out)
        });
        let out = out.with_context(|| format!("running {}", vipctl.display()))?;
        if !out.status.success() {
            bail!(
                "vipctl {} failed ({}): {}",
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let wait = Instant::now();
        let added = loop {
            if let Some(at) = monitor.first(true, new, since) {
                break Some(at);
            }
            if wait.elapsed() > Duration::from_secs(5) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        if rep == 0 {
            progress.update("service created (not counted)");
        } else {
            let log = vipd.stderr();
            let later: String = log.lines().skip(log_before).collect::<Vec<_>>().join("\n");
            let read = log_time(&later, "VIP configuration read").map(|r| clock.instant(r));
            if let Some(read) = read {
                figures.to_read.push(ms_between(t0, read));
            }
            if let (Some(read), Some(at)) = (read, added) {
                figures.vipd_part.push(ms_between(read, at));
            }
            figures.vipctl.push(ms_between(t0, t_exit));
            match added {
                Some(at) => figures.to_vip.push(ms_between(t0, at)),
                None => figures.misses += 1,
            }
            progress.update(format!(
                "{rep}/{SET_REPS}: {}",
                added.map_or("VIP not there after 5 s".to_string(), |at| format!(
                    "{} ms",
                    fmt_ms(ms_between(t0, at))
                ))
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    progress.finish(format!(
        "vipctl vip set -> VIP: {} ms, {} missed",
        Summary::of(&figures.to_vip).map_or("-".into(), |s| s.cell()),
        figures.misses
    ));
    stop_vipd(&vipd, node)?;
    drop(zk);
    Ok(figures)
}

/// The lease's steady cost: a leader holding `vips` at `--lease 200ms`
/// (renewed every 12.5 ms; addresses renewed with their lifetime about
/// every 0.3 s), left alone for [`RENEWAL_WINDOW`].
struct RenewalFigures {
    vips: usize,
    /// vipd's CPU time (user + system) over the window, ms.
    cpu_ms: f64,
    window: Duration,
    /// `RTM_NEWADDR` of our VIPs seen in the window: the lifetime renewals.
    address_renewals: usize,
    /// Reconcile passes in the window (`vipctl status`).
    passes: u64,
}

const RENEWAL_WINDOW: Duration = Duration::from_secs(10);
const RENEWAL_ARGS: [&str; 4] = ["--session-timeout", "1s", "--lease", "200ms"];

/// vipd's user + system CPU time so far (`/proc/PID/stat`), ms.
fn cpu_ms(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is
    // field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("no ')' in /proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("field {i} of /proc/{pid}/stat"))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(14)? + ticks(15)?) * 1000.0 / hz)
}

fn passes(socket: &Path) -> Result<u64> {
    last_reconcile(socket)
        .and_then(|r| r["passes"].as_u64())
        .context("no last_reconcile.passes in vipctl status --json")
}

fn renewal_run(lab: &Lab, node: &Host, config: &Path, vips: &[Ipv4Addr]) -> Result<RenewalFigures> {
    check_clean(node)?;
    let n = vips.len();
    let mut progress = Progress::new(format!("engine: lease renewals, {n} VIPs"));
    let zk = ZkServer::start_standalone(Ipv4Addr::LOCALHOST, Some(node.netns()));
    let hosts = zk.connect_string();
    let monitor = AddrMonitor::start(node);
    let socket = lab.dir().join("vipd.sock");
    let mut args = vipd_args(config, &socket);
    args.extend(["--zk", &hosts, "--cluster", "renew", "--node-id", "n1"].map(String::from));
    args.extend(RENEWAL_ARGS.map(String::from));
    let vipd = node.spawn(&args);
    let mut argv: Vec<String> = ["vip", "--zk", &hosts, "--cluster", "renew", "set", "bench"]
        .map(String::from)
        .to_vec();
    argv.extend(vips.iter().map(ToString::to_string));
    let out = node
        .in_netns(|| {
            Command::new(vipctl_bin())
                .args(&argv)
                .env("VIPD_ZK_AUTH_FILE", node.zk_credential_file())
                .output()
        })
        .context("running vipctl vip set")?;
    if !out.status.success() {
        bail!(
            "vipctl vip set failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let want: BTreeSet<Ipv4Addr> = vips.iter().copied().collect();
    let start = Instant::now();
    loop {
        ensure_running(&vipd)?;
        let added: BTreeSet<Ipv4Addr> = monitor
            .events()
            .iter()
            .filter(|e| e.new && want.contains(&e.addr.addr))
            .map(|e| e.addr.addr)
            .collect();
        if added.len() == n {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!(
                "{} of {n} VIPs on the leader after 30 s; its log:\n{}",
                added.len(),
                tail(&vipd.stderr(), 30)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Past the first pass and its announcements' pacing.
    progress.update("all VIPs held; settling 5 s");
    std::thread::sleep(Duration::from_secs(5));
    ensure_running(&vipd)?;
    let (cpu0, passes0, t0) = (cpu_ms(vipd.pid())?, passes(&socket)?, Instant::now());
    progress.update(format!("measuring for {} s", RENEWAL_WINDOW.as_secs()));
    std::thread::sleep(RENEWAL_WINDOW);
    let (cpu1, passes1, t1) = (cpu_ms(vipd.pid())?, passes(&socket)?, Instant::now());
    let address_renewals = monitor
        .events()
        .iter()
        .filter(|e| e.new && e.at >= t0 && e.at < t1 && want.contains(&e.addr.addr))
        .count();
    let f = RenewalFigures {
        vips: n,
        cpu_ms: cpu1 - cpu0,
        window: t1 - t0,
        address_renewals,
        passes: passes1.saturating_sub(passes0),
    };
    progress.finish(format!(
        "{n} VIPs: {:.1}% of a CPU, {address_renewals} address renewals, {} passes",
        f.cpu_share() * 100.0,
        f.passes
    ));
    stop_vipd(&vipd, node)?;
    drop(zk);
    Ok(f)
}

impl RenewalFigures {
    /// vipd's CPU time over the window's length.
    fn cpu_share(&self) -> f64 {
        self.cpu_ms / (self.window.as_secs_f64() * 1000.0)
    }
}

fn section(
    startup: &[(usize, Vec<StartupSample>)],
    rss_no_xdp_kb: f64,
    repairs: [&Repair; 2],
    set: &SetFigures,
    renewals: &[RenewalFigures],
    max_vips: usize,
) -> String {
    let cell = |v: &[f64]| Summary::of(v).map_or("-".to_string(), |s| s.cell());
    let mut s = String::new();
    let _ = writeln!(s, "## Engine\n");
    let _ = writeln!(
        s,
        "One vipd (release build, default settings: `--garp-mode both`, `--garp-rate 500`, \
         XDP attached in `auto` mode) on host n1, whose eth0 (br0) has {NODE_ADDR} and a \
         default route via {GATEWAY}; a client on br0 captures the gratuitous ARP. \
         Single-node mode (`--static-vips`) for the start-up figures. Times from vipd's \
         `leader term starts` log line (its own timestamp) to: the last VIP's `RTM_NEWADDR` \
         seen by a netlink listener in n1 (all configured); the first gratuitous ARP the client \
         received; the last frame of the first announcement pass (every VIP seen in both \
         forms). `start -> leader` is process start to that log line (it includes loading the \
         XDP program; attaching it to eth0 happens in the first pass, before the first \
         announcement). Peak RSS is vipd's `VmHWM` once \
         the first pass is over.\n"
    );
    let _ = writeln!(
        s,
        "| VIPs | runs | start -> leader | leader -> all configured | -> first GARP | \
         -> last GARP of first pass | pacing floor of the first pass | peak RSS (VmHWM) MiB | RSS after the first pass MiB | SIGTERM -> exit (VIPs removed) |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, samples) in startup {
        let col = |f: fn(&StartupSample) -> f64| samples.iter().map(f).collect::<Vec<_>>();
        let mib = |v: Vec<f64>| {
            Summary::of(&v).map_or("-".into(), |r| {
                format!("{:.1} ({:.1}-{:.1})", r.median, r.min, r.max)
            })
        };
        let rss = mib(col(|x| x.hwm_kb / 1024.0));
        let now = mib(col(|x| x.rss_kb / 1024.0));
        // A burst of MAX_BURST frames, then one every 1/rate.
        let expected = (n * FORMS).saturating_sub(MAX_BURST) as f64 / GARP_RATE * 1000.0;
        let _ = writeln!(
            s,
            "| {n} | {} | {} | {} | {} | {} | {} | {rss} | {now} | {} |",
            samples.len(),
            cell(&col(|x| x.to_leader)),
            cell(&col(|x| x.configured)),
            cell(&col(|x| x.first_garp)),
            cell(&col(|x| x.last_garp)),
            fmt_ms(expected),
            cell(&col(|x| x.stop)),
        );
    }
    let _ = writeln!(
        s,
        "\nThe pacing floor is when the first pass can end at the earliest: a burst of \
         {MAX_BURST} frames, then 500 frames/s (`--garp-rate`), two frames per VIP. \
         The lab ranges hold at most {max_vips} VIPs on one node (three /24s less network, \
         broadcast, gateway, node and client addresses), so 1000 VIPs cannot be placed; the \
         largest case is {max_vips}, and the 1000-VIP figure below is scaled linearly from it \
         (addresses are added one by one, so the cost per VIP is flat).\n"
    );
    let _ = writeln!(
        s,
        "Hand-deleted VIP back: vipd holds {REPAIR_VIPS} VIPs; `ip addr del` of one /32 VIP, \
         then the time from its `RTM_DELADDR` to its `RTM_NEWADDR` (both seen by the listener \
         in n1), {REPAIR_REPS} times, a different VIP each time. The IPv6 row is the same with \
         {REPAIR_VIPS} other VIPs (2001:db8:1::1 on; eth0 also has {NODE_ADDR6} and a default \
         route via {GATEWAY6}, so each is a /128 on eth0), in a vipd of its own. Both times are when the \
         listener read the event: a late read of the `RTM_DELADDR` on a busy machine shortens \
         a sample (hence minimums near zero), a late read of the `RTM_NEWADDR` lengthens it. `vipctl vip set`: a \
         cluster-mode vipd (ZooKeeper standalone in n1 on 127.0.0.1, tickTime 100 ms), leader; \
         `vipctl vip set bench <list + one VIP>` started from inside n1, then the time from \
         starting vipctl to the new VIP's `RTM_NEWADDR`, {SET_REPS} times (a first `set` that \
         creates the service is not counted). Its parts: vipctl's own run (connect to \
         ZooKeeper, write, close) and the time to vipd's `VIP configuration read` log line. \
         This vipd runs with `--probe-wait 0s`: with the default, a VIP the cluster never held \
         waits 200 ms more for the address-conflict probe before it is added (by design; a VIP \
         the cluster has held is added at once).\n"
    );
    let _ = writeln!(s, "| Figure | Measured: median (min-max) | Target | Met |");
    let _ = writeln!(s, "|---|---|---|---|");
    let met = |ok: bool| if ok { "yes" } else { "**no**" };
    for (repair, what) in repairs.into_iter().zip(["VIP", "IPv6 VIP"]) {
        let rep = Summary::of(&repair.samples);
        let _ = writeln!(
            s,
            "| Hand-deleted {what} back ({} of {REPAIR_REPS}{}) | {} ms | <= {TARGET_REPAIR_MS} ms | {} |",
            repair.samples.len(),
            if repair.misses > 0 {
                format!("; {} not back in 5 s", repair.misses)
            } else {
                String::new()
            },
            cell(&repair.samples),
            met(repair.misses == 0 && rep.is_some_and(|r| r.median <= TARGET_REPAIR_MS))
        );
        let _ = writeln!(
            s,
            "| ... vipd's repairing reconcile pass (`vipctl status`: dump links, routes, addresses; plan; add; XDP maps; queue the announcement) | {} ms | | |",
            cell(&repair.pass)
        );
    }
    let set_s = Summary::of(&set.to_vip);
    let _ = writeln!(
        s,
        "| `vipctl vip set` -> VIP on the leader ({} of {SET_REPS}{}) | {} ms | <= {TARGET_SET_MS} ms | {} |",
        set.to_vip.len(),
        if set.misses > 0 {
            format!("; {} not there in 5 s", set.misses)
        } else {
            String::new()
        },
        cell(&set.to_vip),
        met(set.misses == 0 && set_s.is_some_and(|r| r.median <= TARGET_SET_MS))
    );
    let _ = writeln!(
        s,
        "| ... of which vipctl's own run (start to exit) | {} ms | | |",
        cell(&set.vipctl)
    );
    let _ = writeln!(
        s,
        "| ... of which vipctl start -> vipd's `VIP configuration read` | {} ms | | |",
        cell(&set.to_read)
    );
    let _ = writeln!(
        s,
        "| ... of which vipd's `VIP configuration read` -> the VIP's `RTM_NEWADDR` | {} ms | | |",
        cell(&set.vipd_part)
    );
    if let Some((n, samples)) = startup.last() {
        let conf: Vec<f64> = samples.iter().map(|x| x.configured).collect();
        if let Some(c) = Summary::of(&conf) {
            let scaled = c.median * 1000.0 / *n as f64;
            let _ = writeln!(
                s,
                "| {n} VIPs configured (leader -> all `RTM_NEWADDR`) | {} ms | | |",
                c.cell()
            );
            let _ = writeln!(
                s,
                "| 1000 VIPs configured, scaled from {n} | {} ms | <= {TARGET_1000_MS} ms | {} |",
                fmt_ms(scaled),
                met(scaled <= TARGET_1000_MS)
            );
        }
    }
    let hwm: Vec<f64> = startup
        .iter()
        .flat_map(|(_, v)| v.iter().map(|x| x.hwm_kb))
        .collect();
    if let Some(h) = Summary::of(&hwm) {
        let _ = writeln!(
            s,
            "| Peak RSS (VmHWM), largest of every run | {:.1} MiB | <= {:.0} MiB | {} |",
            h.max / 1024.0,
            TARGET_RSS_KB / 1024.0,
            met(h.max <= TARGET_RSS_KB)
        );
    }
    let _ = writeln!(
        s,
        "| ... the same with `--no-xdp` (1 VIP): what the XDP program costs | {:.1} MiB | | |",
        rss_no_xdp_kb / 1024.0
    );
    if !renewals.is_empty() {
        let _ = writeln!(
            s,
            "\nThe lease's steady cost: a cluster-mode vipd (ZooKeeper standalone in n1 on \
             127.0.0.1), leader with `{}`: its lease renewed every 12.5 ms, its VIPs' kernel \
             lifetime (1 s) renewed with an address replace about every 0.3 s, its XDP \
             held-map expiry moved with every acknowledged renewal. Left alone 5 s after the \
             last VIP was added, then measured for {} s: vipd's CPU time (utime + stime in \
             `/proc/PID/stat`, 10 ms ticks), the VIPs' `RTM_NEWADDR` seen by the listener (the \
             lifetime renewals), and the reconcile passes counted in `vipctl status`. A \
             renewal's own address events must start no pass; the periodic ones (every \
             `--reconcile-interval`, 3 s by default, and each announcement round) are counted \
             too. {}\n",
            RENEWAL_ARGS.join(" "),
            RENEWAL_WINDOW.as_secs(),
            match (renewals.first(), renewals.last()) {
                (Some(a), Some(b)) if a.vips < b.vips && a.passes == b.passes => format!(
                    "As many passes ran with {} VIP(s) as with {}, whose address renewals \
                     were {:.0} times more: the renewals started none.",
                    a.vips,
                    b.vips,
                    b.address_renewals as f64 / a.address_renewals.max(1) as f64
                ),
                _ => "The pass counts differ between the rows: see whether renewals \
                      started passes."
                    .to_string(),
            }
        );
        let _ = writeln!(
            s,
            "| VIPs | vipd CPU (share of one CPU) | address renewals | per VIP per second | reconcile passes |\n|---|---|---|---|---|"
        );
        for r in renewals {
            let secs = r.window.as_secs_f64();
            let _ = writeln!(
                s,
                "| {} | {:.1}% | {} | {:.2} | {} |",
                r.vips,
                r.cpu_share() * 100.0,
                r.address_renewals,
                r.address_renewals as f64 / r.vips as f64 / secs,
                r.passes
            );
        }
    }
    s
}

/// VmHWM of vipd holding one VIP without the XDP program, KiB: how much of
/// the peak the program's loading costs.
fn rss_without_xdp(lab: &Lab, node: &Host, vip: Ipv4Addr, config: &Path) -> Result<f64> {
    check_clean(node)?;
    let monitor = AddrMonitor::start(node);
    let mut args = vipd_args(config, &lab.dir().join("vipd.sock"));
    args.extend([
        "--static-vips".to_string(),
        vip.to_string(),
        "--no-xdp".into(),
    ]);
    let vipd = node.spawn(&args);
    let start = Instant::now();
    while monitor.first(true, vip, start).is_none() {
        ensure_running(&vipd)?;
        if start.elapsed() > Duration::from_secs(20) {
            bail!("vipd --no-xdp did not configure {vip} in 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first pass's announcement, then the figure.
    std::thread::sleep(Duration::from_millis(500));
    let kb = vm_kb(vipd.pid(), "VmHWM")?;
    stop_vipd(&vipd, node)?;
    eprintln!("[engine: --no-xdp] VmHWM {:.1} MiB", kb / 1024.0);
    Ok(kb)
}

/// A `Vm*` line of a process's status (VmHWM, VmRSS), KiB.
fn vm_kb(pid: u32, key: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// Maps vipd's log timestamps (wall clock) onto `Instant`s.
struct Clock {
    instant: Instant,
    wall: SystemTime,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn instant(&self, wall: SystemTime) -> Instant {
        match wall.duration_since(self.wall) {
            Ok(after) => self.instant + after,
            Err(e) => self.instant - e.duration(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_holds_759_vips_all_distinct_and_clear_of_the_hosts() {
        let v = lab_vips();
        let set: BTreeSet<_> = v.iter().collect();
        assert_eq!(v.len(), 759);
        assert_eq!(set.len(), v.len());
        for taken in [
            "192.0.2.1",
            "192.0.2.11",
            "192.0.2.12",
            "192.0.2.255",
            "198.51.100.0",
        ] {
            assert!(
                !set.contains(&taken.parse::<Ipv4Addr>().unwrap()),
                "{taken}"
            );
        }
    }
}
