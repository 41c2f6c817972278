//! The engine's side of the XDP program: which VIPs get map entries (the
//! first of each family in address order, as many as the maps hold), the
//! held entries with the lease's end, the fence's end and the Router flag,
//! attaching where VIPs live (the egress fence everywhere), and the checks
//! that native answers leave.
//!
//! The fence window of a VIP runs from its lease end to the latest moment
//! its address can still be in the kernel: before each write of the address
//! (add or lifetime renewal) its entry is fenced "until cleared", and the
//! kernel's acknowledgement lowers that to acknowledgement + lifetime +
//! [`FENCE_KERNEL_SLACK`] (the kernel starts the lifetime when it takes the
//! request, before it answers). A VIP released or no longer served keeps
//! its entry, lease ended, until its window closes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use tracing::{debug, error, info, warn};
use vipd_common::{HELD_ROUTER, HeldVip, MAX_VIPS, NO_EXPIRY};

use super::Engine;
use crate::{
    net::{Placement, netlink::NetSnapshot, sysctl::forwarding},
    reconcile::Holdings,
    role::Role,
    vip::Vip,
    xdp::{XdpError, program_ns},
};

/// How long past its lifetime the kernel may keep an address: the same
/// bound the lease's rules use (`vipd_lease::KERNEL_LIFETIME_SLACK`; the
/// kernel's check runs no sooner than a second after its previous run).
pub(crate) const FENCE_KERNEL_SLACK: Duration = vipd_lease::KERNEL_LIFETIME_SLACK;

/// The end of the fence window of an address write the kernel acknowledged
/// at `ack_ns` (programs' clock) with `lifetime` seconds (`None`: a
/// permanent address, fenced until cleared).
pub(super) fn fence_end_after(ack_ns: u64, lifetime: Option<u32>) -> u64 {
    let Some(secs) = lifetime else {
        return NO_EXPIRY;
    };
    let slack = u64::try_from(FENCE_KERNEL_SLACK.as_nanos()).unwrap_or(u64::MAX);
    ack_ns
        .saturating_add(u64::from(secs).saturating_mul(1_000_000_000))
        .saturating_add(slack)
}

impl Engine {
    /// Checks that native XDP answers leave their interfaces; where they do
    /// not, the XDP program has moved the interface to generic mode.
    pub(super) fn check_delivery(&mut self) {
        self.delivery_check = None;
        let Some(xdp) = &self.xdp_program else { return };
        let mut xdp = xdp.lock().expect("XDP program lock");
        if xdp.check_delivery() {
            let attached = xdp.attachments();
            self.status.send_modify(|s| s.xdp_attached = attached);
        }
        drop(xdp);
        self.schedule_delivery_check();
    }

    /// Keeps a delivery check due while any native attachment is checked.
    pub(super) fn schedule_delivery_check(&mut self) {
        let next = self
            .xdp_program
            .as_ref()
            .and_then(|xdp| xdp.lock().expect("XDP program lock").next_delivery_check());
        let now = tokio::time::Instant::now();
        self.delivery_check = match (next, self.delivery_check) {
            (None, _) => None,
            (Some(after), Some(due)) => Some(due.min(now + after)),
            (Some(after), None) => Some(now + after),
        };
    }

    /// Before a write of `vip`'s address on `placement`: its entry fenced
    /// until cleared (the lease end it had, or none yet for a new address),
    /// so a freeze between the write and its acknowledgement cannot outrun
    /// the fence. Returns the window's end before, for
    /// [`Engine::fence_after_write`].
    pub(super) fn fence_before_write(&mut self, vip: Vip, placement: Placement) -> Option<u64> {
        let before = self.fence_ends.insert(vip, NO_EXPIRY);
        // `xdp_fits` is the last pass's: a VIP configured since then fits
        // too while the maps hold every VIP.
        let fits = self.xdp_fits.contains(&vip) || self.applied.vips.len() <= MAX_VIPS as usize;
        if !self.settings.xdp_responder || !fits {
            return before;
        }
        let Some(xdp) = self.xdp_program.clone() else {
            return before;
        };
        let entry = match self.xdp_written.get(&vip) {
            Some(e) if e.ifindex == placement.ifindex => *e,
            _ => {
                let mac = self.link_mac(placement.ifindex).unwrap_or_default();
                self.held_vip(vip, placement.ifindex, mac, 0)
            }
        };
        let entry = HeldVip {
            fence_end_ns: NO_EXPIRY,
            ..entry
        };
        match xdp.lock().expect("XDP program lock").put_held(vip, entry) {
            Ok(()) => {
                self.xdp_written.insert(vip, entry);
            }
            Err(e) => {
                warn!(vip = %vip, error = %e, "cannot fence the VIP before writing its address")
            }
        }
        before
    }

