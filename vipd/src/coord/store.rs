//! The VIP configuration in ZooKeeper: one persistent znode per service under
//! /vipd/<cluster>/services, data `{"vips": ["192.0.2.100", ...]}`. Parsing
//! and merging are pure; `watch_services` keeps a node's view current.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use zookeeper_client::{Client, SessionState};

use super::session::{ZkCallError, ZnodeAcl, call, mkdir, until_terminated};
use crate::vip::Vip;

/// What one service's znode holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    pub vips: Vec<Vip>,
    /// Why the znode's data was refused (then `vips` is empty and the
    /// service is ignored; the other services are not affected).
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ServiceData {
    vips: Vec<String>,
}

/// Parses a service znode's data. Empty data counts as no VIPs (a znode
/// made by hand with `create` and no data). The error names the znode path
/// and the bad value.
pub fn parse_service(path: &str, data: &[u8]) -> Result<Vec<Vip>, String> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let parsed: ServiceData = serde_json::from_slice(data).map_err(|e| {
        format!(
            "{path}: invalid data {}: {} (expected {{\"vips\": [\"192.0.2.100\", ...]}})",
            super::session::echo(data),
            super::session::clip(&e.to_string())
        )
    })?;
    let mut vips = BTreeSet::new();
    for v in &parsed.vips {
        let vip: Vip = v.parse().map_err(|e: crate::vip::InvalidVip| {
            format!(
                "{path}: invalid VIP {}: {}",
                super::session::echo(e.value.as_bytes()),
                e.reason
            )
        })?;
        vips.insert(vip);
    }
    Ok(vips.into_iter().collect())
}

/// The data written for a service.
pub fn encode_service(vips: &BTreeSet<Vip>) -> Vec<u8> {
    let data = ServiceData {
        vips: vips.iter().map(|v| v.to_string()).collect(),
    };
    serde_json::to_vec(&data).expect("a list of strings always serializes")
}

/// Every valid service's VIPs merged, and the VIPs that more than one
/// service names (served once, reported).
pub fn merge(services: &BTreeMap<String, ServiceStatus>) -> (BTreeSet<Vip>, Vec<Vip>) {
    let mut all = BTreeSet::new();
    let mut dup = BTreeSet::new();
    for s in services.values().filter(|s| s.error.is_none()) {
        for v in &s.vips {
            if !all.insert(*v) {
                dup.insert(*v);
            }
        }
    }
    (all, dup.into_iter().collect())
}

/// Reads every service (with watches) and returns the statuses and one
/// future per watch; any firing means "read again".
async fn read_services(
    client: &Client,
    dir: &str,
    acl: &ZnodeAcl,
    deadline: Duration,
) -> Result<
    (
        BTreeMap<String, ServiceStatus>,
        Vec<zookeeper_client::OneshotWatcher>,
    ),
    ZkCallError,
> {
    let (children, child_watch) = loop {
        match call(
            "list children",
            dir,
            deadline,
            client.list_and_watch_children(dir),
        )
        .await
        {
            Err(e) if e.is(&zookeeper_client::Error::NoNode) => {
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
                let status = match parse_service(&path, &data) {
                    Ok(vips) => ServiceStatus { vips, error: None },
                    Err(error) => ServiceStatus {
                        vips: Vec::new(),
                        error: Some(error),
                    },
                };
                services.insert(name, status);
            }
            // Deleted between the listing and the read: the child watch fires.
            Err(e) if e.is(&zookeeper_client::Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((services, watchers))
}

/// Keeps `publish` fed with the services until the session ends (returns
/// its terminal state). Errors are retried; the last good view stays.
pub async fn watch_services(
    client: &Client,
    dir: &str,
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
        match read_services(client, dir, acl, deadline).await {
            Ok((services, watchers)) => {
                if last.as_ref() != Some(&services) {
                    for (name, s) in &services {
                        if let Some(e) = &s.error {
                            warn!(service = %name, error = %e, "service configuration refused");
                        }
                    }
                    info!(services = services.len(), "VIP configuration read");
                    last = Some(services.clone());
                    publish(Ok(services));
                }
                let any = futures::future::select_all(
                    watchers.into_iter().map(|w| Box::pin(w.changed())),
                );
                tokio::select! {
                    _ = any => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/vipd/c/services/web";

    #[test]
    fn parses_and_refuses_with_path_and_value() {
        let v = parse_service(P, br#"{"vips": ["192.0.2.2", "192.0.2.1", "192.0.2.2"]}"#).unwrap();
        assert_eq!(
            v.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
            ["192.0.2.1", "192.0.2.2"]
        );
        assert!(parse_service(P, b"").unwrap().is_empty());
        let e = parse_service(P, br#"{"vips": ["192.0.2.1", "224.0.0.9"]}"#).unwrap_err();
        assert!(e.contains(P) && e.contains("224.0.0.9"), "{e}");
        let e = parse_service(P, b"{not json").unwrap_err();
        assert!(e.contains(P) && e.contains("{not json"), "{e}");
    }

    #[test]
    fn merge_reports_duplicates_and_skips_invalid() {
        let vip = |s: &str| s.parse::<Vip>().unwrap();
        let mut m = BTreeMap::new();
        m.insert(
            "a".into(),
            ServiceStatus {
                vips: vec![vip("192.0.2.1"), vip("192.0.2.2")],
                error: None,
            },
        );
        m.insert(
            "b".into(),
            ServiceStatus {
                vips: vec![vip("192.0.2.2")],
                error: None,
            },
        );
        m.insert(
            "c".into(),
            ServiceStatus {
                vips: vec![],
                error: Some("bad".into()),
            },
        );
        let (all, dup) = merge(&m);
        assert_eq!(all.len(), 2);
        assert_eq!(dup, vec![vip("192.0.2.2")]);
    }

    #[test]
    fn encode_round_trips() {
        let set: BTreeSet<Vip> = ["192.0.2.9".parse().unwrap()].into();
        let data = encode_service(&set);
        assert_eq!(
            parse_service(P, &data).unwrap(),
            set.into_iter().collect::<Vec<_>>()
        );
    }
}
