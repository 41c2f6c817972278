//! The failover report: a table per figure (a row per system, a column
//! per fault), the link cut in phases, the targets, and notes from the runs.

use std::fmt::Write as _;

use super::*;
use crate::bench::table::Table;

/// A target row's cells: what, what was measured (or that it was not),
/// the bound, and whether it was met.
pub(super) fn target_row(
    what: &str,
    measured: Option<(String, bool)>,
    target: &str,
) -> [String; 4] {
    match measured {
        Some((m, ok)) => [
            what.to_string(),
            m,
            target.to_string(),
            if ok { "yes" } else { "**no**" }.to_string(),
        ],
        None => [
            what.to_string(),
            "not measured in this run".to_string(),
            target.to_string(),
            String::new(),
        ],
    }
}

pub(super) fn report(
    runs: usize,
    faults: &[Fault],
    systems: &[System],
    rules: &[Option<LeaseRule>],
    lease_supported: bool,
    cells: &[Cell],
) -> String {
    let mut md = String::new();
    intro(&mut md, runs, systems);
    let _ = writeln!(md, "**What each row compares, and what bounds it.**\n");
    for (s, rule) in systems.iter().zip(rules) {
        let _ = writeln!(md, "- {}", bound_text(s, rule.as_ref(), lease_supported));
    }
    let _ = writeln!(md);
    fault_tables(&mut md, faults, systems, cells);
    if faults.contains(&Fault::Cut) {
        phase_table(&mut md, systems, cells);
    }
    targets(&mut md, systems, cells);
    notes(&mut md, cells);
    md
}

/// The cell of `system` under `fault`, if it ran.
fn cell_of<'a>(cells: &'a [Cell], system: &System, fault: Fault) -> Option<&'a Cell> {
    cells
        .iter()
        .find(|c| c.system == *system && c.fault == fault)
}

/// The heading, the lab and the faults.
fn intro(md: &mut String, runs: usize, systems: &[System]) {
    let _ = writeln!(md, "## Failover\n");
    let _ = writeln!(
        md,
        "Three nodes and a client on one bridge in a lab of network namespaces, {VIP}/24 as the \
         VIP (the IPv6 row: {VIP6}/64, the nodes and the client with addresses on \
         {}/64 too, the client connecting to `[{VIP6}]`; otherwise that row's lab and settings \
         are those of the first) and a TCP service on it on every node; for vipd a standalone ZooKeeper 3.8 \
         (tickTime 100 ms, its transaction log on the lab's disk, fsynced per write) on a second bridge, vipd as a {} with `--xdp-mode generic`, \
         `--garp-interval {}s --garp-rounds {GARP_ROUNDS}`; keepalived one instance per node \
         (VRRPv3, multicast adverts, `state BACKUP`, `nopreempt`, priorities 100/99/98, as in \
         the keepalived section below). The client opens a TCP connection to the VIP every 10 ms; \
         netlink listeners in every namespace timestamp the VIP's address events (so an overlap \
         is read off the kernels themselves) and the client's neighbour entry. {runs} runs per \
         fault and system; the {} labs run side by side and take turns run by run, so every \
         system sees the same machine load. A run fails the current holder, waits until the \
         client is served by another node and the old holder's VIP is gone (at most {} s more \
         after the client was served), then ends the fault and waits until the cluster is quiet \
         (one holder serving, the failed node a standby). Times in ms after the fault, median \
         (min–max).\n",
        timeline::NET6,
        timeline::binaries_note(),
        GARP_INTERVAL.as_secs(),
        number(systems.len()),
        timeline::FENCE_WAIT.as_secs()
    );
    let _ = writeln!(
        md,
        "The faults: **link cut**: the holder's two links lose carrier (bridge-side veth ends \
         down), ended by bringing them up; **silent partition**: both links detached from their \
         bridges, carrier kept, nothing gets through, ended by re-attaching them; **SIGKILL**: \
         the agent killed with no cleanup of any kind (no `vipctl cleanup`; keepalived: its main \
         process is frozen, its VRRP child killed, then the main process), ended by removing a \
         VIP the kernel still holds (`ip addr del`, counted below) and starting the agent again; \
         **SIGSTOP**: the agent frozen (keepalived: both processes), ended by SIGCONT.\n"
    );
}

