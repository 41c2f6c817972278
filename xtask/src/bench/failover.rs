//! `bench failover`: how long a client goes without its service when the
//! VIP's holder fails (link cut, silent partition, SIGKILL, SIGSTOP), for
//! vipd at session timeouts of 1 s and 6 s (its default lease) and with
//! `--lease 200ms`, and at 1 s with an IPv6 VIP, side by side with
//! keepalived at two advert intervals; and how long the VIP was on two
//! nodes at once (for vipd: never).

use std::{
    fmt::Write as _,
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Options,
    table::Table,
    timeline::{
        self, Agent, FailoverLab, Fault, KeepalivedSettings, PlotRow, Takeover, VIP, VIP6,
        VipdSettings, between, binaries, install_sigint_handler, preflight, progress, spread,
        spread_ms,
    },
};

/// Runs per fault and system when `--runs` is not given.
pub const DEFAULT_RUNS: usize = 20;
const GARP_INTERVAL: Duration = Duration::from_secs(1);
const GARP_ROUNDS: u32 = 3;
/// vipd's default `--takeover-margin`.
const MARGIN: Duration = Duration::from_millis(100);
/// The renewal interval never drops below this in vipd.
const MIN_RENEW: Duration = Duration::from_millis(10);
/// How late the kernel may remove an address whose lifetime ran out
/// (its lifetime check runs on a rounded timer; docs/DESIGN.md facts: measured 0.12-0.15 s).
const KERNEL_SLACK: Duration = Duration::from_millis(250);
/// keepalived's priorities in the lab (n1, n2, n3).
const PRIORITIES: [u32; 3] = [100, 99, 98];

/// One system under test: what runs on the three nodes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum System {
    Vipd {
        session_timeout: Duration,
        /// `--lease` (None: vipd's default, no flag passed).
        lease: Option<Duration>,
        /// The VIP is [`VIP6`] (the client served over IPv6), not [`VIP`].
        ipv6: bool,
    },
    Keepalived {
        advert_int: Duration,
    },
}

/// The rows of the bench, in the order of the tables.
pub const SYSTEMS: [System; 6] = [
    System::Vipd {
        session_timeout: Duration::from_secs(1),
        lease: None,
        ipv6: false,
    },
    System::Vipd {
        session_timeout: Duration::from_secs(1),
        lease: None,
        ipv6: true,
    },
    System::Vipd {
        session_timeout: Duration::from_secs(1),
        lease: Some(Duration::from_millis(200)),
        ipv6: false,
    },
    System::Vipd {
        session_timeout: Duration::from_secs(6),
        lease: None,
        ipv6: false,
    },
    System::Keepalived {
        advert_int: Duration::from_millis(300),
    },
    System::Keepalived {
        advert_int: Duration::from_millis(100),
    },
];

/// vipd's default session timeout: the T of "zero overlap at the default T".
const DEFAULT_T: Duration = Duration::from_secs(6);

impl System {
    /// The row heading.
    pub fn label(&self) -> String {
        match *self {
            System::Vipd {
                session_timeout,
                lease,
                ipv6,
            } => format!(
                "vipd T = {}, {}{}",
                secs(session_timeout),
                lease.map_or("default lease".to_string(), |l| format!(
                    "`--lease {}ms`",
                    l.as_millis()
                )),
                if ipv6 { ", IPv6 VIP" } else { "" }
            ),
            System::Keepalived { advert_int } => {
                format!("keepalived `advert_int {}`", advert_int.as_secs_f64())
            }
        }
    }

    /// A short name for progress lines and the plot.
    pub fn short(&self) -> String {
        match *self {
            System::Vipd {
                session_timeout,
                lease,
                ipv6,
            } => {
                let l = lease.map_or(String::new(), |l| format!(" lease {}ms", l.as_millis()));
                let v6 = if ipv6 { " v6" } else { "" };
                format!("vipd T={}s{l}{v6}", session_timeout.as_secs_f64())
            }
            System::Keepalived { advert_int } => {
                format!("keepalived {}s", advert_int.as_secs_f64())
            }
        }
    }

    pub(super) fn agent(&self) -> Agent {
        match *self {
            System::Vipd {
                session_timeout, ..
            } => Agent::Vipd(VipdSettings {
                session_timeout,
                garp_interval: GARP_INTERVAL,
                garp_rounds: GARP_ROUNDS,
            }),
            System::Keepalived { advert_int } => {
                Agent::Keepalived(KeepalivedSettings { advert_int })
            }
        }
    }

    pub(super) fn lease(&self) -> Option<Duration> {
        match *self {
            System::Vipd { lease, .. } => lease,
            System::Keepalived { .. } => None,
        }
    }

    /// The service address of this row's lab.
    pub(super) fn vip(&self) -> IpAddr {
        match *self {
            System::Vipd { ipv6: true, .. } => VIP6.into(),
            System::Vipd { .. } | System::Keepalived { .. } => VIP.into(),
        }
    }

    fn lab_hint(&self) -> String {
        match *self {
            System::Vipd {
                session_timeout,
                lease,
                ipv6,
            } => format!(
                "fov{}{}{}",
                session_timeout.as_secs(),
                lease.map_or(String::new(), |l| format!("l{}", l.as_millis())),
                if ipv6 { "v6" } else { "" }
            ),
            System::Keepalived { advert_int } => format!("foka{}", advert_int.as_millis()),
        }
    }

    /// The longest a takeover may take before the run counts as failed.
    pub(super) fn timeout(&self) -> Duration {
        match *self {
            System::Vipd {
                session_timeout, ..
            } => session_timeout * 4 + Duration::from_secs(10),
            System::Keepalived { .. } => Duration::from_secs(20),
        }
    }
}

