//! `bench services`: what the VIP's real clients see through a takeover.
//! Every node runs the lab's services (vipd_tests::services: `tgtd` with one
//! LUN on a shared image, `busybox httpd` as the console); the client keeps
//! an iSCSI session reading (`iscsi-perf`) and polls the console, while the
//! holder fails (link cut, silent partition, SIGKILL of the agent) or hands
//! over as planned, for vipd and keepalived in the same lab.
//!
//! The I/O stall is read off the wire at the initiator: every TCP segment
//! from the portal that opens with a SCSI Data-In or SCSI Response PDU is
//! an I/O completed, timestamped as it arrives (iscsi-perf itself prints
//! once a second). The stall is the longest stretch between two
//! completions from the fault until I/O has flowed again for a while on
//! the new holder.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use plotters::{
    element::DashedPathElement,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};
use vipd_tests::{
    lab::Host,
    services::{CONSOLE_PORT, IoCompletions, PerfRun, Services, longest_gap},
};

use super::{
    Options,
    failover::{self, System},
    plot,
    timeline::{
        self, FailoverLab, Fault, Prober, Takeover, VIP, binaries, install_sigint_handler,
        preflight, progress, sleep, spread_ms,
    },
};

/// Takeovers per fault and system when `--runs` is not given.
pub const DEFAULT_RUNS: usize = 10;
/// The faults, in the order of the tables.
pub const FAULTS: [Fault; 4] = [Fault::Cut, Fault::Partition, Fault::Kill, Fault::Handover];
/// One row of the tables: a system, and for vipd whether its TCP handoff
/// (tickles and aborts, on by default) runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Row {
    pub system: System,
    pub handoff: bool,
}

impl Row {
    pub fn label(&self) -> String {
        if self.handoff {
            self.system.label()
        } else {
            format!("{}, `--tcp-handoff false`", self.system.label())
        }
    }

    pub fn short(&self) -> String {
        if self.handoff {
            self.system.short()
        } else {
            format!("{} no-handoff", self.system.short())
        }
    }

    /// vipd's flags for this row.
    fn flags(&self) -> &'static [&'static str] {
        if self.handoff {
            &[]
        } else {
            &["--tcp-handoff", "false"]
        }
    }

    fn is_vipd(&self) -> bool {
        matches!(self.system, System::Vipd { .. })
    }
}

/// vipd at T = 1 s with its default lease, with its TCP handoff (the
/// default) and without, and keepalived at `advert_int 0.3`, whose
/// master-down interval (3 x 0.3 s plus skew) is about the same second.
pub fn rows() -> [Row; 3] {
    [
        Row {
            system: failover::SYSTEMS[0],
            handoff: true,
        },
        Row {
            system: failover::SYSTEMS[0],
            handoff: false,
        },
        Row {
            system: System::Keepalived {
                advert_int: Duration::from_millis(300),
            },
            handoff: true,
        },
    ]
}

/// The targets for vipd with its handoff: the median iSCSI stall at a
/// planned handover, how far the stall at a link cut may exceed the cut ->
/// served time of the same runs, and how far any run's stall may exceed
/// its fault's median.
const HANDOVER_STALL_TARGET: Duration = Duration::from_millis(30);
const CUT_OVER_SERVED_TARGET: Duration = Duration::from_millis(50);
const MAX_OVER_MEDIAN_TARGET: Duration = Duration::from_millis(250);
/// How often the console's client sends its GET.
const CONSOLE_POLL: Duration = Duration::from_millis(5);
/// Reads flowing before the fault.
const STEADY: Duration = Duration::from_secs(1);
/// How long I/O must flow after the VIP came up on the new holder before
/// the run ends (a stall can only be measured once it is over).
const IO_FLOWING: Duration = Duration::from_secs(1);
/// How long after the fault the run waits for I/O to come back.
const IO_TIMEOUT: Duration = Duration::from_secs(40);
/// The plot's bins and span around the fault.
const BIN: Duration = Duration::from_millis(100);
const PLOT_BEFORE: Duration = Duration::from_secs(2);

