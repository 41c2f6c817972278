//! `cargo xtask demo`: vipd doing its job in a lab, in about a minute.
//! Three nodes and a ZooKeeper elect a leader that serves a VIP to a client;
//! the leader is cut off and the takeover is shown as a timeline. Nothing
//! outside the lab's own namespaces is touched; Ctrl-C tears it all down.

use std::{
    panic::AssertUnwindSafe,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use vipd_tests::lab::fmt_mac;

use crate::bench::timeline::{
    self, Agent, Cluster, INTERRUPTED, PORT, VIP, VipdSettings, binaries, check_interrupt,
    install_sigint_handler, preflight, progress,
};

#[derive(clap::Args)]
pub struct Options {}

const SETTINGS: VipdSettings = VipdSettings {
    session_timeout: Duration::from_secs(2),
    garp_interval: Duration::from_secs(1),
    garp_rounds: 3,
};

pub fn run(_opts: &Options) -> Result<()> {
    preflight().context("cargo xtask demo")?;
    install_sigint_handler();
    eprintln!("demo: building vipd and vipctl (release) if needed");
    let bins = binaries()?;
    // Lab helpers report failures as panics; with Ctrl-C pressed, the
    // children get SIGINT too and such a panic is just the interruption.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
            hook(info);
        }
    }));
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| demo(&bins)));
    let _ = std::panic::take_hook();
    let interrupted = INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst);
    match result {
        _ if interrupted => bail!("demo interrupted (Ctrl-C); the lab was torn down"),
        Ok(r) => r,
        Err(_) => bail!("demo failed (see the message above); the lab was torn down"),
    }
}

fn demo(bins: &std::path::Path) -> Result<()> {
    let start = Instant::now();
    let p = |s: &str| progress(start, s);
    p(
        "building the lab: nodes n1, n2, n3 and a client on 192.0.2.0/24, ZooKeeper on 203.0.113.0/24",
    );
    let cluster = Cluster::start("demo", Agent::Vipd(SETTINGS), bins, &p)?;
    let leader = *cluster.holders().first().context("no leader")?;
    // Every node answers on its control socket once it is up.
    let up = Instant::now();
    while (0..cluster.nodes.len()).any(|i| cluster.status(i).is_none()) {
        if up.elapsed() > Duration::from_secs(20) {
            break;
        }
        timeline::sleep(Duration::from_millis(100))?;
    }
    p(&format!(
        "{} leads and holds {VIP}; `vipctl status` of each node:",
        cluster.nodes[leader].name
    ));
    for i in 0..cluster.nodes.len() {
        check_interrupt()?;
        let text = cluster
            .vipctl_node(i, &["status"])
            .unwrap_or_else(|e| format!("{e:#}\n"));
        println!("--- {} ---", cluster.nodes[i].name);
        print!("{text}");
    }
    let banner = cluster
        .client
        .tcp_probe(VIP, PORT, Duration::from_secs(1))
        .unwrap_or_else(|| "(no answer)".into());
    let neigh = cluster
        .client
        .neigh(VIP)
        .and_then(|n| n.lladdr)
        .unwrap_or_else(|| "-".into());
    println!(
        "client -> {VIP}:{PORT}: {}   (client's neighbour entry: {VIP} at {neigh}, {}'s MAC)",
        banner.trim(),
        cluster.nodes[leader].name
    );
    check_interrupt()?;

    p(&format!(
        "isolating {}: its links lose carrier; waiting for the takeover (session timeout {} s)",
        cluster.nodes[leader].name,
        SETTINGS.session_timeout.as_secs()
    ));
    let t = cluster.takeover(Duration::ZERO, Duration::from_secs(30))?;
    let Some(new) = t.new else {
        bail!(
            "no node took the VIP over within 30 s; logs in {}",
            cluster.lab.dir().display()
        );
    };
    let (old_name, new_name) = (&cluster.nodes[t.old].name, &cluster.nodes[new].name);
    let old_log = cluster.nodes[t.old].agent.stderr();
    let fenced_log = timeline::log_event_at(&old_log, "ZooKeeper connection lost", t.cut_wall)
        .or_else(|| timeline::log_event_at(&old_log, "no heartbeat answered", t.cut_wall));
    let mut lines: Vec<(Option<Duration>, String)> = vec![
        (
            Some(Duration::ZERO),
            format!("{old_name} cut off: its links lose carrier"),
        ),
        (
            fenced_log,
            format!("{old_name} fences: lost ZooKeeper, stops acting as leader (its log)"),
        ),
        (
            t.old_removed,
            format!("{old_name} removed {VIP} (netlink event in {old_name})"),
        ),
        (
            t.elected,
            format!("{new_name} elected leader: {old_name}'s session expired ({new_name}'s log)"),
        ),
        (
            t.configured,
            format!("{VIP} configured on {new_name} eth0 (netlink event in {new_name})"),
        ),
        (
            t.first_garp,
            format!(
                "client sees the first gratuitous ARP from {new_name} ({})",
                fmt_mac(cluster.nodes[new].mac)
            ),
        ),
        (
            t.neigh_switched,
            format!("client's neighbour entry for {VIP} switched to {new_name}'s MAC"),
        ),
        (
            t.served,
            format!("client served by {new_name} (TCP banner \"served-by {new_name}\")"),
        ),
    ];
    // Stable, by whole ms: events within the same ms keep their causal order.
    lines.sort_by_key(|(at, _)| at.map_or(u128::MAX, |d| d.as_millis()));
    println!("\ntakeover timeline (ms after the cut):");
    for (at, what) in &lines {
        match at {
            Some(d) => println!("  +{:>6} ms  {what}", d.as_millis()),
            None => println!("  {:>9}  {what} (not seen)", "-"),
        }
    }
    println!("  VIP on two nodes at once: {} ms\n", t.overlap.as_millis());
    check_interrupt()?;
    p(&format!(
        "giving {old_name} its links back: it rejoins as a follower"
    ));
    cluster.restore(t.old, new)?;
    let first_line = cluster
        .vipctl_node(t.old, &["status"])
        .map(|s| s.lines().take(2).collect::<Vec<_>>().join("\n"))
        .unwrap_or_else(|e| format!("{e:#}"));
    println!("--- {old_name} ---\n{first_line}");
    // The sync rounds (R8) announce again every second for three rounds.
    let rounds = SETTINGS.garp_interval * SETTINGS.garp_rounds;
    let left = (t.configured.unwrap_or_default() + rounds + Duration::from_millis(500))
        .saturating_sub(t.cut_wall.elapsed().unwrap_or_default());
    timeline::sleep(left)?;
    let arping = cluster.client.arping(VIP, 3, "eth0");
    let macs: std::collections::BTreeSet<&str> =
        arping.reply_macs.iter().map(String::as_str).collect();
    println!(
        "client: arping {VIP}: {} sent, {} answered by {} ({new_name}'s MAC; the answers come from its XDP program)",
        arping.sent,
        arping.received,
        macs.into_iter().collect::<Vec<_>>().join(", ")
    );
    check_interrupt()?;
    p(&format!("`vipctl arp stats` of the new leader {new_name}:"));
    match cluster.vipctl_node(new, &["arp", "stats"]) {
        Ok(text) => print!("{text}"),
        Err(e) => println!("{e:#}"),
    }
    p("tearing the lab down");
    drop(cluster);
    p("done: every namespace and process of the demo is gone");
    Ok(())
}
