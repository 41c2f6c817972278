//! The isolated rig's report: per case, medians of the per-run figures and
//! sums of the counts; per family, the table and the ratios; then where the
//! work ran and the closing note on how the placement was checked.

use std::fmt::Write as _;

use super::*;
use crate::bench::table::Table;

/// A case's figures over its runs (medians of per-run figures, sums of counts).
struct Row {
    /// Requests sent per second (the load).
    rate: Option<f64>,
    sent: u64,
    refused: u64,
    /// c1's transmit drops: sends n1's full ring refused (= `refused`).
    refused_at_n1: u64,
    seen: u64,
    answers: u64,
    lost_before_c1: u64,
    replies: u64,
    socket_drops: u64,
    /// n1's NAPI thread, per frame it handled and per answer (ns).
    thread_per_frame: Option<f64>,
    thread_per_answer: Option<f64>,
    /// Above the baseline's per-frame cost (same run), per answer (ns).
    marginal: Option<f64>,
    /// The same with ksoftirqd's run time on the responder's CPU added to
    /// the thread's, in the case and in its baseline.
    marginal_with_softirq: Option<f64>,
    /// The program's own run time per run (bpf stats, ns).
    prog_per_run: Option<f64>,
    /// Program counters (requests, xdp_replies), where it watches the VIP.
    program_counted: Option<(u64, u64)>,
    /// The kernel's count of solicitations received (NDP).
    kernel_solicits: u64,
    sender_per_frame: Option<f64>,
    client_napi_per_answer: Option<f64>,
    responder_busy: Option<f64>,
    /// Times n1's thread was put on its CPU, per 1000 frames.
    responder_runs_per_k: Option<f64>,
    responder_ms: f64,
    softirqd_ms: [f64; 2],
    responder_cpus: Vec<usize>,
}

fn median_of(v: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = v.collect();
    (!v.is_empty()).then(|| median(v))
}

fn row(case: Case, list: &[Sample], base: &[Sample]) -> Row {
    let sum = |f: &dyn Fn(&Sample) -> u64| list.iter().map(f).sum::<u64>();
    let med = |f: &dyn Fn(&Sample) -> Option<f64>| median_of(list.iter().filter_map(f));
    // Each run's case against the same run's baseline.
    let marginal = median_of(list.iter().zip(base).filter_map(|(s, b)| {
        let base_per_frame = per(b.responder_ns, b.seen())?;
        marginal_per_answer(s.responder_ns, s.seen(), base_per_frame, s.answers(case))
    }));
    let marginal_with_softirq = median_of(list.iter().zip(base).filter_map(|(s, b)| {
        let base_per_frame = per(b.responder_ns + b.softirqd_ns[1], b.seen())?;
        marginal_per_answer(
            s.responder_ns + s.softirqd_ns[1],
            s.seen(),
            base_per_frame,
            s.answers(case),
        )
    }));
    let mut cpus: Vec<usize> = list.iter().filter_map(|s| s.responder_last_cpu).collect();
    cpus.sort_unstable();
    cpus.dedup();
    Row {
        rate: med(&|s| Some(s.flood.sent as f64 / s.flood.elapsed.as_secs_f64())),
        sent: sum(&|s| s.flood.sent),
        refused: sum(&|s| s.flood.refused),
        refused_at_n1: sum(&|s| s.refused_at_n1()),
        seen: sum(&|s| s.seen()),
        answers: sum(&|s| s.answers(case)),
        lost_before_c1: sum(&|s| s.lost_before_c1(case)),
        replies: sum(&|s| s.flood.replies),
        socket_drops: sum(&|s| s.flood.socket_drops),
        thread_per_frame: med(&|s| per(s.responder_ns, s.seen())),
        thread_per_answer: med(&|s| per(s.responder_ns, s.answers(case))),
        marginal,
        marginal_with_softirq,
        prog_per_run: med(&|s| per(s.get("n1.prog.run_time_ns"), s.seen())),
        program_counted: list
            .iter()
            .all(|s| s.d.contains_key("n1.vip.requests"))
            .then(|| {
                (
                    sum(&|s| s.get("n1.vip.requests")),
                    sum(&|s| s.get("n1.vip.xdp_replies")),
                )
            }),
        kernel_solicits: sum(&|s| s.get("n1.snmp6.Icmp6InNeighborSolicits")),
        sender_per_frame: med(&|s| per(s.flood.sender_ns, s.flood.sent)),
        client_napi_per_answer: med(&|s| per(s.client_napi_ns, s.answers(case))),
        responder_busy: med(&|s| Some(s.responder_busy())),
        responder_runs_per_k: med(&|s| per(s.get("n1.napi.runs") * 1000, s.seen())),
        responder_ms: list.iter().map(|s| s.responder_ns as f64 / 1e6).sum(),
        softirqd_ms: [0, 1].map(|i| list.iter().map(|s| s.softirqd_ns[i] as f64 / 1e6).sum()),
        responder_cpus: cpus,
    }
}

