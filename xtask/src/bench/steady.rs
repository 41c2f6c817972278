//! `bench steady`: three vipd nodes at `--lease 200ms` and a 1 s session
//! timeout left alone while the bench keeps every CPU busy. Nothing fails,
//! so nothing may move: no leader change, no takeover, no VIP move.

use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Options,
    failover::{LeaseRule, System, vipd_lease_check},
    timeline::{
        self, Agent, FailoverLab, VipdSettings, binaries, install_sigint_handler, preflight,
        progress, sleep,
    },
};

/// The length of the steady run when `--seconds` is not given.
pub const DEFAULT_SECONDS: u64 = 300;
const SESSION_TIMEOUT: Duration = Duration::from_secs(1);
const LEASE: Duration = Duration::from_millis(200);
const SETTINGS: VipdSettings = VipdSettings {
    session_timeout: SESSION_TIMEOUT,
    garp_interval: Duration::from_secs(1),
    garp_rounds: 3,
};
/// vipd's log lines that mean the leadership moved or wobbled.
const ELECTED: &str = "elected leader";
const TAKING_OVER: &str = "the leader has not renewed its lease";
const FENCING: &str = "no lease renewal acknowledged";

/// Busy-loop threads, one per CPU, that stop at `stop` or at a deadline
/// whatever happens to the bench.
struct CpuLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Duration>>,
    started: Instant,
}

/// The calling thread's CPU time.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl CpuLoad {
    fn start(threads: usize, bound: Duration) -> CpuLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let deadline = started + bound;
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x: u64 = 1;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        for _ in 0..10_000 {
                            x = std::hint::black_box(x.wrapping_mul(6364136223846793005) + 1);
                        }
                    }
                    thread_cpu_time()
                })
            })
            .collect();
        CpuLoad {
            stop,
            threads,
            started,
        }
    }

    /// Stops the threads; each one's share of a CPU over its life.
    fn stop(mut self) -> Vec<f64> {
        self.stop.store(true, Ordering::Relaxed);
        let wall = self.started.elapsed().as_secs_f64();
        self.threads
            .drain(..)
            .filter_map(|t| t.join().ok())
            .map(|cpu| cpu.as_secs_f64() / wall)
            .collect()
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What the VIP's address events say over the run, the holder at the
/// start given: adds on another node than the last holder (moves), adds
/// on the last holder after it had lost the VIP (returns), removals, and
/// the address renewals (adds on a node that holds it).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VipHistory {
    pub moves: usize,
    pub returns: usize,
    pub removals: usize,
    pub renewals: usize,
    /// The longest time between two renewals of the holder's address.
    pub longest_renewal_gap: Option<Duration>,
}

pub fn vip_history(changes: &[(Instant, usize, bool)], nodes: usize, holder: usize) -> VipHistory {
    let mut held: Vec<bool> = (0..nodes).map(|i| i == holder).collect();
    let mut last_holder = holder;
    let mut h = VipHistory::default();
    let mut last_renewal: Option<Instant> = None;
    for &(at, i, added) in changes {
        if added {
            if held[i] {
                h.renewals += 1;
                if let Some(prev) = last_renewal {
                    let gap = at.saturating_duration_since(prev);
                    h.longest_renewal_gap = Some(h.longest_renewal_gap.map_or(gap, |g| g.max(gap)));
                }
                last_renewal = Some(at);
            } else {
                if i == last_holder {
                    h.returns += 1;
                } else {
                    h.moves += 1;
                }
                last_holder = i;
                last_renewal = Some(at);
            }
        } else if held[i] {
            h.removals += 1;
        }
        held[i] = added;
    }
    h
}

/// The lines of a vipd JSON log logged at or after `after` whose message
/// starts with `message`.
pub fn log_lines<'a>(log: &'a str, message: &str, after: SystemTime) -> Vec<&'a str> {
    log.lines()
        .filter(|line| {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                return false;
            };
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
                && v["timestamp"]
                    .as_str()
                    .and_then(timeline::parse_rfc3339)
                    .is_some_and(|t| t >= after)
        })
        .collect()
}

/// How many lines [`log_lines`] finds.
pub fn count_log_lines(log: &str, message: &str, after: SystemTime) -> usize {
    log_lines(log, message, after).len()
}

