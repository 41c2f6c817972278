//! Nodes as operators see and steer them (a drained node hands over): the
//! drain record `/vipd/<cluster>/nodes/<node>` (persistent, written by
//! vipctl, so it survives restarts and works from any machine), each running
//! vipd's
//! member znode `/vipd/<cluster>/members/<node>` (ephemeral: role, health,
//! why it does not stand, which VIPs it can serve), and the handover request
//! `/vipd/<cluster>/handover` (persistent, deleted by the next leader).

use std::{collections::BTreeSet, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use zookeeper_client::{Client, CreateMode, Error as ZkError, SessionState};

use super::session::{ZkCallError, ZnodeAcl, call, follow, mkdir};
use crate::vip::Vip;

/// The operator's record of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeRecord {
    #[serde(default)]
    pub drained: bool,
}

/// What a running vipd says of itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberData {
    pub node: String,
    #[serde(default)]
    pub host: String,
    /// `leader`, `follower` or `fenced`.
    #[serde(default)]
    pub role: String,
    /// `None` without health checks.
    #[serde(default)]
    pub healthy: Option<bool>,
    /// Why it does not stand (None: it stands).
    #[serde(default)]
    pub withdrawn: Option<String>,
    /// The configured VIPs it can serve (routable, and not failing to be
    /// added), as its engine found on its last pass; `None` from a vipd
    /// that does not say, which is never handed over to.
    #[serde(default)]
    pub servable: Option<BTreeSet<Vip>>,
    /// Its interfaces' MACs (`aa:bb:cc:dd:ee:ff`): an answer to an address
    /// probe from one of them is the cluster's own, not a conflict.
    #[serde(default)]
    pub macs: Vec<String>,
}

/// A request that the leader whose election znode is `from` steps down,
/// in favour of `to` if given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HandoverRequest {
    pub from: String,
    #[serde(default)]
    pub to: Option<String>,
}

/// Reads a node's drain record (absent: not drained).
pub(crate) async fn read_record(
    client: &Client,
    path: &str,
    deadline: Duration,
) -> Result<NodeRecord, ZkCallError> {
    match call("get data", path, deadline, client.get_data(path)).await {
        Ok((data, _)) => Ok(serde_json::from_slice(&data).unwrap_or_else(|e| {
            warn!(znode = %path, error = %e, "unreadable node record; taken as not drained");
            NodeRecord::default()
        })),
        Err(e) if e.is(&ZkError::NoNode) => Ok(NodeRecord::default()),
        Err(e) => Err(e),
    }
}

/// Watches this node's drain record for the session's life; `publish`
/// gets every value read. Returns the session's terminal state.
pub(crate) async fn watch_record(
    client: &Client,
    path: &str,
    deadline: Duration,
    mut publish: impl FnMut(bool),
) -> SessionState {
    let read = || async {
        let (_, w) = call("watch", path, deadline, client.check_and_watch_stat(path)).await?;
        let r = read_record(client, path, deadline).await?;
        Ok((r, vec![w]))
    };
    follow(client, None, deadline / 2, read, |r| match r {
        Ok(r) => publish(r.drained),
        Err(e) => debug!(error = %e, znode = %path, "cannot read the node record; retrying"),
    })
    .await
}

/// Writes (creates or replaces) a persistent znode's data, creating its
/// parent.
pub(crate) async fn put(
    client: &Client,
    dir: &str,
    path: &str,
    data: &[u8],
    acl: &ZnodeAcl,
    deadline: Duration,
) -> Result<(), ZkCallError> {
    mkdir(client, dir, acl, deadline).await?;
    for _ in 0..10 {
        match call(
            "set data",
            path,
            deadline,
            client.set_data(path, data, None),
        )
        .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.is(&ZkError::NoNode) => {}
            Err(e) => return Err(e),
        }
        match call(
            "create",
            path,
            deadline,
            client.create(path, data, &acl.options(CreateMode::Persistent)),
        )
        .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.is(&ZkError::NodeExists) => {}
            Err(e) => return Err(e),
        }
    }
    call(
        "set data",
        path,
        deadline,
        client.set_data(path, data, None),
    )
    .await
    .map(drop)
}

