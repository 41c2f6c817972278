//! The XDP half from userspace: load and attach the program, keep its maps
//! (watched VIPs, held VIPs) in step with the engine, read its counters and
//! its conflict events.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    mem::size_of,
    net::Ipv4Addr,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuHashMap, PerCpuValues, RingBuf},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp, xdp::XdpLinkId},
};
use tokio::io::unix::AsyncFd;
use tracing::{debug, info, instrument, warn};
use vipd_common::{
    ArpCounters, ConflictEvent, HeldVip, MAP_CONFLICTS, MAP_COUNTERS, MAP_HELD, PROGRAM_NAME,
    VipKey, vip_key, vip_octets,
};

use crate::{config::XdpMode, vip::Vip};

/// Why the XDP half could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
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
    #[error("map {map} holds {addr}, which is not a valid VIP")]
    InvalidKey { map: &'static str, addr: Ipv4Addr },
    #[error("counting the possible CPUs failed ({what})")]
    Cpus {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the conflict ring buffer {MAP_CONFLICTS} was already taken")]
    ConflictsTaken,
    #[error("registering ring buffer {MAP_CONFLICTS} with the async runtime failed")]
    ConflictsFd(#[source] io::Error),
    #[error("BPF_PROG_TEST_RUN of {PROGRAM_NAME} failed (frame of {len} bytes)")]
    TestRun {
        len: usize,
        #[source]
        source: ProgramError,
    },
}

/// The mode an interface ended up attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachedMode {
    /// Driver mode: runs before the kernel allocates an skb.
    Native,
    /// Generic (skb) mode.
    Generic,
}

impl AttachedMode {
    fn aya(self) -> aya::programs::XdpMode {
        match self {
            AttachedMode::Native => aya::programs::XdpMode::Driver,
            AttachedMode::Generic => aya::programs::XdpMode::Skb,
        }
    }
}

/// The loaded XDP program, its attachments and its maps.
///
/// Dropping it detaches the program from every interface: attachments are
/// bpf links owned by this process, never pinned, so a dead agent answers
/// no ARP (R11).
pub struct ArpOffload {
    /// Owns the program and its bpf links: dropping it detaches everywhere.
    ebpf: Ebpf,
    counters: PerCpuHashMap<MapData, VipKey, ArpCounters>,
    held: HashMap<MapData, VipKey, HeldVip>,
    conflicts: Option<RingBuf<MapData>>,
    attachments: BTreeMap<String, (AttachedMode, XdpLinkId)>,
}

impl std::fmt::Debug for ArpOffload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArpOffload")
            .field("attached", &self.attached())
            .finish_non_exhaustive()
    }
}

/// `bpf_map_update_elem` flag: create only, never overwrite.
const BPF_NOEXIST: u64 = 1;

/// The eBPF object built by `build.rs` from `vipd-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vipd"));

impl ArpOffload {
    /// Loads the embedded object (raises RLIMIT_MEMLOCK first for old
    /// kernels; harmless on new ones). Does not attach.
    #[instrument(name = "xdp_load")]
    pub fn load() -> Result<Self, OffloadError> {
        raise_memlock_limit();
        // Not `Ebpf::load`: in aya 0.14 it parses the kernel's BTF twice
        // (EbpfLoader::new already does). And no kernel BTF at all: the
        // program reads no kernel types (no CO-RE), and parsing
        // /sys/kernel/btf/vmlinux (5.5 MB) is costly: with `Ebpf::load`
        // vipd peaked at 41.7 MiB RSS and led 175 ms after start, without
        // any kernel BTF at 24.7 MiB and 65 ms (docs/BENCHMARKS.md, engine).
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .load(OBJECT)
            .map_err(OffloadError::Load)?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(OffloadError::MissingProgram(None))?
            .try_into()
            .map_err(|e| OffloadError::MissingProgram(Some(e)))?;
        program.load().map_err(OffloadError::LoadProgram)?;

        let counters = take_map(&mut ebpf, MAP_COUNTERS)?;
        let counters =
            PerCpuHashMap::try_from(counters).map_err(|source| OffloadError::MapType {
                name: MAP_COUNTERS,
                source,
            })?;
        let held = take_map(&mut ebpf, MAP_HELD)?;
        let held = HashMap::try_from(held).map_err(|source| OffloadError::MapType {
            name: MAP_HELD,
            source,
        })?;
        let conflicts = take_map(&mut ebpf, MAP_CONFLICTS)?;
        let conflicts = RingBuf::try_from(conflicts).map_err(|source| OffloadError::MapType {
            name: MAP_CONFLICTS,
            source,
        })?;
        debug!("XDP program loaded");
        Ok(ArpOffload {
            ebpf,
            counters,
            held,
            conflicts: Some(conflicts),
            attachments: BTreeMap::new(),
        })
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, OffloadError> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(OffloadError::MissingProgram(None))?
            .try_into()
            .map_err(|e| OffloadError::MissingProgram(Some(e)))
    }