/// One system's lab: the cluster, its services and the console's client
/// (fields drop in order: the client and the servers before the lab).
struct ServicesLab {
    system: Row,
    console: Prober,
    /// Held for its Drop, which stops the servers.
    _services: Services,
    cluster: FailoverLab,
}

/// What the clients saw in one takeover.
struct Run {
    takeover: Takeover,
    /// The iSCSI stall: (last completion before it, first after it).
    io: Option<(Instant, Instant)>,
    /// The console's outage: (last page before it, first after it).
    console: Option<(Instant, Instant)>,
    /// The first page from the new holder.
    console_new: Option<Instant>,
    /// Reads per second before the fault (from the completions).
    steady_rate: f64,
    /// Completions per [`BIN`] from [`PLOT_BEFORE`] before the fault.
    bins: Vec<u64>,
}

impl Run {
    fn since_fault(&self, t: Option<Instant>) -> Option<Duration> {
        t.map(|t| t.saturating_duration_since(self.takeover.cut_at))
    }
    fn stall(&self) -> Option<Duration> {
        self.io.map(|(a, b)| b - a)
    }
    fn outage(&self) -> Option<Duration> {
        self.console.map(|(a, b)| b - a)
    }
}

struct Cell {
    system: Row,
    fault: Fault,
    runs: Vec<Run>,
}

pub fn run(opts: &Options) -> Result<String> {
    preflight()?;
    install_sigint_handler();
    let runs = opts.runs.unwrap_or(DEFAULT_RUNS);
    if let Some(f) = opts.faults.iter().find(|f| !FAULTS.contains(f)) {
        bail!(
            "bench services measures {}; not {}",
            FAULTS.map(Fault::arg).join(", "),
            f.arg()
        );
    }
    let faults: Vec<Fault> = FAULTS
        .into_iter()
        .filter(|f| opts.faults.is_empty() || opts.faults.contains(f))
        .collect();
    let bins = binaries()?;
    let start = Instant::now();
    let p = |s: &str| progress(start, &format!("services: {s}"));

    let mut labs = Vec::new();
    for system in rows() {
        let sp = |m: &str| p(&format!("{}: {m}", system.short()));
        let hint = format!("sv{}", labs.len());
        let cluster = FailoverLab::start_with_flags(
            &hint,
            system.system.agent(),
            system.system.lease(),
            system.system.vip(),
            system.flags(),
            &bins,
            &sp,
        )
        .with_context(|| format!("starting the lab cluster for {}", system.label()))?;
        sp("starting tgtd and the console on every node");
        let hosts: Vec<&Host> = cluster.nodes.iter().map(|n| &n.host).collect();
        let services = Services::start(cluster.lab.dir(), &hosts);
        let console = Prober::start_http(
            &cluster.client.path(),
            cluster.vip,
            CONSOLE_PORT,
            CONSOLE_POLL,
        )?;
        labs.push(ServicesLab {
            system,
            console,
            _services: services,
            cluster,
        });
    }
    let mut cells: Vec<Cell> = Vec::new();
    for &fault in &faults {
        let first = cells.len();
        for l in &labs {
            cells.push(Cell {
                system: l.system,
                fault,
                runs: Vec::new(),
            });
        }
        for r in 0..runs {
            // Taking turns, so both systems see the same machine load.
            for (i, l) in labs.iter().enumerate() {
                let run = one_run(l, fault)?;
                let f = |d: Option<Duration>| d.map_or("-".to_string(), timeline::ms);
                p(&format!(
                    "{} {} run {}/{runs}: {}; iSCSI stall {} ms (back {} ms after the fault, \
                     {:.0} reads/s before), console outage {} ms (new holder's page {} ms)",
                    l.system.short(),
                    fault.arg(),
                    r + 1,
                    failover::summary(&l.cluster, &run.takeover),
                    f(run.stall()),
                    f(run.since_fault(run.io.map(|g| g.1))),
                    run.steady_rate,
                    f(run.outage()),
                    f(run.since_fault(run.console_new)),
                ));
                cells[first + i].runs.push(run);
            }
        }
    }
    p("tearing the labs down");
    drop(labs);

    if let Some(svg) = plot(&cells) {
        let docs = crate::workspace_root().join("docs");
        std::fs::create_dir_all(&docs)?;
        let path = docs.join("services.svg");
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        p(&format!("wrote {}", path.display()));
    }
    Ok(report(runs, &faults, &cells))
}

