//! The XDP half from userspace: load the program, keep its maps (watched
//! VIPs, held VIPs; one set per address family, chosen here by the VIP's
//! family) in step with the engine, read its counters and its conflict
//! events. `attach` attaches it and makes sure native answers leave
//! (`mode`, `ethtool`); `maps` keeps the maps of one family; `conflicts`
//! reads the claims; `clock` is the program's clock.

mod adopt;
mod attach;
mod clock;
mod conflicts;
mod egress;
mod ethtool;
pub mod loader;
mod maps;
mod mode;
mod pins;

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    mem::size_of,
    net::{Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use aya::{
    Ebpf,
    maps::MapError,
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use tracing::{debug, info, instrument, warn};
use vipd_common::{ArpCounters, EGRESS_PROGRAM_NAME, HeldVip, PROGRAM_NAME};

use crate::vip::Vip;

use self::{
    attach::Attachment,
    ethtool::Ethtool,
    maps::{FamilyMaps, V4, V6},
};
pub(crate) use self::{attach::XdpAttachment, mode::ModeReason};
pub use self::{
    attach::error_chain,
    clock::program_ns,
    conflicts::{Conflict, ConflictReader},
    mode::AttachedMode,
    pins::{BpfDir, bpf_dir_for, default_bpf_dir, is_bpffs, remove_pinned},
};

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
    #[error("the XDP object has no egress program {EGRESS_PROGRAM_NAME}")]
    MissingEgress(#[source] Option<ProgramError>),
    #[error("the kernel refused egress program {EGRESS_PROGRAM_NAME}")]
    LoadEgress(#[source] ProgramError),
    #[error("attaching the egress fence (TCX) to {ifname} failed")]
    AttachEgress {
        ifname: String,
        #[source]
        source: ProgramError,
    },
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
    #[error("the bpf dir {} is not on a BPF file system (mount one: mount -t bpf bpf DIR)", dir.display())]
    NotBpffs { dir: std::path::PathBuf },
    #[error("cannot use the bpf dir {}", dir.display())]
    BpfDir {
        dir: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} holds a pinned fence of another maps layout (this vipd uses layout {want}): stop the vipd that made it and run vipctl cleanup, or remove the directory", dir.display())]
    OtherLayout { dir: std::path::PathBuf, want: u32 },
    #[error("pinning {} failed", path.display())]
    Pin {
        path: std::path::PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("adopting the pinned link {} failed: {reason}", path.display())]
    Adopt {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("BPF_PROG_TEST_RUN of {PROGRAM_NAME} failed (frame of {len} bytes)")]
    TestRun {
        len: usize,
        #[source]
        source: ProgramError,
    },
}

/// The loaded XDP program, its attachments and its maps.
///
/// Without a bpf dir, dropping it (or the process dying) detaches the
/// program from every interface. With one ([`XdpProgram::load_pinned`]),
/// the links and maps are pinned there: a killed agent's programs keep
/// fencing its VIPs at their lease end, and the next agent adopts them. A
/// graceful drop (not a panic) removes the pins, which detaches them.
pub struct XdpProgram {
    /// Owns the program and its bpf links: dropping it detaches everywhere.
    ebpf: Ebpf,
    /// VIP_COUNTERS, HELD_VIPS and the IPv4 conflicts.
    v4: FamilyMaps<V4>,
    /// VIP_COUNTERS6, HELD_VIPS6 and the IPv6 conflicts.
    v6: FamilyMaps<V6>,
    attachments: BTreeMap<String, Attachment>,
    /// The egress fence's links, by ifindex.
    egress_links: egress::EgressLinks,
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
    /// Where the links and maps are pinned (`None`: nowhere, they die with
    /// the process).
    pins: Option<BpfDir>,
    /// The held entries found in the pinned maps at start, until the
    /// engine takes them.
    adopted_held: BTreeMap<Vip, HeldVip>,
}

impl Drop for XdpProgram {
    fn drop(&mut self) {
        // A panic is a crash: the pinned fence must outlive it as it
        // outlives a kill.
        if std::thread::panicking() {
            return;
        }
        if let Some(dir) = &self.pins {
            dir.remove_all();
        }
    }
}

impl std::fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpProgram")
            .field("attached", &self.attached())
            .finish_non_exhaustive()
    }
}

/// The eBPF object built by `build.rs` from `vipd-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vipd"));

impl XdpProgram {
    /// Loads the embedded object (raises RLIMIT_MEMLOCK first for old
    /// kernels; harmless on new ones). Does not attach.
    pub fn load() -> Result<Self, XdpError> {
        Self::load_pinned(None)
    }

    /// Loads the embedded object with its maps pinned in `pins`: the
    /// entries of the maps an earlier vipd pinned there are copied into
    /// this program's maps, whose pins then replace theirs. The links are
    /// adopted by [`XdpProgram::adopt_pinned`]. Does not attach.
    #[instrument(name = "xdp_load", skip_all, fields(pinned = pins.is_some()))]
    pub fn load_pinned(pins: Option<BpfDir>) -> Result<Self, XdpError> {
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
        let egress: &mut SchedClassifier = ebpf
            .program_mut(EGRESS_PROGRAM_NAME)
            .ok_or(XdpError::MissingEgress(None))?
            .try_into()
            .map_err(|e| XdpError::MissingEgress(Some(e)))?;
        egress.load().map_err(XdpError::LoadEgress)?;

        let (v4, held4) = FamilyMaps::<V4>::take(&mut ebpf, pins.as_ref())?;
        let (v6, held6) = FamilyMaps::<V6>::take(&mut ebpf, pins.as_ref())?;
        let adopted_held: BTreeMap<Vip, HeldVip> = held4
            .into_iter()
            .chain(
                held6
                    .into_iter()
                    .filter_map(|(a, h)| Some((Vip::new_v6(a).ok()?, h))),
            )
            .collect();
        if let Some(dir) = &pins {
            info!(dir = %dir.dir().display(), adopted = adopted_held.len(), "XDP maps pinned");
        }
        debug!("XDP program loaded");
        Ok(XdpProgram {
            ebpf,
            v4,
            v6,
            attachments: BTreeMap::new(),
            egress_links: egress::EgressLinks::default(),
            fallen_back: BTreeMap::new(),
            ethtool: Ethtool::new()
                .inspect_err(|e| {
                    warn!(error = %e, "no socket for ethtool: XDP mode chosen without knowing drivers, native answers not checked");
                })
                .ok(),
            started: Instant::now(),
            instance: None,
            claims: BTreeMap::new(),
            pins,
            adopted_held,
        })
    }

    /// Whether this node's fence outlives the agent: the maps and every
    /// link (XDP and egress) are pinned, so a killed or frozen vipd's VIPs
    /// are still fenced at their lease end by the kernel alone.
    pub fn fence_outlives_agent(&self) -> bool {
        self.pins.is_some()
            && self.attachments.values().all(|a| a.pinned())
            && self.egress_links.all_pinned()
    }

    /// The pinned state's directory, if any.
    pub fn bpf_dir(&self) -> Option<&BpfDir> {
        self.pins.as_ref()
    }

    /// The held entries the pinned maps had at start (once; empty after):
    /// the engine keeps fencing them until their windows close.
    pub(crate) fn take_adopted_held(&mut self) -> BTreeMap<Vip, HeldVip> {
        std::mem::take(&mut self.adopted_held)
    }

    /// From now on, every interface this program attaches to is claimed for
    /// `instance` first: an interface another instance on the host serves
    /// is refused ([`XdpError::InterfaceTaken`]).
    pub(crate) fn serve_as(&mut self, instance: crate::instance::Instance) {
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

    /// Makes the counters maps hold exactly these VIPs (IPv4 in the ARP
    /// map, IPv6 in the NDP map): zeroed per-CPU counters for new ones,
    /// existing counters kept, VIPs no longer watched deleted. Both maps
    /// are written even when one fails; the first error is returned.
    #[instrument(skip_all, fields(count = vips.len()))]
    pub fn set_watched(&mut self, vips: &BTreeSet<Vip>) -> Result<(), XdpError> {
        let v4: BTreeSet<Vip> = vips.iter().filter(|v| v.v4().is_some()).copied().collect();
        let v6: BTreeSet<Ipv6Addr> = vips.iter().filter_map(|v| v.v6()).collect();
        let r4 = self.v4.set_watched(&v4);
        let r6 = self.v6.set_watched(&v6);
        r4.and(r6)
    }

    /// Makes the held maps hold exactly these entries (VIP -> ifindex, MAC,
    /// VLAN, lease end): IPv4 VIPs in the ARP map, IPv6 VIPs in the NDP
    /// map. The program answers ARP requests and Neighbor Solicitations
    /// for held VIPs only, and only before `lease_end_ns`; from then until
    /// `fence_end_ns` the programs fence the VIP. Both maps are
    /// written even when one fails; the first error is returned.
    #[instrument(skip_all, fields(count = held.len()))]
    pub fn set_held(&mut self, held: &BTreeMap<Vip, HeldVip>) -> Result<(), XdpError> {
        let v4: BTreeMap<Vip, HeldVip> = held
            .iter()
            .filter(|(v, _)| v.v4().is_some())
            .map(|(v, h)| (*v, *h))
            .collect();
        let v6: BTreeMap<Ipv6Addr, HeldVip> = held
            .iter()
            .filter_map(|(v, h)| Some((v.v6()?, *h)))
            .collect();
        let r4 = self.v4.set_held(&v4);
        let r6 = self.v6.set_held(&v6);
        r4.and(r6)
    }

    /// Writes one held entry (added or replaced), the others untouched: the
    /// fence of a VIP whose address is about to be written.
    pub fn put_held(&mut self, vip: Vip, entry: HeldVip) -> Result<(), XdpError> {
        match vip.v6() {
            Some(v6) => self.v6.put_held(v6, entry),
            None => self.v4.put_held(vip, entry),
        }
    }

    /// Empties both held maps: nothing is answered nor fenced in XDP
    /// afterwards, for either family.
    #[instrument(skip_all)]
    pub fn clear_held(&mut self) -> Result<(), XdpError> {
        self.set_held(&BTreeMap::new())
    }

    /// Counters of every watched VIP, summed over CPUs: ARP counters for
    /// IPv4 VIPs, NDP counters for IPv6 ones in the same fields (as
    /// [`vipd_common::NdpCounters`] documents). One family's map unreadable:
    /// the other's counters are still returned and the failure is logged;
    /// an error only when neither can be read.
    pub fn counters(&self) -> Result<BTreeMap<Vip, ArpCounters>, XdpError> {
        let v6 = self.v6.counters().map(|c| {
            c.into_iter()
                .filter_map(|(a, c)| Some((Vip::new_v6(a).ok()?, c)))
                .collect::<BTreeMap<_, _>>()
        });
        match (self.v4.counters(), v6) {
            (Ok(mut all), Ok(v6)) => {
                all.extend(v6);
                Ok(all)
            }
            (Ok(one), Err(e)) | (Err(e), Ok(one)) => {
                warn!(error = %e, "cannot read one family's XDP counters");
                Ok(one)
            }
            (Err(e), Err(_)) => Err(e),
        }
    }

    /// Takes the conflict ring buffers of both families out as one async
    /// reader (callable once). Call it inside a tokio runtime with IO
    /// enabled (it panics otherwise).
    pub fn take_conflicts(&mut self) -> Result<ConflictReader, XdpError> {
        let v4 = self.v4.take_conflicts()?;
        let v6 = self.v6.take_conflicts()?;
        Ok(ConflictReader::new(v4, v6))
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
