//! The checker at the size `cargo test` runs: the faithful model finds no
//! counterexample where today's protocol is safe, each seeded bug is found,
//! and the known gaps of today's kernel side are shown, and closed by the
//! in-kernel fence. Traces are printed (`-- --nocapture`) for the record.

use std::time::Duration;

use vipd_lease::DEFAULT_MARGIN;
use vipd_model::{Bug, Config, Faults, NO_LATE, ONE_SERVES, Outcome, SOMETIMES_TAKEOVER, check};

fn run(what: &str, c: &Config) -> Outcome {
    let o = check(c, 1);
    println!(
        "{what}: {} states, depth {}, {:?}; violations: {:?}",
        o.states,
        o.depth,
        o.elapsed,
        o.violations()
    );
    o
}

/// Asserts a counterexample for `property` and prints it.
fn counterexample(what: &str, o: &Outcome, property: &str) -> String {
    let t = o
        .trace(property)
        .unwrap_or_else(|| panic!("{what}: no counterexample for {property:?}: {o:?}"))
        .to_string();
    println!("--- {what}: {property}\n{t}");
    t
}

fn only(kinds: &str, budget: u8) -> Faults {
    Faults {
        budget,
        kill: kinds.contains('k'),
        pause: kinds.contains('p'),
        zk_partition: kinds.contains('z'),
        lose: kinds.contains('l'),
        delay: kinds.contains('d'),
        server_lost: kinds.contains('s'),
        ..Faults::none()
    }
}

/// Today's protocol with the engine's lease check and its lifetime write
/// as one step (see `a_pause_between_the_lease_check_and_the_lifetime_write`
/// for why it is not): no fault of any kind, once in a run, at any step,
/// breaks a property, and a takeover does happen.
#[test]
fn faithful_default_one_fault_of_any_kind() {
    let mut c = Config::default_rule(Faults::all(1));
    c.faults.lagging = false;
    c.faults.drift_ticks = 0;
    c.engine_atomic = true;
    let o = run("default, one fault", &c);
    assert_eq!(o.violations(), Vec::<&str>::new(), "{o:?}");
    assert!(o.trace(SOMETIMES_TAKEOVER).is_some(), "no takeover reached");
    assert!(o.states > 100_000, "{o:?}");
}

/// Lagging replicas and drifting clocks, with a killed or cut-off leader.
#[test]
fn faithful_default_lagging_replicas_and_drift() {
    let mut c = Config::default_rule(only("kz", 1));
    c.faults.lagging = true;
    c.faults.drift_ticks = 1;
    c.faults.targets = [true, false];
    c.horizon = Duration::from_millis(3400);
    c.engine_atomic = true;
    let o = run("default, lagging and drift", &c);
    assert_eq!(o.violations(), Vec::<&str>::new(), "{o:?}");
    assert!(o.trace(SOMETIMES_TAKEOVER).is_some(), "no takeover reached");
}

/// A ZooKeeper server lost under lagging replicas: the successor
/// reconnects, lists the election again (with a sync) and still takes over.
#[test]
fn faithful_default_server_lost() {
    let mut c = Config::default_rule(only("ks", 2));
    c.faults.lagging = true;
    c.horizon = Duration::from_millis(3400);
    c.engine_atomic = true;
    let o = run("default, server lost", &c);
    assert_eq!(o.violations(), Vec::<&str>::new(), "{o:?}");
}

fn seeded(bug: Bug, faults: Faults) -> (Config, Config) {
    let mut faithful = Config::default_rule(faults);
    faithful.engine_atomic = true;
    let mut buggy = faithful.clone();
    buggy.bug = Some(bug);
    (faithful, buggy)
}

#[test]
fn seeded_takeover_without_the_version_condition_is_found() {
    let (faithful, buggy) = seeded(Bug::TakeoverWithoutVersion, only("p", 1));
    let o = run("faithful, pause", &faithful);
    assert_eq!(o.violations(), Vec::<&str>::new(), "{o:?}");
    let o = run("takeover without version", &buggy);
    counterexample("takeover without the version condition", &o, ONE_SERVES);
}

#[test]
fn seeded_lifetime_renewed_after_the_lease_is_found() {
    let (faithful, buggy) = seeded(Bug::LifetimeRenewedAfterLease, only("p", 1));
    let mut faithful = faithful;
    faithful.faults.targets = [true, false];
    let mut buggy = buggy;
    buggy.faults.targets = [true, false];
    let o = run("faithful, pause of the leader", &faithful);
    assert_eq!(o.violations(), Vec::<&str>::new(), "{o:?}");
    let o = run("lifetime renewed after the lease", &buggy);
    counterexample("lifetime renewed after the lease", &o, NO_LATE);
}

