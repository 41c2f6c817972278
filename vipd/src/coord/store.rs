//! The VIP configuration in ZooKeeper: one persistent znode per service under
//! /vipd/<cluster>/services, data `{"vips": ["192.0.2.100", ...]}`, and the
//! last good VIPs of each service under /vipd/<cluster>/applied, written by
//! the leader, so a znode that cannot be parsed keeps what it had on every
//! node. Parsing and merging are pure; `watch_services` keeps a node's view
//! current and `persist_applied` the leader's record.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use zookeeper_client::{Client, CreateMode, Error as ZkError, SessionState};

use super::{
    ClusterPaths,
    session::{ZkCallError, ZnodeAcl, any_fired, call, mkdir, until_terminated},
};
use crate::vip::Vip;

/// A service's data larger than this is refused whole: ZooKeeper's own
/// limit is 1 MB, and 8192 IPv6 VIPs (what the XDP maps hold) take about
/// 350 kB.
pub(crate) const MAX_SERVICE_DATA: usize = 512 * 1024;

/// How much of a refused value an error message quotes.
const QUOTE_MAX: usize = 64;

/// One entry of a service's list that is not a VIP: dropped alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedValue {
    /// The entry as written (JSON text when it is not a string), shortened.
    pub value: String,
    pub reason: String,
}

/// What one service's znode gives this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    /// The VIPs served for it: the znode's valid entries, or its last good
    /// VIPs when the znode cannot be parsed (`last_good`).
    pub vips: Vec<Vip>,
    /// Entries of the list that are not VIPs: dropped, the others kept.
    #[serde(default)]
    pub refused: Vec<RefusedValue>,
    /// Why the znode's data cannot be parsed at all (not JSON, wrong shape,
    /// not UTF-8, too large); `None` when it parses.
    pub error: Option<String>,
    /// `vips` are the last good configuration, kept while `error` says why
    /// the znode's own data is refused.
    #[serde(default)]
    pub last_good: bool,
}

/// A service znode's data, parsed: the valid VIPs (sorted, without
/// duplicates) and the entries refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ParsedService {
    pub vips: Vec<Vip>,
    pub refused: Vec<RefusedValue>,
}

impl ParsedService {
    /// The VIPs, or an error naming `path` and the first refused entry
    /// (vipctl edits a service only when every entry is valid).
    pub fn strict(self, path: &str) -> Result<Vec<Vip>, String> {
        match self.refused.first() {
            None => Ok(self.vips),
            Some(r) => Err(format!("{path}: invalid VIP {:?}: {}", r.value, r.reason)),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct ServiceData {
    vips: Vec<String>,
}

/// At most [`QUOTE_MAX`] characters of `text`, marked when shortened.
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_MAX) {
        None => text.to_string(),
        Some((end, _)) => format!("{}... ({} bytes)", &text[..end], text.len()),
    }
}

/// Parses a service znode's data. Empty data counts as no VIPs (a znode
/// made by hand with `create` and no data). An entry that is not a VIP is
/// refused alone; data that is no `{"vips": [...]}` at all is an error
/// naming the znode path and (the start of) the data.
pub(crate) fn parse_service(path: &str, data: &[u8]) -> Result<ParsedService, String> {
    if data.len() > MAX_SERVICE_DATA {
        return Err(format!(
            "{path}: {} bytes of data, more than the {MAX_SERVICE_DATA} a service may hold",
            data.len()
        ));
    }
    let text =
        std::str::from_utf8(data).map_err(|e| format!("{path}: data is not UTF-8 text ({e})"))?;
    if text.trim().is_empty() {
        return Ok(ParsedService::default());
    }
    let shape = "expected {\"vips\": [\"192.0.2.100\", ...]}";
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("{path}: invalid data {:?}: {e} ({shape})", quote(text)))?;
    let Some(list) = value.get("vips").and_then(serde_json::Value::as_array) else {
        return Err(format!(
            "{path}: data {:?} has no list \"vips\" ({shape})",
            quote(text)
        ));
    };
    let mut vips = BTreeSet::new();
    let mut refused = Vec::new();
    for entry in list {
        match entry.as_str() {
            Some(s) => match s.parse::<Vip>() {
                Ok(vip) => {
                    vips.insert(vip);
                }
                Err(e) => refused.push(RefusedValue {
                    value: quote(s),
                    reason: e.reason.to_string(),
                }),
            },
            None => refused.push(RefusedValue {
                value: quote(&entry.to_string()),
                reason: "not a string: a VIP is written as \"192.0.2.100\"".into(),
            }),
        }
    }
    Ok(ParsedService {
        vips: vips.into_iter().collect(),
        refused,
    })
}