pub fn run(opts: &Options) -> Result<String> {
    preflight()?;
    install_sigint_handler();
    let seconds = opts.seconds;
    let bins = binaries()?;
    let start = Instant::now();
    let p = |s: &str| progress(start, &format!("steady: {s}"));
    let system = System::Vipd {
        session_timeout: SESSION_TIMEOUT,
        lease: Some(LEASE),
        ipv6: false,
    };
    let Some(rule) = vipd_lease_check(&bins, &system)? else {
        bail!("this vipd has no --lease (vipd check-config refuses it): the steady run needs it");
    };
    let cluster = FailoverLab::start_with(
        "steady",
        Agent::Vipd(SETTINGS),
        Some(LEASE),
        system.vip(),
        &bins,
        &p,
    )
    .context("starting the lab cluster")?;
    let holder = cluster.wait_settled(Duration::from_secs(30))?;
    let term_of = |i: usize| {
        cluster
            .status(i)
            .and_then(|s| s["zookeeper"]["term"].as_u64())
    };
    let first_term = term_of(holder);
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    p(&format!(
        "{} holds the VIP (term {}); {seconds} s with {cpus} busy-loop threads",
        cluster.nodes[holder].name,
        first_term.map_or("?".to_string(), |t| t.to_string())
    ));
    let wall0 = SystemTime::now();
    let t0 = Instant::now();
    let load = CpuLoad::start(cpus, Duration::from_secs(seconds + 30));
    let mut terms: Vec<u64> = first_term.into_iter().collect();
    let mut polls = 0usize;
    let mut unanswered_status = 0usize;
    let mut last_line = Instant::now();
    while t0.elapsed() < Duration::from_secs(seconds) {
        sleep(Duration::from_secs(1))?;
        for i in 0..cluster.nodes.len() {
            polls += 1;
            match term_of(i) {
                Some(t) if terms.last() != Some(&t) => terms.push(t),
                Some(_) => {}
                None => unanswered_status += 1,
            }
        }
        if last_line.elapsed() >= Duration::from_secs(10) {
            last_line = Instant::now();
            let h = vip_history(
                &cluster.vip_changes(t0, Instant::now()),
                cluster.nodes.len(),
                holder,
            );
            p(&format!(
                "{:.0}/{seconds} s: terms seen {:?}, VIP moves {}, removals {}, address renewals {}",
                t0.elapsed().as_secs_f64(),
                terms,
                h.moves,
                h.removals,
                h.renewals
            ));
        }
    }
    let end = Instant::now();
    let shares = load.stop();
    let wall = end.duration_since(t0);
    let history = vip_history(&cluster.vip_changes(t0, end), cluster.nodes.len(), holder);
    let outcomes = cluster.prober.outcomes(t0, end);
    let unanswered = outcomes.iter().filter(|(_, ok)| !ok).count();
    let longest_gap = timeline::longest_outage(&outcomes, t0, end);
    let logs: Vec<String> = cluster.nodes.iter().map(|n| n.agent.stderr()).collect();
    let count = |m: &str| -> usize { logs.iter().map(|l| count_log_lines(l, m, wall0)).sum() };
    let counts = Counts {
        term_changes: terms.len().saturating_sub(1),
        elected: count(ELECTED),
        taking_over: count(TAKING_OVER),
        fencing: count(FENCING),
        history,
        unanswered,
        longest_gap,
        polls,
        unanswered_status,
    };
    p(&format!(
        "{counts:?}; busy threads' CPU shares {shares:.2?}"
    ));
    let mut events = Vec::new();
    for (n, log) in cluster.nodes.iter().zip(&logs) {
        for m in [TAKING_OVER, FENCING, ELECTED] {
            for line in log_lines(log, m, wall0) {
                events.push(format!("{}: {line}", n.name));
            }
        }
    }
    events.sort_by(|a, b| {
        let ts = |s: &str| s.split("\"timestamp\":\"").nth(1).map(str::to_string);
        ts(a).cmp(&ts(b))
    });
    for e in &events {
        p(&format!("event {e}"));
    }
    p("tearing the lab down");
    drop(cluster);
    Ok(report(seconds, wall, &rule, &counts, &shares))
}

#[derive(Debug)]
struct Counts {
    term_changes: usize,
    elected: usize,
    taking_over: usize,
    fencing: usize,
    history: VipHistory,
    unanswered: usize,
    longest_gap: Duration,
    polls: usize,
    unanswered_status: usize,
}

impl Counts {
    /// Leadership or the VIP went to another node: term changes, takeovers
    /// of a "silent" leader, VIP moves (one event may show in all three;
    /// the largest count is taken).
    fn spurious_takeovers(&self) -> usize {
        self.term_changes
            .max(self.taking_over)
            .max(self.history.moves)
    }

    /// The VIP left its holder although nothing failed (a fence).
    fn interruptions(&self) -> usize {
        self.history.removals.max(self.fencing)
    }
}

