//! The tables vipctl prints for `status` and `arp stats` (without `--json`).

use vipd::api::{ArpStats, Status};

/// An optional value in a table: `-` when absent.
fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Whether this node serves in `vipctl status`: withdrawn or not and why,
/// VIP links, checks.
fn serving_text(v: &Status) -> String {
    let mut out = String::new();
    if let Some(why) = v.zookeeper.as_ref().and_then(|z| z.withdrawn.as_ref()) {
        out.push_str(&format!("withdrawn from the election: {why}\n"));
    }
    let links = &v.links;
    if !links.down.is_empty() {
        out.push_str(&format!(
            "VIP interfaces down: {} for {} ms{}\n",
            links.down.join(" "),
            opt(links.down_for_ms),
            if links.withdrawn {
                " (past the grace)"
            } else {
                ""
            }
        ));
    }
    if let Some(h) = &v.health {
        out.push_str(&format!(
            "health {}\n",
            if h.healthy { "healthy" } else { "UNHEALTHY" }
        ));
        for c in &h.checks {
            let state = match c.healthy {
                Some(true) => "healthy",
                Some(false) => "unhealthy",
                None => "pending",
            };
            out.push_str(&format!(
                "  check {}: {state}  ok {} failed {} in a row, {} runs, {} failures{}\n",
                c.check,
                c.consecutive_ok,
                c.consecutive_failed,
                c.runs,
                c.failures,
                c.last_error
                    .as_ref()
                    .map(|e| format!("  last error: {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

/// The ZooKeeper part of `vipctl status`: session, lease, tree, services.
fn zookeeper_text(zk: &vipd_api::ZooKeeperStatus) -> String {
    let mut out = format!(
        "zookeeper session {}  leader {}  fenced {}  lease {} ms\n",
        zk.session,
        opt(zk.leader.as_ref()),
        zk.fenced,
        zk.lease_ms
    );
    if let Some(why) = &zk.lease_adjusted {
        out.push_str(&format!("lease adjusted: {why}\n"));
    }
    let open = zk.tree_acl.open_znodes;
    if open > 0 {
        out.push_str(&format!(
            "zookeeper tree OPEN: {open} znodes anyone can change (e.g. {}): run `vipctl acl repair` with the cluster's credential\n",
            zk.tree_acl.examples.join(" ")
        ));
    }
    for (name, svc) in &zk.services {
        let vips: Vec<String> = svc.vips.iter().map(ToString::to_string).collect();
        let err = svc
            .error
            .as_ref()
            .map(|e| {
                if svc.last_good {
                    format!("  (LAST GOOD VIPs kept) ERROR: {e}")
                } else {
                    format!("  ERROR: {e}")
                }
            })
            .unwrap_or_default();
        out.push_str(&format!("service {name}: {}{err}\n", vips.join(" ")));
        for r in &svc.refused {
            out.push_str(&format!("  refused {:?}: {}\n", r.value, r.reason));
        }
    }
    for (vip, why) in &zk.unplaceable {
        out.push_str(&format!("unplaceable {vip}: {why}\n"));
    }
    out
}

pub(crate) fn status_table(v: &Status) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "node {}  mode {}  role {}  term {}\n",
        v.node_id, v.mode, v.role, v.term
    ));
    if let Some(zk) = &v.zookeeper {
        out.push_str(&zookeeper_text(zk));
    }
    out.push_str(&serving_text(v));
    let r = &v.last_reconcile;
    out.push_str(&format!(
        "last reconcile: {} passes, {} us, +{} -{}, {} errors\n",
        r.passes,
        r.duration_us,
        r.added,
        r.removed,
        r.errors.len()
    ));
    for e in &r.errors {
        out.push_str(&format!("  error: {e}\n"));
    }
    out.push_str(&vipd::api::xdp_status_text(&v.xdp));
    let w = vip_width(v.vips.iter().map(|vip| vip.vip.to_string().len()));
    out.push_str(&format!(
        "{:<w$} {:<17} {:<12} {:>6}  {}\n",
        "VIP", "STATE", "INTERFACE", "PREFIX", "NOTE"
    ));
    for vip in &v.vips {
        out.push_str(&format!(
            "{:<w$} {:<17} {:<12} {:>6}  {}\n",
            vip.vip.to_string(),
            vip.state.as_str(),
            opt(vip.interface.as_ref()),
            opt(vip.prefix_len),
            vip.error.as_deref().unwrap_or("")
        ));
    }
    out
}

/// Width of the VIP column: 15 characters hold every IPv4 address; an IPv6
/// one may take up to 39.
fn vip_width(lengths: impl Iterator<Item = usize>) -> usize {
    lengths.max().unwrap_or(0).max(16)
}

pub(crate) fn arp_table(stats: &ArpStats) -> String {
    let w = vip_width(stats.vips.iter().map(|r| r.vip.to_string().len()));
    let mut out = format!(
        "role {}  xdp {}\n{:<w$} {:<12} {:<5} {:>9} {:>9} {:>9} {:>9} {:>8}  {}\n",
        stats.role,
        if stats.xdp { "on" } else { "off" },
        "VIP",
        "INTERFACE",
        "HELD",
        "REQUESTS",
        "XDP-REPL",
        "ANN-SEEN",
        "ANN-SENT",
        "CLAIMS",
        "LAST-FOREIGN-MAC"
    );
    for r in &stats.vips {
        out.push_str(&format!(
            "{:<w$} {:<12} {:<5} {:>9} {:>9} {:>9} {:>9} {:>8}  {}\n",
            r.vip.to_string(),
            r.interface.as_deref().unwrap_or("-"),
            if r.held { "yes" } else { "no" },
            r.requests,
            r.xdp_replies,
            r.announcements_seen,
            r.announcements_sent,
            r.foreign_claims,
            r.last_foreign_mac.as_deref().unwrap_or("-")
        ));
    }
    out
}