/// Publishes this node's member znode (ephemeral) and keeps it current
/// with `member`. Returns when `member`'s sender is gone.
pub(crate) async fn publish_member(
    client: &Client,
    dir: &str,
    path: &str,
    acl: &ZnodeAcl,
    deadline: Duration,
    mut member: watch::Receiver<MemberData>,
) {
    let mut created = false;
    loop {
        let value = member.borrow_and_update().clone();
        let data = serde_json::to_vec(&value).expect("plain data serializes");
        let r = if created {
            call(
                "set data",
                path,
                deadline,
                client.set_data(path, &data, None),
            )
            .await
            .map(drop)
        } else {
            let _ = mkdir(client, dir, acl, deadline).await;
            match call(
                "create",
                path,
                deadline,
                client.create(path, &data, &acl.options(CreateMode::Ephemeral)),
            )
            .await
            {
                Ok(_) => Ok(()),
                // Ours from a lost answer, or another session's: replace.
                Err(e) if e.is(&ZkError::NodeExists) => call(
                    "set data",
                    path,
                    deadline,
                    client.set_data(path, &data, None),
                )
                .await
                .map(drop),
                Err(e) => Err(e),
            }
        };
        match r {
            Ok(()) => created = true,
            Err(e) => {
                debug!(error = %e, znode = %path, "cannot publish the member znode; retrying");
                created = false;
                tokio::time::sleep(deadline / 2).await;
                continue;
            }
        }
        if member.changed().await.is_err() {
            return;
        }
    }
}

/// Reads the handover request, if any, with its version.
pub(crate) async fn read_handover(
    client: &Client,
    path: &str,
    deadline: Duration,
) -> Result<Option<(HandoverRequest, i32)>, ZkCallError> {
    match call("get data", path, deadline, client.get_data(path)).await {
        Ok((data, stat)) => Ok(serde_json::from_slice(&data)
            .ok()
            .map(|r| (r, stat.version))),
        Err(e) if e.is(&ZkError::NoNode) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits until a handover request names `me` (our election znode) and
/// returns its target. Never returns on errors (the caller's other
/// branches, the lease among them, decide then).
pub(crate) async fn handover_requested(
    client: &Client,
    path: &str,
    me: &str,
    deadline: Duration,
) -> Option<String> {
    loop {
        let watched = call("watch", path, deadline, client.check_and_watch_stat(path)).await;
        let w = match watched {
            Ok((_, w)) => w,
            Err(e) => {
                debug!(error = %e, "cannot watch the handover request; retrying");
                tokio::time::sleep(deadline).await;
                continue;
            }
        };
        if let Ok(Some((r, _))) = read_handover(client, path, deadline).await
            && r.from == me
        {
            info!(to = ?r.to, "handover requested");
            return r.to;
        }
        let _ = w.changed().await;
    }
}

/// Deletes a served handover request (one that does not name `me`).
pub(crate) async fn clear_handover(client: &Client, path: &str, me: &str, deadline: Duration) {
    if let Ok(Some((r, version))) = read_handover(client, path, deadline).await
        && r.from != me
    {
        match call("delete", path, deadline, client.delete(path, Some(version))).await {
            Ok(()) => debug!(from = %r.from, "handover request served and deleted"),
            Err(e) => debug!(error = %e, "handover request not deleted"),
        }
    }
}

/// What `vipctl node ...` asks (the command line itself is vipctl's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeCommand {
    /// Every node: role, health, drained, and its ZooKeeper session; JSON
    /// or a table.
    List {
        json: bool,
    },
    /// Keep `node` out of the election across restarts (a drained leader
    /// hands over).
    Drain {
        node: String,
    },
    Undrain {
        node: String,
    },
}

/// One row of `vipctl node list`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeRow {
    pub node: String,
    /// `leader`, `candidate` (standing, not leading), `withdrawn` (running,
    /// not standing), `stopped` (known only by its drain record).
    pub role: String,
    pub healthy: Option<bool>,
    pub drained: bool,
    pub withdrawn: Option<String>,
    /// The ZooKeeper session id (hex) of its election or member znode.
    pub session: Option<String>,
    pub host: Option<String>,
}

