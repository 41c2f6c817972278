//! Where the configured VIPs can be served. Every node publishes in its
//! member znode the configured VIPs it can serve; a leader holds those it
//! can, reports the others as unplaceable, and hands over only to a
//! standing, healthy, undrained member that can serve strictly more, so
//! leadership only moves up and the cluster settles.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use tokio::sync::watch;
use tracing::{debug, info, warn};
use zookeeper_client::{Client, Error as ZkError, OneshotWatcher};

use super::{
    campaign::list_election,
    ctx::Ctx,
    election::{node_of, sort_candidates},
    nodes::{self, HandoverRequest, MemberData},
    session::{ZkCallError, any_fired, call},
};
use crate::{role::EngineReport, vip::Vip};

/// How often a leader missing VIPs looks at the election and the drain
/// records again (member znodes are watched; these are not).
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// A member as a leader weighs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    pub node: String,
    pub data: MemberData,
    /// It has an election znode.
    pub standing: bool,
    pub drained: bool,
}

/// The configured VIPs the engine says it cannot serve here, with why.
pub(crate) fn unplaceable(
    configured: &BTreeSet<Vip>,
    report: &EngineReport,
) -> BTreeMap<Vip, String> {
    report
        .unservable
        .iter()
        .filter(|(v, _)| configured.contains(v))
        .map(|(v, why)| (*v, why.clone()))
        .collect()
}

/// The member to hand over to: standing, healthy, undrained, not
/// withdrawn, whose published set (within `configured`) strictly contains
/// `own`; the one that serves most, the first in `members` on a tie.
pub(crate) fn better_member(
    me: &str,
    configured: &BTreeSet<Vip>,
    own: &BTreeSet<Vip>,
    members: &[Member],
) -> Option<String> {
    let own: BTreeSet<Vip> = own.intersection(configured).copied().collect();
    let mut best: Option<(usize, &str)> = None;
    for m in members {
        let fit = m.node != me
            && m.standing
            && !m.drained
            && m.data.healthy != Some(false)
            && m.data.withdrawn.is_none();
        // A member that publishes no set (an older vipd) is never chosen.
        let Some(servable) = m.data.servable.as_ref().filter(|_| fit) else {
            continue;
        };
        let theirs: BTreeSet<Vip> = servable.intersection(configured).copied().collect();
        if theirs.len() > own.len()
            && theirs.is_superset(&own)
            && best.is_none_or(|(n, _)| theirs.len() > n)
        {
            best = Some((theirs.len(), &m.node));
        }
    }
    best.map(|(_, node)| node.to_string())
}

/// Every member with its published data, whether it stands and whether it
/// is drained, in election order (then the others); and watches on the
/// members' znodes.
async fn read_members(
    client: &Client,
    paths: &super::ClusterPaths,
    deadline: Duration,
) -> Result<(Vec<Member>, Vec<OneshotWatcher>), ZkCallError> {
    let standing: Vec<String> =
        sort_candidates(list_election(client, &paths.election, deadline).await?)
            .iter()
            .map(|c| node_of(c).to_string())
            .collect();
    let dir = &paths.members;
    let (mut names, w) = call(
        "list children",
        dir,
        deadline,
        client.list_and_watch_children(dir),
    )
    .await?;
    names.sort_by_key(|n| standing.iter().position(|s| s == n).unwrap_or(usize::MAX));
    let mut watchers = vec![w];
    let mut members = Vec::new();
    for node in names {
        let path = paths.member(&node);
        let data = match call(
            "get data",
            &path,
            deadline,
            client.get_and_watch_data(&path),
        )
        .await
        {
            Ok((data, _, w)) => {
                watchers.push(w);
                serde_json::from_slice::<MemberData>(&data).unwrap_or_default()
            }
            Err(e) if e.is(&ZkError::NoNode) => continue,
            Err(e) => return Err(e),
        };
        let drained = nodes::read_record(client, &paths.node(&node), deadline)
            .await?
            .drained;
        members.push(Member {
            standing: standing.contains(&node),
            node,
            data,
            drained,
        });
    }
    Ok((members, watchers))
}

