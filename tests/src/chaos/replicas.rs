//! The ZooKeeper replicas, read one by one: vipd's guarantees rest on
//! ZooKeeper's, so the checker verifies those too. Every second it reads
//! the election directory from each server on its own (a sync, then the
//! children and the directory's stat). Two servers that have applied the
//! same child changes (equal `pzxid`, the zxid of the directory's last
//! child change) must list the same children; if they do not, a server
//! lost (or invented) a committed transaction, and a client reading from
//! it sees candidates that do not exist or misses one that does.
//! ZooKeeper before 3.8.4 can do that after a follower restarts during a
//! DIFF sync (ZOOKEEPER-4785 and its relatives); the chaos run kills
//! servers often enough to meet it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use zookeeper_client::Client;

use crate::lab::{Host, StoppableThread};

/// One server's view of a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub pzxid: i64,
    pub children: BTreeSet<String>,
}

/// Two servers at the same `pzxid` with different children: what each
/// lists that the other does not.
pub fn disagreement(a: &View, b: &View) -> Option<(Vec<String>, Vec<String>)> {
    if a.pzxid != b.pzxid || a.children == b.children {
        return None;
    }
    Some((
        a.children.difference(&b.children).cloned().collect(),
        b.children.difference(&a.children).cloned().collect(),
    ))
}

/// A divergence found, once per pair of servers and `pzxid`.
#[derive(Clone, Debug)]
pub struct Divergence {
    pub at: Instant,
    pub servers: (usize, usize),
    pub pzxid: i64,
    /// Listed by the first server only, and by the second only.
    pub only: (Vec<String>, Vec<String>),
}

impl Divergence {
    pub fn describe(&self, t0: Instant) -> String {
        format!(
            "ZooKeeper replicas diverged at {:.1} s: zk{} and zk{} both at pzxid {:#x} of the election directory, but only zk{} lists {:?} and only zk{} lists {:?} (a server lost a committed transaction)",
            self.at.saturating_duration_since(t0).as_secs_f64(),
            self.servers.0 + 1,
            self.servers.1 + 1,
            self.pzxid,
            self.servers.0 + 1,
            self.only.0,
            self.servers.1 + 1,
            self.only.1,
        )
    }
}

/// What the watch found: divergences, and how many rounds compared at
/// least two servers (a checker that could read nothing must not pass).
#[derive(Default)]
pub struct Findings {
    pub divergences: Vec<Divergence>,
    pub compared: usize,
}

/// Watches `dir` on every server from `host`'s namespace until stopped.
pub(crate) fn watch(
    host: Host,
    servers: Vec<SocketAddr>,
    dir: String,
    credential: String,
) -> (StoppableThread, Arc<Mutex<Findings>>) {
    let found = Arc::new(Mutex::new(Findings::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, out) = (stop.clone(), found.clone());
    let thread = std::thread::spawn(move || {
        host.in_netns(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(poll(&servers, &dir, &credential, &flag, &out));
        });
    });
    (StoppableThread::new(stop, thread), found)
}

async fn poll(
    servers: &[SocketAddr],
    dir: &str,
    credential: &str,
    stop: &AtomicBool,
    out: &Mutex<Findings>,
) {
    let mut clients: Vec<Option<Client>> = servers.iter().map(|_| None).collect();
    let mut reported: BTreeSet<((usize, usize), i64)> = BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        let mut views: BTreeMap<usize, View> = BTreeMap::new();
        for (i, addr) in servers.iter().enumerate() {
            if let Some(v) = read(&mut clients[i], *addr, dir, credential).await {
                views.insert(i, v);
            }
        }
        let at = Instant::now();
        if views.len() >= 2 {
            out.lock().unwrap().compared += 1;
        }
        for (&i, a) in &views {
            for (&j, b) in views.range(i + 1..) {
                if let Some(only) = disagreement(a, b)
                    && reported.insert(((i, j), a.pzxid))
                {
                    out.lock().unwrap().divergences.push(Divergence {
                        at,
                        servers: (i, j),
                        pzxid: a.pzxid,
                        only,
                    });
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One server's view, connecting to it alone when needed; `None` while it
/// does not answer (it may be killed, frozen or out of its quorum).
async fn read(
    client: &mut Option<Client>,
    addr: SocketAddr,
    dir: &str,
    credential: &str,
) -> Option<View> {
    const DEADLINE: Duration = Duration::from_millis(800);
    if client.is_none() {
        let c = tokio::time::timeout(
            DEADLINE,
            Client::connector()
                .with_session_timeout(Duration::from_secs(6))
                .with_connection_timeout(DEADLINE)
                .with_auth("digest", credential.as_bytes())
                .connect(&addr.to_string()),
        )
        .await
        .ok()?
        .ok()?;
        *client = Some(c);
    }
    let c = client.as_ref()?;
    let got = tokio::time::timeout(DEADLINE, async {
        c.sync(dir).await?;
        c.get_children(dir).await
    })
    .await;
    match got {
        Ok(Ok((children, stat))) => Some(View {
            pzxid: stat.pzxid,
            children: children.into_iter().collect(),
        }),
        Ok(Err(zookeeper_client::Error::NoNode)) => None,
        _ => {
            // A fresh connection next time: this one may be to a server
            // that was killed or frozen.
            *client = None;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(pzxid: i64, children: &[&str]) -> View {
        View {
            pzxid,
            children: children.iter().map(|c| (*c).to_string()).collect(),
        }
    }

    #[test]
    fn only_equal_pzxid_with_different_children_is_a_divergence() {
        let a = view(7, &["n1-n_0000000034", "n3-n_0000000038"]);
        assert_eq!(disagreement(&a, &a.clone()), None);
        // A server behind another: not a divergence.
        assert_eq!(disagreement(&a, &view(5, &["n3-n_0000000038"])), None);
        assert_eq!(
            disagreement(&a, &view(7, &["n3-n_0000000038"])),
            Some((vec!["n1-n_0000000034".to_string()], vec![]))
        );
        assert_eq!(
            disagreement(&view(7, &["a"]), &view(7, &["b"])),
            Some((vec!["a".to_string()], vec!["b".to_string()]))
        );
    }
}
