//! The ARP benchmark: a client floods ARP requests for a VIP that vipd holds
//! on another lab host, answered by the XDP program in native mode (with a
//! pass program on the veth's other end, as docs/DESIGN.md (facts) says native XDP_TX on
//! veth needs), in generic mode, and by the kernel (`--no-xdp`); it measures
//! replies per second, CPU time per reply, and the `arping` round trip. Then
//! [`super::isolated`] measures the responder alone, on a CPU of its own.
//! What both rigs share lives apart: the flood (a raw sender and a counting
//! socket) in [`super::flood`], vipd started per case, its status and its
//! counters in [`super::responder`].
//!
//! CPU is taken from the scheduler's exact run times (`schedstat`) of the
//! threads that do the work, not from machine-wide `/proc/stat`: other jobs
//! share this machine, and on veth the whole path (bridge, the node's receive
//! and reply, the client's receive) runs as softirq work inline in the
//! sending thread, or in `ksoftirqd` when the softirq budget runs out.

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::{Result, bail};
use vipd_tests::lab::{Host, HostIf, Lab};

use super::flood::{self, FLOOD_MAX_FRAMES, Flood, Pace, VIP, median, percentile};
use super::{isolated, responder, table::Table};

/// How long one flood lasts.
const FLOOD_FOR: Duration = Duration::from_secs(2);
/// `arping -c 1` round trips measured per mode.
const ARPINGS: usize = 50;

/// The figures of one case over its runs.
struct Case {
    name: &'static str,
    floods: Vec<Flood>,
    /// Answered `arping -c 1` round trips (us).
    rtts: Vec<f64>,
    /// `arping -c 1` sent.
    arpings: usize,
    /// Replies the XDP program counted (xdp_replies), over all floods.
    xdp_replies: Option<u64>,
}

impl Case {
    fn new(name: &'static str) -> Case {
        Case {
            name,
            floods: Vec::new(),
            rtts: Vec::new(),
            arpings: 0,
            xdp_replies: None,
        }
    }
}

/// Who answers the requests on n1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Responder {
    /// vipd's XDP program in native (driver) mode: XDP_TX before any skb on n1.
    Native,
    /// vipd's XDP program in generic (skb) mode.
    Generic,
    /// vipd with `--no-xdp`: the kernel's ARP code answers.
    Kernel,
}

impl Responder {
    const ALL: [Responder; 3] = [Responder::Native, Responder::Generic, Responder::Kernel];

    fn name(self) -> &'static str {
        match self {
            Responder::Native => "XDP (native)",
            Responder::Generic => "XDP (generic)",
            Responder::Kernel => "kernel (--no-xdp)",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Responder::Native => &["--xdp-mode", "native"],
            Responder::Generic => &["--xdp-mode", "generic"],
            Responder::Kernel => &["--no-xdp"],
        }
    }

    /// The mode vipd's status must report for eth0 (None: XDP off).
    fn attached_mode(self) -> Option<&'static str> {
        match self {
            Responder::Native => Some("native"),
            Responder::Generic => Some("generic"),
            Responder::Kernel => None,
        }
    }
}

pub fn run(runs: usize) -> Result<String> {
    let runs = runs.max(1);
    let vipd = responder::vipd_binary()?;
    let vipctl = vipd.with_file_name("vipctl");
    let bridged = bridge_rig(&vipd, &vipctl, runs)?;
    let alone = isolated::run(&vipd, &vipctl, runs)?;
    Ok(format!("{bridged}\n{alone}"))
}