/// One takeover with both clients running; the cluster quiet again after.
fn one_run(l: &ServicesLab, fault: Fault) -> Result<Run> {
    let c = &l.cluster;
    c.wait_settled(Duration::from_secs(15))?;
    let io = IoCompletions::start(&c.client, "eth0", VIP);
    let perf = PerfRun::start(&c.client, VIP);
    let started = Instant::now();
    if !perf.wait_reads(started, Duration::from_secs(20)) {
        let (_, out) = perf.stop();
        bail!("iscsi-perf read nothing through the VIP in 20 s: {out}");
    }
    sleep(STEADY)?;
    let mut tk = c.takeover_on(fault, Duration::ZERO, l.system.system.timeout())?;
    let cut = tk.cut_at;
    // Until reads have flowed for a while after the VIP came up on the new
    // holder (or the wait gives up).
    let up = tk.configured.map(|d| cut + d);
    loop {
        timeline::check_interrupt()?;
        let flowing = up.is_some_and(|up| {
            io.last()
                .is_some_and(|last| last > up + IO_FLOWING && last.elapsed() < BIN)
        });
        if flowing || cut.elapsed() > IO_TIMEOUT {
            break;
        }
        sleep(Duration::from_millis(50))?;
    }
    let end = Instant::now();
    let (_, perf_out) = perf.stop();
    let times = io.stop();
    let resumed = up.is_some_and(|up| times.last().is_some_and(|t| *t > up));
    // From the last completion before the fault: a hiccup earlier on is
    // not the takeover's.
    let io_gap = resumed
        .then(|| longest_gap(&times, last_before(&times, cut), end))
        .flatten();
    if !resumed {
        eprintln!(
            "services: iSCSI reads did not come back within {} s after the fault; iscsi-perf: {}",
            IO_TIMEOUT.as_secs(),
            perf_out
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    let pages: Vec<Instant> = l
        .console
        .outcomes(cut.checked_sub(STEADY).unwrap_or(cut), end)
        .into_iter()
        .filter_map(|(at, ok)| ok.then_some(at))
        .collect();
    let console_new = tk.new.and_then(|n| {
        let name = &c.nodes[n].name;
        l.console.first_served_by(name, cut)
    });
    let console = console_new.and_then(|_| longest_gap(&pages, last_before(&pages, cut), end));
    let steady_rate = rate(&times, cut.checked_sub(STEADY).unwrap_or(cut), cut);
    let bins = per_bin(&times, cut.checked_sub(PLOT_BEFORE).unwrap_or(cut), end);
    if let Err(e) = c.restore_from(&mut tk) {
        eprintln!("services: restore failed: {e:#}; waiting for one holder");
        c.wait_settled(Duration::from_secs(60))
            .context("the cluster did not settle after a failed restore")?;
    }
    Ok(Run {
        takeover: tk,
        io: io_gap,
        console,
        console_new,
        steady_rate,
        bins,
    })
}

/// The latest of `times` (in order) at or before `t`, else `t`.
fn last_before(times: &[Instant], t: Instant) -> Instant {
    times.iter().rev().find(|x| **x <= t).copied().unwrap_or(t)
}

/// Completions per second in [from, to).
fn rate(times: &[Instant], from: Instant, to: Instant) -> f64 {
    let n = times.iter().filter(|t| **t >= from && **t < to).count();
    let secs = to.saturating_duration_since(from).as_secs_f64();
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// Completions in each [`BIN`] from `from` until `to`.
fn per_bin(times: &[Instant], from: Instant, to: Instant) -> Vec<u64> {
    let n = (to.saturating_duration_since(from).as_nanos() / BIN.as_nanos()) as usize + 1;
    let mut bins = vec![0u64; n];
    for t in times.iter().filter(|t| **t >= from && **t < to) {
        let i = ((*t - from).as_nanos() / BIN.as_nanos()) as usize;
        if let Some(b) = bins.get_mut(i) {
            *b += 1;
        }
    }
    bins
}

// ---------------------------------------------------------------- report

/// `median (min–max)`, with how many runs had one when not all did.
fn cell_of(runs: &[Run], f: &dyn Fn(&Run) -> Option<Duration>) -> String {
    let v: Vec<Duration> = runs.iter().filter_map(f).collect();
    let mut s = spread_ms(v.clone());
    if v.len() < runs.len() {
        let _ = write!(s, " [{} of {}]", v.len(), runs.len());
    }
    s
}

fn report(runs: usize, faults: &[Fault], cells: &[Cell]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Services: iSCSI and the web console through a takeover\n"
    );
    let [v, off, k] = rows();
    let _ = writeln!(
        md,
        "The lab of the failover section (three nodes, a client, {VIP} as the VIP), and on every \
         node the services the VIP exists for: Debian's `tgtd` serving one target whose LUN is \
         backed by one image file all nodes share, and a `busybox httpd` console whose page \
         names the node, both on the wildcard address. Systems: {} (its TCP handoff on, the \
         default), {} (the same without it), and {} (its master-down interval, 3 × 0.3 s plus \
         skew, is about vipd's second). {runs} takeovers per fault and system, the labs taking \
         turns run by run.\n",
        v.label(),
        off.label(),
        k.label()
    );
    let _ = writeln!(
        md,
        "Clients, in the client's namespace: **iSCSI**, libiscsi's `iscsi-perf` (user-space \
         initiator, 4 READ16s in flight, reconnecting on a broken connection, at nice 19) \
         started fresh for each run on `iscsi://{VIP}/…/1`; its once-a-second report is too \
         coarse, so the bench reads the initiator's side of the wire: an AF_PACKET socket on \
         the client's interface timestamps every TCP segment from the portal that opens with a \
         SCSI Data-In or SCSI Response PDU (an I/O completed). The **stall** is the longest \
         stretch between two completions from the last one before the fault until reads have \
         flowed for {} s after the VIP came up on the new holder (where a fault does not stop \
         I/O at once, as a killed agent leaves the old holder's target serving, the stall \
         starts later than the fault). An open session's TCP connection breaks only when a \
         segment of the client reaches the new holder, which answers with a reset. Without \
         help that is a retransmission, and the initiator's retransmission timer (200 ms at \
         least, doubling with each retry) adds to the takeover. vipd's TCP handoff sends the \
         client, right after the new holder's first announcement, a tickle ACK for each \
         connection the old holder published: the client answers at once, the new holder \
         resets it, and libiscsi logs in again. **cut → served** is the takeover itself, from \
         the fault until the client's TCP probe is first answered by the new holder, in the \
         same runs. **Console**: an HTTP/1.0 GET of the page through the VIP every {} ms \
         (a new connection each, connect timeout 30 ms, reply timeout 100 ms: a request the \
         old holder took but never answered blinds the client that long); the **outage** is \
         the longest stretch between two pages over the same span. \"Back\" columns are from \
         the fault, at the end of that longest stretch: under SIGKILL, where the old holder's \
         services go on serving and the switch costs only a reconnect, the longest stretch \
         can be another one of the same few ms.\n",
        IO_FLOWING.as_secs(),
        CONSOLE_POLL.as_millis()
    );
    let _ = writeln!(
        md,
        "Faults as in the failover section; **planned handover**: vipd's `vipctl handover` \
         (the leader removes its VIP, deletes its candidacy and stands again last in line); \
         keepalived's own planned way out, SIGTERM of the master's keepalived (its VRRP child \
         sends a priority-0 advert and removes the VIP as it exits; the bench starts it again \
         afterwards). Times in ms, median (min–max); `[k of n]` when not every run had one.\n"
    );
    let _ = writeln!(
        md,
        "| fault | system | iSCSI stall | I/O back | cut → served | console outage | page from the new holder | reads/s before |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for &fault in faults {
        for c in cells.iter().filter(|c| c.fault == fault) {
            let rates: Vec<f64> = c.runs.iter().map(|r| r.steady_rate).collect();
            let rate = super::Summary::of(&rates)
                .map_or("n/a".to_string(), |s| format!("{:.0}", s.median));
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {rate} |",
                fault.label(),
                c.system.label(),
                cell_of(&c.runs, &Run::stall),
                cell_of(&c.runs, &|r| r.since_fault(r.io.map(|g| g.1))),
                cell_of(&c.runs, &|r| r.takeover.served),
                cell_of(&c.runs, &Run::outage),
                cell_of(&c.runs, &|r| r.since_fault(r.console_new)),
            );
        }
    }
    let _ = writeln!(md);
    targets(&mut md, cells);
    if plot(cells).is_some() {
        let _ = writeln!(
            md,
            "![iSCSI reads per {} ms through one takeover per system](services.svg)\n",
            BIN.as_millis()
        );
        let _ = writeln!(
            md,
            "The plot (docs/services.svg): I/O completions per {} ms seen by the client through \
             the first {} run of each system, from {} s before the fault.\n",
            BIN.as_millis(),
            plot_fault(cells).map_or("", Fault::label),
            PLOT_BEFORE.as_secs()
        );
    }
    md
}

/// The median of `v`, if any.
fn median(v: &[Duration]) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied()
}

