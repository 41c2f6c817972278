//! Attaching the program to interfaces in the mode their driver serves
//! (`mode` decides), and checking that native answers leave: where they
//! do not, the interface moves to generic mode for good.

use std::time::Duration;

use aya::programs::xdp::{XdpLink, XdpLinkId};
use tracing::{debug, error, info, instrument, warn};

use super::{
    XdpError, XdpProgram,
    ethtool::{self, XdpTxCounters},
    mode::{
        AttachedMode, CONFIRM_AFTER, DeliveryWatch, Loss, ModeReason, TxSample, Verdict,
        first_choice,
    },
    pins::HeldLink,
};
use crate::config::XdpMode;

/// How often natively attached interfaces are checked for lost answers.
/// Two periods bound the detection (an error counted just after a look is
/// seen at the next one), so a fallback happens well within a second.
pub(crate) const DELIVERY_CHECK_EVERY: Duration = Duration::from_millis(250);

/// How often an interface whose lost answers show only as frames taken but
/// not sent (veth) is checked. Its own other frames leaving in the same
/// period hide a loss for that period, so periods are short there.
pub(crate) const STUCK_CHECK_EVERY: Duration = Duration::from_millis(50);

/// One interface the program is attached to, as the status shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct XdpAttachment {
    pub interface: String,
    pub mode: AttachedMode,
    /// The driver as ethtool names it (`None` if it could not be read).
    pub driver: Option<String>,
    /// Why this mode, in words: `auto: driver veth: ...`.
    pub reason: String,
    /// Why this mode, as a stable code ([`ModeReason::code`]).
    pub reason_code: &'static str,
}

/// An attachment and what vipd knows about it.
pub(super) struct Attachment {
    pub(super) mode: AttachedMode,
    pub(super) link: HeldLink<XdpLink>,
    pub(super) setting: XdpMode,
    pub(super) driver: Option<String>,
    pub(super) reason: ModeReason,
    pub(super) ifindex: u32,
    /// Native attachments only: the check that answers leave.
    pub(super) watch: Option<NativeWatch>,
}

impl Attachment {
    pub(super) fn pinned(&self) -> bool {
        self.link.is_pinned()
    }
}

pub(super) struct NativeWatch {
    counters: XdpTxCounters,
    delivery: DeliveryWatch,
}

impl NativeWatch {
    /// When this interface wants its next look.
    fn next(&self) -> Duration {
        if self.delivery.confirming() {
            CONFIRM_AFTER
        } else if self.counters.counts_taken() {
            STUCK_CHECK_EVERY
        } else {
            DELIVERY_CHECK_EVERY
        }
    }
}

impl XdpProgram {
    /// Claims `ifname` for this instance (once): another instance on the
    /// host that holds it makes this fail.
    pub(super) fn claim(&mut self, ifname: &str) -> Result<(), XdpError> {
        if let Some(instance) = &self.instance
            && !self.claims.contains_key(ifname)
        {
            let claim =
                instance
                    .claim_interface(ifname)
                    .map_err(|source| XdpError::InterfaceTaken {
                        ifname: ifname.to_string(),
                        source,
                    })?;
            self.claims.insert(ifname.to_string(), claim);
        }
        Ok(())
    }

    /// Attaches to `ifname`; already attached returns the existing mode.
    ///
    /// [`XdpMode::Auto`] attaches natively unless the driver is one whose
    /// native XDP_TX frames are lost ([`super::NATIVE_TX_LOST`], veth), and falls
    /// back to generic when the driver refuses native mode. `Native` and
    /// `Generic` force the first mode. Wherever native answers are later
    /// seen lost ([`XdpProgram::check_delivery`]) the interface moves to
    /// generic, forced or not, and stays there.
    /// The attachment is a bpf link, pinned when there is a bpf dir (it
    /// then outlives the process), else owned by this process: when vipd
    /// exits or is killed, the kernel detaches the program.
    #[instrument(skip(self))]
    pub fn attach(&mut self, ifname: &str, mode: XdpMode) -> Result<AttachedMode, XdpError> {
        if let Some(existing) = self.attachments.get(ifname) {
            return Ok(existing.mode);
        }
        self.claim(ifname)?;
        let driver = self.driver(ifname);
        let (first, reason) = match self.fallen_back.get(ifname) {
            Some(reason) => (AttachedMode::Generic, reason.clone()),
            None => first_choice(mode, driver.as_deref()),
        };
        let (attached, reason, link) = match first {
            AttachedMode::Generic => (
                AttachedMode::Generic,
                reason,
                self.attach_in(ifname, AttachedMode::Generic)?,
            ),
            AttachedMode::Native => match self.attach_in(ifname, AttachedMode::Native) {
                Ok(link) => (AttachedMode::Native, reason, link),
                Err(XdpError::Attach { source: native, .. }) if mode == XdpMode::Auto => {
                    warn!(
                        ifname,
                        driver = driver.as_deref().unwrap_or("unknown"),
                        error = %native,
                        "native XDP refused, falling back to generic mode"
                    );
                    match self.attach_in(ifname, AttachedMode::Generic) {
                        Ok(link) => (
                            AttachedMode::Generic,
                            ModeReason::NativeRefused {
                                error: error_chain(&native),
                            },
                            link,
                        ),
                        Err(XdpError::Attach {
                            source: generic, ..
                        }) => {
                            return Err(XdpError::AttachAuto {
                                ifname: ifname.to_string(),
                                native: Box::new(native),
                                generic: Box::new(generic),
                            });
                        }
                        Err(other) => return Err(other),
                    }
                }
                Err(other) => return Err(other),
            },
        };
        let ifindex = if_index(ifname);
        let link = self.own_link(ifname, link, ifindex, attached)?;
        let watch = (attached == AttachedMode::Native)
            .then(|| self.start_watch(ifname, driver.as_deref(), ifindex))
            .flatten();
        let why = reason.describe(mode, driver.as_deref());
        info!(ifname, mode = %attached, driver = driver.as_deref().unwrap_or("unknown"),
              reason = %why, "XDP program attached");
        self.attachments.insert(
            ifname.to_string(),
            Attachment {
                mode: attached,
                link,
                setting: mode,
                driver,
                reason,
                ifindex,
                watch,
            },
        );
        Ok(attached)
    }

