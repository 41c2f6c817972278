//! `bench chaos [--minutes M]`: the chaos run of `cargo xtask chaos` for M
//! minutes in all (default 30), as runs of at most 10 minutes with fixed
//! seeds and 3, 4, then 5 nodes; writes docs/BENCHMARKS.md "Chaos": faults
//! injected by kind, serving overlap, the longest unserved time after a
//! heal per fault kind, and the seeds.

use std::time::Duration;

use anyhow::{Result, bail};
use vipd_tests::chaos;

/// The length of the run by default, in minutes.
pub const DEFAULT_MINUTES: u64 = 30;
/// The longest single run: a failing run's schedule stays readable.
const RUN_MINUTES: u64 = 10;
/// The first seed; run k uses FIRST_SEED + k.
const FIRST_SEED: u64 = 2701;

pub fn run(minutes: u64) -> Result<String> {
    if minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    let mut reports = Vec::new();
    let mut left = minutes;
    let mut k = 0;
    while left > 0 {
        let m = left.min(RUN_MINUTES);
        left -= m;
        let mut o = chaos::Options::new(
            FIRST_SEED + k,
            3 + (k as usize % 3),
            Duration::from_secs(m * 60),
        );
        o.hint = format!("bchaos{k}");
        // The bench as deployed: ZooKeeper's data on disk (see bench::run).
        o.zk_on_disk = true;
        eprintln!(
            "== chaos run {}: seed {}, {} nodes, {m} min ==",
            k + 1,
            o.seed,
            o.nodes
        );
        let r = chaos::run(&o)?;
        eprintln!("{}", r.text());
        reports.push(r);
        k += 1;
    }
    let body = chaos::report::markdown(&reports);
    let failed: Vec<u64> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.seed)
        .collect();
    if !failed.is_empty() {
        // The section is still worth reading; the failure is reported too.
        eprintln!("{body}");
        bail!("chaos runs with seeds {failed:?} found violations (above)");
    }
    Ok(body)
}
