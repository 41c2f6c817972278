//! Placement's protocol at the size `cargo test` runs: no two nodes serve a
//! service whatever crashes, lease run-outs, session expiries, lagging
//! replicas, moves and deposed assigners do; services do move; and each
//! seeded bug is found. Each check draws on a few kinds of faults, so that
//! it reaches deep enough: the bug checks on the fewest that show the bug.

use vipd_model::placement::{
    ONE_SERVES_EACH, PlacementBug, PlacementConfig, PlacementOutcome, SOMETIMES_MOVED,
    check_placement,
};

const MAX_STATES: usize = 6_000_000;

fn config(bug: Option<PlacementBug>, crashes: u8, elections: u8, moves: u8) -> PlacementConfig {
    PlacementConfig {
        crashes,
        elections,
        moves,
        ..PlacementConfig::new(bug)
    }
}

fn run(what: &str, c: &PlacementConfig, depth: usize) -> PlacementOutcome {
    let o = check_placement(c, depth, MAX_STATES);
    println!(
        "{what}: {} states, depth {}, complete {}, {:?}; violations: {:?}",
        o.states,
        o.depth,
        o.complete,
        o.elapsed,
        o.violations()
    );
    o
}

fn safe(what: &str, c: &PlacementConfig, depth: usize) {
    let o = run(what, c, depth);
    assert_eq!(o.violations(), Vec::<&str>::new(), "{:?}", o.found);
    let moved = o.trace(SOMETIMES_MOVED).expect("no service ever moved");
    println!("{moved}");
    // The fault budgets bound every run: the search ends before the depth
    // bound when it has seen every reachable state.
    assert!(
        o.complete && o.depth < depth,
        "{what}: not exhaustive ({} states, depth {})",
        o.states,
        o.depth
    );
}

/// A crash and restart, two leases running out, session expiries, a
/// reconnect to a lagging server: services move off dead leases, and a
/// restarted agent serves only what is assigned to its new lease.
#[test]
fn crashes_and_expiries_never_have_two_nodes_serve_a_service() {
    safe("crashes", &config(None, 1, 1, 0), 40);
}

/// A planned move, the assigner deposed and another elected while the old
/// one writes on from its stale view.
#[test]
fn moves_and_a_new_assigner_never_have_two_nodes_serve_a_service() {
    let mut c = config(None, 0, 2, 1);
    c.run_outs = 1;
    safe("moves and assigners", &c, 40);
}

/// Every kind at once (a crash, two run-outs, a move, a new assigner):
/// too many runs to see them all in a test, so every run of up to 9 steps.
#[test]
fn every_fault_at_once_never_has_two_nodes_serve_a_service_within_nine_steps() {
    let o = run("every fault", &config(None, 1, 2, 1), 9);
    assert_eq!(o.violations(), Vec::<&str>::new(), "{:?}", o.found);
    assert!(o.complete && o.depth >= 9, "{o:?}");
}

fn counterexample(what: &str, c: &PlacementConfig, depth: usize) {
    let o = run(what, c, depth);
    let t = o
        .trace(ONE_SERVES_EACH)
        .unwrap_or_else(|| panic!("{what}: no counterexample: {o:?}"));
    println!("--- {what}\n{t}");
}

#[test]
fn assignments_by_node_name_let_a_restarted_agent_serve_a_moved_service() {
    counterexample(
        "by node name",
        &config(Some(PlacementBug::ByNodeName), 0, 1, 0),
        9,
    );
}

#[test]
fn a_hand_over_written_before_stopping_is_found() {
    let c = config(Some(PlacementBug::HandOverBeforeStopping), 0, 1, 1);
    counterexample("hand over before stopping", &c, 6);
}

#[test]
fn unchecked_assigner_writes_are_found() {
    let mut c = config(Some(PlacementBug::UncheckedWrites), 0, 2, 0);
    c.run_outs = 1;
    c.reconnects = 0;
    counterexample("unchecked writes", &c, 12);
}
