//! The connections of the leader's VIPs, for its successor: the leader
//! publishes the established TCP connections of each VIP it holds in
//! `/vipd/<cluster>/connections/<vip>` (persistent; one line per
//! connection, `PORT CLIENT_ADDRESS:PORT`), and the next leader reads them
//! at the start of its term and hands them to the tickler.
//!
//! Bounded: at most [`MAX_PER_VIP`] connections per VIP (the rest counted
//! and logged). Written only when a VIP's list changed, at most every
//! `--tcp-publish-interval`, and once more when the leader lets the VIPs
//! go on purpose (handover, drain, shutdown).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::future::join_all;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use zookeeper_client::{Client, CreateMode, Error as ZkError};

use super::{
    ClusterPaths,
    session::{ZkCallError, ZnodeAcl, call, mkdir},
};
use crate::{
    net::{
        sockdiag::{ESTABLISHED, SockDiag},
        tickle::{Peer, Tickler},
    },
    role::{Desired, Role},
    vip::Vip,
};

/// Connections published per VIP, at most. A VIP's list is one znode:
/// 4096 IPv6 lines are about 200 KB, well inside ZooKeeper's 1 MB
/// `jute.maxbuffer`, and 4096 tickles go out in about a third of a second.
/// A VIP with more clients is rare for the block and file services vipd
/// fronts; those over the cap recover by their own timers.
pub(crate) const MAX_PER_VIP: usize = 4096;

/// How long a planned move waits for its last publish.
const LAST_PUBLISH_WAIT: Duration = Duration::from_millis(500);

/// The handoff as coordination sees it: the tickler, the publish
/// interval, and what this node last wrote (or read) per VIP.
#[derive(Clone, Debug)]
pub struct Handoff {
    pub tickler: Tickler,
    pub interval: Duration,
    written: Arc<Mutex<BTreeMap<Vip, Vec<Peer>>>>,
}

impl Handoff {
    pub fn new(tickler: Tickler, interval: Duration) -> Handoff {
        Handoff {
            tickler,
            interval,
            written: Arc::default(),
        }
    }