/// What the targets say for one fault's cell of vipd with its handoff.
#[derive(Debug, PartialEq)]
struct Verdicts {
    /// (median stall, the target it is held to), when the fault has one.
    median: Option<(Duration, Duration)>,
    /// (max stall, median + [`MAX_OVER_MEDIAN_TARGET`]).
    max: Option<(Duration, Duration)>,
}

fn verdicts(fault: Fault, runs: &[Run]) -> Verdicts {
    let stalls: Vec<Duration> = runs.iter().filter_map(Run::stall).collect();
    let med = median(&stalls);
    let median_target = match fault {
        Fault::Handover => med.map(|m| (m, HANDOVER_STALL_TARGET)),
        Fault::Cut => {
            // Against the takeover of the same runs.
            let served: Vec<Duration> = runs
                .iter()
                .filter(|r| r.stall().is_some())
                .filter_map(|r| r.takeover.served)
                .collect();
            med.zip(median(&served))
                .map(|(m, s)| (m, s + CUT_OVER_SERVED_TARGET))
        }
        _ => None,
    };
    Verdicts {
        median: median_target,
        max: med
            .zip(stalls.iter().max().copied())
            .map(|(m, max)| (max, m + MAX_OVER_MEDIAN_TARGET)),
    }
}

/// The targets for vipd with its handoff, met or missed, one line each.
fn targets(md: &mut String, cells: &[Cell]) {
    let [v, ..] = rows();
    let mut lines = Vec::new();
    let word = |(got, bound): (Duration, Duration)| {
        let verdict = if got <= bound { "met" } else { "**missed**" };
        format!(
            "{} ms against {} ms: {verdict}",
            timeline::ms(got),
            timeline::ms(bound)
        )
    };
    for c in cells.iter().filter(|c| c.system == v && c.system.is_vipd()) {
        let vd = verdicts(c.fault, &c.runs);
        if let Some(m) = vd.median {
            let what = match c.fault {
                Fault::Handover => "median stall (target 30 ms)".to_string(),
                _ => "median stall (target: median cut → served of the same runs + 50 ms)"
                    .to_string(),
            };
            lines.push(format!("- {}, {what}: {}", c.fault.label(), word(m)));
        }
        if let Some(m) = vd.max {
            lines.push(format!(
                "- {}, longest stall (target: median + 250 ms): {}",
                c.fault.label(),
                word(m)
            ));
        }
    }
    if !lines.is_empty() {
        let _ = writeln!(md, "Targets for {}:\n", v.label());
        for l in lines {
            let _ = writeln!(md, "{l}");
        }
        let _ = writeln!(md);
    }
}

