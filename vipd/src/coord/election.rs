//! Leader election (R1): every candidate owns one ephemeral sequential znode
//! /vipd/<cluster>/election/<node>-n_XXXXXXXXXX; the lowest sequence leads and
//! every other candidate watches only its predecessor.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, instrument, warn};
use zookeeper_client::{Client, CreateMode};

use super::session::{ZkCallError, ZnodeAcl, call, mkdir};

/// What a candidate's znode holds. The leader rewrites it with every lease
/// renewal (R15): the znode's version is the renewal the next in line sees.
#[derive(Debug, Serialize, Deserialize)]
pub struct CandidateData {
    pub node: String,
    #[serde(default)]
    pub host: String,
    /// The leader's term (its znode's sequence number); 0 while a candidate.
    #[serde(default)]
    pub term: u64,
    /// The lease length in milliseconds; 0 while a candidate.
    #[serde(default)]
    pub lease_ms: u64,
    /// Renewals written this term.
    #[serde(default)]
    pub renewal: u64,
}

/// The sequence number of a candidate znode name (`<node>-n_0000000007`).
pub fn sequence(name: &str) -> Option<i64> {
    let (_, seq) = name.rsplit_once("-n_")?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    seq.parse().ok()
}

/// The node id a candidate znode name carries.
pub fn node_of(name: &str) -> &str {
    name.rsplit_once("-n_").map_or(name, |(node, _)| node)
}

/// Candidates in election order (ZooKeeper lists children unsorted); names
/// that are not candidates are dropped.
pub fn sort_candidates(children: Vec<String>) -> Vec<String> {
    let mut c: Vec<(i64, String)> = children
        .into_iter()
        .filter_map(|n| sequence(&n).map(|s| (s, n)))
        .collect();
    c.sort();
    c.into_iter().map(|(_, n)| n).collect()
}

/// Makes sure this session has exactly one candidate znode and returns its
/// name. A create whose answer was lost may still have made the znode, so
/// this session's own ephemerals are looked up first (an orphan of ours
/// that sorts lowest would otherwise block the election until we expire).
#[instrument(skip(client, acl, data), fields(dir = %dir, node = %node))]
pub async fn ensure_candidacy(
    client: &Client,
    dir: &str,
    node: &str,
    data: &[u8],
    acl: &ZnodeAcl,
    deadline: Duration,
) -> Result<String, ZkCallError> {
    mkdir(client, dir, acl, deadline).await?;
    let prefix = format!("{dir}/{node}-n_");
    let mut mine: Vec<String> = call(
        "list ephemerals",
        dir,
        deadline,
        client.list_ephemerals(dir),
    )
    .await?
    .into_iter()
    .filter_map(|p| p.strip_prefix(&format!("{dir}/")).map(str::to_string))
    .filter(|n| n.starts_with(&format!("{node}-n_")))
    .collect();
    mine = sort_candidates(mine);
    if let Some((keep, extra)) = mine.split_first() {
        for n in extra {
            let path = format!("{dir}/{n}");
            warn!(znode = %path, "deleting a second candidacy of this session");
            call("delete", &path, deadline, client.delete(&path, None)).await?;
        }
        info!(znode = %format!("{dir}/{keep}"), "candidacy found (created before a lost answer)");
        return Ok(keep.clone());
    }
    let (_, seq) = call(
        "create",
        &prefix,
        deadline,
        client.create(&prefix, data, &acl.options(CreateMode::EphemeralSequential)),
    )
    .await?;
    let name = format!("{node}-n_{seq}");
    info!(znode = %format!("{dir}/{name}"), "standing for election");
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_by_sequence_not_name() {
        let sorted = sort_candidates(vec![
            "b-n_0000000002".into(),
            "a-n_0000000010".into(),
            "c-n-x-n_0000000001".into(),
            "junk".into(),
            "d-n_".into(),
        ]);
        assert_eq!(
            sorted,
            ["c-n-x-n_0000000001", "b-n_0000000002", "a-n_0000000010"]
        );
        assert_eq!(node_of("c-n-x-n_0000000001"), "c-n-x");
        assert_eq!(sequence("a-n_0000000010"), Some(10));
    }
}