/// A small count in words, for the prose.
fn number(n: usize) -> String {
    const WORDS: [&str; 10] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    WORDS.get(n).map_or(n.to_string(), |w| (*w).to_string())
}

/// `1 s`, `0.5 s`.
fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// vipd's lease rule (R15, R16) for a session timeout and `--lease`: the
/// numbers that bound each vipd row. The same arithmetic as vipd's own
/// (`vipd check-config` prints it; the bench checks that they agree).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRule {
    pub lease: Duration,
    pub renew_every: Duration,
    /// How often the next in line reads the leader's znode.
    pub poll_every: Duration,
    /// The next in line's wait without a renewal: lease + renewal + margin.
    pub takeover_after: Duration,
    /// The VIP address's kernel lifetime (whole seconds, at least 1).
    pub lifetime: Duration,
}

impl LeaseRule {
    pub fn new(session_timeout: Duration, lease: Option<Duration>) -> LeaseRule {
        let lease = lease.unwrap_or(session_timeout / 3);
        // Renewals: a quarter of the lease from 1 s on, a sixteenth below;
        // the next in line's reads: an eighth, a sixteenth below.
        let short = lease < Duration::from_secs(1);
        let (renew_part, poll_part) = if short { (16, 16) } else { (4, 8) };
        let renew_every = (lease / renew_part).max(MIN_RENEW);
        LeaseRule {
            lease,
            renew_every,
            poll_every: (lease / poll_part).max(MIN_RENEW),
            takeover_after: lease + renew_every + MARGIN,
            lifetime: Duration::from_secs(lease.as_secs().max(1)),
        }
    }

    /// The earliest and latest takeover after a fault: the last renewal the
    /// next in line saw is up to one renewal interval old at the fault; it
    /// reads that renewal when its watch fires and reads again the moment
    /// the wait is up (a read's round trip late each time, bounded here by
    /// one poll interval).
    pub fn takeover_window(&self) -> (Duration, Duration) {
        (
            self.takeover_after.saturating_sub(self.renew_every),
            self.takeover_after + self.poll_every,
        )
    }

    /// How long a killed or frozen holder's address can outlast the
    /// takeover: it leaves the kernel up to lifetime + slack after the
    /// last renewal, the takeover comes `takeover_after` after it at the
    /// earliest. Zero: no overlap is possible.
    pub fn kill_overlap(&self) -> Duration {
        (self.lifetime + KERNEL_SLACK).saturating_sub(self.takeover_after)
    }

    /// Parses vipd's own statement of its lease (`vipd check-config`):
    /// `# lease 200 ms: renewed every 50 ms; the next in line takes over
    /// after 350 ms without a renewal; VIP addresses carry a kernel
    /// lifetime of 1 s` -> (lease, renewal, takeover, lifetime).
    pub fn parse_vipd(text: &str) -> Option<(Duration, Duration, Duration, Duration)> {
        let line = text.lines().find(|l| l.starts_with("# lease "))?;
        let num_after = |key: &str| -> Option<u64> {
            let at = line.find(key)? + key.len();
            line[at..]
                .trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        Some((
            Duration::from_millis(num_after("# lease")?),
            Duration::from_millis(num_after("renewed every")?),
            Duration::from_millis(num_after("takes over after")?),
            Duration::from_secs(num_after("kernel lifetime of")?),
        ))
    }
}

/// keepalived's master-down interval for a backup of `priority`:
/// 3 x advert_int + (256 - priority) / 256 x advert_int.
pub fn master_down(advert_int: Duration, priority: u32) -> Duration {
    advert_int * 3 + advert_int * (256 - priority) / 256
}

/// What vipd says about its lease for these settings: Ok(None) when this
/// build has no `--lease` (then no lease row runs), an error when its
/// arithmetic differs from [`LeaseRule`].
pub(super) fn vipd_lease_check(
    bins: &std::path::Path,
    system: &System,
) -> Result<Option<LeaseRule>> {
    let System::Vipd {
        session_timeout,
        lease,
        ..
    } = *system
    else {
        return Ok(None);
    };
    // Options before the subcommand: every vipd takes them there.
    let mut cmd = Command::new(bins.join("vipd"));
    cmd.args([
        "--config",
        "/dev/null",
        "--zk",
        "192.0.2.1:2181",
        "--session-timeout",
    ])
    .arg(format!("{}ms", session_timeout.as_millis()));
    if let Some(l) = lease {
        cmd.arg("--lease").arg(format!("{}ms", l.as_millis()));
    }
    cmd.arg("check-config");
    let out = cmd.output().context("running vipd check-config")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if err.contains("--lease") && lease.is_some() {
            return Ok(None);
        }
        bail!("vipd check-config for {}: {}", system.label(), err.trim());
    }
    let Some((l, r, t, life)) = LeaseRule::parse_vipd(&text) else {
        return Ok(None);
    };
    let rule = LeaseRule::new(session_timeout, lease);
    // vipd prints whole ms, rounded down as `as_millis` does.
    let whole = |d: Duration| d.as_millis();
    if (whole(l), whole(r), whole(t), life)
        != (
            whole(rule.lease),
            whole(rule.renew_every),
            whole(rule.takeover_after),
            rule.lifetime,
        )
    {
        bail!(
            "vipd's lease for {} ({l:?}, renewal {r:?}, takeover after {t:?}, lifetime {life:?}) \
             differs from the bench's arithmetic ({rule:?}): update LeaseRule",
            system.label()
        );
    }
    Ok(Some(rule))
}

