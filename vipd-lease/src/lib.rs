//! The lease as arithmetic: how long a renewal keeps the leader's right to
//! hold the VIPs, when the next in line may take over, and how long the
//! kernel keeps an address after its last renewal. Without dependencies and
//! generic over its clock ([`Time`]), so vipd runs it on `Instant` and the
//! model checker (vipd-model) on its discrete ticks: a change of the rule is
//! checked there. docs/OPERATIONS.md "The lease" explains why the rules
//! cannot give two holders.

use std::{fmt, time::Duration};

/// A point in time the lease rules can count from: `std::time::Instant` in
/// vipd, a tick count in the model.
pub trait Time: Copy + Ord + fmt::Debug {
    /// `self + d` (saturating where the type has a top).
    fn plus(self, d: Duration) -> Self;
    /// How long after `earlier` this is; zero if it is not after it.
    fn since(self, earlier: Self) -> Duration;
}

impl Time for std::time::Instant {
    fn plus(self, d: Duration) -> Self {
        self + d
    }
    fn since(self, earlier: Self) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

/// The smallest takeover margin accepted. With a fence that outlives the
/// agent the margin is only a cushion on top of terms the rule counts
/// itself ([`LeaseTimes::fenced_takeover_after`]).
pub const MIN_MARGIN: Duration = Duration::from_millis(10);

/// The takeover margin when none is configured.
pub const DEFAULT_MARGIN: Duration = Duration::from_millis(25);

/// The margin the rule for a leader whose fence dies with it counts at
/// least, whatever is configured: it covers that leader's own fencing
/// (being scheduled, clearing its entries, removing its addresses) and the
/// clocks' rate difference.
pub const UNFENCED_MIN_MARGIN: Duration = Duration::from_millis(100);

/// The clocks' rate difference a fenced takeover allows for, as the
/// fraction `DRIFT_NUM / DRIFT_DEN` of the leader's lease: two clocks each
/// slewed by chrony at its fastest (`maxslewrate`, 83,333 ppm, the most any
/// common time daemon turns a clock), in opposite directions, differ in
/// rate by (1 + 1/12) / (1 - 1/12) = 13/11; a lease of `L` on the slow
/// clock is then up to `13/11 L` on the fast one.
const DRIFT_NUM: u32 = 2;
const DRIFT_DEN: u32 = 11;

/// How much longer than `length` a lease measured on the leader's clock can
/// last on the next in line's, rounded up to a microsecond.
pub fn drift_allowance(length: Duration) -> Duration {
    let ns = length.as_nanos() * u128::from(DRIFT_NUM);
    let us = ns.div_ceil(u128::from(DRIFT_DEN) * 1000);
    Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
}

/// The renewal interval never drops below this (a request per 10 ms is
/// already far more than the lease needs).
const MIN_RENEW_EVERY: Duration = Duration::from_millis(10);

/// Leases below this renew sixteen times per lease instead of four.
const SHORT_LEASE: Duration = Duration::from_secs(1);

/// Renewals per lease below [`SHORT_LEASE`] and from it on.
const SHORT_PARTS: u32 = 16;
const LONG_PARTS: u32 = 4;

/// The longest lease a session timeout allows (exclusive): lease + one
/// renewal interval must stay below the session timeout.
fn max_lease(session: Duration) -> Duration {
    // lease + lease/4 < session  <=>  lease < 4/5 session (leases >= 1 s).
    let quarter = session * 4 / 5;
    if quarter >= SHORT_LEASE {
        quarter
    } else {
        // lease + lease/16 < session  <=>  lease < 16/17 session (below 1 s).
        (session * SHORT_PARTS / (SHORT_PARTS + 1)).min(SHORT_LEASE)
    }
}

/// The lease's numbers, fixed for a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseTimes {
    /// How long an acknowledged renewal keeps the lease, from its send.
    pub length: Duration,
    /// The safety margin the successor adds before it takes over.
    pub margin: Duration,
}

/// Why a lease setting cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LeaseError {
    Zero,
    TooLong {
        lease: Duration,
        session: Duration,
        max: Duration,
    },
    Margin {
        margin: Duration,
    },
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseError::Zero => write!(f, "--lease must be greater than zero"),
            LeaseError::TooLong {
                lease,
                session,
                max,
            } => write!(
                f,
                "--lease {lease:?} is too long for --session-timeout {session:?}: it must be below the session timeout minus one renewal interval (lease / 16 below 1 s, lease / 4 from 1 s), so below {max:?}"
            ),
            LeaseError::Margin { margin } => write!(
                f,
                "--takeover-margin {margin:?} is below the minimum of {MIN_MARGIN:?}"
            ),
        }
    }
}

impl std::error::Error for LeaseError {}

impl LeaseTimes {
    /// The lease for a session timeout: `lease` if given, else a third of
    /// the session timeout. Refuses a lease that is not below the session
    /// timeout minus one renewal interval (the session must outlive every
    /// lease by more than a renewal, so the lease, not session expiry,
    /// decides), and a margin below [`MIN_MARGIN`].
    pub fn new(
        session: Duration,
        lease: Option<Duration>,
        margin: Duration,
    ) -> Result<Self, LeaseError> {
        let length = lease.unwrap_or(session / 3);
        if length.is_zero() {
            return Err(LeaseError::Zero);
        }
        let t = LeaseTimes { length, margin };
        if length + t.renew_every() >= session {
            return Err(LeaseError::TooLong {
                lease: length,
                session,
                max: max_lease(session),
            });
        }
        if margin < MIN_MARGIN {
            return Err(LeaseError::Margin { margin });
        }
        Ok(t)
    }

    /// Below 1 s of lease, the short rules apply (more renewals per lease).
    fn short(&self) -> bool {
        self.length < SHORT_LEASE
    }

