//! Who may change the cluster's tree: the check before vipd or vipctl
//! writes (a new tree is never made open unless asked, a credential that
//! does not match the tree is refused before it meets NoAuth), the search
//! for znodes anyone may change, and their repair (`vipctl acl repair`).

use std::{collections::VecDeque, time::Duration};

use tracing::{info, warn};
use zookeeper_client::{Acl, Client, CreateMode, Error as ZkError, Permission};

use super::{
    ClusterPaths,
    session::{ZkAuth, ZkCallError, ZnodeAcl, call},
};

/// The parent every cluster's tree lives in.
const NAMESPACE: &str = "/vipd";

/// Why a tree may not be used (or repaired) with the credential given.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error(
        "{root} does not exist and no ZooKeeper credential is configured: refusing to create a tree \
         anyone who reaches ZooKeeper could change. Give the cluster's credential (--zk-auth-file FILE, \
         or the systemd credential vipd-zk), or --zk-insecure to create it open anyway"
    )]
    NewOpenTree { root: String },
    #[error(
        "{root} is protected (digest ACL of {users}) and no ZooKeeper credential is configured: every \
         write would fail with NoAuth. Give the cluster's credential (--zk-auth-file FILE, or the \
         systemd credential vipd-zk)"
    )]
    NoCredential { root: String, users: String },
    #[error(
        "the ZooKeeper credential of user {user:?} does not match the ACL of {root} (it grants digest \
         ids {ids}): every write would fail with NoAuth. Every node needs the cluster's one credential"
    )]
    WrongCredential {
        root: String,
        user: String,
        ids: String,
    },
    #[error("{what} needs the cluster's ZooKeeper credential: give --zk-auth-file FILE")]
    NeedsCredential { what: &'static str },
    #[error(transparent)]
    Zk(#[from] ZkCallError),
}

impl AclError {
    /// True when trying again later may succeed (no answer, connection
    /// lost); false when the tree or the credential must change first.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            AclError::Zk(e) => !e.is(&ZkError::NoAuth),
            _ => false,
        }
    }
}

/// Rights that let a holder change a znode or its children.
fn changing(p: Permission) -> bool {
    let writes = Permission::WRITE | Permission::CREATE | Permission::DELETE | Permission::ADMIN;
    (p & writes) != Permission::NONE
}

/// Whether anyone who reaches ZooKeeper may change the znode at `path`
/// with ACL `acl`. In `/vipd` anyone may create: another cluster makes its
/// tree there.
pub(crate) fn is_open(path: &str, acl: &[Acl]) -> bool {
    acl.iter().any(|a| {
        let mut p = a.permission();
        if path == NAMESPACE {
            p = p & (Permission::WRITE | Permission::DELETE | Permission::ADMIN);
        }
        a.scheme() == "world" && a.id() == "anyone" && changing(p)
    })
}

/// The digest ids an ACL lets change a znode.
fn writers(acl: &[Acl]) -> Vec<String> {
    acl.iter()
        .filter(|a| a.scheme() == "digest" && changing(a.permission()))
        .map(|a| a.id().to_string())
        .collect()
}

/// Makes sure this node can write the cluster's tree with `auth`, before
/// the first write: creates a missing tree protected (with a credential),
/// or open only when `insecure` asks for it; refuses a protected tree
/// without a credential or with another one.
pub(crate) async fn prepare(
    client: &Client,
    paths: &ClusterPaths,
    auth: Option<&ZkAuth>,
    insecure: bool,
    deadline: Duration,
) -> Result<(), AclError> {
    let root = &paths.root;
    call("sync", root, deadline, client.sync(root)).await?;
    let acl = match call("get acl", root, deadline, client.get_acl(root)).await {
        Ok((acl, _)) => acl,
        Err(e) if e.is(&ZkError::NoNode) => {
            return create_root(client, paths, auth, insecure, deadline).await;
        }
        Err(e) => return Err(e.into()),
    };
    if is_open(root, &acl) {
        // Usable by anyone; the search for open znodes reports it.
        return Ok(());
    }
    let ids = writers(&acl);
    match auth {
        None => Err(AclError::NoCredential {
            root: root.clone(),
            users: users(&ids),
        }),
        Some(a) if ids.contains(&a.digest_id()) => Ok(()),
        Some(a) => Err(AclError::WrongCredential {
            root: root.clone(),
            user: a.user.clone(),
            ids: users(&ids),
        }),
    }
}

