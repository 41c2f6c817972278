//! docs/API.md's field tables, made from the types: every field path with
//! its JSON type (from serializing an example of each answer, every option
//! filled in and then every option empty), the values of its enum, and a
//! meaning from the table below. A field added, renamed or retyped changes
//! the table, and the test fails until docs/API.md shows it;
//! `UPDATE_API_DOC=1 cargo test -p vipd-api` writes the new tables in.
//!
//! Meanings are a hand-written table rather than the fields' doc comments:
//! reading those needs a derive macro (schemars and the like), a heavier
//! dependency than this check is worth. The test holds the table and the
//! types together: a path without a meaning, or a meaning without a path,
//! fails.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use serde::Serialize;
use serde_json::Value;

use crate::*;

/// An option filled in or left empty.
fn o<T>(full: bool, v: T) -> Option<T> {
    full.then_some(v)
}

const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100));

/// A status with one entry in every list and map; `leaves`: every optional
/// value filled in; `parts`: the optional sections (`zookeeper`, `health`).
fn status(leaves: bool, parts: bool) -> Status {
    Status {
        node_id: "n1".into(),
        mode: "zookeeper".into(),
        role: Role::Leader,
        term: 1,
        leader_terms: 1,
        vips: vec![VipStatus {
            vip: VIP,
            state: VipState::Held,
            interface: o(leaves, "eth0".into()),
            ifindex: o(leaves, 2),
            prefix_len: o(leaves, 24),
            error: o(leaves, "e".into()),
            in_use_by: o(leaves, "02:00:00:00:00:01".into()),
        }],
        last_reconcile: ReconcileSummary {
            errors: vec!["e".into()],
            ..ReconcileSummary::default()
        },
        xdp: XdpStatus {
            enabled: true,
            setting: o(leaves, XdpSetting::Auto),
            attached: vec![XdpAttachment {
                interface: "eth0".into(),
                mode: AttachedMode::Generic,
                driver: o(leaves, "veth".into()),
                reason: "r".into(),
                reason_code: "configured".into(),
            }],
            errors: vec!["e".into()],
            capacity: 8192,
            over_capacity: 0,
            pinned: true,
            bpf_dir: o(leaves, "/sys/fs/bpf/vipd/vipd".into()),
            fence: vec![VipFence {
                vip: VIP,
                state: FenceState::Fenced,
                until_unix_ms: o(leaves, 1),
            }],
        },
        conflicts: BTreeMap::from([(
            VIP,
            ConflictStatus {
                events: 1,
                last_mac: o(leaves, "m".into()),
                last_interface: o(leaves, "eth0".into()),
                last_unix_ms: o(leaves, 1),
            },
        )]),
        lease: LeaseStatus {
            remaining_ms_at_renewal: o(leaves, 1),
            address_lifetime_s: o(leaves, 1),
            ..LeaseStatus::default()
        },
        announcements: BTreeMap::from([(
            VIP,
            AnnounceStats {
                last_sent_unix_ms: o(leaves, 1),
                ..AnnounceStats::default()
            },
        )]),
        tcp_handoff: BTreeMap::from([(VIP, TcpHandoffStats::default())]),
        zookeeper: o(
            parts,
            ZooKeeperStatus {
                session: "connected".into(),
                leader: o(leaves, "n1".into()),
                is_leader: true,
                term: o(leaves, 1),
                fenced: false,
                services: BTreeMap::from([(
                    "web".into(),
                    ServiceStatus {
                        vips: vec![VIP],
                        refused: vec![RefusedValue {
                            value: "v".into(),
                            reason: "r".into(),
                        }],
                        error: o(leaves, "e".into()),
                        last_good: false,
                    },
                )]),
                duplicate_vips: vec![VIP],
                unplaceable: BTreeMap::from([(VIP, "why".into())]),
                last_error: o(leaves, "e".into()),
                withdrawn: o(leaves, "w".into()),
                lease_ms: 1,
                granted_session_ms: o(leaves, 1),
                lease_adjusted: o(leaves, "a".into()),
                tree_acl: TreeAcl {
                    open_znodes: 1,
                    examples: vec!["/vipd".into()],
                },
            },
        ),
        links: LinkHealth {
            down: vec!["eth0".into()],
            down_for_ms: o(leaves, 1),
            withdrawn: false,
        },
        probes: ProbeStats::default(),
        health: o(
            parts,
            HealthStatus {
                healthy: true,
                checks: vec![CheckStatus {
                    check: "tcp:192.0.2.1:80".into(),
                    healthy: o(leaves, true),
                    consecutive_ok: 1,
                    consecutive_failed: 0,
                    runs: 1,
                    failures: 0,
                    last_error: o(leaves, "e".into()),
                    last_duration_ms: o(leaves, 1),
                }],
            },
        ),
    }
}

