//! What runs beside the campaign on every session: the VIP configuration
//! watch, the last good records, this node's member znode and the search
//! of the cluster's tree for znodes anyone may change.

use std::{collections::BTreeMap, time::Duration};

use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};
use zookeeper_client::Client;

use super::{
    CoordStatus, ServiceStatus, TreeAcl, acl,
    ctx::{Ctx, changed_opt},
    held, nodes,
    session::call,
    store,
};
use crate::{
    health::HealthStatus,
    role::{EngineReport, Role},
};

/// How often vipd searches its cluster's tree for znodes anyone may change
/// (a vipd or vipctl without the credential can add some at any time).
const TREE_ACL_EVERY: Duration = Duration::from_secs(60);
/// How often the warning about an open tree is repeated while it lasts.
const OPEN_TREE_REMINDER: Duration = Duration::from_secs(600);

impl Ctx<'_> {
    pub(super) fn publish_services(
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

    /// While this node leads, keeps the last good record of each service
    /// (see `store::persist_applied`).
    pub(super) async fn persist_applied(
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
    pub(super) async fn watch_tree_acl(&self, client: &Client, deadline: Duration) {
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
    pub(super) async fn publish_member(
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
            host: crate::names::hostname(),
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
}