fn ns(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.0} ns"))
}

pub(super) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? / b?)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{r:.2}"))
}

/// The two ratios of a family: marginal (XDP native / kernel) and whole
/// thread (XDP native / kernel) with its floor (baseline / kernel).
struct Ratios {
    marginal: Option<f64>,
    marginal_with_softirq: Option<f64>,
    generic_marginal: Option<f64>,
    whole: Option<f64>,
    floor: Option<f64>,
}

fn ratios(native: &Row, kernel: &Row, baseline: &Row, generic: &Row) -> Ratios {
    Ratios {
        marginal: ratio(native.marginal, kernel.marginal),
        marginal_with_softirq: ratio(native.marginal_with_softirq, kernel.marginal_with_softirq),
        generic_marginal: ratio(generic.marginal, kernel.marginal),
        whole: ratio(native.thread_per_answer, kernel.thread_per_answer),
        floor: ratio(baseline.thread_per_frame, kernel.thread_per_answer),
    }
}

/// What did not add up in a case's counts (empty: everything did).
fn unbalanced(case: Case, r: &Row) -> Vec<String> {
    let mut out = Vec::new();
    if let (Some(rate), Some(want)) = (r.rate, PACE.rate)
        && rate < want as f64 * 0.95
    {
        out.push(format!(
            "the sender reached {rate:.0} requests/s, not {want}: this case had a lighter load"
        ));
    }
    if r.refused != r.refused_at_n1 {
        out.push(format!(
            "{} sends refused with ENOBUFS, {} dropped at n1's ring",
            r.refused, r.refused_at_n1
        ));
    }
    let back = r.replies + r.lost_before_c1 + r.socket_drops;
    if r.answers != back {
        out.push(format!(
            "{} answers, {back} replies delivered or lost on the way",
            r.answers
        ));
    }
    if case.answerer() != Answerer::Nobody && r.answers < r.sent {
        out.push(format!("{} requests sent, {} answered", r.sent, r.answers));
    }
    if let Some((requests, replies)) = r.program_counted {
        if requests != r.sent {
            out.push(format!(
                "the program counted {requests} requests for the VIP, {} were sent",
                r.sent
            ));
        }
        let want = if case.answerer() == Answerer::Program {
            r.answers
        } else {
            0
        };
        if replies != want {
            out.push(format!(
                "the program counted {replies} answers, want {want}"
            ));
        }
    }
    out
}

pub(super) fn report(
    runs: usize,
    samples: &[(Family, Case, Vec<Sample>)],
    responder: &(u32, String),
    client: &(u32, String),
) -> String {
    let list = |f: Family, c: Case| -> &[Sample] {
        samples
            .iter()
            .find(|(ff, cc, _)| *ff == f && *cc == c)
            .map(|(_, _, l)| l.as_slice())
            .expect("every case is measured")
    };
    let rows: Vec<(Family, Case, Row)> = samples
        .iter()
        .map(|(f, c, l)| (*f, *c, row(*c, l, list(*f, c.baseline()))))
        .collect();
    let mut s = String::new();
    let _ = writeln!(s, "### The responder on a CPU of its own\n");
    intro(&mut s, runs, responder, client);
    for family in Family::ALL {
        family_section(&mut s, &rows, family);
    }
    where_it_ran(&mut s, &rows);
    for note in samples
        .iter()
        .flat_map(|(_, _, l)| l)
        .filter_map(|x| x.note.as_ref())
    {
        let _ = writeln!(s, "Note: {note}.\n");
    }
    closing_note(&mut s, &rows, responder);
    s
}

