//! What the address-conflict probe needs from ZooKeeper: the record of the
//! VIPs the cluster has held, `/vipd/<cluster>/held` (persistent, data
//! `{"vips": ["192.0.2.100", ...]}`), and every running member's interface
//! MACs (from the member znodes). Every node reads both into
//! `Desired::record`, so a node taking over adds the recorded VIPs at once;
//! the leader writes the record.
//!
//! Writes are versioned (compare-and-set) and happen only when the record
//! changes: when the leader holds a configured VIP the record lacks, and
//! when it sees a VIP leave the configuration. Their number follows
//! configuration changes, never time.

use std::{collections::BTreeSet, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use zookeeper_client::{Client, CreateMode, Error as ZkError, OneshotWatcher, SessionState};

use super::{
    ClusterPaths,
    nodes::MemberData,
    session::{ZkCallError, ZnodeAcl, call, follow, mkdir, until_terminated},
};
use crate::{
    role::{Desired, EngineReport, Role},
    vip::Vip,
};

/// How often the members' MACs are read again besides on changes of the
/// member znodes (a safety net for a watch lost with a connection).
const MACS_REREAD: Duration = Duration::from_secs(30);

/// The held record's data.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HeldRecord {
    pub vips: BTreeSet<Vip>,
}

impl ClusterPaths {
    /// The record of the VIPs the cluster has held.
    pub(crate) fn held(&self) -> String {
        format!("{}/held", self.root)
    }
}

