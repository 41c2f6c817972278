//! `bench serving`: how the VIPs move when the leader cannot or should not
//! serve (issue 14). Three nodes, ZooKeeper on the management bridge (eth1)
//! and the VIPs on the data bridge (eth0), as tests/tests/serving.rs has it:
//!
//! - planned moves (`vipctl node drain`, `vipctl handover`, SIGTERM of the
//!   leader): the gap between the old leader's RTM_DELADDR and the new
//!   one's RTM_NEWADDR of each VIP, and any overlap, from netlink events
//!   recorded inside both nodes' namespaces on one monotonic clock;
//! - the leader's data link loses carrier (`--link-grace`): from the cut to
//!   the client's first answer from another node;
//! - the leader's service dies (a `tcp:` check fails): from the kill to the
//!   client's first answer from another node.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use vipd_tests::{
    cluster::{
        Cluster, SESSION_TIMEOUT, ZkKind, first_served, monitors, timeline, vip_set, within,
    },
    lab::{ServerHandle, vipctl_bin},
};

use super::timeline::{
    binaries_note, check_interrupt, install_sigint_handler, ms, preflight, progress, sleep, spread,
};

/// Runs per case by default (the issue asks for median and max over 20).
pub const DEFAULT_RUNS: usize = 20;
const VIPS: [&str; 2] = ["192.0.2.100", "192.0.2.101"];
/// The port every node's service listens on (the lab's echo server).
const PORT: u16 = 8080;
const NODES: usize = 3;
const LINK_GRACE: Duration = Duration::from_millis(200);
const CHECK_INTERVAL: Duration = Duration::from_millis(200);
const CHECK_TIMEOUT: Duration = Duration::from_millis(200);
const CHECK_FALL: u32 = 2;
/// How long one client attempt waits for an answer: the resolution of the
/// "client served" figures.
const ATTEMPT: Duration = Duration::from_millis(50);
/// How long a move may take before the run counts as failed.
const MOVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Events settle (the last RTM_NEWADDR, a late duplicate) before the replay.
const SETTLE: Duration = Duration::from_millis(300);
/// Targets from issue 14.
const GAP_TARGET: Duration = Duration::from_millis(20);
const SERVED_SLACK: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Planned {
    Drain,
    Handover,
    Sigterm,
}

impl Planned {
    fn label(self) -> &'static str {
        match self {
            Planned::Drain => "`vipctl node drain`",
            Planned::Handover => "`vipctl handover`",
            Planned::Sigterm => "SIGTERM of the leader",
        }
    }
}

/// One planned move: the longest gap over the VIPs and the overlap (sum of
/// every stretch with two holders, 0 when none).
struct Move {
    gap: Duration,
    overlap: f64,
}