    /// How often the leader renews: a quarter of the lease from 1 s on, a
    /// sixteenth below 1 s. The takeover waits one renewal interval more
    /// than the lease, and the last renewal is on average half an interval
    /// old at a fault, so a short lease (chosen for a fast takeover) renews
    /// often: 80 writes/s at 200 ms, still little for ZooKeeper. From 1 s
    /// on the kernel lifetime (whole seconds) must end before the takeover,
    /// and the quarter keeps lease/4 + margin of room for the kernel's
    /// slack (docs/OPERATIONS.md, "The lease").
    pub fn renew_every(&self) -> Duration {
        let parts = if self.short() {
            SHORT_PARTS
        } else {
            LONG_PARTS
        };
        (self.length / parts).max(MIN_RENEW_EVERY)
    }

    /// How often the next in line reads the leader's znode (and so checks
    /// that ZooKeeper answers it), besides each time its watch fires: an
    /// eighth of the lease from 1 s on, a sixteenth below.
    pub fn poll_every(&self) -> Duration {
        let parts = if self.short() { 16 } else { 8 };
        (self.length / parts).max(MIN_RENEW_EVERY)
    }

    /// The deadline of one of the successor's reads: two polls.
    pub fn poll_deadline(&self) -> Duration {
        self.poll_every() * 2
    }

    /// When a lease renewed by a write sent at `sent` ends. The leader
    /// fences then unless a later renewal was acknowledged.
    pub fn until<T: Time>(&self, sent: T) -> T {
        sent.plus(self.length)
    }

    /// How long the next in line must have seen no new version of the
    /// leader's znode before it takes over from a leader whose fence dies
    /// with it: the lease, one renewal interval and the margin, at least
    /// [`UNFENCED_MIN_MARGIN`].
    pub fn takeover_after(&self) -> Duration {
        self.length + self.renew_every() + self.unfenced_margin()
    }

    /// The margin the rule for a leader without a surviving fence counts.
    pub fn unfenced_margin(&self) -> Duration {
        self.margin.max(UNFENCED_MIN_MARGIN)
    }

    /// The takeover wait for a leader whose fence outlives its agent (the
    /// kernel drops everything for its VIPs from its lease's end, whatever
    /// the agent does): the lease, the clocks' rate difference over it
    /// ([`drift_allowance`]) and the margin. Nothing else: the first read
    /// that returns a version is answered after the leader sent that
    /// renewal, so the leader's lease ends at most `length` (its clock)
    /// after our count starts; the conditional delete fails if any later
    /// renewal was applied, so no renewal interval is needed; the kernel
    /// compares each packet's arrival with the lease's end, and a probe
    /// arrives after it is sent, so the old node answers nothing sent after
    /// that end; the agent's conversion to the kernel's clock errs early.
    pub fn fenced_takeover_after(&self) -> Duration {
        self.length + drift_allowance(self.length) + self.margin
    }

    /// The valid (and preferred) lifetime of a VIP address, in whole
    /// seconds: the longest that, with the kernel's worst slack
    /// ([`KERNEL_LIFETIME_SLACK`]), leaves the kernel before the earliest
    /// takeover, and no longer than the lease rounded down; at least 1 s
    /// (below [`LeaseTimes::safe_min_lease`] even that outlives the
    /// takeover: [`LeaseTimes::kill_overlap`]). The kernel then removes a
    /// dead or frozen agent's address before the next node takes over.
    pub fn address_lifetime(&self) -> u32 {
        let lease = u32::try_from(self.length.as_secs()).unwrap_or(u32::MAX);
        let room = self.takeover_after().saturating_sub(KERNEL_LIFETIME_SLACK);
        let fits = u32::try_from(room.as_secs()).unwrap_or(u32::MAX);
        lease.min(fits).max(1)
    }

    /// The shortest lease for which [`LeaseTimes::kill_overlap`] is zero with
    /// this margin: the 1 s minimum lifetime plus the slack must end before
    /// the takeover at lease + renewal + margin. (From 1 s on, the rounded-down
    /// lifetime never exceeds the lease, so every longer lease is safe too.)
    pub fn safe_min_lease(&self, kernel_slack: Duration) -> Duration {
        let room = (Duration::from_secs(1) + kernel_slack).saturating_sub(self.unfenced_margin());
        // Below 1 s the takeover is at 17/16 lease + margin, from 1 s at 5/4.
        let short = room * SHORT_PARTS / (SHORT_PARTS + 1);
        if short < SHORT_LEASE {
            return short;
        }
        (room * 4 / 5).max(SHORT_LEASE)
    }

    /// How long a SIGKILLed agent's address can outlive the takeover (zero
    /// when it cannot), given the kernel's lifetime check slack, for a
    /// renewal acknowledged at once: the address goes at most `lifetime +
    /// slack` after the renewal; the takeover comes at the earliest
    /// `takeover_after` after its send. A renewal acknowledged late gets a
    /// shorter lifetime ([`LeaseTimes::lifetime_at`]) so that this holds.
    pub fn kill_overlap(&self, kernel_slack: Duration) -> Duration {
        (Duration::from_secs(u64::from(self.address_lifetime())) + kernel_slack)
            .saturating_sub(self.takeover_after())
    }

    /// The lifetime to write at `now` into an address held under a lease
    /// that ends at `until`, in whole seconds; `None` when no lifetime of at
    /// least 1 s would end in time, so nothing may be written.
    ///
    /// The successor takes over no sooner than `takeover_after` after the
    /// renewal's send, that is `renew_every + margin` after `until`; the
    /// address must be out of the kernel (lifetime + slack) by then. A
    /// renewal acknowledged at once gets [`LeaseTimes::address_lifetime`];
    /// one acknowledged late (ZooKeeper slow to answer, up to a lease after
    /// the send) gets less, or none: a full lifetime counted from a late
    /// answer would keep a killed or frozen agent's address in its kernel
    /// past the takeover.
    ///
    /// Below [`LeaseTimes::safe_min_lease`] even the 1 s minimum outlives
    /// the takeover (by [`LeaseTimes::kill_overlap`], documented for such
    /// leases): there the lifetime stays the 1 s minimum.
    pub fn lifetime_at<T: Time>(&self, until: T, now: T, kernel_slack: Duration) -> Option<u32> {
        if !self.kill_overlap(kernel_slack).is_zero() {
            return Some(self.address_lifetime());
        }
        let room = (until.since(now) + self.renew_every() + self.unfenced_margin())
            .saturating_sub(kernel_slack);
        let secs = u32::try_from(room.as_secs())
            .unwrap_or(u32::MAX)
            .min(self.address_lifetime());
        (secs >= 1).then_some(secs)
    }
}

