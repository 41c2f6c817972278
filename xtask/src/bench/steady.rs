//! `bench steady`: three vipd nodes at `--lease 200ms`, then at `--lease
//! 100ms`, with a 1 s session timeout, left alone while the bench keeps
//! every CPU busy. Nothing fails, so nothing may move: no leader change, no
//! takeover, no VIP move. The leader's renewal gaps are read from
//! ZooKeeper's own transaction log (the time it applied each renewal).

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
/// The leases the steady run measures, one after the other.
const LEASES: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(100)];
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
    let bins = binaries()?;
    let start = Instant::now();
    let mut md = String::new();
    let _ = writeln!(md, "## Steady: no takeover without a fault\n");
    for lease in LEASES {
        md += &run_lease(opts, &bins, start, lease)?;
    }
    Ok(md)
}

/// One steady run at `lease`: its part of the report.
fn run_lease(
    opts: &Options,
    bins: &std::path::Path,
    start: Instant,
    lease: Duration,
) -> Result<String> {
    let seconds = opts.seconds;
    let bins = bins.to_path_buf();
    let p = |s: &str| {
        progress(
            start,
            &format!("steady --lease {}ms: {s}", lease.as_millis()),
        )
    };
    let system = System::Vipd {
        session_timeout: SESSION_TIMEOUT,
        lease: Some(lease),
        ipv6: false,
    };
    let Some(rule) = vipd_lease_check(&bins, &system)? else {
        bail!("this vipd has no --lease (vipd check-config refuses it): the steady run needs it");
    };
    let cluster = FailoverLab::start_with(
        &format!("steady{}", lease.as_millis()),
        Agent::Vipd(SETTINGS),
        Some(lease),
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
    let wall_end = SystemTime::now();
    let shares = load.stop();
    let gaps = match cluster.zk_data_root() {
        Some(root) => renewal_gaps(root, wall0, wall_end).with_context(|| {
            format!("reading ZooKeeper's transaction log in {}", root.display())
        })?,
        None => Vec::new(),
    };
    let gaps = GapSummary::of(&gaps);
    p(&format!("renewal gaps: {gaps:?}"));
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
    Ok(report(seconds, wall, lease, &rule, &counts, &gaps, &shares))
}

/// The renewal gaps' percentiles, in ms (ZooKeeper's timestamps are whole
/// milliseconds).
#[derive(Debug, Default, PartialEq)]
pub struct GapSummary {
    pub count: usize,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl GapSummary {
    pub fn of(gaps: &[u64]) -> GapSummary {
        if gaps.is_empty() {
            return GapSummary::default();
        }
        let mut v = gaps.to_vec();
        v.sort_unstable();
        // Nearest rank.
        let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        GapSummary {
            count: v.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: v[v.len() - 1],
        }
    }
}

/// ZooKeeper's transaction log: a `ZKLG` header, then entries of a CRC, a
/// length, the transaction (its header: client id, cxid, zxid, the
/// server's wall-clock time in ms, the type; then the record) and an `B`;
/// the file is preallocated with zeros past the last entry.
const TXN_LOG_MAGIC: u32 = 0x5a4b_4c47;
const OP_SET_DATA: i32 = 5;

/// Every `setData` in a transaction log file: (time in ms since the epoch,
/// path).
pub fn set_data_txns(bytes: &[u8]) -> Result<Vec<(u64, String)>> {
    let be32 = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let be64 = |b: &[u8], at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
    };
    if be32(bytes, 0) != Some(TXN_LOG_MAGIC) {
        bail!("not a ZooKeeper transaction log (no ZKLG header)");
    }
    let mut out = Vec::new();
    let mut at = 16;
    while let (Some(crc), Some(len)) = (be64(bytes, at), be32(bytes, at + 8)) {
        if crc == 0 && len == 0 {
            break;
        }
        let len = len as usize;
        let Some(txn) = bytes.get(at + 12..at + 12 + len) else {
            break;
        };
        // Header: clientId 8, cxid 4, zxid 8, time 8, type 4.
        if let (Some(time), Some(kind)) = (be64(txn, 20), be32(txn, 28))
            && kind as i32 == OP_SET_DATA
            && let Some(plen) = be32(txn, 32)
            && let Some(path) = txn.get(36..36 + plen as usize)
        {
            out.push((time, String::from_utf8_lossy(path).into_owned()));
        }
        at += 12 + len + 1;
    }
    Ok(out)
}

/// The gaps, in ms, between consecutive `setData`s of each election znode
/// (the leader's renewals) that ZooKeeper applied between `from` and `to`,
/// from every transaction log under `root`.
fn renewal_gaps(root: &std::path::Path, from: SystemTime, to: SystemTime) -> Result<Vec<u64>> {
    let ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let (from, to) = (ms(from), ms(to));
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = e?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("log."))
            {
                files.push(path);
            }
        }
    }
    let mut txns = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        txns.extend(set_data_txns(&bytes).with_context(|| f.display().to_string())?);
    }
    txns.sort();
    let mut last: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut gaps = Vec::new();
    for (t, path) in txns {
        if !path.contains("/election/") || t < from || t > to {
            continue;
        }
        if let Some(prev) = last.insert(path, t) {
            gaps.push(t - prev);
        }
    }
    Ok(gaps)
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

