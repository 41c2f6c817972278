//! The XDP program's clock: `bpf_ktime_get_ns` reads CLOCK_MONOTONIC, and
//! the held map's lease ends are written on it.

use std::time::Instant;

/// `at` on CLOCK_MONOTONIC in nanoseconds, the clock of the XDP program's
/// `bpf_ktime_get_ns` (std's `Instant` reads the same clock on Linux, but
/// keeps its value private: convert through the distance from now).
pub fn program_ns(at: Instant) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    let now_ns = u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0);
    let now = Instant::now();
    let ahead = u64::try_from(at.saturating_duration_since(now).as_nanos()).unwrap_or(u64::MAX);
    let behind = u64::try_from(now.saturating_duration_since(at).as_nanos()).unwrap_or(u64::MAX);
    now_ns.saturating_add(ahead).saturating_sub(behind)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn instants_keep_their_order_and_distance() {
        let now = Instant::now();
        let later = now + Duration::from_secs(30);
        let (a, b) = (program_ns(now), program_ns(later));
        assert!(a > 0);
        let apart = b - a;
        // Two readings of the clock lie between the conversions.
        assert!(
            (30_000_000_000..30_100_000_000).contains(&apart),
            "{apart} ns apart"
        );
        let earlier = now.checked_sub(Duration::from_secs(1)).unwrap();
        assert!(program_ns(earlier) < a);
    }
}
