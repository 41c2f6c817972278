//! The planner ("SetServiceVIP", R5): a pure function from the wanted VIPs
//! and the kernel's routes and addresses to the actions that make the kernel
//! right. It never plans to remove an address without vipd's mark.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::{
    net::{AddrState, Address, Placement, RouteTable, in_prefix},
    vip::Vip,
};

/// One change to the kernel's addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Remove an address vipd added (`address.owned` is always true).
    /// `guards_secondaries`: the address is its subnet's primary and other
    /// addresses share the subnet, which the kernel would delete with it
    /// unless `promote_secondaries` is on for the interface.
    Remove {
        vip: Vip,
        address: Address,
        guards_secondaries: bool,
    },
    /// Add the VIP with vipd's mark, then announce it (R7).
    Add { vip: Vip, placement: Placement },
}

/// What the planner concluded about one wanted VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Verdict {
    /// Already where the route says, with our mark: nothing to do, no ARP.
    InPlace { placement: Placement },
    /// To be added (maybe after removing a stale copy), then announced.
    Add { placement: Placement },
    /// No route matches: cannot be served here (R4).
    NoRoute,
    /// An address equal to the VIP exists without our mark: the operator's.
    /// Left alone and reported; vipd does not add its own copy.
    OperatorAddress { ifindex: u32 },
}

/// The planner's answer: the actions in the order to run them (removals
/// first), and a verdict per wanted VIP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub verdicts: Vec<(Vip, Verdict)>,
    /// Our own copies of wanted IPv6 VIPs that DAD left unusable
    /// (`tentative` or `dadfailed`): removed and added again without DAD.
    /// Reported, since `dadfailed` means another host answered for the VIP.
    pub unusable: Vec<(Vip, Address)>,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.actions.is_empty()
    }

    pub fn no_route(&self) -> impl Iterator<Item = Vip> + '_ {
        self.verdicts
            .iter()
            .filter(|(_, v)| *v == Verdict::NoRoute)
            .map(|(vip, _)| *vip)
    }
}

/// Plans the actions that put every `wanted` VIP where `routes` says and
/// remove every marked address that is not wanted there. A follower plans
/// with an empty `wanted` set: that removes all its residue (R6).
pub fn plan(wanted: &BTreeSet<Vip>, routes: &RouteTable, addrs: &[Address]) -> Plan {
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
    Plan {
        actions: removes,
        verdicts,
        unusable,
    }
}

fn remove(vip: Vip, address: &Address, all: &[Address]) -> Action {
    Action::Remove {
        vip,
        address: address.clone(),
        guards_secondaries: is_primary_with_company(address, all),
    }
}

