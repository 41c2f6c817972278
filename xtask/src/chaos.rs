//! `cargo xtask chaos --minutes N --seed S [--nodes 3..=5]`: builds vipd,
//! then runs the chaos lab of the vipd-tests library (random faults from
//! the seed against 3 to 5 nodes at their default lease settings) and its
//! checker. A violation exits non-zero with the schedule and the seed.

use std::time::Duration;

use anyhow::{Result, bail};
use vipd_tests::chaos;

use crate::{build, is_root};

#[derive(clap::Args)]
pub struct Options {
    /// How long faults are injected, in minutes (fractions allowed).
    #[arg(long, default_value_t = 5.0)]
    pub minutes: f64,
    /// The seed the fault schedule is drawn from: the same seed replays
    /// the same schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// vipd nodes in the lab (3 to 5).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=5))]
    pub nodes: u64,
    /// Use the release binaries (the default is the debug build the tests use).
    #[arg(long)]
    pub release: bool,
    /// Where ZooKeeper keeps its data: `disk` as deployed (and the slow-disk
    /// fault can throttle it), or `shm` as the integration tests have it
    /// (slow-disk faults are then skipped).
    #[arg(long, value_enum, default_value = "disk")]
    pub zk_data: ZkData,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ZkData {
    Disk,
    Shm,
}

/// The shortest window the run accepts.
const MIN_MINUTES: f64 = 10.0 / 60.0;

pub fn run(o: &Options) -> Result<()> {
    if !is_root() {
        bail!(
            "cargo xtask chaos needs root: it builds network namespaces, nftables rules and \
             cgroups in a lab. Run it as root, e.g. `sudo -E cargo xtask chaos`"
        );
    }
    if !o.minutes.is_finite() || o.minutes < MIN_MINUTES || o.minutes > 24.0 * 60.0 {
        bail!(
            "--minutes {}: give a window between {MIN_MINUTES:.2} (10 s) and 1440",
            o.minutes
        );
    }
    let bins = build::build(&build::Options { release: o.release })?;
    set_binaries(&bins)?;
    let mut opts = chaos::Options::new(
        o.seed,
        o.nodes as usize,
        Duration::from_secs_f64(o.minutes * 60.0),
    );
    opts.zk_on_disk = o.zk_data == ZkData::Disk;
    let report = chaos::run(&opts)?;
    println!("{}", report.text());
    if !report.passed() {
        bail!(
            "the chaos run with seed {} found {} violation(s) (above)",
            o.seed,
            report.violations().len()
        );
    }
    Ok(())
}

/// Points the lab at the binaries just built.
pub fn set_binaries(bins: &std::path::Path) -> Result<()> {
    for (name, env) in [("vipd", "VIPD_BIN"), ("vipctl", "VIPCTL_BIN")] {
        let path = bins.join(name);
        if !path.is_file() {
            bail!("the build did not produce {}", path.display());
        }
        // SAFETY: no other thread runs yet: the lab starts below.
        unsafe { std::env::set_var(env, &path) };
    }
    Ok(())
}