/// The takeovers of one system under one fault.
struct Cell {
    system: System,
    fault: Fault,
    runs: Vec<Takeover>,
    /// Runs whose cluster did not settle after the fault ended.
    restore_failures: Vec<String>,
}

pub fn run(opts: &Options) -> Result<String> {
    preflight()?;
    install_sigint_handler();
    let runs = opts.runs.unwrap_or(DEFAULT_RUNS);
    let faults: Vec<Fault> = if opts.faults.is_empty() {
        Fault::ALL.to_vec()
    } else {
        Fault::ALL
            .into_iter()
            .filter(|f| opts.faults.contains(f))
            .collect()
    };
    if let Some(f) = opts.faults.iter().find(|f| !Fault::ALL.contains(f)) {
        bail!(
            "bench failover does not measure {} (bench services does)",
            f.arg()
        );
    }
    if runs < 10 {
        eprintln!(
            "bench failover: {runs} runs per fault and system (at least 10 give figures worth quoting)"
        );
    }
    let bins = binaries()?;
    let start = Instant::now();
    let p = |s: &str| progress(start, &format!("failover: {s}"));

    // Which rows this vipd can run, and its lease arithmetic for each.
    let mut systems = Vec::new();
    let mut rules = Vec::new();
    let mut lease_supported = true;
    for s in SYSTEMS {
        let rule = vipd_lease_check(&bins, &s)?;
        if matches!(s, System::Vipd { .. }) && rule.is_none() {
            lease_supported = false;
            if s.lease().is_some() {
                p(&format!(
                    "skipping {}: this vipd has no --lease (vipd check-config refuses it)",
                    s.label()
                ));
                continue;
            }
        }
        systems.push(s);
        rules.push(rule);
    }

    let mut clusters = Vec::new();
    for s in &systems {
        let sp = |m: &str| p(&format!("{}: {m}", s.short()));
        let c = FailoverLab::start_with(&s.lab_hint(), s.agent(), s.lease(), s.vip(), &bins, &sp)
            .with_context(|| format!("starting the lab cluster for {}", s.label()))?;
        clusters.push(c);
    }
    let mut cells: Vec<Cell> = Vec::new();
    for &fault in &faults {
        let first = cells.len();
        for &system in &systems {
            cells.push(Cell {
                system,
                fault,
                runs: Vec::new(),
                restore_failures: Vec::new(),
            });
        }
        for r in 0..runs {
            // Alternating, so every system sees the same machine load over time.
            for (i, (s, c)) in systems.iter().zip(&clusters).enumerate() {
                let mut tk = c.takeover_on(fault, Duration::ZERO, s.timeout())?;
                let restored = c.restore_from(&mut tk);
                p(&format!(
                    "{} {} run {}/{runs}: {}, fault ended {} ms, then unserved {} ms{}{}",
                    s.short(),
                    fault.arg(),
                    r + 1,
                    summary(c, &tk),
                    tk.healed.map_or(0, |d| d.as_millis()),
                    tk.after_heal_outage.map_or(0, |d| d.as_millis()),
                    if tk.leftover_removed {
                        " (bench removed the old holder's VIP)"
                    } else {
                        ""
                    },
                    tk.client_flushed
                        .as_ref()
                        .map_or(String::new(), |n| format!(
                            " (bench flushed the client's neighbour entry: {n})"
                        ))
                ));
                if let Err(e) = restored {
                    p(&format!("restore failed: {e:#}; waiting for one holder"));
                    cells[first + i]
                        .restore_failures
                        .push(format!("run {}: {e:#}", r + 1));
                    c.wait_settled(Duration::from_secs(60))
                        .context("the cluster did not settle after a failed restore")?;
                }
                cells[first + i].runs.push(tk);
            }
        }
    }
    p("tearing the labs down");
    drop(clusters);

    if let Some(svg) = plot(&cells) {
        let docs = crate::workspace_root().join("docs");
        std::fs::create_dir_all(&docs)?;
        let path = docs.join("failover.svg");
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        p(&format!("wrote {}", path.display()));
    }
    let md = report(runs, &faults, &systems, &rules, lease_supported, &cells);
    p("bench failover done");
    Ok(md)
}

/// One line per run for the progress output.
pub fn summary(c: &FailoverLab, t: &Takeover) -> String {
    let f = |d: Option<Duration>| d.map_or("-".to_string(), timeline::ms);
    format!(
        "{} -> {}: elected {} ms, VIP configured {} ms, first {} {} ms, neighbour {} ms, served {} ms, old holder removed {} ms, overlap {} ms",
        c.nodes[t.old].name,
        t.new.map_or("none", |n| c.nodes[n].name.as_str()),
        f(t.elected),
        f(t.configured),
        if c.vip.is_ipv6() { "NA" } else { "GARP" },
        f(t.first_garp),
        f(t.neigh_switched),
        f(t.served),
        f(t.old_removed),
        t.overlap.as_millis()
    )
}

/// The timeline plot: every link-cut run of every system.
fn plot(cells: &[Cell]) -> Option<String> {
    let rows: Vec<PlotRow> = cells
        .iter()
        .filter(|c| c.fault == Fault::Cut)
        .flat_map(|c| {
            c.runs.iter().enumerate().map(|(i, t)| PlotRow {
                label: format!("{} #{}", c.system.short(), i + 1),
                takeover: t.clone(),
            })
        })
        .collect();
    (!rows.is_empty()).then(|| {
        timeline::timeline_svg(
            "Failover timelines after a link cut: vipd and keepalived, every run",
            &rows,
        )
    })
}

