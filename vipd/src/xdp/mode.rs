//! Which XDP mode an interface gets, and why; and the run-time check that
//! native answers really leave the interface. Pure: the ioctls that feed it
//! live in `ethtool`, the attaching in `XdpProgram`.

use std::{fmt, time::Duration};

use serde::Serialize;

use crate::config::XdpMode;

/// The mode an interface ended up attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachedMode {
    /// Driver mode: runs before the kernel allocates an skb.
    Native,
    /// Generic (skb) mode.
    Generic,
}

impl AttachedMode {
    pub(super) fn aya(self) -> aya::programs::XdpMode {
        match self {
            AttachedMode::Native => aya::programs::XdpMode::Driver,
            AttachedMode::Generic => aya::programs::XdpMode::Skb,
        }
    }
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
        })
    }
}

/// Drivers whose native XDP_TX frames do not reach the wire on their own,
/// with what happens to them. `auto` attaches these in generic mode.
///
/// Only drivers measured or known from their source belong here. Drivers
/// without native XDP at all (bridge, macvlan, ipvlan, 8021q VLANs, vxlan,
/// dummy) refuse a native attach, so `auto` gets generic there anyway.
pub(crate) const NATIVE_TX_LOST: &[(&str, &str)] = &[(
    "veth",
    "native XDP_TX does not deliver unless the peer runs an XDP program",
)];

/// What `auto` makes of a driver: `Some(why)` when native answers would be
/// lost there.
pub(crate) fn native_tx_lost(driver: &str) -> Option<&'static str> {
    NATIVE_TX_LOST
        .iter()
        .find(|(d, _)| *d == driver)
        .map(|(_, why)| *why)
}

/// The first mode to try on an interface, from the setting and the driver
/// (where vipd fell back before, the caller attaches generic instead).
pub(crate) fn first_choice(setting: XdpMode, driver: Option<&str>) -> (AttachedMode, ModeReason) {
    match setting {
        XdpMode::Native => (AttachedMode::Native, ModeReason::Configured),
        XdpMode::Generic => (AttachedMode::Generic, ModeReason::Configured),
        XdpMode::Auto => match driver.and_then(native_tx_lost) {
            Some(why) => (
                AttachedMode::Generic,
                ModeReason::DriverLosesNativeTx { why },
            ),
            None => (AttachedMode::Native, ModeReason::DriverNative),
        },
    }
}

/// Why an interface runs the mode it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ModeReason {
    /// `--xdp-mode native` or `generic`.
    Configured,
    /// `auto`, and the driver is not on [`NATIVE_TX_LOST`].
    DriverNative,
    /// `auto`, and the driver is on [`NATIVE_TX_LOST`].
    DriverLosesNativeTx { why: &'static str },
    /// `auto`, and the driver refused the native attach.
    NativeRefused { error: String },
    /// Native answers were lost on the way out; vipd moved to generic.
    Fallback { loss: Loss },
    /// A link pinned by an earlier run, kept in its mode.
    Adopted,
}

impl ModeReason {
    /// A stable code for scripts and metrics labels.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ModeReason::Configured => "configured",
            ModeReason::DriverNative => "driver_native",
            ModeReason::DriverLosesNativeTx { .. } => "driver_loses_native_tx",
            ModeReason::NativeRefused { .. } => "native_refused",
            ModeReason::Fallback { .. } => "fallback",
            ModeReason::Adopted => "adopted",
        }
    }

    /// The reason in the operator's words, for an interface with `driver`
    /// and the setting `setting`.
    pub(crate) fn describe(&self, setting: XdpMode, driver: Option<&str>) -> String {
        let drv = driver.unwrap_or("unknown");
        let text = match self {
            ModeReason::Configured => format!("set by --xdp-mode {}", setting_name(setting)),
            ModeReason::DriverNative => format!("auto: driver {drv}"),
            ModeReason::DriverLosesNativeTx { why } => format!("auto: driver {drv}: {why}"),
            ModeReason::NativeRefused { error } => {
                format!("auto: driver {drv} refused native XDP: {error}")
            }
            ModeReason::Fallback { loss } => format!("fallback from native: {loss}"),
            ModeReason::Adopted => "kept from the previous run (pinned link adopted)".into(),
        };
        // One line, whatever an error text holds.
        text.replace('\n', " ")
    }
}