    fn program(&self) -> Result<&Xdp, OffloadError> {
        self.ebpf
            .program(PROGRAM_NAME)
            .ok_or(OffloadError::MissingProgram(None))?
            .try_into()
            .map_err(|e| OffloadError::MissingProgram(Some(e)))
    }

    /// Attaches to `ifname`; already attached returns the existing mode.
    ///
    /// [`XdpMode::Auto`] tries native (driver) mode first and falls back to
    /// generic mode with a warning; `Native` and `Generic` force the mode.
    /// The attachment is a bpf link owned by this process (no pinning): when
    /// vipd exits or is killed, the kernel detaches the program.
    #[instrument(skip(self))]
    pub fn attach(&mut self, ifname: &str, mode: XdpMode) -> Result<AttachedMode, OffloadError> {
        if let Some((existing, _)) = self.attachments.get(ifname) {
            return Ok(*existing);
        }
        let (attached, link) = match mode {
            XdpMode::Native => (
                AttachedMode::Native,
                self.attach_in(ifname, AttachedMode::Native)?,
            ),
            XdpMode::Generic => (
                AttachedMode::Generic,
                self.attach_in(ifname, AttachedMode::Generic)?,
            ),
            XdpMode::Auto => match self.attach_in(ifname, AttachedMode::Native) {
                Ok(link) => (AttachedMode::Native, link),
                Err(OffloadError::Attach { source: native, .. }) => {
                    warn!(
                        ifname,
                        error = %native,
                        "native XDP refused, falling back to generic mode"
                    );
                    match self.attach_in(ifname, AttachedMode::Generic) {
                        Ok(link) => (AttachedMode::Generic, link),
                        Err(OffloadError::Attach {
                            source: generic, ..
                        }) => {
                            return Err(OffloadError::AttachAuto {
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
        info!(ifname, mode = ?attached, "XDP program attached");
        self.attachments
            .insert(ifname.to_string(), (attached, link));
        Ok(attached)
    }

    fn attach_in(&mut self, ifname: &str, mode: AttachedMode) -> Result<XdpLinkId, OffloadError> {
        self.program_mut()?
            .attach(ifname, mode.aya())
            .map_err(|source| OffloadError::Attach {
                ifname: ifname.to_string(),
                mode,
                source,
            })
    }

    /// Detaches from `ifname`.
    #[instrument(skip(self))]
    pub fn detach(&mut self, ifname: &str) -> Result<(), OffloadError> {
        let Some((_, link)) = self.attachments.remove(ifname) else {
            return Err(OffloadError::NotAttached {
                ifname: ifname.to_string(),
            });
        };
        self.program_mut()?
            .detach(link)
            .map_err(|source| OffloadError::Detach {
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
            .map(|(ifname, (mode, _))| (ifname.clone(), *mode))
            .collect()
    }

    /// Makes VIP_COUNTERS hold exactly these VIPs: zeroed per-CPU counters
    /// for new ones, existing counters kept, VIPs no longer watched deleted.
    #[instrument(skip_all, fields(count = vips.len()))]
    pub fn set_watched(&mut self, vips: &BTreeSet<Vip>) -> Result<(), OffloadError> {
        let present = self.counter_keys()?;
        for key in &present {
            let vip = key_to_vip(MAP_COUNTERS, *key)?;
            if !vips.contains(&vip) {
                self.counters
                    .remove(key)
                    .map_err(|source| OffloadError::MapUpdate {
                        map: MAP_COUNTERS,
                        vip,
                        source,
                    })?;
                debug!(vip = %vip, "VIP no longer watched");
            }
        }
        let new: Vec<Vip> = vips
            .iter()
            .filter(|vip| !present.contains(&vip_key(vip.octets())))
            .copied()
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let cpus =
            aya::util::nr_cpus().map_err(|(what, source)| OffloadError::Cpus { what, source })?;
        for vip in new {
            let zeroed =
                PerCpuValues::try_from(vec![ArpCounters::default(); cpus]).map_err(|source| {
                    OffloadError::Cpus {
                        what: "building per-CPU values",
                        source,
                    }
                })?;
            // BPF_NOEXIST: never zero counters that appeared meanwhile.
            self.counters
                .insert(vip_key(vip.octets()), zeroed, BPF_NOEXIST)
                .map_err(|source| OffloadError::MapUpdate {
                    map: MAP_COUNTERS,
                    vip,
                    source,
                })?;
            debug!(vip = %vip, "VIP watched");
        }
        Ok(())
    }

    fn counter_keys(&self) -> Result<BTreeSet<VipKey>, OffloadError> {
        self.counters
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|source| OffloadError::MapRead {
                map: MAP_COUNTERS,
                source,
            })
    }

    /// Makes HELD_VIPS hold exactly these entries (VIP -> ifindex + MAC).
    /// The XDP program answers ARP for held VIPs only.
    #[instrument(skip_all, fields(count = held.len()))]
    pub fn set_held(&mut self, held: &BTreeMap<Vip, HeldVip>) -> Result<(), OffloadError> {
        let present: Vec<VipKey> =
            self.held
                .keys()
                .collect::<Result<_, _>>()
                .map_err(|source| OffloadError::MapRead {
                    map: MAP_HELD,
                    source,
                })?;
        // Remove first: a released VIP must stop being answered before
        // anything else changes.
        for key in present {
            let vip = key_to_vip(MAP_HELD, key)?;
            if !held.contains_key(&vip) {
                self.remove_held(vip)?;
            }
        }
        for (vip, entry) in held {
            let key = vip_key(vip.octets());
            if self.held.get(&key, 0).ok().as_ref() == Some(entry) {
                continue;
            }
            self.held
                .insert(key, entry, 0)
                .map_err(|source| OffloadError::MapUpdate {
                    map: MAP_HELD,
                    vip: *vip,
                    source,
                })?;
            debug!(vip = %vip, ifindex = entry.ifindex, "XDP answers ARP for VIP");
        }
        Ok(())
    }

    fn remove_held(&mut self, vip: Vip) -> Result<(), OffloadError> {
        match self.held.remove(&vip_key(vip.octets())) {
            Ok(()) => {}
            // Gone already: what we wanted.
            Err(MapError::KeyNotFound) => {}
            Err(source) => {
                return Err(OffloadError::MapUpdate {
                    map: MAP_HELD,
                    vip,
                    source,
                });
            }
        }
        debug!(vip = %vip, "XDP no longer answers ARP for VIP");
        Ok(())
    }

    /// Empties HELD_VIPS (called before VIPs are removed, on step-down and
    /// on shutdown).
    #[instrument(skip_all)]
    pub fn clear_held(&mut self) -> Result<(), OffloadError> {
        self.set_held(&BTreeMap::new())
    }

    /// Counters of every watched VIP, summed over CPUs.
    pub fn counters(&self) -> Result<BTreeMap<Vip, ArpCounters>, OffloadError> {
        let mut out = BTreeMap::new();
        for entry in self.counters.iter() {
            let (key, values) = match entry {
                Ok(entry) => entry,
                // Deleted between listing and reading: not watched any more.
                Err(MapError::KeyNotFound) => continue,
                Err(source) => {
                    return Err(OffloadError::MapRead {
                        map: MAP_COUNTERS,
                        source,
                    });
                }
            };
            let mut sum = ArpCounters::default();
            for cpu in values.iter() {
                sum.accumulate(cpu);
            }
            out.insert(key_to_vip(MAP_COUNTERS, key)?, sum);
        }
        Ok(out)
    }

    /// Takes the conflict ring buffer out as an async reader (callable once).
    /// Call it inside a tokio runtime with IO enabled (it panics otherwise).
    pub fn take_conflicts(&mut self) -> Result<ConflictReader, OffloadError> {
        let ring = self.conflicts.take().ok_or(OffloadError::ConflictsTaken)?;
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged,
        // for as long as it lives, and the AsyncFd owns the RingBuf.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| OffloadError::ConflictsFd(e.into()))?;
        Ok(ConflictReader { fd })
    }

    /// Runs the program once on `frame` with BPF_PROG_TEST_RUN and returns
    /// (XDP action, frame out). A non-zero `ingress_ifindex` is handed to
    /// the program in its `xdp_md`; the kernel accepts it only for an
    /// interface of the caller's network namespace. The kernel refuses
    /// frames shorter than an Ethernet header (14 bytes) with EINVAL.
    pub fn test_run(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
    ) -> Result<(u32, Vec<u8>), OffloadError> {
        let err = |source| OffloadError::TestRun {
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
        // The program never grows the frame; room for a little more anyway.
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

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, OffloadError> {
    ebpf.take_map(name).ok_or(OffloadError::MissingMap { name })
}

fn key_to_vip(map: &'static str, key: VipKey) -> Result<Vip, OffloadError> {
    let addr = Ipv4Addr::from(vip_octets(key));
    Vip::new(addr).map_err(|_| OffloadError::InvalidKey { map, addr })
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

/// Foreign claims of held VIPs, as the XDP program reports them.
pub struct ConflictReader {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl ConflictReader {
    /// Waits for the next conflict event. Returns `None` only when the ring
    /// buffer can no longer be polled (the runtime is shutting down).
    pub async fn next(&mut self) -> Option<ConflictEvent> {
        loop {
            let mut guard = match self.fd.readable_mut().await {
                Ok(guard) => guard,
                Err(error) => {
                    warn!(%error, map = MAP_CONFLICTS, "polling the conflict ring buffer failed");
                    return None;
                }
            };
            if let Some(item) = guard.get_inner_mut().next() {
                if item.len() < size_of::<ConflictEvent>() {
                    warn!(
                        len = item.len(),
                        map = MAP_CONFLICTS,
                        "short conflict event dropped"
                    );
                    continue;
                }
                // SAFETY: the item holds at least one ConflictEvent, a plain
                // repr(C) type valid for every bit pattern; read_unaligned
                // makes no alignment assumption.
                let event =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ConflictEvent>()) };
                return Some(event);
            }
            // Drained: wait for the kernel's next wake-up.
            guard.clear_ready();
        }
    }
}

impl std::fmt::Debug for ConflictReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConflictReader").finish_non_exhaustive()
    }
}
