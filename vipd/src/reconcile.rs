//! The planner: a pure function from the role, the
//! configured VIPs and the kernel's links, routes and addresses to all a pass
//! does: the address changes that make the kernel right, the VIPs held then,
//! the XDP held maps' contents and the announcements. It never plans to
//! remove an address without vipd's mark.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::{
    announce::Announcement,
    net::{AddrState, Address, Link, Placement, RouteTable, guards_secondaries},
    vip::Vip,
};

/// What one pass is planned from: what the source wants and the kernel as
/// read at the pass's start.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Facts<'a> {
    /// The source wants this node to lead.
    pub leader: bool,
    /// The lease (if any) still runs: a leader whose lease ran out holds
    /// nothing, so a leader cut off cannot overlap its successor.
    pub lease_valid: bool,
    /// Every VIP configured for the cluster.
    pub vips: &'a BTreeSet<Vip>,
    pub routes: &'a RouteTable,
    pub addresses: &'a [Address],
    pub links: &'a [Link],
    /// Announce every VIP held (a term's start, sync and refresh rounds),
    /// not only those added.
    pub announce_all: bool,
    /// Which VIPs may be added without an address-conflict probe first.
    pub probe: ProbeGate<'a>,
}

/// Which VIPs may be added at once, and which wait for the address-conflict
/// probe (`net::probe`): a VIP the cluster never held might be another
/// host's address.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ProbeGate<'a> {
    /// Probing is off: every VIP is added at once.
    Off,
    On {
        /// Added at once: held by the cluster before (a takeover is never
        /// delayed), or probed and found free just now.
        cleared: &'a BTreeSet<Vip>,
        /// Probed, and a host outside the cluster answered: not added.
        in_use: &'a BTreeSet<Vip>,
    },
}

/// One held VIP as the XDP program answers for it: on `ifindex`, from `mac`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct XdpHold {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// What the node holds once a pass's address changes ran.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Holdings {
    /// The VIPs held here, and where.
    pub held: BTreeMap<Vip, Placement>,
    /// The XDP held maps' contents: every held VIP whose interface is known.
    pub xdp: BTreeMap<Vip, XdpHold>,
    /// What to announce: the VIPs added, or every held one on `announce_all`.
    pub announce: Vec<Announcement>,
}

/// Everything one pass does, in the order it does it: the address changes,
/// then what is held, answered for and announced if they all succeed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Leading with a valid lease: the configured VIPs are wanted here.
    pub holding: bool,
    pub addresses: AddressPlan,
    pub holdings: Holdings,
}

/// Plans one pass (see [`Plan`]). A follower, or a leader whose lease ran
/// out, wants no VIP: its plan removes every marked address (leftovers of
/// an earlier term or a crash) and holds
/// nothing.
pub(crate) fn plan(f: &Facts<'_>) -> Plan {
    let none = BTreeSet::new();
    let holding = f.leader && f.lease_valid;
    let addresses = gate(
        addresses(if holding { f.vips } else { &none }, f.routes, f.addresses),
        f.probe,
    );
    let mac = |ifindex: u32| f.links.iter().find(|l| l.ifindex == ifindex).map(|l| l.mac);
    let mut held = BTreeMap::new();
    for (vip, verdict) in &addresses.verdicts {
        if let Verdict::InPlace { placement } | Verdict::Add { placement } = verdict {
            held.insert(*vip, *placement);
        }
    }
    let xdp = held
        .iter()
        .filter_map(|(vip, p)| {
            let hold = XdpHold {
                ifindex: p.ifindex,
                mac: mac(p.ifindex)?,
            };
            Some((*vip, hold))
        })
        .collect();
    let announce = held
        .iter()
        .filter(|(vip, _)| f.announce_all || addresses.adds(**vip))
        .filter_map(|(vip, p)| {
            Some(Announcement {
                vip: *vip,
                ifindex: p.ifindex,
                mac: mac(p.ifindex)?,
            })
        })
        .collect();
    Plan {
        holding,
        addresses,
        holdings: Holdings {
            held,
            xdp,
            announce,
        },
    }
}