// ---------------------------------------------------------------- cells

/// `median (min–max)` of the client's first answer from the new holder,
/// with how many runs got one when not all did.
pub fn served_cell(ts: &[Takeover]) -> String {
    let v: Vec<Duration> = ts.iter().filter_map(|t| t.served).collect();
    let mut s = spread_ms(v.clone());
    if v.len() < ts.len() {
        let _ = write!(s, " [{} of {} served]", v.len(), ts.len());
    }
    s
}

/// When the old holder removed the VIP by itself; runs where it did not
/// (before the bench ended the fault) are counted.
pub fn removed_cell(ts: &[Takeover]) -> String {
    let v: Vec<Duration> = ts.iter().filter_map(|t| t.old_removed).collect();
    if v.is_empty() {
        return format!("never by itself ({} of {})", ts.len(), ts.len());
    }
    let mut s = spread_ms(v.clone());
    if v.len() < ts.len() {
        let _ = write!(
            s,
            " [not by itself in {} of {}]",
            ts.len() - v.len(),
            ts.len()
        );
    }
    s
}

/// The longest overlap and how many runs had one; how many of those
/// lasted until the bench ended the fault.
pub fn overlap_cell(ts: &[Takeover]) -> String {
    let bad: Vec<&Takeover> = ts.iter().filter(|t| !t.overlap.is_zero()).collect();
    if bad.is_empty() {
        return format!("**0** (0 of {})", ts.len());
    }
    let worst = bad.iter().map(|t| t.overlap).max().unwrap_or_default();
    let by_bench = bad.iter().filter(|t| t.overlap_ended_by_bench()).count();
    let mut s = format!(
        "{} longest, median {} ({} of {})",
        timeline::ms(worst),
        timeline::ms(spread(bad.iter().map(|t| t.overlap).collect()).map_or(worst, |m| m.0)),
        bad.len(),
        ts.len()
    );
    if by_bench > 0 {
        let _ = write!(s, "; {by_bench} until the bench ended the fault");
    }
    s
}

/// The longest stretch without service after the fault ended, and how
/// often the bench had to flush the client's stale neighbour entry.
pub fn after_heal_cell(ts: &[Takeover]) -> String {
    let mut s = spread_ms(ts.iter().filter_map(|t| t.after_heal_outage).collect());
    let flushed = ts.iter().filter(|t| t.client_flushed.is_some()).count();
    if flushed > 0 {
        let _ = write!(s, " [{flushed} of {} flushed]", ts.len());
    }
    s
}

/// The median of the client's first answer, in ms.
fn served_median(ts: &[Takeover]) -> Option<f64> {
    spread(ts.iter().filter_map(|t| t.served).collect()).map(|(m, _, _)| m.as_secs_f64() * 1e3)
}

/// A target row's cells: what, what was measured (or that it was not),
/// the bound, and whether it was met.
fn target_row(what: &str, measured: Option<(String, bool)>, target: &str) -> [String; 4] {
    match measured {
        Some((m, ok)) => [
            what.to_string(),
            m,
            target.to_string(),
            if ok { "yes" } else { "**no**" }.to_string(),
        ],
        None => [
            what.to_string(),
            "not measured in this run".to_string(),
            target.to_string(),
            String::new(),
        ],
    }
}

// ---------------------------------------------------------------- report

fn report(
    runs: usize,
    faults: &[Fault],
    systems: &[System],
    rules: &[Option<LeaseRule>],
    lease_supported: bool,
    cells: &[Cell],
) -> String {
    let mut md = String::new();
    intro(&mut md, runs, systems);
    let _ = writeln!(md, "**What each row compares, and what bounds it.**\n");
    for (s, rule) in systems.iter().zip(rules) {
        let _ = writeln!(md, "- {}", bound_text(s, rule.as_ref(), lease_supported));
    }
    let _ = writeln!(md);
    fault_tables(&mut md, faults, systems, cells);
    if faults.contains(&Fault::Cut) {
        phase_table(&mut md, systems, cells);
    }
    targets(&mut md, systems, cells);
    notes(&mut md, cells);
    md
}

/// The cell of `system` under `fault`, if it ran.
fn cell_of<'a>(cells: &'a [Cell], system: &System, fault: Fault) -> Option<&'a Cell> {
    cells
        .iter()
        .find(|c| c.system == *system && c.fault == fault)
}

/// The heading, the lab and the faults.
fn intro(md: &mut String, runs: usize, systems: &[System]) {
    let _ = writeln!(md, "## Failover\n");
    let _ = writeln!(
        md,
        "Three nodes and a client on one bridge in a lab of network namespaces, {VIP}/24 as the \
         VIP (the IPv6 row: {VIP6}/64, the nodes and the client with addresses on \
         {}/64 too, the client connecting to `[{VIP6}]`; otherwise that row's lab and settings \
         are those of the first) and a TCP service on it on every node; for vipd a standalone ZooKeeper 3.8 \
         (tickTime 100 ms, its transaction log on the lab's disk, fsynced per write) on a second bridge, vipd as a {} with `--xdp-mode generic`, \
         `--garp-interval {}s --garp-rounds {GARP_ROUNDS}`; keepalived one instance per node \
         (VRRPv3, multicast adverts, `state BACKUP`, `nopreempt`, priorities 100/99/98, as in \
         the keepalived section below). The client opens a TCP connection to the VIP every 10 ms; \
         netlink listeners in every namespace timestamp the VIP's address events (so an overlap \
         is read off the kernels themselves) and the client's neighbour entry. {runs} runs per \
         fault and system; the {} labs run side by side and take turns run by run, so every \
         system sees the same machine load. A run fails the current holder, waits until the \
         client is served by another node and the old holder's VIP is gone (at most {} s more \
         after the client was served), then ends the fault and waits until the cluster is quiet \
         (one holder serving, the failed node a standby). Times in ms after the fault, median \
         (min–max).\n",
        timeline::NET6,
        timeline::binaries_note(),
        GARP_INTERVAL.as_secs(),
        number(systems.len()),
        timeline::FENCE_WAIT.as_secs()
    );
    let _ = writeln!(
        md,
        "The faults: **link cut**: the holder's two links lose carrier (bridge-side veth ends \
         down), ended by bringing them up; **silent partition**: both links detached from their \
         bridges, carrier kept, nothing gets through, ended by re-attaching them; **SIGKILL**: \
         the agent killed with no cleanup of any kind (no `vipctl cleanup`; keepalived: its main \
         process is frozen, its VRRP child killed, then the main process), ended by removing a \
         VIP the kernel still holds (`ip addr del`, counted below) and starting the agent again; \
         **SIGSTOP**: the agent frozen (keepalived: both processes), ended by SIGCONT.\n"
    );
}

