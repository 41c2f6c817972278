//! The ZooKeeper tree protected by default, on a real ZooKeeper with real
//! vipd and vipctl processes: a new tree is never created open unless asked
//! (`--zk-insecure`), every znode made with the cluster's credential carries
//! its digest ACL and refuses anyone else, an open tree left by an insecure
//! run is reported until `vipctl acl repair` protects every znode, and the
//! credential comes from systemd's credentials directory as the unit gives
//! it.

use std::{collections::VecDeque, process::Output, time::Duration};

use vipd_tests::{
    cluster::{Cluster, ZkKind, vip_set},
    lab::{Host, LabProcess, vipctl_bin, vipd_bin, wait_until},
};
use zookeeper_client::{Acl, Client, CreateMode, Error as ZkError, Permission};

/// vipd on node `i` with the lab's settings, `extra` flags and `env` (which
/// overrides the lab's credential).
fn spawn_vipd(c: &Cluster, i: usize, env: &[(&str, &str)], extra: &[&str]) -> LabProcess {
    let node = &c.nodes[i];
    let bin = vipd_bin().display().to_string();
    let socket = node.socket.display().to_string();
    let mut argv = vec![
        bin.as_str(),
        "--config",
        "/dev/null",
        "--zk",
        &c.hosts,
        "--cluster",
        &c.cluster,
        "--node-id",
        &node.id,
        "--session-timeout",
        "2s",
        "--api-socket",
        &socket,
    ];
    argv.extend_from_slice(extra);
    let mut env = env.to_vec();
    env.push(("RUST_LOG", "info,vipd=debug"));
    node.host.spawn_env(argv, &env)
}

/// `vipctl <args> --zk .. --cluster ..` on the admin host without any
/// credential (the lab's is removed from the environment).
fn vipctl_without_credential(c: &Cluster, args: &[&str]) -> Output {
    let bin = vipctl_bin().display().to_string();
    let mut argv = vec!["env", "-u", "VIPD_ZK_AUTH_FILE", bin.as_str()];
    argv.extend_from_slice(args);
    argv.extend(["--zk", &c.hosts, "--cluster", &c.cluster]);
    c.admin.exec(&argv)
}

/// `vipctl <args> --zk .. --cluster ..` on the admin host, with the lab's
/// credential as an operator's environment has it.
fn vipctl(c: &Cluster, args: &[&str]) -> Output {
    let bin = vipctl_bin().display().to_string();
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(args);
    argv.extend(["--zk", &c.hosts, "--cluster", &c.cluster]);
    c.admin.exec(&argv)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The digest id ZooKeeper itself computes for `user:password` (its
/// DigestAuthenticationProvider), not ours.
fn zookeepers_digest(credential: &str) -> String {
    let out = std::process::Command::new("java")
        .args([
            "-cp",
            "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-nop.jar",
            "org.apache.zookeeper.server.auth.DigestAuthenticationProvider",
            credential,
        ])
        .output()
        .expect("java (Debian package zookeeper)");
    let stdout = text(&out.stdout);
    let (_, id) = stdout
        .trim()
        .split_once("->")
        .unwrap_or_else(|| panic!("DigestAuthenticationProvider printed {stdout:?}"));
    id.to_string()
}

/// Runs `f` with a ZooKeeper client in the admin namespace (authenticated
/// with `credential` if given).
fn with_client<R: Send>(
    c: &Cluster,
    credential: Option<&str>,
    f: impl AsyncFnOnce(&Client) -> R + Send,
) -> R {
    let hosts = c.hosts.clone();
    c.admin.in_netns(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut connector = Client::connector().with_session_timeout(Duration::from_secs(5));
            if let Some(cred) = credential {
                connector = connector.with_auth("digest", cred.as_bytes());
            }
            let client = connector
                .connect(&hosts)
                .await
                .unwrap_or_else(|e| panic!("connect {hosts}: {e}"));
            f(&client).await
        })
    })
}

/// Every znode of `root` and below, parents first, with its ACL.
async fn tree(client: &Client, root: &str) -> Vec<(String, Vec<Acl>)> {
    let mut out = Vec::new();
    let mut queue = VecDeque::from([root.to_string()]);
    while let Some(path) = queue.pop_front() {
        let Ok((acl, _)) = client.get_acl(&path).await else {
            continue;
        };
        let mut children = client.list_children(&path).await.unwrap_or_default();
        children.sort();
        queue.extend(children.into_iter().map(|c| format!("{path}/{c}")));
        out.push((path, acl));
    }
    out
}

