//! Bad or unplaceable configuration costs the bad VIP only: three real vipd
//! nodes in lab namespaces against a real ZooKeeper, default settings but
//! the lab's session timeout. A service written by another ZooKeeper client
//! with an invalid entry or unparseable data, a VIP that no node (or only
//! one node) can route, and a VIP whose add the kernel refuses: the other
//! VIPs stay held by exactly one node, the cluster settles, and the status
//! names what was refused.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use vipd_tests::cluster::{Cluster, ZkKind, vip_set};
use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError};

/// One cluster at a time: each runs a ZooKeeper JVM and three vipds.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const GOOD: [&str; 2] = ["192.0.2.100", "192.0.2.101"];
const EVERY: Duration = Duration::from_millis(50);

/// Runs `f` with a plain ZooKeeper client on the admin host, as zkCli.sh
/// or an operator's automation would write, with the cluster's credential.
fn zk<R: Send>(c: &Cluster, f: impl AsyncFnOnce(&Client) -> R + Send) -> R {
    let hosts = c.hosts.clone();
    let credential = c.admin.zk_credential();
    c.admin.in_netns(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move {
            let client = Client::connector()
                .with_session_timeout(Duration::from_secs(5))
                .with_auth("digest", credential.as_bytes())
                .connect(&hosts)
                .await
                .expect("raw ZooKeeper client");
            f(&client).await
        })
    })
}

/// Writes `data` to `path` (created, parents too, if missing).
fn zk_write(c: &Cluster, path: &str, data: &[u8]) {
    let path = path.to_string();
    let data = data.to_vec();
    zk(c, async move |client: &Client| {
        let mut parent = String::new();
        for part in path
            .trim_start_matches('/')
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .unwrap()
            .1
        {
            parent = format!("{parent}/{part}");
            match client
                .create(
                    &parent,
                    b"",
                    &CreateMode::Persistent.with_acls(Acls::creator_all()),
                )
                .await
            {
                Ok(_) | Err(ZkError::NodeExists) => {}
                Err(e) => panic!("create {parent}: {e}"),
            }
        }
        match client.set_data(&path, &data, None).await {
            Ok(_) => {}
            Err(ZkError::NoNode) => {
                client
                    .create(
                        &path,
                        &data,
                        &CreateMode::Persistent.with_acls(Acls::creator_all()),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("create {path}: {e}"));
            }
            Err(e) => panic!("set {path}: {e}"),
        }
    });
}

fn zk_read(c: &Cluster, path: &str) -> Option<Vec<u8>> {
    let path = path.to_string();
    zk(c, async move |client: &Client| {
        match client.get_data(&path).await {
            Ok((data, _)) => Some(data),
            Err(ZkError::NoNode) => None,
            Err(e) => panic!("get {path}: {e}"),
        }
    })
}

fn zk_delete(c: &Cluster, path: &str) {
    let path = path.to_string();
    zk(c, async move |client: &Client| {
        client
            .delete(&path, None)
            .await
            .unwrap_or_else(|e| panic!("delete {path}: {e}"));
    });
}

/// Fails unless every sample has exactly one holder of `vip`, but for
/// `gaps` samples at most (a handover's moment without a holder).
fn assert_one_holder(
    c: &Cluster,
    what: &str,
    vip: &str,
    span: Duration,
    gaps: usize,
) -> Vec<Vec<usize>> {
    let ip: Ipv4Addr = vip.parse().unwrap();
    let samples = c.sample_holders(ip, span, EVERY);
    let two = samples.iter().filter(|s| s.len() > 1).count();
    let none = samples.iter().filter(|s| s.is_empty()).count();
    assert_eq!(
        two,
        0,
        "[{what}] {vip} on two nodes in {two} of {} samples",
        samples.len()
    );
    assert!(
        none <= gaps,
        "[{what}] {vip} held by exactly one node in only {} of {} samples over {span:?} ({none} without a holder)",
        samples.len() - none,
        samples.len()
    );
    samples
}