    /// After a write of `vip`'s address: `acked` the lifetime the kernel
    /// acknowledged (`None`: the write failed, the address keeps what it
    /// had, and so does the window). The map follows at the next write of
    /// the held maps, in the same pass or renewal.
    pub(super) fn fence_after_write(
        &mut self,
        vip: Vip,
        before: Option<u64>,
        acked: Option<Option<u32>>,
    ) {
        match (acked, before) {
            (Some(lifetime), _) => {
                let end = fence_end_after(program_ns(Instant::now()), lifetime);
                self.fence_ends.insert(vip, end);
            }
            (None, Some(end)) => {
                self.fence_ends.insert(vip, end);
            }
            (None, None) => {
                self.fence_ends.remove(&vip);
            }
        }
    }

    /// The kernel acknowledged the removal of `vip`'s address. A permanent
    /// address (no lease) is gone now: its window closes. A leased one's
    /// window stays as it was: old sockets keep sending from a removed
    /// IPv6 address, and the egress fence keeps dropping that until then.
    pub(super) fn fence_removed(&mut self, vip: Vip) {
        if let Some(end) = self.fence_ends.get_mut(&vip)
            && *end == NO_EXPIRY
        {
            *end = program_ns(Instant::now());
        }
    }

    /// The fence end of an address this agent holds but did not write in
    /// this run (found in place): its lifetime was at most the lease's.
    fn unknown_fence_end(&self, lease_end_ns: u64) -> u64 {
        match self.lease() {
            Some(l) if lease_end_ns != NO_EXPIRY => {
                fence_end_after(lease_end_ns, Some(l.address_lifetime))
            }
            _ => NO_EXPIRY,
        }
    }

    /// Writes the held maps: `served` with the fence end of its address's
    /// last write, and every VIP no longer served whose window is still
    /// open, fenced (its lease end now at the latest: a release ends the
    /// lease). Entries whose window closed go.
    pub(super) fn hold_in_xdp(&mut self, served: BTreeMap<Vip, HeldVip>) -> Result<(), XdpError> {
        let Some(xdp) = self.xdp_program.clone() else {
            return Ok(());
        };
        // Entries an earlier vipd pinned: fenced until their windows
        // close, as if this agent had released them.
        let adopted = xdp.lock().expect("XDP program lock").take_adopted_held();
        for (vip, e) in adopted {
            if !self.xdp_written.contains_key(&vip) {
                self.fence_ends.entry(vip).or_insert(e.fence_end_ns);
                self.xdp_written.insert(vip, e);
            }
        }
        let now = program_ns(Instant::now());
        self.fence_ends
            .retain(|v, end| served.contains_key(v) || *end > now);
        let mut next = BTreeMap::new();
        for (vip, e) in served {
            let end = match self.fence_ends.get(&vip) {
                Some(end) => *end,
                None => {
                    let end = self.unknown_fence_end(e.lease_end_ns);
                    self.fence_ends.insert(vip, end);
                    end
                }
            };
            next.insert(
                vip,
                HeldVip {
                    fence_end_ns: end,
                    ..e
                },
            );
        }
        for (vip, e) in &self.xdp_written {
            if next.contains_key(vip) {
                continue;
            }
            if let Some(end) = self.fence_ends.get(vip) {
                next.insert(
                    *vip,
                    HeldVip {
                        lease_end_ns: e.lease_end_ns.min(now),
                        fence_end_ns: *end,
                        ..*e
                    },
                );
            }
        }
        let written = xdp.lock().expect("XDP program lock").set_held(&next);
        let fence = next
            .iter()
            .map(|(v, e)| (*v, (e.lease_end_ns, e.fence_end_ns)))
            .collect();
        self.status.send_if_modified(|s| {
            let changed = s.fence != fence;
            s.fence = fence;
            changed
        });
        self.xdp_written = next;
        written
    }

    /// The XDP held-map entries for what we hold (renewals: nothing moved).
    pub(super) fn xdp_entries(&self) -> BTreeMap<Vip, HeldVip> {
        let lease_end_ns = self.xdp_expiry();
        self.held
            .iter()
            .filter(|(vip, _)| self.xdp_fits.contains(vip))
            .filter_map(|(vip, p)| {
                let mac = self.links.get(&p.ifindex)?.mac;
                Some((*vip, self.held_vip(*vip, p.ifindex, mac, lease_end_ns)))
            })
            .collect()
    }