/// One table per figure: a row per system, a column per fault.
fn fault_tables(md: &mut String, faults: &[Fault], systems: &[System], cells: &[Cell]) {
    let table = |md: &mut String, title: &str, f: &dyn Fn(&[Takeover]) -> String| {
        let _ = writeln!(md, "{title}\n");
        let mut t = Table::new(std::iter::once("system").chain(faults.iter().map(|f| f.label())));
        for s in systems {
            let values = faults
                .iter()
                .map(|&fault| cell_of(cells, s, fault).map_or("n/a".to_string(), |c| f(&c.runs)));
            t.row(std::iter::once(s.label()).chain(values));
        }
        let _ = writeln!(md, "{t}");
    };
    table(
        md,
        "**Fault → client served by the new holder** (its first TCP answer through the VIP):",
        &served_cell,
    );
    table(
        md,
        "**VIP on two nodes at once** (from the nodes' address events, from the fault until the \
         cluster was quiet again; longest, median of the runs that had one, runs):",
        &overlap_cell,
    );
    serving_table(md, faults, systems, cells);
    table(
        md,
        "**Old holder removed the VIP** (its own `RTM_DELADDR`; vipd: its fencing, or the \
         kernel's lifetime expiry when it was killed or frozen):",
        &removed_cell,
    );
    table(
        md,
        &format!(
            "**After the fault ended** (links back, SIGCONT, agent restarted): the longest \
             stretch without an answered probe until the cluster was quiet. Where the client was \
             still not served by the one remaining holder {} s after the fault ended, the bench \
             flushed the client's neighbour entry for the VIP (counted; otherwise a stale entry \
             lasts the kernel's reachable time, tens of seconds):",
            timeline::CLIENT_FLUSH_AFTER.as_secs()
        ),
        &after_heal_cell,
    );
}

/// Two nodes serving at once, from the serving probe: a row per system, a
/// column per fault.
fn serving_table(md: &mut String, faults: &[Fault], systems: &[System], cells: &[Cell]) {
    let _ = writeln!(
        md,
        "**VIP served by two nodes at once** (the serving probe: every {} ms the client sends \
         each node's MAC an ARP request for the VIP and a TCP SYN to its port {}; a node that \
         answers either serves it. Two nodes answering probes sent at the same moment are an \
         overlap, from that round's send to the next round's, merged over the kinds; from just \
         before the fault until the cluster was quiet again. Longest stretch, total of the \
         worst run, runs with one; a link cut or partition hides the cut-off node from the \
         probe, so there only the address overlap above says anything):\n",
        PROBE_EVERY.as_millis(),
        timeline::PORT
    );
    let mut t = Table::new(std::iter::once("system").chain(faults.iter().map(|f| f.label())));
    for s in systems {
        let values = faults.iter().map(|&fault| {
            cell_of(cells, s, fault).map_or("n/a".to_string(), |c| serving_cell(&c.serving))
        });
        t.row(std::iter::once(s.label()).chain(values));
    }
    let _ = writeln!(md, "{t}");
}

/// One system and fault's serving overlaps over its runs.
pub(super) fn serving_cell(runs: &[Serving]) -> String {
    let blind = runs.iter().filter(|r| !r.saw_service()).count();
    let bad: Vec<&Serving> = runs.iter().filter(|r| r.overlapped()).collect();
    let mut s = if bad.is_empty() {
        format!("**0** (0 of {})", runs.len())
    } else {
        let worst = bad.iter().map(|r| r.longest()).max().unwrap_or_default();
        let total = bad.iter().map(|r| r.total()).max().unwrap_or_default();
        format!(
            "{} longest, {} total ({} of {})",
            timeline::ms(worst),
            timeline::ms(total),
            bad.len(),
            runs.len()
        )
    };
    if blind > 0 {
        let _ = write!(s, " [the probe saw no answer in {blind} run(s)]");
    }
    s
}

