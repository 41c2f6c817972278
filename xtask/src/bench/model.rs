//! The model benchmark: vipd-model's checker at a larger size than
//! `cargo test -p vipd-model` runs (more faults per run, lagging replicas
//! and drifting clocks together), with the states explored, the depth, the
//! time and what it found. No lab: the checker runs in this process.

use std::{fmt::Write as _, time::Duration};

use anyhow::Result;
use vipd_model::{Config, Faults, Outcome, check_at_most};

use super::{Options, Progress};

/// Faults per checked run by default.
pub const DEFAULT_FAULTS: u8 = 2;

/// A check stops after about this many states generated (repeats
/// included; about half are new): memory grows with them. A stopped check
/// is reported as such.
const MAX_STATES: usize = 30_000_000;

/// One configuration checked, and whether its result is the expected one.
struct Case {
    what: String,
    config: Config,
    /// The properties expected to fail (today's known gaps).
    expect: Vec<&'static str>,
}

/// The configurations of `cargo test -p vipd-model`, with `n` faults per
/// run where the test has one (`n + 1` where it has two) and a longer horizon.
fn cases(n: u8) -> Vec<Case> {
    use vipd_model::{NO_LATE, ONE_SERVES};
    let kinds = |k: &str, budget: u8| Faults {
        budget,
        kill: k.contains('k'),
        pause: k.contains('p'),
        zk_partition: k.contains('z'),
        lose: k.contains('l'),
        delay: k.contains('d'),
        server_lost: k.contains('s'),
        ..Faults::none()
    };
    let default = |faults: Faults, atomic: bool, fence: bool, horizon_ms: u64| {
        let mut c = Config::default_rule(faults);
        c.engine_atomic = atomic;
        c.fence = fence.then_some(Duration::ZERO);
        c.horizon = Duration::from_millis(horizon_ms);
        c
    };
    let mut every = kinds("kpzlds", n);
    every.drift_ticks = 0;
    let mut lagging = kinds("kz", n);
    lagging.lagging = true;
    lagging.drift_ticks = 1;
    lagging.targets = [true, false];
    let mut lost = kinds("ks", n + 1);
    lost.lagging = true;
    let mut pause = kinds("p", n);
    pause.targets = [true, false];
    let mut late = kinds("dk", n + 1);
    late.targets = [true, false];
    let short = |fence: bool| {
        // A pause at 25 ms ticks multiplies the states: from two faults on.
        let k = if n >= 2 { "kp" } else { "k" };
        let mut c = Config::short_lease(200, kinds(k, n));
        c.horizon = Duration::from_millis(if n >= 2 { 1500 } else { 1000 });
        c.engine_atomic = true;
        c.fence = fence.then_some(Duration::ZERO);
        c
    };
    // Lagging replicas multiply the states most: at one fault, the tests' horizon.
    let long = if n >= 2 { 4000 } else { 3400 };
    vec![
        Case {
            what: "default lease, every fault kind (engine check and write as one step)".into(),
            config: default(every, true, false, 4500),
            expect: vec![],
        },
        Case {
            what: "default lease, lagging replicas and clock drift, the leader killed or cut off"
                .into(),
            config: default(lagging, true, false, long),
            expect: vec![],
        },
        Case {
            what: "default lease, lagging replicas, kill and ZooKeeper server lost".into(),
            config: default(lost, true, false, long),
            expect: vec![],
        },
        Case {
            what: "default lease, the engine as coded, the leader paused".into(),
            config: default(pause, false, false, 4500),
            expect: vec![ONE_SERVES, NO_LATE],
        },
        Case {
            what: "default lease, the engine as coded, the leader paused, in-kernel fence".into(),
            config: default(pause, false, true, 4500),
            expect: vec![],
        },
        Case {
            what: "default lease, a late renewal answer and a kill".into(),
            config: default(late, true, false, 4500),
            expect: vec![],
        },
        Case {
            what: "default lease, a late renewal answer and a kill, a whole lifetime at the \
                   answer (vipd's rule before the model found it: seeded)"
                .into(),
            config: {
                let mut c = default(late, true, false, 4500);
                c.bug = Some(vipd_model::Bug::FullLifetimeAtLateAnswer);
                c
            },
            expect: vec![ONE_SERVES],
        },
        Case {
            what: "default lease, a late renewal answer and a kill, in-kernel fence".into(),
            config: default(late, true, true, 4500),
            expect: vec![],
        },
        Case {
            what: "200 ms lease (1 s session), the leader killed (and paused)".into(),
            config: short(false),
            expect: vec![ONE_SERVES],
        },
        Case {
            what: "200 ms lease, the leader killed (and paused), in-kernel fence".into(),
            config: short(true),
            expect: vec![],
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
    let mut s = if v.is_empty() {
        "no counterexample".to_string()
    } else {
        format!("counterexample: {}", v.join("; "))
    };
    if !o.complete {
        s.push_str(" (stopped at the state cap: not every state explored)");
    }
    s
}

pub fn run(opts: &Options) -> Result<String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();
    let mut unexpected = Vec::new();
    for case in cases(opts.model_faults) {
        let p = Progress::new(format!("model: {}", case.what));
        let o = check_at_most(&case.config, threads, Some(MAX_STATES));
        p.finish(format!(
            "{} states, depth {}, {}",
            o.states,
            o.depth,
            result_text(&o)
        ));
        let mut got = o.violations();
        got.sort_unstable();
        let mut want = case.expect.clone();
        want.sort_unstable();
        if got != want {
            for p in &got {
                if let Some(t) = o.trace(p) {
                    eprintln!("--- {}: {p}\n{t}", case.what);
                }
            }
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
         write as one step, a renewal answered late then a kill included (the lifetime counts \
         from the renewal's send); counterexamples (the kernel-side gaps left, docs/DESIGN.md \
         \"The model\") for the engine as coded (a pause between the lease check and the \
         lifetime write) and for the 200 ms lease (the kernel lifetime is at least 1 s), each \
         closed by the in-kernel fence, and for the seeded old lifetime rule. {}",
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
