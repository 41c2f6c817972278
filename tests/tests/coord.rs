//! Coordination against a real ZooKeeper: election and failover, the
//! VIP configuration and vipctl's writes, fencing, VIPs that cannot be
//! served, and digest auth. Each "node" is a `coord::run` task with a fake engine
//! that does what it is told at once and records when.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use vipd::{
    coord::{
        self, CoordError, CoordStatus, VipCommand, ZkAccess, ZkAuth, ZkSettings, lease::LeaseTimes,
        run_vip_command,
    },
    role::{Desired, EngineReport, Role},
    vip::Vip,
};
use vipd_tests::zk::{ZkMemberSpec, ZkServer};
use zookeeper_client::{Client, CreateMode, Error as ZkError};

fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

/// One role change as the fake engine saw it.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    role: Role,
    term: u64,
}

struct Node {
    id: String,
    desired: watch::Receiver<Desired>,
    status: watch::Receiver<CoordStatus>,
    seen: Arc<Mutex<Vec<Seen>>>,
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<(), CoordError>>>,
}

struct NodeOpts {
    timeout: Duration,
    auth: Option<ZkAuth>,
    /// The fake engine reports every desired VIP as unroutable.
    no_route: bool,
    /// `--lease` (default: a third of the session timeout).
    lease: Option<Duration>,
}

impl Default for NodeOpts {
    fn default() -> Self {
        NodeOpts {
            timeout: Duration::from_secs(1),
            auth: None,
            no_route: false,
            lease: None,
        }
    }
}

fn start_node(hosts: &str, cluster: &str, id: &str, opts: NodeOpts) -> Node {
    let (desired_tx, desired_rx) = watch::channel(Desired::default());
    let (report_tx, report_rx) = watch::channel(EngineReport::default());
    let (status_tx, status_rx) = watch::channel(CoordStatus::default());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let cancel = CancellationToken::new();
    // The fake engine: mirrors desired into its report at once.
    let mut d = desired_rx.clone();
    let log = seen.clone();
    let no_route = opts.no_route;
    tokio::spawn(async move {
        let mut last = (Role::Follower, 0);
        let mut passes = 0;
        loop {
            let want = d.borrow_and_update().clone();
            passes += 1;
            if (want.role, want.term) != last {
                last = (want.role, want.term);
                log.lock().unwrap().push(Seen {
                    at: Instant::now(),
                    role: want.role,
                    term: want.term,
                });
            }
            let leader = want.role == Role::Leader;
            let _ = report_tx.send(EngineReport {
                role: want.role,
                term: want.term,
                held: if leader && !no_route {
                    want.vips.clone()
                } else {
                    BTreeSet::new()
                },
                servable: if no_route {
                    BTreeSet::new()
                } else {
                    want.vips.clone()
                },
                unservable: if no_route {
                    want.vips
                        .iter()
                        .map(|v| (*v, "no route".to_string()))
                        .collect()
                } else {
                    Default::default()
                },
                // Its heartbeat: a pass and the grant applied at every change.
                passes,
                lease_applied: want.lease.map(|l| l.until),
                ..EngineReport::default()
            });
            if d.changed().await.is_err() {
                return;
            }
        }
    });
    let settings = ZkSettings {
        hosts: hosts.to_string(),
        cluster: cluster.to_string(),
        node_id: id.to_string(),
        session_timeout: opts.timeout,
        // In-process nodes without a credential stand for an insecure run.
        insecure: opts.auth.is_none(),
        auth: opts.auth,
        lease: LeaseTimes::new(opts.timeout, opts.lease, Duration::from_millis(100))
            .expect("valid lease"),
        fence_outlives_agent: false,
    };
    let task = tokio::spawn(coord::run(
        settings,
        desired_tx,
        report_rx,
        status_tx,
        cancel.clone(),
    ));
    Node {
        id: id.to_string(),
        desired: desired_rx,
        status: status_rx,
        seen,
        cancel,
        task: Some(task),
    }
}

impl Node {
    fn role(&self) -> Role {
        self.desired.borrow().role
    }

    fn term(&self) -> u64 {
        self.desired.borrow().term
    }