fn setting_name(setting: XdpMode) -> &'static str {
    match setting {
        XdpMode::Auto => "auto",
        XdpMode::Native => "native",
        XdpMode::Generic => "generic",
    }
}

/// How native answers were seen to be lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loss {
    /// The driver's XDP_TX error counters grew by at least as many frames
    /// as the program answered on the interface.
    Dropped {
        errors: u64,
        answers: u64,
        window: Duration,
    },
    /// The driver took XDP_TX frames (veth: into the peer's queue) that
    /// never left: the interface's transmit count did not grow by as many.
    Stuck {
        accepted: u64,
        sent: u64,
        window: Duration,
    },
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loss::Dropped {
                errors,
                answers,
                window,
            } => write!(
                f,
                "{errors} XDP_TX errors for {answers} answers in {} ms",
                window.as_millis()
            ),
            Loss::Stuck {
                accepted,
                sent,
                window,
            } => write!(
                f,
                "{accepted} XDP_TX frames taken by the driver, {sent} frames sent in {} ms",
                window.as_millis()
            ),
        }
    }
}

/// One reading of an interface's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TxSample {
    /// Sum of the driver's XDP_TX error/drop counters (`None`: the driver
    /// has none).
    pub errors: Option<u64>,
    /// XDP_TX frames the driver took (veth's `xdp_tx`), when it counts them
    /// and its transmit count shows what left (see `sent`).
    pub accepted: Option<u64>,
    /// The interface's transmit packet count, where it includes the XDP_TX
    /// frames that left (veth: the peer's XDP receive count).
    pub sent: Option<u64>,
    /// When the sample was taken, from an arbitrary origin.
    pub at: Duration,
}

/// What one look at an interface found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing lost.
    Delivered,
    /// Frames the driver took are not all sent yet: look again shortly
    /// ([`CONFIRM_AFTER`]); still missing then, they are stuck.
    Confirm,
    /// Answers are lost.
    Lost(Loss),
}

/// How soon a [`Verdict::Confirm`] is looked at again. Frames a working
/// veth takes usually leave within microseconds.
pub(crate) const CONFIRM_AFTER: Duration = Duration::from_millis(20);

/// How long frames the driver took may stay out of the transmit count
/// before they count as stuck. Not one confirmation: with both CPUs of a
/// small machine saturated by a flood, the peer's receive (and so the
/// count) was seen to lag a single frame by more than 70 ms (`bench arp`),
/// and a working interface fell back to generic. Frames a veth really
/// loses stay lost, so the cost of waiting is only a later fallback.
pub(crate) const STUCK_AFTER: Duration = Duration::from_millis(250);

/// Watches one natively attached interface, sample by sample.
///
/// Two rules, each a loss that the kernel alone would not have:
/// - errors: the XDP_TX error counters grew, by at least the number of
///   answers the program gave there since the last look (`answers`, read
///   only when errors grew, because a congested but working ring drops
///   some answers, never all);
/// - stuck (veth): frames the driver took by one look are still not all in
///   the transmit count [`STUCK_AFTER`] later (looked at again every
///   [`CONFIRM_AFTER`] until then).
#[derive(Clone, Debug)]
pub(crate) struct DeliveryWatch {
    last: TxSample,
    /// The program's answer count at the last look at it.
    answers_seen: u64,
    /// A look that found taken frames not yet sent: (the look before, it).
    pending: Option<(TxSample, TxSample)>,
}

impl DeliveryWatch {
    /// A watch whose baseline is `first` and `answers` (program answers on
    /// the interface so far).
    pub(crate) fn new(first: TxSample, answers: u64) -> Self {
        DeliveryWatch {
            last: first,
            answers_seen: answers,
            pending: None,
        }
    }

    /// Whether the last look asked for a confirmation.
    pub(crate) fn confirming(&self) -> bool {
        self.pending.is_some()
    }

