//! The engine's settings in its own terms: what it reads from the
//! configuration, taken once at start (daemon.rs builds them), so the
//! engine does not depend on the command line's types.

use std::time::Duration;

use crate::{config::XdpMode, net::probe::ProbeTiming};

/// How the engine paces its passes, announcements and XDP attachments.
#[derive(Clone, Debug)]
pub(crate) struct EngineSettings {
    /// The periodic reconcile pass, besides the passes on netlink events.
    pub(crate) reconcile_interval: Duration,
    /// Whether netlink events start passes at once (else only the timer).
    pub(crate) netlink_events: bool,
    /// How long a burst of netlink events is gathered into one pass.
    pub(crate) event_debounce: Duration,
    /// Sync rounds after becoming leader (0: none), `garp_interval` apart.
    pub(crate) garp_rounds: u32,
    pub(crate) garp_interval: Duration,
    /// Re-announcement after the sync rounds (zero: never).
    pub(crate) garp_refresh: Duration,
    /// How long a VIP interface may be down before the leader hands over.
    pub(crate) link_grace: Duration,
    /// The address-conflict probe before a first add (`None`: off).
    pub(crate) probe: Option<ProbeTiming>,
    /// How often a VIP found in use is probed again.
    pub(crate) probe_retry: Duration,
    /// Interfaces the XDP program is attached to besides those with VIPs.
    pub(crate) xdp_interfaces: Vec<String>,
    pub(crate) xdp_mode: XdpMode,
    /// Whether the XDP program answers ARP and NDP for held VIPs.
    pub(crate) xdp_responder: bool,
}
