//! vipctl's ZooKeeper side: list, set, add, remove and clear a
//! service's VIPs. Input is validated before anything is written; writes
//! are compare-and-set on the znode version and retried, never lost.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use serde::Serialize;
use tracing::{debug, instrument};
use zookeeper_client::{Client, CreateMode, Error as ZkError};

use super::{
    ClusterPaths,
    acl::{self, AclError},
    election::{CandidateData, node_of, sort_candidates},
    session::{self, ConnectError, ZkAccess, ZkAuth, ZkCallError, ZnodeAcl, call, mkdir},
    store::{encode_service, parse_service},
};
use crate::{names::valid_name, vip::Vip};

/// What `vipctl vip ...` asks of the VIP configuration in ZooKeeper (the
/// command line itself is vipctl's): list it, or change one service's VIPs
/// (given as text, validated before anything is written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VipCommand {
    /// Every service with its VIPs, and the leader; JSON or a table.
    List {
        json: bool,
    },
    Set {
        service: String,
        vips: Vec<String>,
    },
    Add {
        service: String,
        vips: Vec<String>,
    },
    Remove {
        service: String,
        vips: Vec<String>,
    },
    /// The service and all its VIPs go.
    Clear {
        service: String,
    },
}

/// Why a vipctl command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Bad input; nothing was written.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Zk(#[from] ZkCallError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{path} holds data vipctl cannot merge with: {reason} (use `set` to overwrite it)")]
    Corrupt { path: String, reason: String },
    #[error("{path} kept changing under us ({attempts} attempts); try again")]
    Contention { path: String, attempts: u32 },
    #[error(transparent)]
    Acl(#[from] AclError),
}

impl AdminError {
    /// 2 for invalid input (nothing written), 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            AdminError::Invalid(_)
            | AdminError::Connect(ConnectError::Invalid { .. })
            | AdminError::Acl(AclError::NeedsCredential { .. }) => 2,
            _ => 1,
        }
    }
}

