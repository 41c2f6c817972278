//! ZooKeeper coordination: the session, the election (R1), the VIP
//! configuration watch (R2) and fencing (R3). `run` turns all of it into one
//! `Desired` for the engine and one `CoordStatus` for operators.

pub mod acl;
pub mod admin;
pub mod election;
pub mod held;
pub mod lease;
pub mod nodes;
mod placement;
pub mod session;
pub mod store;

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, instrument, trace, warn};
use zookeeper_client::{Client, SessionState, StateWatcher};

pub use self::{
    admin::{AdminError, VipCommand, run_vip_command},
    session::{CREDENTIAL_NAME, ZkAccess, ZkAuth, ZkAuthError},
    store::{RefusedValue, ServiceStatus},
};
use self::{
    election::{CandidateData, ensure_candidacy, ms_up, node_of, sequence, sort_candidates},
    lease::{LeaseTimes, Observer, SessionLease, StatedLease},
    session::{ZkCallError, ZnodeAcl, call},
};
use crate::{
    config::valid_name,
    health::HealthStatus,
    role::{Desired, EngineReport, LeaseGrant, Role},
    vip::Vip,
};

/// How this node talks to ZooKeeper.
#[derive(Clone, Debug)]
pub struct ZkSettings {
    /// `host:port[,host:port...][/chroot]`.
    pub hosts: String,
    pub cluster: String,
    pub node_id: String,
    pub session_timeout: Duration,
    pub auth: Option<ZkAuth>,
    /// Without a credential, create the cluster's tree open to anyone
    /// (refused otherwise). Ignored with a credential.
    pub insecure: bool,
    /// The leader's lease and the successor's takeover (R15).
    pub lease: LeaseTimes,
}

impl ZkSettings {
    /// Cluster mode settings from the flags, or `None` without `--zk`
    /// (single-node mode). Reads the credential: the auth file if one is
    /// named, else the systemd credential `vipd-zk` if the unit loads one.
    pub fn from_args(
        args: &crate::config::ZkArgs,
        node_id: String,
    ) -> Result<Option<ZkSettings>, CoordError> {
        let Some(hosts) = &args.hosts else {
            return Ok(None);
        };
        let auth = ZkAuth::resolve(args.zk_auth_file.as_deref())
            .map_err(|e| CoordError::Setting(e.to_string()))?;
        match &auth {
            Some((a, source)) => {
                info!(user = %a.user, %source, "ZooKeeper credential read");
                if args.zk_insecure {
                    warn!("--zk-insecure is ignored: a ZooKeeper credential is configured");
                }
            }
            None if args.zk_insecure => {
                warn!(
                    "no ZooKeeper credential and --zk-insecure: the cluster's tree may be created open to anyone who reaches ZooKeeper"
                );
            }
            None => {}
        }
        let auth = auth.map(|(a, _)| a);
        let lease = args.lease_times().map_err(CoordError::Setting)?;
        Ok(Some(ZkSettings {
            hosts: hosts.clone(),
            cluster: args.cluster.clone(),
            node_id,
            session_timeout: args.session_timeout,
            auth,
            insecure: args.zk_insecure,
            lease,
        }))
    }
}

impl ZkSettings {
    /// What `vipd check-config` warns about the ZooKeeper credential, one
    /// line each; nothing in single-node mode.
    pub fn credential_warnings(args: &crate::config::ZkArgs) -> Vec<String> {
        if args.hosts.is_none() {
            return Vec::new();
        }
        let credential = match ZkAuth::resolve(args.zk_auth_file.as_deref()) {
            Ok(c) => c,
            Err(e) => return vec![e.to_string()],
        };
        match (credential, args.zk_insecure) {
            (Some(_), true) => {
                vec!["zk_insecure is ignored: a ZooKeeper credential is configured".into()]
            }
            (Some(_), false) => Vec::new(),
            (None, true) => vec![
                "no ZooKeeper credential and zk_insecure: the cluster's tree may be created \
                 open, and anyone who reaches ZooKeeper can change or delete its VIPs and \
                 election; configure the systemd credential vipd-zk or zk_auth_file"
                    .into(),
            ],
            (None, false) => vec![
                "no ZooKeeper credential (the systemd credential vipd-zk or zk_auth_file): \
                 vipd refuses to create the cluster's tree and cannot write a protected one"
                    .into(),
            ],
        }
    }
}

/// The paths of one cluster's znodes.
#[derive(Clone, Debug)]
pub struct ClusterPaths {
    pub root: String,
    pub election: String,
    pub services: String,
    /// Operators' drain records (R18), persistent.
    pub nodes: String,
    /// Running nodes' member znodes, ephemeral.
    pub members: String,
    /// The handover request, persistent until the next leader deletes it.
    pub handover: String,
}

impl ClusterPaths {
    pub fn new(cluster: &str) -> Self {
        ClusterPaths {
            root: format!("/vipd/{cluster}"),
            election: format!("/vipd/{cluster}/election"),
            services: format!("/vipd/{cluster}/services"),
            nodes: format!("/vipd/{cluster}/nodes"),
            members: format!("/vipd/{cluster}/members"),
            handover: format!("/vipd/{cluster}/handover"),
        }
    }
}

/// What coordination looks like from this node, for operators (API, vipctl).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CoordStatus {
    /// "connecting" | "connected" | "disconnected" | "expired" | "closed".
    pub session: String,
    /// Node id of the current leader, as last seen.
    pub leader: Option<String>,
    pub is_leader: bool,
    /// The leader's term: the sequence number of its election znode, so
    /// every node of the cluster sees the same, increasing numbers.
    pub term: Option<u64>,
    /// Elected, but not acting as leader because the session cannot be
    /// trusted right now (disconnected or heartbeat late).
    pub fenced: bool,
    pub services: BTreeMap<String, ServiceStatus>,
    /// VIPs named by more than one service: served once, reported.
    pub duplicate_vips: Vec<Vip>,
    /// On the leader: configured VIPs it cannot serve (with why) while no
    /// standing member can serve more: held nowhere, the others served.
    pub unplaceable: BTreeMap<Vip, String>,
    pub last_error: Option<String>,
    /// Why this node does not stand for election now (R18: a VIP
    /// interface down, failing health checks, drained); None: it stands.
    pub withdrawn: Option<String>,
    /// The lease this node leads on in the current session, in
    /// milliseconds: the configured one unless ZooKeeper granted a session
    /// too short for it.
    pub lease_ms: u64,
    /// The session timeout ZooKeeper granted the current session, in
    /// milliseconds (None before the first session).
    pub granted_session_ms: Option<u64>,
    /// Why `lease_ms` is not the configured lease, or why this node does
    /// not stand at all on the current session; None: as configured.
    pub lease_adjusted: Option<String>,
    /// Znodes of the cluster's tree anyone who reaches ZooKeeper may change.
    pub tree_acl: TreeAcl,
}