    fn vips(&self) -> Vec<String> {
        self.desired
            .borrow()
            .vips
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// First time at or after `after` this node was seen in `role`.
    fn first(&self, role: Role, after: Instant) -> Option<Instant> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.role == role && s.at >= after)
            .map(|s| s.at)
    }

    async fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let r = tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .unwrap_or_else(|_| panic!("node {} did not stop within 15 s", self.id));
            r.expect("coord task panicked").expect("coord::run failed");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn leaders(nodes: &[Node]) -> Vec<usize> {
    (0..nodes.len())
        .filter(|&i| nodes[i].role() == Role::Leader)
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn vip(hosts: &str, cluster: &str, cmd: VipCommand) -> String {
    run_vip_command(hosts, cluster, ZkAccess::insecure(), cmd.clone())
        .await
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// A node started alone in its cluster, once it leads (within 20 s: the
/// first election waits for ZooKeeper's first session).
async fn start_leader(hosts: &str, cluster: &str, id: &str, opts: NodeOpts) -> Node {
    let node = start_node(hosts, cluster, id, opts);
    wait_until(&format!("{id} leads"), Duration::from_secs(20), || {
        node.role() == Role::Leader
    })
    .await;
    node
}

/// `vipctl vip set <service> <vips>` in `cluster`: what it printed.
async fn set_vips(hosts: &str, cluster: &str, service: &str, vips: &[&str]) -> String {
    vip(
        hosts,
        cluster,
        VipCommand::Set {
            service: service.into(),
            vips: strings(vips),
        },
    )
    .await
}

async fn raw_client(hosts: &str) -> Client {
    Client::connector()
        .with_session_timeout(Duration::from_secs(5))
        .connect(hosts)
        .await
        .expect("raw ZooKeeper client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_candidates_elect_one_leader_and_fail_over() {
    init_log();
    let zk = ZkServer::start_standalone(Ipv4Addr::LOCALHOST, None);
    let hosts = zk.connect_string();
    let t = Duration::from_secs(1);
    let mut nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| {
            start_node(
                &hosts,
                "elect",
                id,
                NodeOpts {
                    timeout: t,
                    ..Default::default()
                },
            )
        })
        .collect();
    wait_until("one leader", Duration::from_secs(20), || {
        leaders(&nodes).len() == 1
    })
    .await;
    // It stays exactly one.
    for _ in 0..50 {
        assert_eq!(leaders(&nodes).len(), 1, "leaders: {:?}", leaders(&nodes));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = leaders(&nodes)[0];
    // The term is the leader's znode sequence number: one of the three
    // candidacies, the same in every node's status.
    let first_term = nodes[first].term();
    assert!(first_term <= 2, "term {first_term}");
    let leader_id = nodes[first].id.clone();
    wait_until(
        "every node names the leader",
        Duration::from_secs(5),
        || {
            nodes
                .iter()
                .all(|n| n.status.borrow().leader.as_deref() == Some(leader_id.as_str()))
        },
    )
    .await;
    assert!(nodes[first].status.borrow().is_leader);
    let listing = vip(&hosts, "elect", VipCommand::List { json: false }).await;
    assert!(
        listing.contains(&format!("leader: {leader_id}")),
        "{listing}"
    );

    // Cancel the leader: another node leads within T + 1 s.
    let stopped_at = Instant::now();
    nodes[first].stop().await;
    assert_eq!(nodes[first].role(), Role::Follower);
    assert_eq!(nodes[first].status.borrow().session, "closed");
    let rest: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    wait_until("a new leader", t + Duration::from_secs(1), || {
        rest.iter()
            .filter(|&&i| nodes[i].role() == Role::Leader)
            .count()
            == 1
    })
    .await;
    let second = *rest
        .iter()
        .find(|&&i| nodes[i].role() == Role::Leader)
        .unwrap();
    assert!(stopped_at.elapsed() < t + Duration::from_secs(1));
    assert!(
        nodes[second].term() > first_term,
        "terms increase across the cluster: {} then {}",
        first_term,
        nodes[second].term()
    );
    wait_until(
        "the survivors show the new term",
        Duration::from_secs(5),
        || {
            rest.iter()
                .all(|&i| nodes[i].status.borrow().term == Some(nodes[second].term()))
        },
    )
    .await;

    // And once more; each node's terms only ever increase.
    nodes[second].stop().await;
    let third = *rest.iter().find(|&&i| i != second).unwrap();
    wait_until("the last node leads", t + Duration::from_secs(1), || {
        nodes[third].role() == Role::Leader
    })
    .await;
    for n in &nodes {
        let terms: Vec<u64> = n
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.role == Role::Leader)
            .map(|s| s.term)
            .collect();
        assert!(terms.windows(2).all(|w| w[0] < w[1]), "{}: {terms:?}", n.id);
    }
    nodes[third].stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_config_follows_writes_and_isolates_bad_data() {
    init_log();
    let zk = ZkServer::start_standalone(Ipv4Addr::LOCALHOST, None);
    let hosts = zk.connect_string();
    let c = "svc";
    let mut leader = start_leader(&hosts, c, "a", NodeOpts::default()).await;
    let mut follower = start_node(&hosts, c, "b", NodeOpts::default());
    let second = Duration::from_secs(1);

    let out = set_vips(&hosts, c, "web", &["192.0.2.100", "192.0.2.101"]).await;
    assert!(out.contains("192.0.2.100"), "{out}");
    wait_until("set applied", second, || {
        leader.vips() == ["192.0.2.100", "192.0.2.101"]
    })
    .await;
    // Followers see the configuration too.
    wait_until("follower sees it", second, || {
        follower.vips() == ["192.0.2.100", "192.0.2.101"]
    })
    .await;

    vip(
        &hosts,
        c,
        VipCommand::Add {
            service: "web".into(),
            vips: strings(&["192.0.2.102"]),
        },
    )
    .await;
    wait_until("add applied", second, || leader.vips().len() == 3).await;
    vip(
        &hosts,
        c,
        VipCommand::Remove {
            service: "web".into(),
            vips: strings(&["192.0.2.100"]),
        },
    )
    .await;
    wait_until("remove applied", second, || {
        leader.vips() == ["192.0.2.101", "192.0.2.102"]
    })
    .await;
    set_vips(&hosts, c, "db", &["198.51.100.7", "192.0.2.101"]).await;
    wait_until("second service merged", second, || {
        leader.vips() == ["192.0.2.101", "192.0.2.102", "198.51.100.7"]
    })
    .await;
    wait_until("duplicate reported", second, || {
        leader.status.borrow().duplicate_vips == vec!["192.0.2.101".parse::<Vip>().unwrap()]
    })
    .await;
    vip(
        &hosts,
        c,
        VipCommand::Clear {
            service: "db".into(),
        },
    )
    .await;
    wait_until("clear applied", second, || {
        leader.vips() == ["192.0.2.101", "192.0.2.102"]
    })
    .await;

    // Bad data in one service: reported, ignored alone.
    let raw = raw_client(&hosts).await;
    let bad = "/vipd/svc/services/broken";
    raw.create(
        bad,
        b"{\"vips\": [oops",
        &CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all()),
    )
    .await
    .unwrap();
    let invalid = "/vipd/svc/services/mcast";
    raw.create(
        invalid,
        br#"{"vips": ["224.0.0.18"]}"#,
        &CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all()),
    )
    .await
    .unwrap();
    wait_until("errors reported", second, || {
        let s = leader.status.borrow();
        s.services
            .get("broken")
            .and_then(|x| x.error.clone())
            .is_some_and(|e| e.contains(bad) && e.contains("oops"))
            && s.services
                .get("mcast")
                .is_some_and(|x| x.refused.iter().any(|r| r.value == "224.0.0.18"))
    })
    .await;
    assert_eq!(leader.vips(), ["192.0.2.101", "192.0.2.102"]);
    // Fixing the data applies without a restart.
    raw.set_data(bad, br#"{"vips": ["203.0.113.5"]}"#, None)
        .await
        .unwrap();
    wait_until("fixed service applied", second, || {
        leader.vips().contains(&"203.0.113.5".to_string())
    })
    .await;
    assert!(leader.status.borrow().services["broken"].error.is_none());

    let json = vip(&hosts, c, VipCommand::List { json: true }).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["services"]["web"],
        serde_json::json!(["192.0.2.101", "192.0.2.102"])
    );
    assert_eq!(v["leader"], "a");
    assert!(
        v["invalid"]["mcast"]
            .as_str()
            .unwrap()
            .contains("224.0.0.18")
    );
    let table = vip(&hosts, c, VipCommand::List { json: false }).await;
    assert!(
        table.contains("web")
            && table.contains("192.0.2.101 192.0.2.102")
            && table.contains("leader: a"),
        "{table}"
    );
    leader.stop().await;
    follower.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_are_never_lost() {
    init_log();
    let zk = ZkServer::start_standalone(Ipv4Addr::LOCALHOST, None);
    let hosts = zk.connect_string();
    let adds: Vec<_> = (0..5)
        .map(|i| {
            let hosts = hosts.clone();
            tokio::spawn(async move {
                let cmd = VipCommand::Add {
                    service: "web".into(),
                    vips: vec![format!("192.0.2.{}", 10 + i)],
                };
                run_vip_command(&hosts, "cas", ZkAccess::insecure(), cmd).await
            })
        })
        .collect();
    for a in adds {
        a.await.unwrap().expect("add");
    }
    let raw = raw_client(&hosts).await;
    let (data, stat) = raw.get_data("/vipd/cas/services/web").await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
    let want: Vec<String> = (10..15).map(|i| format!("192.0.2.{i}")).collect();
    assert_eq!(
        v["vips"],
        serde_json::json!(want),
        "version {}",
        stat.version
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_exits_2_and_writes_nothing() {
    init_log();
    let zk = ZkServer::start_standalone(Ipv4Addr::LOCALHOST, None);
    let hosts = zk.connect_string();
    set_vips(&hosts, "inv", "web", &["192.0.2.1"]).await;
    let raw = raw_client(&hosts).await;
    let path = "/vipd/inv/services/web";
    let before = raw.get_data(path).await.unwrap();
    for (service, bad) in [
        ("web", "192.0.2.300"),
        ("web", "127.0.0.1"),
        ("web", "224.0.0.1"),
        ("we/b", "192.0.2.2"),
    ] {
        for cmd in [
            VipCommand::Set {
                service: service.into(),
                vips: strings(&["192.0.2.2", bad]),
            },
            VipCommand::Add {
                service: service.into(),
                vips: strings(&[bad]),
            },
        ] {
            let e = run_vip_command(&hosts, "inv", ZkAccess::insecure(), cmd.clone())
                .await
                .unwrap_err();
            assert_eq!(e.exit_code(), 2, "{cmd:?}: {e}");
            let named = if service == "web" { bad } else { service };
            assert!(e.to_string().contains(named), "{e}");
        }
    }
    let after = raw.get_data(path).await.unwrap();
    assert_eq!(before.0, after.0);
    assert_eq!(before.1.version, after.1.version);
    assert!(
        raw.check_stat("/vipd/inv/services/we")
            .await
            .unwrap()
            .is_none()
    );
    // A ZooKeeper error is exit code 1 (nothing listens on this port).
    let e = run_vip_command(
        "127.0.0.1:1",
        "inv",
        ZkAccess::insecure(),
        VipCommand::List { json: false },
    )
    .await
    .unwrap_err();
    assert_eq!(e.exit_code(), 1, "{e}");
}

/// Fencing: the leader's ZooKeeper server freezes (SIGSTOP) in a three-server
/// ensemble; the leader must publish Follower before another node can be
/// elected (its session has to expire on the quorum first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_fences_the_leader_before_anyone_else_leads() {
    init_log();
    let spec = ZkMemberSpec {
        ip: Ipv4Addr::LOCALHOST,
        netns: None,
    };
    let mut zk = ZkServer::start_ensemble(&[spec.clone(), spec.clone(), spec]);
    let t = Duration::from_secs(2);
    let opts = || NodeOpts {
        timeout: t,
        ..Default::default()
    };
    // Each node talks to one server only, so only the leader loses its server.
    let mut a = start_leader(&zk.addr(0).to_string(), "fence", "a", opts()).await;
    let mut b = start_node(&zk.addr(1).to_string(), "fence", "b", opts());
    let mut c = start_node(&zk.addr(2).to_string(), "fence", "c", opts());
    wait_until("b and c follow", Duration::from_secs(20), || {
        b.status.borrow().leader.as_deref() == Some("a")
            && c.status.borrow().leader.as_deref() == Some("a")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.role(), Role::Leader);

    let frozen_at = Instant::now();
    zk.freeze(0);
    // Wait on the fake engines' logs, not on `role()`: a role is in the
    // desired channel a moment before the engine task logs it.
    wait_until("b or c leads", Duration::from_secs(30), || {
        [&b, &c]
            .iter()
            .any(|n| n.first(Role::Leader, frozen_at).is_some())
    })
    .await;
    let fenced = a
        .first(Role::Follower, frozen_at)
        .expect("a published Follower");
    let new = [&b, &c]
        .iter()
        .filter_map(|n| n.first(Role::Leader, frozen_at))
        .min()
        .unwrap();
    assert_eq!(a.role(), Role::Follower, "two leaders");
    zk.thaw(0);
    eprintln!(
        "a fenced {:?} after the freeze; new leader {:?} after",
        fenced - frozen_at,
        new - frozen_at
    );
    assert!(
        fenced < new,
        "a fenced at +{:?}, new leader at +{:?}",
        fenced - frozen_at,
        new - frozen_at
    );
    assert!(
        fenced - frozen_at < t,
        "fencing took {:?}, session timeout {t:?}",
        fenced - frozen_at
    );

    // a comes back as a follower (new session) and never leads beside the new leader.
    wait_until("a follows the new leader", Duration::from_secs(20), || {
        let s = a.status.borrow();
        s.session == "connected" && s.leader.as_deref().is_some_and(|l| l != "a")
    })
    .await;
    assert_eq!(a.role(), Role::Follower);
    for n in [&mut a, &mut b, &mut c] {
        n.stop().await;
    }
}

/// Fencing on the lease: a freeze longer than the lease but well under the session
/// timeout: the leader fences at the lease's end, keeps its session and its
/// candidacy, and leads again (the same term: the same znode) only after an
/// acknowledged renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_session_back_leads_again_after_a_renewal() {
    init_log();
    let mut zk = ZkServer::start_standalone(Ipv4Addr::LOCALHOST, None);
    let t = Duration::from_secs(4);
    let mut a = start_leader(
        &zk.connect_string(),
        "back",
        "a",
        NodeOpts {
            timeout: t,
            ..Default::default()
        },
    )
    .await;
    let term = a.term();
    let frozen_at = Instant::now();
    zk.freeze(0);
    wait_until("a fences", t / 2, || {
        a.role() == Role::Follower && a.status.borrow().fenced
    })
    .await;
    let fenced = frozen_at.elapsed();
    eprintln!("a fenced {fenced:?} after the freeze (lease {:?})", t / 3);
    assert!(fenced <= t / 3 + Duration::from_millis(300), "{fenced:?}");
    zk.thaw(0);
    wait_until("a leads again", Duration::from_secs(10), || {
        a.role() == Role::Leader
    })
    .await;
    assert_eq!(a.term(), term, "the same candidacy, the same term");
    let seen = a.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|s| s.role == Role::Follower && s.at > frozen_at),
        "{seen:?}"
    );
    a.stop().await;
}

/// A leader that cannot route a VIP keeps leading (it serves the others)
/// and reports it unplaceable until a member that can serve strictly more
/// stands: then it hands over to it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_without_route_keeps_leading_until_a_better_member_stands() {
    init_log();
    let zk = ZkServer::start_standalone(Ipv4Addr::LOCALHOST, None);
    let hosts = zk.connect_string();
    set_vips(&hosts, "r4", "web", &["192.0.2.50"]).await;
    let started = Instant::now();
    let mut a = start_node(
        &hosts,
        "r4",
        "a",
        NodeOpts {
            no_route: true,
            ..Default::default()
        },
    );
    wait_until("a leads", Duration::from_secs(20), || {
        a.first(Role::Leader, started).is_some()
    })
    .await;
    wait_until(
        "a reports the VIP unplaceable",
        Duration::from_secs(5),
        || {
            a.status
                .borrow()
                .unplaceable
                .contains_key(&"192.0.2.50".parse::<Vip>().unwrap())
        },
    )
    .await;
    // Alone, it keeps leading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(a.role(), Role::Leader);
    assert_eq!(
        a.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.role == Role::Leader)
            .count(),
        1
    );
    let mut b = start_node(&hosts, "r4", "b", NodeOpts::default());
    wait_until("b leads", Duration::from_secs(10), || {
        b.role() == Role::Leader
    })
    .await;
    assert_eq!(a.role(), Role::Follower);
    let err = a.status.borrow().last_error.clone().unwrap_or_default();
    assert!(err.contains("handed over to b"), "{err}");
    // b serves more than a: it keeps leading, a follows it.
    wait_until("a follows b", Duration::from_secs(10), || {
        a.status.borrow().leader.as_deref() == Some("b")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.role(), Role::Leader);
    assert_eq!(
        b.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.role == Role::Leader)
            .count(),
        1
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_auth_protects_writes_not_reads() {
    init_log();
    let zk = ZkServer::start_standalone(Ipv4Addr::LOCALHOST, None);
    let hosts = zk.connect_string();
    let auth = ZkAuth {
        user: "vipd".into(),
        password: "s3cret".into(),
    };
    let mut a = start_leader(
        &hosts,
        "auth",
        "a",
        NodeOpts {
            auth: Some(auth.clone()),
            ..Default::default()
        },
    )
    .await;
    let cmd = VipCommand::Set {
        service: "web".into(),
        vips: strings(&["192.0.2.9"]),
    };
    run_vip_command(&hosts, "auth", ZkAccess::with(auth.clone()), cmd.clone())
        .await
        .unwrap();
    wait_until("applied", Duration::from_secs(1), || {
        a.vips() == ["192.0.2.9"]
    })
    .await;

    let path = "/vipd/auth/services/web";
    let anon = raw_client(&hosts).await;
    let (data, _) = anon.get_data(path).await.expect("anyone can read");
    assert!(String::from_utf8_lossy(&data).contains("192.0.2.9"));
    assert_eq!(
        anon.set_data(path, b"{\"vips\": []}", None)
            .await
            .unwrap_err(),
        ZkError::NoAuth
    );
    let (acl, _) = anon.get_acl(path).await.unwrap();
    assert!(
        acl.iter()
            .any(|a| a.scheme() == "digest" && a.id().starts_with("vipd:")),
        "{acl:?}"
    );
    // vipctl without the credential: exit 1, nothing changed.
    let cmd = VipCommand::Add {
        service: "web".into(),
        vips: strings(&["192.0.2.10"]),
    };
    let e = run_vip_command(&hosts, "auth", ZkAccess::default(), cmd)
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 1, "{e}");
    assert!(
        e.to_string().contains("/vipd/auth") && e.to_string().contains("NoAuth"),
        "{e}"
    );
    // A wrong password is refused the same way.
    let wrong = ZkAuth {
        password: "nope".into(),
        ..auth
    };
    let e = run_vip_command(
        &hosts,
        "auth",
        ZkAccess::with(wrong),
        VipCommand::Clear {
            service: "web".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.exit_code(), 1, "{e}");
    assert_eq!(a.vips(), ["192.0.2.9"]);
    a.stop().await;
}

/// A named network namespace for the launcher test, removed on drop.
struct NamedNetns(String);

impl NamedNetns {
    fn new(tag: &str) -> Self {
        let name = format!("vipd-{tag}-{}", std::process::id());
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip netns add");
        assert!(ok.success(), "ip netns add {name} failed");
        let ns = NamedNetns(name);
        let ok = std::process::Command::new("ip")
            .args(["-n", &ns.0, "link", "set", "lo", "up"])
            .status()
            .expect("run ip link");
        assert!(ok.success(), "bringing lo up in {} failed", ns.0);
        ns
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// The launcher inside a named namespace (as the lab uses it): a standalone
/// server and an ensemble of three on loopback addresses of that namespace,
/// used by vipctl from a thread that joined the namespace.
#[test]
fn launcher_runs_servers_inside_a_namespace() {
    init_log();
    let ns = NamedNetns::new("zk");
    let standalone = ZkServer::start_standalone(Ipv4Addr::LOCALHOST, Some(&ns.0));
    let spec = |last| ZkMemberSpec {
        ip: Ipv4Addr::new(127, 0, 0, last),
        netns: Some(ns.0.as_str()),
    };
    let ensemble = ZkServer::start_ensemble(&[spec(1), spec(2), spec(3)]);
    for hosts in [standalone.connect_string(), ensemble.connect_string()] {
        let path = format!("/run/netns/{}", ns.0);
        let out = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a valid fd changes only this thread's namespace.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                set_vips(&hosts, "ns", "web", &["192.0.2.77"]).await;
                vip(&hosts, "ns", VipCommand::List { json: true }).await
            })
        })
        .join()
        .expect("namespace thread");
        assert!(out.contains("192.0.2.77"), "{out}");
    }
}

