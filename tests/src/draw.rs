//! Seeded draws for tests that pick their cases at random: the chaos run's
//! splitmix64 ([`SplitMix64`]), seeded from an environment variable when it
//! is set and from the clock otherwise, with the seed printed, so a failing
//! run replays.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::chaos::schedule::SplitMix64;

pub struct Draw(SplitMix64);

impl Draw {
    /// Seeded from `$var` if set, else from the clock; prints the seed
    /// under `what`.
    pub fn from_env(what: &str, var: &str) -> Draw {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("[{what}] seed {seed} ({var}={seed} replays it)");
        Draw::seeded(seed)
    }

    /// A fixed seed: the same draws on every run.
    pub fn seeded(seed: u64) -> Draw {
        Draw(SplitMix64::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }

    /// Uniform in `0..n` (n > 0), as an index.
    pub fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.0.below(n as u64)).unwrap_or(0)
    }

    /// A duration in `lo..hi` milliseconds (whole milliseconds).
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.0.below(hi - lo))
    }

    /// A duration in `[0, below)`, whole milliseconds.
    pub fn duration_below(&mut self, below: Duration) -> Duration {
        let ms = u64::try_from(below.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(self.0.below(ms))
    }

    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
}
