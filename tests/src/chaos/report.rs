//! The checker: from the schedule as applied, the configuration writes and
//! the observer's record, the run's verdicts. Serving overlap must be 0;
//! after the last fault touching a configured VIP heals, the VIP may go
//! unserved at most the bound of that fault's kind; what vipctl wrote is
//! what ZooKeeper holds and the nodes serve.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{
    SERVICES,
    nemesis::{AdminDone, touched},
    schedule::{Fault, FaultKind},
};
use crate::probe::{self, Observations, Overlap};

/// vipd's defaults, which the run keeps: the lease arithmetic of
/// docs/OPERATIONS.md "The lease".
pub const SESSION: Duration = Duration::from_secs(6);
pub const LEASE: Duration = Duration::from_secs(2);
/// lease / 4.
pub const RENEW: Duration = Duration::from_millis(500);
pub const MARGIN: Duration = Duration::from_millis(100);
/// The next in line's read interval, lease / 8.
pub const READ: Duration = Duration::from_millis(250);
/// What ZooKeeper round trips, a reconcile, netlink and the first
/// announcement may take on this shared machine.
pub const SLACK: Duration = Duration::from_secs(1);

/// The takeover wait: lease + renewal interval + margin (2.6 s).
pub fn takeover() -> Duration {
    LEASE + RENEW + MARGIN
}

/// The longest a configured VIP may stay unserved after the heal of the
/// last fault of `kind` that touched it (`None`: no fault before it).
///
/// - Planned operations (config write, drain/undrain, handover, SIGTERM
///   restart) and process faults (SIGKILL + restart, SIGSTOP + SIGCONT):
///   the leader resigns (or stops renewing) no later than the fault's
///   start, so the next in line has been timing its lease since then; from
///   the heal at most one takeover wait and one read remain, plus slack:
///   2.6 + 0.25 + 1 = 3.85 s.
/// - Network and ZooKeeper faults (link cut, silent partition, ZooKeeper
///   partition, loss, delay, a ZooKeeper server killed, frozen or slowed):
///   after the heal a node's ZooKeeper client may still sit on a dead
///   connection (TCP backoff, a frozen server) until its session timeout
///   tells it to move, and only then renew or start the takeover wait:
///   6 + 2.6 + 0.25 + 1 = 9.85 s.
/// - No fault before the gap at all: the slack alone (1 s), the probe's
///   own resolution and the machine's scheduling.
pub fn bound(kind: Option<FaultKind>) -> Duration {
    match kind {
        None => SLACK,
        Some(
            FaultKind::ConfigWrite
            | FaultKind::Drain
            | FaultKind::Handover
            | FaultKind::Restart
            | FaultKind::Kill
            | FaultKind::Stop,
        ) => takeover() + READ + SLACK,
        Some(_) => SESSION + takeover() + READ + SLACK,
    }
}

/// One fault as the nemesis applied it.
#[derive(Clone, Debug)]
pub struct Applied {
    pub fault: Fault,
    /// The node it hit (the leader resolved).
    pub node: Option<usize>,
    /// The target as printed (`leader=n2`).
    pub target: String,
    pub started: Instant,
    /// When it healed (instant faults: when done; vipctl: acknowledged).
    pub ended: Option<Instant>,
    pub error: Option<String>,
    /// Not injected on this machine, and why (the schedule keeps it, so a
    /// seed names the same schedule everywhere).
    pub skipped: Option<String>,
}

/// One `vipctl vip set` of the run.
#[derive(Clone, Debug)]
pub struct ConfigWrite {
    pub service: String,
    pub vips: BTreeSet<IpAddr>,
    pub issued: Instant,
    pub acked: Option<Instant>,
}