    fn written(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vip, Vec<Peer>>> {
        self.written.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ClusterPaths {
    /// Where the leader publishes its VIPs' connections.
    pub(crate) fn connections(&self) -> String {
        format!("{}/connections", self.root)
    }

    fn connections_of(&self, vip: Vip) -> String {
        format!("{}/connections/{vip}", self.root)
    }
}

/// A VIP's list as written: one `PORT CLIENT` line per connection.
pub(crate) fn encode(peers: &[Peer]) -> Vec<u8> {
    let mut s = String::with_capacity(peers.len() * 24);
    for p in peers {
        s.push_str(&format!("{} {}\n", p.port, p.client));
    }
    s.into_bytes()
}

/// Parses a list; a line that does not parse is skipped (counted in the
/// second value): a tickle for it would be a guess.
pub(crate) fn parse(data: &[u8]) -> (Vec<Peer>, usize) {
    let text = String::from_utf8_lossy(data);
    let mut bad = 0;
    let mut peers = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut f = line.split_whitespace();
        match (
            f.next().and_then(|p| p.parse::<u16>().ok()),
            f.next().and_then(|c| c.parse::<SocketAddr>().ok()),
            f.next(),
        ) {
            (Some(port), Some(client), None) => peers.push(Peer { port, client }),
            _ => bad += 1,
        }
    }
    (peers, bad)
}

/// Groups the dumped connections by VIP, sorted and capped: the lists to
/// publish and how many were left out of each.
pub(crate) fn lists(
    held: &BTreeSet<Vip>,
    conns: impl IntoIterator<Item = (SocketAddr, SocketAddr)>,
) -> BTreeMap<Vip, (Vec<Peer>, u64)> {
    let by_ip: BTreeMap<IpAddr, Vip> = held.iter().map(|v| (v.ip(), *v)).collect();
    let mut out: BTreeMap<Vip, (Vec<Peer>, u64)> =
        held.iter().map(|v| (*v, (Vec::new(), 0))).collect();
    for (local, remote) in conns {
        if let Some(vip) = by_ip.get(&local.ip()) {
            let entry = out.get_mut(vip).expect("every held VIP has a list");
            entry.0.push(Peer {
                port: local.port(),
                client: remote,
            });
        }
    }
    for (peers, overflow) in out.values_mut() {
        peers.sort();
        peers.dedup();
        if peers.len() > MAX_PER_VIP {
            *overflow = (peers.len() - MAX_PER_VIP) as u64;
            peers.truncate(MAX_PER_VIP);
        }
    }
    out
}

/// Keeps the handoff going for one session: at the start of each term
/// this node leads, reads what the last holder published and hands it to
/// the tickler; while it leads, publishes its own VIPs' connections.
pub(super) async fn keep(
    client: &Client,
    paths: &ClusterPaths,
    acl: &ZnodeAcl,
    deadline: Duration,
    desired: &watch::Sender<Desired>,
    handoff: &Handoff,
) {
    let mut wanted = desired.subscribe();
    let mut read_term = None;
    // A deadline, not a sleep per turn: lease renewals change `desired`
    // several times a second.
    let mut next_publish = tokio::time::Instant::now() + handoff.interval;
    loop {
        let (leading, term, vips) = {
            let d = wanted.borrow_and_update();
            (d.role == Role::Leader, d.term, d.vips.clone())
        };
        if leading && read_term != Some(term) {
            read_term = Some(term);
            take_over(client, paths, deadline, &vips, handoff).await;
            next_publish = tokio::time::Instant::now() + handoff.interval;
        }
        if !leading {
            read_term = None;
            if wanted.changed().await.is_err() {
                return std::future::pending().await;
            }
            continue;
        }
        tokio::select! {
            r = wanted.changed() => if r.is_err() { return std::future::pending().await },
            () = tokio::time::sleep_until(next_publish) => {
                let held = held_now(desired);
                publish(client, paths, acl, deadline, &held, handoff).await;
                next_publish = tokio::time::Instant::now() + handoff.interval;
            }
        }
    }
}

/// The VIPs this node's engine holds, as far as coordination knows: the
/// configured ones while it leads (the dump finds none on a VIP not held).
fn held_now(desired: &watch::Sender<Desired>) -> BTreeSet<Vip> {
    let d = desired.borrow();
    if d.role == Role::Leader {
        d.vips.clone()
    } else {
        BTreeSet::new()
    }
}

/// Reads every configured VIP's published list and hands each to the
/// tickler; what was read counts as written, so this node's first publish
/// replaces what is stale.
async fn take_over(
    client: &Client,
    paths: &ClusterPaths,
    deadline: Duration,
    vips: &BTreeSet<Vip>,
    handoff: &Handoff,
) {
    let reads = vips.iter().map(|vip| async move {
        let path = paths.connections_of(*vip);
        let r = call("get data", &path, deadline, client.get_data(&path)).await;
        (*vip, path, r)
    });
    let mut found = 0;
    for (vip, path, r) in join_all(reads).await {
        match r {
            Ok((data, _)) => {
                let (peers, bad) = parse(&data);
                if bad > 0 {
                    warn!(znode = %path, lines = bad, "unreadable lines in a VIP's published connections; skipped");
                }
                found += peers.len();
                handoff.written().insert(vip, peers.clone());
                handoff.tickler.expect(vip, peers);
            }
            Err(e) if e.is(&ZkError::NoNode) => {
                handoff.written().remove(&vip);
                handoff.tickler.expect(vip, Vec::new());
            }
            Err(e) => {
                warn!(znode = %path, error = %e, "cannot read a VIP's published connections; its clients are not tickled");
            }
        }
    }
    info!(
        vips = vips.len(),
        connections = found,
        "read the connections the last holder published"
    );
}

/// One publish: the dump of the `held` VIPs' established connections,
/// and a write of each list that changed since the last one.
async fn publish(
    client: &Client,
    paths: &ClusterPaths,
    acl: &ZnodeAcl,
    deadline: Duration,
    held: &BTreeSet<Vip>,
    handoff: &Handoff,
) {
    if held.is_empty() {
        return;
    }
    let ips: BTreeSet<IpAddr> = held.iter().map(|v| v.ip()).collect();
    let dumped = tokio::task::spawn_blocking(move || {
        SockDiag::open().and_then(|mut d| d.connections(&ips, ESTABLISHED))
    })
    .await;
    let conns = match dumped {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            warn!(error = %e, "cannot list the VIPs' TCP connections; not published");
            return;
        }
        Err(e) => {
            warn!(error = %e, "the connection dump failed; not published");
            return;
        }
    };
    let lists = lists(held, conns.iter().map(|c| (c.local, c.remote)));
    let changed: Vec<(Vip, Vec<Peer>, u64)> = {
        let written = handoff.written();
        lists
            .into_iter()
            .filter(|(vip, (peers, _))| written.get(vip).map_or(!peers.is_empty(), |w| w != peers))
            .map(|(vip, (peers, overflow))| (vip, peers, overflow))
            .collect()
    };
    if changed.is_empty() {
        return;
    }
    let dir = paths.connections();
    if let Err(e) = mkdir(client, &dir, acl, deadline).await {
        warn!(znode = %dir, error = %e, "cannot create the connections znode; not published");
        return;
    }
    let writes = changed.iter().map(|(vip, peers, _)| {
        let path = paths.connections_of(*vip);
        async move {
            let r = write(client, &path, acl, deadline, peers).await;
            (path, r)
        }
    });
    let results = join_all(writes).await;
    for ((vip, peers, overflow), (path, r)) in changed.into_iter().zip(results) {
        match r {
            Ok(()) => {
                if overflow > 0 {
                    warn!(vip = %vip, published = peers.len(), left_out = overflow,
                        "more TCP connections on the VIP than are published; those left out recover by their own timers at a move");
                }
                debug!(vip = %vip, connections = peers.len(), "published the VIP's connections");
                handoff.tickler.published(vip, peers.len() as u64, overflow);
                handoff.written().insert(vip, peers);
            }
            Err(e) => warn!(znode = %path, error = %e, "cannot publish the VIP's connections"),
        }
    }
}

/// Sets a VIP's list, creating its znode if missing; an empty list
/// deletes it.
async fn write(
    client: &Client,
    path: &str,
    acl: &ZnodeAcl,
    deadline: Duration,
    peers: &[Peer],
) -> Result<(), ZkCallError> {
    if peers.is_empty() {
        return match call("delete", path, deadline, client.delete(path, None)).await {
            Err(e) if !e.is(&ZkError::NoNode) => Err(e),
            _ => Ok(()),
        };
    }
    let data = encode(peers);
    match call(
        "set data",
        path,
        deadline,
        client.set_data(path, &data, None),
    )
    .await
    {
        Err(e) if e.is(&ZkError::NoNode) => call(
            "create",
            path,
            deadline,
            client.create(path, &data, &acl.options(CreateMode::Persistent)),
        )
        .await
        .map(drop),
        r => r.map(drop),
    }
}

/// The leader's last publish before it lets its VIPs go on purpose,
/// bounded so the move is not held up.
pub(super) async fn last_publish(
    client: &Client,
    paths: &ClusterPaths,
    acl: &ZnodeAcl,
    held: &BTreeSet<Vip>,
    handoff: &Handoff,
) {
    let done = tokio::time::timeout(
        LAST_PUBLISH_WAIT,
        publish(client, paths, acl, LAST_PUBLISH_WAIT, held, handoff),
    )
    .await;
    if done.is_err() {
        warn!("the last publish of the VIPs' connections took too long; moving without it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_bad_lines_are_skipped() {
        let peers = vec![
            Peer {
                port: 80,
                client: "192.0.2.50:40000".parse().unwrap(),
            },
            Peer {
                port: 3260,
                client: "[2001:db8::50]:51000".parse().unwrap(),
            },
        ];
        assert_eq!(parse(&encode(&peers)), (peers.clone(), 0));
        let mut data = encode(&peers);
        data.extend_from_slice(b"x 192.0.2.1:1\n80 nonsense\n80 192.0.2.1:1 extra\n\n");
        assert_eq!(parse(&data), (peers, 3));
    }

    #[test]
    fn lists_group_by_vip_and_are_capped() {
        let v4: Vip = "192.0.2.10".parse().unwrap();
        let v6: Vip = "2001:db8::10".parse().unwrap();
        let idle: Vip = "192.0.2.11".parse().unwrap();
        let held = BTreeSet::from([v4, v6, idle]);
        let mut conns = Vec::new();
        for i in 0..(MAX_PER_VIP + 10) {
            let port = 1024 + u16::try_from(i).unwrap();
            conns.push((
                SocketAddr::new(v4.ip(), 80),
                SocketAddr::new("192.0.2.50".parse().unwrap(), port),
            ));
        }
        conns.push((
            "[2001:db8::10]:22".parse().unwrap(),
            "[2001:db8::50]:4000".parse().unwrap(),
        ));
        // Not a held VIP's.
        conns.push((
            "192.0.2.99:80".parse().unwrap(),
            "192.0.2.50:4000".parse().unwrap(),
        ));
        let l = lists(&held, conns);
        assert_eq!(l[&v4].0.len(), MAX_PER_VIP);
        assert_eq!(l[&v4].1, 10);
        assert_eq!(l[&v6].0.len(), 1);
        assert_eq!(l[&v6].0[0].port, 22);
        assert!(l[&idle].0.is_empty());
        assert_eq!(l.len(), 3);
    }
}