/// The lease one ZooKeeper session leads on: the configured one when the
/// session timeout the server granted can outlive it, else the lease the
/// default rule gives the granted timeout, else none at all.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SessionLease {
    AsConfigured(LeaseTimes),
    /// The configured lease does not fit the granted session (`refused`
    /// says why); `times` is the shorter lease this session leads on.
    Shortened {
        times: LeaseTimes,
        refused: LeaseError,
    },
    /// Not even the default rule fits the granted session: the node does
    /// not stand on it.
    Refused {
        configured: LeaseError,
        default: LeaseError,
    },
}

impl SessionLease {
    /// Checks `configured` against the session timeout ZooKeeper granted
    /// with the rule [`LeaseTimes::new`] applies to the configured one.
    pub fn for_granted(configured: LeaseTimes, granted: Duration) -> SessionLease {
        match LeaseTimes::new(granted, Some(configured.length), configured.margin) {
            Ok(t) => SessionLease::AsConfigured(t),
            Err(refused) => match LeaseTimes::new(granted, None, configured.margin) {
                Ok(times) => SessionLease::Shortened { times, refused },
                Err(default) => SessionLease::Refused {
                    configured: refused,
                    default,
                },
            },
        }
    }

    /// The lease to lead on, if any.
    pub fn times(&self) -> Option<LeaseTimes> {
        match self {
            SessionLease::AsConfigured(t) | SessionLease::Shortened { times: t, .. } => Some(*t),
            SessionLease::Refused { .. } => None,
        }
    }
}

impl LeaseTimes {
    /// The shortest session timeout ZooKeeper must grant for this lease to
    /// be used as configured: the session must outlive the lease by more
    /// than one renewal interval.
    pub fn min_session(&self) -> Duration {
        self.length + self.renew_every()
    }

    /// What the lease means, for `vipd check-config`: one comment line each.
    pub fn describe(&self) -> Vec<String> {
        let ms = |d: Duration| d.as_millis();
        let mut out = vec![format!(
            "# lease {} ms: renewed every {} ms; the next in line takes over after {} ms without a renewal; VIP addresses carry a kernel lifetime of {} s",
            ms(self.length),
            ms(self.renew_every()),
            ms(self.takeover_after()),
            self.address_lifetime()
        )];
        let overlap = self.kill_overlap(KERNEL_LIFETIME_SLACK);
        if overlap.is_zero() {
            out.push(format!(
                "# a SIGKILLed or frozen vipd's VIPs leave the kernel before the takeover (lifetime + {} ms kernel slack <= takeover), without the unit's ExecStopPost",
                ms(KERNEL_LIFETIME_SLACK)
            ));
        } else {
            out.push(format!(
                "# warning: with this lease a SIGKILLed vipd's VIPs can stay in the kernel up to {} ms after the next node takes over, unless the unit's ExecStopPost (vipctl cleanup) runs; a lease of at least {} ms avoids it (docs/OPERATIONS.md, \"The lease\")",
                ms(overlap),
                ms(self.safe_min_lease(KERNEL_LIFETIME_SLACK))
            ));
        }
        out.push(format!(
            "# from a leader that states its fence outlives its agent (pinned, on every interface of its VIPs), the next in line takes over after {} ms: the lease, {} ms for the clocks' rates (up to 13/11 apart: chrony's fastest slew, both ways) and the {} ms margin; the kernel then drops everything for the VIP from the lease's end, so no two nodes serve it at once (an address may still overlap); from any other leader after {} ms",
            ms(self.fenced_takeover_after()),
            ms(drift_allowance(self.length)),
            ms(self.margin),
            ms(self.takeover_after())
        ));
        out.push(format!(
            "# ZooKeeper must grant a session timeout above {} ms (its maxSessionTimeout, by default 20 x tickTime); if it grants less, vipd leads on a third of the granted timeout and reports the shortened lease",
            ms(self.min_session())
        ));
        out
    }
}

/// The kernel removes an expired address up to this long after its
/// lifetime ends. Its lifetime check (`check_lifetime` in
/// net/ipv4/devinet.c, `addrconf_verify` in net/ipv6/addrconf.c) runs at the
/// earliest expiry, but never sooner than a second (`ADDRCONF_TIMER_FUZZ_MAX`)
/// after its previous run, and every lifetime written on the host, in any
/// namespace, runs it at once. Measured on this kernel: a 2 s lifetime
/// alone goes after 2.03 s; after one lifetime write elsewhere at 1.95 s
/// it went at 3.01 s. A second, and 100 ms for the timer and the workqueue.
pub const KERNEL_LIFETIME_SLACK: Duration = Duration::from_millis(1100);

/// The longest takeover wait a leader's stated lease can ask for. A larger
/// one (garbage, or a lease no session could outlive) is cut to this; the
/// leader's session expiry removes its znode long before anyway.
const MAX_STATED_WAIT: Duration = Duration::from_secs(24 * 3600);

/// What a leader's znode says about its lease. Older leaders state only
/// the lease: the missing parts are derived by the shared rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatedLease {
    /// Nothing usable: a candidate that has not renewed yet, or data that
    /// does not parse.
    Unknown,
    Stated {
        length: Duration,
        renew_every: Option<Duration>,
        margin: Option<Duration>,
        /// The leader says the kernel fences its VIPs at its lease's end
        /// even if its agent dies (its programs and maps are pinned and
        /// cover every VIP it holds), with this margin for its successor
        /// (`None`: ours). Only then does the shorter rule apply.
        fence: Option<FenceStated>,
    },
}

/// A leader's statement that its fence outlives its agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FenceStated {
    pub margin: Option<Duration>,
}

impl StatedLease {
    /// From the fields of a leader's znode, in milliseconds; 0 is missing.
    pub fn from_ms(lease_ms: u64, renew_ms: u64, margin_ms: u64) -> StatedLease {
        let opt = |v: u64| (v > 0).then(|| Duration::from_millis(v));
        match opt(lease_ms) {
            None => StatedLease::Unknown,
            Some(length) => StatedLease::Stated {
                length,
                renew_every: opt(renew_ms),
                margin: opt(margin_ms),
                fence: None,
            },
        }
    }