/// The cluster's ACL for the credential whose ZooKeeper id is `id`: all
/// rights for it, read for anyone.
fn protected(acl: &[Acl], id: &str) -> bool {
    let mut a: Vec<(String, String, bool, bool)> = acl
        .iter()
        .map(|a| {
            (
                a.scheme().to_string(),
                a.id().to_string(),
                a.permission() == Permission::ALL,
                a.permission() == Permission::READ,
            )
        })
        .collect();
    a.sort();
    a == [
        ("digest".into(), id.to_string(), true, false),
        ("world".into(), "anyone".into(), false, true),
    ]
}

fn show(acl: &[Acl]) -> String {
    acl.iter()
        .map(|a| format!("{}:{}:{}", a.scheme(), a.id(), a.permission()))
        .collect::<Vec<_>>()
        .join(",")
}

/// A credentials directory of our own holding `content` as vipd-zk.
fn credentials_dir(host: &Host, name: &str, content: &str) -> String {
    let dir = host
        .zk_credential_file()
        .parent()
        .expect("in a directory")
        .with_file_name(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vipd-zk"), content).unwrap();
    dir.display().to_string()
}

fn exists(c: &Cluster, path: &str) -> bool {
    let path = path.to_string();
    with_client(c, None, async move |client: &Client| {
        client
            .check_stat(&path)
            .await
            .expect("check_stat")
            .is_some()
    })
}

/// Without a credential and without --zk-insecure, vipd refuses to create
/// the cluster's tree: no credential directory at all, and the empty
/// credential the unit's fallback gives when /etc/vipd/zk-auth is missing.
/// With --zk-insecure it runs, and says the tree is open.
#[test]
fn a_new_tree_is_not_created_open_unless_asked() {
    let mut c = Cluster::new("acl-new", ZkKind::Standalone, 1);
    let empty = credentials_dir(&c.nodes[0].host, "empty-credentials", "");
    let root = format!("/vipd/{}", c.cluster);
    for (case, env) in [
        (
            "no credentials directory",
            vec![("CREDENTIALS_DIRECTORY", "")],
        ),
        (
            "an empty vipd-zk credential",
            vec![("CREDENTIALS_DIRECTORY", empty.as_str())],
        ),
    ] {
        let p = spawn_vipd(&c, 0, &env, &[]);
        let status = p.wait_timeout(Duration::from_secs(30)).unwrap_or_else(|| {
            panic!(
                "{case}: vipd still runs 30 s after start on a fresh ZooKeeper without a \
                 credential: {}",
                p.stderr()
            )
        });
        let err = p.stderr();
        assert!(!status.success(), "{case}: vipd exited 0: {err}");
        assert!(
            err.contains(&root)
                && err.contains("no ZooKeeper credential")
                && err.contains("--zk-insecure"),
            "{case}: the error does not say what to do: {err}"
        );
        assert!(!exists(&c, &root), "{case}: {root} was created");
    }
    // check-config sees it: a warning without a credential, louder with
    // --zk-insecure.
    for (flag, warning) in [
        (
            None,
            "no ZooKeeper credential (the systemd credential vipd-zk",
        ),
        (
            Some("--zk-insecure"),
            "no ZooKeeper credential and zk_insecure",
        ),
    ] {
        let out = std::process::Command::new(vipd_bin())
            .env_clear()
            .args([
                "--config",
                "/dev/null",
                "--zk",
                "192.0.2.1:2181",
                "check-config",
            ])
            .args(flag)
            .output()
            .expect("vipd check-config");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains(&format!("# warning: {warning}")),
            "{flag:?}: {}",
            text(&out.stdout)
        );
    }
    // vipctl the same: nothing written, exit 1.
    let out = vipctl_without_credential(&c, &["vip", "set", "web", "192.0.2.100"]);
    assert_eq!(out.status.code(), Some(1), "vipctl: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--zk-insecure"),
        "{}",
        text(&out.stderr)
    );
    assert!(!exists(&c, &root), "vipctl created {root}");

    // Asked explicitly: it runs, leads, and reports the open tree.
    let p = spawn_vipd(&c, 0, &[("CREDENTIALS_DIRECTORY", "")], &["--zk-insecure"]);
    c.nodes[0].vipd = Some(p);
    let out = vipctl_without_credential(&c, &["vip", "set", "--zk-insecure", "web", "192.0.2.100"]);
    assert!(
        out.status.success(),
        "vipctl --zk-insecure: {}",
        text(&out.stderr)
    );
    c.wait_sole_holder(&vip_set(&["192.0.2.100"]), None, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("insecure vipd never held the VIP: {e}"));
    wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        c.status(0)["zookeeper"]["tree_acl"]["open_znodes"].as_u64() > Some(0)
    })
    .unwrap_or_else(|e| {
        panic!(
            "the open tree is not in vipctl status: {e}: {}",
            c.status(0)
        )
    });
    let log = c.nodes[0].vipd.as_ref().unwrap().stderr();
    assert!(
        log.contains("can be changed by anyone") && log.contains("vipctl acl repair"),
        "no warning about the open tree: {log}"
    );
}