/// `user:<hash>` ids shown by user name only: the hash says nothing to an
/// operator and helps a password guesser.
fn users(ids: &[String]) -> String {
    if ids.is_empty() {
        return "no digest user".into();
    }
    ids.iter()
        .map(|id| format!("{:?}", id.split_once(':').map_or(id.as_str(), |(u, _)| u)))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn create_root(
    client: &Client,
    paths: &ClusterPaths,
    auth: Option<&ZkAuth>,
    insecure: bool,
    deadline: Duration,
) -> Result<(), AclError> {
    let root = &paths.root;
    if auth.is_none() && !insecure {
        return Err(AclError::NewOpenTree { root: root.clone() });
    }
    for (path, acl) in [
        (NAMESPACE, ZnodeAcl::namespace(auth)),
        (root.as_str(), ZnodeAcl::new(auth)),
    ] {
        match call(
            "create",
            path,
            deadline,
            client.create(path, &[], &acl.options(CreateMode::Persistent)),
        )
        .await
        {
            Ok(_) => {}
            Err(e) if e.is(&ZkError::NodeExists) => {}
            Err(e) => return Err(e.into()),
        }
    }
    match auth {
        Some(a) => {
            info!(znode = %root, user = %a.user, "created the cluster's ZooKeeper tree, protected by the cluster's credential")
        }
        None => {
            warn!(znode = %root, "created the cluster's ZooKeeper tree OPEN to anyone who reaches ZooKeeper (--zk-insecure)")
        }
    }
    Ok(())
}

/// Every znode of the cluster's tree, parents before children, with its ACL
/// and ACL version; `/vipd` first. Znodes that go while we look are left out.
async fn walk(
    client: &Client,
    paths: &ClusterPaths,
    deadline: Duration,
) -> Result<Vec<(String, Vec<Acl>, i32)>, ZkCallError> {
    let mut out = Vec::new();
    match call("get acl", NAMESPACE, deadline, client.get_acl(NAMESPACE)).await {
        Ok((acl, stat)) => out.push((NAMESPACE.to_string(), acl, stat.aversion)),
        Err(e) if e.is(&ZkError::NoNode) => return Ok(out),
        Err(e) => return Err(e),
    }
    let mut queue = VecDeque::from([paths.root.clone()]);
    while let Some(path) = queue.pop_front() {
        let acl = match call("get acl", &path, deadline, client.get_acl(&path)).await {
            Ok((acl, stat)) => (acl, stat.aversion),
            Err(e) if e.is(&ZkError::NoNode) => continue,
            Err(e) => return Err(e),
        };
        let mut children = match call(
            "list children",
            &path,
            deadline,
            client.list_children(&path),
        )
        .await
        {
            Ok(c) => c,
            Err(e) if e.is(&ZkError::NoNode) => continue,
            Err(e) => return Err(e),
        };
        children.sort();
        queue.extend(children.into_iter().map(|c| format!("{path}/{c}")));
        out.push((path, acl.0, acl.1));
    }
    Ok(out)
}

/// The znodes of the cluster's tree (and `/vipd`) that anyone who reaches
/// ZooKeeper may change.
pub async fn open_znodes(
    client: &Client,
    paths: &ClusterPaths,
    deadline: Duration,
) -> Result<Vec<String>, ZkCallError> {
    Ok(walk(client, paths, deadline)
        .await?
        .into_iter()
        .filter(|(path, acl, _)| is_open(path, acl))
        .map(|(path, _, _)| path)
        .collect())
}

/// What `vipctl acl repair` did.
#[derive(Debug, Default)]
pub struct RepairReport {
    /// Znodes that were open and are protected now.
    pub protected: Vec<String>,
    /// Znodes that already were.
    pub already: usize,
    /// Znodes left open, with why (another credential holds them).
    pub failed: Vec<(String, String)>,
}

impl std::fmt::Display for RepairReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.protected {
            writeln!(f, "protected {p}")?;
        }
        for (p, why) in &self.failed {
            writeln!(f, "FAILED {p}: {why}")?;
        }
        writeln!(
            f,
            "{} znode{} protected now, {} already protected, {} failed",
            self.protected.len(),
            if self.protected.len() == 1 { "" } else { "s" },
            self.already,
            self.failed.len()
        )
    }
}