/// Today's rig: c1 and n1 on the lab bridge, nothing pinned; the whole path
/// runs on the sender's CPU.
fn bridge_rig(vipd: &Path, vipctl: &Path, runs: usize) -> Result<String> {
    let lab = Lab::new("bench_arp");
    let n1 = lab.add_host("n1", &[HostIf::on(0, "192.0.2.11/24")]);
    let c1 = lab.add_host("c1", &[HostIf::on(0, "192.0.2.50/24")]);
    let sock = lab.dir().join("n1.sock");
    let ask = flood::arp_ask(c1.mac_bytes("eth0"));

    // Native XDP_TX on a veth reaches the peer only when the peer runs an
    // XDP program itself (docs/DESIGN.md, facts): a second vipd holding no VIP passes
    // every frame on the bridge side of n1's eth0. It stays for every case,
    // so all of them cross the same path.
    let peer = n1.peer_name("eth0").to_string();
    let peer_sock = lab.dir().join("peer.sock");
    let peer_pass = responder::start_pass(lab.bridge_netns(), vipd, vipctl, &peer, &peer_sock)?;

    // The lab's bridge runs br_netfilter's hooks (bridge-nf-call-*), about a
    // tenth of each flood's CPU in a profile: switch overhead that no real
    // wire has and that every case pays alike. Off in this lab's bridge
    // namespace only (the sysctls are per namespace).
    for key in ["arptables", "iptables", "ip6tables"] {
        let key = format!("net.bridge.bridge-nf-call-{key}");
        if Path::new("/proc/sys").join(key.replace('.', "/")).exists() {
            lab.bridge_netns().sysctl(&key, "0");
        }
    }

    let softirqd = ksoftirqd_pids();
    let bridge_flood = |duration| {
        let pace = Pace {
            duration,
            cpu: None,
            batch: 1,
            rate: None,
        };
        let f = flood::flood(&c1, "eth0", &ask, pace, &softirqd)?;
        eprintln!(
            "  flood: {} sent ({} ENOBUFS retries), {} replies in {:.2} s; sender+ksoftirqd {} ms (ksoftirqd {} ms), receiver {} ms",
            f.sent,
            f.refused,
            f.replies,
            f.elapsed.as_secs_f64(),
            f.cpu_ns() / 1_000_000,
            f.watched_ns.iter().sum::<u64>() / 1_000_000,
            f.receiver_ns / 1_000_000
        );
        anyhow::Ok(f)
    };
    // Warm up the path (neighbour entries, bridge fdb) once.
    bridge_flood(Duration::from_millis(200))?;

    // The cases take turns run by run, so that load from other jobs on
    // this shared machine spreads over all of them alike.
    let mut baseline = Case::new("no responder (baseline)");
    let mut cases: Vec<(Responder, Case)> = Responder::ALL
        .iter()
        .map(|r| (*r, Case::new(r.name())))
        .collect();
    let arpings = ARPINGS.div_ceil(runs);
    let mut notes: Vec<String> = Vec::new();
    for run in 1..=runs {
        eprintln!("arp bench: run {run}/{runs}: baseline (nobody answers)");
        baseline.floods.push(bridge_flood(FLOOD_FOR)?);
        for (responder, case) in &mut cases {
            eprintln!("arp bench: run {run}/{runs}: {}", responder.name());
            let mut args = vec![
                "--static-vips".to_string(),
                VIP.to_string(),
                "--api-socket".to_string(),
                sock.display().to_string(),
                // No R8 rounds: their announcements would fall into the floods.
                "--garp-rounds".to_string(),
                "0".to_string(),
            ];
            args.extend(responder.args().iter().map(|s| s.to_string()));
            let want = responder.attached_mode();
            let proc = responder::start_vipd(
                &n1,
                vipd,
                vipctl,
                &sock,
                &args,
                "eth0",
                Some(VIP.into()),
                want,
            )?;
            // The round trips first: a fallback of vipd's at the end of
            // the flood (see native_throughout) must not change their mode.
            case.rtts.extend(arping_rtts(&c1, arpings));
            case.arpings += arpings;
            let before = match want {
                Some(_) => Some((
                    responder::vip_counters(vipctl, &sock, VIP.into())?.xdp_replies,
                    responder::native_tx(&n1, "eth0")?,
                )),
                None => None,
            };
            case.floods.push(bridge_flood(FLOOD_FOR)?);
            if let Some((replies0, tx0)) = before {
                let counted =
                    responder::vip_counters(vipctl, &sock, VIP.into())?.xdp_replies - replies0;
                *case.xdp_replies.get_or_insert(0) += counted;
                if *responder == Responder::Native {
                    let tx = responder::native_tx(&n1, "eth0")? - tx0;
                    if let Some(note) = responder::native_throughout(
                        vipctl,
                        &sock,
                        "eth0",
                        responder.name(),
                        tx,
                        counted,
                    )? {
                        eprintln!("  {note}");
                        notes.push(note);
                    }
                } else if let Some(mode) = want {
                    responder::stayed_attached(vipctl, &sock, "eth0", mode, responder.name())?;
                }
            }
            if !proc.is_running() {
                bail!(
                    "vipd ({}) died during the flood:\n{}",
                    responder.name(),
                    proc.stderr()
                );
            }
            proc.terminate(Duration::from_secs(10));
        }
    }
    if !peer_pass.is_running() {
        bail!(
            "the pass-through vipd on {peer} died:\n{}",
            peer_pass.stderr()
        );
    }
    peer_pass.terminate(Duration::from_secs(10));
    lab.teardown()
        .map_err(|e| anyhow::anyhow!("lab teardown: {}", e.join("; ")))?;

    for (_, case) in &cases {
        let replies: u64 = case.floods.iter().map(|f| f.replies).sum();
        if replies == 0 {
            bail!(
                "{}: no reply reached the client during the floods",
                case.name
            );
        }
        if case.rtts.is_empty() {
            bail!("{}: no arping to {VIP} was answered", case.name);
        }
    }
    let mut section = report(runs, &baseline, &cases);
    for note in notes {
        let _ = writeln!(section, "Note: {note}.");
    }
    Ok(section)
}