// ---------------------------------------------------------------- plot

/// The fault whose first run the plot shows: a link cut when measured.
fn plot_fault(cells: &[Cell]) -> Option<Fault> {
    FAULTS
        .into_iter()
        .find(|f| cells.iter().any(|c| c.fault == *f && !c.runs.is_empty()))
}

/// I/O completions per bin over time, one line per system, through the
/// first run of [`plot_fault`].
fn plot(cells: &[Cell]) -> Option<String> {
    let fault = plot_fault(cells)?;
    let series: Vec<(String, &[u64])> = cells
        .iter()
        .filter(|c| c.fault == fault)
        .filter_map(|c| Some((c.system.label(), c.runs.first()?.bins.as_slice())))
        .collect();
    Some(series_svg(
        &format!(
            "iSCSI reads through one {} (completions per {} ms at the client)",
            fault.label(),
            BIN.as_millis()
        ),
        &series,
    ))
}

/// A line plot of per-[`BIN`] counts, the fault at [`PLOT_BEFORE`].
fn series_svg(title: &str, series: &[(String, &[u64])]) -> String {
    let colors = [
        plot::rgb(0x2a6fb0),
        plot::rgb(0xd0632b),
        plot::rgb(0x3c9a3c),
    ];
    // x in ms (plotters' exact ticks need an integer axis), a tick a second.
    let bin_ms = BIN.as_millis() as f64;
    let before = PLOT_BEFORE.as_millis() as i64;
    let longest = series
        .iter()
        .map(|(_, b)| b.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let span = longest as f64 * bin_ms;
    let x_max = ((span - before as f64) / 1000.0).ceil().max(1.0) as i64 * 1000;
    let y_peak = series
        .iter()
        .flat_map(|(_, b)| b.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1);
    let y_step = nice_step(y_peak as f64 / 5.0) as u64;
    let y_max = y_peak.div_ceil(y_step) * y_step;
    let x_ticks = (-before..=x_max).step_by(1000).collect();
    let y_ticks = (0..=y_max).step_by(y_step as usize).collect();
    let fault = plot::rgb(0xc0392b);
    let labels: Vec<String> = series.iter().map(|(l, _)| l.replace('`', "")).collect();
    let legend: Vec<_> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (colors[i % colors.len()], l.as_str()))
        .collect();
    let (left, top, plot_h, x_labels) = (70u32, 16u32, 260u32, 45u32);
    let layout = plot::LegendLayout {
        left: left as i32,
        columns: 1,
        column_width: 0,
    };
    plot::svg(
        left + 700 + 30,
        top + plot_h + x_labels,
        title,
        &legend,
        &layout,
        |area| {
            let mut chart = ChartBuilder::on(area)
                .margin_top(top)
                .margin_right(30)
                .y_label_area_size(left)
                .x_label_area_size(x_labels)
                .build_cartesian_2d(
                    (-before..x_max).with_key_points(x_ticks),
                    (0..y_max).with_key_points(y_ticks),
                )?;
            chart
                .configure_mesh()
                .bold_line_style(plot::rgb(0xdddddd))
                .x_label_formatter(&|t| format!("{:.0}", *t as f64 / 1000.0))
                .x_desc("s after the fault")
                .label_style(("sans-serif", plot::TEXT).into_font())
                .axis_desc_style(("sans-serif", plot::TEXT).into_font())
                .draw()?;
            chart.draw_series([DashedPathElement::new(
                [(0, 0), (0, y_max)],
                4,
                3,
                fault.stroke_width(2),
            )])?;
            chart.draw_series([Text::new(
                " fault",
                (0, y_max),
                TextStyle::from(("sans-serif", plot::TEXT).into_font())
                    .color(&fault)
                    .pos(Pos::new(HPos::Left, VPos::Bottom)),
            )])?;
            for (i, (_, bins)) in series.iter().enumerate() {
                let points = bins.iter().enumerate().map(|(k, &c)| {
                    let mid = ((k as f64 + 0.5) * bin_ms).round() as i64 - before;
                    (mid, c)
                });
                chart.draw_series(LineSeries::new(
                    points,
                    colors[i % colors.len()].stroke_width(2),
                ))?;
            }
            Ok(())
        },
    )
}