/// Gives every open znode of the cluster's tree the cluster's digest ACL
/// (`/vipd`: the same, creation left open), then touches the tree's root so
/// that every vipd looks again at once. Znodes already protected are left
/// as they are, so a second run changes nothing.
pub async fn repair(
    client: &Client,
    paths: &ClusterPaths,
    auth: &ZkAuth,
    deadline: Duration,
) -> Result<RepairReport, AclError> {
    prepare(client, paths, Some(auth), false, deadline).await?;
    let mut report = RepairReport::default();
    for (path, acl, version) in walk(client, paths, deadline).await? {
        if !is_open(&path, &acl) {
            report.already += 1;
            continue;
        }
        let target = if path == NAMESPACE {
            ZnodeAcl::namespace(Some(auth))
        } else {
            ZnodeAcl::new(Some(auth))
        };
        // At the ACL version read: an ACL someone changed meanwhile is
        // looked at again rather than overwritten.
        let mut version = version;
        loop {
            match call(
                "set acl",
                &path,
                deadline,
                client.set_acl(&path, target.acls(), Some(version)),
            )
            .await
            {
                Ok(_) => {
                    info!(znode = %path, "protected with the cluster's credential");
                    report.protected.push(path);
                    break;
                }
                Err(e) if e.is(&ZkError::NoNode) => break,
                Err(e) if e.is(&ZkError::BadVersion) => {
                    match call("get acl", &path, deadline, client.get_acl(&path)).await {
                        Ok((acl, _)) if !is_open(&path, &acl) => {
                            report.already += 1;
                            break;
                        }
                        Ok((_, stat)) => version = stat.aversion,
                        Err(e) if e.is(&ZkError::NoNode) => break,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) if e.is(&ZkError::NoAuth) => {
                    report.failed.push((path, e.to_string()));
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    touch(client, &paths.root, deadline).await?;
    Ok(report)
}

/// Rewrites the root's data unchanged: its data watch wakes every vipd of
/// the cluster to look at the ACLs again (ZooKeeper has no ACL watch).
async fn touch(client: &Client, root: &str, deadline: Duration) -> Result<(), ZkCallError> {
    let (data, stat) = call("get data", root, deadline, client.get_data(root)).await?;
    match call(
        "set data",
        root,
        deadline,
        client.set_data(root, &data, Some(stat.version)),
    )
    .await
    {
        // Written by someone else meanwhile: the watches fired anyway.
        Err(e) if e.is(&ZkError::BadVersion) => Ok(()),
        r => r.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use zookeeper_client::AuthId;

    use super::*;

    #[test]
    fn open_means_anyone_may_change() {
        let anyone = |p| Acl::new(p, AuthId::anyone());
        let digest = Acl::new(Permission::ALL, AuthId::new("digest", "vipd:x"));
        assert!(is_open("/vipd/c", &[anyone(Permission::ALL)]));
        assert!(is_open(
            "/vipd/c",
            &[digest.clone(), anyone(Permission::DELETE)]
        ));
        assert!(!is_open(
            "/vipd/c",
            &[digest.clone(), anyone(Permission::READ)]
        ));
        assert!(!is_open("/vipd/c", std::slice::from_ref(&digest)));
        // In /vipd anyone may create (another cluster's tree), nothing else.
        let create = Permission::READ | Permission::CREATE;
        assert!(!is_open("/vipd", &[digest.clone(), anyone(create)]));
        assert!(is_open("/vipd/c", &[digest.clone(), anyone(create)]));
        assert!(is_open("/vipd", &[anyone(Permission::ALL)]));
        assert_eq!(writers(&[digest, anyone(Permission::ALL)]), ["vipd:x"]);
    }

    #[test]
    fn the_acl_we_create_is_not_open_and_names_our_digest() {
        let auth = ZkAuth::parse("vipd:secret").unwrap();
        for (path, acl) in [
            ("/vipd/c", ZnodeAcl::new(Some(&auth))),
            (NAMESPACE, ZnodeAcl::namespace(Some(&auth))),
        ] {
            assert!(!is_open(path, acl.acls()), "{path}");
            assert_eq!(writers(acl.acls()), [auth.digest_id()], "{path}");
        }
        assert!(is_open("/vipd/c", ZnodeAcl::new(None).acls()));
        assert_eq!(
            users(&["vipd:abc".into(), "ops:def".into()]),
            "\"vipd\", \"ops\""
        );
    }
}
