//! The session loop: open a ZooKeeper session, check the cluster's tree,
//! serve the session (the campaign and the tasks beside it) until it ends,
//! and on cancel release everything in order.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use zookeeper_client::{Client, SessionState};

use super::{
    ClusterPaths, CoordError, CoordStatus, ZkSettings, acl,
    ctx::{Campaign, Ctx, lease_ms},
    election::CandidateData,
    held, nodes,
    session::{self, ZnodeAcl},
    store,
};
use crate::{
    health::HealthStatus,
    names::{hostname, valid_name},
    role::{Desired, EngineReport},
};

/// How long a node waits before it opens a new session after ZooKeeper
/// granted one too short for any lease.
const REFUSED_SESSION_RETRY: Duration = Duration::from_secs(10);

/// Runs until `cancel`: session, candidacy, config watches, fencing.
/// Publishes what this node should do on `desired` and its status on
/// `status`; reads what the engine did from `report`.
pub async fn run(
    settings: ZkSettings,
    desired: watch::Sender<Desired>,
    report: watch::Receiver<EngineReport>,
    status: watch::Sender<CoordStatus>,
    cancel: CancellationToken,
) -> Result<(), CoordError> {
    run_serving(settings, desired, report, status, None, None, cancel).await
}

/// [`run`], withdrawing from the election while `health` says unhealthy,
/// as it does while a VIP interface is down.
pub async fn run_serving(
    settings: ZkSettings,
    desired: watch::Sender<Desired>,
    report: watch::Receiver<EngineReport>,
    status: watch::Sender<CoordStatus>,
    health: Option<watch::Receiver<HealthStatus>>,
    handoff: Option<super::Handoff>,
    cancel: CancellationToken,
) -> Result<(), CoordError> {
    check_settings(&settings)?;
    let (drained_tx, drained) = watch::channel(false);
    let ctx = Ctx {
        paths: ClusterPaths::new(&settings.cluster),
        acl: ZnodeAcl::new(settings.auth.as_ref()),
        data: serde_json::to_vec(&CandidateData {
            node: settings.node_id.clone(),
            host: hostname(),
            term: 0,
            lease_ms: 0,
            renew_ms: 0,
            margin_ms: 0,
            renewal: 0,
            ..CandidateData::default()
        })
        .expect("strings serialize"),
        lease: std::sync::Mutex::new(settings.lease),
        settings: &settings,
        desired: &desired,
        status: &status,
        drained: &drained_tx,
        health: health.clone(),
        handoff,
    };
    let mut st = Campaign {
        drained,
        term: desired.borrow().term,
        report,
        report_open: true,
        health,
        fenced: false,
    };
    ctx.follower(&mut st, false);
    status.send_modify(|x| x.lease_ms = lease_ms(settings.lease));
    loop {
        let client = match ctx.open_session(&mut st, &cancel).await? {
            Opened::Ready(c) => c,
            Opened::Retry => continue,
            Opened::Stopped => return Ok(()),
        };
        let (end, own) = ctx.serve_session(&client, &mut st, &cancel).await;
        match end {
            SessionState::Closed if cancel.is_cancelled() => {
                ctx.shutdown(&mut st, Some(client), own).await;
                return Ok(());
            }
            SessionState::AuthFailed => {
                ctx.follower(&mut st, false);
                ctx.set_session("closed");
                return Err(CoordError::auth_failed(&settings));
            }
            s => {
                // Expired (or closed under us): the server dropped our
                // candidacy; stand again on a new session.
                error!(state = %s, "ZooKeeper session ended; opening a new one");
                ctx.follower(&mut st, false);
                ctx.set_session("expired");
                ctx.status.send_modify(|x| x.leader = None);
            }
        }
    }
}

/// What the settings must hold before any session is opened.
fn check_settings(settings: &ZkSettings) -> Result<(), CoordError> {
    for (what, v) in [
        ("cluster", &settings.cluster),
        ("node id", &settings.node_id),
    ] {
        if !valid_name(v) {
            return Err(CoordError::Setting(format!(
                "invalid {what} {v:?}: use letters, digits, '-', '_' and '.'"
            )));
        }
    }
    if settings.hosts.trim().is_empty() {
        return Err(CoordError::Setting("no ZooKeeper hosts".into()));
    }
    Ok(())
}

/// How an attempt to open a session to serve on ended.
enum Opened {
    /// A session whose lease fits and whose tree is ready.
    Ready(Client),
    /// Not this time: try again.
    Retry,
    /// Cancelled, and coordination shut down.
    Stopped,
}

