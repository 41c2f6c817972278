//! The chaos run in CI: a fixed seed (so the faults are the same on every
//! run), vipd at its default lease settings, and the checker's verdicts; and
//! the checker's self-test, where a VIP added by hand to a second node of a
//! quiet cluster must count as a serving overlap.

use std::{collections::BTreeSet, sync::Mutex, time::Duration};

use vipd_tests::chaos::{self, Options, schedule::FaultKind};

/// One chaos lab at a time: two would share the two CPUs the timings
/// depend on.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_chaos_run_at_default_settings_never_serves_a_vip_twice_and_loses_no_configuration() {
    let _serial = serial();
    let mut o = Options::new(27, 3, Duration::from_secs(75));
    o.hint = "chaos-ci".into();
    let r = chaos::run(&o).unwrap_or_else(|e| panic!("chaos run could not run: {e:#}"));
    let text = r.text();
    eprintln!("{text}");
    // The run did what it claims: faults of many kinds, probes answered.
    let kinds: BTreeSet<FaultKind> = r.injected.keys().copied().collect();
    assert!(
        kinds.len() >= 6 && r.injected.values().sum::<usize>() >= 12,
        "too few faults to mean anything: {:?}\n{text}",
        r.injected
    );
    assert!(r.probe_rounds > 1000, "the probes hardly ran:\n{text}");
    assert!(r.overlaps.is_empty(), "serving overlap:\n{text}");
    assert!(r.config_lost.is_empty(), "configuration lost:\n{text}");
    assert!(r.passed(), "{text}");
}

#[test]
fn the_checker_counts_a_vip_added_by_hand_to_a_second_node_as_an_overlap() {
    let _serial = serial();
    let mut o = Options::new(28, 3, Duration::from_secs(20));
    o.hint = "chaos-self".into();
    o.overlap_by_hand = Some(Duration::from_secs(6));
    // No faults: the hand-added address is the only second server, for
    // all of its 3 s.
    o.faults = false;
    let r = chaos::run(&o).unwrap_or_else(|e| panic!("chaos run could not run: {e:#}"));
    let text = r.text();
    eprintln!("{text}");
    assert!(
        !r.overlaps.is_empty(),
        "a VIP on two nodes for 3 s went unseen:\n{text}"
    );
    assert!(
        r.overlaps
            .iter()
            .any(|ov| ov.vip.is_ipv4() && ov.duration() >= Duration::from_millis(2500)),
        "no overlap of the hand-added IPv4 VIP lasting its 3 s: {:?}",
        r.overlaps
    );
    assert!(!r.passed(), "the run passed despite the overlap:\n{text}");
    assert!(
        r.violations()
            .iter()
            .any(|v| v.starts_with("serving overlap")),
        "{text}"
    );
}