/// The row of `case` in `family`.
fn get(rows: &[(Family, Case, Row)], f: Family, c: Case) -> &Row {
    rows.iter()
        .find(|(ff, cc, _)| *ff == f && *cc == c)
        .map(|(_, _, r)| r)
        .expect("every case has a row")
}

fn family_ratios(rows: &[(Family, Case, Row)], f: Family) -> Ratios {
    ratios(
        get(rows, f, Case::Native),
        get(rows, f, Case::Kernel),
        get(rows, f, Case::Baseline),
        get(rows, f, Case::Generic),
    )
}

/// The rig and the cases.
fn intro(s: &mut String, runs: usize, responder: &(u32, String), client: &(u32, String)) {
    let _ = writeln!(
        s,
        "Lab: c1 and n1 joined by one veth pair, no bridge. On both ends TSO and GSO are off \
         (with them on, veth hands these frames to the receiving end's backlog on the \
         sender's CPU) and GRO is on, which gives each end a NAPI context also without a \
         native XDP program; threaded NAPI (`/sys/class/net/eth0/threaded`) moves each \
         end's receive work to a kernel thread. n1's thread (`{}`) is pinned to CPU \
         {RESPONDER_CPU}; the sender, the counting socket, c1's thread (`{}`) and every \
         vipd are pinned to CPU {SENDER_CPU} (sched_setaffinity, the masks read back); \
         both threads run at nice -20, so neither waits behind other jobs. So one thread \
         does n1's work for a request: receive, the XDP program, the kernel's ARP or NDP \
         code when it gets the frame, and putting the answer into c1's ring (softirq work \
         the kernel defers runs in ksoftirqd on that CPU, shown apart below). A vipd \
         holding no VIP passes every frame on c1's end (native XDP_TX on veth needs a \
         program there, docs/DESIGN.md, facts), in every case. The sender sends {} \
         requests/s for {} s in bursts of {} (`sendmmsg`): the same load in every case \
         (a thread's cost per frame depends on its load: how often it sleeps and wakes, \
         how full the rings it shares with the other CPU are), below what n1 answers in \
         any case, and below the veth rings' 256 frames, so no answer waits in a full \
         ring (vipd would take it for lost and fall back from native). VIPs {VIP} and \
         {VIP6}; {runs} run(s) (`--runs`, at most {MAX_RUNS}), cases in turn, medians of \
         per-run figures, counts summed.\n",
        responder.1,
        client.1,
        PACE.rate.unwrap_or(0),
        FLOOD_FOR.as_secs(),
        PACE.batch
    );
    let _ = writeln!(
        s,
        "The cases: the baseline, vipd holding no VIP with its program attached natively, \
         passing every request to a kernel that answers none (not its address); XDP native \
         (the program answers with XDP_TX); the kernel, with the same program attached \
         natively but `--xdp-responder false`, so it passes and the kernel answers; and in \
         generic mode a baseline of its own and XDP generic. Thread per answer = the run \
         time (`schedstat`) of n1's thread over the flood / the answers n1 built. Marginal \
         per answer = (that run time - the same run's baseline per frame x the frames n1's \
         program ran on) / answers: what answering adds on the responder's CPU beyond what \
         every frame costs anyway; this is the figure that compares the responders. It \
         can be below zero: the baseline's frame goes on, after the program, into an skb \
         and the kernel's look at a request not for it, which an XDP_TX answer never \
         pays; a ratio below zero then says XDP adds nothing over what the frame costs \
         anyway. The whole-thread ratio (XDP native / kernel per answer) is shown beside \
         its floor, the baseline's per frame / the kernel's per answer: the ratio a \
         responder adding nothing to the baseline's frame would get, the most the \
         whole-thread figure can show while the frame's own receive dominates. How far \
         the marginal figures can be trusted is bounded by how much the baseline's per \
         frame moves from run to run (other jobs share the machine; each run's figures \
         are on stderr). \
         Program per run: the program's own run time per run (`bpftool prog show`, with \
         the kernel's BPF statistics on through BPF_ENABLE_STATS, which adds two clock \
         reads to every run, in every case alike).\n"
    );
}