fn arp_stats(leaves: bool, _parts: bool) -> ArpStats {
    ArpStats {
        role: Role::Leader,
        xdp: true,
        vips: vec![ArpStatsRow {
            vip: VIP,
            interface: o(leaves, "eth0".into()),
            held: true,
            requests: 1,
            xdp_replies: 1,
            announcements_seen: 1,
            announcements_sent: 1,
            foreign_claims: 1,
            last_foreign_mac: o(leaves, "m".into()),
        }],
    }
}

/// Objects keyed by data, and the name their key goes by in the table.
const MAPS: &[(&str, &str)] = &[
    ("conflicts", "<vip>"),
    ("announcements", "<vip>"),
    ("tcp_handoff", "<vip>"),
    ("zookeeper.services", "<service>"),
    ("zookeeper.unplaceable", "<vip>"),
];

fn strings<T: Serialize>(all: &[T]) -> Vec<String> {
    all.iter()
        .map(|v| match serde_json::to_value(v).expect("plain data") {
            Value::String(s) => format!("`{s}`"),
            other => panic!("{other} is not a string"),
        })
        .collect()
}

/// The values of the enum fields, from the enums.
fn enum_values() -> BTreeMap<&'static str, Vec<String>> {
    let roles = strings(&[Role::Follower, Role::Leader]);
    BTreeMap::from([
        ("role", roles),
        ("vips[].state", strings(&VipState::ALL)),
        (
            "xdp.setting",
            strings(&[XdpSetting::Auto, XdpSetting::Native, XdpSetting::Generic]),
        ),
        (
            "xdp.attached[].mode",
            strings(&[AttachedMode::Native, AttachedMode::Generic]),
        ),
        ("xdp.fence[].state", strings(&FenceState::ALL)),
    ])
}

/// path -> JSON type, for every path in `v`.
fn walk(v: &Value, path: &str, out: &mut BTreeMap<String, String>) {
    let child = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    let kind = match v {
        Value::Null => "null".to_string(),
        Value::Bool(_) => "bool".to_string(),
        Value::Number(n) if n.is_f64() => "number".to_string(),
        Value::Number(_) => "integer".to_string(),
        Value::String(_) => "string".to_string(),
        Value::Array(a) => {
            let each = format!("{path}[]");
            for e in a {
                walk(e, &each, out);
            }
            match a.first() {
                Some(Value::Object(_)) | None => "array of objects".to_string(),
                Some(e) => format!("array of {}", kind_of(e)),
            }
        }
        Value::Object(m) => {
            let map = MAPS.iter().find(|(p, _)| *p == path).map(|(_, k)| *k);
            for (k, e) in m {
                walk(e, &child(map.unwrap_or(k)), out);
            }
            if map.is_some() { "map" } else { "object" }.to_string()
        }
    };
    // An array's elements are described by the array's row.
    if !path.is_empty() && !path.ends_with("[]") {
        out.insert(path.to_string(), kind);
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "strings",
        Value::Number(_) => "integers",
        _ => "values",
    }
}