impl Plan {
    /// What is held once the address changes for the VIPs in `failed` did
    /// not succeed: a VIP whose add failed is not held, not answered for in
    /// XDP and not announced. One already in place stays held.
    pub(crate) fn outcome(&self, failed: &BTreeSet<Vip>) -> Holdings {
        let lost = |vip: &Vip| failed.contains(vip) && self.addresses.adds(*vip);
        let h = &self.holdings;
        Holdings {
            held: h
                .held
                .iter()
                .filter(|(v, _)| !lost(v))
                .map(|(v, p)| (*v, *p))
                .collect(),
            xdp: h
                .xdp
                .iter()
                .filter(|(v, _)| !lost(v))
                .map(|(v, x)| (*v, *x))
                .collect(),
            announce: h
                .announce
                .iter()
                .filter(|a| !lost(&a.vip))
                .copied()
                .collect(),
        }
    }

    /// The VIPs configured here with our mark once the pass ran, held in
    /// `holdings` or left by it: marked addresses it does not remove stay,
    /// and so do those whose removal did not happen (`not_removed`: refused
    /// or failed), so the coordinator never takes a VIP still here for gone.
    pub(crate) fn on_node(
        &self,
        holdings: &Holdings,
        addresses: &[Address],
        not_removed: &[Address],
    ) -> BTreeSet<Vip> {
        let mut out: BTreeSet<Vip> = holdings.held.keys().copied().collect();
        for a in addresses.iter().filter(|a| a.owned) {
            if let Ok(v) = Vip::from_ip(a.addr)
                && (!self.addresses.removes(a) || not_removed.contains(a))
            {
                out.insert(v);
            }
        }
        out
    }
}

/// One change to the kernel's addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Remove an address vipd added (`address.owned` is always true).
    /// `guards_secondaries`: the address is its subnet's primary and other
    /// addresses share the subnet, which the kernel would delete with it
    /// unless `promote_secondaries` is on for the interface.
    Remove {
        vip: Vip,
        address: Address,
        guards_secondaries: bool,
    },
    /// Add the VIP with vipd's mark, then announce it so neighbours learn
    /// the new MAC at once.
    Add { vip: Vip, placement: Placement },
}

/// What the planner concluded about one wanted VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub(crate) enum Verdict {
    /// Already where the route says, with our mark: nothing to do, no ARP.
    InPlace { placement: Placement },
    /// To be added (maybe after removing a stale copy), then announced.
    Add { placement: Placement },
    /// No route matches: cannot be served here (a VIP goes on the interface
    /// whose route covers it).
    NoRoute,
    /// An address equal to the VIP exists without our mark: the operator's.
    /// Left alone and reported; vipd does not add its own copy.
    OperatorAddress { ifindex: u32 },
    /// To be added once the address-conflict probe finds it free: the
    /// cluster never held it.
    Probe { placement: Placement },
    /// The probe found a host outside the cluster answering for it: not
    /// added (probed again later).
    InUse { placement: Placement },
}

/// The address changes: the actions in the order to run them (removals
/// first), and a verdict per wanted VIP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct AddressPlan {
    pub actions: Vec<Action>,
    pub verdicts: Vec<(Vip, Verdict)>,
    /// Our own copies of wanted IPv6 VIPs that DAD left unusable
    /// (`tentative` or `dadfailed`): removed and added again without DAD.
    /// Reported, since `dadfailed` means another host answered for the VIP.
    pub unusable: Vec<(Vip, Address)>,
}

/// What the tests ask of a plan; the engine reads its fields.
#[cfg(test)]
impl AddressPlan {
    pub(crate) fn is_noop(&self) -> bool {
        self.actions.is_empty()
    }

    pub(crate) fn no_route(&self) -> impl Iterator<Item = Vip> + '_ {
        self.verdicts
            .iter()
            .filter(|(_, v)| *v == Verdict::NoRoute)
            .map(|(vip, _)| *vip)
    }
}

impl AddressPlan {
    /// Whether `vip` is to be added.
    pub(crate) fn adds(&self, vip: Vip) -> bool {
        self.verdicts
            .iter()
            .any(|(v, verdict)| *v == vip && matches!(verdict, Verdict::Add { .. }))
    }

    /// Whether `address` is to be removed.
    pub(crate) fn removes(&self, address: &Address) -> bool {
        self.actions
            .iter()
            .any(|x| matches!(x, Action::Remove { address: a, .. } if a == address))
    }

    /// The VIPs a copy of which is to be removed.
    pub(crate) fn removing(&self) -> BTreeSet<Vip> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove { vip, .. } => Some(*vip),
                Action::Add { .. } => None,
            })
            .collect()
    }
}