/// With the cluster's credential (from the credentials directory, as the
/// unit gives it), every znode vipd and vipctl create carries the digest
/// ACL ZooKeeper computes for it; anyone else can read but not write,
/// create or delete (NoAuth), and a wrong credential is refused clearly.
#[test]
fn znodes_made_with_the_credential_refuse_anyone_else() {
    let mut c = Cluster::new("acl-digest", ZkKind::Standalone, 2);
    c.vip_ok(&["set", "web", "192.0.2.100"]);
    c.start_all();
    c.wait_sole_holder(&vip_set(&["192.0.2.100"]), None, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("no leader: {e}"));
    c.vip_ok(&["set", "db", "192.0.2.101"]);
    let out = vipctl(&c, &["node", "drain", "n2"]);
    assert!(out.status.success(), "drain: {}", text(&out.stderr));
    let log = c.nodes[0].vipd.as_ref().unwrap().stderr();
    assert!(
        log.contains("systemd credential"),
        "vipd did not read the systemd credential: {log}"
    );
    // Both members are up (their ephemeral znodes exist).
    let root = format!("/vipd/{}", c.cluster);
    let members = format!("{root}/members");
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let m = members.clone();
        with_client(&c, None, async move |client: &Client| {
            client.list_children(&m).await.unwrap_or_default().len() == 2
        })
    })
    .expect("both member znodes");

    // ZooKeeper shows a digest id in full only to a holder of the ACL's
    // ADMIN right (others read `user:x`): read the ACLs with the credential.
    let credential = c.admin.zk_credential();
    let id = zookeepers_digest(&credential);
    let r = root.clone();
    let znodes = with_client(&c, Some(&credential), async move |client: &Client| {
        tree(client, &r).await
    });
    let kinds = ["election/", "members/", "services/", "nodes/"];
    for kind in kinds {
        assert!(
            znodes
                .iter()
                .any(|(p, _)| p.contains(&format!("{root}/{kind}"))),
            "no znode under {kind}: {znodes:?}"
        );
    }
    for (path, acl) in &znodes {
        assert!(
            protected(acl, &id),
            "{path}: {} (want digest:{id}:ALL, world:anyone:READ)",
            show(acl)
        );
    }
    // Anyone else: read yes, change no, for every znode.
    let all = znodes.clone();
    let refused = with_client(&c, None, async move |client: &Client| {
        let mut wrong = Vec::new();
        for (path, _) in &all {
            if client.get_data(path).await.is_err() {
                wrong.push(format!("{path}: not readable"));
            }
            let w = client.set_data(path, b"x", None).await;
            let d = client.delete(path, None).await;
            let k = client
                .create(
                    &format!("{path}/intruder"),
                    b"",
                    &CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all()),
                )
                .await;
            for (what, e) in [("set", w.err()), ("delete", d.err())] {
                // A znode with children refuses delete as NotEmpty before
                // the ACL check: the create below stands for it.
                if e != Some(ZkError::NoAuth) && e != Some(ZkError::NotEmpty) {
                    wrong.push(format!("{path}: {what}: {e:?}"));
                }
            }
            if k.as_ref().err() != Some(&ZkError::NoAuth)
                && k.as_ref().err() != Some(&ZkError::NoChildrenForEphemerals)
            {
                wrong.push(format!("{path}: create child: {:?}", k.map(drop)));
            }
        }
        wrong
    });
    assert!(
        refused.is_empty(),
        "changed without the credential:\n{}",
        refused.join("\n")
    );

    // A wrong credential: vipd exits naming NoAuth, vipctl exits 1.
    let wrong = credentials_dir(&c.nodes[1].host, "wrong", "vipd:not-the-password\n");
    c.kill_vipd(1);
    let p = spawn_vipd(&c, 1, &[("CREDENTIALS_DIRECTORY", wrong.as_str())], &[]);
    let status = p
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("vipd with a wrong credential still runs: {}", p.stderr()));
    assert!(!status.success());
    assert!(
        p.stderr().contains("does not match") && p.stderr().contains("NoAuth"),
        "{}",
        p.stderr()
    );
    let wrong_file = format!("{wrong}/vipd-zk");
    let out = vipctl(
        &c,
        &[
            "vip",
            "set",
            "web",
            "192.0.2.102",
            "--zk-auth-file",
            &wrong_file,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("NoAuth"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        c.sole_holder(&vip_set(&["192.0.2.100", "192.0.2.101"])),
        Some(0)
    );
}

/// A tree left open by an insecure run: vipd with the credential runs on
/// it and reports it (status, log); `vipctl acl repair` protects every
/// znode, ephemeral ones too, while the leader keeps its VIP; the report
/// goes; a second repair changes nothing.
#[test]
fn an_open_tree_is_reported_until_acl_repair_protects_it() {
    let mut c = Cluster::new("acl-repair", ZkKind::Standalone, 2);
    let out = vipctl_without_credential(&c, &["vip", "set", "--zk-insecure", "web", "192.0.2.100"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut old = spawn_vipd(&c, 0, &[("CREDENTIALS_DIRECTORY", "")], &["--zk-insecure"]);
    c.nodes[0].vipd = Some(old);
    c.wait_sole_holder(&vip_set(&["192.0.2.100"]), None, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("insecure run: {e}"));
    old = c.nodes[0].vipd.take().unwrap();
    assert!(old.terminate(Duration::from_secs(20)).success());
    let root = format!("/vipd/{}", c.cluster);
    // An open ephemeral znode (a member of a node still without the
    // credential), held by this session until the test ends.
    let hosts = c.hosts.clone();
    let ghost = format!("{root}/members/ghost");
    let (ghost_tx, ghost_rx) = std::sync::mpsc::channel::<()>();
    let (made_tx, made_rx) = std::sync::mpsc::channel::<()>();
    let g = ghost.clone();
    // A thread started from inside the namespace lives in it.
    let holder = c.admin.in_netns(|| {
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = Client::connector()
                    .with_session_timeout(Duration::from_secs(10))
                    .connect(&hosts)
                    .await
                    .unwrap();
                client
                    .create(
                        &g,
                        b"{}",
                        &CreateMode::Ephemeral.with_acls(zookeeper_client::Acls::anyone_all()),
                    )
                    .await
                    .unwrap();
                made_tx.send(()).unwrap();
                let _ = tokio::task::spawn_blocking(move || ghost_rx.recv()).await;
            });
        })
    });
    made_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("ghost member");

    c.start_all();
    let vip = vip_set(&["192.0.2.100"]);
    let (leader, _) = c
        .wait_sole_holder(&vip, None, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("with the credential on the open tree: {e}"));
    for i in 0..2 {
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            c.status(i)["zookeeper"]["tree_acl"]["open_znodes"].as_u64() > Some(0)
        })
        .unwrap_or_else(|e| {
            panic!(
                "node {i} does not report the open tree: {e}: {}",
                c.status(i)
            )
        });
        let socket = c.nodes[i].socket.display().to_string();
        let table = text(&c.vipctl_on(i, &["status", "--api-socket", &socket]).stdout);
        assert!(table.contains("zookeeper tree OPEN"), "{table}");
    }
    let log = c.nodes[0].vipd.as_ref().unwrap().stderr();
    assert!(
        log.contains("vipctl acl repair"),
        "no warning in the log: {log}"
    );

    let out = vipctl(&c, &["acl", "repair"]);
    assert!(out.status.success(), "acl repair: {}", text(&out.stderr));
    let report = text(&out.stdout);
    for p in [root.as_str(), &format!("{root}/services/web"), &ghost] {
        assert!(
            report.contains(&format!("protected {p}\n")),
            "{p} not in: {report}"
        );
    }

    // ZooKeeper shows a digest id in full only to a holder of the ACL's
    // ADMIN right (others read `user:x`): read the ACLs with the credential.
    let credential = c.admin.zk_credential();
    let id = zookeepers_digest(&credential);
    let r = root.clone();
    let znodes = with_client(&c, Some(&credential), async move |client: &Client| {
        tree(client, &r).await
    });
    assert!(znodes.iter().any(|(p, _)| *p == ghost), "{znodes:?}");
    for (path, acl) in &znodes {
        assert!(protected(acl, &id), "{path} after repair: {}", show(acl));
    }
    for i in 0..2 {
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            c.status(i)["zookeeper"]["tree_acl"]["open_znodes"].as_u64() == Some(0)
        })
        .unwrap_or_else(|e| panic!("node {i} still reports an open tree: {e}: {}", c.status(i)));
    }
    let out = vipctl(&c, &["acl", "repair"]);
    assert!(out.status.success(), "second repair: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("0 znodes protected now"),
        "a second repair changed something: {}",
        text(&out.stdout)
    );
    assert_eq!(
        c.sole_holder(&vip),
        Some(leader),
        "the VIP moved during the repair"
    );
    let _ = ghost_tx.send(());
    holder.join().unwrap();
}
