//! The XDP half from userspace: load and attach the program, keep its maps
//! (watched VIPs, held VIPs; one set per address family) in step with the
//! engine, read its counters and its conflict events, and make sure native
//! answers leave (`mode`).

mod ethtool;
pub mod loader;
mod mode;

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    marker::PhantomData,
    mem::size_of,
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError, PerCpuHashMap, PerCpuValues, RingBuf},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp, xdp::XdpLinkId},
};
use tokio::io::unix::AsyncFd;
use tracing::{debug, error, info, instrument, warn};
use vipd_common::{
    ArpCounters, ConflictEvent, ConflictEvent6, HeldVip, MAP_CONFLICTS, MAP_CONFLICTS6,
    MAP_COUNTERS, MAP_COUNTERS6, MAP_HELD, MAP_HELD6, NdpCounters, PROGRAM_NAME, Vip6Key, VipKey,
    vip_key, vip_octets,
};

use crate::{config::XdpMode, vip::Vip};

pub use self::mode::{AttachedMode, Loss, ModeReason, NATIVE_TX_LOST, native_tx_lost};
use self::{
    ethtool::{Ethtool, XdpTxCounters},
    mode::{CONFIRM_AFTER, DeliveryWatch, TxSample, Verdict, first_choice},
};

/// How often natively attached interfaces are checked for lost answers.
/// Two periods bound the detection (an error counted just after a look is
/// seen at the next one), so a fallback happens well within a second.
pub const DELIVERY_CHECK_EVERY: Duration = Duration::from_millis(250);

/// How often an interface whose lost answers show only as frames taken but
/// not sent (veth) is checked. Its own other frames leaving in the same
/// period hide a loss for that period, so periods are short there.
pub const STUCK_CHECK_EVERY: Duration = Duration::from_millis(50);