impl Ctx<'_> {
    /// Opens a session, checks the lease it allows and the cluster's tree.
    /// An error when coordination must stop for good.
    async fn open_session(
        &self,
        st: &mut Campaign,
        cancel: &CancellationToken,
    ) -> Result<Opened, CoordError> {
        let settings = self.settings;
        self.set_session("connecting");
        let t = settings.session_timeout;
        let connected = tokio::select! {
            _ = cancel.cancelled() => None,
            c = session::connect(&settings.hosts, t, settings.auth.as_ref(), false, t.max(Duration::from_secs(2))) => Some(c),
        };
        let client = match connected {
            None => {
                self.shutdown(st, None, None).await;
                return Ok(Opened::Stopped);
            }
            Some(Err(e)) => {
                warn!(error = %e, hosts = %settings.hosts, "cannot open a ZooKeeper session; retrying");
                self.error(e.to_string());
                if e.is(&zookeeper_client::Error::AuthFailed) {
                    return Err(CoordError::auth_failed(settings));
                }
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                return Ok(Opened::Retry);
            }
            Some(Ok(c)) => c,
        };
        info!(session = %client.session_id(), timeout = ?client.session_timeout(), "ZooKeeper session open");
        if !self.session_lease(client.session_timeout()) {
            // Perhaps another server of the ensemble grants more.
            session::close(client, Duration::from_secs(2)).await;
            self.set_session("closed");
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(REFUSED_SESSION_RETRY) => {}
            }
            return Ok(Opened::Retry);
        }
        self.set_session("connected");
        self.check_tree(client, st, cancel).await
    }

    /// Prepares the cluster's tree (its ACLs) on a new session.
    async fn check_tree(
        &self,
        client: Client,
        st: &mut Campaign,
        cancel: &CancellationToken,
    ) -> Result<Opened, CoordError> {
        let settings = self.settings;
        let access = acl::prepare(
            &client,
            &self.paths,
            settings.auth.as_ref(),
            settings.insecure,
            client.session_timeout() / 3,
        )
        .await;
        match access {
            Ok(()) => Ok(Opened::Ready(client)),
            Err(e) if e.is_transient() => {
                warn!(error = %e, "cannot check the cluster's ZooKeeper tree; retrying on a new session");
                self.error(e.to_string());
                session::close(client, Duration::from_secs(1)).await;
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                Ok(Opened::Retry)
            }
            Err(e) => {
                self.error(e.to_string());
                self.shutdown(st, Some(client), None).await;
                Err(e.into())
            }
        }
    }

    /// One session: the services watch and the campaign side by side.
    /// Returns the session's end and our candidacy's znode name, if any.
    pub(super) async fn serve_session(
        &self,
        client: &Client,
        st: &mut Campaign,
        cancel: &CancellationToken,
    ) -> (SessionState, Option<String>) {
        let deadline = client.session_timeout() / 3;
        let (parsed_tx, parsed) = watch::channel(None);
        let services = store::watch_services(client, &self.paths, &self.acl, deadline, |r| {
            self.publish_services(r, &parsed_tx)
        });
        let persist = self.persist_applied(client, deadline, parsed);
        let record_path = self.paths.node(&self.settings.node_id);
        let record = nodes::watch_record(client, &record_path, deadline, |d| {
            if self
                .drained
                .send_if_modified(|x| std::mem::replace(x, d) != d)
            {
                info!(drained = d, "drain record changed");
            }
        });
        let member = self.publish_member(client, deadline, st.report.clone());
        let held = held::keep(
            client,
            &self.paths,
            &self.acl,
            deadline,
            self.desired,
            st.report.clone(),
        );
        let tree = self.watch_tree_acl(client, deadline);
        let handoff = async {
            match &self.handoff {
                Some(h) => {
                    super::connections::keep(
                        client,
                        &self.paths,
                        &self.acl,
                        deadline,
                        self.desired,
                        h,
                    )
                    .await;
                }
                None => std::future::pending().await,
            }
        };
        let mut own = None;
        let end = tokio::select! {
            s = services => s,
            s = record => s,
            s = held => s,
            () = member => std::future::pending().await,
            () = persist => std::future::pending().await,
            () = tree => std::future::pending().await,
            () = handoff => std::future::pending().await,
            s = self.campaign(client, st, &mut own, cancel) => s,
        };
        (end, own)
    }

    /// Cancel: Follower, VIPs gone, candidacy deleted, session closed.
    pub(super) async fn shutdown(
        &self,
        st: &mut Campaign,
        client: Option<Client>,
        own: Option<String>,
    ) {
        info!("coordination stopping");
        self.release(st, client.as_ref(), own).await;
        if let Some(client) = client {
            session::close(client, Duration::from_secs(2)).await;
        }
        self.set_session("closed");
        self.status.send_modify(|x| x.leader = None);
    }
}
