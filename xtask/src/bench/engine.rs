//! The engine benchmark.

use anyhow::Result;

pub fn run(_runs: usize) -> Result<String> {
    anyhow::bail!("the engine benchmark is not written yet")
}