/// The status of node `i` once `ok` holds for it (up to `limit`).
fn wait_status(
    c: &Cluster,
    i: usize,
    what: &str,
    limit: Duration,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some(s) = c.try_status(i)
            && ok(&s)
        {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "[{what}] not seen on {} within {limit:?}; status: {:#}",
            c.nodes[i].id,
            c.try_status(i).unwrap_or_default()["zookeeper"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Entries that are not VIPs, as other clients may write them: bad IPv4,
/// bad IPv6, multicast, a prefix, a zone, loopback, empty, non-strings.
fn bad_entries() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = [
        "300.1.1.1",
        "192.0.2",
        "192.0.2.1.5",
        "2001:db8::g",
        "2001:db8:::1",
        "224.0.0.18",
        "ff02::1",
        "192.0.2.7/24",
        "2001:db8::7/64",
        "fe80::1%eth0",
        "127.0.0.1",
        "0.0.0.0",
        "",
        " x ",
    ]
    .iter()
    .map(|s| (format!("{s:?}"), s.to_string()))
    .collect();
    v.extend(
        [
            ("17", "17"),
            ("null", "null"),
            ("true", "true"),
            ("[\"192.0.2.9\"]", "[\"192.0.2.9\"]"),
        ]
        .map(|(j, shown)| (j.to_string(), shown.to_string())),
    );
    v
}

/// An invalid entry written by another client drops alone; unparseable
/// data keeps the last good VIPs, on the leader and on the next one, from
/// the leader's record in ZooKeeper; deleting the service removes them.
#[test]
fn invalid_entry_drops_alone_and_unparseable_data_keeps_last_good() {
    let _serial = serial();
    let mut c = Cluster::new("cfg_bad", ZkKind::Standalone, 3);
    let service = format!("/vipd/{}/services/web", c.cluster);
    let applied = format!("/vipd/{}/applied/web", c.cluster);
    let vips = vip_set(&GOOD);
    let entries = bad_entries();
    let with = |json: &str| format!(r#"{{"vips": ["{}", "{}", {json}]}}"#, GOOD[0], GOOD[1]);
    zk_write(&c, &service, with(&entries[0].0).as_bytes());
    c.start_all();
    let (leader, _) = c
        .wait_sole_holder(&vips, None, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("the good VIPs beside {}: {e}", entries[0].0));
    for (json, shown) in &entries {
        zk_write(&c, &service, with(json).as_bytes());
        wait_status(
            &c,
            leader,
            &format!("refused {json}"),
            Duration::from_secs(5),
            |s| {
                s["zookeeper"]["services"]["web"]["refused"]
                    .as_array()
                    .is_some_and(|r| {
                        r.len() == 1
                            && r[0]["value"] == shown.as_str()
                            && r[0]["reason"].as_str().is_some_and(|x| !x.is_empty())
                    })
            },
        );
        for v in GOOD {
            assert_one_holder(
                &c,
                &format!("beside {json}"),
                v,
                Duration::from_millis(500),
                0,
            );
        }
        assert_eq!(c.sole_holder(&vips), Some(leader), "beside {json}");
    }
    let recorded = zk_read(&c, &applied).expect("the leader records the last good VIPs");
    let recorded: serde_json::Value = serde_json::from_slice(&recorded).unwrap();
    assert_eq!(recorded, serde_json::json!({"vips": GOOD}));

    let oversized = vec![b'{'; 600 * 1024];
    let garbage: [&[u8]; 4] = [
        b"{not json",
        b"[\"192.0.2.100\"]",
        b"\xff\xfe\x00vips",
        &oversized,
    ];
    for g in garbage {
        let what = format!(
            "garbage {:?}",
            String::from_utf8_lossy(&g[..g.len().min(16)])
        );
        zk_write(&c, &service, g);
        let s = wait_status(&c, leader, &what, Duration::from_secs(5), |s| {
            let w = &s["zookeeper"]["services"]["web"];
            w["error"].is_string() && w["last_good"] == true
        });
        assert_eq!(
            s["zookeeper"]["services"]["web"]["vips"],
            serde_json::json!(GOOD),
            "[{what}]"
        );
        for v in GOOD {
            assert_one_holder(&c, &what, v, Duration::from_millis(500), 0);
        }
        assert_eq!(c.sole_holder(&vips), Some(leader), "[{what}]");
    }

    // Another node leads while the data is still garbage: it keeps them
    // too, from the record (it never saw the good data itself, as a node
    // started now would not).
    c.kill_vipd(leader);
    let (next, took) = c
        .wait_sole_holder(&vips, Some(leader), Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("after the leader was killed: {e}"));
    eprintln!(
        "{} leads and holds the last good VIPs {took:?} after the kill",
        c.nodes[next].id
    );
    let s = wait_status(
        &c,
        next,
        "the next leader keeps the last good VIPs",
        Duration::from_secs(5),
        |s| s["zookeeper"]["services"]["web"]["last_good"] == true,
    );
    assert_eq!(
        s["zookeeper"]["services"]["web"]["vips"],
        serde_json::json!(GOOD)
    );
    c.start_vipd(leader);
    let s = wait_status(
        &c,
        leader,
        "a restarted node keeps the last good VIPs",
        Duration::from_secs(15),
        |s| s["zookeeper"]["services"]["web"]["last_good"] == true,
    );
    assert_eq!(
        s["zookeeper"]["services"]["web"]["vips"],
        serde_json::json!(GOOD)
    );
    for v in GOOD {
        assert_one_holder(&c, "after the restart", v, Duration::from_secs(1), 0);
    }

    // A deleted service is removed, record and all.
    zk_delete(&c, &service);
    let start = Instant::now();
    while !c.holdings(&vips).iter().all(|h| h.is_empty()) || zk_read(&c, &applied).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "deleting the service left {:?} held, record {:?}",
            c.holdings(&vips),
            zk_read(&c, &applied).map(|d| String::from_utf8_lossy(&d).into_owned())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Routes 198.51.100.0/24 on node `i`'s data interface.
fn route_to_unroutable(c: &Cluster, i: usize) {
    c.nodes[i]
        .host
        .ip(&["route", "add", "198.51.100.0/24", "dev", "eth0"]);
}

const UNROUTABLE: &str = "198.51.100.50";

/// A VIP that no node can route costs itself only: the other VIP stays on
/// one node in every sample, leadership does not rotate, and the leader
/// reports the VIP unplaceable.
#[test]
fn vip_no_node_can_route_costs_only_itself() {
    let _serial = serial();
    let mut c = Cluster::new("cfg_noroute", ZkKind::Standalone, 3);
    c.vip_ok(&["set", "web", GOOD[0], UNROUTABLE]);
    c.start_all();
    let one = vip_set(&GOOD[..1]);
    let (leader, _) = c
        .wait_sole_holder(&one, None, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("first election: {e}"));
    let samples = assert_one_holder(
        &c,
        "an unroutable VIP beside",
        GOOD[0],
        Duration::from_secs(15),
        3,
    );
    assert!(
        samples.iter().all(|s| s.as_slice() == [leader]),
        "the VIP moved: {:?}",
        samples
            .iter()
            .filter(|s| s.as_slice() != [leader])
            .collect::<Vec<_>>()
    );
    let terms = c.leader_terms();
    assert_eq!(
        terms.iter().sum::<u64>(),
        1,
        "leader terms by node: {terms:?}"
    );
    let s = wait_status(
        &c,
        leader,
        "unplaceable reported",
        Duration::from_secs(5),
        |s| {
            s["zookeeper"]["unplaceable"][UNROUTABLE]
                .as_str()
                .is_some_and(|w| w.contains("no route"))
        },
    );
    assert_eq!(s["role"], "leader");
    let text = c.vipctl_on(
        leader,
        &[
            "status",
            "--api-socket",
            &c.nodes[leader].socket.display().to_string(),
        ],
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("unplaceable {UNROUTABLE}")),
        "{text}"
    );
}

/// Only n3 routes the second VIP: leadership moves to n3 once (from the
/// first leader straight to it) and stays; n3 then holds both.
#[test]
fn leadership_moves_once_to_the_node_that_can_serve_more() {
    let _serial = serial();
    let mut c = Cluster::new("cfg_moveto", ZkKind::Standalone, 3);
    route_to_unroutable(&c, 2);
    c.vip_ok(&["set", "web", GOOD[0], UNROUTABLE]);
    // n1 first, so the move is seen; then the others.
    c.start_vipd(0);
    let one = vip_set(&GOOD[..1]);
    c.wait_sole_holder(&one, None, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("n1 alone: {e}"));
    c.start_vipd(1);
    c.start_vipd(2);
    let both = vip_set(&[GOOD[0], UNROUTABLE]);
    let (holder, took) = c
        .wait_sole_holder(&both, None, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("n3 holding both: {e}"));
    assert_eq!(holder, 2, "holds both");
    eprintln!("n3 holds both {took:?} after the others started");
    let samples = assert_one_holder(&c, "after the move", GOOD[0], Duration::from_secs(10), 0);
    assert!(
        samples.iter().all(|s| s.as_slice() == [2]),
        "moved again: {samples:?}"
    );
    let terms = c.leader_terms();
    assert_eq!(
        terms,
        vec![1, 0, 1],
        "leader terms by node: one move, from n1 straight to n3"
    );
    assert_eq!(c.sole_holder(&both), Some(2));
}

/// The kernel refuses one VIP's add on every node (an operator's
/// link-scope address in its subnet: "Invalid scope value"): the other VIP
/// stays held by one node, the failure is reported with the kernel's
/// error, and leadership settles after trying each node once at most.
#[test]
fn vip_the_kernel_refuses_costs_only_itself() {
    let _serial = serial();
    let mut c = Cluster::new("cfg_addfail", ZkKind::Standalone, 3);
    for (i, n) in c.nodes.iter().enumerate() {
        let own = format!("198.51.100.{}/24", 11 + i);
        n.host
            .ip(&["addr", "add", &own, "dev", "eth0", "scope", "link"]);
    }
    c.vip_ok(&["set", "web", GOOD[0], UNROUTABLE]);
    c.start_all();
    let one = vip_set(&GOOD[..1]);
    c.wait_sole_holder(&one, None, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("first election: {e}"));
    // Each node fails twice (a pass and its retry) before it counts the
    // VIP as one it cannot serve: at most three terms, then it settles.
    let start = Instant::now();
    let leader = loop {
        if let Some(l) = c.leading_node()
            && c.try_status(l)
                .is_some_and(|s| s["zookeeper"]["unplaceable"][UNROUTABLE].is_string())
        {
            break l;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no leader reports {UNROUTABLE} unplaceable; terms {:?}",
            c.leader_terms()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let terms = c.leader_terms();
    let samples = assert_one_holder(
        &c,
        "a refused VIP beside",
        GOOD[0],
        Duration::from_secs(10),
        0,
    );
    assert!(
        samples.iter().all(|s| s.as_slice() == [leader]),
        "moved: {samples:?}"
    );
    assert_eq!(c.leader_terms(), terms, "leadership moved after settling");
    assert!(
        terms.iter().sum::<u64>() <= 3 && terms.iter().all(|&t| t <= 1),
        "terms {terms:?}"
    );
    let s = c.status(leader);
    let why = s["zookeeper"]["unplaceable"][UNROUTABLE]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains("Invalid argument") || why.contains("os error 22"),
        "{why}"
    );
    let state = s["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vip"] == UNROUTABLE)
        .cloned()
        .unwrap_or_default();
    assert_eq!(state["state"], "error", "{state}");
    // Never added, never on any node.
    let bad = vip_set(&[UNROUTABLE]);
    assert!(c.holdings(&bad).iter().all(|h| h.is_empty()));
}
