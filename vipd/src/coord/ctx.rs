//! What the roles of coordination share: the settings, the lease of the
//! current session, and the channels to the engine (`Desired`) and to
//! operators (`CoordStatus`); the candidacy's state (`Campaign`).

use std::time::Duration;

use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use zookeeper_client::{Client, StateWatcher};

use super::{
    ClusterPaths, CoordStatus, ZkSettings,
    election::{CandidateData, FENCE_PINNED, ms_up},
    lease::{LeaseTimes, SessionLease},
    session::{ZnodeAcl, call},
};
use crate::{
    health::HealthStatus,
    role::{Desired, EngineReport, LeaseGrant, Role},
};

/// How long the engine gets to remove VIPs before we release the election.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// A lease in whole milliseconds, for the status.
pub(super) fn lease_ms(t: LeaseTimes) -> u64 {
    u64::try_from(t.length.as_millis()).unwrap_or(u64::MAX)
}

pub(super) struct Ctx<'a> {
    pub(super) settings: &'a ZkSettings,
    /// The lease of the current session ([`Ctx::session_lease`]): every
    /// lease computation of the session uses it, never `settings.lease`.
    pub(super) lease: std::sync::Mutex<LeaseTimes>,
    pub(super) paths: ClusterPaths,
    pub(super) acl: ZnodeAcl,
    pub(super) data: Vec<u8>,
    pub(super) desired: &'a watch::Sender<Desired>,
    pub(super) status: &'a watch::Sender<CoordStatus>,
    /// This node's drain record, as last read (drained: do not stand).
    pub(super) drained: &'a watch::Sender<bool>,
    pub(super) health: Option<watch::Receiver<HealthStatus>>,
    /// The TCP handoff (`None`: off): publishing while leading, the last
    /// publish before a planned move, reading at takeover.
    pub(super) handoff: Option<super::Handoff>,
}

pub(super) struct Campaign {
    pub(super) term: u64,
    pub(super) report: watch::Receiver<EngineReport>,
    pub(super) report_open: bool,
    /// `None`: no checks (or the checks stopped): healthy.
    pub(super) health: Option<watch::Receiver<HealthStatus>>,
    pub(super) drained: watch::Receiver<bool>,
    /// Elected but fenced (lease not renewed in time): a follower until a
    /// renewal is acknowledged. Published as `CoordStatus::fenced`.
    pub(super) fenced: bool,
}