/// Moves the admin queue's times into the applied faults (a vipctl
/// operation starts when it is issued and ends when acknowledged; a drain
/// ends when its undrain is) and returns the config writes in order.
pub(crate) fn settle_admin(applied: &mut [Applied], done: &[AdminDone]) -> Vec<ConfigWrite> {
    let pools = super::pools();
    let mut writes = Vec::new();
    for d in done {
        let a = &mut applied[d.fault];
        if d.acked.is_none() {
            a.error = Some(format!("vipctl never acknowledged: {}", d.error));
        }
        let at = d.acked.unwrap_or_else(Instant::now);
        if d.heal {
            a.ended = Some(at);
            continue;
        }
        a.started = d.started;
        if a.fault.kind != FaultKind::Drain {
            a.ended = Some(at);
        }
        if let (super::schedule::Target::Service(s), super::schedule::Detail::Vips(picks)) =
            (&a.fault.target, &a.fault.detail)
        {
            writes.push(ConfigWrite {
                service: SERVICES[*s].0.to_string(),
                vips: picks.iter().map(|&k| pools[*s][k]).collect(),
                issued: d.started,
                acked: d.acked,
            });
        }
    }
    writes
}

/// What [`Report::check`] reads.
pub struct Inputs {
    pub seed: u64,
    pub nodes: usize,
    pub window: Duration,
    pub t0: Instant,
    pub healed_at: Instant,
    pub end: Instant,
    pub schedule: Vec<Fault>,
    pub applied: Vec<Applied>,
    pub writes: Vec<ConfigWrite>,
    pub pools: Vec<Vec<IpAddr>>,
    pub observations: Observations,
    pub config_lost: Vec<String>,
    /// ZooKeeper servers that disagreed ([`super::replicas`]).
    pub zk_divergences: Vec<String>,
    pub crashed: Vec<String>,
    /// Kinds left out of the draw, and why.
    pub without: Vec<(FaultKind, String)>,
    /// The run added an overlap by hand (the checker's self-test).
    pub hand_overlap: bool,
    /// ZooKeeper's data was on disk (else in /dev/shm).
    pub zk_on_disk: bool,
}

/// The longest unserved stretch after a heal, for one fault kind.
#[derive(Clone, Debug)]
pub struct Unserved {
    pub longest: Duration,
    pub vip: Option<IpAddr>,
    /// Since the start of the window, when it began (after the heal).
    pub at: Option<Duration>,
    pub bound: Duration,
}

/// The run's verdicts and what they rest on.
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub window: Duration,
    pub schedule: Vec<Fault>,
    pub applied: Vec<Applied>,
    pub t0: Instant,
    pub overlaps: Vec<Overlap>,
    /// Two nodes with the address at once, from their address events.
    pub address_overlaps: Vec<Overlap>,
    /// By fault kind (`None`: a gap with no fault before it).
    pub unserved: BTreeMap<Option<FaultKind>, Unserved>,
    pub config_lost: Vec<String>,
    /// ZooKeeper lost a committed transaction: vipd's guarantees rest on
    /// ZooKeeper's, so such a run proves nothing about vipd.
    pub zk_divergences: Vec<String>,
    pub crashed: Vec<String>,
    pub injected: BTreeMap<FaultKind, usize>,
    pub without: Vec<(FaultKind, String)>,
    pub hand_overlap: bool,
    pub zk_on_disk: bool,
    /// The longest stretch any configured VIP went unserved at all,
    /// faults under way included (what the faults did), and when.
    pub longest_gap: (Duration, Option<IpAddr>, Duration),
    pub probe_rounds: usize,
    pub client_connections: usize,
}

