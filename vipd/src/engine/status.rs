//! What the engine publishes for the API, `vipctl status` and the metrics
//! page: output only, never read back by the engine.

use std::{collections::BTreeMap, time::Duration};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::{config::XdpMode, role::Role, vip::Vip, xdp::XdpAttachment};

/// The parts of the status the engine fills in as the API shows them.
pub(crate) use vipd_api::{
    ConflictStatus, LeaseStatus, LinkHealth, ProbeStats, ReconcileSummary, VipState, VipStatus,
};

/// The reconcile passes' durations, a histogram shared by the engine (which
/// observes each pass) and the metrics page (which exports it). Not in the
/// API's answers.
#[derive(Clone, Debug)]
pub(crate) struct PassDurations(Histogram);

impl Default for PassDurations {
    /// Buckets from 100 µs to 0.82 s, doubling: a pass takes a few
    /// milliseconds (docs/BENCHMARKS.md), a slow netlink dump more.
    fn default() -> Self {
        PassDurations(Histogram::new(exponential_buckets(0.000_1, 2.0, 14)))
    }
}

impl PassDurations {
    pub(crate) fn observe(&self, took: Duration) {
        self.0.observe(took.as_secs_f64());
    }

    /// The histogram itself (a handle on the same buckets), for export.
    pub(crate) fn histogram(&self) -> Histogram {
        self.0.clone()
    }
}

/// Everything the engine shows the API.
#[derive(Clone, Debug, Default)]
pub(crate) struct EngineStatus {
    pub role: Role,
    pub term: u64,
    /// Leader terms this agent started (becoming leader, or a new term).
    pub leader_terms: u64,
    pub vips: Vec<VipStatus>,
    pub last_reconcile: ReconcileSummary,
    /// Every pass's duration, for the metrics page's histogram.
    pub pass_durations: PassDurations,
    /// Where the program is attached, in which mode and why.
    pub xdp_attached: Vec<XdpAttachment>,
    /// The `--xdp-mode` setting (`None` until the engine starts).
    pub xdp_setting: Option<XdpMode>,
    pub xdp_errors: Vec<String>,
    /// Configured VIPs beyond what the XDP maps hold (both families): the
    /// kernel answers ARP/NDP for them, XDP neither answers nor counts.
    pub xdp_over_capacity: usize,
    /// The held maps' entries as last written: VIP -> (lease end, fence
    /// end) on the programs' clock. The API tells the fence state from
    /// them at the time it is asked.
    pub fence: BTreeMap<Vip, (u64, u64)>,
    pub conflicts: BTreeMap<Vip, ConflictStatus>,
    /// VIP -> interface name, for every VIP the engine knows a place for.
    pub interfaces: BTreeMap<Vip, String>,
    /// Lease renewals applied (address lifetimes and XDP expiry).
    pub lease: LeaseStatus,
    /// VIP interfaces down or without carrier (a leader hands over then).
    pub links: LinkHealth,
    /// Address-conflict probes, counted per VIP probed.
    pub probes: ProbeStats,
}

/// The fence state of an entry with `lease_end` and `fence_end` at `now`
/// (programs' clock, ns), and until when it lasts (`None`: no end).
pub(crate) fn fence_state(
    now: u64,
    lease_end: u64,
    fence_end: u64,
) -> (vipd_api::FenceState, Option<u64>) {
    use vipd_api::FenceState;
    use vipd_common::NO_EXPIRY;
    let until = |t: u64| (t != NO_EXPIRY).then_some(t);
    if now < lease_end {
        (FenceState::Serving, until(lease_end))
    } else if now < fence_end {
        (FenceState::Fenced, until(fence_end))
    } else {
        (FenceState::Inert, None)
    }
}

#[cfg(test)]
mod tests {
    use vipd_api::FenceState;
    use vipd_common::NO_EXPIRY;

    use super::fence_state;

    #[test]
    fn an_entry_serves_until_its_lease_end_then_is_fenced_until_its_window_ends() {
        for lease_end in [0, 5, 1_000, NO_EXPIRY] {
            for window in [0, 1, 700, NO_EXPIRY] {
                let fence_end = lease_end.saturating_add(window);
                for now in [0, 4, 5, 6, 999, 1_000, 1_699, 1_700, 1_701, u64::MAX - 1] {
                    let (state, until) = fence_state(now, lease_end, fence_end);
                    let case = format!("now {now}, lease end {lease_end}, fence end {fence_end}");
                    let want = if now < lease_end {
                        FenceState::Serving
                    } else if now < fence_end {
                        FenceState::Fenced
                    } else {
                        FenceState::Inert
                    };
                    assert_eq!(state, want, "{case}");
                    let end = match state {
                        FenceState::Serving => Some(lease_end),
                        FenceState::Fenced => Some(fence_end),
                        FenceState::Inert => None,
                    };
                    assert_eq!(until, end.filter(|e| *e != NO_EXPIRY), "{case}");
                }
            }
        }
    }
}
