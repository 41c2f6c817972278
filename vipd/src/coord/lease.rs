//! The lease as arithmetic: how long a renewal keeps the leader's right to
//! hold the VIPs, when the next in line may take over, and how long the
//! kernel keeps an address after its last renewal. The rules live in the
//! vipd-lease crate, generic over the clock, so that the model checker
//! (vipd-model) checks the very rules vipd runs; here they are fixed to
//! `Instant`. docs/OPERATIONS.md "The lease" explains why they cannot give
//! two holders.

pub use vipd_lease::{
    KERNEL_LIFETIME_SLACK, LeaseError, LeaseTimes, MIN_MARGIN, SessionLease, StatedLease,
};

/// The next in line's view of the leader's znode, on the agent's clock.
pub type Observer = vipd_lease::Observer<std::time::Instant>;

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// The alias keeps the rules: a version seen for the takeover wait on
    /// the agent's clock is due, one more recent is not.
    #[test]
    fn the_observer_runs_on_instant() {
        let t = LeaseTimes::new(Duration::from_secs(6), None, MIN_MARGIN).unwrap();
        let mut o = Observer::new(t);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(o.answered(t0, t0 + ms(1), 4, StatedLease::Unknown), None);
        let mut at = ms(0);
        while at < t.takeover_after() {
            assert_eq!(o.due(t0 + ms(1) + at), None, "{at:?}");
            assert_eq!(
                o.answered(t0 + at, t0 + at + ms(1), 4, StatedLease::Unknown),
                None,
                "{at:?}"
            );
            at += t.poll_every();
        }
        assert_eq!(o.takeover_at(), Some(t0 + ms(1) + t.takeover_after()));
        assert_eq!(o.due(t0 + ms(1) + t.takeover_after()), Some(4));
        assert_eq!(t.until(t0), t0 + t.length);
    }
}