/// Whether `a` is the first IPv4 address of its subnet on its interface
/// while other addresses share that subnet: with `promote_secondaries=0` the
/// kernel deletes those along with it (docs/DESIGN.md, facts). IPv6 has no
/// primary addresses.
fn is_primary_with_company(a: &Address, all: &[Address]) -> bool {
    if !a.addr.is_ipv4() {
        return false;
    }
    let mut same_subnet = all.iter().filter(|b| {
        b.ifindex == a.ifindex
            && b.prefix_len == a.prefix_len
            && in_prefix(b.addr, a.addr, a.prefix_len)
    });
    // Dumps list a subnet's primary first (the kernel keeps that order).
    let first_is_a = same_subnet.next().is_some_and(|b| b.addr == a.addr);
    first_is_a && same_subnet.next().is_some()
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

    fn addr(s: &str, prefix_len: u8, ifindex: u32, owned: bool) -> Address {
        Address {
            ifindex,
            addr: s.parse().unwrap(),
            prefix_len,
            owned,
            state: AddrState::Usable,
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
        let p = plan(&wanted(&["192.0.2.100"]), &routes(), &a);
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
        let p = plan(
            &wanted(&["198.51.100.7", "203.0.113.9"]),
            &routes(),
            &node_addrs(),
        );
        assert_eq!(
            p.actions,
            vec![
                Action::Add {
                    vip: vip("198.51.100.7"),
                    placement: Placement {
                        ifindex: 2,
                        prefix_len: 24
                    }
                },
                Action::Add {
                    vip: vip("203.0.113.9"),
                    placement: Placement {
                        ifindex: 3,
                        prefix_len: 32
                    }
                },
            ]
        );
    }

    #[test]
    fn wrong_interface_is_removed_then_added() {
        let mut a = node_addrs();
        let stale = addr("192.0.2.100", 24, 2, true);
        a.push(stale.clone());
        let p = plan(&wanted(&["192.0.2.100"]), &routes(), &a);
        assert_eq!(
            p.actions,
            vec![
                Action::Remove {
                    vip: vip("192.0.2.100"),
                    address: stale,
                    guards_secondaries: false
                },
                Action::Add {
                    vip: vip("192.0.2.100"),
                    placement: Placement {
                        ifindex: 1,
                        prefix_len: 24
                    }
                },
            ]
        );
    }

    #[test]
    fn wrong_prefix_is_replaced() {
        let mut a = node_addrs();
        let stale = addr("192.0.2.100", 32, 1, true);
        a.push(stale.clone());
        let p = plan(&wanted(&["192.0.2.100"]), &routes(), &a);
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
        let p = plan(&wanted(&["203.0.113.9", "192.0.2.100"]), &only_if1, &a);
        assert_eq!(p.no_route().collect::<Vec<_>>(), vec![vip("203.0.113.9")]);
        // The other VIP is still served.
        assert!(p.actions.contains(&Action::Add {
            vip: vip("192.0.2.100"),
            placement: Placement {
                ifindex: 1,
                prefix_len: 24
            }
        }));
        assert!(p.actions.contains(&Action::Remove {
            vip: vip("203.0.113.9"),
            address: ours,
            guards_secondaries: false
        }));
    }

    #[test]
    fn operator_address_is_kept_and_reported() {
        let mut a = node_addrs();
        a.push(addr("192.0.2.100", 24, 2, false));
        let p = plan(&wanted(&["192.0.2.100"]), &routes(), &a);
        assert!(p.is_noop(), "{:?}", p.actions);
        assert_eq!(
            p.verdicts,
            vec![(vip("192.0.2.100"), Verdict::OperatorAddress { ifindex: 2 })]
        );
        // Not wanted any more: still never removed.
        let p = plan(&BTreeSet::new(), &routes(), &a);
        assert!(p.is_noop());
    }

    #[test]
    fn operator_address_beats_our_copy() {
        let mut a = node_addrs();
        a.push(addr("192.0.2.100", 24, 1, false));
        let ours = addr("192.0.2.100", 32, 3, true);
        a.push(ours.clone());
        let p = plan(&wanted(&["192.0.2.100"]), &routes(), &a);
        assert_eq!(
            p.actions,
            vec![Action::Remove {
                vip: vip("192.0.2.100"),
                address: ours,
                guards_secondaries: false
            }]
        );
    }

    #[test]
    fn follower_removes_only_marked_residue() {
        let mut a = node_addrs();
        let r1 = addr("192.0.2.100", 24, 1, true);
        let r2 = addr("203.0.113.9", 32, 3, true);
        a.push(r1.clone());
        a.push(r2.clone());
        let p = plan(&BTreeSet::new(), &routes(), &a);
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
        let p = plan(&wanted(&["203.0.113.9"]), &t, &a);
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
        // The VIP came first in its subnet, so it is primary; the node's own
        // address behind it is a secondary the kernel would delete with it.
        let a = vec![
            addr("192.0.2.100", 24, 1, true),
            addr("192.0.2.1", 24, 1, false),
        ];
        let p = plan(&BTreeSet::new(), &routes(), &a);
        assert_eq!(
            p.actions,
            vec![Action::Remove {
                vip: vip("192.0.2.100"),
                address: a[0].clone(),
                guards_secondaries: true
            }]
        );
    }

    #[test]
    fn marked_invalid_address_is_left_alone() {
        let a = vec![addr("127.0.0.5", 8, 1, true)];
        assert!(plan(&BTreeSet::new(), &routes(), &a).is_noop());
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
        let p = plan(
            &wanted(&["192.0.2.100", "2001:db8:1::100", "2001:db8:9::9"]),
            &dual_routes(),
            &a,
        );
        assert_eq!(
            p.actions,
            vec![
                Action::Add {
                    vip: vip("192.0.2.100"),
                    placement: Placement {
                        ifindex: 1,
                        prefix_len: 24
                    }
                },
                Action::Add {
                    vip: vip("2001:db8:1::100"),
                    placement: Placement {
                        ifindex: 1,
                        prefix_len: 64
                    }
                },
                Action::Add {
                    vip: vip("2001:db8:9::9"),
                    placement: Placement {
                        ifindex: 3,
                        prefix_len: 128
                    }
                },
            ]
        );
        assert!(p.unusable.is_empty());
    }

    #[test]
    fn v6_in_place_is_a_noop_and_residue_is_removed_without_guard() {
        let mut a = node_addrs();
        a.push(addr("2001:db8:1::100", 64, 1, true));
        let p = plan(&wanted(&["2001:db8:1::100"]), &dual_routes(), &a);
        assert!(p.is_noop(), "{:?}", p.actions);
        // A v6 VIP listed first in its prefix is no primary: no guard.
        a.push(addr("2001:db8:1::1", 64, 1, false));
        let p = plan(&BTreeSet::new(), &dual_routes(), &a);
        assert_eq!(
            p.actions,
            vec![Action::Remove {
                vip: vip("2001:db8:1::100"),
                address: a[2].clone(),
                guards_secondaries: false
            }]
        );
    }

    #[test]
    fn dad_failed_or_tentative_copy_is_replaced_and_reported() {
        for state in [AddrState::DadFailed, AddrState::Tentative] {
            let mut a = node_addrs();
            let mut bad = addr("2001:db8:1::100", 64, 1, true);
            bad.state = state;
            a.push(bad.clone());
            let p = plan(&wanted(&["2001:db8:1::100"]), &dual_routes(), &a);
            let placement = Placement {
                ifindex: 1,
                prefix_len: 64,
            };
            assert_eq!(
                p.actions,
                vec![
                    Action::Remove {
                        vip: vip("2001:db8:1::100"),
                        address: bad.clone(),
                        guards_secondaries: false
                    },
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
        let p = plan(&wanted(&["2001:db8:1::100"]), &dual_routes(), &a);
        assert!(p.is_noop(), "{:?}", p.actions);
        assert!(p.unusable.is_empty());
    }

    #[test]
    fn operator_v6_address_is_never_touched() {
        let mut a = node_addrs();
        let mut op = addr("2001:db8:1::100", 64, 1, false);
        op.state = AddrState::DadFailed;
        a.push(op);
        let p = plan(&wanted(&["2001:db8:1::100"]), &dual_routes(), &a);
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
        assert!(plan(&BTreeSet::new(), &dual_routes(), &a).is_noop());
    }
}