pub fn run(runs: usize) -> Result<String> {
    preflight()?;
    install_sigint_handler();
    let start = Instant::now();
    let vips = vip_set(&VIPS);

    let mut planned: Vec<(Planned, Vec<Move>)> = Vec::new();
    {
        let mut c = cluster("bsv-plan", &[])?;
        for kind in [Planned::Drain, Planned::Handover, Planned::Sigterm] {
            let mut moves = Vec::new();
            for r in 0..runs {
                check_interrupt()?;
                moves.push(planned_move(&mut c, &vips, kind)?);
                progress(
                    start,
                    &format!(
                        "{} run {}/{runs}: gap {} ms",
                        kind.label(),
                        r + 1,
                        ms(moves[r].gap)
                    ),
                );
            }
            planned.push((kind, moves));
        }
    }

    let grace = format!("{}ms", LINK_GRACE.as_millis());
    let carrier = {
        let c = cluster("bsv-link", &["--link-grace", &grace])?;
        let _servers = servers(&c);
        let mut served = Vec::new();
        for r in 0..runs {
            check_interrupt()?;
            served.push(carrier_loss(&c, &vips)?);
            progress(
                start,
                &format!(
                    "carrier loss run {}/{runs}: served after {} ms",
                    r + 1,
                    ms(served[r])
                ),
            );
        }
        served
    };

    let check = format!("tcp:127.0.0.1:{PORT}");
    let interval = format!("{}ms", CHECK_INTERVAL.as_millis());
    let timeout = format!("{}ms", CHECK_TIMEOUT.as_millis());
    let fall = CHECK_FALL.to_string();
    let failed_check = {
        let flags = [
            "--check",
            check.as_str(),
            "--check-interval",
            &interval,
            "--check-timeout",
            &timeout,
            "--check-fall",
            &fall,
            "--check-rise",
            "2",
        ];
        let mut c = Cluster::new("bsv-check", ZkKind::Standalone, NODES);
        let mut servers: Vec<Option<ServerHandle>> = servers(&c).into_iter().map(Some).collect();
        start_cluster(&mut c, &flags)?;
        let mut served = Vec::new();
        for r in 0..runs {
            check_interrupt()?;
            served.push(service_killed(&c, &vips, &mut servers)?);
            progress(
                start,
                &format!(
                    "failed check run {}/{runs}: served after {} ms",
                    r + 1,
                    ms(served[r])
                ),
            );
        }
        served
    };

    Ok(report(runs, &planned, &carrier, &failed_check, &check))
}

/// A cluster of [`NODES`] serving [`VIPS`] with `extra` flags, its first
/// leader elected.
fn cluster(hint: &str, extra: &[&str]) -> Result<Cluster> {
    let mut c = Cluster::new(hint, ZkKind::Standalone, NODES);
    start_cluster(&mut c, extra)?;
    Ok(c)
}

fn start_cluster(c: &mut Cluster, extra: &[&str]) -> Result<()> {
    c.vip_ok(&["set", "web", VIPS[0], VIPS[1]]);
    c.start_all_with(SESSION_TIMEOUT, extra);
    let vips = vip_set(&VIPS);
    if let Err(e) = c.wait_sole_holder(&vips, None, Duration::from_secs(15)) {
        bail!("first election: {e}");
    }
    sleep(Duration::from_millis(500))
}

/// Every node's service: an echo server on the data side naming its host.
fn servers(c: &Cluster) -> Vec<ServerHandle> {
    c.nodes
        .iter()
        .map(|n| n.host.tcp_echo_server(Ipv4Addr::UNSPECIFIED, PORT))
        .collect()
}

fn leader(c: &Cluster, vips: &BTreeSet<Ipv4Addr>) -> Result<usize> {
    match c.wait_sole_holder(vips, None, MOVE_TIMEOUT) {
        Ok((i, _)) => Ok(i),
        Err(e) => bail!("no single leader: {e}"),
    }
}