impl Report {
    pub fn check(i: Inputs) -> Report {
        let o = &i.observations;
        let overlaps = probe::serving_overlaps(o);
        let address_overlaps = probe::address_overlaps(o);
        // Each VIP is required while configured: from the start (or the
        // acknowledgement of the write that added it) until the write that
        // removed it was issued.
        let mut required: BTreeMap<IpAddr, Vec<(Instant, Instant)>> = BTreeMap::new();
        let mut since: BTreeMap<IpAddr, Instant> =
            i.pools.iter().flatten().map(|v| (*v, o.started)).collect();
        let mut current: BTreeMap<String, BTreeSet<IpAddr>> = SERVICES
            .iter()
            .zip(&i.pools)
            .map(|((n, _), p)| (n.to_string(), p.iter().copied().collect()))
            .collect();
        for w in i.writes.iter().filter(|w| w.acked.is_some()) {
            let old = current
                .insert(w.service.clone(), w.vips.clone())
                .unwrap_or_default();
            for gone in old.difference(&w.vips) {
                if let Some(s) = since.remove(gone) {
                    required.entry(*gone).or_default().push((s, w.issued));
                }
            }
            for new in w.vips.difference(&old) {
                since.insert(*new, w.acked.expect("filtered"));
            }
        }
        for (vip, s) in since {
            required.entry(vip).or_default().push((s, i.end));
        }
        let mut unserved: BTreeMap<Option<FaultKind>, Unserved> = BTreeMap::new();
        let mut longest_gap = (Duration::ZERO, None, Duration::ZERO);
        for (vip, spans) in &required {
            for &(from, to) in spans {
                if to <= from {
                    continue;
                }
                for (a, b) in probe::unserved(o, *vip, from, to) {
                    let whole = b.saturating_duration_since(a);
                    if whole > longest_gap.0 {
                        longest_gap = (whole, Some(*vip), a.saturating_duration_since(i.t0));
                    }
                    // The faults touching this VIP that began before the gap
                    // ended; the one that healed last names the kind.
                    let mut last: Option<(Instant, FaultKind)> = None;
                    let mut open = false;
                    for f in i.applied.iter().filter(|f| f.skipped.is_none()) {
                        if f.started >= b || !touched(&f.fault, &i.pools).contains(vip) {
                            continue;
                        }
                        let ended = f.ended.unwrap_or(i.end);
                        if ended >= b {
                            open = true;
                        }
                        if last.is_none_or(|(e, _)| ended > e) {
                            last = Some((ended, f.fault.kind));
                        }
                    }
                    if open {
                        continue;
                    }
                    let (start, kind) = match last {
                        Some((e, k)) => (a.max(e), Some(k)),
                        None => (a, None),
                    };
                    let len = b.saturating_duration_since(start);
                    let e = unserved.entry(kind).or_insert(Unserved {
                        longest: Duration::ZERO,
                        vip: None,
                        at: None,
                        bound: bound(kind),
                    });
                    if len > e.longest {
                        e.longest = len;
                        e.vip = Some(*vip);
                        e.at = Some(start.saturating_duration_since(i.t0));
                    }
                }
            }
        }
        let mut injected = BTreeMap::new();
        for a in &i.applied {
            if a.error.is_none() && a.skipped.is_none() {
                *injected.entry(a.fault.kind).or_insert(0) += 1;
            }
        }
        Report {
            seed: i.seed,
            nodes: i.nodes,
            window: i.window,
            schedule: i.schedule,
            applied: i.applied,
            t0: i.t0,
            overlaps,
            address_overlaps,
            unserved,
            config_lost: i.config_lost,
            zk_divergences: i.zk_divergences,
            crashed: i.crashed,
            injected,
            without: i.without,
            hand_overlap: i.hand_overlap,
            zk_on_disk: i.zk_on_disk,
            longest_gap,
            probe_rounds: o.rounds.len(),
            client_connections: o.connections.len(),
        }
    }