/// Plans the actions that put every `wanted` VIP where `routes` says and
/// remove every marked address that is not wanted there. A follower plans
/// with an empty `wanted` set: that removes all its residue.
pub(crate) fn addresses(
    wanted: &BTreeSet<Vip>,
    routes: &RouteTable,
    addrs: &[Address],
) -> AddressPlan {
    let mut removes = Vec::new();
    let mut adds = Vec::new();
    let mut verdicts = Vec::new();
    let mut unusable = Vec::new();

    for &vip in wanted {
        let copies: Vec<&Address> = addrs.iter().filter(|a| a.addr == vip.ip()).collect();
        let placement = routes.placement(vip);

        if let Some(op) = copies.iter().find(|a| !a.owned) {
            // The operator's address wins: keep it, drop any copy of ours.
            verdicts.push((
                vip,
                Verdict::OperatorAddress {
                    ifindex: op.ifindex,
                },
            ));
            removes.extend(
                copies
                    .iter()
                    .filter(|a| a.owned)
                    .map(|a| remove(vip, a, addrs)),
            );
            continue;
        }
        let Some(placement) = placement else {
            verdicts.push((vip, Verdict::NoRoute));
            removes.extend(copies.iter().map(|a| remove(vip, a, addrs)));
            continue;
        };
        let mut in_place = false;
        for a in &copies {
            let usable = match a.state {
                // Without DAD it serves the moment its link is up.
                AddrState::Usable | AddrState::AwaitingLink => true,
                AddrState::Tentative | AddrState::DadFailed => false,
            };
            let placed = a.ifindex == placement.ifindex && a.prefix_len == placement.prefix_len;
            if placed && usable && !in_place {
                in_place = true;
            } else {
                if placed && !usable {
                    unusable.push((vip, (*a).clone()));
                }
                // On another interface, or with another prefix: stale.
                removes.push(remove(vip, a, addrs));
            }
        }
        if in_place {
            verdicts.push((vip, Verdict::InPlace { placement }));
        } else {
            verdicts.push((vip, Verdict::Add { placement }));
            adds.push(Action::Add { vip, placement });
        }
    }

    // Marked addresses that no wanted VIP accounts for: residue.
    for a in addrs.iter().filter(|a| a.owned) {
        let Ok(vip) = Vip::from_ip(a.addr) else {
            // Marked but not a valid VIP: not ours to judge; leave it.
            continue;
        };
        if !wanted.contains(&vip) {
            removes.push(remove(vip, a, addrs));
        }
    }

    removes.extend(adds);
    AddressPlan {
        actions: removes,
        verdicts,
        unusable,
    }
}

/// Failed adds of one VIP in a row, at one placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AddFailure {
    pub placement: Placement,
    pub count: u32,
    /// The kernel's error of the last one.
    pub error: String,
}

/// Failed adds in a row that make a VIP one this node cannot serve: the
/// first failure is retried at the next pass, a second one counts.
pub(crate) const ADD_FAILURES_UNSERVABLE: u32 = 2;

/// Which of `vips` this node can serve, and why it cannot serve the
/// others: no route matches, or adding it where the route says failed
/// [`ADD_FAILURES_UNSERVABLE`] times in a row. Whatever the role: a
/// follower's set is what it could serve if it led.
pub(crate) fn servable(
    vips: &BTreeSet<Vip>,
    routes: &RouteTable,
    failures: &BTreeMap<Vip, AddFailure>,
) -> (BTreeSet<Vip>, BTreeMap<Vip, String>) {
    let mut yes = BTreeSet::new();
    let mut no = BTreeMap::new();
    for &vip in vips {
        match routes.placement(vip) {
            None => {
                no.insert(vip, format!("no route matches VIP {vip} on this node"));
            }
            Some(p) => match failures.get(&vip) {
                Some(f) if f.placement == p && f.count >= ADD_FAILURES_UNSERVABLE => {
                    no.insert(
                        vip,
                        format!(
                            "adding VIP {vip} failed {} times in a row: {}",
                            f.count, f.error
                        ),
                    );
                }
                _ => {
                    yes.insert(vip);
                }
            },
        }
    }
    (yes, no)
}