/// The markdown table of one answer: path, type, meaning.
fn table<T: Serialize>(example: fn(bool, bool) -> T, meanings: &[(&str, &str)]) -> String {
    let json = |leaves, parts| serde_json::to_value(example(leaves, parts)).expect("plain data");
    let mut full = BTreeMap::new();
    walk(&json(true, true), "", &mut full);
    let mut nullable = BTreeSet::new();
    for parts in [true, false] {
        let mut empty = BTreeMap::new();
        walk(&json(false, parts), "", &mut empty);
        nullable.extend(
            empty
                .into_iter()
                .filter(|(_, k)| k == "null")
                .map(|(p, _)| p),
        );
    }
    assert!(
        full.values().all(|k| k != "null"),
        "an option left empty in the full example: {full:#?}"
    );
    let meaning: BTreeMap<&str, &str> = meanings.iter().copied().collect();
    let missing: Vec<&String> = full
        .keys()
        .filter(|p| !meaning.contains_key(p.as_str()))
        .collect();
    let stale: Vec<&&str> = meaning.keys().filter(|p| !full.contains_key(**p)).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "fields without a meaning in schema.rs: {missing:?}; meanings of no field: {stale:?}"
    );
    let enums = enum_values();
    // In the order of the JSON: the example's serialized order, by path.
    let order = {
        let mut order = Vec::new();
        walk_order(&json(true, true), "", &mut order);
        order
    };
    let mut out = String::from("| field | type | meaning |\n|---|---|---|\n");
    for path in order {
        let mut kind = full[&path].clone();
        if let Some(values) = enums.get(path.as_str()) {
            kind = format!("{kind}: {}", values.join(", "));
        }
        if nullable.contains(&path) {
            kind.push_str(" or `null`");
        }
        out.push_str(&format!(
            "| `{path}` | {kind} | {} |\n",
            meaning[path.as_str()]
        ));
    }
    out
}

/// The paths in the order the fields are declared (parents first).
fn walk_order(v: &Value, path: &str, out: &mut Vec<String>) {
    if !path.is_empty() && !path.ends_with("[]") && !out.iter().any(|p| p == path) {
        out.push(path.to_string());
    }
    match v {
        Value::Array(a) => {
            for e in a {
                walk_order(e, &format!("{path}[]"), out);
            }
        }
        Value::Object(m) => {
            let map = MAPS.iter().find(|(p, _)| *p == path).map(|(_, k)| *k);
            for (k, e) in m {
                let key = map.unwrap_or(k);
                let child = if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                };
                walk_order(e, &child, out);
            }
        }
        _ => {}
    }
}

