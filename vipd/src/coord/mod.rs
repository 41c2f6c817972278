//! ZooKeeper coordination: the session, the election, the VIP
//! configuration watch and fencing. `run` turns all of it into one
//! `Desired` for the engine and one `CoordStatus` for operators.
//!
//! A file per role: the session loop (`run`), what runs beside the
//! campaign on every session (`tasks`), the campaign (`campaign`), the
//! leader's term (`leader`), the next in line (`successor`), and what they
//! share (`ctx`: the settings, the session's lease, the channels to the
//! engine and to operators, the candidacy's state, the one way to release
//! a candidacy). Below them: the session's calls (`session`), the election
//! znodes (`election`), the lease arithmetic (`lease`), the VIP
//! configuration (`store`), drain records, members and handovers
//! (`nodes`), placement, the held record (`held`), ACLs and vipctl's side
//! (`admin`).
//!
//! A new role lands as a new file, not as more of `Ctx`: one that runs on
//! every session (a node lease) is one more future in
//! `Ctx::serve_session`; one that runs while leading (a placement
//! assigner) is started by the term in `leader`, as `seek_better_leader`
//! (`placement`) is. It keeps its own state in its own struct, as the
//! leader's `Term` and the successor's `LeaderTiming` do; `Ctx` gains a
//! field only for what every role shares.

pub(crate) mod acl;
pub mod admin;
mod campaign;
pub mod connections;
mod ctx;
pub(crate) mod election;
pub(crate) mod held;
mod leader;
pub mod lease;
pub mod nodes;
mod placement;
mod run;
pub(crate) mod session;
pub(crate) mod store;
mod successor;
mod tasks;

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;
use tracing::{info, warn};

use self::lease::LeaseTimes;
pub use self::{
    admin::{AdminError, VipCommand, run_vip_command},
    connections::Handoff,
    run::{run, run_serving},
    session::{CREDENTIAL_NAME, ZkAccess, ZkAuth, ZkAuthError},
    store::{RefusedValue, ServiceStatus},
};
use crate::vip::Vip;

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
    /// The leader's lease and the successor's takeover: the timing that
    /// keeps two nodes from holding the VIPs at once.
    pub lease: LeaseTimes,
    /// This node's in-kernel fence outlives the agent (its programs and
    /// maps are pinned) and covers every VIP it may hold, for the whole
    /// run: as leader it says so in its znode, and its successor then waits
    /// only the fenced rule (`LeaseTimes::fenced_takeover_after`). It must
    /// not turn true while the node could serve a VIP unfenced: the
    /// successor times each version by what that version said.
    pub fence_outlives_agent: bool,
}

impl ZkSettings {
    /// Cluster mode settings from the flags, or `None` without `--zk`
    /// (single-node mode). Reads the credential: the auth file if one is
    /// named, else the systemd credential `vipd-zk` if the unit loads one.
    pub(crate) fn from_args(
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
            // Set from the XDP handle once it is loaded and attached.
            fence_outlives_agent: false,
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
    /// Operators' drain records, persistent so a drain outlives restarts.
    pub nodes: String,
    /// Running nodes' member znodes, ephemeral.
    pub members: String,
    /// The handover request, persistent until the next leader deletes it.
    pub handover: String,
}

impl ClusterPaths {
    pub(crate) fn new(cluster: &str) -> Self {
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
    /// Why this node does not stand for election now (a VIP
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