/// One table per figure: a row per system, a column per fault.
fn fault_tables(md: &mut String, faults: &[Fault], systems: &[System], cells: &[Cell]) {
    let table = |md: &mut String, title: &str, f: &dyn Fn(&[Takeover]) -> String| {
        let _ = writeln!(md, "{title}\n");
        let mut t = Table::new(std::iter::once("system").chain(faults.iter().map(|f| f.label())));
        for s in systems {
            let values = faults
                .iter()
                .map(|&fault| cell_of(cells, s, fault).map_or("n/a".to_string(), |c| f(&c.runs)));
            t.row(std::iter::once(s.label()).chain(values));
        }
        let _ = writeln!(md, "{t}");
    };
    table(
        md,
        "**Fault → client served by the new holder** (its first TCP answer through the VIP):",
        &served_cell,
    );
    table(
        md,
        "**VIP on two nodes at once** (from the nodes' address events, from the fault until the \
         cluster was quiet again; longest, median of the runs that had one, runs):",
        &overlap_cell,
    );
    table(
        md,
        "**Old holder removed the VIP** (its own `RTM_DELADDR`; vipd: its fencing, or the \
         kernel's lifetime expiry when it was killed or frozen):",
        &removed_cell,
    );
    table(
        md,
        &format!(
            "**After the fault ended** (links back, SIGCONT, agent restarted): the longest \
             stretch without an answered probe until the cluster was quiet. Where the client was \
             still not served by the one remaining holder {} s after the fault ended, the bench \
             flushed the client's neighbour entry for the VIP (counted; otherwise a stale entry \
             lasts the kernel's reachable time, tens of seconds):",
            timeline::CLIENT_FLUSH_AFTER.as_secs()
        ),
        &after_heal_cell,
    );
}

/// The link cut in phases: a row per phase, a column per system.
fn phase_table(md: &mut String, systems: &[System], cells: &[Cell]) {
    let _ = writeln!(md, "**The link cut in phases:**\n");
    let mut t =
        Table::new(std::iter::once("phase".to_string()).chain(systems.iter().map(System::label)));
    type Phase<'a> = (&'a str, Box<dyn Fn(&Takeover) -> Option<Duration>>);
    let phases: Vec<Phase> = vec![
        (
            "detection: cut → takeover decided (the next in line's log)",
            Box::new(|t| t.decided),
        ),
        (
            "takeover decided → new leader elected (conditional delete, election, first renewal)",
            Box::new(|t| between(t.decided, t.elected)),
        ),
        (
            "cut → new leader elected (vipd's log)",
            Box::new(|t| t.elected),
        ),
        (
            "cut → VIP configured on the new holder (netlink)",
            Box::new(|t| t.configured),
        ),
        (
            "VIP configured → first gratuitous ARP at the client (IPv6 VIP: first \
             unsolicited NA)",
            Box::new(|t| between(t.configured, t.first_garp)),
        ),
        (
            "first gratuitous ARP (IPv6 VIP: unsolicited NA) → client served",
            Box::new(|t| between(t.first_garp, t.served)),
        ),
        ("**cut → client served**", Box::new(|t| t.served)),
    ];
    for (label, f) in &phases {
        let values = systems.iter().map(|s| {
            cell_of(cells, s, Fault::Cut).map_or("n/a".to_string(), |c| {
                spread_ms(c.runs.iter().filter_map(f).collect())
            })
        });
        t.row(std::iter::once(label.to_string()).chain(values));
    }
    let _ = write!(md, "{t}");
    let _ = writeln!(
        md,
        "\nThe client switch is measured by the probe: a connection attempt still in flight \
         to the old MAC when the neighbour entry moves waits out its 30 ms connect timeout, so \
         that phase is at most about 40 ms by construction. The timelines of every link-cut \
         run are plotted in [failover.svg](failover.svg).\n"
    );
}