/// One family's table, its ratios and whether its counts added up.
fn family_section(s: &mut String, rows: &[(Family, Case, Row)], family: Family) {
    let get = |f: Family, c: Case| get(rows, f, c);
    let _ = writeln!(s, "{}:\n", family.name());
    let mut t = Table::new([
        "case",
        "sent (per s)",
        "n1's program ran on",
        "answered",
        "replies at c1",
        "resent (n1's ring full) / lost at c1's ring / at the socket",
        "n1's thread per frame",
        "per answer",
        "marginal per answer",
        "program per run",
    ]);
    for case in Case::ALL {
        let r = get(family, case);
        t.row([
            case.name().to_string(),
            format!("{} ({:.0})", r.sent, r.rate.unwrap_or(f64::NAN)),
            r.seen.to_string(),
            r.answers.to_string(),
            r.replies.to_string(),
            format!("{} / {} / {}", r.refused, r.lost_before_c1, r.socket_drops),
            ns(r.thread_per_frame),
            ns(r.thread_per_answer),
            ns(r.marginal),
            ns(r.prog_per_run),
        ]);
    }
    let _ = writeln!(s, "{t}");
    let q = family_ratios(rows, family);
    let _ = writeln!(
        s,
        "{}: marginal responder CPU per answer, XDP native / kernel, on the responder's \
         own CPU: **{}** (target <= 0.33, stretch 0.2); XDP generic / kernel: {}. \
         Whole-thread per answer, XDP native / kernel: {}, beside its floor {} (baseline \
         per frame / kernel per answer, what a responder adding nothing to the \
         baseline's frame would get; XDP_TX goes below it when it costs less than the \
         skb and the kernel's look that the baseline's frame still gets).",
        family.name(),
        fmt_ratio(q.marginal),
        fmt_ratio(q.generic_marginal),
        fmt_ratio(q.whole),
        fmt_ratio(q.floor)
    );
    counts_note(s, rows, family);
}

/// Whether one family's counts added up, case by case.
fn counts_note(s: &mut String, rows: &[(Family, Case, Row)], family: Family) {
    let get = |f: Family, c: Case| get(rows, f, c);
    let mut problems = Vec::new();
    for case in Case::ALL {
        let r = get(family, case);
        let off = unbalanced(case, r);
        if !off.is_empty() {
            problems.push(format!("{}: {}", case.name(), off.join("; ")));
        }
    }
    let others = Case::ALL
        .iter()
        .map(|c| {
            let r = get(family, *c);
            r.seen as i64 - r.sent as i64
        })
        .collect::<Vec<_>>();
    let kernel_ndp = match family {
        Family::Ndp => format!(
            " The kernel counted {} solicitations received in its case \
             (Icmp6InNeighborSolicits), {} were sent.",
            get(family, Case::Kernel).kernel_solicits,
            get(family, Case::Kernel).sent
        ),
        Family::Arp => String::new(),
    };
    let _ = writeln!(
        s,
        "Counts: the program ran on every request sent, plus {others:?} other frames per \
         case (the hosts' own housekeeping); sends that n1's full ring refused (ENOBUFS) \
         were sent again and equal c1's transmit drops; every answer reached c1 or was \
         counted lost at c1's full ring (`xdp_tx_errors` for XDP_TX, n1's transmit drops \
         for an skb) or at the counting socket; the program's counters equal requests \
         sent and answers given.{kernel_ndp} {}\n",
        if problems.is_empty() {
            "All of it held in every case.".to_string()
        } else {
            format!(
                "What did not add up (a difference of a few frames is the hosts' own \
                 housekeeping): {}.",
                problems.join(" | ")
            )
        }
    );
}

