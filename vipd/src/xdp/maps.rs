//! The program's maps, one set per address family: the counters of the
//! watched VIPs, the held VIPs it answers for, and the ring of foreign
//! claims. The code that keeps them in step is written once, generic over
//! [`Family`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use aya::{
    Ebpf,
    maps::{HashMap, IterableMap, Map, MapData, MapError, PerCpuHashMap, PerCpuValues, RingBuf},
};
use tracing::debug;
use vipd_common::{
    ArpCounters, ConflictEvent, ConflictEvent6, HeldVip, MAP_CONFLICTS, MAP_CONFLICTS6,
    MAP_COUNTERS, MAP_COUNTERS6, MAP_HELD, MAP_HELD6, Vip6Key, VipKey, vip_key, vip_octets,
};

use super::{
    XdpError,
    conflicts::{Conflict, Ring},
    pins::BpfDir,
};
use crate::vip::Vip;

/// `bpf_map_update_elem` flag: create only, never overwrite.
const BPF_NOEXIST: u64 = 1;

/// What differs between the IPv4 and the IPv6 maps: the VIP's type, the
/// key the program looks it up by, the maps' names and the protocol the
/// program answers. The code that keeps the maps in step is the same for both.
pub(super) trait Family {
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
    /// The claim an event reports; `None` for an address that is no VIP
    /// (the program reports only held VIPs, so none comes).
    fn claim(event: &Self::Event) -> Option<Conflict>;
}

/// IPv4: ARP, keys in network byte order ([`vip_key`]).
pub(super) struct V4;

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
    fn claim(event: &ConflictEvent) -> Option<Conflict> {
        Some(Conflict {
            vip: Vip::new(event.vip.into()).ok()?,
            ifindex: event.ifindex,
            mac: event.mac,
        })
    }
}

/// IPv6: Neighbor Discovery, keys are the address's octets.
pub(super) struct V6;

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
    fn claim(event: &ConflictEvent6) -> Option<Conflict> {
        Some(Conflict {
            vip: Vip::new_v6(event.vip.into()).ok()?,
            ifindex: event.ifindex,
            mac: event.mac,
        })
    }
}

/// One family's maps, and what vipd last put in its held map.
pub(super) struct FamilyMaps<F: Family> {
    counters: PerCpuHashMap<MapData, F::Key, ArpCounters>,
    held: HashMap<MapData, F::Key, HeldVip>,
    /// `None` once taken out for the [`super::ConflictReader`].
    conflicts: Option<RingBuf<MapData>>,
    /// What the held map holds, to count answers per interface.
    held_now: BTreeMap<F::Vip, HeldVip>,
}

impl<F: Family> FamilyMaps<F> {
    /// Takes this family's maps out of the loaded object. With `pins`, the
    /// entries of the maps an earlier run pinned there are copied in, and
    /// these maps' pins replace theirs; returns the held entries copied.
    pub(super) fn take(
        ebpf: &mut Ebpf,
        pins: Option<&BpfDir>,
    ) -> Result<(Self, BTreeMap<F::Vip, HeldVip>), XdpError> {
        let mut maps = FamilyMaps {
            counters: take_typed(ebpf, F::COUNTERS, PerCpuHashMap::try_from)?,
            held: take_typed(ebpf, F::HELD, HashMap::try_from)?,
            conflicts: Some(take_typed(ebpf, F::CONFLICTS, RingBuf::try_from)?),
            held_now: BTreeMap::new(),
        };
        let Some(dir) = pins else {
            return Ok((maps, BTreeMap::new()));
        };
        maps.copy_pinned(dir)?;
        for (name, data) in [
            (F::HELD, maps.held.map()),
            (F::COUNTERS, maps.counters.map()),
        ] {
            let path = dir.map(name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(XdpError::BpfDir { dir: path, source }),
            }
            data.pin(&path)
                .map_err(|source| XdpError::Pin { path, source })?;
        }
        let adopted = maps.held_now.clone();
        Ok((maps, adopted))
    }

    /// Copies the entries of the maps pinned in `dir` (if any) into these.
    fn copy_pinned(&mut self, dir: &BpfDir) -> Result<(), XdpError> {
        let read = |map: &'static str| move |source| XdpError::MapRead { map, source };
        if let Ok(old) = MapData::from_pin(dir.map(F::HELD)) {
            let old: HashMap<MapData, F::Key, HeldVip> =
                HashMap::try_from(Map::HashMap(old)).map_err(read(F::HELD))?;
            for item in old.iter() {
                let (key, entry) = match item {
                    Ok(i) => i,
                    Err(MapError::KeyNotFound) => continue,
                    Err(source) => return Err(read(F::HELD)(source)),
                };
                let vip = F::vip(F::HELD, key)?;
                self.held
                    .insert(key, entry, 0)
                    .map_err(|source| F::update_error(F::HELD, vip, source))?;
                self.held_now.insert(vip, entry);
            }
        }
        if let Ok(old) = MapData::from_pin(dir.map(F::COUNTERS)) {
            let old: PerCpuHashMap<MapData, F::Key, ArpCounters> =
                PerCpuHashMap::try_from(Map::PerCpuHashMap(old)).map_err(read(F::COUNTERS))?;
            for item in old.iter() {
                let (key, values) = match item {
                    Ok(i) => i,
                    Err(MapError::KeyNotFound) => continue,
                    Err(source) => return Err(read(F::COUNTERS)(source)),
                };
                let vip = F::vip(F::COUNTERS, key)?;
                self.counters
                    .insert(key, values, 0)
                    .map_err(|source| F::update_error(F::COUNTERS, vip, source))?;
            }
        }
        Ok(())
    }

    /// The counters map holds exactly `vips`: zeroed per-CPU counters for
    /// new ones, existing counters kept, VIPs no longer watched deleted.
    pub(super) fn set_watched(&mut self, vips: &BTreeSet<F::Vip>) -> Result<(), XdpError> {
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
    pub(super) fn set_held(&mut self, held: &BTreeMap<F::Vip, HeldVip>) -> Result<(), XdpError> {
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

    /// Adds or replaces the held entry of `vip`.
    pub(super) fn put_held(&mut self, vip: F::Vip, entry: HeldVip) -> Result<(), XdpError> {
        self.held
            .insert(F::key(&vip), entry, 0)
            .map_err(|source| F::update_error(F::HELD, vip, source))?;
        self.held_now.insert(vip, entry);
        Ok(())
    }

    /// Counters of every watched VIP, summed over CPUs.
    pub(super) fn counters(&self) -> Result<BTreeMap<F::Vip, ArpCounters>, XdpError> {
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
    pub(super) fn answers_on(&self, ifindex: u32) -> u64 {
        self.held_now
            .iter()
            .filter(|(_, h)| h.ifindex == ifindex)
            .filter_map(|(vip, _)| self.counters.get(&F::key(vip), 0).ok())
            .map(|values| values.iter().map(|c| c.xdp_replies).sum::<u64>())
            .sum()
    }

    /// The conflict ring buffer as an async reader (callable once). Call it
    /// inside a tokio runtime with IO enabled (it panics otherwise).
    pub(super) fn take_conflicts(&mut self) -> Result<Ring<F>, XdpError> {
        let ring = self
            .conflicts
            .take()
            .ok_or(XdpError::ConflictsTaken { map: F::CONFLICTS })?;
        Ring::new(ring)
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