    /// The held-map entry of `vip` on interface `ifindex` with `mac`: the
    /// Router flag as read on the last pass (IPv6 only).
    fn held_vip(&self, vip: Vip, ifindex: u32, mac: [u8; 6], lease_end_ns: u64) -> HeldVip {
        let router = vip.v6().is_some() && self.routers.get(&ifindex) == Some(&true);
        HeldVip {
            ifindex,
            mac,
            vlan: 0,
            flags: if router { HELD_ROUTER } else { 0 },
            _pad: [0; 3],
            lease_end_ns,
            // Set from the address's last write by `hold_in_xdp`.
            fence_end_ns: lease_end_ns,
        }
    }

    /// Reads `net.ipv6.conf.<if>.forwarding` of every interface holding an
    /// IPv6 VIP in `held`. Unreadable counts as not forwarding: a host's
    /// advertisement never claims to be a router by mistake.
    fn refresh_routers(&mut self, snap: &NetSnapshot, held: &BTreeMap<Vip, Placement>) {
        let mut routers = HashMap::new();
        for (vip, p) in held.iter().filter(|(v, _)| v.v6().is_some()) {
            if routers.contains_key(&p.ifindex) {
                continue;
            }
            let Some(link) = snap.link(p.ifindex) else {
                continue;
            };
            let router = forwarding(&link.name).unwrap_or_else(|error| {
                debug!(vip = %vip, ifname = %link.name, %error, "cannot read IPv6 forwarding; Router flag off");
                false
            });
            if self.routers.get(&p.ifindex) != Some(&router) {
                debug!(ifname = %link.name, router, "IPv6 forwarding of a VIP interface");
            }
            routers.insert(p.ifindex, router);
        }
        self.routers = routers;
    }

    /// The lease's end on the programs' clock: a held-VIP entry stops
    /// being answered then, and is fenced, even if this agent is frozen.
    fn xdp_expiry(&self) -> u64 {
        self.lease()
            .map_or(vipd_common::NO_EXPIRY, |l| program_ns(l.until))
    }

    /// Attaches the XDP program where VIPs live (and where the operator
    /// named), watches every configured VIP and holds exactly `held`.
    pub(super) fn sync_xdp(&mut self, snap: &NetSnapshot, holdings: &Holdings) -> Vec<String> {
        let lease_end_ns = self.xdp_expiry();
        if self.xdp_program.is_some() {
            self.refresh_routers(snap, &holdings.held);
        }
        let Some(xdp) = &self.xdp_program else {
            return Vec::new();
        };
        let mut xdp = xdp.lock().expect("XDP program lock");
        let mut errors = Vec::new();
        let mut ifnames: BTreeSet<String> = self.settings.xdp_interfaces.iter().cloned().collect();
        for vip in &self.applied.vips {
            if let Some(p) = snap.routes.placement(*vip)
                && let Some(l) = snap.link(p.ifindex)
            {
                ifnames.insert(l.name.clone());
            }
        }
        let attached: BTreeSet<String> = xdp.attached().into_iter().map(|(n, _)| n).collect();
        for name in ifnames.difference(&attached) {
            if name == "lo" {
                continue;
            }
            match xdp.attach(name, self.settings.xdp_mode) {
                Ok(_) => {}
                Err(e) => {
                    error!(ifname = %name, error = %e, "cannot attach the XDP program");
                    errors.push(e.to_string());
                }
            }
        }
        // The egress fence sits on every interface: a reply leaves by the
        // route's interface, which need not be the VIP's.
        let every: BTreeMap<u32, String> = snap
            .links
            .iter()
            .filter(|l| l.name != "lo")
            .map(|l| (l.ifindex, l.name.clone()))
            .collect();
        errors.extend(xdp.fence_egress_on(&every).iter().map(|e| e.to_string()));
        let (fits, over) = xdp_fit(&self.applied.vips, MAX_VIPS as usize);
        if over != self.xdp_over {
            report_xdp_over(over);
            self.xdp_over = over;
        }
        self.xdp_fits = fits;
        if let Err(e) = xdp.set_watched(&self.xdp_fits) {
            errors.push(e.to_string());
        }
        drop(xdp);
        let entries: BTreeMap<Vip, HeldVip> =
            if self.settings.xdp_responder && self.applied.role == Role::Leader {
                holdings
                    .xdp
                    .iter()
                    .filter(|(vip, _)| self.xdp_fits.contains(vip))
                    .map(|(vip, x)| (*vip, self.held_vip(*vip, x.ifindex, x.mac, lease_end_ns)))
                    .collect()
            } else {
                BTreeMap::new()
            };
        if let Err(e) = self.hold_in_xdp(entries) {
            errors.push(e.to_string());
        }
        errors
    }
}