/// `vipctl <args> --zk .. --cluster ..` on the admin host.
fn admin(c: &Cluster, args: &[&str]) -> Result<()> {
    let bin = vipctl_bin().display().to_string();
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--zk", &c.hosts, "--cluster", &c.cluster]);
    let out = c.admin.exec(&argv);
    if !out.status.success() {
        bail!(
            "vipctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Waits until node `i` answers and stands for election again.
fn standing(c: &Cluster, i: usize) -> Result<()> {
    if let Err(e) = within(MOVE_TIMEOUT, || {
        c.try_status(i)
            .is_some_and(|s| s["zookeeper"]["withdrawn"].is_null())
    }) {
        bail!("{} never stood again: {e}", c.nodes[i].id);
    }
    Ok(())
}

/// One planned move of the VIPs away from the current leader, then the
/// old leader back in the election (undrained, restarted) so the next run
/// starts from three candidates.
fn planned_move(c: &mut Cluster, vips: &BTreeSet<Ipv4Addr>, kind: Planned) -> Result<Move> {
    let old = leader(c, vips)?;
    let mons = monitors(c);
    let initial = c.holdings(vips);
    let at = Instant::now();
    let old_id = c.nodes[old].id.clone();
    match kind {
        Planned::Drain => admin(c, &["node", "drain", &old_id])?,
        Planned::Handover => admin(c, &["handover"])?,
        Planned::Sigterm => c.signal_vipd(old, libc::SIGTERM),
    }
    let new = match c.wait_sole_holder(vips, Some(old), MOVE_TIMEOUT) {
        Ok((n, _)) => n,
        Err(e) => bail!("{}: the VIPs did not move: {e}", kind.label()),
    };
    std::thread::sleep(SETTLE);
    let t = timeline(&mons, vips, &initial, at, Instant::now());
    let mut gap = Duration::ZERO;
    for &vip in vips {
        let g = t
            .handovers
            .iter()
            .find(|h| h.0 == vip && h.1 == old && h.2 == new)
            .map(|h| h.3)
            // Added before it was removed: no gap, an overlap (counted below).
            .or_else(|| t.overlaps.iter().any(|o| o.0 == vip).then_some(0.0));
        let Some(g) = g else {
            bail!(
                "{}: no removal of {vip} on {} followed by its add on {} in the netlink events \
                 (overlaps {:?})",
                kind.label(),
                c.nodes[old].id,
                c.nodes[new].id,
                t.overlaps
            );
        };
        gap = gap.max(Duration::from_secs_f64(g / 1e3));
    }
    let overlap = t.overlaps.iter().map(|o| o.1).sum();
    drop(mons);
    match kind {
        Planned::Drain => admin(c, &["node", "undrain", &old_id])?,
        Planned::Handover => {}
        Planned::Sigterm => {
            let p = c.nodes[old].vipd.take().expect("vipd was running");
            if p.wait_timeout(Duration::from_secs(10)).is_none() {
                bail!("vipd on {old_id} still runs 10 s after SIGTERM");
            }
            c.start_vipd_with(old, SESSION_TIMEOUT, &[]);
        }
    }
    standing(c, old)?;
    sleep(Duration::from_millis(300))?;
    Ok(Move { gap, overlap })
}

/// The leader's data link loses carrier: how long until the client is
/// served by another node. The link comes back before the next run.
fn carrier_loss(c: &Cluster, vips: &BTreeSet<Ipv4Addr>) -> Result<Duration> {
    let old = leader(c, vips)?;
    let vip = *vips.iter().next().expect("a VIP");
    let host = c.nodes[old].host.clone();
    let cut = Instant::now();
    c.lab.cut_peer(&host, "eth0");
    let served = first_served(c, vip, PORT, Some(old), ATTEMPT, MOVE_TIMEOUT);
    c.lab.restore_peer(&host, "eth0");
    let (_, at) = match served {
        Ok(s) => s,
        Err(e) => bail!("carrier loss on {}: {e}", c.nodes[old].id),
    };
    standing(c, old)?;
    sleep(Duration::from_millis(500))?;
    Ok(at - cut)
}

/// The leader's service dies (its `tcp:` check fails): how long until the
/// client is served by another node. The service comes back before the
/// next run.
fn service_killed(
    c: &Cluster,
    vips: &BTreeSet<Ipv4Addr>,
    servers: &mut [Option<ServerHandle>],
) -> Result<Duration> {
    let old = leader(c, vips)?;
    let vip = *vips.iter().next().expect("a VIP");
    let killed = Instant::now();
    servers[old] = None;
    let served = first_served(c, vip, PORT, Some(old), ATTEMPT, MOVE_TIMEOUT);
    servers[old] = Some(
        c.nodes[old]
            .host
            .tcp_echo_server(Ipv4Addr::UNSPECIFIED, PORT),
    );
    let (_, at) = match served {
        Ok(s) => s,
        Err(e) => bail!("service killed on {}: {e}", c.nodes[old].id),
    };
    standing(c, old)?;
    sleep(Duration::from_millis(500))?;
    Ok(at - killed)
}

fn median_max(v: &[Duration]) -> (Duration, Duration) {
    let (m, _, hi) = spread(v.to_vec()).unwrap_or_default();
    (m, hi)
}

fn report(
    runs: usize,
    planned: &[(Planned, Vec<Move>)],
    carrier: &[Duration],
    failed_check: &[Duration],
    check: &str,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Serving: planned moves, data link loss, failed check\n"
    );
    let _ = writeln!(
        s,
        "Three nodes, ZooKeeper on a management bridge (eth1), the VIPs {} and {} on the data \
         bridge (eth0); vipd --session-timeout {} ms, {}. {runs} runs per row. Gaps and overlaps \
         come from RTM_DELADDR/RTM_NEWADDR recorded inside the old and the new leader's \
         namespaces on one clock (the longest gap over the two VIPs per run); \"client served\" \
         is from the fault to the first answer of another node's service at {}:{PORT} (one \
         attempt waits at most {} ms).\n",
        VIPS[0],
        VIPS[1],
        SESSION_TIMEOUT.as_millis(),
        binaries_note(),
        VIPS[0],
        ATTEMPT.as_millis(),
    );
    let _ = writeln!(
        s,
        "| case | median | max | overlap (runs with any, longest) |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    let mut gap_ok = true;
    let mut gap_medians = Vec::new();
    for (kind, moves) in planned {
        let gaps: Vec<Duration> = moves.iter().map(|m| m.gap).collect();
        let (m, hi) = median_max(&gaps);
        let with = moves.iter().filter(|m| m.overlap > 0.0).count();
        let longest = moves.iter().map(|m| m.overlap).fold(0.0, f64::max);
        gap_ok &= m <= GAP_TARGET && with == 0;
        gap_medians.push(format!("{} {}", kind.label(), ms(m)));
        let _ = writeln!(
            s,
            "| gap, {} | {} ms | {} ms | {with}, {longest:.1} ms |",
            kind.label(),
            ms(m),
            ms(hi)
        );
    }
    let (cm, chi) = median_max(carrier);
    let _ = writeln!(
        s,
        "| data link carrier loss -> client served (--link-grace {} ms) | {} ms | {} ms | |",
        LINK_GRACE.as_millis(),
        ms(cm),
        ms(chi)
    );
    let (fm, fhi) = median_max(failed_check);
    let _ = writeln!(
        s,
        "| service killed -> client served (--check {check}, interval {} ms, timeout {} ms, \
         fall {CHECK_FALL}) | {} ms | {} ms | |",
        CHECK_INTERVAL.as_millis(),
        CHECK_TIMEOUT.as_millis(),
        ms(fm),
        ms(fhi)
    );
    let served_target = LINK_GRACE + SERVED_SLACK;
    let _ = writeln!(s, "\n| target (issue 14) | measured | target | met |");
    let _ = writeln!(s, "|---|---|---|---|");
    let _ = writeln!(
        s,
        "| planned move: gap median, overlap | {}; overlap in {} run(s) | <= {} ms median, zero overlap | {} |",
        gap_medians.join(", "),
        planned
            .iter()
            .map(|(_, m)| m.iter().filter(|m| m.overlap > 0.0).count())
            .sum::<usize>(),
        GAP_TARGET.as_millis(),
        if gap_ok { "yes" } else { "**no**" }
    );
    let _ = writeln!(
        s,
        "| data link loss -> client served, median | {} ms | <= grace + {} ms = {} ms | {} |",
        ms(cm),
        SERVED_SLACK.as_millis(),
        served_target.as_millis(),
        if cm <= served_target { "yes" } else { "**no**" }
    );
    let _ = writeln!(
        s,
        "\nA failed check is seen after `fall` failed rounds (up to interval x fall + timeout = \
         {} ms here, depending on where in its round the service died); the issue sets no \
         target for it.",
        (CHECK_INTERVAL * CHECK_FALL + CHECK_TIMEOUT).as_millis()
    );
    s
}