    /// Every violation, one line each.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        for o in &self.overlaps {
            v.push(format!(
                "serving overlap: {} served by {} and {} for {:.0} ms at {:.1} s ({:?}, {} rounds)",
                o.vip,
                o.nodes.0,
                o.nodes.1,
                o.duration().as_secs_f64() * 1e3,
                o.from.saturating_duration_since(self.t0).as_secs_f64(),
                o.how,
                o.rounds
            ));
        }
        for o in &self.address_overlaps {
            v.push(format!(
                "address overlap: {} on {} and {} for {:.0} ms at {:.1} s",
                o.vip,
                o.nodes.0,
                o.nodes.1,
                o.duration().as_secs_f64() * 1e3,
                o.from.saturating_duration_since(self.t0).as_secs_f64()
            ));
        }
        for (kind, u) in &self.unserved {
            if u.longest > u.bound {
                v.push(format!(
                    "unserved too long after {}: {} for {:.0} ms from {:.1} s (bound {:.0} ms)",
                    kind.map_or("no fault", FaultKind::name),
                    u.vip.map(|v| v.to_string()).unwrap_or_default(),
                    u.longest.as_secs_f64() * 1e3,
                    u.at.unwrap_or_default().as_secs_f64(),
                    u.bound.as_secs_f64() * 1e3
                ));
            }
        }
        for c in &self.config_lost {
            v.push(format!("configuration lost: {c}"));
        }
        v.extend(self.zk_divergences.iter().cloned());
        for c in &self.crashed {
            v.push(c.clone());
        }
        for a in &self.applied {
            if let Some(e) = &a.error {
                v.push(format!(
                    "fault not applied or not healed: {} ({e})",
                    a.fault
                ));
            }
        }
        v
    }

    pub fn passed(&self) -> bool {
        self.violations().is_empty()
    }

    /// The schedule as applied, one line per fault.
    pub fn schedule_text(&self) -> String {
        let mut s = String::new();
        for a in &self.applied {
            let at = a.started.saturating_duration_since(self.t0).as_secs_f64();
            let took = a
                .ended
                .map(|e| e.saturating_duration_since(a.started).as_secs_f64())
                .unwrap_or(f64::NAN);
            let _ = writeln!(
                s,
                "  {}  (applied at {at:.1} s to {}, healed after {took:.1} s){}{}",
                a.fault,
                a.target,
                a.error
                    .as_ref()
                    .map(|e| format!(" ERROR {e}"))
                    .unwrap_or_default(),
                a.skipped
                    .as_ref()
                    .map(|e| format!(" skipped: {e}"))
                    .unwrap_or_default()
            );
        }
        s
    }

    /// The verdicts for a terminal, with the schedule and the seed when a
    /// check failed.
    pub fn text(&self) -> String {
        let mut s = format!(
            "chaos run: seed {}, {} nodes, {:.0} s of faults, vipd at its default lease settings \
             (session {} s, lease {} s, takeover after {:.1} s)\n",
            self.seed,
            self.nodes,
            self.window.as_secs_f64(),
            SESSION.as_secs(),
            LEASE.as_secs(),
            takeover().as_secs_f64()
        );
        let _ = writeln!(
            s,
            "  {} probe rounds, {} client connections observed",
            self.probe_rounds, self.client_connections
        );
        let (gap, vip, at) = self.longest_gap;
        let _ = writeln!(
            s,
            "  longest unserved stretch of any VIP, faults under way included: {:.0} ms ({}, at {:.1} s)",
            gap.as_secs_f64() * 1e3,
            vip.map(|v| v.to_string()).unwrap_or_else(|| "none".into()),
            at.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "  serving overlap: {} (address overlap: {})",
            self.overlaps.len(),
            self.address_overlaps.len()
        );
        for (kind, n) in &self.injected {
            let u = self.unserved.get(&Some(*kind));
            let _ = writeln!(
                s,
                "  {:<13} injected {n:>3}, longest unserved after heal {:>6.0} ms (bound {:.0} ms)",
                kind.name(),
                u.map_or(0.0, |u| u.longest.as_secs_f64() * 1e3),
                bound(Some(*kind)).as_secs_f64() * 1e3
            );
        }
        if let Some(u) = self.unserved.get(&None) {
            let _ = writeln!(
                s,
                "  with no fault before it: longest unserved {:.0} ms (bound {:.0} ms)",
                u.longest.as_secs_f64() * 1e3,
                u.bound.as_secs_f64() * 1e3
            );
        }
        for (k, why) in &self.without {
            let _ = writeln!(s, "  {} not injected: {why}", k.name());
        }
        let _ = writeln!(s, "  configuration lost: {}", self.config_lost.len());
        let _ = writeln!(
            s,
            "  ZooKeeper replicas diverged: {}",
            self.zk_divergences.len()
        );
        let v = self.violations();
        if v.is_empty() {
            let _ = writeln!(s, "PASSED (seed {})", self.seed);
        } else {
            let _ = writeln!(s, "FAILED: {} violation(s)", v.len());
            for line in &v {
                let _ = writeln!(s, "  {line}");
            }
            let _ = writeln!(s, "the schedule (seed {}):", self.seed);
            s.push_str(&self.schedule_text());
            let _ = writeln!(
                s,
                "reproduce: cargo xtask chaos --seed {} --nodes {} --minutes {}{}",
                self.seed,
                self.nodes,
                self.window.as_secs_f64() / 60.0,
                if self.zk_on_disk {
                    ""
                } else {
                    " --zk-data shm"
                }
            );
        }
        s
    }
}

