//! `cargo xtask package`: the Debian package.

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Options {}

pub fn run(_opts: &Options) -> Result<PathBuf> {
    anyhow::bail!("packaging is not written yet")
}
