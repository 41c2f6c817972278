//! The model benchmark: vipd-model's checker at a larger size than
//! `cargo test -p vipd-model` runs (more faults per run, lagging replicas
//! and drifting clocks together), with the states explored, the depth, the
//! time and what it found. No lab: the checker runs in this process.

use std::{fmt::Write as _, time::Duration};

use anyhow::Result;
use vipd_model::{Config, Faults, Outcome, check};

use super::{Options, Progress};

/// Faults per checked run by default.
pub const DEFAULT_FAULTS: u8 = 2;

/// One configuration checked, and whether its result is the expected one.
struct Case {
    what: String,
    config: Config,
    /// The properties expected to fail (today's known gaps).
    expect: &'static [&'static str],
}

fn cases(faults: u8) -> Vec<Case> {
    let mut all = Faults::all(faults);
    all.lagging = true;
    all.drift_ticks = 1;
    let mut atomic = Config::default_rule(all);
    atomic.engine_atomic = true;
    let coded = Config::default_rule(all);
    let mut fenced = coded.clone();
    fenced.fence = Some(Duration::ZERO);
    let kill = Faults {
        budget: faults,
        kill: true,
        pause: true,
        ..Faults::none()
    };
    let mut short = Config::short_lease(200, kill);
    short.engine_atomic = true;
    let mut short_fenced = short.clone();
    short_fenced.fence = Some(Duration::ZERO);
    vec![
        Case {
            what: "default lease, the engine's check and lifetime write as one step".into(),
            config: atomic,
            expect: &[],
        },
        Case {
            what: "default lease, the engine as coded (an await between check and write)".into(),
            config: coded,
            expect: &[vipd_model::ONE_SERVES, vipd_model::NO_LATE],
        },
        Case {
            what: "default lease, the engine as coded, in-kernel fence at the lease end".into(),
            config: fenced,
            expect: &[],
        },
        Case {
            what: "200 ms lease (1 s session), kill and pause only".into(),
            config: short,
            expect: &[vipd_model::ONE_SERVES],
        },
        Case {
            what: "200 ms lease, kill and pause only, in-kernel fence at the lease end".into(),
            config: short_fenced,
            expect: &[],
        },
    ]
}

fn faults_text(f: &Faults) -> String {
    let mut kinds = Vec::new();
    for (on, name) in [
        (f.kill, "kill"),
        (f.pause, "pause"),
        (f.zk_partition, "ZooKeeper partition"),
        (f.lose, "lost message"),
        (f.delay, "delayed message"),
        (f.server_lost, "ZooKeeper server lost"),
    ] {
        if on {
            kinds.push(name);
        }
    }
    let mut s = format!("{} of: {}", f.budget, kinds.join(", "));
    if f.lagging {
        s.push_str("; lagging replicas");
    }
    if f.drift_ticks > 0 {
        s.push_str(&format!("; clock drift +-{} tick", f.drift_ticks));
    }
    s
}

fn result_text(o: &Outcome) -> String {
    let v = o.violations();
    if v.is_empty() {
        "no counterexample".to_string()
    } else {
        format!("counterexample: {}", v.join("; "))
    }
}

pub fn run(opts: &Options) -> Result<String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();
    let mut unexpected = Vec::new();
    for case in cases(opts.model_faults) {
        let p = Progress::new(format!("model: {}", case.what));
        let o = check(&case.config, threads);
        p.finish(format!(
            "{} states, depth {}, {}",
            o.states,
            o.depth,
            result_text(&o)
        ));
        let mut got = o.violations();
        got.sort_unstable();
        let mut want = case.expect.to_vec();
        want.sort_unstable();
        if got != want {
            unexpected.push(format!(
                "{}: expected {:?}, found {:?}",
                case.what, want, got
            ));
        }
        rows.push((case, o));
    }
    let mut md = String::new();
    let _ = writeln!(md, "## Model\n");
    let _ = writeln!(
        md,
        "vipd-model's checker (stateright, breadth first, {threads} thread(s)) on the \
         protocol of docs/DESIGN.md \"The model\": two nodes (A leads, B is next in line), \
         three ZooKeeper servers, each node's kernel, every interleaving of the steps and \
         of up to {} fault(s) per run, to each configuration's horizon. Properties: at most \
         one node serves; no address renewed after its lease is served; the VIP is served \
         within the bound while a node untouched by faults is up and connected. \
         `cargo test -p vipd-model` checks smaller sizes of the same configurations.\n",
        opts.model_faults
    );
    let _ = writeln!(
        md,
        "| configuration | faults per run | tick, horizon | states | depth | time | result |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for (case, o) in &rows {
        let c = &case.config;
        let _ = writeln!(
            md,
            "| {} | {} | {} ms, {} ms | {} | {} | {:.1} s | {} |",
            case.what,
            faults_text(&c.faults),
            c.tick.as_millis(),
            c.horizon.as_millis(),
            o.states,
            o.depth,
            o.elapsed.as_secs_f64(),
            result_text(o)
        );
    }
    let _ = writeln!(
        md,
        "\nExpected: no counterexample at the default lease with the engine's check and \
         write as one step; counterexamples for the engine as coded (a pause between the \
         lease check and the lifetime write) and for the 200 ms lease (the kernel lifetime \
         is at least 1 s), both closed by the in-kernel fence. {}",
        if unexpected.is_empty() {
            "**Every result as expected.**".to_string()
        } else {
            format!("**Unexpected: {}.**", unexpected.join("; "))
        }
    );
    if !unexpected.is_empty() {
        anyhow::bail!("unexpected model results:\n{md}");
    }
    Ok(md)
}