/// The target row of the serving overlaps: none in any run of any fault
/// for any vipd row, in runs where the probe saw the VIP served.
fn vipd_serving_overlaps(cells: &[Cell]) -> [String; 4] {
    let vipd: Vec<&Cell> = cells
        .iter()
        .filter(|c| matches!(c.system, System::Vipd { .. }))
        .collect();
    let total: usize = vipd.iter().map(|c| c.serving.len()).sum();
    let bad: usize = vipd
        .iter()
        .map(|c| c.serving.iter().filter(|r| r.overlapped()).count())
        .sum();
    let blind: usize = vipd
        .iter()
        .map(|c| c.serving.iter().filter(|r| !r.saw_service()).count())
        .sum();
    target_row(
        "serving overlap in every run of every fault, every vipd row",
        (total > 0).then(|| {
            (
                format!(
                    "{bad} of {total} runs{}",
                    if blind > 0 {
                        format!(" ({blind} without any probe answered)")
                    } else {
                        String::new()
                    }
                ),
                bad == 0 && blind == 0,
            )
        }),
        "0 runs",
    )
}

/// The link cut in phases: a row per phase, a column per system.
fn phase_table(md: &mut String, systems: &[System], cells: &[Cell]) {
    let _ = writeln!(md, "**The link cut in phases:**\n");
    let mut t =
        Table::new(std::iter::once("phase".to_string()).chain(systems.iter().map(System::label)));
    type Phase<'a> = (&'a str, Box<dyn Fn(&Takeover) -> Option<Duration>>);
    let phases: Vec<Phase> = vec![
        (
            "detection: cut → takeover decided (the next in line's log)",
            Box::new(|t| t.decided),
        ),
        (
            "takeover decided → new leader elected (conditional delete, election, first renewal)",
            Box::new(|t| between(t.decided, t.elected)),
        ),
        (
            "cut → new leader elected (vipd's log)",
            Box::new(|t| t.elected),
        ),
        (
            "cut → VIP configured on the new holder (netlink)",
            Box::new(|t| t.configured),
        ),
        (
            "VIP configured → first gratuitous ARP at the client (IPv6 VIP: first \
             unsolicited NA)",
            Box::new(|t| between(t.configured, t.first_garp)),
        ),
        (
            "first gratuitous ARP (IPv6 VIP: unsolicited NA) → client served",
            Box::new(|t| between(t.first_garp, t.served)),
        ),
        ("**cut → client served**", Box::new(|t| t.served)),
    ];
    for (label, f) in &phases {
        let values = systems.iter().map(|s| {
            cell_of(cells, s, Fault::Cut).map_or("n/a".to_string(), |c| {
                spread_ms(c.runs.iter().filter_map(f).collect())
            })
        });
        t.row(std::iter::once(label.to_string()).chain(values));
    }
    let _ = write!(md, "{t}");
    let _ = writeln!(
        md,
        "\nThe client switch is measured by the probe: a connection attempt still in flight \
         to the old MAC when the neighbour entry moves waits out its 30 ms connect timeout, so \
         that phase is at most about 40 ms by construction. The timelines of every link-cut \
         run are plotted in [failover.svg](failover.svg).\n"
    );
}

/// The targets: each vipd row against its bound and its keepalived peer,
/// and the overlaps at the default session timeout.
fn targets(md: &mut String, systems: &[System], cells: &[Cell]) {
    let _ = writeln!(
        md,
        "**Targets** (medians of the link cut; ratios against keepalived measured in this run):\n"
    );
    let mut t = Table::new(["target", "measured", "bound", "met"]);
    let cut_median =
        |s: &System| cell_of(cells, s, Fault::Cut).and_then(|c| served_median(&c.runs));
    let [v1, v1v6, v1l, v1l100, v6, k3, k1, k05] = SYSTEMS;
    let fmt = |m: f64| timeline::ms(Duration::from_secs_f64(m / 1e3));
    let median_row =
        |s: &System, bound: f64| cut_median(s).map(|m| (format!("{} ms", fmt(m)), m <= bound));
    let ratio = |a: &System, b: &System, max: f64| {
        let (a, b) = (cut_median(a)?, cut_median(b)?);
        (b > 0.0).then(|| (format!("{:.2}", a / b), a / b <= max))
    };
    // Each vipd row against its keepalived peer: (vipd, its bound, the
    // peer, the ratio's bound, the peer's caption).
    let pairs = [
        (v1, 600.0, k3, 0.7, " (matched ~1 s detection)"),
        (v1l, 350.0, k1, 0.75, ""),
        (v1l100, 200.0, k05, 1.0, ""),
    ];
    for (i, (v, bound, k, max, why)) in pairs.iter().enumerate() {
        t.row(target_row(
            &format!("cut → served, {}", v.label()),
            median_row(v, *bound),
            &format!("<= {bound} ms"),
        ));
        t.row(target_row(
            &format!("... against {}{why}", k.label()),
            ratio(v, k, *max),
            &format!("<= {max}x"),
        ));
        if i == 0 {
            // Informational: no requirement bounds the IPv6 row apart from
            // the IPv4 one; the same lease and takeover apply, so the
            // medians should agree within the runs' spread, and a bound on
            // their difference would be made up here.
            let shown = |s: &System, none: &str| {
                cut_median(s).map_or(none.to_string(), |m| format!("{} ms", fmt(m)))
            };
            t.row([
                format!("IPv6 VIP cut → served, {}", v1v6.label()),
                shown(&v1v6, "not measured in this run"),
                format!(
                    "informational: {} {}",
                    v1.label(),
                    shown(&v1, "not measured")
                ),
                String::new(),
            ]);
        }
    }
    t.row(default_t_overlaps(systems, cells, &v6));
    t.row(vipd_serving_overlaps(cells));
    let _ = writeln!(md, "{t}");
}