/// The targets: each vipd row against its bound and its keepalived peer,
/// and the overlaps at the default session timeout.
fn targets(md: &mut String, systems: &[System], cells: &[Cell]) {
    let _ = writeln!(
        md,
        "**Targets** (medians of the link cut; ratios against keepalived measured in this run):\n"
    );
    let mut t = Table::new(["target", "measured", "bound", "met"]);
    let cut_median =
        |s: &System| cell_of(cells, s, Fault::Cut).and_then(|c| served_median(&c.runs));
    let [v1, v1v6, v1l, v6, k3, k1] = SYSTEMS;
    let fmt = |m: f64| timeline::ms(Duration::from_secs_f64(m / 1e3));
    let median_row =
        |s: &System, bound: f64| cut_median(s).map(|m| (format!("{} ms", fmt(m)), m <= bound));
    let ratio = |a: &System, b: &System, max: f64| {
        let (a, b) = (cut_median(a)?, cut_median(b)?);
        (b > 0.0).then(|| (format!("{:.2}", a / b), a / b <= max))
    };
    // Each vipd row against its keepalived peer: (vipd, its bound, the
    // peer, the ratio's bound, the peer's caption).
    let pairs = [
        (v1, 600.0, k3, 0.7, " (matched ~1 s detection)"),
        (v1l, 350.0, k1, 1.0, ""),
    ];
    for (i, (v, bound, k, max, why)) in pairs.iter().enumerate() {
        t.row(target_row(
            &format!("cut → served, {}", v.label()),
            median_row(v, *bound),
            &format!("<= {bound} ms"),
        ));
        t.row(target_row(
            &format!("... against {}{why}", k.label()),
            ratio(v, k, *max),
            &format!("<= {max}x"),
        ));
        if i == 0 {
            // Informational: no requirement bounds the IPv6 row apart from
            // the IPv4 one; the same lease and takeover apply, so the
            // medians should agree within the runs' spread, and a bound on
            // their difference would be made up here.
            let shown = |s: &System, none: &str| {
                cut_median(s).map_or(none.to_string(), |m| format!("{} ms", fmt(m)))
            };
            t.row([
                format!("IPv6 VIP cut → served, {}", v1v6.label()),
                shown(&v1v6, "not measured in this run"),
                format!(
                    "informational: {} {}",
                    v1.label(),
                    shown(&v1, "not measured")
                ),
                String::new(),
            ]);
        }
    }
    t.row(default_t_overlaps(systems, cells, &v6));
    let _ = writeln!(md, "{t}");
}

/// The target row of the overlaps at the default session timeout (`v6`):
/// none in any run of any fault.
fn default_t_overlaps(systems: &[System], cells: &[Cell], v6: &System) -> [String; 4] {
    let at_default: Vec<&Cell> = cells
        .iter()
        .filter(|c| {
            matches!(c.system, System::Vipd { session_timeout, .. } if session_timeout == DEFAULT_T)
        })
        .collect();
    let total: usize = at_default.iter().map(|c| c.runs.len()).sum();
    let bad: usize = at_default
        .iter()
        .map(|c| c.runs.iter().filter(|t| !t.overlap.is_zero()).count())
        .sum();
    let shown: Vec<&str> = at_default.iter().map(|c| c.fault.label()).collect();
    target_row(
        &format!(
            "overlap in every run of {} ({})",
            v6.label(),
            if shown.is_empty() {
                "no fault".to_string()
            } else {
                shown.join(", ")
            }
        ),
        (total > 0 && systems.contains(v6)).then(|| (format!("{bad} of {total} runs"), bad == 0)),
        "0 runs",
    )
}