/// Why the XDP half could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("loading the embedded XDP object failed")]
    Load(#[source] aya::EbpfError),
    #[error("the XDP object has no map {name}")]
    MissingMap { name: &'static str },
    #[error("map {name} of the XDP object has an unexpected type")]
    MapType {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("the XDP object has no XDP program {PROGRAM_NAME}")]
    MissingProgram(#[source] Option<ProgramError>),
    #[error("the kernel refused XDP program {PROGRAM_NAME}")]
    LoadProgram(#[source] ProgramError),
    #[error("attaching XDP to {ifname} in {mode:?} mode failed")]
    Attach {
        ifname: String,
        mode: AttachedMode,
        #[source]
        source: ProgramError,
    },
    #[error("attaching XDP to {ifname} failed in native mode ({native}) and in generic mode")]
    AttachAuto {
        ifname: String,
        native: Box<ProgramError>,
        #[source]
        generic: Box<ProgramError>,
    },
    #[error("not attaching XDP to {ifname}")]
    InterfaceTaken {
        ifname: String,
        #[source]
        source: crate::instance::InstanceError,
    },
    #[error("XDP is not attached to {ifname}")]
    NotAttached { ifname: String },
    #[error("detaching XDP from {ifname} failed")]
    Detach {
        ifname: String,
        #[source]
        source: ProgramError,
    },
    #[error("reading map {map} failed")]
    MapRead {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("updating VIP {vip} in map {map} failed")]
    MapUpdate {
        map: &'static str,
        vip: Vip,
        #[source]
        source: MapError,
    },
    #[error("updating IPv6 VIP {vip} in map {map} failed")]
    MapUpdate6 {
        map: &'static str,
        vip: Ipv6Addr,
        #[source]
        source: MapError,
    },
    #[error("map {map} holds {addr}, which is not a valid VIP")]
    InvalidKey { map: &'static str, addr: Ipv4Addr },
    #[error("counting the possible CPUs failed ({what})")]
    Cpus {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the conflict ring buffer {map} was already taken")]
    ConflictsTaken { map: &'static str },
    #[error("registering ring buffer {map} with the async runtime failed")]
    ConflictsFd {
        map: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("BPF_PROG_TEST_RUN of {PROGRAM_NAME} failed (frame of {len} bytes)")]
    TestRun {
        len: usize,
        #[source]
        source: ProgramError,
    },
}

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
struct Attachment {
    mode: AttachedMode,
    link: XdpLinkId,
    setting: XdpMode,
    driver: Option<String>,
    reason: ModeReason,
    ifindex: u32,
    /// Native attachments only: the check that answers leave.
    watch: Option<NativeWatch>,
}

struct NativeWatch {
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

/// The loaded XDP program, its attachments and its maps.
///
/// Dropping it detaches the program from every interface: attachments are
/// bpf links owned by this process, never pinned, so a dead agent answers
/// no ARP (R11).
pub struct XdpProgram {
    /// Owns the program and its bpf links: dropping it detaches everywhere.
    ebpf: Ebpf,
    /// VIP_COUNTERS, HELD_VIPS and the IPv4 conflicts.
    v4: FamilyMaps<V4>,
    /// VIP_COUNTERS6, HELD_VIPS6 and the IPv6 conflicts.
    v6: FamilyMaps<V6>,
    attachments: BTreeMap<String, Attachment>,
    /// Interfaces where native answers were lost: generic from then on,
    /// also when attached again, until vipd restarts.
    fallen_back: BTreeMap<String, ModeReason>,
    /// Asks drivers for their name and counters (`None`: no socket).
    ethtool: Option<Ethtool>,
    /// Origin of the delivery samples' times.
    started: Instant,
    /// The instance this program serves (`None`: no claims are taken, as
    /// in tests of the program alone).
    instance: Option<crate::instance::Instance>,
    /// The interfaces claimed for `instance` on this host: one instance's
    /// program per interface.
    claims: BTreeMap<String, crate::instance::Claim>,
}

impl std::fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpProgram")
            .field("attached", &self.attached())
            .finish_non_exhaustive()
    }
}

/// `bpf_map_update_elem` flag: create only, never overwrite.
const BPF_NOEXIST: u64 = 1;

/// The eBPF object built by `build.rs` from `vipd-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vipd"));

impl XdpProgram {
    /// Loads the embedded object (raises RLIMIT_MEMLOCK first for old
    /// kernels; harmless on new ones). Does not attach.
    #[instrument(name = "xdp_load")]
    pub fn load() -> Result<Self, XdpError> {
        raise_memlock_limit();
        // Not `Ebpf::load`: in aya 0.14 it parses the kernel's BTF twice.
        // No kernel BTF at all: the program reads no kernel types (no
        // CO-RE), and parsing /sys/kernel/btf/vmlinux (5.5 MB) is costly:
        // `loader` builds the loader where it cannot see that file (with
        // `Ebpf::load` vipd peaked at 41.7 MiB RSS, with the ordinary
        // `EbpfLoader::new` at 25 MiB, without the parse at about 9.5 MiB;
        // docs/BENCHMARKS.md, engine).
        let (mut loader, kernel_btf) = loader::loader();
        debug!(?kernel_btf, "XDP loader built");
        let mut ebpf = loader.btf(None).load(OBJECT).map_err(XdpError::Load)?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(XdpError::MissingProgram(None))?
            .try_into()
            .map_err(|e| XdpError::MissingProgram(Some(e)))?;
        program.load().map_err(XdpError::LoadProgram)?;

        let v4 = FamilyMaps::take(&mut ebpf)?;
        let v6 = FamilyMaps::take(&mut ebpf)?;
        debug!("XDP program loaded");
        Ok(XdpProgram {
            ebpf,
            v4,
            v6,
            attachments: BTreeMap::new(),
            fallen_back: BTreeMap::new(),
            ethtool: Ethtool::new()
                .inspect_err(|e| {
                    warn!(error = %e, "no socket for ethtool: XDP mode chosen without knowing drivers, native answers not checked");
                })
                .ok(),
            started: Instant::now(),
            instance: None,
            claims: BTreeMap::new(),
        })
    }

    /// From now on, every interface this program attaches to is claimed for
    /// `instance` first: an interface another instance on the host serves
    /// is refused ([`XdpError::InterfaceTaken`]).
    pub fn serve_as(&mut self, instance: crate::instance::Instance) {
        self.instance = Some(instance);
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, XdpError> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(XdpError::MissingProgram(None))?
            .try_into()
            .map_err(|e| XdpError::MissingProgram(Some(e)))
    }

    fn program(&self) -> Result<&Xdp, XdpError> {
        self.ebpf
            .program(PROGRAM_NAME)
            .ok_or(XdpError::MissingProgram(None))?
            .try_into()
            .map_err(|e| XdpError::MissingProgram(Some(e)))
    }

    /// Attaches to `ifname`; already attached returns the existing mode.
    ///
    /// [`XdpMode::Auto`] attaches natively unless the driver is one whose
    /// native XDP_TX frames are lost ([`NATIVE_TX_LOST`], veth), and falls
    /// back to generic when the driver refuses native mode. `Native` and
    /// `Generic` force the first mode. Wherever native answers are later
    /// seen lost ([`XdpProgram::check_delivery`]) the interface moves to
    /// generic, forced or not, and stays there.
    /// The attachment is a bpf link owned by this process (no pinning): when
    /// vipd exits or is killed, the kernel detaches the program.
    #[instrument(skip(self))]
    pub fn attach(&mut self, ifname: &str, mode: XdpMode) -> Result<AttachedMode, XdpError> {
        if let Some(existing) = self.attachments.get(ifname) {
            return Ok(existing.mode);
        }
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

    /// The driver of `ifname`, if the kernel tells.
    fn driver(&self, ifname: &str) -> Option<String> {
        let ethtool = self.ethtool.as_ref()?;
        ethtool
            .driver(ifname)
            .inspect_err(|e| debug!(ifname, error = %e, "cannot read the driver's name"))
            .ok()
            .filter(|d| !d.is_empty())
    }

    /// The baseline for checking that native answers leave `ifname`;
    /// `None` when the driver shows no counter to check.
    fn start_watch(&self, ifname: &str, driver: Option<&str>, ifindex: u32) -> Option<NativeWatch> {
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
    pub fn check_delivery(&mut self) -> bool {
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
        let detached = self.program_mut().and_then(|p| {
            p.detach(att.link).map_err(|source| XdpError::Detach {
                ifname: ifname.to_string(),
                source,
            })
        });
        if let Err(e) = detached {
            // aya has dropped the link either way; the next reconcile pass
            // attaches again (generic), and reports it if the kernel refuses.
            error!(ifname, error = %e, "cannot detach the native XDP program");
            return;
        }
        match self.attach_in(ifname, AttachedMode::Generic) {
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
    pub fn next_delivery_check(&self) -> Option<Duration> {
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
        self.program_mut()?
            .detach(att.link)
            .map_err(|source| XdpError::Detach {
                ifname: ifname.to_string(),
                source,
            })?;
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

    /// Makes VIP_COUNTERS hold exactly these VIPs: zeroed per-CPU counters
    /// for new ones, existing counters kept, VIPs no longer watched deleted.
    #[instrument(skip_all, fields(count = vips.len()))]
    pub fn set_watched(&mut self, vips: &BTreeSet<Vip>) -> Result<(), XdpError> {
        self.v4.set_watched(vips)
    }

    /// Makes HELD_VIPS hold exactly these entries (VIP -> ifindex + MAC).
    /// The XDP program answers ARP for held VIPs only.
    #[instrument(skip_all, fields(count = held.len()))]
    pub fn set_held(&mut self, held: &BTreeMap<Vip, HeldVip>) -> Result<(), XdpError> {
        self.v4.set_held(held)
    }

    /// Empties HELD_VIPS and HELD_VIPS6 (called before VIPs are removed, on
    /// step-down and on shutdown): nothing is answered in XDP afterwards,
    /// for either family.
    #[instrument(skip_all)]
    pub fn clear_held(&mut self) -> Result<(), XdpError> {
        // Both, even when one fails: the first error is returned.
        let v4 = self.set_held(&BTreeMap::new());
        let v6 = self.set_held6(&BTreeMap::new());
        v4.and(v6)
    }

    /// Counters of every watched VIP, summed over CPUs.
    pub fn counters(&self) -> Result<BTreeMap<Vip, ArpCounters>, XdpError> {
        self.v4.counters()
    }

    /// Makes VIP_COUNTERS6 hold exactly these IPv6 VIPs, as
    /// [`XdpProgram::set_watched`] does for IPv4: zeroed per-CPU counters
    /// for new ones, existing counters kept, VIPs no longer watched deleted.
    /// The caller passes validated VIPs; the program never counts a
    /// multicast target anyway.
    #[instrument(skip_all, fields(count = vips.len()))]
    pub fn set_watched6(&mut self, vips: &BTreeSet<Ipv6Addr>) -> Result<(), XdpError> {
        self.v6.set_watched(vips)
    }

    /// Makes HELD_VIPS6 hold exactly these entries (IPv6 VIP -> ifindex,
    /// MAC, VLAN, lease end), as [`XdpProgram::set_held`] does for IPv4.
    /// The program answers Neighbor Solicitations for held VIPs only, and
    /// only before `expires_ns`.
    #[instrument(skip_all, fields(count = held.len()))]
    pub fn set_held6(&mut self, held: &BTreeMap<Ipv6Addr, HeldVip>) -> Result<(), XdpError> {
        self.v6.set_held(held)
    }

    /// NDP counters of every watched IPv6 VIP, summed over CPUs (fields as
    /// [`NdpCounters`] documents).
    pub fn counters6(&self) -> Result<BTreeMap<Ipv6Addr, NdpCounters>, XdpError> {
        self.v6.counters()
    }

    /// Takes the IPv6 conflict ring buffer out as an async reader (callable
    /// once), as [`XdpProgram::take_conflicts`] does for IPv4.
    pub fn take_conflicts6(&mut self) -> Result<ConflictReader6, XdpError> {
        self.v6.take_conflicts()
    }

    /// Takes the conflict ring buffer out as an async reader (callable once).
    /// Call it inside a tokio runtime with IO enabled (it panics otherwise).
    pub fn take_conflicts(&mut self) -> Result<ConflictReader, XdpError> {
        self.v4.take_conflicts()
    }

    /// Runs the program once on `frame` with BPF_PROG_TEST_RUN and returns
    /// (XDP action, frame out). A non-zero `ingress_ifindex` is handed to
    /// the program in its `xdp_md`; the kernel accepts it only for an
    /// interface of the caller's network namespace. The kernel refuses
    /// frames shorter than an Ethernet header (14 bytes) with EINVAL.
    pub fn test_run(&self, frame: &[u8], ingress_ifindex: u32) -> Result<(u32, Vec<u8>), XdpError> {
        let err = |source| XdpError::TestRun {
            len: frame.len(),
            source,
        };
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex }: the kernel wants data = 0 and
        // data_end = the frame's length.
        // Frames past 4 GiB cannot exist; the kernel refuses anything
        // above a page anyway.
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let md: [u32; 6] = [0, len, 0, ingress_ifindex, 0, 0];
        let mut ctx = [0u8; 6 * size_of::<u32>()];
        for (chunk, field) in ctx.chunks_exact_mut(4).zip(md) {
            chunk.copy_from_slice(&field.to_ne_bytes());
        }
        // Room for growth: the program grows a Neighbor Solicitation
        // without options (24 bytes) into its answer (32 bytes).
        let mut out = vec![0u8; frame.len() + 256];
        let result = self
            .program()?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .map_err(err)?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
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
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What differs between the IPv4 and the IPv6 maps: the VIP's type, the
/// key the program looks it up by, the maps' names and the protocol the
/// program answers. The code that keeps the maps in step is the same for both.
trait Family {
    type Vip: Copy + Ord + std::fmt::Display;
    type Key: aya::Pod + Ord;
    type Event: aya::Pod;
    const COUNTERS: &'static str;
    const HELD: &'static str;
    const CONFLICTS: &'static str;
    /// What the program answers for a held VIP, as the logs name it.
    const ANSWERS: &'static str;
    fn key(vip: &Self::Vip) -> Self::Key;
    /// The VIP stored under `key` in map `map`.
    fn vip(map: &'static str, key: Self::Key) -> Result<Self::Vip, XdpError>;
    /// Updating `vip` in map `map` failed.
    fn update_error(map: &'static str, vip: Self::Vip, source: MapError) -> XdpError;
}

/// IPv4: ARP, keys in network byte order ([`vip_key`]).
struct V4;

impl Family for V4 {
    type Vip = Vip;
    type Key = VipKey;
    type Event = ConflictEvent;
    const COUNTERS: &'static str = MAP_COUNTERS;
    const HELD: &'static str = MAP_HELD;
    const CONFLICTS: &'static str = MAP_CONFLICTS;
    const ANSWERS: &'static str = "ARP";
    fn key(vip: &Vip) -> VipKey {
        vip_key(vip.octets())
    }
    fn vip(map: &'static str, key: VipKey) -> Result<Vip, XdpError> {
        key_to_vip(map, key)
    }
    fn update_error(map: &'static str, vip: Vip, source: MapError) -> XdpError {
        XdpError::MapUpdate { map, vip, source }
    }
}

/// IPv6: Neighbor Discovery, keys are the address's octets.
struct V6;

impl Family for V6 {
    type Vip = Ipv6Addr;
    type Key = Vip6Key;
    type Event = ConflictEvent6;
    const COUNTERS: &'static str = MAP_COUNTERS6;
    const HELD: &'static str = MAP_HELD6;
    const CONFLICTS: &'static str = MAP_CONFLICTS6;
    const ANSWERS: &'static str = "NDP";
    fn key(vip: &Ipv6Addr) -> Vip6Key {
        vip.octets()
    }
    fn vip(_map: &'static str, key: Vip6Key) -> Result<Ipv6Addr, XdpError> {
        Ok(Ipv6Addr::from(key))
    }
    fn update_error(map: &'static str, vip: Ipv6Addr, source: MapError) -> XdpError {
        XdpError::MapUpdate6 { map, vip, source }
    }
}

/// One family's maps, and what vipd last put in its held map.
struct FamilyMaps<F: Family> {
    counters: PerCpuHashMap<MapData, F::Key, ArpCounters>,
    held: HashMap<MapData, F::Key, HeldVip>,
    /// `None` once taken out as a [`ConflictReader`].
    conflicts: Option<RingBuf<MapData>>,
    /// What the held map holds, to count answers per interface.
    held_now: BTreeMap<F::Vip, HeldVip>,
}

impl<F: Family> FamilyMaps<F> {
    fn take(ebpf: &mut Ebpf) -> Result<Self, XdpError> {
        Ok(FamilyMaps {
            counters: take_typed(ebpf, F::COUNTERS, PerCpuHashMap::try_from)?,
            held: take_typed(ebpf, F::HELD, HashMap::try_from)?,
            conflicts: Some(take_typed(ebpf, F::CONFLICTS, RingBuf::try_from)?),
            held_now: BTreeMap::new(),
        })
    }

    /// The counters map holds exactly `vips`: zeroed per-CPU counters for
    /// new ones, existing counters kept, VIPs no longer watched deleted.
    fn set_watched(&mut self, vips: &BTreeSet<F::Vip>) -> Result<(), XdpError> {
        let present: BTreeSet<F::Key> =
            self.counters
                .keys()
                .collect::<Result<_, _>>()
                .map_err(|source| XdpError::MapRead {
                    map: F::COUNTERS,
                    source,
                })?;
        for key in &present {
            let vip = F::vip(F::COUNTERS, *key)?;
            if !vips.contains(&vip) {
                self.counters
                    .remove(key)
                    .map_err(|source| F::update_error(F::COUNTERS, vip, source))?;
                debug!(vip = %vip, "VIP no longer watched");
            }
        }
        let new: Vec<F::Vip> = vips
            .iter()
            .filter(|vip| !present.contains(&F::key(vip)))
            .copied()
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let cpus =
            aya::util::nr_cpus().map_err(|(what, source)| XdpError::Cpus { what, source })?;
        for vip in new {
            let zeroed =
                PerCpuValues::try_from(vec![ArpCounters::default(); cpus]).map_err(|source| {
                    XdpError::Cpus {
                        what: "building per-CPU values",
                        source,
                    }
                })?;
            // BPF_NOEXIST: never zero counters that appeared meanwhile.
            self.counters
                .insert(F::key(&vip), zeroed, BPF_NOEXIST)
                .map_err(|source| F::update_error(F::COUNTERS, vip, source))?;
            debug!(vip = %vip, "VIP watched");
        }
        Ok(())
    }

    /// The held map holds exactly `held`.
    fn set_held(&mut self, held: &BTreeMap<F::Vip, HeldVip>) -> Result<(), XdpError> {
        let present: Vec<F::Key> =
            self.held
                .keys()
                .collect::<Result<_, _>>()
                .map_err(|source| XdpError::MapRead {
                    map: F::HELD,
                    source,
                })?;
        // Remove first: a released VIP must stop being answered before
        // anything else changes.
        for key in present {
            let vip = F::vip(F::HELD, key)?;
            if held.contains_key(&vip) {
                continue;
            }
            match self.held.remove(&key) {
                // Gone already: what we wanted.
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(F::update_error(F::HELD, vip, source)),
            }
            self.held_now.remove(&vip);
            debug!(vip = %vip, "XDP no longer answers {} for VIP", F::ANSWERS);
        }
        for (vip, entry) in held {
            let key = F::key(vip);
            if self.held.get(&key, 0).ok().as_ref() == Some(entry) {
                continue;
            }
            self.held
                .insert(key, entry, 0)
                .map_err(|source| F::update_error(F::HELD, *vip, source))?;
            debug!(vip = %vip, ifindex = entry.ifindex, "XDP answers {} for VIP", F::ANSWERS);
        }
        self.held_now = held.clone();
        Ok(())
    }

    /// Counters of every watched VIP, summed over CPUs.
    fn counters(&self) -> Result<BTreeMap<F::Vip, ArpCounters>, XdpError> {
        let mut out = BTreeMap::new();
        for entry in self.counters.iter() {
            let (key, values) = match entry {
                Ok(entry) => entry,
                // Deleted between listing and reading: not watched any more.
                Err(MapError::KeyNotFound) => continue,
                Err(source) => {
                    return Err(XdpError::MapRead {
                        map: F::COUNTERS,
                        source,
                    });
                }
            };
            let mut sum = ArpCounters::default();
            for cpu in values.iter() {
                sum.accumulate(cpu);
            }
            out.insert(F::vip(F::COUNTERS, key)?, sum);
        }
        Ok(out)
    }

    /// The program's answers (XDP_TX) so far for the VIPs held on `ifindex`.
    fn answers_on(&self, ifindex: u32) -> u64 {
        self.held_now
            .iter()
            .filter(|(_, h)| h.ifindex == ifindex)
            .filter_map(|(vip, _)| self.counters.get(&F::key(vip), 0).ok())
            .map(|values| values.iter().map(|c| c.xdp_replies).sum::<u64>())
            .sum()
    }

    /// The conflict ring buffer as an async reader (callable once). Call it
    /// inside a tokio runtime with IO enabled (it panics otherwise).
    fn take_conflicts(&mut self) -> Result<ConflictReader<F::Event>, XdpError> {
        let ring = self
            .conflicts
            .take()
            .ok_or(XdpError::ConflictsTaken { map: F::CONFLICTS })?;
        ConflictReader::new(ring, F::CONFLICTS)
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, XdpError> {
    ebpf.take_map(name).ok_or(XdpError::MissingMap { name })
}

/// Takes map `name` out of the object as the type `typed` makes of it.
fn take_typed<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    typed: impl FnOnce(aya::maps::Map) -> Result<T, MapError>,
) -> Result<T, XdpError> {
    typed(take_map(ebpf, name)?).map_err(|source| XdpError::MapType { name, source })
}

fn key_to_vip(map: &'static str, key: VipKey) -> Result<Vip, XdpError> {
    let addr = Ipv4Addr::from(vip_octets(key));
    Vip::new(addr).map_err(|_| XdpError::InvalidKey { map, addr })
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones use
/// memory cgroups and ignore it, so a failure here is only worth a note.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid, initialised struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) };
    if rc != 0 {
        debug!(error = %io::Error::last_os_error(), "could not raise RLIMIT_MEMLOCK");
    }
}

/// Foreign claims of held VIPs, as the XDP program reports them: IPv4
/// ([`ConflictEvent`], from [`XdpProgram::take_conflicts`]) or IPv6
/// ([`ConflictEvent6`], from [`XdpProgram::take_conflicts6`]).
pub struct ConflictReader<E = ConflictEvent> {
    fd: AsyncFd<RingBuf<MapData>>,
    map: &'static str,
    event: PhantomData<E>,
}

/// The reader of IPv6 conflict events.
pub type ConflictReader6 = ConflictReader<ConflictEvent6>;

impl<E: aya::Pod> ConflictReader<E> {
    /// Registers `ring` (map `map`) with the async runtime: call it inside
    /// a tokio runtime with IO enabled (it panics otherwise).
    fn new(ring: RingBuf<MapData>, map: &'static str) -> Result<Self, XdpError> {
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged,
        // for as long as it lives, and the AsyncFd owns the RingBuf.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| XdpError::ConflictsFd {
                map,
                source: e.into(),
            })?;
        Ok(ConflictReader {
            fd,
            map,
            event: PhantomData,
        })
    }

    /// Waits for the next conflict event. Returns `None` only when the ring
    /// buffer can no longer be polled (the runtime is shutting down).
    pub async fn next(&mut self) -> Option<E> {
        loop {
            let mut guard = match self.fd.readable_mut().await {
                Ok(guard) => guard,
                Err(error) => {
                    warn!(%error, map = self.map, "polling the conflict ring buffer failed");
                    return None;
                }
            };
            if let Some(item) = guard.get_inner_mut().next() {
                if item.len() < size_of::<E>() {
                    warn!(
                        len = item.len(),
                        map = self.map,
                        "short conflict event dropped"
                    );
                    continue;
                }
                // SAFETY: the item holds at least one E, a plain repr(C)
                // type valid for every bit pattern (aya::Pod);
                // read_unaligned makes no alignment assumption.
                let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<E>()) };
                return Some(event);
            }
            // Drained: wait for the kernel's next wake-up.
            guard.clear_ready();
        }
    }
}

impl<E> std::fmt::Debug for ConflictReader<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConflictReader")
            .field("map", &self.map)
            .finish_non_exhaustive()
    }
}
