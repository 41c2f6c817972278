//! The programs' clock: `bpf_ktime_get_boot_ns` reads the host's
//! CLOCK_BOOTTIME (it counts suspend, so a lease cannot outlast a sleep),
//! and the held maps' lease and fence ends are written on it. The kernel's
//! helper ignores time namespaces; a vipd inside one reads its clock with
//! the namespace's offset, so the offset is taken back out here.

use std::{sync::OnceLock, time::Instant};

/// `at` on the programs' clock in nanoseconds: the host's CLOCK_BOOTTIME.
/// std's `Instant` reads CLOCK_MONOTONIC and keeps its value private:
/// convert through the distance from now (the two clocks run at the same
/// rate while the machine is awake).
pub fn program_ns(at: Instant) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut ts) };
    let here_ns = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
    let host_ns = u64::try_from(here_ns - i128::from(boottime_offset_ns())).unwrap_or(0);
    let now = Instant::now();
    let ahead = u64::try_from(at.saturating_duration_since(now).as_nanos()).unwrap_or(u64::MAX);
    let behind = u64::try_from(now.saturating_duration_since(at).as_nanos()).unwrap_or(u64::MAX);
    host_ns.saturating_add(ahead).saturating_sub(behind)
}

/// The boottime offset of this process's time namespace (0 in the host's,
/// or where the kernel has no time namespaces), read once: a namespace's
/// offsets cannot change once a process lives in it.
fn boottime_offset_ns() -> i64 {
    static OFFSET: OnceLock<i64> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::fs::read_to_string("/proc/self/timens_offsets")
            .ok()
            .and_then(|text| parse_boottime_offset(&text))
            .unwrap_or(0)
    })
}

/// The boottime line of /proc/PID/timens_offsets: `boottime <secs> <nanos>`
/// (the clock may also be given by its number, 7).
fn parse_boottime_offset(text: &str) -> Option<i64> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let clock = fields.next()?;
        if clock != "boottime" && clock != "7" {
            return None;
        }
        let secs: i64 = fields.next()?.parse().ok()?;
        let nanos: i64 = fields.next()?.parse().ok()?;
        Some(secs * 1_000_000_000 + nanos)
    })
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

    #[test]
    fn the_boottime_offset_is_read_from_its_line() {
        let cases = [
            ("monotonic 0 0\nboottime 0 0\n", Some(0)),
            (
                "monotonic 86400 0\nboottime 3600 500\n",
                Some(3_600_000_000_500),
            ),
            ("monotonic -5 0\nboottime -7 0\n", Some(-7_000_000_000)),
            ("1 0 0\n7 2 0\n", Some(2_000_000_000)),
            ("monotonic 1 0\n", None),
            ("boottime x 0\n", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_boottime_offset(text), want, "{text:?}");
        }
    }
}
