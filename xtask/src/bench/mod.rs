//! `cargo xtask bench [engine|failover|arp|keepalived|all]`: benchmarks in
//! the lab, printing figures and writing docs/BENCHMARKS.md.

mod arp;
mod engine;
mod failover;
mod keepalived;
pub(crate) mod timeline;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Options {
    /// Which benchmark (default: all of them).
    #[arg(value_enum, default_value = "all")]
    pub which: Which,
    /// Runs per measured case (failover and keepalived need at least 10).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    All,
    Engine,
    Failover,
    Arp,
    Keepalived,
}

pub fn run(opts: &Options) -> Result<()> {
    let _ = (engine::run, failover::run, arp::run, keepalived::run);
    anyhow::bail!("bench {:?}: not written yet", opts.which)
}
