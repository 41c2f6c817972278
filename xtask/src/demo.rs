//! `cargo xtask demo`: vipd doing its job in a lab, in about a minute.

use anyhow::Result;

#[derive(clap::Args)]
pub struct Options {}

pub fn run(_opts: &Options) -> Result<()> {
    anyhow::bail!("the demo is not written yet")
}