/// The cluster's tree as last searched for znodes anyone may change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TreeAcl {
    /// How many znodes are open; 0 when all are protected.
    pub open_znodes: usize,
    /// The first few of them.
    pub examples: Vec<String>,
}

/// Why coordination stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("invalid ZooKeeper setting: {0}")]
    Setting(String),
    #[error("ZooKeeper refused the credentials of user {user:?} (session state AuthFailed)")]
    AuthFailed { user: String },
    #[error(transparent)]
    Acl(#[from] acl::AclError),
}

impl CoordError {
    /// The server refused the credentials of `settings`.
    fn auth_failed(settings: &ZkSettings) -> CoordError {
        CoordError::AuthFailed {
            user: settings
                .auth
                .as_ref()
                .map(|a| a.user.clone())
                .unwrap_or_default(),
        }
    }
}

/// How often vipd searches its cluster's tree for znodes anyone may change
/// (a vipd or vipctl without the credential can add some at any time).
const TREE_ACL_EVERY: Duration = Duration::from_secs(60);
/// How often the warning about an open tree is repeated while it lasts.
const OPEN_TREE_REMINDER: Duration = Duration::from_secs(600);

/// How long the engine gets to remove VIPs before we release the election.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// How long a node waits before it opens a new session after ZooKeeper
/// granted one too short for any lease.
const REFUSED_SESSION_RETRY: Duration = Duration::from_secs(10);

/// A lease in whole milliseconds, for the status.
fn lease_ms(t: LeaseTimes) -> u64 {
    u64::try_from(t.length.as_millis()).unwrap_or(u64::MAX)
}

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
    run_serving(settings, desired, report, status, None, cancel).await
}