/// Holds back the adds of VIPs that `probe` does not clear: each becomes
/// [`Verdict::Probe`] (never probed, or probing now) or [`Verdict::InUse`],
/// and its `Add` action goes. Removals of stale copies stay.
pub(crate) fn gate(mut plan: AddressPlan, probe: ProbeGate<'_>) -> AddressPlan {
    let ProbeGate::On { cleared, in_use } = probe else {
        return plan;
    };
    let held_back = |vip: &Vip| !cleared.contains(vip);
    for (vip, verdict) in &mut plan.verdicts {
        if let Verdict::Add { placement } = *verdict
            && held_back(vip)
        {
            *verdict = if in_use.contains(vip) {
                Verdict::InUse { placement }
            } else {
                Verdict::Probe { placement }
            };
        }
    }
    plan.actions
        .retain(|a| !matches!(a, Action::Add { vip, .. } if held_back(vip)));
    plan
}

fn remove(vip: Vip, address: &Address, all: &[Address]) -> Action {
    Action::Remove {
        vip,
        address: address.clone(),
        guards_secondaries: guards_secondaries(address, all),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Route;

    fn vip(s: &str) -> Vip {
        s.parse().unwrap()
    }

    fn wanted(v: &[&str]) -> BTreeSet<Vip> {
        v.iter().map(|s| vip(s)).collect()
    }

    fn on(ifindex: u32, prefix_len: u8) -> Placement {
        Placement {
            ifindex,
            prefix_len,
        }
    }

    /// The planned addition of `v` on `ifindex` with `prefix_len`.
    fn add(v: &str, ifindex: u32, prefix_len: u8) -> Action {
        Action::Add {
            vip: vip(v),
            placement: on(ifindex, prefix_len),
        }
    }

    /// The planned removal of `address`, the copy of `v`.
    fn removal(v: &str, address: Address, guards_secondaries: bool) -> Action {
        Action::Remove {
            vip: vip(v),
            address,
            guards_secondaries,
        }
    }

    fn addr(s: &str, prefix_len: u8, ifindex: u32, owned: bool) -> Address {
        Address {
            ifindex,
            addr: s.parse().unwrap(),
            prefix_len,
            owned,
            state: AddrState::Usable,
            secondary: false,
        }
    }

    /// if1: 192.0.2.0/24, if2: 198.51.100.0/24, default via if3.
    fn routes() -> RouteTable {
        let r = |dst: &str, prefix_len, ifindex| Route {
            dst: dst.parse().unwrap(),
            prefix_len,
            ifindex,
            gateway: None,
            metric: 0,
        };
        RouteTable::new(vec![
            r("192.0.2.0", 24, 1),
            r("198.51.100.0", 24, 2),
            r("0.0.0.0", 0, 3),
        ])
    }

    fn node_addrs() -> Vec<Address> {
        vec![
            addr("192.0.2.1", 24, 1, false),
            addr("198.51.100.1", 24, 2, false),
        ]
    }

    #[test]
    fn already_right_is_a_noop_without_announcement() {
        let mut a = node_addrs();
        a.push(addr("192.0.2.100", 24, 1, true));
        let p = addresses(&wanted(&["192.0.2.100"]), &routes(), &a);
        assert!(p.is_noop());
        assert_eq!(
            p.verdicts,
            vec![(
                vip("192.0.2.100"),
                Verdict::InPlace {
                    placement: Placement {
                        ifindex: 1,
                        prefix_len: 24
                    }
                }
            )]
        );
    }

    #[test]
    fn missing_is_added_where_the_route_says() {
        let p = addresses(
            &wanted(&["198.51.100.7", "203.0.113.9"]),
            &routes(),
            &node_addrs(),
        );
        assert_eq!(
            p.actions,
            vec![add("198.51.100.7", 2, 24), add("203.0.113.9", 3, 32)]
        );
    }

    #[test]
    fn wrong_interface_is_removed_then_added() {
        let mut a = node_addrs();
        let stale = addr("192.0.2.100", 24, 2, true);
        a.push(stale.clone());
        let p = addresses(&wanted(&["192.0.2.100"]), &routes(), &a);
        assert_eq!(
            p.actions,
            vec![
                removal("192.0.2.100", stale, false),
                add("192.0.2.100", 1, 24),
            ]
        );
    }

    #[test]
    fn wrong_prefix_is_replaced() {
        let mut a = node_addrs();
        let stale = addr("192.0.2.100", 32, 1, true);
        a.push(stale.clone());
        let p = addresses(&wanted(&["192.0.2.100"]), &routes(), &a);
        assert_eq!(p.actions.len(), 2);
        assert!(matches!(&p.actions[0], Action::Remove { address, .. } if *address == stale));
        assert!(matches!(
            &p.actions[1],
            Action::Add {
                placement: Placement {
                    ifindex: 1,
                    prefix_len: 24
                },
                ..
            }
        ));
    }

    #[test]
    fn no_route_is_reported_and_our_copy_removed() {
        let only_if1 = RouteTable::new(vec![routes().routes[0].clone()]);
        let mut a = node_addrs();
        let ours = addr("203.0.113.9", 32, 3, true);
        a.push(ours.clone());
        let p = addresses(&wanted(&["203.0.113.9", "192.0.2.100"]), &only_if1, &a);
        assert_eq!(p.no_route().collect::<Vec<_>>(), vec![vip("203.0.113.9")]);
        // The other VIP is still served.
        assert!(p.actions.contains(&add("192.0.2.100", 1, 24)));
        assert!(p.actions.contains(&removal("203.0.113.9", ours, false)));
    }

    #[test]
    fn operator_address_is_kept_and_reported() {
        let mut a = node_addrs();
        a.push(addr("192.0.2.100", 24, 2, false));
        let p = addresses(&wanted(&["192.0.2.100"]), &routes(), &a);
        assert!(p.is_noop(), "{:?}", p.actions);
        assert_eq!(
            p.verdicts,
            vec![(vip("192.0.2.100"), Verdict::OperatorAddress { ifindex: 2 })]
        );
        // Not wanted any more: still never removed.
        let p = addresses(&BTreeSet::new(), &routes(), &a);
        assert!(p.is_noop());
    }

    #[test]
    fn operator_address_beats_our_copy() {
        let mut a = node_addrs();
        a.push(addr("192.0.2.100", 24, 1, false));
        let ours = addr("192.0.2.100", 32, 3, true);
        a.push(ours.clone());
        let p = addresses(&wanted(&["192.0.2.100"]), &routes(), &a);
        assert_eq!(p.actions, vec![removal("192.0.2.100", ours, false)]);
    }

    #[test]
    fn follower_removes_only_marked_residue() {
        let mut a = node_addrs();
        let r1 = addr("192.0.2.100", 24, 1, true);
        let r2 = addr("203.0.113.9", 32, 3, true);
        a.push(r1.clone());
        a.push(r2.clone());
        let p = addresses(&BTreeSet::new(), &routes(), &a);
        let removed: Vec<_> = p
            .actions
            .iter()
            .map(|x| match x {
                Action::Remove { address, .. } => address.clone(),
                Action::Add { .. } => panic!("follower adds nothing"),
            })
            .collect();
        assert_eq!(removed, vec![r1, r2]);
    }

    #[test]
    fn route_change_moves_a_vip() {
        let mut a = node_addrs();
        a.push(addr("203.0.113.9", 32, 3, true));
        // A more specific route for 203.0.113.0/24 appears on if2.
        let mut t = routes();
        t.routes.push(Route {
            dst: "203.0.113.0".parse().unwrap(),
            prefix_len: 24,
            ifindex: 2,
            gateway: None,
            metric: 0,
        });
        let p = addresses(&wanted(&["203.0.113.9"]), &t, &a);
        assert_eq!(p.actions.len(), 2);
        assert!(matches!(&p.actions[0], Action::Remove { address, .. } if address.ifindex == 3));
        assert!(matches!(
            &p.actions[1],
            Action::Add {
                placement: Placement {
                    ifindex: 2,
                    prefix_len: 24
                },
                ..
            }
        ));
    }

    #[test]
    fn primary_vip_removal_is_flagged_to_protect_operator_addresses() {
        let vip_first = addr("192.0.2.100", 24, 1, true);
        let node_second = Address {
            secondary: true,
            ..addr("192.0.2.1", 24, 1, false)
        };
        let cases = [
            (
                "the VIP came first in its subnet, so it is primary; the node's own \
                 address behind it is a secondary the kernel would delete with it",
                vec![vip_first.clone(), node_second.clone()],
                true,
            ),
            (
                "behind the node's address the VIP is the secondary: no guard",
                vec![
                    Address {
                        secondary: true,
                        ..vip_first.clone()
                    },
                    Address {
                        secondary: false,
                        ..node_second
                    },
                ],
                false,
            ),
            (
                "a secondary of another prefix length is not the VIP's: no guard",
                vec![
                    vip_first,
                    Address {
                        secondary: true,
                        ..addr("192.0.2.1", 25, 1, false)
                    },
                ],
                false,
            ),
        ];
        for (case, a, guards) in cases {
            let p = addresses(&BTreeSet::new(), &routes(), &a);
            assert_eq!(
                p.actions,
                vec![removal("192.0.2.100", a[0].clone(), guards)],
                "{case}"
            );
        }
    }

    #[test]
    fn marked_invalid_address_is_left_alone() {
        let a = vec![addr("127.0.0.5", 8, 1, true)];
        assert!(addresses(&BTreeSet::new(), &routes(), &a).is_noop());
    }

    /// if1: 192.0.2.0/24 and 2001:db8:1::/64, default via if3 for both.
    fn dual_routes() -> RouteTable {
        let mut t = routes();
        let r = |dst: &str, prefix_len, ifindex| Route {
            dst: dst.parse().unwrap(),
            prefix_len,
            ifindex,
            gateway: None,
            metric: 256,
        };
        t.routes.push(r("2001:db8:1::", 64, 1));
        t.routes.push(r("::", 0, 3));
        t
    }

    #[test]
    fn both_families_are_planned_side_by_side() {
        let mut a = node_addrs();
        a.push(addr("2001:db8:1::1", 64, 1, false));
        let p = addresses(
            &wanted(&["192.0.2.100", "2001:db8:1::100", "2001:db8:9::9"]),
            &dual_routes(),
            &a,
        );
        assert_eq!(
            p.actions,
            vec![
                add("192.0.2.100", 1, 24),
                add("2001:db8:1::100", 1, 64),
                add("2001:db8:9::9", 3, 128),
            ]
        );
        assert!(p.unusable.is_empty());
    }

    #[test]
    fn v6_in_place_is_a_noop_and_residue_is_removed_without_guard() {
        let mut a = node_addrs();
        a.push(addr("2001:db8:1::100", 64, 1, true));
        let p = addresses(&wanted(&["2001:db8:1::100"]), &dual_routes(), &a);
        assert!(p.is_noop(), "{:?}", p.actions);
        // A v6 VIP listed first in its prefix is no primary: no guard.
        a.push(addr("2001:db8:1::1", 64, 1, false));
        let p = addresses(&BTreeSet::new(), &dual_routes(), &a);
        assert_eq!(
            p.actions,
            vec![removal("2001:db8:1::100", a[2].clone(), false)]
        );
    }

    #[test]
    fn dad_failed_or_tentative_copy_is_replaced_and_reported() {
        for state in [AddrState::DadFailed, AddrState::Tentative] {
            let mut a = node_addrs();
            let mut bad = addr("2001:db8:1::100", 64, 1, true);
            bad.state = state;
            a.push(bad.clone());
            let p = addresses(&wanted(&["2001:db8:1::100"]), &dual_routes(), &a);
            let placement = Placement {
                ifindex: 1,
                prefix_len: 64,
            };
            assert_eq!(
                p.actions,
                vec![
                    removal("2001:db8:1::100", bad.clone(), false),
                    Action::Add {
                        vip: vip("2001:db8:1::100"),
                        placement
                    },
                ],
                "{state:?}"
            );
            assert_eq!(p.unusable, vec![(vip("2001:db8:1::100"), bad)]);
            assert_eq!(
                p.verdicts,
                vec![(vip("2001:db8:1::100"), Verdict::Add { placement })]
            );
        }
    }

    #[test]
    fn nodad_copy_waiting_for_its_link_is_in_place() {
        let mut a = node_addrs();
        let mut waiting = addr("2001:db8:1::100", 64, 1, true);
        waiting.state = AddrState::AwaitingLink;
        a.push(waiting);
        let p = addresses(&wanted(&["2001:db8:1::100"]), &dual_routes(), &a);
        assert!(p.is_noop(), "{:?}", p.actions);
        assert!(p.unusable.is_empty());
    }

    #[test]
    fn operator_v6_address_is_never_touched() {
        let mut a = node_addrs();
        let mut op = addr("2001:db8:1::100", 64, 1, false);
        op.state = AddrState::DadFailed;
        a.push(op);
        let p = addresses(&wanted(&["2001:db8:1::100"]), &dual_routes(), &a);
        assert!(p.is_noop());
        assert!(p.unusable.is_empty());
        assert_eq!(
            p.verdicts,
            vec![(
                vip("2001:db8:1::100"),
                Verdict::OperatorAddress { ifindex: 1 }
            )]
        );
    }

    #[test]
    fn marked_link_local_is_left_alone() {
        let a = vec![addr("fe80::76", 64, 1, true)];
        assert!(addresses(&BTreeSet::new(), &dual_routes(), &a).is_noop());
    }

    fn link(ifindex: u32, last: u8) -> Link {
        Link {
            ifindex,
            name: format!("if{ifindex}"),
            mac: [2, 0, 0, 0, 0, last],
            up: true,
        }
    }

    /// Leading over if1 and if2 (if3 has no route here): one VIP to add on
    /// if1, one in place on if2, one without a route, one the operator's.
    fn leading() -> (BTreeSet<Vip>, RouteTable, Vec<Address>, Vec<Link>) {
        let table = RouteTable::new(routes().routes[..2].to_vec());
        let mut a = node_addrs();
        a.push(addr("198.51.100.7", 24, 2, true));
        a.push(addr("192.0.2.50", 24, 1, false));
        let vips = wanted(&["192.0.2.100", "198.51.100.7", "203.0.113.9", "192.0.2.50"]);
        (vips, table, a, vec![link(1, 1), link(2, 2)])
    }

    fn facts<'a>(
        (vips, routes, addresses, links): &'a (BTreeSet<Vip>, RouteTable, Vec<Address>, Vec<Link>),
        leader: bool,
        lease_valid: bool,
        announce_all: bool,
    ) -> Facts<'a> {
        Facts {
            leader,
            lease_valid,
            vips,
            routes,
            addresses,
            links,
            announce_all,
            probe: ProbeGate::Off,
        }
    }

    #[test]
    fn only_cleared_vips_are_added_while_probing_is_on() {
        let node = leading();
        let none = BTreeSet::new();
        let in_use = BTreeSet::from([vip("192.0.2.100")]);
        let f = |cleared, in_use| Facts {
            probe: ProbeGate::On { cleared, in_use },
            ..facts(&node, true, true, false)
        };
        // Never held, not probed: probe it, add nothing, hold nothing new.
        let p = plan(&f(&none, &none));
        let verdict = |p: &Plan, v: &str| {
            p.addresses
                .verdicts
                .iter()
                .find(|(x, _)| *x == vip(v))
                .map(|(_, d)| *d)
        };
        assert_eq!(
            verdict(&p, "192.0.2.100"),
            Some(Verdict::Probe {
                placement: on(1, 24)
            })
        );
        assert!(p.addresses.actions.is_empty(), "{:?}", p.addresses.actions);
        assert_eq!(
            p.holdings.held.keys().collect::<Vec<_>>(),
            vec![&vip("198.51.100.7")],
            "the VIP in place stays held without a probe"
        );
        assert!(p.holdings.announce.is_empty());
        // Found in use: reported as such, still not added.
        let p = plan(&f(&none, &in_use));
        assert_eq!(
            verdict(&p, "192.0.2.100"),
            Some(Verdict::InUse {
                placement: on(1, 24)
            })
        );
        assert!(p.addresses.actions.is_empty());
        // Cleared (held before, or probed free): added as without probing.
        let cleared = BTreeSet::from([vip("192.0.2.100")]);
        let p = plan(&f(&cleared, &none));
        assert_eq!(p, plan(&facts(&node, true, true, false)));
    }

    #[test]
    fn xdp_holds_only_held_vips_on_their_interface_and_mac() {
        let node = leading();
        let p = plan(&facts(&node, true, true, false));
        assert!(p.holding);
        assert_eq!(
            p.holdings.held,
            BTreeMap::from([
                (vip("192.0.2.100"), on(1, 24)),
                (vip("198.51.100.7"), on(2, 24)),
            ])
        );
        assert_eq!(
            p.holdings.xdp,
            BTreeMap::from([
                (
                    vip("192.0.2.100"),
                    XdpHold {
                        ifindex: 1,
                        mac: [2, 0, 0, 0, 0, 1]
                    }
                ),
                (
                    vip("198.51.100.7"),
                    XdpHold {
                        ifindex: 2,
                        mac: [2, 0, 0, 0, 0, 2]
                    }
                ),
            ])
        );
        // An interface without a known link is held but not answered for.
        let (vips, routes, addresses, _) = leading();
        let unknown = (vips, routes, addresses, vec![link(2, 2)]);
        let p = plan(&facts(&unknown, true, true, false));
        assert_eq!(p.holdings.held.len(), 2);
        assert_eq!(
            p.holdings.xdp.keys().collect::<Vec<_>>(),
            vec![&vip("198.51.100.7")]
        );
    }

    #[test]
    fn only_added_vips_are_announced_unless_all_are() {
        let node = leading();
        let added = Announcement {
            vip: vip("192.0.2.100"),
            ifindex: 1,
            mac: [2, 0, 0, 0, 0, 1],
        };
        let in_place = Announcement {
            vip: vip("198.51.100.7"),
            ifindex: 2,
            mac: [2, 0, 0, 0, 0, 2],
        };
        let p = plan(&facts(&node, true, true, false));
        assert_eq!(p.holdings.announce, vec![added]);
        let p = plan(&facts(&node, true, true, true));
        assert_eq!(p.holdings.announce, vec![added, in_place]);
    }

    #[test]
    fn a_failed_add_holds_nothing_and_a_vip_in_place_stays_held() {
        let node = leading();
        let p = plan(&facts(&node, true, true, true));
        let failed = BTreeSet::from([vip("192.0.2.100"), vip("198.51.100.7")]);
        let out = p.outcome(&failed);
        assert_eq!(out.held, BTreeMap::from([(vip("198.51.100.7"), on(2, 24))]));
        assert_eq!(
            out.xdp.keys().collect::<Vec<_>>(),
            vec![&vip("198.51.100.7")]
        );
        assert_eq!(
            out.announce.iter().map(|a| a.vip).collect::<Vec<_>>(),
            vec![vip("198.51.100.7")]
        );
        assert_eq!(p.outcome(&BTreeSet::new()), p.holdings);
    }

    #[test]
    fn a_leader_whose_lease_ran_out_holds_nothing() {
        let node = leading();
        let p = plan(&facts(&node, true, false, true));
        assert!(!p.holding);
        assert_eq!(p.holdings, Holdings::default());
        // Its VIP in place goes; the operator's address stays.
        assert_eq!(
            p.addresses.actions,
            vec![removal("198.51.100.7", node.2[2].clone(), false)]
        );
        assert!(p.on_node(&p.holdings, &node.2, &[]).is_empty());
        // A removal that did not happen leaves the VIP on the node, and the
        // report says so.
        assert_eq!(
            p.on_node(&p.holdings, &node.2, &[node.2[2].clone()]),
            BTreeSet::from([vip("198.51.100.7")])
        );
    }

    #[test]
    fn a_follower_holds_nothing_and_removes_only_marked_residue() {
        let (vips, routes, mut addresses, links) = leading();
        let residue = addr("203.0.113.9", 32, 3, true);
        addresses.push(residue.clone());
        let node = (vips, routes, addresses, links);
        let p = plan(&facts(&node, false, true, true));
        assert!(!p.holding);
        assert_eq!(p.holdings, Holdings::default());
        assert!(p.addresses.verdicts.is_empty());
        let removed: Vec<&Address> = p
            .addresses
            .actions
            .iter()
            .map(|x| match x {
                Action::Remove { address, .. } => address,
                Action::Add { .. } => panic!("a follower adds nothing"),
            })
            .collect();
        assert_eq!(removed, vec![&node.2[2], &residue]);
        // A marked address the plan keeps would still be reported held.
        assert!(p.on_node(&p.holdings, &node.2, &[]).is_empty());
    }

    #[test]
    fn servable_is_routable_and_not_failing_to_be_added() {
        let vips = wanted(&["192.0.2.100", "198.51.100.7", "203.0.113.9"]);
        let table = RouteTable::new(routes().routes[..2].to_vec());
        let fail = |count| {
            BTreeMap::from([(
                vip("198.51.100.7"),
                AddFailure {
                    placement: on(2, 24),
                    count,
                    error: "Address already in use (os error 98)".into(),
                },
            )])
        };
        let (yes, no) = servable(&vips, &table, &BTreeMap::new());
        assert_eq!(yes, wanted(&["192.0.2.100", "198.51.100.7"]));
        assert!(no[&vip("203.0.113.9")].contains("no route"));
        // One failure is retried first; the second counts.
        let (yes, _) = servable(&vips, &table, &fail(1));
        assert!(yes.contains(&vip("198.51.100.7")));
        let (yes, no) = servable(&vips, &table, &fail(2));
        assert_eq!(yes, wanted(&["192.0.2.100"]));
        assert!(no[&vip("198.51.100.7")].contains("Address already in use"));
        // Failures at another placement (the route moved) do not count.
        let mut moved = fail(5);
        moved.get_mut(&vip("198.51.100.7")).unwrap().placement = on(1, 24);
        let (yes, _) = servable(&vips, &table, &moved);
        assert!(yes.contains(&vip("198.51.100.7")));
    }
}