/// What went wrong in the runs, if anything.
fn notes(md: &mut String, cells: &[Cell]) {
    // What went wrong, if anything.
    let mut notes = Vec::new();
    for c in cells {
        let incomplete = c.runs.iter().filter(|t| !t.complete()).count();
        if incomplete > 0 {
            notes.push(format!(
                "{}, {}: {incomplete} of {} run(s) without a takeover within {} s.",
                c.system.label(),
                c.fault.label(),
                c.runs.len(),
                c.system.timeout().as_secs()
            ));
        }
        let removed = c.runs.iter().filter(|t| t.leftover_removed).count();
        if removed > 0 {
            notes.push(format!(
                "{}, {}: in {removed} of {} run(s) the killed holder's VIP was still in its \
                 kernel when the fault ended, and the bench removed it.",
                c.system.label(),
                c.fault.label(),
                c.runs.len()
            ));
        }
        let flushed: Vec<&str> = c
            .runs
            .iter()
            .filter_map(|t| t.client_flushed.as_deref())
            .collect();
        if !flushed.is_empty() {
            notes.push(format!(
                "{}, {}: in {} of {} run(s) the client was still not served by the one holder \
                 {} s after the fault ended (its neighbour entry for the VIP named: {}); the \
                 bench flushed that entry.",
                c.system.label(),
                c.fault.label(),
                flushed.len(),
                c.runs.len(),
                timeline::CLIENT_FLUSH_AFTER.as_secs(),
                flushed.join("; ")
            ));
        }
        for f in &c.restore_failures {
            notes.push(format!(
                "{}, {}: the cluster did not settle after the fault ended ({f}).",
                c.system.label(),
                c.fault.label()
            ));
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(md, "Notes from the runs:\n");
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
        let _ = writeln!(md);
    }
}

/// What bounds one row, computed from its settings.
fn bound_text(s: &System, rule: Option<&LeaseRule>, lease_supported: bool) -> String {
    let ms = |d: Duration| d.as_millis();
    match (*s, rule) {
        (System::Vipd { .. }, Some(r)) => {
            let (lo, hi) = r.takeover_window();
            let kill = r.kill_overlap();
            format!(
                "**{}**: lease {} ms{}, renewed every {} ms ({} of the lease); the next in \
                 line takes over once it has seen no renewal for lease + renewal interval + margin \
                 = {} + {} + {} = {} ms while ZooKeeper answered it, by deleting the leader's \
                 znode conditionally. The last renewal it saw is up to one interval old at the \
                 fault; it reads each renewal when its watch fires, every {} ms to know \
                 ZooKeeper answers it, and once more the moment the wait is up, so the takeover \
                 comes {}–{} ms after the fault (about {} ms on average; the client is served 10–40 ms later: the {}, then the probe's \
                 next connection), before the session ({} ms) could expire. The old \
                 holder fences (removes the VIP) \
                 at the lease after the send of its last acknowledged renewal, so at most {} ms \
                 after a cut or partition. A killed or frozen holder cannot remove anything: its \
                 VIP carries a kernel lifetime of {} s from its last renewal and leaves the kernel \
                 by itself up to about {} ms later; {}",
                s.label(),
                ms(r.lease),
                if s.lease().is_none() {
                    " (the default, a third of T)"
                } else {
                    ""
                },
                ms(r.renew_every),
                if r.lease < Duration::from_secs(1) {
                    "a sixteenth: below 1 s"
                } else {
                    "a quarter"
                },
                ms(r.lease),
                ms(r.renew_every),
                ms(MARGIN),
                ms(r.takeover_after),
                ms(r.poll_every),
                ms(lo),
                ms(hi),
                ms(r.takeover_after.saturating_sub(r.renew_every / 2)),
                if s.vip().is_ipv6() {
                    "unsolicited Neighbor Advertisement"
                } else {
                    "gratuitous ARP"
                },
                match s {
                    System::Vipd {
                        session_timeout, ..
                    } => ms(*session_timeout),
                    System::Keepalived { .. } => 0,
                },
                ms(r.lease),
                r.lifetime.as_secs(),
                ms(KERNEL_SLACK),
                if kill.is_zero() {
                    format!(
                        "{} + {} ms <= {} ms, so it is gone before the takeover: no overlap is \
                         possible for any fault.",
                        ms(r.lifetime),
                        ms(KERNEL_SLACK),
                        ms(r.takeover_after)
                    )
                } else {
                    format!(
                        "that is after the earliest takeover ({} ms), so after a SIGKILL or \
                         SIGSTOP the VIP can be on two nodes for up to {} ms (the lifetime is \
                         whole seconds, at least 1 s; vipd check-config warns about such a lease).",
                        ms(r.takeover_after),
                        ms(kill)
                    )
                }
            )
        }
        (
            System::Vipd {
                session_timeout, ..
            },
            None,
        ) => format!(
            "**{}**: {}detection is the session timeout ({} ms): the new leader is elected when \
             ZooKeeper expires the old leader's session; a killed or frozen vipd's address stays \
             in its kernel.",
            s.label(),
            if lease_supported {
                ""
            } else {
                "this vipd build has no lease (`vipd check-config` shows none), so "
            },
            ms(session_timeout)
        ),
        (System::Keepalived { advert_int }, _) => {
            let downs: Vec<u128> = PRIORITIES[1..]
                .iter()
                .map(|&p| master_down(advert_int, p).as_millis())
                .collect();
            let (lo, hi) = (
                downs.iter().min().copied().unwrap_or_default(),
                downs.iter().max().copied().unwrap_or_default(),
            );
            format!(
                "**{}**: a backup takes over after the master-down interval, 3 × advert_int + \
                 (256 − priority)/256 × advert_int = {} ms for priorities {}–{}, from the last \
                 advert it heard (up to one interval before the fault). Only a link cut makes the \
                 old master drop the VIP (its interface goes to FAULT); in a partition, or killed \
                 or frozen, it keeps the VIP: VRRP has no lease.",
                s.label(),
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}–{hi}")
                },
                PRIORITIES[2],
                PRIORITIES[1]
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn lease_rule_from_settings() {
        let r = LeaseRule::new(Duration::from_secs(1), None);
        assert_eq!(r.lease, Duration::from_nanos(333_333_333));
        assert_eq!(r.renew_every.as_millis(), 20);
        assert_eq!(r.takeover_after.as_millis(), 454);
        assert_eq!(r.lifetime, Duration::from_secs(1));
        // 1 s + 250 ms slack - 454.2 ms.
        assert_eq!(r.kill_overlap().as_millis(), 795);

        let r = LeaseRule::new(Duration::from_secs(1), Some(Duration::from_millis(200)));
        assert_eq!(r.renew_every, Duration::from_micros(12_500));
        assert_eq!(r.poll_every, Duration::from_micros(12_500));
        assert_eq!(r.takeover_after, Duration::from_micros(312_500));
        assert_eq!(
            r.takeover_window(),
            (Duration::from_millis(300), Duration::from_millis(325))
        );
        assert_eq!(r.kill_overlap(), Duration::from_micros(937_500));

        let r = LeaseRule::new(Duration::from_secs(6), None);
        assert_eq!(r.renew_every, Duration::from_millis(500));
        assert_eq!(r.poll_every, Duration::from_millis(250));
        assert_eq!(r.lease, Duration::from_secs(2));
        assert_eq!(r.takeover_after, Duration::from_millis(2600));
        assert_eq!(r.lifetime, Duration::from_secs(2));
        assert!(r.kill_overlap().is_zero());
    }

    #[test]
    fn vipd_lease_line_is_parsed() {
        let text = "lease = \"200ms\"  # flag\n# lease 200 ms: renewed every 50 ms; the next in \
                    line takes over after 350 ms without a renewal; VIP addresses carry a kernel \
                    lifetime of 1 s\n# configuration is valid\n";
        assert_eq!(
            LeaseRule::parse_vipd(text),
            Some((
                Duration::from_millis(200),
                Duration::from_millis(50),
                Duration::from_millis(350),
                Duration::from_secs(1)
            ))
        );
        assert_eq!(LeaseRule::parse_vipd("# configuration is valid\n"), None);
    }

    #[test]
    fn keepalived_master_down() {
        let d = master_down(Duration::from_millis(300), 99);
        assert_eq!(d.as_millis(), 1083);
        assert_eq!(master_down(Duration::from_millis(100), 98).as_millis(), 361);
    }

    fn run_with(served: Option<u64>, removed: Option<u64>, overlap: u64, healed: u64) -> Takeover {
        let ms = Duration::from_millis;
        Takeover {
            old_removed: removed.map(ms),
            configured: served.map(ms),
            served: served.map(ms),
            overlap: ms(overlap),
            healed: Some(ms(healed)),
            ..Takeover::at_fault(
                Fault::Kill,
                SystemTime::UNIX_EPOCH,
                Instant::now(),
                0,
                served.map(|_| 1),
            )
        }
    }

    #[test]
    fn cells_say_what_happened() {
        let clean = [
            run_with(Some(500), Some(300), 0, 2500),
            run_with(Some(520), Some(320), 0, 2500),
            run_with(Some(510), Some(310), 0, 2500),
        ];
        assert_eq!(served_cell(&clean), "510 (500–520)");
        assert_eq!(overlap_cell(&clean), "**0** (0 of 3)");
        assert_eq!(removed_cell(&clean), "310 (300–320)");

        // keepalived killed: the VIP stays until the bench ends the fault.
        let kept = [
            run_with(Some(900), None, 2100, 3000),
            run_with(None, None, 0, 20000),
            run_with(Some(950), None, 2050, 3000),
        ];
        assert_eq!(served_cell(&kept), "925 (900–950) [2 of 3 served]");
        assert_eq!(removed_cell(&kept), "never by itself (3 of 3)");
        assert_eq!(
            overlap_cell(&kept),
            "2100 longest, median 2075 (2 of 3); 2 until the bench ended the fault"
        );

        // vipd at a short lease, killed: the kernel removes it, late.
        let late = [
            run_with(Some(350), Some(1100), 750, 2400),
            run_with(Some(360), Some(300), 0, 2400),
        ];
        assert_eq!(overlap_cell(&late), "750 longest, median 750 (1 of 2)");
        assert_eq!(removed_cell(&late), "700 (300–1100)");
        let one_missing = [
            run_with(Some(350), Some(1100), 750, 2400),
            run_with(Some(360), None, 2000, 2400),
        ];
        assert_eq!(
            removed_cell(&one_missing),
            "1100 (1100–1100) [not by itself in 1 of 2]"
        );
    }

    #[test]
    fn target_rows() {
        let row = |cells: [String; 4]| {
            let mut t = Table::new(["target", "measured", "bound", "met"]);
            t.row(cells);
            t.to_string().lines().nth(2).expect("the row").to_string()
        };
        assert_eq!(
            row(target_row("x", Some(("510 ms".into(), true)), "<= 600 ms")),
            "| x | 510 ms | <= 600 ms | yes |"
        );
        assert_eq!(
            row(target_row("x", Some(("0.83".into(), false)), "<= 0.7x")),
            "| x | 0.83 | <= 0.7x | **no** |"
        );
        assert_eq!(
            row(target_row("x", None, "0 runs")),
            "| x | not measured in this run | 0 runs | |"
        );
    }

    #[test]
    fn the_ipv6_row_is_bounded_like_its_ipv4_counterpart() {
        let (v4, v6) = (SYSTEMS[0], SYSTEMS[1]);
        let rule = |s: &System| {
            let System::Vipd {
                session_timeout,
                lease,
                ..
            } = *s
            else {
                unreachable!()
            };
            LeaseRule::new(session_timeout, lease)
        };
        assert_eq!(rule(&v4), rule(&v6));
        let t4 = bound_text(&v4, Some(&rule(&v4)), true);
        let t6 = bound_text(&v6, Some(&rule(&v6)), true);
        assert!(
            t4.contains("later: the gratuitous ARP, then the probe's"),
            "{t4}"
        );
        assert!(
            t6.contains("later: the unsolicited Neighbor Advertisement, then the probe's"),
            "{t6}"
        );
        assert!(t6.contains("comes 433–474 ms after the fault"), "{t6}");
        assert_eq!(
            t4.replace(&v4.label(), "ROW")
                .replace("gratuitous ARP", "ANNOUNCEMENT"),
            t6.replace(&v6.label(), "ROW")
                .replace("unsolicited Neighbor Advertisement", "ANNOUNCEMENT")
        );
    }

    #[test]
    fn rows_have_distinct_names() {
        let hints: Vec<String> = SYSTEMS.iter().map(System::lab_hint).collect();
        for (i, h) in hints.iter().enumerate() {
            assert!(h.len() <= 16, "{h}");
            assert!(!hints[..i].contains(h), "{h}");
        }
        assert_eq!(SYSTEMS[0].label(), "vipd T = 1 s, default lease");
        assert_eq!(SYSTEMS[1].label(), "vipd T = 1 s, default lease, IPv6 VIP");
        assert_eq!(SYSTEMS[1].short(), "vipd T=1s v6");
        assert_eq!(SYSTEMS[1].vip(), IpAddr::from(VIP6));
        assert_eq!(SYSTEMS[2].label(), "vipd T = 1 s, `--lease 200ms`");
        assert_eq!(SYSTEMS[2].vip(), IpAddr::from(VIP));
        assert_eq!(SYSTEMS[4].label(), "keepalived `advert_int 0.3`");
        assert_eq!(SYSTEMS[3].short(), "vipd T=6s");
        assert_eq!(number(6), "six");
        assert_eq!(number(12), "12");
    }
}
