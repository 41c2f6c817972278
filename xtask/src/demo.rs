//! `cargo xtask demo`: vipd doing its job in a lab, in about a minute.
//! Three nodes and a ZooKeeper elect a leader that serves a VIP to a client;
//! every node runs what a storage cluster's VIP is for, an iSCSI target
//! (tgtd, one LUN on a shared image) and a web console (busybox httpd). The
//! leader is cut off; the takeover is shown as a timeline beside the client's
//! iSCSI reads per second (iscsi-perf, through the VIP) and its console
//! answering from the new node. Nothing outside the lab's own namespaces is
//! touched; Ctrl-C tears it all down.

use std::{
    panic::AssertUnwindSafe,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use vipd_tests::{
    lab::{CaptureOptions, Host, fmt_mac},
    services::{
        ISCSI_PORT, IoCompletions, PerfReport, PerfRun, Poller, Services, console_get, console_url,
        longest_gap, lun_url, read_capacity, reads_per_second,
    },
    tickle::{Reset, is_reset},
};

use crate::bench::timeline::{
    self, Agent, FailoverLab, INTERRUPTED, PORT, VIP, VipdSettings, binaries, check_interrupt,
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
    let cluster = FailoverLab::start("demo", Agent::Vipd(SETTINGS), bins, &p)?;
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

    p(
        "starting on every node an iSCSI target (tgtd, one LUN on an image all nodes share) and a web console (busybox httpd)",
    );
    let hosts: Vec<&Host> = cluster.nodes.iter().map(|n| &n.host).collect();
    let services = Services::start(cluster.lab.dir(), &hosts);
    let console_answer = console_get(&cluster.client, VIP, Duration::from_secs(2))
        .map_or("(no answer)".to_string(), |n| format!("served-by {n}"));
    println!(
        "client -> {} (busybox wget): {console_answer}",
        console_url(VIP)
    );
    let size = read_capacity(&cluster.client, VIP, Duration::from_secs(5))
        .map_or("(no answer)".to_string(), |b| format!("{} MiB", b >> 20));
    println!("client -> {} (iscsi-readcapacity16): {size}", lun_url(VIP));
    // The initiator's side of the wire: every I/O completed (iscsi-perf
    // itself prints once a second), and the resets its connections get.
    let io = IoCompletions::start(&cluster.client, "eth0", VIP);
    let resets = cluster.client.capture_with(
        "eth0",
        CaptureOptions {
            proto: libc::ETH_P_IP as u16,
            keep: Some(is_reset),
            realtime: true,
        },
    );
    let perf = PerfRun::start(&cluster.client, VIP);
    let web = {
        let client = cluster.client.clone();
        Poller::start(Duration::from_millis(100), move || {
            console_get(&client, VIP, Duration::from_secs(1))
        })
    };
    // A few seconds of steady reads before the cut.
    let reading = Instant::now();
    while perf.reports().iter().filter(|r| r.iops > 0).count() < 3 {
        if reading.elapsed() > Duration::from_secs(15) {
            bail!(
                "iscsi-perf read nothing through {VIP}: {}",
                perf.process.stdout()
            );
        }
        timeline::sleep(Duration::from_millis(100))?;
    }
    p(&format!(
        "client's iscsi-perf reads {} sequentially through {VIP} (about {} reads/s)",
        lun_url(VIP),
        perf.reports().last().map_or(0, |r| r.iops)
    ));

    p(&format!(
        "isolating {}: its links lose carrier; waiting for the takeover (session timeout {} s, lease {} ms: the default third)",
        cluster.nodes[leader].name,
        SETTINGS.session_timeout.as_secs(),
        (SETTINGS.session_timeout / 3).as_millis()
    ));
    let t = cluster.takeover(Duration::ZERO, Duration::from_secs(30))?;
    let Some(new) = t.new else {
        bail!(
            "no node took the VIP over within 30 s; logs in {}",
            cluster.lab.dir().display()
        );
    };
    let (old_name, new_name) = (&cluster.nodes[t.old].name, &cluster.nodes[new].name);
    // The instant of the cut, for the client's own observers.
    let cut = Instant::now()
        .checked_sub(t.cut_wall.elapsed().unwrap_or_default())
        .unwrap_or_else(Instant::now);
    p(
        "waiting for the client's iSCSI session to read again and the console to answer from the new node",
    );
    let back = Instant::now();
    loop {
        let after = perf
            .reports()
            .iter()
            .filter(|r| r.at > cut + t.configured.unwrap_or_default() && r.iops > 0)
            .count();
        let console = web
            .samples()
            .iter()
            .any(|s| s.started > cut && s.value.as_deref() == Some(new_name.as_str()));
        if (after >= 3 && console) || back.elapsed() > Duration::from_secs(20) {
            break;
        }
        timeline::sleep(Duration::from_millis(100))?;
    }
    let reports = perf.reports();
    let console_samples = web.stop();
    drop(perf);
    let end = Instant::now();
    let completions = io.stop();
    let reset_frames = resets.stop();
    let steady = median_iops(&reports, cut);
    // The longest stretch without a completed read, from the last one
    // before the cut.
    let before_cut = completions
        .iter()
        .rev()
        .find(|t| **t <= cut)
        .copied()
        .unwrap_or(cut);
    let stall = longest_gap(&completions, before_cut, end);
    let since_cut = |at: Instant| at.checked_duration_since(cut);
    let new_mac = cluster.nodes[new].mac;
    let reset_at = reset_frames
        .iter()
        .filter(|f| f.at > cut && !f.outgoing)
        .find(|f| {
            Reset::parse(&f.bytes).is_some_and(|r| {
                r.eth_src == new_mac && r.src == std::net::SocketAddr::new(VIP.into(), ISCSI_PORT)
            })
        })
        .and_then(|f| since_cut(f.at));
    let console_new = console_samples
        .iter()
        .find(|s| s.started > cut && s.value.as_deref() == Some(new_name.as_str()))
        .and_then(|s| since_cut(s.at));
    let old_log = cluster.nodes[t.old].agent.stderr();
    let lost_log = timeline::log_event_at(&old_log, "ZooKeeper connection lost", t.cut_wall);
    let fenced_log = timeline::log_event_at(&old_log, "no lease renewal acknowledged", t.cut_wall);
    let new_log = cluster.nodes[new].agent.stderr();
    let takeover_log = timeline::log_event_at(&new_log, timeline::TAKEOVER_LINE, t.cut_wall);
    let tickled = tickle_line(&new_log, t.cut_wall);
    let link_down_log =
        timeline::log_event_at(&old_log, "VIP interface down past the grace", t.cut_wall);
    let lease = SETTINGS.session_timeout / 3;
    let mut lines: Vec<(Option<Duration>, String)> = vec![
        (
            Some(Duration::ZERO),
            format!("{old_name} cut off: its links lose carrier"),
        ),
        (
            link_down_log,
            format!(
                "{old_name}: its VIP interface has been without carrier past the 200 ms grace: it withdraws (its log)"
            ),
        ),
        (
            lost_log,
            format!(
                "{old_name} loses its ZooKeeper connection; it keeps the VIP only while its lease runs (its log)"
            ),
        ),
        (
            fenced_log,
            format!(
                "{old_name} fences: no renewal acknowledged for its {} ms lease (its log)",
                lease.as_millis()
            ),
        ),
        (
            t.old_removed,
            format!("{old_name} removed {VIP} (netlink event in {old_name})"),
        ),
        (
            takeover_log,
            format!(
                "{new_name}, next in line, saw no renewal for lease + renewal + margin ({} ms) while ZooKeeper answered it: deletes {old_name}'s candidacy, conditionally ({new_name}'s log)",
                crate::bench::failover::LeaseRule::new(SETTINGS.session_timeout, None)
                    .takeover_after
                    .as_millis()
            ),
        ),
        (
            t.elected,
            format!(
                "{new_name} elected leader, before {old_name}'s session ({} s) could expire ({new_name}'s log)",
                SETTINGS.session_timeout.as_secs()
            ),
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
        (
            tickled.map(|(at, _)| at),
            format!(
                "{new_name} sends {} tickle ACK(s) to the clients {old_name} published: each client answers {new_name}, whose kernel resets the stale connection ({new_name}'s log)",
                tickled.map_or(0, |(_, n)| n)
            ),
        ),
        (
            reset_at,
            format!(
                "client's iSCSI connection reset by {new_name} (a TCP RST on the wire): libiscsi logs in again at once"
            ),
        ),
        (
            // At the cut when the last one came a little before it.
            stall.map(|(last, _)| last.saturating_duration_since(cut)),
            format!("client's iSCSI session: last read through {VIP} (on the wire)"),
        ),
        (
            stall.and_then(|(_, first)| since_cut(first)),
            format!(
                "client's iSCSI session reads again, reconnected to {new_name} (first Data-In on the wire)"
            ),
        ),
        (
            console_new,
            format!(
                "console {} answers \"served-by {new_name}\" (busybox wget)",
                console_url(VIP)
            ),
        ),
    ];
    // Stable, by whole ms: events within the same ms keep their causal order.
    lines.sort_by_key(|(at, _)| at.map_or(u128::MAX, |d| d.as_millis()));
    println!("\ntakeover timeline (ms after the cut):");
    // What did not happen in this run (a node that withdrew for its link
    // never waited for its lease to end) is not shown.
    for (at, what) in &lines {
        if let Some(d) = at {
            println!("  +{:>6} ms  {what}", d.as_millis());
        }
    }
    println!("  VIP on two nodes at once: {} ms\n", t.overlap.as_millis());
    let resumed = stall.map(|(_, first)| first);
    print_reads_per_second(&reports, steady, cut, resumed, (old_name, new_name));
    match stall {
        Some((a, b)) => println!(
            "  no read for {} ms (on the wire): from the last read through {old_name} until {new_name} had taken {VIP} over, tickled the client and the session had logged in again\n",
            b.saturating_duration_since(a).as_millis()
        ),
        None => println!("  (no read seen after the cut)\n"),
    }
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
    drop(services);
    drop(cluster);
    p("done: every namespace and process of the demo is gone");
    Ok(())
}

/// The median reads per second of the reports before `cut`.
fn median_iops(reports: &[PerfReport], cut: Instant) -> u64 {
    let mut v: Vec<u64> = reports
        .iter()
        .filter(|r| r.at < cut && r.iops > 0)
        .map(|r| r.iops)
        .collect();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// The client's iSCSI reads per second around the cut, as bars.
fn print_reads_per_second(
    reports: &[PerfReport],
    steady: u64,
    cut: Instant,
    resumed: Option<Instant>,
    (old_name, new_name): (&str, &str),
) {
    let last = reports
        .last()
        .map_or(0, |r| r.at.saturating_duration_since(cut).as_secs() as i64);
    let per = reads_per_second(reports, steady, cut, -2..last.max(1));
    let top = per.iter().map(|&(_, n)| n).max().unwrap_or(0).max(1);
    let resumed = resumed
        .and_then(|at| at.checked_duration_since(cut))
        .map(|d| d.as_secs() as i64);
    println!(
        "client's iSCSI reads through {VIP} per second (iscsi-perf in the client; second 0 starts at the cut):"
    );
    for (k, n) in per {
        let bar = "#".repeat((n * 40 / top) as usize);
        let note = if k == 0 && resumed == Some(0) {
            format!("   <- {old_name} cut off; the session reads again on {new_name}")
        } else if k == 0 {
            format!("   <- {old_name} cut off")
        } else if Some(k) == resumed {
            format!("   <- the session reads again, on {new_name}")
        } else {
            String::new()
        };
        let line = format!("  {k:>+3} s {n:>7}  {bar:<40}{note}");
        println!("{}", line.trim_end());
    }
}

/// When (after `after`) the new holder's log says it tickled the VIP's
/// clients, and how many tickles it sent.
fn tickle_line(log: &str, after: std::time::SystemTime) -> Option<(Duration, u64)> {
    log.lines().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if !v["fields"]["message"]
            .as_str()?
            .starts_with("tickled the VIP's clients")
        {
            return None;
        }
        let at = timeline::parse_rfc3339(v["timestamp"].as_str()?)?;
        Some((
            at.duration_since(after).ok()?,
            v["fields"]["tickles"].as_u64()?,
        ))
    })
}
