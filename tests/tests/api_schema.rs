//! The JSON an operator scripts against, held still: a real vipd (single
//! node, then one node of a ZooKeeper cluster) answers `vipctl status --json`
//! and `vipctl arp stats --json`, and the keys and value types of each
//! answer are compared with a checked-in fixture (tests/fixtures/). A field
//! renamed, removed or retyped fails here; a field added fails too, until
//! the fixture (and docs/API.md) say so.
//!
//! `UPDATE_FIXTURES=1` rewrites the fixtures from what vipd answers.

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use serde_json::Value;
use vipd_tests::{
    cluster::{Cluster, ZkKind, vip_set},
    lab::{HostIf, Lab},
    vipd::Vipd,
};

/// Objects whose keys are data (VIPs, service names), not field names: their
/// entries are described once, under `*`.
const MAPS: &[&str] = &[
    ".conflicts",
    ".announcements",
    ".tcp_handoff",
    ".zookeeper.services",
    ".zookeeper.unplaceable",
];

/// One line per path: `path: type`, where `[]` stands for an array's
/// elements (their shapes merged) and `*` for a map's entries.
fn shape(v: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    walk(v, "", &mut out);
    out
}

fn walk(v: &Value, path: &str, out: &mut BTreeSet<String>) {
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(a) => {
            for e in a {
                walk(e, &format!("{path}[]"), out);
            }
            "array"
        }
        Value::Object(o) => {
            let map = MAPS.contains(&path);
            for (k, e) in o {
                let key = if map { "*" } else { k.as_str() };
                walk(e, &format!("{path}.{key}"), out);
            }
            if map { "map" } else { "object" }
        }
    };
    out.insert(format!(
        "{}: {kind}",
        if path.is_empty() { "." } else { path }
    ));
}

/// Compares `answer`'s shape with tests/fixtures/`name`, or writes the
/// fixture with `UPDATE_FIXTURES=1`.
fn assert_shape(name: &str, answer: &Value) {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    let got: Vec<String> = shape(answer).into_iter().collect();
    let got = got.join("\n") + "\n";
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::write(&file, &got).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
        return;
    }
    let want = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e} (UPDATE_FIXTURES=1 writes it)",
            file.display()
        )
    });
    let want_set: BTreeSet<&str> = want.lines().collect();
    let got_set: BTreeSet<&str> = got.lines().collect();
    let missing: Vec<_> = want_set.difference(&got_set).collect();
    let added: Vec<_> = got_set.difference(&want_set).collect();
    assert!(
        missing.is_empty() && added.is_empty(),
        "the JSON of {name} changed shape: gone {missing:#?}, new {added:#?}; the answer: {answer:#}"
    );
}

#[test]
fn single_node_status_and_arp_stats_keep_their_keys_and_types() {
    let lab = Lab::new("api-shape");
    let host = lab.add_host(
        "n1",
        &[
            HostIf {
                bridge: 0,
                addr: "192.0.2.1/24",
            },
            HostIf {
                bridge: 1,
                addr: "2001:db8:0:1::1/64",
            },
        ],
    );
    // A held IPv4 and IPv6 VIP, one without a route (its `error` and
    // `interface` stay null), and a health check that fails (its fields all
    // filled in).
    let vipd = Vipd::start(
        &lab,
        &host,
        "192.0.2.100,2001:db8:0:1::100,203.0.113.100",
        &["--check", "tcp:127.0.0.1:1"],
    );
    vipd.wait_held(&["192.0.2.100", "2001:db8:0:1::100"]);
    let status = vipd.wait_until_status(
        "ran its health check and announced",
        Duration::from_secs(15),
        |s| {
            s["health"]["checks"][0]["runs"].as_u64() >= Some(1)
                && s["announcements"]["192.0.2.100"]["last_sent_unix_ms"].is_u64()
                && s["announcements"]["2001:db8:0:1::100"]["last_sent_unix_ms"].is_u64()
        },
    );
    assert_shape("status_single_node.txt", &status);
    let arp = vipd.arp_stats();
    assert_shape("arp_stats.txt", &arp);
}

#[test]
fn cluster_status_keeps_its_keys_and_types() {
    let mut c = Cluster::new("api-shape", ZkKind::Standalone, 1);
    c.vip_ok(&["set", "web", "192.0.2.100"]);
    c.start_all();
    c.wait_sole_holder(&vip_set(&["192.0.2.100"]), None, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("no holder: {e}"));
    let status = c.status(0);
    assert_shape("status_cluster.txt", &status);
}