    /// Takes the link `id` out of the program: pinned when there is a bpf
    /// dir. A link that cannot be pinned is attached again, unpinned.
    fn own_link(
        &mut self,
        ifname: &str,
        id: XdpLinkId,
        ifindex: u32,
        mode: AttachedMode,
    ) -> Result<HeldLink<XdpLink>, XdpError> {
        let take_err = |source| XdpError::Attach {
            ifname: ifname.to_string(),
            mode,
            source,
        };
        let link = self.program_mut()?.take_link(id).map_err(take_err)?;
        let path = self.pins.as_ref().map(|d| d.xdp_link(ifindex, mode));
        match HeldLink::pin(link, path) {
            Ok(link) => Ok(link),
            Err(e) => {
                error!(ifname, error = %e, "cannot pin the XDP link: attached unpinned, the fence on {ifname} dies with vipd");
                let id = self.attach_in(ifname, mode)?;
                let link = self.program_mut()?.take_link(id).map_err(take_err)?;
                Ok(HeldLink::Process(link))
            }
        }
    }

    /// The driver of `ifname`, if the kernel tells.
    pub(super) fn driver(&self, ifname: &str) -> Option<String> {
        let ethtool = self.ethtool.as_ref()?;
        ethtool
            .driver(ifname)
            .inspect_err(|e| debug!(ifname, error = %e, "cannot read the driver's name"))
            .ok()
            .filter(|d| !d.is_empty())
    }

    /// The baseline for checking that native answers leave `ifname`;
    /// `None` when the driver shows no counter to check.
    pub(super) fn start_watch(
        &self,
        ifname: &str,
        driver: Option<&str>,
        ifindex: u32,
    ) -> Option<NativeWatch> {
        let ethtool = self.ethtool.as_ref()?;
        let names = ethtool
            .stat_names(ifname)
            .inspect_err(|e| debug!(ifname, error = %e, "cannot read the driver's statistics"))
            .ok()?;
        let counters = XdpTxCounters::pick(driver, &names);
        let first = self.sample(ifname, &counters)?;
        if first.errors.is_none() && first.accepted.is_none() {
            warn!(
                ifname,
                driver = driver.unwrap_or("unknown"),
                "the driver counts no XDP_TX errors: vipd cannot check that native answers leave"
            );
            return None;
        }
        let answers = self.v4.answers_on(ifindex) + self.v6.answers_on(ifindex);
        Some(NativeWatch {
            counters,
            delivery: DeliveryWatch::new(first, answers),
        })
    }

    /// One reading of `ifname`'s counters; `None` if the driver's
    /// statistics no longer match `counters` (read the names again).
    fn sample(&self, ifname: &str, counters: &XdpTxCounters) -> Option<TxSample> {
        let ethtool = self.ethtool.as_ref()?;
        let values = ethtool
            .stats(ifname)
            .inspect_err(|e| debug!(ifname, error = %e, "cannot read the driver's statistics"))
            .ok()?;
        if !counters.fits(&values) {
            return None;
        }
        let (errors, accepted) = counters.read(&values);
        // Read after the driver's counters: what they count as taken has
        // had the most time to show up as sent.
        let sent = accepted.and_then(|_| ethtool::tx_packets(ifname).ok());
        Some(TxSample {
            errors,
            accepted: accepted.filter(|_| sent.is_some()),
            sent,
            at: self.started.elapsed(),
        })
    }