/// Several runs' reports as the markdown body of docs/BENCHMARKS.md
/// "Chaos".
pub fn markdown(runs: &[Report]) -> String {
    let mut s = String::from(
        "## Chaos\n\n\
         Random faults against a running cluster (`cargo xtask chaos`): 3 to 5 vipd nodes at \
         their **default** lease settings (session 6 s, lease 2 s, takeover after 2.6 s), a \
         three-server ZooKeeper ensemble with its data on disk, a client probing every VIP \
         (ARP/NS and TCP SYN to each node's MAC every 25 ms) and every node's address events. \
         Faults are drawn from the seed and overlap; each heals within the run. \
         *Unserved after heal* is the longest time any configured VIP was answered by no node \
         after the last fault touching it healed, against the bound of docs/OPERATIONS.md \
         \"Chaos\". Serving overlap (two nodes answering one VIP) must be 0.\n\n",
    );
    let _ = writeln!(
        s,
        "| run | seed | nodes | minutes | faults | serving overlap | longest unserved (faults under way) | configuration lost | verdict |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for (k, r) in runs.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {} | {} | {:.0} ms | {} | {} |",
            k + 1,
            r.seed,
            r.nodes,
            r.window.as_secs_f64() / 60.0,
            r.injected.values().sum::<usize>(),
            r.overlaps.len(),
            r.longest_gap.0.as_secs_f64() * 1e3,
            r.config_lost.len(),
            if r.passed() { "passed" } else { "FAILED" }
        );
    }
    let _ = writeln!(
        s,
        "\n| fault | injected | longest unserved after heal (ms) | bound (ms) |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    for kind in FaultKind::ALL {
        let n: usize = runs.iter().filter_map(|r| r.injected.get(&kind)).sum();
        let longest = runs
            .iter()
            .filter_map(|r| r.unserved.get(&Some(kind)))
            .map(|u| u.longest)
            .max()
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "| {} | {n} | {:.0} | {:.0} |",
            kind.name(),
            longest.as_secs_f64() * 1e3,
            bound(Some(kind)).as_secs_f64() * 1e3
        );
    }
    let without: BTreeSet<String> = runs
        .iter()
        .flat_map(|r| {
            r.without
                .iter()
                .map(|(k, why)| format!("{}: {why}", k.name()))
        })
        .collect();
    for w in without {
        let _ = writeln!(s, "\nNot injected: {w}.");
    }
    for r in runs.iter().filter(|r| !r.passed()) {
        let _ = writeln!(s, "\nViolations of seed {}:\n", r.seed);
        for v in r.violations() {
            let _ = writeln!(s, "- {v}");
        }
    }
    s
}