impl Campaign {
    /// Why this node should not stand (a VIP interface down, unhealthy,
    /// drained), if it should not.
    pub(super) fn unfit(&self) -> Option<String> {
        let mut why = Vec::new();
        if *self.drained.borrow() {
            why.push("drained by an operator".to_string());
        }
        let links = &self.report.borrow().links_down;
        if !links.is_empty() {
            why.push(format!(
                "VIP interface down: {}",
                links.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some(h) = &self.health {
            let h = h.borrow();
            if !h.healthy {
                why.push(format!("health checks failing: {}", h.failing().join(", ")));
            }
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// Returns once [`Campaign::unfit`] turns to (`was` false) or from
    /// (`was` true) a reason. Never returns while nothing can change it.
    pub(super) async fn unfit_changed(&mut self, was: bool) {
        while self.unfit().is_some() == was {
            tokio::select! {
                r = self.report.changed(), if self.report_open => {
                    if r.is_err() {
                        self.report_open = false;
                    }
                }
                r = changed_opt(&mut self.health) => {
                    if r.is_err() {
                        self.health = None;
                    }
                }
                // The sender lives as long as coordination.
                _ = self.drained.changed() => {}
            }
        }
    }
}

pub(super) async fn changed_opt<T>(
    w: &mut Option<watch::Receiver<T>>,
) -> Result<(), watch::error::RecvError> {
    match w {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

impl Ctx<'_> {
    pub(super) fn set_session(&self, s: &str) {
        self.status.send_if_modified(|x| {
            let changed = x.session != s;
            x.session = s.to_string();
            changed
        });
    }

    pub(super) fn error(&self, e: String) {
        self.status.send_modify(|x| x.last_error = Some(e));
    }

    pub(super) fn follower(&self, st: &mut Campaign, fenced: bool) {
        st.fenced = fenced;
        self.desired.send_if_modified(|d| {
            let changed = d.role != Role::Follower;
            d.role = Role::Follower;
            changed
        });
        self.status.send_if_modified(|x| {
            let changed = x.is_leader || x.fenced != fenced || !x.unplaceable.is_empty();
            x.is_leader = false;
            x.fenced = fenced;
            x.unplaceable.clear();
            changed
        });
    }

    pub(super) fn leader(&self, st: &mut Campaign, term: u64, lease: LeaseGrant) {
        st.fenced = false;
        self.desired.send_modify(|d| {
            d.role = Role::Leader;
            d.term = term;
            d.lease = Some(lease);
        });
        self.status.send_modify(|x| {
            x.is_leader = true;
            x.fenced = false;
            x.leader = Some(self.settings.node_id.clone());
            x.term = Some(term);
        });
    }

    /// An acknowledged renewal: the engine renews addresses and XDP expiry.
    pub(super) fn renewed(&self, lease: LeaseGrant) {
        self.desired.send_if_modified(|d| {
            let changed = d.role == Role::Leader && d.lease != Some(lease);
            if changed {
                d.lease = Some(lease);
            }
            changed
        });
    }

    /// The lease of the current session.
    pub(super) fn lease(&self) -> LeaseTimes {
        *self
            .lease
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks the configured lease against the session timeout ZooKeeper
    /// granted this session and sets the lease the session leads on,
    /// saying so loudly when it is not the configured one. False when no
    /// lease fits the granted session: the node must not stand on it.
    pub(super) fn session_lease(&self, granted: Duration) -> bool {
        let configured = self.settings.lease;
        let decided = SessionLease::for_granted(configured, granted);
        let ms = |d: Duration| d.as_millis();
        let fix = format!(
            "raise the ZooKeeper servers' maxSessionTimeout (by default 20 x tickTime) above {} ms, or lower --session-timeout or --lease to fit",
            ms(configured.min_session())
        );
        let (effective, why) = match &decided {
            SessionLease::AsConfigured(t) => (*t, None),
            SessionLease::Shortened { times, .. } => {
                error!(asked = ?self.settings.session_timeout, granted = ?granted,
                    configured_lease = ?configured.length, lease = ?times.length, fix = %fix,
                    "ZooKeeper granted a shorter session than asked; leading on a shorter lease");
                let why = format!(
                    "ZooKeeper granted a {} ms session (asked {} ms), too short for the configured {} ms lease; leading on {} ms: {fix}",
                    ms(granted),
                    ms(self.settings.session_timeout),
                    ms(configured.length),
                    ms(times.length)
                );
                (*times, Some(why))
            }
            SessionLease::Refused { default, .. } => {
                error!(asked = ?self.settings.session_timeout, granted = ?granted,
                    configured_lease = ?configured.length, error = %default, fix = %fix,
                    "ZooKeeper granted a session too short for any lease; not standing for election");
                let why = format!(
                    "ZooKeeper granted a {} ms session (asked {} ms), too short for any lease; not standing: {fix}",
                    ms(granted),
                    ms(self.settings.session_timeout)
                );
                (configured, Some(why))
            }
        };
        *self
            .lease
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = effective;
        self.status.send_modify(|x| {
            x.lease_ms = lease_ms(effective);
            x.granted_session_ms = Some(u64::try_from(granted.as_millis()).unwrap_or(u64::MAX));
            x.lease_adjusted = why;
        });
        decided.times().is_some()
    }

    pub(super) fn grant(&self, sent: Instant) -> LeaseGrant {
        let lease = self.lease();
        LeaseGrant {
            until: lease.until(sent.into_std()),
            address_lifetime: lease.address_lifetime(),
            times: lease,
        }
    }

    /// Releases our candidacy, the one way every role lets it go: publish
    /// Follower, wait (bounded) until the engine holds nothing, then
    /// delete our election znode, whose deletion wakes the next in line at
    /// once. The caller decides when to stand again.
    pub(super) async fn release(
        &self,
        st: &mut Campaign,
        client: Option<&Client>,
        own: Option<String>,
    ) {
        // The successor tickles what was published last: publish once
        // more while the VIPs are still ours.
        if let (Some(handoff), Some(client)) = (&self.handoff, client)
            && self.desired.borrow().role == Role::Leader
        {
            let held = st.report.borrow().held.clone();
            super::connections::last_publish(client, &self.paths, &self.acl, &held, handoff).await;
        }
        self.follower(st, false);
        wait_released(st, RELEASE_WAIT).await;
        let (Some(client), Some(me)) = (client, own) else {
            return;
        };
        let deadline = client.session_timeout() / 3;
        let path = format!("{}/{me}", self.paths.election);
        match call("delete", &path, deadline, client.delete(&path, None)).await {
            Ok(()) => info!(znode = %path, "candidacy deleted"),
            Err(e) if e.is(&zookeeper_client::Error::NoNode) => {}
            Err(e) => {
                warn!(error = %e, "could not delete our candidacy; it goes with the session")
            }
        }
    }

    /// Our election znode's data for renewal `renewal` of term `term`.
    pub(super) fn renewal_data(&self, host: &str, term: u64, renewal: u64) -> Vec<u8> {
        let lease = self.lease();
        serde_json::to_vec(&CandidateData {
            node: self.settings.node_id.clone(),
            host: host.to_string(),
            term,
            lease_ms: ms_up(lease.length),
            renew_ms: ms_up(lease.renew_every()),
            margin_ms: ms_up(lease.unfenced_margin()),
            fence: if self.settings.fence_outlives_agent {
                FENCE_PINNED.to_string()
            } else {
                String::new()
            },
            fence_margin_ms: if self.settings.fence_outlives_agent {
                ms_up(lease.margin)
            } else {
                0
            },
            renewal,
        })
        .expect("plain data serializes")
    }
}

/// Waits (bounded) until the engine reports no VIP held.
async fn wait_released(st: &mut Campaign, limit: Duration) {
    let r = tokio::time::timeout(limit, async {
        st.report.wait_for(|r| r.held.is_empty()).await.map(drop)
    })
    .await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(_)) => debug!("engine report closed; nothing to wait for"),
        Err(_) => {
            let held: Vec<String> = st
                .report
                .borrow()
                .held
                .iter()
                .map(ToString::to_string)
                .collect();
            warn!(vips = ?held, "engine still holds VIPs after {limit:?}; releasing anyway");
        }
    }
}

/// Waits a little before a retry, waking early on a session state change.
pub(super) async fn pause(d: Duration, state: &mut StateWatcher, cancel: &CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
        _ = state.changed() => {}
    }
}
