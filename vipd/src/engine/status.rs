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