    /// Checks every native attachment for lost answers (call it when
    /// [`XdpProgram::next_delivery_check`] says). Where answers are lost, logs an error
    /// naming the interface and its driver and re-attaches in generic mode,
    /// for good; if even that fails nothing is attached there and the
    /// kernel answers (as far as `arp_ignore` lets it). Returns whether any
    /// attachment changed.
    pub(crate) fn check_delivery(&mut self) -> bool {
        let mut lost = Vec::new();
        let names: Vec<String> = self
            .attachments
            .iter()
            .filter(|(_, a)| a.watch.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        for ifname in names {
            let Some(att) = self.attachments.get(&ifname) else {
                continue;
            };
            let Some(watch) = att.watch.as_ref() else {
                continue;
            };
            let (driver, ifindex) = (att.driver.clone(), att.ifindex);
            let sample = self.sample(&ifname, &watch.counters);
            let Some(sample) = sample else {
                // The statistics changed shape (queues added): new baseline.
                let fresh = self.start_watch(&ifname, driver.as_deref(), ifindex);
                if let Some(att) = self.attachments.get_mut(&ifname) {
                    att.watch = fresh;
                }
                continue;
            };
            let (v4, v6) = (&self.v4, &self.v6);
            let Some(att) = self.attachments.get_mut(&ifname) else {
                continue;
            };
            let Some(watch) = att.watch.as_mut() else {
                continue;
            };
            if let Verdict::Lost(loss) = watch
                .delivery
                .observe(sample, || v4.answers_on(ifindex) + v6.answers_on(ifindex))
            {
                lost.push((ifname, loss));
            }
        }
        let changed = !lost.is_empty();
        for (ifname, loss) in lost {
            self.fall_back(&ifname, loss);
        }
        changed
    }

    /// Native answers on `ifname` are lost: generic from now on.
    fn fall_back(&mut self, ifname: &str, loss: Loss) {
        let Some(att) = self.attachments.remove(ifname) else {
            return;
        };
        let driver = att.driver.clone().unwrap_or_else(|| "unknown".into());
        error!(
            ifname,
            driver = %driver,
            "native XDP answers do not leave {ifname} (driver {driver}): {loss}; re-attaching in generic mode"
        );
        let reason = ModeReason::Fallback { loss };
        self.fallen_back.insert(ifname.to_string(), reason.clone());
        att.link.release();
        let ifindex = att.ifindex;
        let attached = self
            .attach_in(ifname, AttachedMode::Generic)
            .and_then(|id| self.own_link(ifname, id, ifindex, AttachedMode::Generic));
        match attached {
            Ok(link) => {
                info!(ifname, mode = %AttachedMode::Generic, driver = %driver,
                      reason = %reason.describe(att.setting, att.driver.as_deref()),
                      "XDP program attached");
                self.attachments.insert(
                    ifname.to_string(),
                    Attachment {
                        mode: AttachedMode::Generic,
                        link,
                        reason,
                        watch: None,
                        ..att
                    },
                );
            }
            Err(e) => error!(
                ifname,
                driver = %driver,
                error = %e,
                "cannot attach XDP in generic mode after native answers were lost: nothing is attached to {ifname}, the kernel answers ARP there (if arp_ignore lets it)"
            ),
        }
    }

    /// When [`XdpProgram::check_delivery`] should run next, from now:
    /// `None` while no attachment is checked.
    pub(crate) fn next_delivery_check(&self) -> Option<Duration> {
        self.attachments
            .values()
            .filter_map(|a| a.watch.as_ref())
            .map(NativeWatch::next)
            .min()
    }

    fn attach_in(&mut self, ifname: &str, mode: AttachedMode) -> Result<XdpLinkId, XdpError> {
        self.program_mut()?
            .attach(ifname, mode.aya())
            .map_err(|source| XdpError::Attach {
                ifname: ifname.to_string(),
                mode,
                source,
            })
    }

    /// Detaches from `ifname`.
    #[instrument(skip(self))]
    pub fn detach(&mut self, ifname: &str) -> Result<(), XdpError> {
        let Some(att) = self.attachments.remove(ifname) else {
            return Err(XdpError::NotAttached {
                ifname: ifname.to_string(),
            });
        };
        att.link.release();
        info!(ifname, "XDP program detached");
        Ok(())
    }

    /// The interfaces the program is attached to, with their modes.
    pub fn attached(&self) -> Vec<(String, AttachedMode)> {
        self.attachments
            .iter()
            .map(|(ifname, a)| (ifname.clone(), a.mode))
            .collect()
    }

    /// The attachments with their drivers and the reason for their mode.
    pub fn attachments(&self) -> Vec<XdpAttachment> {
        self.attachments
            .iter()
            .map(|(ifname, a)| XdpAttachment {
                interface: ifname.clone(),
                mode: a.mode,
                driver: a.driver.clone(),
                reason: a.reason.describe(a.setting, a.driver.as_deref()),
                reason_code: a.reason.code(),
            })
            .collect()
    }
}

/// The interface index of `ifname`, 0 if there is none.
fn if_index(ifname: &str) -> u32 {
    std::ffi::CString::new(ifname)
        // SAFETY: a valid NUL-terminated string.
        .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) })
        .unwrap_or(0)
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
