//! Leader election, one leader per cluster: every candidate owns one
//! ephemeral sequential znode /vipd/<cluster>/election/<node>-n_XXXXXXXXXX;
//! the lowest sequence leads and every other candidate watches only its
//! predecessor.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, instrument, warn};
use zookeeper_client::{Client, CreateMode};

use super::{
    lease::StatedLease,
    session::{ZkCallError, ZnodeAcl, call, mkdir},
};

/// What a candidate's znode holds. The leader rewrites it with every lease
/// renewal: the znode's version is the renewal the next in line sees.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct CandidateData {
    pub node: String,
    #[serde(default)]
    pub host: String,
    /// The leader's term (its znode's sequence number); 0 while a candidate.
    #[serde(default)]
    pub term: u64,
    /// The lease length in milliseconds; 0 while a candidate.
    #[serde(default)]
    pub lease_ms: u64,
    /// How often the leader renews, in milliseconds; 0 while a candidate
    /// (and from a vipd that did not write it).
    #[serde(default)]
    pub renew_ms: u64,
    /// The takeover margin the leader's own successor would add, in
    /// milliseconds, for a leader whose fence dies with it (so never below
    /// 100 ms: an older successor reads only this); 0 as `renew_ms`.
    #[serde(default)]
    pub margin_ms: u64,
    /// [`FENCE_PINNED`] when the leader's fence outlives its agent and
    /// covers every VIP it holds: its successor may then use the fenced
    /// rule, with `fence_margin_ms`. Absent otherwise (and from older
    /// vipds), which keeps the rule that waits for the leader's own fencing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fence: String,
    /// The margin of the fenced rule, in milliseconds; 0 when absent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fence_margin_ms: u64,
    /// Renewals written this term.
    #[serde(default)]
    pub renewal: u64,
}

/// The `fence` a leader whose fence outlives its agent writes.
pub(crate) const FENCE_PINNED: &str = "pinned";

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl CandidateData {
    /// What this data says about the writer's lease, for the next in line.
    pub(crate) fn stated_lease(&self) -> StatedLease {
        let stated = StatedLease::from_ms(self.lease_ms, self.renew_ms, self.margin_ms);
        if self.fence == FENCE_PINNED {
            stated.fence_outlives_agent(self.fence_margin_ms)
        } else {
            stated
        }
    }
}

/// Milliseconds for a znode field, rounded up so a stated lease is never
/// shorter than the real one (and a 333.3 ms lease reads 334).
pub(crate) fn ms_up(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// The sequence number of a candidate znode name (`<node>-n_0000000007`).
pub(crate) fn sequence(name: &str) -> Option<i64> {
    let (_, seq) = name.rsplit_once("-n_")?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    seq.parse().ok()
}

/// The node id a candidate znode name carries.
pub(crate) fn node_of(name: &str) -> &str {
    name.rsplit_once("-n_").map_or(name, |(node, _)| node)
}

/// Candidates in election order (ZooKeeper lists children unsorted); names
/// that are not candidates are dropped.
pub(crate) fn sort_candidates(children: Vec<String>) -> Vec<String> {
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
pub(crate) async fn ensure_candidacy(
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

    #[test]
    fn older_and_newer_data_parse() {
        let old: CandidateData = serde_json::from_str(
            r#"{"node":"n1","host":"h","term":3,"lease_ms":2000,"renewal":9}"#,
        )
        .unwrap();
        assert_eq!(
            old.stated_lease(),
            StatedLease::Stated {
                length: Duration::from_secs(2),
                renew_every: None,
                margin: None,
                fence: None
            }
        );
        let new: CandidateData = serde_json::from_str(
            r#"{"node":"n1","lease_ms":334,"renew_ms":21,"margin_ms":100,"future":1}"#,
        )
        .unwrap();
        assert_eq!(
            new.stated_lease(),
            StatedLease::Stated {
                length: Duration::from_millis(334),
                renew_every: Some(Duration::from_millis(21)),
                margin: Some(Duration::from_millis(100)),
                fence: None
            }
        );
        // A leader whose fence outlives it says so; anything else in the
        // field keeps the unfenced rule.
        let pinned: CandidateData = serde_json::from_str(
            r#"{"node":"n1","lease_ms":200,"renew_ms":13,"margin_ms":100,"fence":"pinned","fence_margin_ms":25}"#,
        )
        .unwrap();
        assert_eq!(
            pinned.stated_lease(),
            StatedLease::from_ms(200, 13, 100).fence_outlives_agent(25)
        );
        for other in [r#""""#, r#""agent""#, r#""Pinned""#] {
            let d: CandidateData = serde_json::from_str(&format!(
                r#"{{"node":"n1","lease_ms":200,"fence":{other},"fence_margin_ms":25}}"#
            ))
            .unwrap();
            assert_eq!(d.stated_lease(), StatedLease::from_ms(200, 0, 0), "{other}");
        }
        // Unpinned data is written as before: no new fields.
        let plain = serde_json::to_string(&CandidateData {
            node: "n1".into(),
            lease_ms: 200,
            ..CandidateData::default()
        })
        .unwrap();
        assert!(!plain.contains("fence"), "{plain}");
        let candidate: CandidateData = serde_json::from_str(r#"{"node":"n1"}"#).unwrap();
        assert_eq!(candidate.stated_lease(), StatedLease::Unknown);
        assert_eq!(ms_up(Duration::from_nanos(333_333_334)), 334);
        assert_eq!(ms_up(Duration::from_millis(500)), 500);
    }
}
