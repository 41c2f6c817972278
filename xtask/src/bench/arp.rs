//! The arp benchmark.

use anyhow::Result;

pub fn run(_runs: usize) -> Result<String> {
    anyhow::bail!("the arp benchmark is not written yet")
}