/// [`run`], withdrawing from the election while `health` says unhealthy
/// (R18), as it does while a VIP interface is down.
pub async fn run_serving(
    settings: ZkSettings,
    desired: watch::Sender<Desired>,
    report: watch::Receiver<EngineReport>,
    status: watch::Sender<CoordStatus>,
    health: Option<watch::Receiver<HealthStatus>>,
    cancel: CancellationToken,
) -> Result<(), CoordError> {
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
    let (drained_tx, drained) = watch::channel(false);
    let ctx = Ctx {
        paths: ClusterPaths::new(&settings.cluster),
        acl: ZnodeAcl::new(settings.auth.as_ref()),
        data: serde_json::to_vec(&CandidateData {
            node: settings.node_id.clone(),
            host: crate::config::hostname(),
            term: 0,
            lease_ms: 0,
            renew_ms: 0,
            margin_ms: 0,
            renewal: 0,
        })
        .expect("strings serialize"),
        lease: std::sync::Mutex::new(settings.lease),
        settings: &settings,
        desired: &desired,
        status: &status,
        drained: &drained_tx,
        health: health.clone(),
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
        ctx.set_session("connecting");
        let t = settings.session_timeout;
        let connected = tokio::select! {
            _ = cancel.cancelled() => None,
            c = session::connect(&settings.hosts, t, settings.auth.as_ref(), false, t.max(Duration::from_secs(2))) => Some(c),
        };
        let client = match connected {
            None => {
                ctx.shutdown(&mut st, None, None).await;
                return Ok(());
            }
            Some(Err(e)) => {
                warn!(error = %e, hosts = %settings.hosts, "cannot open a ZooKeeper session; retrying");
                ctx.error(e.to_string());
                if e.is(&zookeeper_client::Error::AuthFailed) {
                    return Err(CoordError::auth_failed(&settings));
                }
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            Some(Ok(c)) => c,
        };
        info!(session = %client.session_id(), timeout = ?client.session_timeout(), "ZooKeeper session open");
        if !ctx.session_lease(client.session_timeout()) {
            // Perhaps another server of the ensemble grants more.
            session::close(client, Duration::from_secs(2)).await;
            ctx.set_session("closed");
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(REFUSED_SESSION_RETRY) => {}
            }
            continue;
        }
        ctx.set_session("connected");
        let access = acl::prepare(
            &client,
            &ctx.paths,
            settings.auth.as_ref(),
            settings.insecure,
            client.session_timeout() / 3,
        )
        .await;
        match access {
            Ok(()) => {}
            Err(e) if e.is_transient() => {
                warn!(error = %e, "cannot check the cluster's ZooKeeper tree; retrying on a new session");
                ctx.error(e.to_string());
                session::close(client, Duration::from_secs(1)).await;
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            Err(e) => {
                ctx.error(e.to_string());
                ctx.shutdown(&mut st, Some(client), None).await;
                return Err(e.into());
            }
        }
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

struct Ctx<'a> {
    settings: &'a ZkSettings,
    /// The lease of the current session ([`Ctx::session_lease`]): every
    /// lease computation of the session uses it, never `settings.lease`.
    lease: std::sync::Mutex<LeaseTimes>,
    paths: ClusterPaths,
    acl: ZnodeAcl,
    data: Vec<u8>,
    desired: &'a watch::Sender<Desired>,
    status: &'a watch::Sender<CoordStatus>,
    /// This node's drain record, as last read (R18).
    drained: &'a watch::Sender<bool>,
    health: Option<watch::Receiver<HealthStatus>>,
}

struct Campaign {
    term: u64,
    report: watch::Receiver<EngineReport>,
    report_open: bool,
    /// `None`: no checks (or the checks stopped): healthy.
    health: Option<watch::Receiver<HealthStatus>>,
    drained: watch::Receiver<bool>,
    /// Elected but fenced (lease not renewed in time): a follower until a
    /// renewal is acknowledged. Published as `CoordStatus::fenced`.
    fenced: bool,
}

impl Campaign {
    /// Why this node should not stand (R18), if it should not.
    fn unfit(&self) -> Option<String> {
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
    async fn unfit_changed(&mut self, was: bool) {
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

async fn changed_opt<T>(w: &mut Option<watch::Receiver<T>>) -> Result<(), watch::error::RecvError> {
    match w {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

/// How a leader term ended.
enum LeadEnd {
    Cancelled,
    /// Not sure of the session any more: re-check before leading again.
    Fenced,
    /// Our znode is gone: stand again.
    Lost,
    /// The session ended.
    Terminal(SessionState),
    /// A member can serve more of the configured VIPs: the handover
    /// request naming it is written, withdraw.
    Place(String),
    /// This node cannot serve (R18): hand over.
    Withdraw(String),
    /// An operator asked for a handover (`vipctl handover`).
    Handover(Option<String>),
    /// The engine finished no pass and applied no lease grant for this
    /// long: renewing would keep a lease for VIPs nobody serves.
    EngineStalled(Duration),
}

impl Ctx<'_> {
    fn set_session(&self, s: &str) {
        self.status.send_if_modified(|x| {
            let changed = x.session != s;
            x.session = s.to_string();
            changed
        });
    }

    fn error(&self, e: String) {
        self.status.send_modify(|x| x.last_error = Some(e));
    }

    fn follower(&self, st: &mut Campaign, fenced: bool) {
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

    fn leader(&self, st: &mut Campaign, term: u64, lease: LeaseGrant) {
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
    fn renewed(&self, lease: LeaseGrant) {
        self.desired.send_if_modified(|d| {
            let changed = d.role == Role::Leader && d.lease != Some(lease);
            if changed {
                d.lease = Some(lease);
            }
            changed
        });
    }

    /// The lease of the current session.
    fn lease(&self) -> LeaseTimes {
        *self
            .lease
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks the configured lease against the session timeout ZooKeeper
    /// granted this session and sets the lease the session leads on,
    /// saying so loudly when it is not the configured one. False when no
    /// lease fits the granted session: the node must not stand on it.
    fn session_lease(&self, granted: Duration) -> bool {
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

    fn grant(&self, sent: Instant) -> LeaseGrant {
        let lease = self.lease();
        LeaseGrant {
            until: lease.until(sent.into_std()),
            address_lifetime: lease.address_lifetime(),
        }
    }

    fn publish_services(
        &self,
        r: Result<BTreeMap<String, ServiceStatus>, String>,
        parsed: &watch::Sender<Option<BTreeMap<String, ServiceStatus>>>,
    ) {
        match r {
            Ok(services) => {
                parsed.send_replace(Some(services.clone()));
                let (all, dup) = store::merge(&services);
                if !dup.is_empty() {
                    warn!(vips = ?dup.iter().map(ToString::to_string).collect::<Vec<_>>(), "VIPs named by more than one service; each is served once");
                }
                self.desired.send_if_modified(|d| {
                    let changed = d.vips != all;
                    d.vips = all;
                    changed
                });
                self.status.send_modify(|x| {
                    x.services = services;
                    x.duplicate_vips = dup;
                });
            }
            Err(e) => self.error(e),
        }
    }

    /// One session: the services watch and the campaign side by side.
    /// Returns the session's end and our candidacy's znode name, if any.
    async fn serve_session(
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
        let mut own = None;
        let end = tokio::select! {
            s = services => s,
            s = record => s,
            s = held => s,
            () = member => std::future::pending().await,
            () = persist => std::future::pending().await,
            () = tree => std::future::pending().await,
            s = self.campaign(client, st, &mut own, cancel) => s,
        };
        (end, own)
    }

    /// While this node leads, keeps the last good record of each service
    /// (see `store::persist_applied`).
    async fn persist_applied(
        &self,
        client: &Client,
        deadline: Duration,
        parsed: watch::Receiver<Option<BTreeMap<String, ServiceStatus>>>,
    ) {
        let (leading_tx, leading) = watch::channel(false);
        let mut desired = self.desired.subscribe();
        // Only a change of role matters, not the lease renewals.
        let follow = async {
            loop {
                let lead = desired.borrow_and_update().role == Role::Leader;
                leading_tx.send_if_modified(|x| std::mem::replace(x, lead) != lead);
                if desired.changed().await.is_err() {
                    return;
                }
            }
        };
        let persist =
            store::persist_applied(client, &self.paths, &self.acl, deadline, parsed, leading);
        tokio::join!(follow, persist);
    }

    /// Searches the cluster's tree for znodes anyone may change, at start,
    /// every [`TREE_ACL_EVERY`] and when the root's data changes (`vipctl acl
    /// repair` touches it when done); publishes what it found and warns
    /// while any are open.
    async fn watch_tree_acl(&self, client: &Client, deadline: Duration) {
        let root = &self.paths.root;
        let mut warned: Option<Instant> = None;
        loop {
            let watch = call("watch", root, deadline, client.check_and_watch_stat(root))
                .await
                .ok()
                .map(|(_, w)| w);
            match acl::open_znodes(client, &self.paths, deadline).await {
                Ok(open) => {
                    let now = TreeAcl {
                        open_znodes: open.len(),
                        examples: open.iter().take(5).cloned().collect(),
                    };
                    let was = self.status.borrow().tree_acl.open_znodes;
                    let remind = warned.is_none_or(|at| at.elapsed() >= OPEN_TREE_REMINDER);
                    if !open.is_empty() && (now.open_znodes != was || remind) {
                        warn!(open_znodes = open.len(), examples = ?now.examples,
                            "znodes of the cluster's ZooKeeper tree can be changed by anyone who reaches ZooKeeper; protect them with `vipctl acl repair` and the cluster's credential");
                        warned = Some(Instant::now());
                    } else if open.is_empty() && was > 0 {
                        info!(znode = %root, "the cluster's ZooKeeper tree is protected now");
                        warned = None;
                    }
                    self.status.send_if_modified(|x| {
                        let changed = x.tree_acl != now;
                        x.tree_acl = now;
                        changed
                    });
                }
                Err(e) => {
                    debug!(error = %e, "cannot read the ACLs of the cluster's tree; trying again later")
                }
            }
            let changed = async {
                match watch {
                    Some(w) => drop(w.changed().await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = changed => {}
                _ = tokio::time::sleep(TREE_ACL_EVERY) => {}
            }
        }
    }

    /// Keeps this node's member znode (role, health, why it does not
    /// stand, which configured VIPs it can serve) current for `vipctl node
    /// list` and for the leader's placement.
    async fn publish_member(
        &self,
        client: &Client,
        deadline: Duration,
        mut report: watch::Receiver<EngineReport>,
    ) {
        let macs = |r: &EngineReport| -> Vec<String> {
            r.macs.iter().map(|m| held::format_mac(*m)).collect()
        };
        let of = |c: &CoordStatus, h: Option<&HealthStatus>, r: &EngineReport| nodes::MemberData {
            node: self.settings.node_id.clone(),
            host: crate::config::hostname(),
            role: if c.is_leader {
                "leader"
            } else if c.fenced {
                "fenced"
            } else {
                "follower"
            }
            .into(),
            healthy: h.map(|h| h.healthy),
            withdrawn: c.withdrawn.clone(),
            servable: Some(r.servable.clone()),
            macs: macs(r),
        };
        let mut status = self.status.subscribe();
        let mut health = self.health.clone();
        let mut report_open = true;
        let now = |s: &watch::Receiver<CoordStatus>,
                   h: &Option<watch::Receiver<HealthStatus>>,
                   r: &watch::Receiver<EngineReport>| {
            of(
                &s.borrow(),
                h.as_ref().map(|h| h.borrow().clone()).as_ref(),
                &r.borrow(),
            )
        };
        let (tx, rx) = watch::channel(now(&status, &health, &report));
        let path = self.paths.member(&self.settings.node_id);
        let publish =
            nodes::publish_member(client, &self.paths.members, &path, &self.acl, deadline, rx);
        let follow = async {
            loop {
                tokio::select! {
                    r = status.changed() => if r.is_err() { return },
                    r = changed_opt(&mut health) => if r.is_err() { health = None },
                    r = report.changed(), if report_open => if r.is_err() { report_open = false },
                }
                let m = now(&status, &health, &report);
                tx.send_if_modified(|x| {
                    let changed = *x != m;
                    *x = m;
                    changed
                });
            }
        };
        tokio::join!(publish, follow);
    }

    /// Stands for election and leads while this session lasts. Returns
    /// `Closed` on cancel, else the session's terminal state.
    async fn campaign(
        &self,
        client: &Client,
        st: &mut Campaign,
        own: &mut Option<String>,
        cancel: &CancellationToken,
    ) -> SessionState {
        let t = client.session_timeout();
        let deadline = t / 3;
        let retry = (t / 10).max(Duration::from_millis(20));
        let refresh = (t * 2).max(Duration::from_secs(1));
        let dir = &self.paths.election;
        let mut state = client.state_watcher();
        // The candidates after we deleted a silent leader's znode: we are
        // first now (sequence numbers only grow), no need to list again.
        let mut took_over: Option<(Vec<String>, Option<FirstRenewal>)> = None;
        loop {
            if cancel.is_cancelled() {
                return SessionState::Closed;
            }
            match state.peek_state() {
                s if s.is_terminated() => return s,
                SessionState::Disconnected => {
                    self.set_session("disconnected");
                    let fenced = st.fenced;
                    self.follower(st, fenced);
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = state.changed() => {}
                    }
                    continue;
                }
                _ => self.set_session("connected"),
            }
            if let Some(why) = st.unfit() {
                if own.is_some() {
                    info!(reason = %why, "withdrawing from the election");
                    self.withdraw(client, st, own, deadline).await;
                }
                self.set_withdrawn(Some(why));
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = state.changed() => {}
                    () = st.unfit_changed(true) => {}
                }
                continue;
            }
            if self.set_withdrawn(None) {
                info!("fit to serve again; standing for election");
            }
            if own.is_none() {
                match ensure_candidacy(
                    client,
                    dir,
                    &self.settings.node_id,
                    &self.data,
                    &self.acl,
                    deadline,
                )
                .await
                {
                    Ok(name) => *own = Some(name),
                    Err(e) => {
                        warn!(error = %e, "cannot stand for election; retrying");
                        self.error(e.to_string());
                        pause(retry, &mut state, cancel).await;
                        continue;
                    }
                }
            }
            let me = own.clone().expect("set above");
            let children = list_election(client, dir, deadline);
            let (shortcut, first) = match took_over.take() {
                Some((c, first)) if c.first() == Some(&me) => (Some(c), first),
                _ => (None, None),
            };
            let listed = shortcut.is_some();
            let sorted = match shortcut {
                Some(c) => c,
                None => match children.await {
                    Ok(c) => sort_candidates(c),
                    Err(e) => {
                        debug!(error = %e, "election check failed; retrying");
                        pause(retry, &mut state, cancel).await;
                        continue;
                    }
                },
            };
            let Some(pos) = sorted.iter().position(|c| *c == me) else {
                warn!(znode = %format!("{dir}/{me}"), "our candidacy znode is gone; standing again");
                self.follower(st, false);
                *own = None;
                continue;
            };
            if !listed {
                self.note_leader(client, dir, &sorted[0], deadline).await;
            }
            if pos == 0 && self.yield_to_target(client, &me, &sorted, deadline).await {
                self.withdraw(client, st, own, deadline).await;
                continue;
            }
            if pos == 0 {
                match self.lead(client, st, &me, first, &mut state, cancel).await {
                    LeadEnd::Cancelled => return SessionState::Closed,
                    LeadEnd::Fenced => continue,
                    LeadEnd::Lost => {
                        *own = None;
                        continue;
                    }
                    LeadEnd::Terminal(s) => return s,
                    LeadEnd::Place(to) => {
                        self.error(format!(
                            "handed over to {to}: it can serve more of the configured VIPs"
                        ));
                        self.withdraw(client, st, own, deadline).await;
                        continue;
                    }
                    LeadEnd::Handover(to) => {
                        info!(to = ?to, "handing over on an operator's request");
                        self.withdraw(client, st, own, deadline).await;
                        continue;
                    }
                    LeadEnd::EngineStalled(bound) => {
                        self.error(format!(
                            "stopped leading: the engine applied nothing for {bound:?}"
                        ));
                        self.wait_engine(st, &mut state, cancel).await;
                        continue;
                    }
                    LeadEnd::Withdraw(why) => {
                        error!(reason = %why, "this node cannot serve its VIPs; handing over");
                        self.error(format!("handed over: {why}"));
                        self.withdraw(client, st, own, deadline).await;
                        continue;
                    }
                }
            }
            self.follower(st, false);
            let pred = format!("{dir}/{}", sorted[pos - 1]);
            if pos == 1 {
                if let Some(first) = self
                    .watch_leader(client, &pred, &me, &mut state, st, cancel)
                    .await
                {
                    took_over = Some((sorted[1..].to_vec(), first));
                }
                continue;
            }
            match call("watch", &pred, deadline, client.check_and_watch_stat(&pred)).await {
                Ok((None, _)) => continue,
                Ok((Some(_), w)) => {
                    debug!(predecessor = %pred, "following; watching the predecessor");
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = w.changed() => {}
                        _ = state.changed() => {}
                        () = st.unfit_changed(false) => {}
                        // Only to keep `leader` in the status current: a
                        // leader change upstream does not wake us (R1).
                        _ = tokio::time::sleep(refresh) => {}
                    }
                }
                Err(e) => {
                    debug!(error = %e, "cannot watch the predecessor; retrying");
                    pause(retry, &mut state, cancel).await;
                }
            }
        }
    }

    /// Records the current leader's node id (from its znode data, else its name).
    async fn note_leader(&self, client: &Client, dir: &str, lowest: &str, deadline: Duration) {
        let path = format!("{dir}/{lowest}");
        let id = match call("get data", &path, deadline, client.get_data(&path)).await {
            Ok((data, _)) => serde_json::from_slice::<CandidateData>(&data)
                .map(|d| d.node)
                .unwrap_or_else(|_| node_of(lowest).to_string()),
            Err(_) => node_of(lowest).to_string(),
        };
        let term = sequence(lowest).and_then(|s| u64::try_from(s).ok());
        self.status.send_if_modified(|x| {
            let changed = x.leader.as_deref() != Some(id.as_str()) || x.term != term;
            x.leader = Some(id);
            x.term = term;
            changed
        });
    }

    /// One leader term: lease renewals (versioned writes of our own znode),
    /// fencing at the lease's end, the engine's report (R15).
    #[instrument(skip_all, fields(node = %self.settings.node_id, znode = %me))]
    async fn lead(
        &self,
        client: &Client,
        st: &mut Campaign,
        me: &str,
        first: Option<FirstRenewal>,
        state: &mut StateWatcher,
        cancel: &CancellationToken,
    ) -> LeadEnd {
        let lease = self.lease();
        let retry = (lease.renew_every() / 2).max(Duration::from_millis(20));
        let path = format!("{}/{me}", self.paths.election);
        let term = sequence(me)
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0);
        let host = crate::config::hostname();
        let data = |renewal: u64| self.renewal_data(&host, term, renewal);
        // A renewal: write our znode at the version we last wrote; the
        // answer's time does not matter, only when it was sent.
        let renew = |version: Option<i32>, renewal: u64| {
            let data = data(renewal);
            let path = path.clone();
            async move {
                let sent = Instant::now();
                let r = call(
                    "renew lease",
                    &path,
                    lease.length,
                    client.set_data(&path, &data, version),
                )
                .await;
                (sent, r)
            }
        };
        let mut renewal = 1;
        // The term starts with an acknowledged renewal, never before: a
        // node that fenced adds no VIP until it knows its lease is valid.
        // The first is written at any version (only this session writes
        // its znode; others may only delete it, which fails the write with
        // NoNode): no read of the version first, one round trip less
        // between a takeover and the VIPs. After a takeover it went in the
        // same transaction as the delete.
        let (sent, r) = match first {
            Some(f) => (f.sent, Ok(f.version)),
            None => {
                let (sent, r) = renew(None, renewal).await;
                (sent, r.map(|stat| stat.version))
            }
        };
        let mut version = match r {
            Ok(v) => v,
            Err(e) if lost_znode(&e) => {
                warn!(error = %e, "our election znode was taken from us; standing again");
                return LeadEnd::Lost;
            }
            Err(e) => {
                debug!(error = %e, "first lease renewal failed; retrying");
                pause(retry, state, cancel).await;
                return LeadEnd::Fenced;
            }
        };
        if Instant::now() >= sent + lease.length {
            debug!("first lease renewal answered after the lease; retrying");
            return LeadEnd::Fenced;
        }
        st.term = term;
        info!(term, lease = ?lease.length, renew_every = ?lease.renew_every(), "elected leader; lease held");
        self.leader(st, term, self.grant(sent));
        nodes::clear_handover(client, &self.paths.handover, me, lease.poll_deadline()).await;
        let handover =
            nodes::handover_requested(client, &self.paths.handover, me, lease.poll_deadline());
        tokio::pin!(handover);
        let better = self.seek_better_leader(client, me, term, st.report.clone());
        tokio::pin!(better);
        let (ack_tx, mut ack_rx) = watch::channel(sent);
        // One renewal at a time, each waited for up to the lease (an answer
        // later than that extends nothing): a renewal that timed out and
        // landed late shows as BadVersion on the next, ending the term.
        let renewals = async {
            let every = lease.renew_every();
            let mut tick = tokio::time::interval_at(sent + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Renewals whose answer was lost (the connection dropped while
            // one was in flight) may still have been applied, and the next
            // would then fail with BadVersion against our own write. Before
            // the next, read our znode: if it holds one of those writes,
            // renew from its version (the lease still counts only from
            // acknowledged sends).
            let mut unsure_from: Option<u64> = None;
            loop {
                tick.tick().await;
                if let Some(first) = unsure_from {
                    match call("get data", &path, lease.length, client.get_data(&path)).await {
                        Ok((data, stat)) => {
                            unsure_from = None;
                            if own_write(&data, &self.settings.node_id, term, first..=renewal) {
                                debug!(
                                    version = stat.version,
                                    "a renewal whose answer was lost was applied; renewing from its version"
                                );
                                version = stat.version;
                            }
                        }
                        Err(e) if e.is(&zookeeper_client::Error::NoNode) => return e,
                        Err(e) => {
                            debug!(error = %e, "cannot read our election znode after a lost renewal answer");
                            continue;
                        }
                    }
                }
                renewal += 1;
                let (sent, r) = renew(Some(version), renewal).await;
                match r {
                    Ok(stat) => {
                        version = stat.version;
                        trace!(
                            version,
                            answered_after_us = sent.elapsed().as_micros(),
                            "lease renewed"
                        );
                        ack_tx.send_replace(sent);
                    }
                    Err(e) if lost_znode(&e) => return e,
                    Err(e) => {
                        debug!(error = %e, "lease renewal failed");
                        unsure_from.get_or_insert(renewal);
                    }
                }
            }
        };
        tokio::pin!(renewals);
        let mut published = sent;
        // The engine's heartbeat: a leader whose engine neither finishes a
        // pass nor applies the newest grant within the bound stops renewing.
        let stall_bound = crate::role::engine_stall_bound(lease.length);
        let mut newest = self.grant(sent).until;
        let mut behind_since = Some(Instant::now());
        let mut beat_seen = None;
        let mut beat_at = Instant::now();
        loop {
            let acked = *ack_rx.borrow_and_update();
            if acked != published {
                published = acked;
                let grant = self.grant(acked);
                self.renewed(grant);
                newest = grant.until;
                behind_since.get_or_insert_with(Instant::now);
            }
            let beat = {
                let r = st.report.borrow();
                (r.passes, r.lease_applied)
            };
            if beat_seen != Some(beat) {
                beat_seen = Some(beat);
                beat_at = Instant::now();
            }
            if beat.1.is_some_and(|a| a >= newest) {
                behind_since = None;
            }
            let stalled_at = behind_since.map(|b| b.max(beat_at) + stall_bound);
            let fence_at = acked + lease.length;
            tokio::select! {
                _ = cancel.cancelled() => break LeadEnd::Cancelled,
                () = sleep_opt(stalled_at) => {
                    error!(bound = ?stall_bound, passes = beat.0,
                        "the engine has not applied a lease grant or finished a pass within the bound: it is stuck; no more renewals, the next node takes over at the lease's end");
                    self.follower(st, true);
                    break LeadEnd::EngineStalled(stall_bound);
                }
                to = &mut handover => break LeadEnd::Handover(to),
                to = &mut better => break LeadEnd::Place(to),
                _ = st.drained.changed() => {
                    if let Some(why) = st.unfit() {
                        break LeadEnd::Withdraw(why);
                    }
                }
                e = &mut renewals => {
                    warn!(error = %e, "lease renewal refused: another node took over, or our znode is gone; the term ends");
                    self.follower(st, false);
                    break LeadEnd::Lost;
                }
                _ = ack_rx.changed() => {}
                _ = tokio::time::sleep_until(fence_at) => {
                    warn!(lease = ?lease.length, "no lease renewal acknowledged in time; fencing (VIPs go until a renewal is acknowledged)");
                    self.follower(st, true);
                    break LeadEnd::Fenced;
                }
                s = state.changed() => match s {
                    // The lease, not the connection, decides: a client that
                    // reconnects to another ensemble member within
                    // milliseconds keeps its session and its lease.
                    SessionState::Disconnected => {
                        warn!(fence_in = ?fence_at.saturating_duration_since(Instant::now()),
                            "ZooKeeper connection lost; fencing unless a renewal is acknowledged before the lease ends");
                        self.set_session("disconnected");
                    }
                    SessionState::SyncConnected => {
                        info!("ZooKeeper connection back within the lease; still leading");
                        self.set_session("connected");
                    }
                    s if s.is_terminated() => {
                        self.follower(st, false);
                        break LeadEnd::Terminal(s);
                    }
                    _ => {}
                },
                r = st.report.changed(), if st.report_open => {
                    if r.is_err() {
                        st.report_open = false;
                        continue;
                    }
                    st.report.borrow_and_update();
                    if let Some(why) = st.unfit() {
                        break LeadEnd::Withdraw(why);
                    }
                }
                r = changed_opt(&mut st.health) => {
                    if r.is_err() {
                        st.health = None;
                    }
                    if let Some(why) = st.unfit() {
                        break LeadEnd::Withdraw(why);
                    }
                }
            }
        }
    }

    /// The next in line (R15, and R1: only it): reads the leader's znode
    /// (sync, then stat with a watch) twice per renewal interval, on every
    /// change and when the wait is up, and when
    /// it has seen no new version for lease + renewal + margin while
    /// ZooKeeper answered every one of these reads, deletes the leader's
    /// znode conditionally on that version. Returns when the election should
    /// be looked at again: `Some` when our takeover deleted the leader's
    /// znode, with our first renewal if it went with the delete; `None`
    /// when the election must be listed again.
    async fn watch_leader(
        &self,
        client: &Client,
        leader: &str,
        me: &str,
        state: &mut StateWatcher,
        st: &mut Campaign,
        cancel: &CancellationToken,
    ) -> Option<Option<FirstRenewal>> {
        let lease = self.lease();
        let deadline = lease.poll_deadline();
        let mut observer = Observer::new(lease);
        // What the leader's data said last, to say once when it cannot be
        // read or changes the wait.
        let mut unparseable_logged = false;
        let mut wait_logged = lease.takeover_after();
        let mut tick = tokio::time::interval(lease.poll_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        debug!(leader = %leader, takeover_after = ?lease.takeover_after(), "next in line; watching the leader's lease");
        loop {
            let sent = std::time::Instant::now();
            let read = async {
                call("sync", leader, deadline, client.sync(leader)).await?;
                // The data, not only the stat: the leader states its lease
                // there, and its rule may be longer than ours.
                call("watch", leader, deadline, client.get_and_watch_data(leader)).await
            }
            .await;
            let answered = std::time::Instant::now();
            let watcher = match read {
                // Gone by the leader's own hand (a handover, a withdrawal,
                // a shutdown): list the election again. Only our own
                // delete may take the shortcut, since a list from before
                // the leader left misses the candidates that stood since
                // (a handover's target among them).
                Err(e) if e.is(&zookeeper_client::Error::NoNode) => return None,
                Ok((data, stat, w)) => {
                    trace!(
                        version = stat.version,
                        read_us = answered.duration_since(sent).as_micros(),
                        "leader's znode read"
                    );
                    let stated = match serde_json::from_slice::<CandidateData>(&data) {
                        Ok(d) => d.stated_lease(),
                        Err(e) => {
                            if !std::mem::replace(&mut unparseable_logged, true) {
                                warn!(leader = %leader, error = %e,
                                    "cannot parse the leader's znode data; timing it by our own lease");
                            }
                            StatedLease::Unknown
                        }
                    };
                    let taken = observer.answered(sent, answered, stat.version, stated);
                    if let Some(wait) = observer.wait()
                        && wait != wait_logged
                    {
                        wait_logged = wait;
                        info!(leader = %leader, takeover_after = ?wait, own = ?lease.takeover_after(),
                            "timing the leader by the longer of its stated lease and ours");
                    }
                    if let Some(version) = taken {
                        if let Some(first) = self
                            .take_over(client, leader, me, version, wait_logged, deadline)
                            .await
                        {
                            return Some(first);
                        }
                        observer.missed();
                    }
                    Some(w)
                }
                Err(e) => {
                    debug!(error = %e, "cannot read the leader's znode; its silence does not count meanwhile");
                    observer.missed();
                    None
                }
            };
            let changed = async {
                match watcher {
                    Some(w) => drop(w.changed().await),
                    None => std::future::pending().await,
                }
            };
            // Read again at the poll or on a change; the moment the silence
            // reaches the takeover wait, delete at once (not a poll later):
            // the delete is conditional on the version we timed, and our
            // last read was answered within one poll.
            let due = async {
                match observer.takeover_at() {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let due = tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = state.changed() => return None,
                () = st.unfit_changed(false) => return None,
                _ = tick.tick() => false,
                () = changed => false,
                () = due => true,
            };
            if due && let Some(version) = observer.due(std::time::Instant::now()) {
                let waited = observer.wait().unwrap_or(wait_logged);
                if let Some(first) = self
                    .take_over(client, leader, me, version, waited, deadline)
                    .await
                {
                    return Some(first);
                }
                observer.missed();
            }
        }
    }

    /// Deletes the silent leader's znode if it is still at `version`, and
    /// in the same transaction writes our own znode: the first renewal of
    /// our term, whose lease counts from this send, one round trip (and
    /// one log fsync) sooner than a renewal after the delete. `Some` when
    /// the leader's znode is gone (by us or otherwise), with our renewal
    /// when the transaction went through.
    async fn take_over(
        &self,
        client: &Client,
        leader: &str,
        me: &str,
        version: i32,
        waited: Duration,
        deadline: Duration,
    ) -> Option<Option<FirstRenewal>> {
        use zookeeper_client::{Error as ZkError, MultiWriteError, MultiWriteResult};
        warn!(leader = %leader, version, silent_for = ?waited,
            "the leader has not renewed its lease while ZooKeeper answered us; taking over");
        let own = format!("{}/{me}", self.paths.election);
        let term = sequence(me)
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0);
        let data = self.renewal_data(&crate::config::hostname(), term, 1);
        let mut writer = client.new_multi_writer();
        let built = writer
            .add_delete(leader, Some(version))
            .and_then(|()| writer.add_set_data(&own, &data, None));
        if let Err(e) = built {
            warn!(error = %e, "cannot build the takeover transaction");
            return None;
        }
        let sent = Instant::now();
        let r = match tokio::time::timeout(deadline, writer.commit()).await {
            Ok(Ok(results)) => Ok(results),
            Ok(Err(MultiWriteError::OperationFailed { index, source })) => {
                Err(Some((index, source)))
            }
            Ok(Err(MultiWriteError::RequestFailed { source })) => {
                warn!(error = %source, "takeover transaction failed; counting the leader's silence again");
                Err(None)
            }
            Err(_) => {
                warn!(after = ?deadline, "takeover transaction unanswered; counting the leader's silence again");
                Err(None)
            }
        };
        match r {
            Ok(results) => {
                info!(leader = %leader, version, "deleted the silent leader's znode; standing as leader");
                match results.get(1) {
                    Some(MultiWriteResult::SetData { stat }) => Some(Some(FirstRenewal {
                        sent,
                        version: stat.version,
                    })),
                    _ => Some(None),
                }
            }
            // Gone a moment before our delete (its own withdrawal): list
            // the election again, as when the watch sees it go.
            Err(Some((0, ZkError::NoNode))) => None,
            Err(Some((0, ZkError::BadVersion))) => {
                info!(leader = %leader, "the leader renewed its lease at the last moment; still following");
                None
            }
            Err(Some((index, e))) => {
                // Index 1: our own znode is gone (the election listing will
                // show it); nothing was deleted either way.
                warn!(error = %e, index, "takeover transaction refused; counting the leader's silence again");
                None
            }
            Err(None) => None,
        }
    }

    /// Our election znode's data for renewal `renewal` of term `term`.
    fn renewal_data(&self, host: &str, term: u64, renewal: u64) -> Vec<u8> {
        let lease = self.lease();
        serde_json::to_vec(&CandidateData {
            node: self.settings.node_id.clone(),
            host: host.to_string(),
            term,
            lease_ms: ms_up(lease.length),
            renew_ms: ms_up(lease.renew_every()),
            margin_ms: ms_up(lease.margin),
            renewal,
        })
        .expect("plain data serializes")
    }

    /// R18 (and R3): publish Follower, wait until the engine holds nothing,
    /// then delete our candidacy, whose deletion wakes the next in line at
    /// once. The caller decides when to stand again.
    async fn withdraw(
        &self,
        client: &Client,
        st: &mut Campaign,
        own: &mut Option<String>,
        deadline: Duration,
    ) {
        self.follower(st, false);
        wait_released(st, RELEASE_WAIT).await;
        if let Some(me) = own.take() {
            let path = format!("{}/{me}", self.paths.election);
            match call("delete", &path, deadline, client.delete(&path, None)).await {
                Ok(()) => info!(znode = %path, "candidacy deleted"),
                Err(e) if e.is(&zookeeper_client::Error::NoNode) => {}
                Err(e) => {
                    warn!(error = %e, "could not delete our candidacy; it goes with the session")
                }
            }
        }
    }

    /// At the head of the line: true when a handover request names another
    /// node that stands, so we step aside (we hold nothing yet) until it
    /// leads.
    async fn yield_to_target(
        &self,
        client: &Client,
        me: &str,
        sorted: &[String],
        deadline: Duration,
    ) -> bool {
        let Ok(Some((r, _))) = nodes::read_handover(client, &self.paths.handover, deadline).await
        else {
            return false;
        };
        let Some(target) =
            r.to.as_deref()
                .filter(|t| r.from != me && *t != self.settings.node_id)
        else {
            return false;
        };
        // `sorted` may be the list from before our takeover: a target that
        // stood since is only in a fresh one.
        let mut stands = sorted.iter().any(|c| node_of(c) == target);
        if !stands {
            stands = list_election(client, &self.paths.election, deadline)
                .await
                .is_ok_and(|c| c.iter().any(|c| node_of(c) == target));
        }
        if stands {
            info!(to = ?r.to, "a handover names another node; stepping aside");
        }
        stands
    }

    /// After a stuck engine ended our term: stand no more until the engine
    /// shows it is alive again (a pass finished as a follower), so a node
    /// whose engine stays stuck never leads again and the cluster settles.
    /// Our candidacy stays: the next in line deletes it when it takes over
    /// at the lease's end, the first moment the stuck engine's addresses
    /// are sure to be gone from the kernel.
    async fn wait_engine(
        &self,
        st: &mut Campaign,
        state: &mut StateWatcher,
        cancel: &CancellationToken,
    ) {
        let stalled_at = st.report.borrow().passes;
        self.set_withdrawn(Some("the engine is not responding".to_string()));
        loop {
            {
                let r = st.report.borrow_and_update();
                if r.passes > stalled_at && r.role == Role::Follower {
                    info!("the engine is responding again");
                    return;
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                s = state.changed() => if s.is_terminated() {
                    return;
                },
                r = st.report.changed(), if st.report_open => if r.is_err() {
                    st.report_open = false;
                },
            }
        }
    }

    /// Records why we do not stand; true when that changed.
    fn set_withdrawn(&self, why: Option<String>) -> bool {
        self.status.send_if_modified(|x| {
            let changed = x.withdrawn != why;
            x.withdrawn = why;
            changed
        })
    }

    /// Cancel: Follower, VIPs gone, candidacy deleted, session closed.
    async fn shutdown(&self, st: &mut Campaign, client: Option<Client>, own: Option<String>) {
        info!("coordination stopping");
        self.follower(st, false);
        wait_released(st, RELEASE_WAIT).await;
        if let Some(client) = client {
            let deadline = client.session_timeout() / 3;
            if let Some(me) = own {
                let path = format!("{}/{me}", self.paths.election);
                if let Err(e) = call("delete", &path, deadline, client.delete(&path, None)).await {
                    warn!(error = %e, "could not delete our candidacy; it goes with the session");
                }
            }
            session::close(client, Duration::from_secs(2)).await;
        }
        self.set_session("closed");
        self.status.send_modify(|x| x.leader = None);
    }
}

/// A renewal error that ends the term: our znode was deleted (a successor
/// took over) or written by someone else (BadVersion).
/// Whether our election znode's data is one of our own renewals numbered
/// in `renewals` this term (the only writer of its data is its leader;
/// others only delete it).
/// The first lease renewal of a term when it went with the takeover delete:
/// when it was sent (the lease counts from then) and the version written.
#[derive(Clone, Copy, Debug)]
struct FirstRenewal {
    sent: Instant,
    version: i32,
}

fn own_write(data: &[u8], node: &str, term: u64, renewals: std::ops::RangeInclusive<u64>) -> bool {
    serde_json::from_slice::<CandidateData>(data)
        .is_ok_and(|d| d.node == node && d.term == term && renewals.contains(&d.renewal))
}

/// The election's candidates, after a sync: a server cut off from its
/// quorum still answers reads from its stale tree (FACTS "Ensemble trap").
async fn list_election(
    client: &Client,
    dir: &str,
    deadline: Duration,
) -> Result<Vec<String>, ZkCallError> {
    call("sync", dir, deadline, client.sync(dir)).await?;
    call("list children", dir, deadline, client.list_children(dir)).await
}

fn lost_znode(e: &ZkCallError) -> bool {
    e.is(&zookeeper_client::Error::NoNode) || e.is(&zookeeper_client::Error::BadVersion)
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

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Waits a little before a retry, waking early on a session state change.
async fn pause(d: Duration, state: &mut StateWatcher, cancel: &CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
        _ = state.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(node: &str, term: u64, renewal: u64) -> Vec<u8> {
        serde_json::to_vec(&CandidateData {
            node: node.into(),
            host: "h".into(),
            term,
            lease_ms: 200,
            renew_ms: 13,
            margin_ms: 100,
            renewal,
        })
        .unwrap()
    }

    #[test]
    fn only_our_own_lost_renewals_are_taken_for_ours() {
        assert!(own_write(&data("n1", 7, 12), "n1", 7, 12..=12));
        assert!(own_write(&data("n1", 7, 12), "n1", 7, 11..=13));
        assert!(
            !own_write(&data("n1", 7, 10), "n1", 7, 11..=13),
            "acknowledged before"
        );
        assert!(
            !own_write(&data("n1", 6, 12), "n1", 7, 12..=12),
            "another term"
        );
        assert!(
            !own_write(&data("n2", 7, 12), "n1", 7, 12..=12),
            "another node"
        );
        assert!(!own_write(b"{not json", "n1", 7, 12..=12));
        assert!(!own_write(b"", "n1", 7, 12..=12));
    }
}