fn report(
    seconds: u64,
    wall: Duration,
    lease: Duration,
    rule: &LeaseRule,
    c: &Counts,
    gaps: &GapSummary,
    shares: &[f64],
) -> String {
    let ms = |d: Duration| d.as_millis();
    let mut md = String::new();
    let _ = writeln!(md, "### `--lease {}ms`\n", lease.as_millis());
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
        lease.as_millis(),
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
    let gap_row = |v: u64| {
        if gaps.count == 0 {
            "n/a".to_string()
        } else {
            v.to_string()
        }
    };
    let renew = format!("{} (the interval)", ms(rule.renew_every));
    let rows: [(&str, String, &str); 17] = [
        (
            "renewals ZooKeeper applied (gaps measured)",
            gaps.count.to_string(),
            "",
        ),
        ("renewal gap p50 (ms)", gap_row(gaps.p50), &renew),
        ("renewal gap p90 (ms)", gap_row(gaps.p90), ""),
        ("renewal gap p99 (ms)", gap_row(gaps.p99), ""),
        ("renewal gap p99.9 (ms)", gap_row(gaps.p999), ""),
        ("renewal gap max (ms)", gap_row(gaps.max), ""),
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
         renewal acknowledged within the lease; expected 0){}. Renewal gaps are the times \
         between consecutive renewals of the leader's znode as ZooKeeper applied them (its \
         transaction log's timestamps, whole ms): a gap above the lease is a lease that ran \
         out.\n",
        c.spurious_takeovers(),
        lease.as_millis(),
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

    /// A transaction log as ZooKeeper writes it: the header, entries, and
    /// zeros; only the setData entries come out, with their times.
    #[test]
    fn set_data_is_read_from_a_transaction_log() {
        fn entry(time: u64, kind: i32, path: &str) -> Vec<u8> {
            let mut txn = Vec::new();
            txn.extend(7u64.to_be_bytes()); // client id
            txn.extend(1u32.to_be_bytes()); // cxid
            txn.extend(9u64.to_be_bytes()); // zxid
            txn.extend(time.to_be_bytes());
            txn.extend(kind.to_be_bytes());
            txn.extend((path.len() as u32).to_be_bytes());
            txn.extend(path.as_bytes());
            txn.extend(3u32.to_be_bytes());
            txn.extend(b"abc");
            txn.extend(5u32.to_be_bytes()); // version
            let mut e = 0x1234u64.to_be_bytes().to_vec(); // crc
            e.extend((txn.len() as u32).to_be_bytes());
            e.extend(txn);
            e.push(b'B');
            e
        }
        let mut log = TXN_LOG_MAGIC.to_be_bytes().to_vec();
        log.extend(2u32.to_be_bytes());
        log.extend(0u64.to_be_bytes());
        log.extend(entry(
            1000,
            OP_SET_DATA,
            "/vipd/lab/election/n1-n_0000000001",
        ));
        log.extend(entry(1005, 1, "/vipd/lab/election/n2-n_0000000002"));
        log.extend(entry(
            1013,
            OP_SET_DATA,
            "/vipd/lab/election/n1-n_0000000001",
        ));
        log.extend([0u8; 64]);
        let txns = set_data_txns(&log).unwrap();
        assert_eq!(
            txns,
            vec![
                (1000, "/vipd/lab/election/n1-n_0000000001".to_string()),
                (1013, "/vipd/lab/election/n1-n_0000000001".to_string())
            ]
        );
        assert!(set_data_txns(b"nope").is_err());
        let g = GapSummary::of(&[13, 12, 13, 40, 12, 13, 13, 12, 13, 13]);
        assert_eq!((g.count, g.p50, g.p90, g.max), (10, 13, 13, 40));
        assert_eq!(g.p99, 40);
        assert_eq!(GapSummary::of(&[]), GapSummary::default());
    }

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
