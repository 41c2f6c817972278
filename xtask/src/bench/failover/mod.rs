//! `bench failover`: how long a client goes without its service when the
//! VIP's holder fails (link cut, silent partition, SIGKILL, SIGSTOP), for
//! vipd at session timeouts of 1 s and 6 s (its default lease) and with
//! `--lease 200ms` and `--lease 100ms`, and at 1 s with an IPv6 VIP, side
//! by side with keepalived at three advert intervals; how long the VIP was
//! on two nodes at once, and how long two nodes *served* it at once (raw
//! probes to each node's MAC: tests/src/probe.rs).

use std::{
    fmt::Write as _,
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Options,
    timeline::{
        self, Agent, FailoverLab, Fault, KeepalivedSettings, PlotRow, Takeover, VIP, VIP6,
        VipdSettings, between, binaries, install_sigint_handler, preflight, progress, spread,
        spread_ms,
    },
};

mod report;
use report::report;

/// Runs per fault and system when `--runs` is not given.
pub const DEFAULT_RUNS: usize = 20;
const GARP_INTERVAL: Duration = Duration::from_secs(1);
const GARP_ROUNDS: u32 = 3;
/// The margin vipd's takeover rule counts for a leader whose fence dies
/// with it (its `--takeover-margin`, at least 100 ms; the default 25 ms
/// counts as 100 ms there).
const MARGIN: Duration = Duration::from_millis(100);
/// How often the serving probe sends its ARP request and TCP SYN to each
/// node's MAC.
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// The renewal interval never drops below this in vipd.
const MIN_RENEW: Duration = Duration::from_millis(10);
/// How late the kernel may remove an address whose lifetime ran out: its
/// lifetime check runs no sooner than a second after its previous run, and
/// any lifetime written on the host runs it (measured: 1.01 s late after one
/// write elsewhere just before the end; docs/OPERATIONS.md "Safe
/// combinations"). A second and 100 ms.
const KERNEL_SLACK: Duration = Duration::from_millis(1100);
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
pub const SYSTEMS: [System; 8] = [
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
        session_timeout: Duration::from_secs(1),
        lease: Some(Duration::from_millis(100)),
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
    System::Keepalived {
        advert_int: Duration::from_millis(50),
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
        let takeover_after = lease + renew_every + MARGIN;
        // The longest whole seconds that leave the kernel, slack included,
        // before the takeover; no more than the lease, at least 1 s.
        let fits = takeover_after.saturating_sub(KERNEL_SLACK).as_secs();
        LeaseRule {
            lease,
            renew_every,
            poll_every: (lease / poll_part).max(MIN_RENEW),
            takeover_after,
            lifetime: Duration::from_secs(lease.as_secs().min(fits).max(1)),
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
    /// What the serving probe saw in each run, in the order of `runs`.
    serving: Vec<Serving>,
    /// Runs whose cluster did not settle after the fault ended.
    restore_failures: Vec<String>,
}

/// What the serving probe saw in one run, from just before the fault until
/// the cluster was quiet again: the stretches in which two nodes answered
/// probes sent at the same moment (an ARP request or a TCP SYN for the VIP,
/// to each node's MAC), merged over the kinds and pairs of nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Serving {
    /// Probe rounds sent, and how many of them some node answered (none:
    /// the probe saw nothing, so its zero would mean nothing).
    pub rounds: usize,
    pub answered: usize,
    /// The merged stretches, each from the first round both answered to
    /// the send of the round after the last.
    pub stretches: Vec<(Instant, Instant)>,
}

impl Serving {
    /// Reads the probe's observations.
    pub fn from_observations(o: &vipd_tests::probe::Observations) -> Serving {
        let mut iv: Vec<(Instant, Instant)> = vipd_tests::probe::serving_overlaps(o)
            .into_iter()
            .map(|ov| (ov.from, ov.to))
            .collect();
        let answered: std::collections::BTreeSet<u32> = o.answers.iter().map(|a| a.round).collect();
        Serving {
            rounds: o.rounds.len(),
            answered: answered.len(),
            stretches: merge(&mut iv),
        }
    }

    /// Two nodes served the VIP at some moment.
    pub fn overlapped(&self) -> bool {
        !self.stretches.is_empty()
    }

    /// The probe saw the VIP served at all.
    pub fn saw_service(&self) -> bool {
        self.answered > 0
    }

    pub fn longest(&self) -> Duration {
        self.stretches
            .iter()
            .map(|(a, b)| b.saturating_duration_since(*a))
            .max()
            .unwrap_or_default()
    }

    pub fn total(&self) -> Duration {
        self.stretches
            .iter()
            .map(|(a, b)| b.saturating_duration_since(*a))
            .sum()
    }
}

/// The union of intervals, sorted.
fn merge(iv: &mut [(Instant, Instant)]) -> Vec<(Instant, Instant)> {
    iv.sort();
    let mut out: Vec<(Instant, Instant)> = Vec::new();
    for &(a, b) in iv.iter() {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Starts the serving probe of `c`'s VIP from its client.
fn serving_probe(c: &FailoverLab, vip: IpAddr) -> vipd_tests::probe::Observer {
    use vipd_tests::probe;
    let targets = c
        .nodes
        .iter()
        .map(|n| probe::Target::new(&n.host, "eth0"))
        .collect();
    probe::Observer::start(
        &c.client,
        "eth0",
        targets,
        vec![vip],
        probe::Options {
            every: PROBE_EVERY,
            syn_port: timeline::PORT,
            service: None,
            ..probe::Options::default()
        },
    )
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
                serving: Vec::new(),
                restore_failures: Vec::new(),
            });
        }
        for r in 0..runs {
            // Alternating, so every system sees the same machine load over time.
            for (i, (s, c)) in systems.iter().zip(&clusters).enumerate() {
                let probe = serving_probe(c, s.vip());
                let mut tk = c.takeover_on(fault, Duration::ZERO, s.timeout())?;
                let restored = c.restore_from(&mut tk);
                let serving = Serving::from_observations(&probe.stop());
                p(&format!(
                    "{} {} run {}/{runs}: {}, serving overlap {} ms (longest {} ms, {} of {} probe rounds answered), fault ended {} ms, then unserved {} ms{}{}",
                    s.short(),
                    fault.arg(),
                    r + 1,
                    summary(c, &tk),
                    serving.total().as_millis(),
                    serving.longest().as_millis(),
                    serving.answered,
                    serving.rounds,
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
                cells[first + i].serving.push(serving);
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

#[cfg(test)]
mod tests {
    use super::report::{bound_text, target_row};
    use super::*;
    use crate::bench::table::Table;
    use std::time::SystemTime;

    #[test]
    fn lease_rule_from_settings() {
        let r = LeaseRule::new(Duration::from_secs(1), None);
        assert_eq!(r.lease, Duration::from_nanos(333_333_333));
        assert_eq!(r.renew_every.as_millis(), 20);
        assert_eq!(r.takeover_after.as_millis(), 454);
        assert_eq!(r.lifetime, Duration::from_secs(1));
        // 1 s + 1.1 s slack - 454.2 ms.
        assert_eq!(r.kill_overlap().as_millis(), 1645);

        let r = LeaseRule::new(Duration::from_secs(1), Some(Duration::from_millis(200)));
        assert_eq!(r.renew_every, Duration::from_micros(12_500));
        assert_eq!(r.poll_every, Duration::from_micros(12_500));
        assert_eq!(r.takeover_after, Duration::from_micros(312_500));
        assert_eq!(
            r.takeover_window(),
            (Duration::from_millis(300), Duration::from_millis(325))
        );
        assert_eq!(r.kill_overlap(), Duration::from_micros(1_787_500));

        let r = LeaseRule::new(Duration::from_secs(6), None);
        assert_eq!(r.renew_every, Duration::from_millis(500));
        assert_eq!(r.poll_every, Duration::from_millis(250));
        assert_eq!(r.lease, Duration::from_secs(2));
        assert_eq!(r.takeover_after, Duration::from_millis(2600));
        // 2 s + 1.1 s would outlive the 2.6 s takeover: 1 s.
        assert_eq!(r.lifetime, Duration::from_secs(1));
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
        assert_eq!(SYSTEMS[3].label(), "vipd T = 1 s, `--lease 100ms`");
        assert_eq!(SYSTEMS[5].label(), "keepalived `advert_int 0.3`");
        assert_eq!(SYSTEMS[7].label(), "keepalived `advert_int 0.05`");
        assert_eq!(SYSTEMS[4].short(), "vipd T=6s");
        assert_eq!(number(6), "six");
        assert_eq!(number(12), "12");
    }

    /// The serving overlaps of one run: stretches of different kinds and
    /// pairs merge where they touch; a run in which the probe saw nothing
    /// is told apart from one without overlap.
    #[test]
    fn serving_overlaps_merge_and_blind_runs_show() {
        use super::report::serving_cell;
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut iv = vec![
            (at(50), at(60)),
            (at(0), at(10)),
            (at(10), at(20)),
            (at(55), at(80)),
        ];
        let merged = merge(&mut iv);
        assert_eq!(merged, vec![(at(0), at(20)), (at(50), at(80))]);
        let run = Serving {
            rounds: 100,
            answered: 100,
            stretches: merged,
        };
        assert!(run.overlapped());
        assert_eq!(run.longest(), Duration::from_millis(30));
        assert_eq!(run.total(), Duration::from_millis(50));
        let clean = Serving {
            rounds: 100,
            answered: 97,
            stretches: Vec::new(),
        };
        assert_eq!(
            serving_cell(&[clean.clone(), clean.clone()]),
            "**0** (0 of 2)"
        );
        let cell = serving_cell(&[clean.clone(), run]);
        assert!(cell.contains("(1 of 2)") && cell.contains("30"), "{cell}");
        let blind = Serving {
            rounds: 100,
            ..Serving::default()
        };
        let cell = serving_cell(&[clean, blind]);
        assert!(cell.contains("no answer in 1 run"), "{cell}");
    }
}