/// PIDs of the `ksoftirqd/N` kernel threads.
fn ksoftirqd_pids() -> Vec<u32> {
    flood::kernel_threads("ksoftirqd/")
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

/// `count` single `arping -c 1` from the client: the answered round trips (us).
fn arping_rtts(c1: &Host, count: usize) -> Vec<f64> {
    let mut times = Vec::new();
    for _ in 0..count {
        let out = c1.exec(&[
            "arping",
            "-c",
            "1",
            "-w",
            "1",
            "-i",
            "eth0",
            &VIP.to_string(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(us) = text.lines().find_map(parse_rtt_us) {
            times.push(us);
        }
    }
    times
}

/// "42 bytes from ...: index=0 time=21.3 usec" -> 21.3.
fn parse_rtt_us(line: &str) -> Option<f64> {
    let rest = line.split_once("time=")?.1;
    let mut words = rest.split_whitespace();
    let value: f64 = words.next()?.parse().ok()?;
    match words.next()? {
        "usec" => Some(value),
        "msec" => Some(value * 1e3),
        "sec" => Some(value * 1e6),
        "nsec" => Some(value / 1e3),
        _ => None,
    }
}

/// Per-case medians: (frames sent/s, replies/s, CPU ns per sent frame,
/// responder CPU ns per reply given the baseline's ns per frame).
fn figures(case: &Case, base_ns_per_frame: f64) -> (f64, f64, f64, f64) {
    let rate = |n: u64, f: &Flood| n as f64 / f.elapsed.as_secs_f64();
    let sent = median(case.floods.iter().map(|f| rate(f.sent, f)).collect());
    let replies = median(case.floods.iter().map(|f| rate(f.replies, f)).collect());
    let per_frame = median(
        case.floods
            .iter()
            .map(|f| f.cpu_ns() as f64 / f.sent.max(1) as f64)
            .collect(),
    );
    let per_reply = median(
        case.floods
            .iter()
            .filter(|f| f.replies > 0)
            .map(|f| (f.cpu_ns() as f64 - base_ns_per_frame * f.sent as f64) / f.replies as f64)
            .collect(),
    );
    (sent, replies, per_frame, per_reply)
}

fn report(runs: usize, baseline: &Case, cases: &[(Responder, Case)]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## ARP: XDP responder against the kernel\n");
    let _ = writeln!(
        s,
        "Lab: client c1 and node n1 on one bridge (veth). vipd (single-node, VIP {VIP}) \
         answers with its XDP program in native mode (XDP_TX before n1 builds an skb), in \
         generic mode (on the skb), or, with `--no-xdp`, the kernel answers. Native XDP_TX \
         on a veth reaches the other end only when that end runs an XDP program itself \
         (docs/DESIGN.md, facts), so a second vipd in the bridge namespace, holding no VIP, attaches its \
         program natively to the bridge-side end of n1's eth0, where it passes every frame; \
         it runs during every case, the baseline and the kernel included, so all cases \
         cross the same path. The mode each vipd attached in is checked in its status \
         (`xdp.attached[].mode`). A raw AF_PACKET sender in c1 floods broadcast requests \
         for the VIP as fast as it can for {} s (at most {FLOOD_MAX_FRAMES} frames); a \
         second socket in c1 counts the replies. {runs} runs; in each run every case floods \
         once, in turn (vipd restarted per case), so load from other jobs spreads over all \
         cases; medians shown.\n",
        FLOOD_FOR.as_secs()
    );
    let _ = writeln!(
        s,
        "CPU: exact scheduler run times (`schedstat`) of the sending thread plus all \
         `ksoftirqd` threads. On veth the whole path (bridge, n1's receive, the XDP program \
         or the kernel's ARP code, the reply, c1's receive) runs as softirq work inline in \
         the sender's `send()`, or in `ksoftirqd` when the budget runs out; machine-wide \
         `/proc/stat` was not usable because other jobs share the 2 cores. The baseline \
         floods with nobody answering (no VIP on n1: the kernel drops each request); \
         responder CPU per reply = (CPU of the flood - baseline CPU per frame x frames \
         sent) / replies. It includes the reply's way back (the bridge-side pass program, \
         the bridge, delivery to c1's counting socket; the same for every case); that \
         thread's own user-space time is not counted.\n"
    );
    cases_table(&mut s, baseline, cases);
    ratios_and_limits(&mut s, baseline, cases);
    cross_checks(&mut s, cases);
    s
}

/// The cases' table: rates, CPU and the arping round trip.
fn cases_table(s: &mut String, baseline: &Case, cases: &[(Responder, Case)]) {
    let (base_sent, _, base_ns, _) = figures(baseline, 0.0);
    let mut t = Table::new([
        "case",
        "frames sent/s",
        "replies/s",
        "CPU per frame sent",
        "responder CPU per reply",
        "arping RTT median (p90)",
    ]);
    t.row([
        baseline.name.to_string(),
        format!("{base_sent:.0}"),
        "-".to_string(),
        format!("{base_ns:.0} ns"),
        "-".to_string(),
        "-".to_string(),
    ]);
    for (_, case) in cases {
        let (sent, rps, ns, cost) = figures(case, base_ns);
        let rtt = if case.rtts.is_empty() {
            "-".to_string()
        } else {
            let mut t = case.rtts.clone();
            t.sort_by(f64::total_cmp);
            format!(
                "{:.0} us ({:.0} us), {}/{} answered",
                percentile(&t, 0.5),
                percentile(&t, 0.9),
                t.len(),
                case.arpings
            )
        };
        t.row([
            case.name.to_string(),
            format!("{sent:.0}"),
            format!("{rps:.0}"),
            format!("{ns:.0} ns"),
            format!("{cost:.0} ns"),
            rtt,
        ]);
    }
    let _ = writeln!(s, "{t}");
}

/// The ratios against the kernel, and what limits replies/s in this lab.
fn ratios_and_limits(s: &mut String, baseline: &Case, cases: &[(Responder, Case)]) {
    let (_, _, base_ns, _) = figures(baseline, 0.0);
    let case = |r: Responder| {
        cases
            .iter()
            .find(|(c, _)| *c == r)
            .map(|(_, case)| case)
            .expect("every responder is measured")
    };
    let (_, n_rps, _, n_cost) = figures(case(Responder::Native), base_ns);
    let (_, g_rps, _, g_cost) = figures(case(Responder::Generic), base_ns);
    let (_, k_rps, _, k_cost) = figures(case(Responder::Kernel), base_ns);
    let _ = writeln!(
        s,
        "Ratios XDP (native) / kernel: replies/s {:.2} (target >= 3), responder CPU per \
         reply {:.2} (target < 1). XDP (generic) / kernel: replies/s {:.2}, CPU per reply \
         {:.2}.",
        n_rps / k_rps,
        n_cost / k_cost,
        g_rps / k_rps,
        g_cost / k_cost
    );
    let (_, _, k_ns, _) = figures(case(Responder::Kernel), base_ns);
    let _ = writeln!(
        s,
        "What limits replies/s here: on veth one CPU runs the whole path per frame (the \
         sender's syscall, the bridge, n1, the reply's way back, c1's kernel processing the \
         reply and the counting socket), and the baseline alone, without any reply, costs \
         {base_ns:.0} ns per frame. Even a responder that cost nothing, reply path included, \
         would raise replies/s over the kernel's by at most the kernel's CPU per frame / the \
         baseline's = {:.2}{}. The flood is CPU-bound, not held back by the socket ({} \
         sends refused with ENOBUFS over all floods; {} of {} requests answered), and on \
         the 2 shared cores the sending thread got a median {} of its wall time (the counting thread and other jobs compete), so replies/s also tracks \
         machine load. CPU per reply is the better figure here, but it compares whole paths (the \
         reply's way back and c1's receive included, all on the sender's CPU), and it is \
         bounded below by what the frame costs without any reply; the responders alone are \
         compared in the next section, on a CPU of their own. On veth \
         native XDP is not skb-free either: the request reaches n1's veth as an skb (built \
         by c1's socket, cloned by the bridge), which veth copies into a page for the \
         program, and the bridge side builds a new skb from the XDP_TX frame.",
        k_ns / base_ns,
        if k_ns / base_ns < 3.0 {
            ": 3x is out of reach of this lab whatever answers"
        } else {
            ""
        },
        cases
            .iter()
            .flat_map(|(_, c)| &c.floods)
            .map(|f| f.refused)
            .sum::<u64>(),
        cases
            .iter()
            .flat_map(|(_, c)| &c.floods)
            .map(|f| f.replies)
            .sum::<u64>(),
        cases
            .iter()
            .flat_map(|(_, c)| &c.floods)
            .map(|f| f.sent)
            .sum::<u64>(),
        cases
            .iter()
            .map(|(r, c)| {
                let busy = median(
                    c.floods
                        .iter()
                        .map(|f| f.cpu_ns() as f64 / f.elapsed.as_nanos() as f64)
                        .collect(),
                );
                format!("{:.0}% ({})", busy * 100.0, r.name())
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The program's own count against the client's, and the counting thread.
fn cross_checks(s: &mut String, cases: &[(Responder, Case)]) {
    for (_, case) in cases {
        let Some(counted) = case.xdp_replies else {
            continue;
        };
        let replies: u64 = case.floods.iter().map(|f| f.replies).sum();
        let sent: u64 = case.floods.iter().map(|f| f.sent).sum();
        let _ = writeln!(
            s,
            "Cross-check, {}: over its floods the program counted {counted} replies \
             (`vipctl arp stats`), the client received {replies} of {sent} requests sent.",
            case.name
        );
    }
    let recv: Vec<f64> = cases
        .iter()
        .flat_map(|(_, c)| &c.floods)
        .map(|f| f.receiver_ns as f64 / f.replies.max(1) as f64)
        .collect();
    let _ = writeln!(
        s,
        "The client's counting thread (not included above) spent a median {:.0} ns per reply.",
        median(recv)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_arping_times() {
        let line = "42 bytes from 7a:1c:00:11:22:33 (192.0.2.100): index=0 time=21.3 usec";
        assert_eq!(parse_rtt_us(line), Some(21.3));
        assert_eq!(parse_rtt_us("... time=1.5 msec"), Some(1500.0));
        assert_eq!(parse_rtt_us("Timeout"), None);
    }
}
