//! The keepalived benchmark.

use anyhow::Result;

pub fn run(_runs: usize) -> Result<String> {
    anyhow::bail!("the keepalived benchmark is not written yet")
}