impl Ctx<'_> {
    /// While leading term `term` (our election znode `me`): keeps the
    /// unplaceable VIPs in the status (one log line per change) and, when
    /// some member can serve strictly more of the configured VIPs, asks
    /// for a handover to it (as `vipctl handover --to` does) and returns
    /// its node id. Never returns otherwise.
    pub(super) async fn seek_better_leader(
        &self,
        client: &Client,
        me: &str,
        term: u64,
        mut report: watch::Receiver<EngineReport>,
    ) -> String {
        let deadline = self.settings.lease.poll_deadline();
        let mut logged: BTreeMap<Vip, String> = BTreeMap::new();
        loop {
            let (configured, missing) = {
                let r = report.borrow_and_update();
                let configured = self.desired.borrow().vips.clone();
                // Until the engine ran a pass of this term, its set may
                // predate the configuration: judge nothing yet.
                let current = r.role == crate::role::Role::Leader && r.term == term;
                let missing = if current {
                    unplaceable(&configured, &r)
                } else {
                    BTreeMap::new()
                };
                (configured, missing)
            };
            let mut watchers = Vec::new();
            if !missing.is_empty() {
                let own: BTreeSet<Vip> = configured
                    .iter()
                    .filter(|v| !missing.contains_key(v))
                    .copied()
                    .collect();
                match read_members(client, &self.paths, deadline).await {
                    Ok((members, w)) => {
                        watchers = w;
                        if let Some(to) =
                            better_member(&self.settings.node_id, &configured, &own, &members)
                        {
                            if self.request_handover(client, me, &to, deadline).await {
                                info!(to = %to, unplaceable = ?missing.keys().map(ToString::to_string).collect::<Vec<_>>(),
                                    "another member can serve more of the configured VIPs; handing over to it");
                                return to;
                            }
                        }
                    }
                    Err(e) => debug!(error = %e, "cannot read the members; retrying"),
                }
            }
            self.publish_unplaceable(&missing, &mut logged);
            let recheck = async {
                if missing.is_empty() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(RECHECK_EVERY).await;
            };
            tokio::select! {
                r = report.changed() => if r.is_err() {
                    std::future::pending::<()>().await;
                },
                () = any_fired(watchers) => {}
                () = recheck => {}
            }
        }
    }

    /// Shows the VIPs no member can serve in the status, with one log line
    /// per change of the set (`logged` is the set last logged).
    fn publish_unplaceable(
        &self,
        missing: &BTreeMap<Vip, String>,
        logged: &mut BTreeMap<Vip, String>,
    ) {
        if missing != logged {
            if missing.is_empty() {
                info!("every configured VIP can be served here again");
            } else {
                let list: Vec<String> = missing
                    .iter()
                    .map(|(v, why)| format!("{v}: {why}"))
                    .collect();
                warn!(vips = ?list, "VIPs that cannot be served here and that no standing member can serve with the others: held nowhere, the rest served");
            }
            logged.clone_from(missing);
        }
        self.status.send_if_modified(|x| {
            let changed = &x.unplaceable != missing;
            x.unplaceable.clone_from(missing);
            changed
        });
    }

    /// Writes the handover request naming `to`; true when written.
    async fn request_handover(
        &self,
        client: &Client,
        me: &str,
        to: &str,
        deadline: Duration,
    ) -> bool {
        let req = HandoverRequest {
            from: me.to_string(),
            to: Some(to.to_string()),
        };
        let data = serde_json::to_vec(&req).expect("plain data serializes");
        let path = &self.paths.handover;
        match nodes::put(client, &self.paths.root, path, &data, &self.acl, deadline).await {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, to = %to, "cannot write the handover request; still leading");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vips(v: &[&str]) -> BTreeSet<Vip> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn member(node: &str, servable: &[&str]) -> Member {
        Member {
            node: node.into(),
            data: MemberData {
                node: node.into(),
                servable: Some(vips(servable)),
                ..MemberData::default()
            },
            standing: true,
            drained: false,
        }
    }

    const A: &str = "192.0.2.100";
    const B: &str = "198.51.100.50";
    const C: &str = "192.0.2.101";

    #[test]
    fn only_a_strict_superset_is_a_target() {
        let configured = vips(&[A, B, C]);
        let own = vips(&[A, C]);
        // Equal: no move (that would rotate for ever).
        assert_eq!(
            better_member("n1", &configured, &own, &[member("n2", &[A, C])]),
            None
        );
        // More, but not all of ours: no move (no strict order).
        assert_eq!(
            better_member("n1", &configured, &own, &[member("n2", &[A, B])]),
            None
        );
        assert_eq!(
            better_member("n1", &configured, &own, &[member("n2", &[A, B, C])]),
            Some("n2".into())
        );
        // VIPs outside the configuration do not count.
        assert_eq!(
            better_member(
                "n1",
                &configured,
                &own,
                &[member("n2", &[A, C, "192.0.2.200"])]
            ),
            None
        );
    }

    #[test]
    fn only_a_standing_healthy_undrained_member_is_a_target() {
        let configured = vips(&[A, B]);
        let own = vips(&[A]);
        let unfit = [
            Member {
                standing: false,
                ..member("n2", &[A, B])
            },
            Member {
                drained: true,
                ..member("n2", &[A, B])
            },
            {
                let mut m = member("n2", &[A, B]);
                m.data.healthy = Some(false);
                m
            },
            {
                let mut m = member("n2", &[A, B]);
                m.data.withdrawn = Some("drained".into());
                m
            },
            {
                let mut m = member("n2", &[A, B]);
                m.data.servable = None;
                m
            },
            member("n1", &[A, B]),
        ];
        for m in unfit {
            assert_eq!(
                better_member("n1", &configured, &own, std::slice::from_ref(&m)),
                None,
                "{m:?}"
            );
        }
    }

    #[test]
    fn the_member_serving_most_wins_then_the_first_in_line() {
        let configured = vips(&[A, B, C]);
        let own = vips(&[A]);
        let ms = [
            member("n2", &[A, B]),
            member("n3", &[A, B, C]),
            member("n4", &[A, C, B]),
        ];
        assert_eq!(
            better_member("n1", &configured, &own, &ms),
            Some("n3".into())
        );
    }

    #[test]
    fn unplaceable_is_what_the_engine_cannot_serve_of_the_configuration() {
        let report = EngineReport {
            unservable: [
                (B.parse().unwrap(), "no route".to_string()),
                ("192.0.2.222".parse().unwrap(), "old".to_string()),
            ]
            .into(),
            ..EngineReport::default()
        };
        let u = unplaceable(&vips(&[A, B]), &report);
        assert_eq!(u.keys().copied().collect::<BTreeSet<_>>(), vips(&[B]));
    }
}