/// The data written for a service (and for its last good record).
pub(crate) fn encode_service(vips: &BTreeSet<Vip>) -> Vec<u8> {
    let data = ServiceData {
        vips: vips.iter().map(|v| v.to_string()).collect(),
    };
    serde_json::to_vec(&data).expect("a list of strings always serializes")
}

/// Every service's VIPs merged (the last good ones of a service whose
/// znode cannot be parsed), and the VIPs that more than one service names
/// (served once, reported).
pub(crate) fn merge(services: &BTreeMap<String, ServiceStatus>) -> (BTreeSet<Vip>, Vec<Vip>) {
    let mut all = BTreeSet::new();
    let mut dup = BTreeSet::new();
    for s in services.values() {
        for v in &s.vips {
            if !all.insert(*v) {
                dup.insert(*v);
            }
        }
    }
    (all, dup.into_iter().collect())
}

impl ClusterPaths {
    /// Where the leader keeps each service's last good VIPs.
    pub(crate) fn applied(&self) -> String {
        format!("{}/applied", self.root)
    }

    /// The last good record of `service`.
    pub(crate) fn applied_service(&self, service: &str) -> String {
        format!("{}/applied/{service}", self.root)
    }
}

/// The status of a service whose znode holds `data`: parsed, or, when it
/// cannot be, the last good VIPs (`last_good`: the leader's record, else
/// what this node last had).
fn status_of(
    path: &str,
    data: &[u8],
    last_good: Option<Vec<Vip>>,
    seen: Option<&ServiceStatus>,
) -> ServiceStatus {
    match parse_service(path, data) {
        Ok(p) => ServiceStatus {
            vips: p.vips,
            refused: p.refused,
            error: None,
            last_good: false,
        },
        Err(error) => {
            let kept = last_good.or_else(|| seen.map(|s| s.vips.clone()));
            ServiceStatus {
                last_good: kept.is_some(),
                vips: kept.unwrap_or_default(),
                refused: Vec::new(),
                error: Some(error),
            }
        }
    }
}

/// Reads the leader's last good record of a service (with a watch, also
/// when it does not exist yet). `None`: none, or unreadable.
async fn read_applied(
    client: &Client,
    path: &str,
    deadline: Duration,
) -> Result<(Option<Vec<Vip>>, zookeeper_client::OneshotWatcher), ZkCallError> {
    match call("get data", path, deadline, client.get_and_watch_data(path)).await {
        Ok((data, _, w)) => {
            let vips = parse_service(path, &data).ok().map(|p| p.vips);
            Ok((vips, w))
        }
        Err(e) if e.is(&ZkError::NoNode) => {
            let (_, w) = call("watch", path, deadline, client.check_and_watch_stat(path)).await?;
            Ok((None, w))
        }
        Err(e) => Err(e),
    }
}

/// Reads every service (with watches) and returns the statuses and one
/// future per watch; any firing means "read again". `seen`: the view
/// before, whose VIPs a znode that turned unparseable keeps when the
/// leader recorded none.
async fn read_services(
    client: &Client,
    paths: &ClusterPaths,
    acl: &ZnodeAcl,
    deadline: Duration,
    seen: Option<&BTreeMap<String, ServiceStatus>>,
) -> Result<
    (
        BTreeMap<String, ServiceStatus>,
        Vec<zookeeper_client::OneshotWatcher>,
    ),
    ZkCallError,