    /// The same statement, with the leader's fence outliving its agent and
    /// the margin it asks for in milliseconds (0: missing). Nothing
    /// changes for a statement without a lease.
    pub fn fence_outlives_agent(self, fence_margin_ms: u64) -> StatedLease {
        match self {
            StatedLease::Unknown => StatedLease::Unknown,
            StatedLease::Stated {
                length,
                renew_every,
                margin,
                ..
            } => StatedLease::Stated {
                length,
                renew_every,
                margin,
                fence: Some(FenceStated {
                    margin: (fence_margin_ms > 0).then(|| Duration::from_millis(fence_margin_ms)),
                }),
            },
        }
    }
}

impl LeaseTimes {
    /// How long the next in line with these settings waits for a leader
    /// that stated `leader`: the longer of the leader's rule and our own
    /// rule, so a node with other settings never shortens a leader's lease.
    ///
    /// Only a leader that states that its fence outlives its agent is timed
    /// by the fenced rule ([`LeaseTimes::fenced_takeover_after`], on its
    /// lease and ours); every other leader (an older vipd, a node whose
    /// fence is not pinned or does not cover its VIPs, data that does not
    /// parse) by the rule that waits for its own fencing
    /// ([`LeaseTimes::takeover_after`]): its lease, renewal interval and
    /// margin as stated (a missing renewal interval by the shared rule, a
    /// missing margin ours), the margin at least [`UNFENCED_MIN_MARGIN`].
    pub fn takeover_wait(&self, leader: StatedLease) -> Duration {
        let StatedLease::Stated {
            length,
            renew_every,
            margin,
            fence,
        } = leader
        else {
            return self.takeover_after();
        };
        let (own, theirs) = match fence {
            Some(f) => {
                let margin = f.margin.unwrap_or(self.margin);
                let theirs = length
                    .saturating_add(drift_allowance(length))
                    .saturating_add(margin);
                (self.fenced_takeover_after(), theirs)
            }
            None => {
                let margin = margin.unwrap_or(self.margin).max(UNFENCED_MIN_MARGIN);
                let renew =
                    renew_every.unwrap_or_else(|| LeaseTimes { length, margin }.renew_every());
                let theirs = length.saturating_add(renew).saturating_add(margin);
                (self.takeover_after(), theirs)
            }
        };
        own.max(theirs.min(MAX_STATED_WAIT))
    }
}

/// The next in line's view of the leader's znode: the version it reads and
/// since when, counted only while its own reads are answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Observer<T: Time> {
    times: LeaseTimes,
    seen: Option<Seen<T>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Seen<T> {
    version: i32,
    /// The takeover wait for this version: the longer of the leader's
    /// stated rule and ours.
    wait: Duration,
    /// When a read returning `version` was first answered (after the
    /// leader sent that write, whatever the clocks say).
    since: T,
    last_answer: T,
}

impl<T: Time> Observer<T> {
    pub fn new(times: LeaseTimes) -> Self {
        Observer { times, seen: None }
    }

    /// A read sent at `sent` was answered at `answered` with the leader's
    /// znode at `version`, whose data stated `leader`. Returns the version
    /// to delete conditionally when the leader has been silent long enough.
    pub fn answered(
        &mut self,
        sent: T,
        answered: T,
        version: i32,
        leader: StatedLease,
    ) -> Option<i32> {
        // A long stretch without an answered read (we were stopped, or
        // ZooKeeper kept us waiting) restarts the count.
        let max_gap = self.times.poll_every() + self.times.poll_deadline();
        match &mut self.seen {
            Some(s) if s.version == version && sent.since(s.last_answer) <= max_gap => {
                s.last_answer = answered;
                (answered.since(s.since) >= s.wait).then_some(version)
            }
            _ => {
                self.seen = Some(Seen {
                    version,
                    wait: self.times.takeover_wait(leader),
                    since: answered,
                    last_answer: answered,
                });
                None
            }
        }
    }

    /// A read was not answered in time (or failed): ZooKeeper is not
    /// answering us, so its silence about the leader means nothing.
    pub fn missed(&mut self) {
        self.seen = None;
    }

    /// The version to delete conditionally at `now`, without another read:
    /// the current version has been seen for the takeover wait and the
    /// last read was answered no longer ago than a read may take after the
    /// previous answer (so ZooKeeper kept answering us all along).
    pub fn due(&self, now: T) -> Option<i32> {
        let s = self.seen?;
        let max_gap = self.times.poll_every() + self.times.poll_deadline();
        (now.since(s.since) >= s.wait && now.since(s.last_answer) <= max_gap).then_some(s.version)
    }

    /// When the current version's silence reaches the takeover wait: the
    /// next in line acts then rather than at its next poll ([`Observer::due`]).
    pub fn takeover_at(&self) -> Option<T> {
        self.seen.map(|s| s.since.plus(s.wait))
    }

    /// The takeover wait for the version being counted, if any.
    pub fn wait(&self) -> Option<Duration> {
        self.seen.map(|s| s.wait)
    }