/// The target row of the overlaps at the default session timeout (`v6`):
/// none in any run of any fault.
fn default_t_overlaps(systems: &[System], cells: &[Cell], v6: &System) -> [String; 4] {
    let at_default: Vec<&Cell> = cells
        .iter()
        .filter(|c| {
            matches!(c.system, System::Vipd { session_timeout, .. } if session_timeout == DEFAULT_T)
        })
        .collect();
    let total: usize = at_default.iter().map(|c| c.runs.len()).sum();
    let bad: usize = at_default
        .iter()
        .map(|c| c.runs.iter().filter(|t| !t.overlap.is_zero()).count())
        .sum();
    let shown: Vec<&str> = at_default.iter().map(|c| c.fault.label()).collect();
    target_row(
        &format!(
            "overlap in every run of {} ({})",
            v6.label(),
            if shown.is_empty() {
                "no fault".to_string()
            } else {
                shown.join(", ")
            }
        ),
        (total > 0 && systems.contains(v6)).then(|| (format!("{bad} of {total} runs"), bad == 0)),
        "0 runs",
    )
}

/// What went wrong in the runs, if anything.
fn notes(md: &mut String, cells: &[Cell]) {
    // What went wrong, if anything.
    let mut notes = Vec::new();
    for c in cells {
        let incomplete = c.runs.iter().filter(|t| !t.complete()).count();
        if incomplete > 0 {
            notes.push(format!(
                "{}, {}: {incomplete} of {} run(s) without a takeover within {} s.",
                c.system.label(),
                c.fault.label(),
                c.runs.len(),
                c.system.timeout().as_secs()
            ));
        }
        let removed = c.runs.iter().filter(|t| t.leftover_removed).count();
        if removed > 0 {
            notes.push(format!(
                "{}, {}: in {removed} of {} run(s) the killed holder's VIP was still in its \
                 kernel when the fault ended, and the bench removed it.",
                c.system.label(),
                c.fault.label(),
                c.runs.len()
            ));
        }
        let flushed: Vec<&str> = c
            .runs
            .iter()
            .filter_map(|t| t.client_flushed.as_deref())
            .collect();
        if !flushed.is_empty() {
            notes.push(format!(
                "{}, {}: in {} of {} run(s) the client was still not served by the one holder \
                 {} s after the fault ended (its neighbour entry for the VIP named: {}); the \
                 bench flushed that entry.",
                c.system.label(),
                c.fault.label(),
                flushed.len(),
                c.runs.len(),
                timeline::CLIENT_FLUSH_AFTER.as_secs(),
                flushed.join("; ")
            ));
        }
        for f in &c.restore_failures {
            notes.push(format!(
                "{}, {}: the cluster did not settle after the fault ended ({f}).",
                c.system.label(),
                c.fault.label()
            ));
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(md, "Notes from the runs:\n");
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
        let _ = writeln!(md);
    }
}

/// What bounds one row, computed from its settings.
pub(super) fn bound_text(s: &System, rule: Option<&LeaseRule>, lease_supported: bool) -> String {
    let ms = |d: Duration| d.as_millis();
    match (*s, rule) {
        (System::Vipd { .. }, Some(r)) => {
            let (lo, hi) = r.takeover_window();
            let kill = r.kill_overlap();
            format!(
                "**{}**: lease {} ms{}, renewed every {} ms ({} of the lease); the next in \
                 line takes over once it has seen no renewal for lease + renewal interval + margin \
                 = {} + {} + {} = {} ms while ZooKeeper answered it, by deleting the leader's \
                 znode conditionally. The last renewal it saw is up to one interval old at the \
                 fault; it reads each renewal when its watch fires, every {} ms to know \
                 ZooKeeper answers it, and once more the moment the wait is up, so the takeover \
                 comes {}–{} ms after the fault (about {} ms on average; the client is served 10–40 ms later: the {}, then the probe's \
                 next connection), before the session ({} ms) could expire. The old \
                 holder fences (removes the VIP) \
                 at the lease after the send of its last acknowledged renewal, so at most {} ms \
                 after a cut or partition. A killed or frozen holder cannot remove anything: its \
                 VIP carries a kernel lifetime of {} s from its last renewal and leaves the kernel \
                 by itself up to about {} ms later; {}",
                s.label(),
                ms(r.lease),
                if s.lease().is_none() {
                    " (the default, a third of T)"
                } else {
                    ""
                },
                ms(r.renew_every),
                if r.lease < Duration::from_secs(1) {
                    "a sixteenth: below 1 s"
                } else {
                    "a quarter"
                },
                ms(r.lease),
                ms(r.renew_every),
                ms(MARGIN),
                ms(r.takeover_after),
                ms(r.poll_every),
                ms(lo),
                ms(hi),
                ms(r.takeover_after.saturating_sub(r.renew_every / 2)),
                if s.vip().is_ipv6() {
                    "unsolicited Neighbor Advertisement"
                } else {
                    "gratuitous ARP"
                },
                match s {
                    System::Vipd {
                        session_timeout, ..
                    } => ms(*session_timeout),
                    System::Keepalived { .. } => 0,
                },
                ms(r.lease),
                r.lifetime.as_secs(),
                ms(KERNEL_SLACK),
                if kill.is_zero() {
                    format!(
                        "{} + {} ms <= {} ms, so it is gone before the takeover: no overlap is \
                         possible for any fault.",
                        ms(r.lifetime),
                        ms(KERNEL_SLACK),
                        ms(r.takeover_after)
                    )
                } else {
                    format!(
                        "that is after the earliest takeover ({} ms), so after a SIGKILL or \
                         SIGSTOP the VIP can be on two nodes for up to {} ms (the lifetime is \
                         whole seconds, at least 1 s; vipd check-config warns about such a lease).",
                        ms(r.takeover_after),
                        ms(kill)
                    )
                }
            ) + " Serving can end before the address: the in-kernel fence drops the \
                 VIP's ARP requests and packets on the old holder from its lease's end while \
                 the fence's programs live (a frozen agent's do; a killed agent's die with it \
                 unless they are pinned, and only a leader whose fence is pinned is taken over \
                 by the shorter fenced rule)."
        }
        (
            System::Vipd {
                session_timeout, ..
            },
            None,
        ) => format!(
            "**{}**: {}detection is the session timeout ({} ms): the new leader is elected when \
             ZooKeeper expires the old leader's session; a killed or frozen vipd's address stays \
             in its kernel.",
            s.label(),
            if lease_supported {
                ""
            } else {
                "this vipd build has no lease (`vipd check-config` shows none), so "
            },
            ms(session_timeout)
        ),
        (System::Keepalived { advert_int }, _) => {
            let downs: Vec<u128> = PRIORITIES[1..]
                .iter()
                .map(|&p| master_down(advert_int, p).as_millis())
                .collect();
            let (lo, hi) = (
                downs.iter().min().copied().unwrap_or_default(),
                downs.iter().max().copied().unwrap_or_default(),
            );
            format!(
                "**{}**: a backup takes over after the master-down interval, 3 × advert_int + \
                 (256 − priority)/256 × advert_int = {} ms for priorities {}–{}, from the last \
                 advert it heard (up to one interval before the fault). Only a link cut makes the \
                 old master drop the VIP (its interface goes to FAULT); in a partition, or killed \
                 or frozen, it keeps the VIP: VRRP has no lease.",
                s.label(),
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}–{hi}")
                },
                PRIORITIES[2],
                PRIORITIES[1]
            )
        }
    }
}