    /// Takes the next sample. `answers` is called only when the error
    /// counters grew; it returns the program's answer count on the
    /// interface.
    pub(crate) fn observe(&mut self, now: TxSample, answers: impl FnOnce() -> u64) -> Verdict {
        let prev = std::mem::replace(&mut self.last, now);
        let pending = self.pending.take();

        if let (Some(e0), Some(e1)) = (prev.errors, now.errors)
            && e1 > e0
        {
            let errors = e1 - e0;
            let total = answers();
            let answered = total.saturating_sub(self.answers_seen);
            self.answers_seen = total;
            if errors >= answered {
                return Verdict::Lost(Loss::Dropped {
                    errors,
                    answers: answered,
                    window: now.at.saturating_sub(prev.at),
                });
            }
        }

        if let Some((base, mark)) = pending
            && let Some((accepted, sent)) = taken_and_sent(&base, &mark, &now)
            && accepted > sent
        {
            if now.at.saturating_sub(mark.at) < STUCK_AFTER {
                self.pending = Some((base, mark));
                return Verdict::Confirm;
            }
            return Verdict::Lost(Loss::Stuck {
                accepted,
                sent,
                window: now.at.saturating_sub(base.at),
            });
        }
        match taken_and_sent(&prev, &now, &now) {
            Some((accepted, sent)) if accepted > sent => {
                self.pending = Some((prev, now));
                Verdict::Confirm
            }
            _ => Verdict::Delivered,
        }
    }
}