> {
    let dir = &paths.services;
    let (children, child_watch) = loop {
        match call(
            "list children",
            dir,
            deadline,
            client.list_and_watch_children(dir),
        )
        .await
        {
            Err(e) if e.is(&ZkError::NoNode) => {
                mkdir(client, dir, acl, deadline).await?;
            }
            r => break r?,
        }
    };
    let mut watchers = vec![child_watch];
    let mut services = BTreeMap::new();
    for name in children {
        let path = format!("{dir}/{name}");
        match call(
            "get data",
            &path,
            deadline,
            client.get_and_watch_data(&path),
        )
        .await
        {
            Ok((data, _, w)) => {
                watchers.push(w);
                let last_good = if parse_service(&path, &data).is_err() {
                    let (vips, w) =
                        read_applied(client, &paths.applied_service(&name), deadline).await?;
                    watchers.push(w);
                    vips
                } else {
                    None
                };
                let before = seen.and_then(|s| s.get(&name));
                services.insert(name, status_of(&path, &data, last_good, before));
            }
            // Deleted between the listing and the read: the child watch fires.
            Err(e) if e.is(&ZkError::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((services, watchers))
}

/// Logs what changed in a service's refusals: one line per change.
fn log_changes(
    before: Option<&BTreeMap<String, ServiceStatus>>,
    now: &BTreeMap<String, ServiceStatus>,
) {
    for (name, s) in now {
        let was = before.and_then(|b| b.get(name));
        if was.map(|w| &w.refused) != Some(&s.refused) && !s.refused.is_empty() {
            let refused: Vec<String> = s
                .refused
                .iter()
                .map(|r| format!("{:?}: {}", r.value, r.reason))
                .collect();
            warn!(service = %name, refused = ?refused, vips = s.vips.len(),
                "service entries refused; its other VIPs are kept");
        }
        if was.map(|w| (&w.error, &w.vips)) != Some((&s.error, &s.vips))
            && let Some(e) = &s.error
        {
            if s.last_good {
                let vips: Vec<String> = s.vips.iter().map(ToString::to_string).collect();
                warn!(service = %name, error = %e, kept = ?vips,
                    "service configuration cannot be parsed; keeping its last good VIPs");
            } else {
                warn!(service = %name, error = %e,
                    "service configuration cannot be parsed and no good one was seen; it has no VIPs");
            }
        }
    }
}

/// Keeps `publish` fed with the services until the session ends (returns
/// its terminal state). Errors are retried; the last good view stays.
pub(crate) async fn watch_services(
    client: &Client,
    paths: &ClusterPaths,
    acl: &ZnodeAcl,
    deadline: Duration,
    mut publish: impl FnMut(Result<BTreeMap<String, ServiceStatus>, String>),
) -> SessionState {
    let mut state = client.state_watcher();
    let mut last: Option<BTreeMap<String, ServiceStatus>> = None;
    loop {
        if state.peek_state().is_terminated() {
            return state.peek_state();
        }
        match read_services(client, paths, acl, deadline, last.as_ref()).await {
            Ok((services, watchers)) => {
                if last.as_ref() != Some(&services) {
                    log_changes(last.as_ref(), &services);
                    info!(services = services.len(), "VIP configuration read");
                    last = Some(services.clone());
                    publish(Ok(services));
                }
                tokio::select! {
                    () = any_fired(watchers) => {}
                    s = until_terminated(&mut state) => return s,
                }
            }
            Err(e) => {
                warn!(error = %e, "reading the VIP configuration failed; retrying");
                publish(Err(e.to_string()));
                tokio::select! {
                    _ = tokio::time::sleep(deadline / 2) => {}
                    s = until_terminated(&mut state) => return s,
                }
            }
        }
    }
}

/// The leader's side of the last good records: while `leading` says so,
/// makes /vipd/<cluster>/applied hold each parsed service's VIPs (written
/// with the version read: compare-and-set) and nothing for a service that
/// is gone. A service whose znode cannot be parsed keeps its record.
/// Runs for the session's life.
pub(crate) async fn persist_applied(
    client: &Client,
    paths: &ClusterPaths,
    acl: &ZnodeAcl,
    deadline: Duration,
    mut services: watch::Receiver<Option<BTreeMap<String, ServiceStatus>>>,
    mut leading: watch::Receiver<bool>,
) {
    loop {
        let lead = *leading.borrow_and_update();
        let current = services.borrow_and_update().clone();
        let done = match (lead, current) {
            (true, Some(s)) => match sync_applied(client, paths, acl, deadline, &s).await {
                Ok(()) => true,
                Err(e) => {
                    debug!(error = %e, "cannot record the last good VIP configuration; retrying");
                    false
                }
            },
            _ => true,
        };
        let retry = async {
            if done {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(deadline / 2).await;
        };
        tokio::select! {
            r = services.changed() => if r.is_err() { return },
            r = leading.changed() => if r.is_err() { return },
            () = retry => {}
        }
    }
}

/// One pass of [`persist_applied`].
async fn sync_applied(
    client: &Client,
    paths: &ClusterPaths,
    acl: &ZnodeAcl,
    deadline: Duration,
    services: &BTreeMap<String, ServiceStatus>,
) -> Result<(), ZkCallError> {
    let dir = paths.applied();
    let existing = match call("list children", &dir, deadline, client.list_children(&dir)).await {
        Ok(c) => c,
        Err(e) if e.is(&ZkError::NoNode) => {
            mkdir(client, &dir, acl, deadline).await?;
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    for (name, s) in services.iter().filter(|(_, s)| s.error.is_none()) {
        let path = paths.applied_service(name);
        let want = encode_service(&s.vips.iter().copied().collect());
        match call("get data", &path, deadline, client.get_data(&path)).await {
            Ok((data, _)) if data == want => {}
            Ok((_, stat)) => {
                call(
                    "set data",
                    &path,
                    deadline,
                    client.set_data(&path, &want, Some(stat.version)),
                )
                .await?;
                info!(service = %name, vips = s.vips.len(), "last good VIP configuration recorded");
            }
            Err(e) if e.is(&ZkError::NoNode) => {
                call(
                    "create",
                    &path,
                    deadline,
                    client.create(&path, &want, &acl.options(CreateMode::Persistent)),
                )
                .await?;
                info!(service = %name, vips = s.vips.len(), "last good VIP configuration recorded");
            }
            Err(e) => return Err(e),
        }
    }
    for name in existing.iter().filter(|n| !services.contains_key(*n)) {
        let path = paths.applied_service(name);
        match call("delete", &path, deadline, client.delete(&path, None)).await {
            Ok(()) => info!(service = %name, "service deleted; its last good record removed"),
            Err(e) if e.is(&ZkError::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/vipd/c/services/web";

    fn vip(s: &str) -> Vip {
        s.parse().unwrap()
    }

    #[test]
    fn parses_sorted_without_duplicates() {
        let p = parse_service(P, br#"{"vips": ["192.0.2.2", "192.0.2.1", "192.0.2.2"]}"#).unwrap();
        assert_eq!(p.vips, vec![vip("192.0.2.1"), vip("192.0.2.2")]);
        assert!(p.refused.is_empty());
        assert_eq!(parse_service(P, b"").unwrap(), ParsedService::default());
        assert_eq!(parse_service(P, b" \n").unwrap(), ParsedService::default());
    }

    /// Every kind of bad entry, beside two good VIPs: dropped alone, named.
    #[test]
    fn an_invalid_entry_is_refused_alone() {
        let bad = [
            (r#""300.1.1.1""#, "300.1.1.1"),
            (r#""192.0.2""#, "192.0.2"),
            (r#""2001:db8::g""#, "2001:db8::g"),
            (r#""224.0.0.9""#, "224.0.0.9"),
            (r#""ff02::1""#, "ff02::1"),
            (r#""192.0.2.7/24""#, "192.0.2.7/24"),
            (r#""fe80::1%eth0""#, "fe80::1%eth0"),
            (r#""127.0.0.1""#, "127.0.0.1"),
            (r#""""#, ""),
            ("17", "17"),
            ("null", "null"),
            (r#"["192.0.2.9"]"#, r#"["192.0.2.9"]"#),
            (r#"{"ip": "192.0.2.9"}"#, r#"{"ip":"192.0.2.9"}"#),
        ];
        for (entry, shown) in bad {
            let data = format!(r#"{{"vips": ["192.0.2.100", {entry}, "2001:db8::100"]}}"#);
            let p = parse_service(P, data.as_bytes()).unwrap_or_else(|e| panic!("{entry}: {e}"));
            assert_eq!(
                p.vips,
                vec![vip("192.0.2.100"), vip("2001:db8::100")],
                "{entry}"
            );
            assert_eq!(p.refused.len(), 1, "{entry}: {:?}", p.refused);
            assert_eq!(p.refused[0].value, shown, "{entry}");
            assert!(!p.refused[0].reason.is_empty());
            let e = p.strict(P).unwrap_err();
            assert!(e.contains(P), "{e}");
        }
    }

    #[test]
    fn unparseable_data_is_an_error_naming_path_and_data() {
        let huge = format!(r#"{{"vips": ["{}"]}}"#, "1".repeat(MAX_SERVICE_DATA));
        let cases: [(&[u8], &str); 7] = [
            (b"{not json", "{not json"),
            (b"[\"192.0.2.1\"]", "no list"),
            (b"{\"vip\": [\"192.0.2.1\"]}", "no list"),
            (b"{\"vips\": \"192.0.2.1\"}", "no list"),
            (b"\xff\xfe{}", "UTF-8"),
            (b"192.0.2.1", "192.0.2.1"),
            (huge.as_bytes(), "more than"),
        ];
        for (data, needle) in cases {
            let e = parse_service(P, data).unwrap_err();
            assert!(e.contains(P) && e.contains(needle), "{e}");
            assert!(e.len() < 400, "the error quotes a bounded part: {e}");
        }
    }

    #[test]
    fn unparseable_keeps_the_recorded_vips_else_those_seen() {
        let good = vec![vip("192.0.2.1")];
        let seen = ServiceStatus {
            vips: vec![vip("192.0.2.9")],
            ..ServiceStatus::default()
        };
        let s = status_of(P, b"{x", Some(good.clone()), Some(&seen));
        assert!(s.last_good && s.error.is_some());
        assert_eq!(s.vips, good);
        let s = status_of(P, b"{x", None, Some(&seen));
        assert!(s.last_good);
        assert_eq!(s.vips, seen.vips);
        let s = status_of(P, b"{x", None, None);
        assert!(!s.last_good && s.vips.is_empty());
        // Empty data is no VIPs, not unparseable.
        let s = status_of(P, b"", Some(good), Some(&seen));
        assert!(s.error.is_none() && !s.last_good && s.vips.is_empty());
    }

    #[test]
    fn merge_reports_duplicates_and_keeps_last_good() {
        let mut m = BTreeMap::new();
        m.insert(
            "a".into(),
            ServiceStatus {
                vips: vec![vip("192.0.2.1"), vip("192.0.2.2")],
                ..ServiceStatus::default()
            },
        );
        m.insert(
            "b".into(),
            ServiceStatus {
                vips: vec![vip("192.0.2.2")],
                ..ServiceStatus::default()
            },
        );
        m.insert(
            "c".into(),
            ServiceStatus {
                vips: vec![vip("192.0.2.3")],
                error: Some("bad".into()),
                last_good: true,
                ..ServiceStatus::default()
            },
        );
        let (all, dup) = merge(&m);
        assert_eq!(all.len(), 3);
        assert_eq!(dup, vec![vip("192.0.2.2")]);
    }

    #[test]
    fn encode_round_trips() {
        let set: BTreeSet<Vip> = [vip("192.0.2.9"), vip("2001:db8::9")].into();
        let data = encode_service(&set);
        assert_eq!(
            parse_service(P, &data).unwrap().vips,
            set.into_iter().collect::<Vec<_>>()
        );
    }
}