    /// How long the current version has been seen, if it is being counted.
    pub fn silent_for(&self, now: T) -> Option<Duration> {
        self.seen.map(|s| now.since(s.since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const MS: Duration = Duration::from_millis(1);

    fn times(lease_ms: u64) -> LeaseTimes {
        LeaseTimes {
            length: Duration::from_millis(lease_ms),
            margin: 100 * MS,
        }
    }

    #[test]
    fn default_and_validation() {
        let t = LeaseTimes::new(Duration::from_secs(6), None, 100 * MS).unwrap();
        assert_eq!(t.length, Duration::from_secs(2));
        assert_eq!(t.renew_every(), 500 * MS);
        assert_eq!(t.takeover_after(), 2600 * MS);
        let t = LeaseTimes::new(Duration::from_secs(1), None, 100 * MS).unwrap();
        assert_eq!(t.length, 333 * MS + Duration::from_nanos(333_333));
        // 4.8 s + 1.2 s = 6 s: not below the session timeout.
        assert_eq!(
            LeaseTimes::new(Duration::from_secs(6), Some(4800 * MS), 100 * MS),
            Err(LeaseError::TooLong {
                lease: 4800 * MS,
                session: Duration::from_secs(6),
                max: 4800 * MS
            })
        );
        assert!(LeaseTimes::new(Duration::from_secs(6), Some(4790 * MS), 100 * MS).is_ok());
        assert_eq!(
            LeaseTimes::new(Duration::from_secs(6), Some(Duration::ZERO), 100 * MS),
            Err(LeaseError::Zero)
        );
        assert_eq!(
            LeaseTimes::new(Duration::from_secs(6), None, 9 * MS),
            Err(LeaseError::Margin { margin: 9 * MS })
        );
        // A margin below the old minimum is accepted, and the rule for a
        // leader whose fence dies with it still counts 100 ms.
        let t = LeaseTimes::new(Duration::from_secs(6), None, DEFAULT_MARGIN).unwrap();
        assert_eq!(t.takeover_after(), 2600 * MS);
        assert_eq!(t.address_lifetime(), 1);
        let e = LeaseTimes::new(
            Duration::from_secs(1),
            Some(Duration::from_secs(1)),
            100 * MS,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--lease 1s") && e.contains("941.176"), "{e}");
        // Below 1 s the renewal is a sixteenth: lease + lease/16 < session.
        let one = Duration::from_secs(1);
        assert!(LeaseTimes::new(one, Some(941 * MS), 100 * MS).is_ok());
        assert!(LeaseTimes::new(one, Some(942 * MS), 100 * MS).is_err());
        // Between: a session of 1.2 s takes any lease below 1 s, not 1 s
        // (1 s + 250 ms is past it).
        let s12 = 1200 * MS;
        assert!(LeaseTimes::new(s12, Some(999 * MS), 100 * MS).is_ok());
        assert_eq!(
            LeaseTimes::new(s12, Some(one), 100 * MS),
            Err(LeaseError::TooLong {
                lease: one,
                session: s12,
                max: one
            })
        );
        // The stated maximum is the boundary (to rounding).
        for session_ms in (200..10_000).step_by(7) {
            let session = Duration::from_millis(session_ms);
            let max = max_lease(session);
            let below = max.saturating_sub(MS);
            assert!(
                LeaseTimes::new(session, Some(below), 100 * MS).is_ok(),
                "{session:?}: {below:?} should be accepted (max {max:?})"
            );
            let above = max + Duration::from_micros(1);
            assert!(
                LeaseTimes::new(session, Some(above), 100 * MS).is_err(),
                "{session:?}: {above:?} should be refused"
            );
        }
    }

    #[test]
    fn deadlines() {
        let t = times(2000);
        let sent = Instant::now();
        assert_eq!(t.until(sent), sent + 2000 * MS);
        let us = Duration::from_micros(1);
        assert_eq!(
            times(200).renew_every(),
            12500 * us,
            "a sixteenth below 1 s"
        );
        assert_eq!(times(200).poll_every(), 12500 * us);
        assert_eq!(times(200).poll_deadline(), 25 * MS);
        assert_eq!(times(200).takeover_after(), 312500 * us);
        assert_eq!(times(999).renew_every(), 62437500 * Duration::from_nanos(1));
        assert_eq!(times(1000).renew_every(), 250 * MS, "a quarter from 1 s");
        assert_eq!(times(1000).poll_every(), 125 * MS);
        assert_eq!(times(1000).poll_deadline(), 250 * MS);
        assert_eq!(times(2000).takeover_after(), 2600 * MS);
        assert_eq!(times(20).renew_every(), 10 * MS, "floor");
        assert_eq!(times(20).poll_every(), 10 * MS, "floor");
    }

    #[test]
    fn lifetime_rule() {
        assert_eq!(times(200).address_lifetime(), 1);
        assert_eq!(times(999).address_lifetime(), 1);
        assert_eq!(times(1999).address_lifetime(), 1);
        // The default: 1 s + 1.1 s of slack fits the 2.6 s takeover, 2 s does not.
        assert_eq!(times(2000).address_lifetime(), 1);
        assert_eq!(times(2400).address_lifetime(), 2);
        assert_eq!(times(6500).address_lifetime(), 6);
        for ms in (1000..20_000).step_by(37) {
            let t = times(ms);
            let l = u64::from(t.address_lifetime());
            // Never longer than the lease once the lease is 1 s or more,
            // and out of the kernel before the takeover wherever 1 s is.
            assert!(l * 1000 <= ms, "{ms}");
            if t.kill_overlap(KERNEL_LIFETIME_SLACK).is_zero() {
                assert!(
                    Duration::from_secs(l) + KERNEL_LIFETIME_SLACK <= t.takeover_after(),
                    "{ms}"
                );
            }
        }
    }

    /// Drawn answer delays: the lifetime written at the answer, plus the
    /// kernel's slack, never outlives the earliest takeover (the send plus
    /// `takeover_after`) at any lease that claims no kill overlap; an
    /// answer at once still gets the whole lifetime.
    #[test]
    fn lifetime_at_a_late_answer_ends_before_the_takeover() {
        let t0 = std::time::Instant::now();
        let mut seed = 0x5eed_u64;
        for lease_ms in [
            200_u64, 333, 666, 1_000, 1_333, 1_999, 2_000, 3_000, 6_500, 20_000,
        ] {
            let t = times(lease_ms);
            let until = t.until(t0);
            if t.kill_overlap(KERNEL_LIFETIME_SLACK).is_zero() {
                assert_eq!(
                    t.lifetime_at(until, t0, KERNEL_LIFETIME_SLACK),
                    Some(t.address_lifetime())
                );
            }
            for _ in 0..500 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let late = Duration::from_micros((seed >> 33) % (t.length.as_micros() as u64 + 1));
                let answered = t0 + late;
                match t.lifetime_at(until, answered, KERNEL_LIFETIME_SLACK) {
                    Some(secs) if t.kill_overlap(KERNEL_LIFETIME_SLACK).is_zero() => {
                        let gone =
                            answered + Duration::from_secs(u64::from(secs)) + KERNEL_LIFETIME_SLACK;
                        assert!(
                            gone <= t0 + t.takeover_after(),
                            "lease {lease_ms} ms, answered {late:?} late: lifetime {secs} s outlives the takeover"
                        );
                        assert!(secs >= 1 && secs <= t.address_lifetime());
                    }
                    Some(secs) => assert_eq!(secs, t.address_lifetime()),
                    None => assert!(
                        t.kill_overlap(KERNEL_LIFETIME_SLACK).is_zero()
                            && late + Duration::from_secs(1) + KERNEL_LIFETIME_SLACK
                                > t.takeover_after(),
                        "lease {lease_ms} ms, answered {late:?} late: refused although 1 s fits"
                    ),
                }
            }
        }
    }

    #[test]
    fn kill_overlap_by_lease() {
        let slack = KERNEL_LIFETIME_SLACK;
        // Default at T = 6 s: lease 2 s, lifetime 1 s, takeover 2.6 s.
        assert_eq!(times(2000).kill_overlap(slack), Duration::ZERO);
        // T = 1 s: lease 333 ms, lifetime 1 s, takeover about 517 ms.
        assert!(times(333).kill_overlap(slack) > 1500 * MS);
        assert!(times(200).kill_overlap(slack) > 1600 * MS);
        // 1 s: lifetime 1 s + 1.1 s against a takeover at 1.35 s.
        assert_eq!(times(1000).kill_overlap(slack), 750 * MS);
        // The boundary: 1.6 s with a 100 ms margin (renewal 400 ms: 1.6 +
        // 0.4 + 0.1 = 2.1 s = 1 s + 1.1 s).
        assert_eq!(times(500).safe_min_lease(slack), 1600 * MS);
        assert_eq!(times(1600).kill_overlap(slack), Duration::ZERO);
        assert!(times(1599).kill_overlap(slack) > Duration::ZERO);
        assert_eq!(times(1999).kill_overlap(slack), Duration::ZERO);
        // A larger margin moves it down.
        let wide = LeaseTimes {
            length: 500 * MS,
            margin: 600 * MS,
        };
        let min = wide.safe_min_lease(slack);
        // (2.1 s - 600 ms) * 4 / 5.
        assert_eq!(min, 1200 * MS);
        let at = |ms| LeaseTimes {
            length: ms,
            margin: 600 * MS,
        };
        assert_eq!(at(min + MS).kill_overlap(slack), Duration::ZERO);
        assert!(at(min - MS).kill_overlap(slack) > Duration::ZERO);
        assert!(times(333).describe()[1].contains("warning"));
        assert!(times(1000).describe()[1].contains("warning"));
        assert!(!times(2000).describe()[1].contains("warning"));
    }

    #[test]
    fn takeover_only_after_silence_while_answered() {
        let t = margin_to_325(); // takeover after 200 + 12.5 + 112.5 = 325 ms
        let mut o = Observer::new(t);
        let t0 = Instant::now();
        let poll = |o: &mut Observer<Instant>, at: u64, v: i32| {
            o.answered(
                t0 + Duration::from_millis(at),
                t0 + Duration::from_millis(at + 1),
                v,
                StatedLease::Unknown,
            )
        };
        let mut at = 0;
        while at < 325 {
            assert_eq!(poll(&mut o, at, 7), None, "{at}");
            at += 25;
        }
        // First seen at +1 ms: 325 ms later it may go, and the next in
        // line is told when.
        assert_eq!(o.takeover_at(), Some(t0 + 326 * MS));
        assert_eq!(o.due(t0 + 325 * MS), None, "not yet");
        assert_eq!(o.due(t0 + 326 * MS), Some(7), "at the wait's end");
        // ... but not when the last answer is older than a read may take.
        assert_eq!(o.due(t0 + 340 * MS), None, "last answer at 301 ms");
        assert_eq!(poll(&mut o, 325, 7), Some(7));
        assert_eq!(o.due(t0 + 340 * MS), Some(7));
        // A new version restarts the count.
        assert_eq!(poll(&mut o, 360, 8), None);
        assert_eq!(
            poll(&mut o, 700, 8),
            None,
            "gap > poll + deadline restarts too"
        );
        assert_eq!(o.silent_for(t0 + 701 * MS), Some(Duration::ZERO));
    }

    /// A 200 ms lease (renewed and polled every 12.5 ms, reads due within
    /// 25 ms) with a 112.5 ms margin: the takeover wait is a round 325 ms.
    fn margin_to_325() -> LeaseTimes {
        let t = LeaseTimes {
            length: 200 * MS,
            margin: 1125 * Duration::from_micros(100),
        };
        assert_eq!(t.takeover_after(), 325 * MS);
        t
    }

    #[test]
    fn unanswered_reads_restart_the_count() {
        let t = margin_to_325();
        let mut o = Observer::new(t);
        let t0 = Instant::now();
        let mut at = 0;
        // Polls every 25 ms, one missed in the middle: the count starts
        // again at the next answer (226 ms), so no takeover 325 ms after
        // the first.
        while at <= 400 {
            if at == 200 {
                o.missed();
            } else {
                assert_eq!(
                    o.answered(t0 + at * MS, t0 + (at + 1) * MS, 3, StatedLease::Unknown),
                    None,
                    "{at}"
                );
            }
            at += 25;
        }
        while at < 550 {
            assert_eq!(
                o.answered(t0 + at * MS, t0 + (at + 1) * MS, 3, StatedLease::Unknown),
                None,
                "{at}"
            );
            at += 25;
        }
        assert_eq!(
            o.answered(t0 + 550 * MS, t0 + 551 * MS, 3, StatedLease::Unknown),
            Some(3)
        );
    }

    #[test]
    fn the_granted_session_decides_the_lease() {
        let s = Duration::from_secs;
        let defaults = LeaseTimes::new(s(6), None, 100 * MS).unwrap();
        // Granted what was asked, or more: as configured.
        for granted in [s(6), s(60)] {
            assert_eq!(
                SessionLease::for_granted(defaults, granted),
                SessionLease::AsConfigured(defaults)
            );
        }
        // Capped at 1 s: the 2 s lease does not fit; a third of 1 s does.
        let capped = SessionLease::for_granted(defaults, s(1));
        let SessionLease::Shortened { times, refused } = &capped else {
            panic!("{capped:?}");
        };
        assert_eq!(times.length, 333 * MS + Duration::from_nanos(333_333));
        assert_eq!(times.margin, 100 * MS);
        assert!(matches!(refused, LeaseError::TooLong { .. }), "{refused:?}");
        assert_eq!(capped.times(), Some(*times));
        // The boundary is the check-config figure: above lease + renewal.
        assert_eq!(defaults.min_session(), 2500 * MS);
        assert!(matches!(
            SessionLease::for_granted(defaults, 2500 * MS),
            SessionLease::Shortened { .. }
        ));
        assert_eq!(
            SessionLease::for_granted(defaults, 2501 * MS),
            SessionLease::AsConfigured(defaults)
        );
        // A configured lease shorter than the default rule's stays when it fits.
        let short = LeaseTimes::new(s(6), Some(200 * MS), 100 * MS).unwrap();
        assert_eq!(
            SessionLease::for_granted(short, s(1)),
            SessionLease::AsConfigured(short)
        );
        // Drawn: whatever is granted, the lease led on fits the granted
        // session by the same rule, and is never longer than configured.
        for granted_ms in (1..20_000).step_by(13) {
            let granted = Duration::from_millis(granted_ms);
            for configured in [defaults, short] {
                let r = SessionLease::for_granted(configured, granted);
                if let Some(t) = r.times() {
                    assert!(t.length <= configured.length, "{granted:?}: {r:?}");
                    assert!(t.min_session() < granted, "{granted:?}: {r:?}");
                    assert_eq!(t.margin, configured.margin);
                }
            }
        }
        // Not even a third fits (the renewal interval's floor is 10 ms):
        // refused.
        assert!(matches!(
            SessionLease::for_granted(defaults, 12 * MS),
            SessionLease::Refused { .. }
        ));
        assert!(
            defaults
                .describe()
                .last()
                .unwrap()
                .contains("above 2500 ms")
        );
    }

    #[test]
    fn the_successor_waits_by_the_longer_rule() {
        let own = times(333); // takeover after 333 + 20.8 + 100 ms
        let leader = times(2000);
        let stated = StatedLease::from_ms(2000, 500, 100);
        assert_eq!(own.takeover_wait(stated), 2600 * MS, "the leader's rule");
        assert_eq!(leader.takeover_wait(stated), 2600 * MS);
        // A leader with a shorter lease never shortens our own wait.
        assert_eq!(
            leader.takeover_wait(StatedLease::from_ms(333, 21, 100)),
            leader.takeover_after()
        );
        // A wider stated margin counts.
        assert_eq!(
            own.takeover_wait(StatedLease::from_ms(2000, 500, 400)),
            2900 * MS
        );
        // An older leader states only its lease: renewal by the shared
        // rule, our margin.
        assert_eq!(
            own.takeover_wait(StatedLease::from_ms(2000, 0, 0)),
            2600 * MS
        );
        assert_eq!(
            own.takeover_wait(StatedLease::from_ms(200, 0, 0)),
            own.takeover_after(),
            "200 + 12.5 + 100 ms is below our own"
        );
        // Nothing stated (a candidate's data, garbage): our own rule.
        assert_eq!(StatedLease::from_ms(0, 500, 100), StatedLease::Unknown);
        assert_eq!(
            own.takeover_wait(StatedLease::Unknown),
            own.takeover_after()
        );
        // Absurd values are bounded, not overflowed.
        assert_eq!(
            own.takeover_wait(StatedLease::from_ms(u64::MAX, u64::MAX, u64::MAX)),
            MAX_STATED_WAIT
        );
        // Drawn: the wait is never below either rule.
        for lease_ms in (1..5000).step_by(17) {
            for (renew_ms, margin_ms) in [(0, 0), (1, 100), (lease_ms / 4, 300)] {
                let stated = StatedLease::from_ms(lease_ms, renew_ms, margin_ms);
                let w = own.takeover_wait(stated);
                assert!(w >= own.takeover_after(), "{stated:?}");
                let theirs = Duration::from_millis(lease_ms + margin_ms.max(100));
                assert!(w > theirs, "{stated:?}: {w:?}");
            }
        }
    }

    #[test]
    fn the_observer_counts_to_the_leaders_wait() {
        // Our own lease is 200 ms (wait 325 ms); the leader states 2 s.
        let mut o = Observer::new(margin_to_325());
        let t0 = Instant::now();
        let stated = StatedLease::from_ms(2000, 500, 100);
        let mut at = 0;
        while at < 2600 {
            assert_eq!(
                o.answered(t0 + at * MS, t0 + (at + 1) * MS, 5, stated),
                None,
                "{at}: the leader's lease is not over"
            );
            assert_eq!(o.due(t0 + (at + 1) * MS), None, "{at}");
            at += 25;
        }
        assert_eq!(o.wait(), Some(2600 * MS));
        assert_eq!(o.takeover_at(), Some(t0 + 2601 * MS));
        assert_eq!(
            o.answered(t0 + 2600 * MS, t0 + 2601 * MS, 5, stated),
            Some(5)
        );
        // A new version that states nothing: back to our own wait.
        assert_eq!(
            o.answered(t0 + 2625 * MS, t0 + 2626 * MS, 6, StatedLease::Unknown),
            None
        );
        assert_eq!(o.wait(), Some(325 * MS));
    }

    #[test]
    fn drift_allowance_is_two_elevenths_rounded_up() {
        assert_eq!(drift_allowance(Duration::ZERO), Duration::ZERO);
        assert_eq!(drift_allowance(1100 * MS), 200 * MS);
        assert_eq!(drift_allowance(2000 * MS), Duration::from_micros(363_637));
        assert_eq!(drift_allowance(200 * MS), Duration::from_micros(36_364));
        assert_eq!(drift_allowance(100 * MS), Duration::from_micros(18_182));
        for ms in (1..100_000).step_by(97) {
            let l = Duration::from_millis(ms);
            let d = drift_allowance(l);
            // (l + d) * 11 >= l * 13, and d is at most a microsecond more.
            assert!((l + d) * 11 >= l * 13, "{l:?}");
            assert!((l + d - Duration::from_micros(1)) * 11 < l * 13, "{l:?}");
        }
    }

    #[test]
    fn the_fenced_rule_by_lease() {
        let at = |ms| LeaseTimes {
            length: Duration::from_millis(ms),
            margin: DEFAULT_MARGIN,
        };
        let us = Duration::from_micros;
        assert_eq!(at(100).fenced_takeover_after(), us(143_182));
        assert_eq!(at(200).fenced_takeover_after(), us(261_364));
        assert_eq!(at(2000).fenced_takeover_after(), us(2_388_637));
        // The rule without a surviving fence is today's.
        // (The renewal interval's 10 ms floor: 100 + 10 + 100 ms.)
        assert_eq!(at(100).takeover_after(), us(210_000));
        assert_eq!(at(200).takeover_after(), us(312_500));
        assert_eq!(at(2000).takeover_after(), 2600 * MS);
    }

    /// The fenced rule applies only to a leader that states its fence
    /// outlives it; a stated wait is never below either side's rule.
    #[test]
    fn the_fenced_rule_only_for_a_leader_that_says_so() {
        let own = LeaseTimes {
            length: 200 * MS,
            margin: DEFAULT_MARGIN,
        };
        let plain = StatedLease::from_ms(200, 13, 100);
        let fenced = plain.fence_outlives_agent(25);
        // The leader's stated 13 ms renewal (rounded up) beats our 12.5.
        assert_eq!(own.takeover_wait(plain), 313 * MS);
        assert_eq!(own.takeover_wait(fenced), own.fenced_takeover_after());
        assert_eq!(
            own.takeover_wait(StatedLease::Unknown),
            own.takeover_after()
        );
        assert_eq!(
            StatedLease::Unknown.fence_outlives_agent(25),
            StatedLease::Unknown
        );
        // A leader on a longer lease, fenced: its lease and its drift.
        assert_eq!(
            own.takeover_wait(StatedLease::from_ms(2000, 500, 100).fence_outlives_agent(0)),
            Duration::from_micros(2_388_637)
        );
        // An older leader stating a margin below 100 ms is still timed by
        // the unfenced rule with 100 ms.
        assert_eq!(
            own.takeover_wait(StatedLease::from_ms(200, 13, 25)),
            313 * MS,
            "200 + 13 + 100 ms"
        );
        // Drawn: whatever the settings, the wait for a fenced leader is at
        // least both fenced rules, and for any other at least both
        // unfenced rules.
        let mut seed = 0x25_u64;
        let mut draw = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for _ in 0..5000 {
            let own = LeaseTimes {
                length: Duration::from_millis(1 + draw(5000)),
                margin: Duration::from_millis(10 + draw(300)),
            };
            let (lease_ms, renew_ms, margin_ms) = (1 + draw(5000), draw(1300), draw(300));
            let leader = LeaseTimes {
                length: Duration::from_millis(lease_ms),
                margin: Duration::from_millis(margin_ms.max(10)),
            };
            let plain = StatedLease::from_ms(lease_ms, renew_ms, margin_ms);
            let w = own.takeover_wait(plain);
            assert!(w >= own.takeover_after(), "{own:?} {plain:?}");
            assert!(
                w >= leader.length + Duration::from_millis(renew_ms) + UNFENCED_MIN_MARGIN,
                "{own:?} {plain:?}"
            );
            let fenced = plain.fence_outlives_agent(margin_ms);
            let w = own.takeover_wait(fenced);
            assert!(w >= own.fenced_takeover_after(), "{own:?} {fenced:?}");
            assert!(
                w >= leader.length + drift_allowance(leader.length),
                "{own:?} {fenced:?}"
            );
        }
    }

    /// The fenced rule against drawn clock rates and read times: a leader
    /// whose last acknowledged renewal was sent at real time `sent` serves
    /// until its lease ends on its own clock; its successor first reads
    /// that version at some real time after `sent` and serves from its wait
    /// on its own clock. With rates up to 13/11 apart, the successor never
    /// starts before the leader ends; at a rate ratio a little past the
    /// allowance it does (the rule is not loose by more than the margin).
    #[test]
    fn the_fenced_rule_never_lets_two_serve() {
        let mut seed = 0x2501_u64;
        let mut draw = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let mut beyond = 0;
        for _ in 0..20_000 {
            let t = LeaseTimes {
                length: Duration::from_millis(10 + draw(10_000)),
                margin: MIN_MARGIN,
            };
            // Each clock's rate within 1/12 of true, in parts per 12,000.
            let rate_a = 11_000 + draw(2001) as u128; // leader
            let rate_b = 11_000 + draw(2001) as u128; // successor
            let sent_ns = u128::from(draw(1_000_000_000));
            let read_after_ns = u128::from(draw(50_000_000));
            // Real time = clock time * 12_000 / rate.
            let lease_ns = t.length.as_nanos();
            let ends_ns = sent_ns + lease_ns * 12_000 / rate_a;
            let first_ns = sent_ns + read_after_ns;
            let wait_ns = t.fenced_takeover_after().as_nanos();
            let serves_ns = first_ns + wait_ns * 12_000 / rate_b;
            assert!(
                serves_ns >= ends_ns,
                "{t:?}: rates {rate_a}/{rate_b}: successor at {serves_ns} ns, leader until {ends_ns} ns"
            );
            // Past the allowance (rates 1/6 off each way), with the read at
            // once and without the margin, a long lease overlaps.
            let no_margin = t.length + drift_allowance(t.length);
            if sent_ns + no_margin.as_nanos() * 12_000 / 14_000
                < sent_ns + lease_ns * 12_000 / 10_000
            {
                beyond += 1;
            }
        }
        assert!(beyond > 19_000, "{beyond}");
    }
}