/// A round axis step (1, 2 or 5 times a power of ten) at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(1.0);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_and_rates() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let t = [at(0), at(50), at(150), at(420), at(999)];
        assert_eq!(last_before(&t, at(200)), at(150));
        assert_eq!(last_before(&t[1..], at(10)), at(10));
        assert_eq!(per_bin(&t, at(0), at(450)), vec![2, 1, 0, 0, 1]);
        assert_eq!(rate(&t, at(0), at(1000)), 5.0);
        assert_eq!(rate(&t, at(0), at(0)), 0.0);
    }

    #[test]
    fn axis_steps() {
        assert_eq!(nice_step(0.3), 1.0);
        assert_eq!(nice_step(180.0), 200.0);
        assert_eq!(nice_step(2400.0), 5000.0);
        assert_eq!(nice_step(1000.0), 1000.0);
    }

    #[test]
    fn the_plot_draws_one_line_per_system() {
        let a = [10u64, 10, 0, 0, 12];
        let b = [9u64, 0, 11];
        let svg = series_svg(
            "t",
            &[
                ("vipd `x`".to_string(), &a[..]),
                ("keepalived".to_string(), &b[..]),
            ],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // One line per system in its colour, a point per bin.
        for (color, points) in [("#2A6FB0", a.len()), ("#D0632B", b.len())] {
            let lines: Vec<&str> = svg
                .lines()
                .filter(|l| {
                    l.starts_with("<polyline") && l.contains(&format!(r#"stroke="{color}""#))
                })
                .collect();
            assert_eq!(lines.len(), 1, "{color}: {lines:?}");
            let listed = lines[0].split(r#"points=""#).nth(1).unwrap_or_default();
            assert_eq!(
                listed.split_whitespace().count() - 1,
                points,
                "{color}: {listed}"
            );
        }
        let texts = plot::texts(&svg);
        // Bins reach 0.5 s after the fault: ticks from -2 s to 1 s.
        for text in [
            "t",
            "vipd x",
            "keepalived",
            " fault",
            "s after the fault",
            "-2",
            "-1",
            "0",
            "1",
        ] {
            assert!(
                texts.iter().any(|t| t == text),
                "no text {text:?} in {texts:?}"
            );
        }
        // The fault's dashed line.
        assert!(svg.contains(r##"stroke="#C0392B""##));
    }

    /// A run whose stall is `stall_ms` and whose takeover served the
    /// client `served_ms` after the fault.
    fn run_of(fault: Fault, stall_ms: u64, served_ms: Option<u64>) -> Run {
        let t0 = Instant::now();
        let mut takeover = Takeover::at_fault(fault, std::time::SystemTime::now(), t0, 0, Some(1));
        takeover.served = served_ms.map(Duration::from_millis);
        Run {
            takeover,
            io: Some((t0, t0 + Duration::from_millis(stall_ms))),
            console: None,
            console_new: None,
            steady_rate: 0.0,
            bins: Vec::new(),
        }
    }

    #[test]
    fn the_targets_hold_each_fault_to_its_bound() {
        let ms = Duration::from_millis;
        let handover: Vec<Run> = [10, 20, 25, 300]
            .into_iter()
            .map(|s| run_of(Fault::Handover, s, Some(5)))
            .collect();
        assert_eq!(
            verdicts(Fault::Handover, &handover),
            Verdicts {
                median: Some((ms(25), ms(30))),
                max: Some((ms(300), ms(275))),
            }
        );
        let cut: Vec<Run> = [(500, 470), (510, 480), (530, 460)]
            .into_iter()
            .map(|(s, v)| run_of(Fault::Cut, s, Some(v)))
            .collect();
        assert_eq!(
            verdicts(Fault::Cut, &cut).median,
            Some((ms(510), ms(470 + 50)))
        );
        assert_eq!(verdicts(Fault::Kill, &cut).median, None);
        assert_eq!(verdicts(Fault::Kill, &[]).max, None);
    }

    #[test]
    fn cells_count_missing_runs() {
        let [v, off, k] = rows();
        assert_eq!(v.label(), "vipd T = 1 s, default lease");
        assert_eq!(
            off.label(),
            "vipd T = 1 s, default lease, `--tcp-handoff false`"
        );
        assert_eq!(off.flags(), ["--tcp-handoff", "false"]);
        assert!(v.flags().is_empty() && k.flags().is_empty());
        assert_eq!(k.label(), "keepalived `advert_int 0.3`");
        assert_eq!(cell_of(&[], &Run::stall), "n/a");
    }
}