fn report(seconds: u64, wall: Duration, rule: &LeaseRule, c: &Counts, shares: &[f64]) -> String {
    let ms = |d: Duration| d.as_millis();
    let mut md = String::new();
    let _ = writeln!(md, "## Steady: no takeover without a fault\n");
    let share = super::Summary::of(&shares.iter().map(|s| s * 100.0).collect::<Vec<_>>());
    let _ = writeln!(
        md,
        "Three vipd nodes ({}, `--session-timeout 1s --lease {}ms`, `--xdp-mode generic`), a \
         ZooKeeper 3.8 and a client probing the VIP every 10 ms, as in the failover lab, left \
         alone for {seconds} s ({:.0} s measured) while the bench itself runs {} busy-loop \
         threads, one per CPU, at normal priority (they got a median {} of a CPU each; they stop \
         at the end, or 30 s after it whatever happens). The lease: renewed every {} ms; the \
         next in line takes over after {} ms without a renewal while ZooKeeper answers it. So a \
         renewal that comes more than {} ms late anywhere on its way (the leader's scheduling, \
         ZooKeeper, the follower's reads) is a spurious takeover. Leader changes are counted \
         three ways: the term in every node's `vipctl status` (polled every second: {} polls, \
         {} unanswered), vipd's own log lines (elected, taking over from a silent leader, \
         fencing), and the VIP's address events in every namespace.\n",
        timeline::binaries_note(),
        LEASE.as_millis(),
        wall.as_secs_f64(),
        shares.len(),
        share.map_or("?".to_string(), |s| format!("{:.0}%", s.median)),
        ms(rule.renew_every),
        ms(rule.takeover_after),
        ms(rule.takeover_after.saturating_sub(rule.renew_every)),
        c.polls,
        c.unanswered_status
    );
    let _ = writeln!(md, "| figure | measured | expected |\n|---|---|---|");
    let rows: [(&str, String, &str); 11] = [
        (
            "leader changes (term changes in the nodes' status)",
            c.term_changes.to_string(),
            "0",
        ),
        (
            "`elected leader` log lines (all nodes)",
            c.elected.to_string(),
            "0",
        ),
        (
            "takeovers of a silent leader (`the leader has not renewed its lease ...`)",
            c.taking_over.to_string(),
            "0",
        ),
        (
            "leader fenced itself (`no lease renewal acknowledged in time ...`)",
            c.fencing.to_string(),
            "0",
        ),
        (
            "VIP moves (added on another node)",
            c.history.moves.to_string(),
            "0",
        ),
        (
            "VIP back on the same node after a removal",
            c.history.returns.to_string(),
            "0",
        ),
        (
            "VIP removed from its holder (`RTM_DELADDR`)",
            c.history.removals.to_string(),
            "0",
        ),
        ("client probes unanswered", c.unanswered.to_string(), "0"),
        (
            "longest stretch without an answered probe (ms)",
            timeline::ms(c.longest_gap),
            "about 10",
        ),
        (
            "address lifetime renewals seen (`RTM_NEWADDR` on the holder)",
            c.history.renewals.to_string(),
            "",
        ),
        (
            "longest gap between two of them (ms)",
            c.history
                .longest_renewal_gap
                .map_or("n/a".to_string(), timeline::ms),
            "",
        ),
    ];
    for (what, got, want) in rows {
        let _ = writeln!(md, "| {what} | {got} | {want} |");
    }
    let _ = writeln!(
        md,
        "\n**Spurious takeovers: {}** (target: zero in a 5-minute run at `--lease {}ms` with both \
         CPUs loaded); **the VIP left its holder {} time(s)** (the leader fenced itself: no \
         renewal acknowledged within the lease; expected 0){}.\n",
        c.spurious_takeovers(),
        LEASE.as_millis(),
        c.interruptions(),
        if seconds < DEFAULT_SECONDS {
            format!("; this run was shorter ({seconds} s)")
        } else {
            String::new()
        }
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_tells_renewals_from_moves() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // n0 holds it and renews it twice; then it moves to n1 and back.
        let changes = [
            (at(100), 0, true),
            (at(350), 0, true),
            (at(400), 0, false),
            (at(500), 1, true),
            (at(600), 1, false),
            (at(700), 0, true),
        ];
        let h = vip_history(&changes, 3, 0);
        assert_eq!(h.renewals, 2);
        assert_eq!((h.moves, h.returns), (2, 0));
        assert_eq!(h.removals, 2);
        assert_eq!(h.longest_renewal_gap, Some(Duration::from_millis(250)));
        // A fence: removed, then back on the same node.
        let fence = [(at(100), 0, false), (at(300), 0, true), (at(350), 0, true)];
        let h = vip_history(&fence, 3, 0);
        assert_eq!((h.moves, h.returns, h.removals, h.renewals), (0, 1, 1, 1));
        let quiet = vip_history(&changes[..2], 3, 0);
        assert_eq!((quiet.moves, quiet.removals), (0, 0));
    }

    #[test]
    fn log_lines_are_counted_after_the_start() {
        let log = r#"{"timestamp":"2026-11-25T15:22:39.100000Z","level":"INFO","fields":{"message":"elected leader; lease held","term":1}}
{"timestamp":"2026-11-25T15:22:41.250000Z","level":"INFO","fields":{"message":"elected leader; lease held","term":2}}
{"timestamp":"2026-11-25T15:22:42.000000Z","level":"WARN","fields":{"message":"no lease renewal acknowledged in time; fencing"}}
not json"#;
        let start = timeline::parse_rfc3339("2026-11-25T15:22:40.000000Z").unwrap();
        assert_eq!(count_log_lines(log, ELECTED, start), 1);
        assert_eq!(count_log_lines(log, FENCING, start), 1);
        assert_eq!(count_log_lines(log, TAKING_OVER, start), 0);
    }
}
