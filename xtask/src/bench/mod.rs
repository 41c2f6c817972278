//! `cargo xtask bench [all|engine|failover|steady|arp|keepalived|services|serving|chaos|model] [--runs N]`:
//! benchmarks in the lab on release binaries (`model` runs the model
//! checker and needs neither). Each prints its markdown
//! section when done; docs/BENCHMARKS.md keeps the latest section of each.

mod arp;
mod chaos;
mod engine;
pub(crate) mod failover;
mod flood;
mod isolated;
mod keepalived;
mod model;
mod plot;
mod responder;
mod services;
mod serving;
mod steady;
mod table;
pub(crate) mod timeline;

use std::{
    fmt::Display,
    fs,
    io::{IsTerminal as _, Write as _},
    panic::{AssertUnwindSafe, catch_unwind},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{build, is_root, output_of, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Which benchmark (default: all of them, in the order engine,
    /// failover, steady, arp, keepalived, services, serving, chaos, model).
    #[arg(value_enum, default_value = "all")]
    pub which: Which,
    /// Runs per measured case (default 10; failover: 20 per fault and
    /// system; serving: 20 per case). Failover and keepalived need at least 10 for figures worth
    /// quoting.
    #[arg(long)]
    pub runs: Option<usize>,
    /// failover, services: only these faults, comma separated (default:
    /// all four of the bench: failover cut, partition, kill, stop;
    /// services cut, partition, kill, handover).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub faults: Vec<timeline::Fault>,
    /// steady: how long the steady run lasts, in seconds.
    #[arg(long, default_value_t = steady::DEFAULT_SECONDS)]
    pub seconds: u64,
    /// chaos: how long faults are injected in all, in minutes.
    #[arg(long, default_value_t = chaos::DEFAULT_MINUTES)]
    pub minutes: u64,
    /// model: faults per checked run (the size of the check).
    #[arg(long, default_value_t = model::DEFAULT_FAULTS)]
    pub model_faults: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    All,
    Engine,
    Failover,
    Steady,
    Arp,
    Keepalived,
    Services,
    Serving,
    Chaos,
    Model,
}

/// Runs per case of the benchmarks that have no default of their own.
const DEFAULT_RUNS: usize = 10;

/// One benchmark: its name (the section marker), its entry point, which
/// returns its markdown section, and the options it was run with (for the
/// section's footer).
struct Bench {
    name: &'static str,
    run: fn(&Options) -> Result<String>,
    args: fn(&Options) -> String,
}

fn runs_arg(o: &Options) -> String {
    format!("--runs {}", runs(o))
}

/// `--runs N [--faults a,b]` for the benchmarks that take faults.
fn runs_and_faults(o: &Options, default_runs: usize) -> String {
    let mut a = format!("--runs {}", o.runs.unwrap_or(default_runs));
    if !o.faults.is_empty() {
        let f: Vec<&str> = o.faults.iter().map(|f| f.arg()).collect();
        a.push_str(&format!(" --faults {}", f.join(",")));
    }
    a
}

/// Every benchmark, in the order `all` runs them and the file lists them.
const BENCHES: [Bench; 9] = [
    bench("engine", |o| engine::run(runs(o)), runs_arg),
    bench("failover", failover::run, |o| {
        runs_and_faults(o, failover::DEFAULT_RUNS)
    }),
    bench("steady", steady::run, |o| {
        format!("--seconds {}", o.seconds)
    }),
    bench("arp", |o| arp::run(runs(o)), runs_arg),
    bench("keepalived", |o| keepalived::run(runs(o)), runs_arg),
    bench("services", services::run, |o| {
        runs_and_faults(o, services::DEFAULT_RUNS)
    }),
    bench(
        "serving",
        |o| serving::run(o.runs.unwrap_or(serving::DEFAULT_RUNS)),
        |o| format!("--runs {}", o.runs.unwrap_or(serving::DEFAULT_RUNS)),
    ),
    bench(
        "chaos",
        |o| chaos::run(o.minutes),
        |o| format!("--minutes {}", o.minutes),
    ),
    bench("model", model::run, |o| {
        format!("--model-faults {}", o.model_faults)
    }),
];

const fn bench(
    name: &'static str,
    run: fn(&Options) -> Result<String>,
    args: fn(&Options) -> String,
) -> Bench {
    Bench { name, run, args }
}

/// `--runs`, or [`DEFAULT_RUNS`].
fn runs(o: &Options) -> usize {
    o.runs.unwrap_or(DEFAULT_RUNS)
}

const REPORT: &str = "docs/BENCHMARKS.md";

pub fn run(opts: &Options) -> Result<()> {
    // The model checker needs no lab, no root and no release build.
    let lab = opts.which != Which::Model;
    if lab && !is_root() {
        bail!(
            "cargo xtask bench needs root: it builds network namespaces, veths and XDP \
             programs in a lab. Run it as root, e.g. `sudo -E cargo xtask bench`"
        );
    }
    if opts.runs == Some(0) {
        bail!("--runs must be at least 1");
    }
    if opts.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    if opts.model_faults == 0 {
        bail!("--model-faults must be at least 1");
    }
    // ZooKeeper as deployed: its transaction log on disk, fsynced per write
    // (the tests keep it in memory; vipd_tests::zk).
    vipd_tests::zk::keep_data_on_disk();
    let bins = if lab {
        build::build(&build::Options { release: true })?
    } else {
        Default::default()
    };
    for (name, env) in [("vipd", "VIPD_BIN"), ("vipctl", "VIPCTL_BIN")]
        .into_iter()
        .filter(|_| lab)
    {
        let path = bins.join(name);
        if !path.is_file() {
            bail!("the release build did not produce {}", path.display());
        }
        // The lab (vipd_tests::lab::vipd_bin) finds the binaries through
        // these; without them it would look beside this xtask binary.
        // SAFETY: no other thread runs yet: the benchmarks start below.
        unsafe { std::env::set_var(env, &path) };
    }

    let machine = Machine::read();
    let chosen: Vec<&Bench> = BENCHES
        .iter()
        .filter(|b| {
            opts.which == Which::All || format!("{:?}", opts.which).to_lowercase() == b.name
        })
        .collect();
    let mut done: Vec<(&'static str, String)> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    for bench in chosen {
        let args = (bench.args)(opts);
        eprintln!("== bench {} ({args}) ==", bench.name);
        let started = Instant::now();
        // A lab step that fails panics (test-harness style); the lab tears
        // itself down on the way out, and the other benchmarks still run.
        let outcome = catch_unwind(AssertUnwindSafe(|| (bench.run)(opts)))
            .unwrap_or_else(|panic| Err(anyhow::anyhow!("panicked: {}", panic_text(&panic))));
        match outcome {
            Ok(body) => {
                let section = format!(
                    "{}\n\n_Measured {} with `cargo xtask bench {} {args}` on {} \
                     ({:.0} s)._\n",
                    body.trim_end(),
                    machine.date,
                    bench.name,
                    machine.summary(),
                    started.elapsed().as_secs_f64()
                );
                println!("{section}");
                done.push((bench.name, section));
            }
            Err(e) => {
                eprintln!("bench {} failed: {e:#}", bench.name);
                failed.push(format!("{}: {e:#}", bench.name));
            }
        }
    }
    if !done.is_empty() {
        let path = workspace_root().join(REPORT);
        let old = fs::read_to_string(&path).unwrap_or_default();
        let text = report(&old, &done, &machine);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "wrote {} ({} section(s) updated)",
            path.display(),
            done.len()
        );
    }
    if !failed.is_empty() {
        bail!("benchmark(s) failed:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_else(|| "(no message)".to_string())
}

/// Facts about the machine a run measured on.
struct Machine {
    date: String,
    cpus: String,
    cpu_model: String,
    kernel: String,
}

impl Machine {
    fn read() -> Machine {
        let cmd = |prog: &str, args: &[&str]| {
            output_of(Command::new(prog).args(args))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "?".to_string())
        };
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "?".to_string());
        Machine {
            date: cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            cpus: cmd("nproc", &[]),
            cpu_model,
            kernel: cmd("uname", &["-r"]),
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} CPU(s) ({}), kernel {}",
            self.cpus, self.cpu_model, self.kernel
        )
    }
}