impl super::ClusterPaths {
    /// The drain record of `node`.
    pub(crate) fn node(&self, node: &str) -> String {
        format!("{}/{node}", self.nodes)
    }

    /// The member znode of `node`.
    pub fn member(&self, node: &str) -> String {
        format!("{}/{node}", self.members)
    }
}

async fn children(client: &Client, dir: &str, d: Duration) -> Result<Vec<String>, ZkCallError> {
    match call("list children", dir, d, client.list_children(dir)).await {
        Ok(c) => Ok(c),
        Err(e) if e.is(&ZkError::NoNode) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Every node the cluster knows, in name order.
pub async fn list_nodes(
    client: &Client,
    paths: &super::ClusterPaths,
    d: Duration,
) -> Result<Vec<NodeRow>, ZkCallError> {
    use std::collections::BTreeMap;
    call("sync", "/", d, client.sync("/")).await?;
    let mut rows: BTreeMap<String, NodeRow> = BTreeMap::new();
    let row = |rows: &mut BTreeMap<String, NodeRow>, node: &str| -> NodeRow {
        rows.remove(node).unwrap_or(NodeRow {
            node: node.to_string(),
            role: "stopped".into(),
            healthy: None,
            drained: false,
            withdrawn: None,
            session: None,
            host: None,
        })
    };
    for n in children(client, &paths.nodes, d).await? {
        let mut r = row(&mut rows, &n);
        r.drained = read_record(client, &paths.node(&n), d).await?.drained;
        rows.insert(n, r);
    }
    for n in children(client, &paths.members, d).await? {
        let path = paths.member(&n);
        let (data, stat) = match call("get data", &path, d, client.get_data(&path)).await {
            Ok(x) => x,
            Err(e) if e.is(&ZkError::NoNode) => continue,
            Err(e) => return Err(e),
        };
        let m: MemberData = serde_json::from_slice(&data).unwrap_or_default();
        let mut r = row(&mut rows, &n);
        r.role = "withdrawn".into();
        r.healthy = m.healthy;
        r.withdrawn = m.withdrawn;
        r.session = Some(format!("{:#x}", stat.ephemeral_owner));
        r.host = Some(m.host).filter(|h| !h.is_empty());
        rows.insert(n, r);
    }
    let candidates = super::election::sort_candidates(children(client, &paths.election, d).await?);
    for (i, c) in candidates.iter().enumerate() {
        let node = super::election::node_of(c).to_string();
        let mut r = row(&mut rows, &node);
        r.role = if i == 0 { "leader" } else { "candidate" }.into();
        let path = format!("{}/{c}", paths.election);
        if let Ok(Some(stat)) = call("stat", &path, d, client.check_stat(&path)).await {
            r.session = Some(format!("{:#x}", stat.ephemeral_owner));
        }
        rows.insert(node, r);
    }
    Ok(rows.into_values().collect())
}

/// `vipctl node list` as a table.
pub fn nodes_table(rows: &[NodeRow]) -> String {
    let w = rows
        .iter()
        .map(|r| r.node.len())
        .max()
        .unwrap_or(0)
        .max("NODE".len());
    let mut out = format!(
        "{:w$}  {:<9}  {:<9}  {:<7}  {:<18}  WHY NOT STANDING\n",
        "NODE", "ROLE", "HEALTH", "DRAINED", "SESSION"
    );
    for r in rows {
        let health = match r.healthy {
            Some(true) => "healthy",
            Some(false) => "UNHEALTHY",
            None => "-",
        };
        out += &format!(
            "{:w$}  {:<9}  {:<9}  {:<7}  {:<18}  {}\n",
            r.node,
            r.role,
            health,
            if r.drained { "yes" } else { "no" },
            r.session.as_deref().unwrap_or("-"),
            r.withdrawn.as_deref().unwrap_or("")
        );
    }
    out
}

/// Runs `vipctl node ...`; returns what to print.
pub async fn run_node_command_within(
    hosts: &str,
    cluster: &str,
    access: super::session::ZkAccess,
    cmd: NodeCommand,
    connect_timeout: Duration,
) -> Result<String, super::AdminError> {
    use super::admin::{admin_session, check_name, check_writable};
    check_name("cluster name", cluster)?;
    if let NodeCommand::Drain { node } | NodeCommand::Undrain { node } = &cmd {
        check_name("node id", node)?;
    }
    let paths = super::ClusterPaths::new(cluster);
    let client = admin_session(hosts, access.auth.as_ref(), connect_timeout).await?;
    let acl = ZnodeAcl::new(access.auth.as_ref());
    let d = Duration::from_secs(5);
    let out = async {
        match cmd {
            NodeCommand::List { json } => {
                let rows = list_nodes(&client, &paths, d).await?;
                Ok(if json {
                    serde_json::to_string(&rows).expect("plain data serializes") + "\n"
                } else {
                    nodes_table(&rows)
                })
            }
            NodeCommand::Drain { ref node } | NodeCommand::Undrain { ref node } => {
                check_writable(&client, &paths, &access).await?;
                let drained = matches!(cmd, NodeCommand::Drain { .. });
                let data = serde_json::to_vec(&NodeRecord { drained }).expect("plain data");
                put(&client, &paths.nodes, &paths.node(node), &data, &acl, d).await?;
                Ok(format!(
                    "{node}: {}\n",
                    if drained { "drained" } else { "undrained" }
                ))
            }
        }
    }
    .await;
    super::session::close(client, Duration::from_secs(1)).await;
    out
}

/// `vipctl handover [--to NODE]`: asks the leader to step down now, then
/// waits (up to `wait`) for another node to lead.
pub async fn run_handover_within(
    hosts: &str,
    cluster: &str,
    access: super::session::ZkAccess,
    to: Option<String>,
    connect_timeout: Duration,
    wait: Duration,
) -> Result<String, super::AdminError> {
    use super::{
        AdminError,
        admin::{admin_session, check_name, check_writable},
    };
    if let Some(t) = &to {
        check_name("node id", t)?;
    }
    check_name("cluster name", cluster)?;
    let paths = super::ClusterPaths::new(cluster);
    let client = admin_session(hosts, access.auth.as_ref(), connect_timeout).await?;
    let acl = ZnodeAcl::new(access.auth.as_ref());
    let d = Duration::from_secs(5);
    let out = async {
        check_writable(&client, &paths, &access).await?;
        call("sync", "/", d, client.sync("/")).await?;
        let candidates =
            super::election::sort_candidates(children(&client, &paths.election, d).await?);
        let Some(leader) = candidates.first().cloned() else {
            return Err(AdminError::Invalid("no leader: nothing to hand over".into()));
        };
        let from_node = super::election::node_of(&leader).to_string();
        if let Some(t) = &to {
            if *t == from_node {
                return Err(AdminError::Invalid(format!("{t} already leads")));
            }
            if !candidates.iter().any(|c| super::election::node_of(c) == t) {
                return Err(AdminError::Invalid(format!(
                    "{t} does not stand for election (stopped, drained, withdrawn or unknown): see vipctl node list"
                )));
            }
        } else if candidates.len() < 2 {
            return Err(AdminError::Invalid(format!(
                "{from_node} is the only candidate: nobody to hand over to"
            )));
        }
        let req = HandoverRequest {
            from: leader.clone(),
            to: to.clone(),
        };
        let data = serde_json::to_vec(&req).expect("plain data");
        put(&client, &paths.root, &paths.handover, &data, &acl, d).await?;
        let started = std::time::Instant::now();
        loop {
            let now =
                super::election::sort_candidates(children(&client, &paths.election, d).await?);
            if let Some(first) = now.first()
                && *first != leader
                && super::election::node_of(first) != from_node
            {
                return Ok(format!(
                    "handed over from {from_node} to {}\n",
                    super::election::node_of(first)
                ));
            }
            if started.elapsed() > wait {
                return Err(AdminError::Invalid(format!(
                    "asked {from_node} to hand over, but no other node leads after {wait:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    .await;
    super::session::close(client, Duration::from_secs(1)).await;
    out
}