/// Configured VIPs without an XDP entry, per family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct XdpOver {
    pub(super) ipv4: usize,
    pub(super) ipv6: usize,
}

impl XdpOver {
    pub(super) fn total(self) -> usize {
        self.ipv4 + self.ipv6
    }
}

/// The VIPs that get XDP entries: per family, the first `capacity` in
/// address order, and how many of each family are left over. Address order
/// keeps the choice stable from pass to pass and across restarts, so an
/// entry does not flap between VIPs; the others are still configured and
/// the kernel answers ARP/NDP for them, as it does without XDP.
pub(super) fn xdp_fit(vips: &BTreeSet<Vip>, capacity: usize) -> (BTreeSet<Vip>, XdpOver) {
    let v4 = vips.iter().filter(|v| v.v4().is_some());
    let v6 = vips.iter().filter(|v| v.v6().is_some());
    let fits = v4.clone().take(capacity).chain(v6.clone().take(capacity));
    let over = XdpOver {
        ipv4: v4.count().saturating_sub(capacity),
        ipv6: v6.count().saturating_sub(capacity),
    };
    (fits.copied().collect(), over)
}

/// One line per change of how many VIPs the XDP maps cannot hold.
fn report_xdp_over(over: XdpOver) {
    if over.total() == 0 {
        info!(capacity = MAX_VIPS, "every VIP fits in the XDP maps again");
    } else {
        warn!(
            capacity = MAX_VIPS,
            ipv4 = over.ipv4,
            ipv6 = over.ipv6,
            "more VIPs than the XDP maps hold: {} VIPs have no XDP entry (the last in address order); the kernel answers ARP/NDP for them",
            over.total()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v4(i: u32) -> Vip {
        Vip::new(Ipv4Addr::from(0xc633_0000 + i)).unwrap()
    }

    fn v6(i: u32) -> Vip {
        Vip::new_v6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 1, 0) | Ipv6Addr::from(u128::from(i)))
            .unwrap()
    }

    #[test]
    fn the_fence_ends_a_lifetime_and_the_kernel_slack_after_the_acknowledgement() {
        let slack = u64::try_from(FENCE_KERNEL_SLACK.as_nanos()).unwrap();
        for ack in [0, 1, 5_000_000_000, 1 << 50] {
            for secs in [1, 2, 7, 3600] {
                let end = fence_end_after(ack, Some(secs));
                assert_eq!(end, ack + u64::from(secs) * 1_000_000_000 + slack);
            }
            // A permanent address is fenced until cleared.
            assert_eq!(fence_end_after(ack, None), NO_EXPIRY);
        }
        // Never wraps into the past.
        assert_eq!(fence_end_after(u64::MAX - 1, Some(1)), u64::MAX);
    }

    #[test]
    fn the_first_vips_of_each_family_in_address_order_get_the_xdp_entries() {
        for capacity in [0, 1, 3, 8] {
            for n4 in [0, 1, 3, 4, 9] {
                for n6 in [0, 2, 8, 11] {
                    // Inserted in reverse: the order given must not matter.
                    let vips: BTreeSet<Vip> =
                        (0..n4).rev().map(v4).chain((0..n6).rev().map(v6)).collect();
                    let (fits, over) = xdp_fit(&vips, capacity as usize);
                    let case = format!("capacity {capacity}, {n4} IPv4, {n6} IPv6");
                    let want: BTreeSet<Vip> = (0..n4.min(capacity))
                        .map(v4)
                        .chain((0..n6.min(capacity)).map(v6))
                        .collect();
                    assert_eq!(fits, want, "{case}");
                    assert_eq!(
                        over,
                        XdpOver {
                            ipv4: n4.saturating_sub(capacity) as usize,
                            ipv6: n6.saturating_sub(capacity) as usize,
                        },
                        "{case}"
                    );
                    assert_eq!(fits.len() + over.total(), vips.len(), "{case}");
                }
            }
        }
    }
}