const STATUS: &[(&str, &str)] = &[
    ("node_id", "this node's id"),
    (
        "mode",
        "`static` (single node, `--static-vips`) or `zookeeper`",
    ),
    ("role", "what the engine does now"),
    (
        "term",
        "leader term last applied by the engine; in cluster mode the leader znode's sequence number, the same on every node",
    ),
    (
        "leader_terms",
        "leader terms this agent started (becoming leader, or a new term)",
    ),
    ("vips", "one entry per configured VIP, IPv4 VIPs first"),
    (
        "vips[].vip",
        "the VIP: IPv4, or IPv6 in canonical form such as `2001:db8::100`",
    ),
    (
        "vips[].state",
        "`held`: configured here with vipd's mark; `no_route`: no route matches, cannot be served here; `operator_address`: an unmarked address equal to the VIP exists, left alone; `error`: adding failed (see `error`); `not_leader`: configured for the cluster, this node does not lead (`interface` is where it would go); `probing`: the cluster never held it, probed for another host using the address before it is first added; `address_in_use`: a host outside the cluster answered the probe, not added, probed again every `--probe-retry` (see `in_use_by`)",
    ),
    ("vips[].interface", "the interface it is (or would be) on"),
    ("vips[].ifindex", "that interface's index"),
    (
        "vips[].prefix_len",
        "the prefix length it is added with (up to 32 or 128)",
    ),
    ("vips[].error", "why adding it failed"),
    (
        "vips[].in_use_by",
        "with `address_in_use`: the MAC of the host that answered the probe",
    ),
    ("last_reconcile", "the last reconcile pass, and totals"),
    ("last_reconcile.passes", "passes so far"),
    ("last_reconcile.at_unix_ms", "when the last pass ended"),
    ("last_reconcile.duration_us", "how long it took"),
    ("last_reconcile.added", "VIPs it added"),
    ("last_reconcile.removed", "VIPs it removed"),
    (
        "last_reconcile.errors",
        "its errors; an IPv6 VIP of ours found `dadfailed` is reported here, then replaced",
    ),
    ("last_reconcile.error_passes", "passes that met an error"),
    (
        "last_reconcile.duration_us_total",
        "all passes' durations together",
    ),
    ("xdp", "the XDP program"),
    ("xdp.enabled", "false with `--no-xdp`"),
    ("xdp.setting", "`--xdp-mode`; `null` with `--no-xdp`"),
    (
        "xdp.attached",
        "one entry per interface the program is attached to",
    ),
    ("xdp.attached[].interface", "the interface"),
    ("xdp.attached[].mode", "the mode in effect"),
    (
        "xdp.attached[].driver",
        "the driver as ethtool names it, e.g. `veth`; `null` if unknown",
    ),
    (
        "xdp.attached[].reason",
        "why this mode, in words, e.g. `auto: driver veth: native XDP_TX does not deliver unless the peer runs an XDP program`, `fallback from native: 1 XDP_TX errors for 1 answers in 250 ms`",
    ),
    (
        "xdp.attached[].reason_code",
        "`configured` (the mode `--xdp-mode` forces), `driver_native` (`auto`, the driver delivers native XDP_TX), `driver_loses_native_tx` (`auto`, generic because of the driver: veth), `native_refused` (`auto`, the driver refused native mode), `fallback` (native answers were seen lost: generic since; docs/OPERATIONS.md, \"XDP modes\"), `adopted` (a link pinned by the previous vipd, kept in its mode)",
    ),
    (
        "xdp.errors",
        "errors of the XDP program (attaching, map updates)",
    ),
    ("xdp.capacity", "VIPs the XDP maps hold per family (8192)"),
    (
        "xdp.pinned",
        "the fence outlives vipd: its links and maps are pinned in `bpf_dir`, so the kernel alone fences a killed or frozen vipd's VIPs at lease end (docs/OPERATIONS.md, \"The pinned fence\")",
    ),
    (
        "xdp.bpf_dir",
        "where the fence is pinned (`--bpf-dir`); `null`: nowhere, it dies with vipd",
    ),
    (
        "xdp.fence",
        "every VIP with an entry in the programs' maps; a VIP not listed is inert",
    ),
    ("xdp.fence[].vip", "the VIP"),
    (
        "xdp.fence[].state",
        "`serving` (before its lease end), `fenced` (from its lease end to the end of its window: nothing answers, nothing enters or leaves with the VIP), `inert` (past its window)",
    ),
    (
        "xdp.fence[].until_unix_ms",
        "`serving`: the lease's end; `fenced`: the window's end (ms since the Unix epoch); `null`: no end (no lease, or fenced until vipd clears it)",
    ),
    (
        "xdp.over_capacity",
        "configured VIPs beyond it, both families: configured and answered by the kernel, without XDP entries (docs/OPERATIONS.md, \"A sick agent\")",
    ),
    (
        "conflicts",
        "foreign claims of our VIPs (ARP for IPv4 VIPs, NDP for IPv6 ones), per VIP",
    ),
    ("conflicts.<vip>", "one VIP's claims"),
    ("conflicts.<vip>.events", "claims seen"),
    ("conflicts.<vip>.last_mac", "the MAC of the last"),
    ("conflicts.<vip>.last_interface", "where it came in"),
    ("conflicts.<vip>.last_unix_ms", "when"),
    ("lease", "what the engine did with the leader's lease"),
    (
        "lease.remaining_ms_at_renewal",
        "lease left at the last renewal; `null` without a lease",
    ),
    (
        "lease.address_lifetime_s",
        "the lifetime the VIPs are added with; `null` without a lease",
    ),
    ("lease.renewals", "renewals applied"),
    (
        "lease.renewal_us_total",
        "time spent renewing, all renewals",
    ),
    ("lease.last_renewal_us", "time the last renewal took"),
    ("lease.errors", "address renewals that failed"),
    ("lease.expired", "times the lease ran out while leading"),
    ("announcements", "announcements, per VIP"),
    ("announcements.<vip>", "one VIP's announcements"),
    (
        "announcements.<vip>.frames_sent",
        "gratuitous ARP frames, or unsolicited Neighbor Advertisements for an IPv6 VIP",
    ),
    (
        "announcements.<vip>.last_sent_unix_ms",
        "when the last was sent",
    ),
    (
        "announcements.<vip>.errors",
        "frames that could not be sent",
    ),
    (
        "announcements.<vip>.dropped",
        "frames dropped unsent: the VIP no longer held there, or the lease over, when their turn came",
    ),
    (
        "tcp_handoff",
        "TCP handoff, per VIP; empty with `--tcp-handoff false`",
    ),
    ("tcp_handoff.<vip>", "one VIP's handoff"),
    (
        "tcp_handoff.<vip>.published",
        "connections in this node's last publish of the VIP",
    ),
    (
        "tcp_handoff.<vip>.publish_overflow",
        "connections over the cap (4096 per VIP), left out of the last publish",
    ),
    (
        "tcp_handoff.<vip>.tickles_sent",
        "tickle ACKs sent to the clients the VIP's last holder published",
    ),
    (
        "tcp_handoff.<vip>.tickle_errors",
        "tickles that could not be sent",
    ),
    (
        "tcp_handoff.<vip>.aborted",
        "local TCP sockets aborted after the VIP was released (IPv6 only inside its fence window)",
    ),
    (
        "tcp_handoff.<vip>.not_aborted",
        "releases of an IPv6 VIP whose sockets were left alone: its fence window was not open",
    ),
    ("zookeeper", "coordination; `null` in static mode"),
    (
        "zookeeper.session",
        "`connecting`, `connected`, `disconnected`, `expired` or `closed`",
    ),
    ("zookeeper.leader", "the leader's node id"),
    ("zookeeper.is_leader", "this node leads"),
    ("zookeeper.term", "the leader znode's sequence number"),
    (
        "zookeeper.fenced",
        "the lease ran out without an acknowledged renewal",
    ),
    ("zookeeper.services", "the services, by name"),
    (
        "zookeeper.services.<service>",
        "what one service's znode gives this node",
    ),
    (
        "zookeeper.services.<service>.vips",
        "the VIPs served for it",
    ),
    (
        "zookeeper.services.<service>.refused",
        "entries that are not VIPs, dropped alone",
    ),
    (
        "zookeeper.services.<service>.refused[].value",
        "the entry as written, shortened",
    ),
    (
        "zookeeper.services.<service>.refused[].reason",
        "why it is not a VIP",
    ),
    (
        "zookeeper.services.<service>.error",
        "why the znode cannot be parsed at all; `null` when it parses",
    ),
    (
        "zookeeper.services.<service>.last_good",
        "`vips` are the last good VIPs, kept while `error` is set",
    ),
    (
        "zookeeper.duplicate_vips",
        "VIPs named by more than one service: served once",
    ),
    (
        "zookeeper.unplaceable",
        "on the leader: VIP -> why it cannot be served here, while no standing member can serve more; held nowhere",
    ),
    ("zookeeper.unplaceable.<vip>", "why"),
    ("zookeeper.last_error", "the last coordination error"),
    (
        "zookeeper.withdrawn",
        "why this node does not stand for election now (a VIP interface down past the grace, failing health checks); `null` while it stands",
    ),
    (
        "zookeeper.lease_ms",
        "the lease this node leads on in the current session",
    ),
    (
        "zookeeper.granted_session_ms",
        "the session timeout ZooKeeper granted the current session; `null` before the first",
    ),
    (
        "zookeeper.lease_adjusted",
        "why `lease_ms` is not the configured lease, or why the node does not stand on this session (ZooKeeper granted a session too short for it); `null` while the configured lease is used",
    ),
    (
        "zookeeper.tree_acl",
        "the cluster's tree as last searched for znodes anyone may change",
    ),
    (
        "zookeeper.tree_acl.open_znodes",
        "how many are open; 0 when all are protected",
    ),
    ("zookeeper.tree_acl.examples", "the first few of them"),
    ("links", "the VIP interfaces"),
    ("links.down", "interfaces down or without carrier now"),
    ("links.down_for_ms", "how long; `null` while all are up"),
    ("links.withdrawn", "down past `--link-grace`"),
    (
        "probes",
        "address-conflict probes, one count per VIP probed",
    ),
    ("probes.probed", "VIPs probed"),
    ("probes.free", "nobody answered: added"),
    (
        "probes.cluster_answers",
        "only cluster nodes answered: added",
    ),
    ("probes.in_use", "a host outside the cluster answered"),
    ("probes.errors", "probes that could not be made"),
    ("health", "health checks; `null` without `--check`"),
    ("health.healthy", "every check healthy"),
    ("health.checks", "one entry per check"),
    ("health.checks[].check", "the check as given"),
    (
        "health.checks[].healthy",
        "its state; `null` before its first result",
    ),
    ("health.checks[].consecutive_ok", "successes in a row"),
    ("health.checks[].consecutive_failed", "failures in a row"),
    ("health.checks[].runs", "runs so far"),
    ("health.checks[].failures", "failed runs so far"),
    (
        "health.checks[].last_error",
        "why the last run failed; `null` after a success",
    ),
    (
        "health.checks[].last_duration_ms",
        "how long the last run took",
    ),
];