/// A renewal answered late, then the leader stopped: the lease counted
/// from the answer outlasts the successor's wait, which counts from the
/// write. (With the in-kernel fence on both sides: the configuration of
/// `a_late_answer_then_a_kill_with_the_fence_is_safe`.)
#[test]
fn seeded_lease_counted_from_the_answer_is_found() {
    let mut faults = only("dk", 2);
    faults.targets = [true, false];
    let (mut faithful, mut buggy) = seeded(Bug::LeaseFromAnswer, faults);
    faithful.fence = Some(Duration::ZERO);
    buggy.fence = Some(Duration::ZERO);
    // The faithful model under these faults is checked (and found safe) by
    // `a_late_answer_then_a_kill_with_the_fence_is_safe`: the same config.
    let mut same = late_answer_then_kill();
    same.fence = Some(Duration::ZERO);
    assert_eq!(format!("{faithful:?}"), format!("{same:?}"));
    let o = run("lease from the answer", &buggy);
    counterexample("lease counted from the answer", &o, ONE_SERVES);
}

/// Today's engine checks that the lease runs, then (after an await) writes
/// the address's lifetime: a leader paused in between writes a whole
/// lifetime after its lease ended, and serves beside its successor. The
/// in-kernel fence (XDP ends the answers at the lease's end) closes it.
#[test]
fn a_pause_between_the_lease_check_and_the_lifetime_write() {
    let mut c = Config::default_rule(only("p", 1));
    c.faults.targets = [true, false];
    let o = run("default, code's engine, pause", &c);
    counterexample("pause between check and write", &o, NO_LATE);
    counterexample("pause between check and write", &o, ONE_SERVES);
    c.fence = Some(Duration::ZERO);
    let o = run("default, code's engine, pause, fence", &c);
    assert_eq!(o.violations(), Vec::<&str>::new(), "{o:?}");
}

/// At sub-second leases the kernel lifetime (whole seconds, at least 1 s)
/// outlives the takeover: a killed leader's address is still in its kernel
/// when the successor serves. The in-kernel fence closes it.
#[test]
fn short_lease_killed_leader_overlaps_without_the_fence() {
    let mut c = Config::short_lease(200, only("k", 1));
    c.horizon = Duration::from_millis(900);
    c.engine_atomic = true;
    let o = run("200 ms lease, kill", &c);
    counterexample("200 ms lease, killed leader", &o, ONE_SERVES);
    c.fence = Some(Duration::ZERO);
    let o = run("200 ms lease, kill, fence", &c);
    assert_eq!(o.violations(), Vec::<&str>::new(), "{o:?}");
    assert!(o.trace(SOMETIMES_TAKEOVER).is_some(), "no takeover reached");
}

/// Found by the model at the default settings: a renewal whose answer
/// comes late (here its write 400 ms on the way, the answer 1.1 s) still
/// extends the lease to its send + the lease, and the engine then writes a
/// whole lease of kernel lifetime from the answer. Killed (or frozen) right
/// after, the leader's address outlived the successor's takeover, which
/// counts from when it saw the write. vipd now writes only the lifetime
/// that ends before the takeover can come (`LeaseTimes::lifetime_at`;
/// `Bug::FullLifetimeAtLateAnswer` is the old rule); the in-kernel fence
/// at the lease's end closes it as well.
#[test]
fn a_late_answer_then_a_kill_with_the_fence_is_safe() {
    let mut c = late_answer_then_kill();
    c.fence = Some(Duration::ZERO);
    let o = run("default, delay and kill, fence", &c);
    assert_eq!(o.violations(), Vec::<&str>::new(), "{o:?}");
}

/// The gap above, closed without the fence: the engine writes only the
/// lifetime that ends before the successor's takeover can come
/// (`LeaseTimes::lifetime_at`), counted from the renewal's send.
#[test]
fn a_late_answer_then_a_kill_is_safe() {
    let o = run("default, delay and kill", &late_answer_then_kill());
    if let Some(t) = o.trace(ONE_SERVES) {
        println!("--- late answer then kill: {ONE_SERVES}\n{t}");
    }
    assert_eq!(o.violations(), Vec::<&str>::new(), "{o:?}");
}

/// What vipd did before the model found it: a whole lifetime written at a
/// late answer. The checker finds the overlap.
#[test]
fn seeded_full_lifetime_at_a_late_answer_is_found() {
    let mut buggy = late_answer_then_kill();
    buggy.bug = Some(Bug::FullLifetimeAtLateAnswer);
    let o = run("full lifetime at a late answer", &buggy);
    counterexample("full lifetime at a late answer", &o, ONE_SERVES);
}

/// The same pause between the engine's lease check and its lifetime write
/// as `a_pause_between_the_lease_check_and_the_lifetime_write`, stated as
/// what must hold for the engine as coded (an await between its check and
/// its write), with the fence pinned and the fenced takeover at the default
/// margin.
#[test]
fn the_engine_as_coded_today() {
    let mut c = fenced(Config::default_rule(only("p", 1)));
    c.faults.targets = [true, false];
    let o = run("default, code's engine, pause, pinned fence", &c);
    assert_eq!(o.violations(), Vec::<&str>::new(), "{o:?}");
    assert!(o.trace(SOMETIMES_TAKEOVER).is_some(), "no takeover reached");
}