/// The current version and data of `path`, read by a raw client.
async fn znode(client: &Client, path: &str) -> (i32, serde_json::Value) {
    let (data, stat) = client
        .get_data(path)
        .await
        .unwrap_or_else(|e| panic!("get_data {path}: {e}"));
    let v = serde_json::from_slice(&data).unwrap_or_else(|e| panic!("{path}: {e}"));
    (stat.version, v)
}

/// The renewal race, driven by hand. A raw client plays the next in
/// line against a real leader: a conditional delete at a version the leader
/// has renewed since fails (BadVersion) and changes nothing; one at the
/// current version wins, and the leader's next renewal (NoNode) ends its
/// term within a renewal interval. A foreign write (BadVersion on the
/// leader's renewal) ends the term too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_race_is_settled_by_the_conditional_delete() {
    init_log();
    let zk = ZkServer::start_standalone(Ipv4Addr::LOCALHOST, None);
    let hosts = zk.connect_string();
    let t = Duration::from_secs(2);
    let lease = LeaseTimes::new(t, None, Duration::from_millis(100)).unwrap();
    let mut a = start_leader(
        &hosts,
        "race",
        "a",
        NodeOpts {
            timeout: t,
            ..Default::default()
        },
    )
    .await;
    let client = raw_client(&hosts).await;
    let dir = "/vipd/race/election";
    let children = client.list_children(dir).await.expect("list election");
    assert_eq!(children.len(), 1, "{children:?}");
    let path = format!("{dir}/{}", children[0]);
    let (stale, data) = znode(&client, &path).await;
    assert_eq!(data["node"], "a", "{data}");
    assert_eq!(
        data["term"],
        a.term(),
        "the term is the znode's sequence: {data}"
    );
    // The stated lease is rounded up: a successor never waits less.
    assert_eq!(
        data["lease_ms"],
        u64::try_from(lease.length.as_nanos().div_ceil(1_000_000)).unwrap(),
        "{data}"
    );
    // The leader renews after our read: our delete at the old version loses.
    let renewed = Instant::now();
    loop {
        let (v, d) = znode(&client, &path).await;
        if v > stale {
            assert!(d["renewal"].as_u64() > data["renewal"].as_u64(), "{d}");
            break;
        }
        assert!(
            renewed.elapsed() < lease.renew_every() * 3,
            "no renewal within three intervals"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let e = client
        .delete(&path, Some(stale))
        .await
        .expect_err("a delete at a stale version");
    assert_eq!(e, ZkError::BadVersion);
    tokio::time::sleep(lease.renew_every() * 2).await;
    assert_eq!(a.role(), Role::Leader, "a lost to a failed delete");
    assert!(znode(&client, &path).await.0 > stale + 1, "renewals go on");

    // At the current version the delete wins (a renewal landing between our
    // read and our delete makes it BadVersion: read again).
    let term = a.term();
    let deleted = loop {
        let (v, _) = znode(&client, &path).await;
        match client.delete(&path, Some(v)).await {
            Ok(()) => break Instant::now(),
            Err(ZkError::BadVersion) => continue,
            Err(e) => panic!("delete {path}: {e}"),
        }
    };
    wait_until(
        "a learns it lost",
        lease.renew_every() + Duration::from_millis(300),
        || a.role() == Role::Follower,
    )
    .await;
    eprintln!(
        "a ended its term {:?} after its znode was deleted (renewal every {:?})",
        deleted.elapsed(),
        lease.renew_every()
    );
    // It stands again with a new candidacy: a higher term.
    wait_until("a leads again", Duration::from_secs(10), || {
        a.role() == Role::Leader
    })
    .await;
    assert!(a.term() > term, "term {} after {term}", a.term());

    // Someone else writes the leader's znode: its renewal meets BadVersion
    // and the term ends; the candidacy is still its own, so it leads again.
    let children = client.list_children(dir).await.expect("list election");
    let path = format!("{dir}/{}", children[0]);
    let since = Instant::now();
    client
        .set_data(&path, b"{\"node\": \"a\"}", None)
        .await
        .expect("foreign write");
    wait_until(
        "a ends the term on BadVersion",
        lease.renew_every() + Duration::from_millis(300),
        || a.first(Role::Follower, since).is_some(),
    )
    .await;
    wait_until("a leads again", Duration::from_secs(10), || {
        a.role() == Role::Leader
    })
    .await;
    a.stop().await;
}

/// The takeover deletes the silent leader's znode and writes the next
/// in line's first renewal in one ZooKeeper transaction (one zxid), so the
/// new term's lease starts one round trip sooner. A raw client plays a
/// leader that never renews; the next in line is a real node. Right after
/// the delete, the new leader's znode holds renewal 1, written by the very
/// transaction that removed the silent one (its mzxid is the election
/// directory's pzxid, the zxid of the last child change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_writes_the_first_renewal_in_the_delete_transaction() {
    init_log();
    let zk = ZkServer::start_standalone(Ipv4Addr::LOCALHOST, None);
    let hosts = zk.connect_string();
    // Lease 2 s, renewals every 500 ms: time to read renewal 1.
    let t = Duration::from_secs(6);
    let lease = LeaseTimes::new(t, None, Duration::from_millis(100)).unwrap();
    let ghost = raw_client(&hosts).await;
    let dir = "/vipd/ghost/election";
    for p in ["/vipd", "/vipd/ghost", dir] {
        match ghost
            .create(
                p,
                b"",
                &CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all()),
            )
            .await
        {
            Ok(_) | Err(ZkError::NodeExists) => {}
            Err(e) => panic!("create {p}: {e}"),
        }
    }
    let (_, seq) = ghost
        .create(
            &format!("{dir}/ghost-n_"),
            br#"{"node": "ghost", "term": 0, "lease_ms": 2000, "renewal": 1}"#,
            &CreateMode::EphemeralSequential.with_acls(zookeeper_client::Acls::anyone_all()),
        )
        .await
        .expect("the silent leader's znode");
    let silent = format!("{dir}/ghost-n_{seq}");
    let (_, watch) = ghost
        .check_and_watch_stat(&silent)
        .await
        .expect("watch the silent leader's znode");
    let started = Instant::now();
    let mut b = start_node(
        &hosts,
        "ghost",
        "b",
        NodeOpts {
            timeout: t,
            ..Default::default()
        },
    );
    let event = tokio::time::timeout(Duration::from_secs(15), watch.changed())
        .await
        .expect("the silent leader's znode deleted within 15 s");
    assert_eq!(event.event_type, zookeeper_client::EventType::NodeDeleted);
    let waited = started.elapsed();
    let children = ghost.list_children(dir).await.expect("list election");
    assert_eq!(children.len(), 1, "{children:?}");
    let own = format!("{dir}/{}", children[0]);
    let (data, stat) = ghost.get_data(&own).await.expect("the new leader's znode");
    let (_, dir_stat) = ghost.get_data(dir).await.expect("the election directory");
    let data: serde_json::Value = serde_json::from_slice(&data).expect("candidate data");
    assert_eq!(data["node"], "b", "{data}");
    assert_eq!(data["renewal"], 1, "the first renewal of b's term: {data}");
    assert_eq!(
        stat.mzxid, dir_stat.pzxid,
        "b's first renewal (mzxid {:#x}) and the delete (the directory's pzxid {:#x}) are one transaction",
        stat.mzxid, dir_stat.pzxid
    );
    // Not before the takeover wait, counted from b's first read.
    assert!(
        waited >= lease.takeover_after(),
        "deleted after {waited:?}, before the {:?} wait",
        lease.takeover_after()
    );
    wait_until("b leads", Duration::from_secs(5), || {
        b.role() == Role::Leader
    })
    .await;
    b.stop().await;
}
