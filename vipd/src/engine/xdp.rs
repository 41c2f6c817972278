//! The engine's side of the XDP program: which VIPs get map entries (the
//! first of each family in address order, as many as the maps hold), the
//! held entries with the lease's end and the Router flag, attaching where
//! VIPs live, and the checks that native answers leave.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tracing::{debug, error, info, warn};
use vipd_common::{HELD_ROUTER, HeldVip, MAX_VIPS};

use super::Engine;
use crate::{
    net::{Placement, netlink::NetSnapshot, sysctl::forwarding},
    reconcile::Holdings,
    role::Role,
    vip::Vip,
    xdp::program_ns,
};

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

    /// The lease's end on the XDP program's clock: a held-VIP entry stops
    /// being answered then, even if this agent is frozen.
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
        if let Err(e) = xdp.set_held(&entries) {
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