/// Frames the driver took from `base` to `mark`, and frames sent from
/// `base` to `until`; `None` without those counters or when they went back
/// (a new interface under the same name).
fn taken_and_sent(base: &TxSample, mark: &TxSample, until: &TxSample) -> Option<(u64, u64)> {
    let (a0, a1) = (base.accepted?, mark.accepted?);
    let (s0, s1) = (base.sent?, until.sent?);
    (a1 >= a0 && s1 >= s0).then(|| (a1 - a0, s1 - s0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ms: u64, errors: u64, accepted: u64, sent: u64) -> TxSample {
        TxSample {
            errors: Some(errors),
            accepted: Some(accepted),
            sent: Some(sent),
            at: Duration::from_millis(ms),
        }
    }

    #[test]
    fn auto_picks_generic_for_veth_and_native_elsewhere() {
        let (mode, why) = first_choice(XdpMode::Auto, Some("veth"));
        assert_eq!(mode, AttachedMode::Generic);
        assert_eq!(why.code(), "driver_loses_native_tx");
        assert_eq!(
            why.describe(XdpMode::Auto, Some("veth")),
            "auto: driver veth: native XDP_TX does not deliver unless the peer runs an XDP program"
        );
        for driver in [Some("mlx5_core"), Some("virtio_net"), None] {
            let (mode, why) = first_choice(XdpMode::Auto, driver);
            assert_eq!(
                (mode, why),
                (AttachedMode::Native, ModeReason::DriverNative)
            );
        }
    }

    #[test]
    fn a_setting_wins_over_the_driver() {
        for (setting, mode) in [
            (XdpMode::Native, AttachedMode::Native),
            (XdpMode::Generic, AttachedMode::Generic),
        ] {
            let (m, why) = first_choice(setting, Some("veth"));
            assert_eq!((m, &why), (mode, &ModeReason::Configured));
            assert_eq!(
                why.describe(setting, Some("veth")),
                format!("set by --xdp-mode {mode}")
            );
        }
    }

    #[test]
    fn every_lost_answer_is_a_loss() {
        // veth with nothing on the peer: one error per answer.
        let mut w = DeliveryWatch::new(s(0, 0, 0, 10), 0);
        assert_eq!(w.observe(s(250, 0, 0, 10), || 0), Verdict::Delivered);
        let loss = w.observe(s(500, 1, 0, 10), || 1);
        let Verdict::Lost(loss) = loss else {
            panic!("{loss:?}")
        };
        assert_eq!(
            loss,
            Loss::Dropped {
                errors: 1,
                answers: 1,
                window: Duration::from_millis(250)
            }
        );
        assert_eq!(loss.to_string(), "1 XDP_TX errors for 1 answers in 250 ms");
    }

    #[test]
    fn a_congested_ring_that_delivers_most_is_no_loss() {
        let mut w = DeliveryWatch::new(s(0, 0, 0, 0), 0);
        // 1000 answers, 400 dropped at a full ring, 600 taken and sent.
        assert_eq!(
            w.observe(s(250, 400, 600, 600), || 1000),
            Verdict::Delivered
        );
        assert_eq!(
            w.observe(s(500, 800, 1200, 1200), || 2000),
            Verdict::Delivered
        );
    }

    #[test]
    fn an_error_counted_after_its_answer_is_caught_one_look_later() {
        let mut w = DeliveryWatch::new(s(0, 0, 0, 0), 0);
        // No error: nothing is read from the program.
        assert_eq!(
            w.observe(s(250, 0, 0, 0), || panic!("not needed")),
            Verdict::Delivered
        );
        // Errors grow; 3 answers since the last look (one of them given
        // after the error counters were read).
        assert_eq!(w.observe(s(500, 2, 0, 0), || 3), Verdict::Delivered);
        // The third error shows now, no new answers: loss.
        assert!(matches!(
            w.observe(s(750, 3, 0, 0), || 3),
            Verdict::Lost(Loss::Dropped {
                errors: 1,
                answers: 0,
                ..
            })
        ));
    }

    #[test]
    fn frames_taken_but_never_sent_are_stuck() {
        // veth whose peer has GRO but no XDP: taken into the peer's queue,
        // never sent, no error.
        let mut w = DeliveryWatch::new(s(0, 0, 0, 50), 0);
        assert_eq!(w.observe(s(250, 0, 3, 50), || 0), Verdict::Confirm);
        assert!(w.confirming());
        // Still missing, but not yet for STUCK_AFTER: look again.
        for ms in [270, 290, 490] {
            assert_eq!(
                w.observe(s(ms, 0, 3, 50), || 0),
                Verdict::Confirm,
                "at {ms} ms"
            );
        }
        let verdict = w.observe(s(510, 0, 3, 50), || 0);
        assert_eq!(
            verdict,
            Verdict::Lost(Loss::Stuck {
                accepted: 3,
                sent: 0,
                window: Duration::from_millis(510)
            })
        );
    }

    #[test]
    fn a_frame_counted_late_under_a_flood_is_not_stuck() {
        // Seen in `bench arp`: one frame taken, the peer's count 70 ms
        // behind, then there.
        let mut w = DeliveryWatch::new(s(0, 0, 0, 50), 0);
        assert_eq!(w.observe(s(250, 0, 1, 50), || 0), Verdict::Confirm);
        assert_eq!(w.observe(s(322, 0, 1, 50), || 0), Verdict::Confirm);
        assert_eq!(w.observe(s(345, 0, 1, 51), || 0), Verdict::Delivered);
        assert!(!w.confirming());
    }

    #[test]
    fn frames_sent_a_moment_later_are_not_stuck() {
        let mut w = DeliveryWatch::new(s(0, 0, 0, 50), 0);
        // Taken just before a look, sent just after it (a flood).
        assert_eq!(w.observe(s(250, 0, 300, 200), || 0), Verdict::Confirm);
        assert_eq!(w.observe(s(270, 0, 330, 360), || 0), Verdict::Delivered);
        assert!(!w.confirming());
        assert_eq!(w.observe(s(520, 0, 600, 700), || 0), Verdict::Delivered);
    }

    #[test]
    fn counters_that_go_back_are_a_new_baseline() {
        // An interface re-created under the same name starts from zero.
        let mut w = DeliveryWatch::new(s(0, 5, 9, 100), 4);
        assert_eq!(w.observe(s(250, 0, 0, 0), || 0), Verdict::Delivered);
        assert_eq!(w.observe(s(500, 0, 0, 1), || 0), Verdict::Delivered);
    }

    #[test]
    fn drivers_without_counters_are_never_a_loss() {
        let none = |ms| TxSample {
            at: Duration::from_millis(ms),
            ..TxSample::default()
        };
        let mut w = DeliveryWatch::new(none(0), 0);
        for ms in [250, 500, 750] {
            assert_eq!(w.observe(none(ms), || 7), Verdict::Delivered);
        }
    }
}