fn marker(name: &str) -> (String, String) {
    (
        format!("<!-- bench:{name} -->"),
        format!("<!-- /bench:{name} -->"),
    )
}

/// The body of section `name` in an earlier report, if it has one.
fn old_section<'a>(old: &'a str, name: &str) -> Option<&'a str> {
    let (open, close) = marker(name);
    let start = old.find(&open)? + open.len();
    let len = old[start..].find(&close)?;
    Some(old[start..start + len].trim_matches('\n'))
}

/// The whole report: the header, then every benchmark's section, from this
/// run where it ran, else from the earlier report.
fn report(old: &str, done: &[(&'static str, String)], machine: &Machine) -> String {
    let mut out = format!(
        "# vipd benchmarks\n\n\
         <!-- Written by `cargo xtask bench`; do not edit by hand: the next run overwrites it. -->\n\n\
         Every figure here is written by `cargo xtask bench` (as root), never by hand.\n\
         `cargo xtask bench` runs every benchmark; `cargo xtask bench engine` (or `failover`,\n\
         `steady`, `arp`, `keepalived`, `services`, `serving`, `chaos`, `model`) runs one and replaces only its section below.\n\
         `--runs N` sets the runs per measured case (default {DEFAULT_RUNS}; `failover`: {} per fault\n\
         and system, and `--faults cut,partition,kill,stop` picks faults; `services`: `--faults\n\
         cut,partition,kill,handover`; `serving`: {} per case); `--seconds N` the length of the\n\
         `steady` run (default {}); `--minutes N` the length of the `chaos` runs (default {}); `--model-faults N` the faults per run of `model` (default {}),\n\
         which runs the model checker without a lab or root. The others build the release binaries first and\n\
         192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32 only), which it removes afterwards.\n\n\
         How to read the figures: times are milliseconds unless marked; a cell reads\n\
         `median (min-max)` over the runs; each section says what it measures, from which\n\
         event to which, and how the figure compares with its target. Veths on one\n\
         machine: the wire is free, so the figures are vipd's own time plus the kernel's\n\
         and the scheduler's (other work on the machine shows up in the max).\n\n\
         Last written {} on {}.\n",
        failover::DEFAULT_RUNS,
        serving::DEFAULT_RUNS,
        steady::DEFAULT_SECONDS,
        chaos::DEFAULT_MINUTES,
        model::DEFAULT_FAULTS,
        machine.date,
        machine.summary()
    );
    for bench in &BENCHES {
        let (open, close) = marker(bench.name);
        let body = done
            .iter()
            .find(|(n, _)| *n == bench.name)
            .map(|(_, s)| s.trim_matches('\n').to_string())
            .or_else(|| old_section(old, bench.name).map(str::to_string))
            .unwrap_or_else(|| {
                format!(
                    "## {}\n\nNot measured yet: `cargo xtask bench {}`.",
                    bench.name, bench.name
                )
            });
        out.push_str(&format!("\n{open}\n{body}\n{close}\n"));
    }
    out
}

/// A progress line on stderr for steps that take more than a moment:
/// rewritten in place on a terminal, one line per second otherwise.
pub struct Progress {
    what: String,
    start: Instant,
    tty: bool,
    last: Option<Instant>,
}

impl Progress {
    pub fn new(what: impl Display) -> Progress {
        Progress {
            what: what.to_string(),
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    pub fn update(&mut self, msg: impl Display) {
        let now = Instant::now();
        if !self.tty && self.last.is_some_and(|t| now - t < Duration::from_secs(1)) {
            return;
        }
        self.last = Some(now);
        let line = format!(
            "[{} {:5.1}s] {msg}",
            self.what,
            self.start.elapsed().as_secs_f64()
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    pub fn finish(self, msg: impl Display) {
        let line = format!(
            "[{} {:5.1}s] {msg}",
            self.what,
            self.start.elapsed().as_secs_f64()
        );
        if self.tty {
            eprintln!("\r\x1b[K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

/// Median, minimum and maximum of a set of samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for no samples. The median of an even count is the mean of
    /// the middle two.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Summary {
            n,
            median,
            min: s[0],
            max: s[n - 1],
        })
    }

    /// `median (min-max)`, each with [`fmt_ms`].
    pub fn cell(&self) -> String {
        format!(
            "{} ({}-{})",
            fmt_ms(self.median),
            fmt_ms(self.min),
            fmt_ms(self.max)
        )
    }
}

/// Milliseconds with a precision that suits their size.
pub fn fmt_ms(ms: f64) -> String {
    if ms.abs() < 10.0 {
        format!("{ms:.2}")
    } else if ms.abs() < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_median_min_max() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (3, 2.0, 1.0, 3.0));
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Summary::of(&[]).is_none());
        assert_eq!(s.cell(), "2.50 (1.00-4.00)");
    }

    #[test]
    fn report_keeps_sections_that_did_not_run() {
        let machine = Machine {
            date: "D".into(),
            cpus: "2".into(),
            cpu_model: "M".into(),
            kernel: "K".into(),
        };
        let first = report(
            "",
            &[
                ("engine", "## Engine\nE1".into()),
                ("arp", "## Arp\nA1".into()),
            ],
            &machine,
        );
        assert!(first.contains("<!-- bench:engine -->\n## Engine\nE1\n<!-- /bench:engine -->"));
        assert!(first.contains("Not measured yet: `cargo xtask bench failover`"));
        let second = report(&first, &[("engine", "## Engine\nE2".into())], &machine);
        assert!(second.contains("E2") && !second.contains("E1"));
        assert!(second.contains("## Arp\nA1"));
        assert_eq!(second.matches("<!-- bench:arp -->").count(), 1);
        // Sections stay in the fixed order.
        let at = |s: &str| second.find(s).unwrap();
        assert!(at("bench:engine") < at("bench:failover"));
        assert!(at("bench:arp") < at("bench:keepalived"));
    }
}