const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long vipctl keeps trying to open a session (`--connect-timeout`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
const MAX_ATTEMPTS: u32 = 100;

pub(super) fn check_name(what: &str, v: &str) -> Result<(), AdminError> {
    if valid_name(v) {
        Ok(())
    } else {
        Err(AdminError::Invalid(format!(
            "invalid {what} {v:?}: use 1-128 letters, digits, '-', '_' and '.'"
        )))
    }
}

/// The session of one vipctl command (`vip`, `node`, `handover`): no
/// servers given is an input error, and nothing is tried.
pub(super) async fn admin_session(
    hosts: &str,
    auth: Option<&ZkAuth>,
    connect_timeout: Duration,
) -> Result<Client, AdminError> {
    if hosts.trim().is_empty() {
        return Err(AdminError::Invalid("no ZooKeeper hosts given".into()));
    }
    Ok(session::connect_within(hosts, SESSION_TIMEOUT, auth, connect_timeout).await?)
}

/// Before a command's first write: the tree is created protected (or open
/// with `--zk-insecure`), and a credential that cannot write it is refused.
pub(super) async fn check_writable(
    client: &Client,
    paths: &ClusterPaths,
    access: &ZkAccess,
) -> Result<(), AdminError> {
    Ok(acl::prepare(
        client,
        paths,
        access.auth.as_ref(),
        access.insecure,
        REQUEST_DEADLINE,
    )
    .await?)
}

/// `vipctl acl repair`: gives every znode of the cluster's tree that anyone
/// may change the cluster's digest ACL; returns what it did.
#[instrument(skip(access), fields(user = access.auth.as_ref().map(|a| a.user.as_str())))]
pub async fn run_acl_repair_within(
    hosts: &str,
    cluster: &str,
    access: ZkAccess,
    connect_timeout: Duration,
) -> Result<String, AdminError> {
    check_name("cluster name", cluster)?;
    let Some(auth) = access.auth else {
        return Err(AclError::NeedsCredential {
            what: "`vipctl acl repair`",
        }
        .into());
    };
    let paths = ClusterPaths::new(cluster);
    let client = admin_session(hosts, Some(&auth), connect_timeout).await?;
    let out = async {
        call("sync", "/", REQUEST_DEADLINE, client.sync("/")).await?;
        let exists = call(
            "exists",
            &paths.root,
            REQUEST_DEADLINE,
            client.check_stat(&paths.root),
        )
        .await?;
        if exists.is_none() {
            return Ok(format!(
                "{}: no such tree (nothing to repair)\n",
                paths.root
            ));
        }
        Ok(acl::repair(&client, &paths, &auth, REQUEST_DEADLINE)
            .await?
            .to_string())
    }
    .await;
    session::close(client, Duration::from_secs(1)).await;
    out
}

fn parse_vips(vips: &[String]) -> Result<BTreeSet<Vip>, AdminError> {
    vips.iter()
        .map(|v| {
            v.parse::<Vip>()
                .map_err(|e| AdminError::Invalid(e.to_string()))
        })
        .collect()
}

fn show(vips: &BTreeSet<Vip>) -> String {
    if vips.is_empty() {
        "(none)".to_string()
    } else {
        vips.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What a command does to a service's VIP set.
enum Edit {
    Set(BTreeSet<Vip>),
    Add(BTreeSet<Vip>),
    Remove(BTreeSet<Vip>),
    Clear,
}

/// Runs one command, trying to reach ZooKeeper for up to
/// [`DEFAULT_CONNECT_TIMEOUT`]; returns what to print on stdout.
pub async fn run_vip_command(
    hosts: &str,
    cluster: &str,
    access: ZkAccess,
    cmd: VipCommand,
) -> Result<String, AdminError> {
    run_vip_command_within(hosts, cluster, access, cmd, DEFAULT_CONNECT_TIMEOUT).await
}

/// Runs one command, trying to open a session for up to `connect_timeout`
/// (a ZooKeeper that is still starting is waited for); returns what to
/// print on stdout.
#[instrument(skip(access), fields(user = access.auth.as_ref().map(|a| a.user.as_str())))]
pub async fn run_vip_command_within(
    hosts: &str,
    cluster: &str,
    access: ZkAccess,
    cmd: VipCommand,
    connect_timeout: Duration,
) -> Result<String, AdminError> {
    check_name("cluster name", cluster)?;
    // Validate everything before the first request: invalid input writes nothing.
    let edit = match cmd {
        VipCommand::List { json } => Err(json),
        VipCommand::Set { service, vips } => Ok((service, Edit::Set(parse_vips(&vips)?))),
        VipCommand::Add { service, vips } => Ok((service, Edit::Add(parse_vips(&vips)?))),
        VipCommand::Remove { service, vips } => Ok((service, Edit::Remove(parse_vips(&vips)?))),
        VipCommand::Clear { service } => Ok((service, Edit::Clear)),
    };
    if let Ok((service, _)) = &edit {
        check_name("service name", service)?;
    }
    let paths = ClusterPaths::new(cluster);
    let client = admin_session(hosts, access.auth.as_ref(), connect_timeout).await?;
    let acl = ZnodeAcl::new(access.auth.as_ref());
    let out = match edit {
        Err(json) => list(&client, &paths, json).await,
        Ok((service, edit)) => match check_writable(&client, &paths, &access).await {
            Ok(()) => apply(&client, &paths, &acl, &service, edit).await,
            Err(e) => Err(e),
        },
    };
    session::close(client, Duration::from_secs(1)).await;
    out
}

/// What an edit leaves of a service.
enum Next {
    /// The new VIPs; `None`: delete the service.
    Vips(Option<BTreeSet<Vip>>),
    /// Nothing to do: the service to remove from or clear does not exist.
    Nothing(&'static str),
}

/// The service's VIPs after `edit`, from its current data (`None`: no such
/// service). Adding to or removing from a service whose data is refused
/// is an error naming the znode: the edit would drop its entries.
fn next_vips(edit: &Edit, current: Option<&[u8]>, path: &str) -> Result<Next, AdminError> {
    let merge_base = |data: &[u8]| {
        parse_service(path, data)
            .and_then(|p| p.strict(path))
            .map(|v| v.into_iter().collect::<BTreeSet<_>>())
            .map_err(|reason| AdminError::Corrupt {
                path: path.to_string(),
                reason,
            })
    };
    Ok(Next::Vips(match (edit, current) {
        (Edit::Set(v), _) => Some(v.clone()),
        (Edit::Add(v), None) => Some(v.clone()),
        (Edit::Add(v), Some(data)) => Some(merge_base(data)?.union(v).copied().collect()),
        (Edit::Remove(_), None) => return Ok(Next::Nothing("remove")),
        (Edit::Remove(v), Some(data)) => Some(merge_base(data)?.difference(v).copied().collect()),
        (Edit::Clear, None) => return Ok(Next::Nothing("clear")),
        (Edit::Clear, Some(_)) => None,
    }))
}

/// Compare-and-set loop: read the znode and its version, compute the new
/// set, write it only if nobody wrote in between; else read again.
async fn apply(
    client: &Client,
    paths: &ClusterPaths,
    acl: &ZnodeAcl,
    service: &str,
    edit: Edit,
) -> Result<String, AdminError> {
    // Our server may lag the quorum leader: catch up first, so a command
    // right after another one through another server sees its write.
    call("sync", "/", REQUEST_DEADLINE, client.sync("/")).await?;
    let path = format!("{}/{service}", paths.services);
    let d = REQUEST_DEADLINE;
    for attempt in 1..=MAX_ATTEMPTS {
        let current = match call("get data", &path, d, client.get_data(&path)).await {
            Ok((data, stat)) => Some((data, stat.version)),
            Err(e) if e.is(&ZkError::NoNode) => None,
            Err(e) => return Err(e.into()),
        };
        let next = match next_vips(&edit, current.as_ref().map(|(d, _)| d.as_slice()), &path)? {
            Next::Vips(v) => v,
            Next::Nothing(what) => {
                return Ok(format!("{service}: no such service (nothing to {what})\n"));
            }
        };
        let result = match (next.as_ref(), current.as_ref()) {
            (Some(vips), None) => {
                let data = encode_service(vips);
                mkdir(client, &paths.services, acl, d).await?;
                call(
                    "create",
                    &path,
                    d,
                    client.create(&path, &data, &acl.options(CreateMode::Persistent)),
                )
                .await
                .map(drop)
            }
            (Some(vips), Some((old, version))) => {
                let data = encode_service(vips);
                if *old == data {
                    return Ok(format!("{service}: {} (unchanged)\n", show(vips)));
                }
                call(
                    "set data",
                    &path,
                    d,
                    client.set_data(&path, &data, Some(*version)),
                )
                .await
                .map(drop)
            }
            (None, Some((_, version))) => {
                call("delete", &path, d, client.delete(&path, Some(*version))).await
            }
            (None, None) => unreachable!("clear of a missing service returned above"),
        };
        match result {
            Ok(()) => {
                return Ok(match next {
                    Some(vips) => format!("{service}: {}\n", show(&vips)),
                    None => format!("{service}: cleared\n"),
                });
            }
            Err(e)
                if e.is(&ZkError::BadVersion)
                    || e.is(&ZkError::NodeExists)
                    || e.is(&ZkError::NoNode) =>
            {
                debug!(znode = %path, attempt, error = %e, "concurrent write; reading again");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(AdminError::Contention {
        path,
        attempts: MAX_ATTEMPTS,
    })
}

#[derive(Serialize)]
struct Listing {
    services: BTreeMap<String, Vec<Vip>>,
    /// Services whose data is refused, with the reason.
    invalid: BTreeMap<String, String>,
    leader: Option<String>,
}

async fn list(client: &Client, paths: &ClusterPaths, json: bool) -> Result<String, AdminError> {
    // Our server may lag the quorum leader: catch up first, so a command
    // right after another one through another server sees its write.
    call("sync", "/", REQUEST_DEADLINE, client.sync("/")).await?;
    let d = REQUEST_DEADLINE;
    let mut listing = Listing {
        services: BTreeMap::new(),
        invalid: BTreeMap::new(),
        leader: None,
    };
    let mut names = match call(
        "list children",
        &paths.services,
        d,
        client.list_children(&paths.services),
    )
    .await
    {
        Ok(n) => n,
        Err(e) if e.is(&ZkError::NoNode) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    names.sort();
    for name in names {
        let path = format!("{}/{name}", paths.services);
        match call("get data", &path, d, client.get_data(&path)).await {
            // A refused entry is listed as invalid beside the service's
            // good VIPs, which the cluster serves.
            Ok((data, _)) => match parse_service(&path, &data) {
                Ok(p) => {
                    listing.services.insert(name.clone(), p.vips.clone());
                    if let Err(e) = p.strict(&path) {
                        listing.invalid.insert(name, e);
                    }
                }
                Err(e) => {
                    listing.invalid.insert(name, e);
                }
            },
            Err(e) if e.is(&ZkError::NoNode) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let candidates = match call(
        "list children",
        &paths.election,
        d,
        client.list_children(&paths.election),
    )
    .await
    {
        Ok(c) => sort_candidates(c),
        Err(e) if e.is(&ZkError::NoNode) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    if let Some(lowest) = candidates.first() {
        listing.leader = Some(leader_node(client, paths, lowest).await);
    }
    if json {
        let mut s = serde_json::to_string_pretty(&listing).expect("plain data serializes");
        s.push('\n');
        return Ok(s);
    }
    Ok(listing_table(&listing))
}

/// The node id of the lowest candidate: from its data, or its znode's name
/// when the data cannot be read.
async fn leader_node(client: &Client, paths: &ClusterPaths, lowest: &str) -> String {
    let path = format!("{}/{lowest}", paths.election);
    match call("get data", &path, REQUEST_DEADLINE, client.get_data(&path)).await {
        Ok((data, _)) => serde_json::from_slice::<CandidateData>(&data)
            .map(|c| c.node)
            .unwrap_or_else(|_| node_of(lowest).to_string()),
        Err(_) => node_of(lowest).to_string(),
    }
}

/// `vipctl vip list` without `--json`.
fn listing_table(listing: &Listing) -> String {
    let width = listing
        .services
        .keys()
        .chain(listing.invalid.keys())
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max("SERVICE".len());
    let mut out = format!("{:width$}  VIPS\n", "SERVICE");
    for (name, vips) in &listing.services {
        out += &format!("{name:width$}  {}\n", show(&vips.iter().copied().collect()));
    }
    for (name, e) in &listing.invalid {
        out += &format!("{name:width$}  INVALID: {e}\n");
    }
    out += &format!(
        "leader: {}\n",
        listing.leader.as_deref().unwrap_or("(none)")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn invalid_input_fails_before_connecting() {
        // An unroutable host: reaching it would time out, so a quick exit-2
        // error proves validation ran first.
        let hosts = "192.0.2.1:1";
        let set = |service: &str, vips: &[&str]| VipCommand::Set {
            service: service.into(),
            vips: vips.iter().map(|s| s.to_string()).collect(),
        };
        let e = run_vip_command(
            hosts,
            "c",
            ZkAccess::default(),
            set("web", &["192.0.2.10", "300.1.1.1"]),
        )
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("300.1.1.1"), "{e}");
        let e = run_vip_command(hosts, "c", ZkAccess::default(), set("a/b", &["192.0.2.10"]))
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("a/b"), "{e}");
        let e = run_vip_command(
            hosts,
            "",
            ZkAccess::default(),
            VipCommand::List { json: false },
        )
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}