/// Where each case's work ran: the threads and CPUs.
fn where_it_ran(s: &mut String, rows: &[(Family, Case, Row)]) {
    let _ = writeln!(s, "Where the work ran:\n");
    let mut t = Table::new([
        "case".to_string(),
        "n1's thread: last CPU, busy, runs per 1000 frames, total".to_string(),
        "sender per frame sent".to_string(),
        "c1's thread per answer".to_string(),
        format!("ksoftirqd/{SENDER_CPU}"),
        format!("ksoftirqd/{RESPONDER_CPU}"),
    ]);
    for (family, case, r) in rows {
        t.row([
            format!("{} ({})", case.name(), family.name()),
            format!(
                "{:?}, {}, {}, {:.0} ms",
                r.responder_cpus,
                r.responder_busy
                    .map_or_else(|| "-".to_string(), |b| format!("{:.0}%", b * 100.0)),
                r.responder_runs_per_k
                    .map_or_else(|| "-".to_string(), |v| format!("{v:.0}")),
                r.responder_ms
            ),
            ns(r.sender_per_frame),
            ns(r.client_napi_per_answer),
            format!("{:.1} ms", r.softirqd_ms[0]),
            format!("{:.1} ms", r.softirqd_ms[1]),
        ]);
    }
    let _ = writeln!(s, "{t}");
}

/// The closing note: both ratios, and how the placement was checked.
fn closing_note(s: &mut String, rows: &[(Family, Case, Row)], responder: &(u32, String)) {
    let responder_total: f64 = rows.iter().map(|(_, _, r)| r.responder_ms).sum();
    let softirq_on = |answerer: Answerer| -> f64 {
        rows.iter()
            .filter(|(_, c, _)| c.answerer() == answerer)
            .map(|(_, _, r)| r.softirqd_ms[1])
            .sum()
    };
    let cpus: Vec<usize> = {
        let mut c: Vec<usize> = rows
            .iter()
            .flat_map(|(_, _, r)| r.responder_cpus.clone())
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    let (ab, ak) = (
        get(rows, Family::Arp, Case::Baseline),
        get(rows, Family::Arp, Case::Kernel),
    );
    let (qa, qn) = (
        family_ratios(rows, Family::Arp),
        family_ratios(rows, Family::Ndp),
    );
    let _ = writeln!(
        s,
        "Closing note. Marginal responder CPU per answer on the responder's own CPU, XDP \
         native / kernel: ARP {}, NDP {} (target <= 0.33, stretch 0.2). Whole-thread per \
         answer, XDP native / kernel: ARP {} (floor {}), NDP {} (floor {}). The placement \
         was checked on this kernel, not assumed: (1) n1's thread `{}` was pinned to CPU \
         {RESPONDER_CPU} (its `Cpus_allowed_list` read back) and had last run on CPU {:?} \
         after every flood; (2) the thread's run time is what moved with the responder: \
         from the ARP baseline to the kernel case it rose from {} to {} per frame while the \
         sender's stayed at {} and {} per frame sent; (3) the program's run count \
         (`bpftool prog show`, BPF statistics on) equals the frames sent plus a few \
         housekeeping frames in every case, its own counters equal the requests and the \
         answers, and its own run time per run (the last column) sits inside the thread's \
         per frame; (4) besides the thread ({responder_total:.0} ms over all floods), \
         ksoftirqd/{RESPONDER_CPU} ran {:.1} ms in the XDP cases, {:.1} ms in the baselines \
         and {:.1} ms in the kernel's: softirq work that the frames' way into the kernel \
         leaves behind on the responder's CPU (what exactly was not traced), which the \
         thread figures leave out. Counting it in, case and baseline alike, the marginal \
         ratio is ARP {}, NDP {}.",
        fmt_ratio(qa.marginal),
        fmt_ratio(qn.marginal),
        fmt_ratio(qa.whole),
        fmt_ratio(qa.floor),
        fmt_ratio(qn.whole),
        fmt_ratio(qn.floor),
        responder.1,
        cpus,
        ns(ab.thread_per_frame),
        ns(ak.thread_per_frame),
        ns(ab.sender_per_frame),
        ns(ak.sender_per_frame),
        softirq_on(Answerer::Program),
        softirq_on(Answerer::Nobody),
        softirq_on(Answerer::Kernel),
        fmt_ratio(qa.marginal_with_softirq),
        fmt_ratio(qn.marginal_with_softirq),
    );
}