/// The settings the fenced takeover is checked at: the in-kernel fence at
/// the lease's end, pinned on both nodes (each leader says so), the
/// default margin, the engine as coded.
fn fenced(mut c: Config) -> Config {
    c.fence = Some(Duration::ZERO);
    c.pinned = [true, true];
    c.lease.margin = DEFAULT_MARGIN;
    c.engine_atomic = false;
    c
}

/// The fenced rule at the default lease: the successor waits lease + 2/11
/// of it + 25 ms (2389 ms, not 2600), and no fault of any kind, once in a
/// run, at any step, lets two nodes serve.
#[test]
fn fenced_takeover_default_one_fault_of_any_kind() {
    let mut c = fenced(Config::default_rule(Faults::all(1)));
    c.faults.lagging = false;
    c.faults.drift_ticks = 0;
    c.horizon = Duration::from_millis(3400);
    let o = run("fenced, default, one fault", &c);
    assert_eq!(o.violations(), Vec::<&str>::new(), "{o:?}");
    assert!(o.trace(SOMETIMES_TAKEOVER).is_some(), "no takeover reached");
}

/// The fenced rule with lagging replicas and clocks that drift (a tick
/// each way: 200 ms over the lease, within its 364 ms allowance), the
/// leader killed or cut off.
#[test]
fn fenced_takeover_default_lagging_replicas_and_drift() {
    let mut c = fenced(Config::default_rule(only("kz", 1)));
    c.faults.lagging = true;
    c.faults.drift_ticks = 1;
    c.faults.targets = [true, false];
    c.horizon = Duration::from_millis(3000);
    let o = run("fenced, default, lagging and drift", &c);
    assert_eq!(o.violations(), Vec::<&str>::new(), "{o:?}");
    assert!(o.trace(SOMETIMES_TAKEOVER).is_some(), "no takeover reached");
}

/// Short leases, as the bench runs them: at 200 ms the fenced wait is
/// 261 ms (the unfenced one 312.5 ms), at 100 ms 143 ms (210 ms); a killed
/// or paused leader's address outlives the takeover, its pinned fence does
/// not let it serve. At 200 ms the clocks may drift a tick (25 ms) each way
/// under a kill (both kinds of fault with drift are beyond this size).
#[test]
fn fenced_takeover_short_leases() {
    for (lease_ms, kinds, drift) in [(200, "k", 1), (200, "kp", 0), (100, "kp", 0)] {
        let mut c = fenced(Config::short_lease(lease_ms, only(kinds, 1)));
        c.horizon = Duration::from_millis(450);
        c.faults.drift_ticks = drift;
        c.faults.targets = [true, false];
        let what = format!("fenced, {lease_ms} ms lease, faults {kinds}, drift {drift}");
        let o = run(&what, &c);
        assert_eq!(o.violations(), Vec::<&str>::new(), "{what}: {o:?}");
        assert!(
            o.trace(SOMETIMES_TAKEOVER).is_some(),
            "{what}: no takeover reached"
        );
    }
}

/// A node whose fence dies with it, timed as if it outlived it: killed, it
/// serves by its address lifetime (at least 1 s) past the fenced takeover
/// (261 ms at a 200 ms lease). This is why the successor uses the fenced
/// rule only on the leader's word. (At the default lease a promptly
/// answered renewal's address, 1 s + 1.1 s of slack, leaves the kernel
/// before even the fenced takeover at 2389 ms: there it takes a late
/// answer before the kill, a larger check.)
#[test]
fn seeded_fence_claimed_without_pinning_is_found() {
    let mut c = fenced(Config::short_lease(200, only("k", 1)));
    c.pinned = [false, false];
    c.faults.targets = [true, false];
    c.horizon = Duration::from_millis(600);
    c.bug = Some(Bug::FenceClaimedWithoutPinning);
    let o = run("fence claimed without pinning, 200 ms, kill", &c);
    counterexample("fence claimed without pinning, 200 ms", &o, ONE_SERVES);
}

/// A mixed cluster: one node's fence is pinned, the other's is not (an
/// older vipd, or a node where pinning failed). The leader (A) is timed by
/// what it states: by the fenced rule when pinned, else by the rule that
/// waits for its own fencing, with the margin counted as 100 ms although
/// 25 ms is configured. Either way round, the leader killed or paused.
#[test]
fn fenced_takeover_mixed_cluster() {
    for pinned in [[true, false], [false, true]] {
        let mut c = fenced(Config::default_rule(only("kp", 1)));
        c.pinned = pinned;
        c.faults.targets = [true, false];
        c.horizon = Duration::from_millis(3000);
        let o = run(&format!("mixed {pinned:?}, default, kill or pause"), &c);
        assert_eq!(o.violations(), Vec::<&str>::new(), "{pinned:?}: {o:?}");
        assert!(
            o.trace(SOMETIMES_TAKEOVER).is_some(),
            "{pinned:?}: no takeover reached"
        );
    }
}

fn late_answer_then_kill() -> Config {
    let mut c = Config::default_rule(only("dk", 2));
    c.engine_atomic = true;
    c.faults.targets = [true, false];
    c
}