const ARP_STATS: &[(&str, &str)] = &[
    ("role", "what the engine does now"),
    ("xdp", "false with `--no-xdp` (no counters then)"),
    ("vips", "one row per VIP configured, counted or announced"),
    ("vips[].vip", "the VIP"),
    (
        "vips[].interface",
        "its interface; `null` when it has no place here",
    ),
    ("vips[].held", "held here"),
    (
        "vips[].requests",
        "requests for the VIP seen by the XDP program (below)",
    ),
    (
        "vips[].xdp_replies",
        "of those, answered by the XDP program itself",
    ),
    (
        "vips[].announcements_seen",
        "announcements about the VIP seen coming in",
    ),
    (
        "vips[].announcements_sent",
        "announcements this agent sent for the VIP",
    ),
    (
        "vips[].foreign_claims",
        "claims of the VIP from a MAC that is not ours, while we hold it",
    ),
    ("vips[].last_foreign_mac", "the MAC of the last such claim"),
];

/// An answer's name in the markers, and its table.
type Section = (&'static str, fn() -> String);

/// The generated tables between their markers in docs/API.md.
const SECTIONS: &[Section] = &[
    ("status", || table(status, STATUS)),
    ("arp_stats", || table(arp_stats, ARP_STATS)),
];

fn markers(name: &str) -> (String, String) {
    (
        format!(
            "<!-- fields of {name}: made from vipd-api's types, UPDATE_API_DOC=1 cargo test -p vipd-api rewrites them -->\n"
        ),
        format!("<!-- end of the fields of {name} -->\n"),
    )
}

#[test]
fn docs_api_md_shows_the_fields_of_the_types() {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/API.md");
    let doc = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let mut want = doc.clone();
    for (name, make) in SECTIONS {
        let (start, end) = markers(name);
        let from = want
            .find(&start)
            .unwrap_or_else(|| panic!("docs/API.md has no marker {start:?}"))
            + start.len();
        let to = from
            + want[from..]
                .find(&end)
                .unwrap_or_else(|| panic!("docs/API.md has no marker {end:?}"));
        want.replace_range(from..to, &make());
    }
    if std::env::var_os("UPDATE_API_DOC").is_some() {
        std::fs::write(&file, &want).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
        return;
    }
    if doc != want {
        let diff: Vec<String> = want
            .lines()
            .filter(|l| !doc.lines().any(|d| d == *l))
            .map(|l| format!("+ {l}"))
            .chain(
                doc.lines()
                    .filter(|l| !want.lines().any(|w| w == *l))
                    .map(|l| format!("- {l}")),
            )
            .collect();
        panic!(
            "docs/API.md differs from the types (UPDATE_API_DOC=1 cargo test -p vipd-api rewrites it):\n{}",
            diff.join("\n")
        );
    }
}

#[test]
fn every_vip_state_is_written_as_its_api_string() {
    for state in VipState::ALL {
        assert_eq!(
            serde_json::to_value(state).expect("plain data"),
            Value::from(state.as_str())
        );
    }
    for role in [Role::Follower, Role::Leader] {
        assert_eq!(
            serde_json::to_value(role).expect("plain data"),
            Value::from(role.as_str())
        );
    }
    for mode in [AttachedMode::Native, AttachedMode::Generic] {
        assert_eq!(
            serde_json::to_value(mode).expect("plain data"),
            Value::from(mode.as_str())
        );
    }
}