/// Parses the record; unreadable data counts as empty (every VIP not held
/// now is then probed before it is added: slower, never unsafe).
fn parse(path: &str, data: &[u8]) -> HeldRecord {
    if data.iter().all(u8::is_ascii_whitespace) {
        return HeldRecord::default();
    }
    serde_json::from_slice(data).unwrap_or_else(|e| {
        warn!(znode = %path, error = %e, "unreadable held-VIP record; taken as empty (new VIPs are probed)");
        HeldRecord::default()
    })
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub(crate) fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `aa:bb:cc:dd:ee:ff`.
pub(crate) fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The record's next content, if it must change: what the leader holds of
/// the configuration is added; VIPs `removed` from the configuration go,
/// and so does everything unconfigured whenever the record is written.
pub(crate) fn next_record(
    record: &BTreeSet<Vip>,
    configured: &BTreeSet<Vip>,
    held: &BTreeSet<Vip>,
    removed: &BTreeSet<Vip>,
) -> Option<BTreeSet<Vip>> {
    let grows = held
        .iter()
        .any(|v| configured.contains(v) && !record.contains(v));
    let shrinks = record.iter().any(|v| removed.contains(v));
    if !grows && !shrinks {
        return None;
    }
    let next: BTreeSet<Vip> = record
        .iter()
        .chain(held)
        .filter(|v| configured.contains(v))
        .copied()
        .collect();
    (next != *record).then_some(next)
}

/// Keeps `desired.record` current and, while this node leads, the record
/// in ZooKeeper. Returns the session's terminal state.
pub(super) async fn keep(
    client: &Client,
    paths: &ClusterPaths,
    acl: &ZnodeAcl,
    deadline: Duration,
    desired: &watch::Sender<Desired>,
    report: watch::Receiver<EngineReport>,
) -> SessionState {
    let path = paths.held();
    tokio::select! {
        s = watch_record(client, &path, deadline, desired) => s,
        s = watch_macs(client, &paths.members, deadline, desired) => s,
        s = write_record(client, paths, acl, deadline, desired, report) => s,
    }
}

async fn watch_record(
    client: &Client,
    path: &str,
    deadline: Duration,
    desired: &watch::Sender<Desired>,
) -> SessionState {
    let read = || async {
        let (stat, w) = call("watch", path, deadline, client.check_and_watch_stat(path)).await?;
        let record = match stat {
            None => HeldRecord::default(),
            Some(_) => match call("get data", path, deadline, client.get_data(path)).await {
                Ok((data, _)) => parse(path, &data),
                Err(e) if e.is(&ZkError::NoNode) => HeldRecord::default(),
                Err(e) => return Err(e),
            },
        };
        Ok((record, vec![w]))
    };
    follow(client, None, deadline / 2, read, |r| match r {
        Ok(record) => {
            desired.send_if_modified(|d| {
                let changed = d.record.held != record.vips;
                if changed {
                    debug!(vips = record.vips.len(), "held-VIP record read");
                    d.record.held = record.vips;
                }
                changed
            });
        }
        Err(e) => debug!(error = %e, znode = %path, "cannot read the held-VIP record; retrying"),
    })
    .await
}

/// Every member's MACs, with watches on the children and on each member's
/// data: a member publishes its MACs after its first pass, not always at
/// creation. `None` for the watches: no member yet.
async fn read_macs(
    client: &Client,
    dir: &str,
    deadline: Duration,
) -> Result<(BTreeSet<[u8; 6]>, Option<Vec<OneshotWatcher>>), ZkCallError> {
    let (children, w) = match call(
        "watch children",
        dir,
        deadline,
        client.list_and_watch_children(dir),
    )
    .await
    {
        Ok((c, w)) => (c, w),
        // No member yet (the first is being created): look again soon.
        Err(e) if e.is(&ZkError::NoNode) => return Ok((BTreeSet::new(), None)),
        Err(e) => return Err(e),
    };
    let mut watchers = vec![w];
    let mut macs = BTreeSet::new();
    for child in children {
        let path = format!("{dir}/{child}");
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
                let m: MemberData = serde_json::from_slice(&data).unwrap_or_default();
                macs.extend(m.macs.iter().filter_map(|s| parse_mac(s)));
            }
            Err(e) if e.is(&ZkError::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((macs, Some(watchers)))
}

async fn watch_macs(
    client: &Client,
    dir: &str,
    deadline: Duration,
    desired: &watch::Sender<Desired>,
) -> SessionState {
    let read = || async {
        Ok(match read_macs(client, dir, deadline).await? {
            (_, None) => (None, Vec::new()),
            (macs, Some(w)) => (Some(macs), w),
        })
    };
    follow(client, Some(MACS_REREAD), deadline / 2, read, |r| match r {
        Ok(Some(macs)) => {
            desired.send_if_modified(|d| {
                let changed = d.record.macs != macs;
                if changed {
                    debug!(macs = macs.len(), "cluster members' MACs read");
                    d.record.macs = macs;
                }
                changed
            });
        }
        Ok(None) => debug!(znode = %dir, "no member znodes yet; reading again"),
        Err(e) => debug!(error = %e, znode = %dir, "cannot read the members' MACs; retrying"),
    })
    .await
}

/// While this node leads (and its engine has applied the term), writes the
/// record whenever [`next_record`] says it changes.
async fn write_record(
    client: &Client,
    paths: &ClusterPaths,
    acl: &ZnodeAcl,
    deadline: Duration,
    desired: &watch::Sender<Desired>,
    mut report: watch::Receiver<EngineReport>,
) -> SessionState {
    let path = paths.held();
    let mut state = client.state_watcher();
    let mut wanted = desired.subscribe();
    let mut configured = wanted.borrow_and_update().vips.clone();
    // VIPs seen leaving the configuration, until a write drops them.
    let mut removed: BTreeSet<Vip> = BTreeSet::new();
    loop {
        let (leading, record, held, vips) = {
            let d = wanted.borrow_and_update();
            let r = report.borrow_and_update();
            removed.extend(configured.difference(&d.vips).copied());
            removed.retain(|v| !d.vips.contains(v));
            configured.clone_from(&d.vips);
            let leading = d.role == Role::Leader && r.role == Role::Leader && r.term == d.term;
            (
                leading,
                d.record.held.clone(),
                r.held.clone(),
                d.vips.clone(),
            )
        };
        if leading && next_record(&record, &vips, &held, &removed).is_some() {
            match write(
                client,
                &path,
                &paths.root,
                acl,
                deadline,
                &vips,
                &held,
                &removed,
            )
            .await
            {
                Ok(()) => removed.clear(),
                Err(e) => {
                    debug!(error = %e, znode = %path, "cannot write the held-VIP record; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(deadline / 2) => continue,
                        s = until_terminated(&mut state) => return s,
                    }
                }
            }
        }
        tokio::select! {
            r = wanted.changed() => if r.is_err() { return std::future::pending().await },
            r = report.changed() => if r.is_err() { return std::future::pending().await },
            s = until_terminated(&mut state) => return s,
        }
    }
}

/// One compare-and-set of the record: read it with its version, apply
/// [`next_record`], write at that version (or create it); a concurrent
/// writer makes it read again.
#[expect(
    clippy::too_many_arguments,
    reason = "the record's path, the session and the three sets it is computed from"
)]
async fn write(
    client: &Client,
    path: &str,
    root: &str,
    acl: &ZnodeAcl,
    deadline: Duration,
    configured: &BTreeSet<Vip>,
    held: &BTreeSet<Vip>,
    removed: &BTreeSet<Vip>,
) -> Result<(), ZkCallError> {
    loop {
        let current = match call("get data", path, deadline, client.get_data(path)).await {
            Ok((data, stat)) => Some((parse(path, &data), stat.version)),
            Err(e) if e.is(&ZkError::NoNode) => None,
            Err(e) => return Err(e),
        };
        let record = current
            .as_ref()
            .map(|(r, _)| r.vips.clone())
            .unwrap_or_default();
        let Some(next) = next_record(&record, configured, held, removed) else {
            return Ok(());
        };
        let data = serde_json::to_vec(&HeldRecord { vips: next.clone() }).expect("plain data");
        let r = match current {
            Some((_, version)) => call(
                "set data",
                path,
                deadline,
                client.set_data(path, &data, Some(version)),
            )
            .await
            .map(drop),
            None => {
                mkdir(client, root, acl, deadline).await?;
                call(
                    "create",
                    path,
                    deadline,
                    client.create(path, &data, &acl.options(CreateMode::Persistent)),
                )
                .await
                .map(drop)
            }
        };
        match r {
            Ok(()) => {
                info!(znode = %path, vips = next.len(), "held-VIP record written");
                return Ok(());
            }
            Err(e) if e.is(&ZkError::BadVersion) || e.is(&ZkError::NodeExists) => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<Vip> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn the_record_grows_with_what_is_held_and_loses_what_leaves_the_configuration() {
        let none = set(&[]);
        let cfg = set(&["192.0.2.100", "192.0.2.101"]);
        // Holding a configured VIP the record lacks: written.
        assert_eq!(
            next_record(&none, &cfg, &set(&["192.0.2.100"]), &none),
            Some(set(&["192.0.2.100"]))
        );
        // Nothing new held, nothing removed: no write, whatever the time.
        let rec = set(&["192.0.2.100"]);
        assert_eq!(next_record(&rec, &cfg, &rec, &none), None);
        assert_eq!(next_record(&rec, &cfg, &none, &none), None);
        // A VIP removed from the configuration leaves the record.
        let cfg2 = set(&["192.0.2.101"]);
        assert_eq!(
            next_record(&rec, &cfg2, &none, &set(&["192.0.2.100"])),
            Some(none.clone())
        );
        // An unconfigured entry alone (the removal happened while nobody
        // led) waits for the next write, which drops it.
        assert_eq!(next_record(&rec, &cfg2, &none, &none), None);
        assert_eq!(
            next_record(&rec, &cfg2, &set(&["192.0.2.101"]), &none),
            Some(set(&["192.0.2.101"]))
        );
        // Held but not configured (residue on its way out): not recorded.
        assert_eq!(
            next_record(&none, &cfg2, &set(&["192.0.2.100"]), &none),
            None
        );
    }

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let mac = [0x02, 0x00, 0x5e, 0x10, 0x20, 0xff];
        assert_eq!(parse_mac(&format_mac(mac)), Some(mac));
        for bad in [
            "",
            "02:00:5e:10:20",
            "02:00:5e:10:20:ff:00",
            "zz:00:5e:10:20:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_unreadable_record_is_empty() {
        assert_eq!(parse("/p", b"not json"), HeldRecord::default());
        assert_eq!(parse("/p", b""), HeldRecord::default());
        assert_eq!(
            parse("/p", br#"{"vips": ["192.0.2.100"]}"#).vips,
            set(&["192.0.2.100"])
        );
    }
}
