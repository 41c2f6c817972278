//! The failover benchmark.

use anyhow::Result;

pub fn run(_runs: usize) -> Result<String> {
    anyhow::bail!("the failover benchmark is not written yet")
}
