//! The kernel's network state as vipd sees it: interfaces, the main IPv4
//! routing table, IPv4 addresses (with vipd's ownership mark), and the
//! gratuitous ARP frames that announce a VIP. Pure types and lookups live
//! here; `netlink` talks to the kernel.

pub mod garp;
pub mod netlink;

use std::net::Ipv4Addr;

use serde::Serialize;

use crate::vip::Vip;

/// IFA_PROTO value that marks an address as added by vipd. vipd only ever
/// removes addresses carrying it (docs/DESIGN.md, facts: netlink).
pub const VIPD_ADDR_PROTO: u8 = 0x76;

/// The main routing table's id.
pub const RT_TABLE_MAIN: u32 = 254;

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub mac: [u8; 6],
    /// Administratively up and with carrier (IFF_UP and IFF_RUNNING/LOWER_UP).
    pub up: bool,
}

/// An IPv4 route of the main table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    /// Output interface; a route without one (blackhole, multipath) is kept
    /// with 0 and never chosen.
    pub ifindex: u32,
    pub gateway: Option<Ipv4Addr>,
    pub metric: u32,
}

/// An IPv4 address on an interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Address {
    pub ifindex: u32,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    /// Carries vipd's mark ([`VIPD_ADDR_PROTO`]): vipd added it.
    pub owned: bool,
}

/// Where a VIP belongs on this node: the interface and prefix length that
/// the main table's longest-prefix match gives (R4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Placement {
    pub ifindex: u32,
    pub prefix_len: u8,
}

/// The main IPv4 routing table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    pub routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        RouteTable { routes }
    }

    /// Longest-prefix match for `vip` (R4). A match on the default route
    /// alone places the VIP as /32 on the default route's interface; ties
    /// between equal prefixes go to the lowest metric, then lowest ifindex,
    /// so the answer does not depend on dump order.
    pub fn placement(&self, vip: Vip) -> Option<Placement> {
        let ip = u32::from(vip.addr());
        let best = self
            .routes
            .iter()
            .filter(|r| r.ifindex != 0 && r.prefix_len <= 32)
            .filter(|r| {
                let mask = prefix_mask(r.prefix_len);
                ip & mask == u32::from(r.dst) & mask
            })
            .min_by_key(|r| (std::cmp::Reverse(r.prefix_len), r.metric, r.ifindex))?;
        Some(Placement {
            ifindex: best.ifindex,
            prefix_len: if best.prefix_len == 0 {
                32
            } else {
                best.prefix_len
            },
        })
    }
}

/// The netmask of a prefix length, host order.
pub fn prefix_mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len.min(32)))
    }
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, prefix_len: u8, ifindex: u32) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            prefix_len,
            ifindex,
            gateway: None,
            metric: 0,
        }
    }

    fn vip(s: &str) -> Vip {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins_as_in_r4() {
        // R4's example, in lab ranges: a /16 via if1 and a /24 inside it via if2.
        let t = RouteTable::new(vec![
            route("198.51.0.0", 16, 1),
            route("198.51.100.0", 24, 2),
        ]);
        assert_eq!(
            t.placement(vip("198.51.100.7")),
            Some(Placement {
                ifindex: 2,
                prefix_len: 24
            })
        );
        assert_eq!(
            t.placement(vip("198.51.1.7")),
            Some(Placement {
                ifindex: 1,
                prefix_len: 16
            })
        );
    }

    #[test]
    fn default_route_only_gives_slash_32() {
        let t = RouteTable::new(vec![route("0.0.0.0", 0, 3), route("192.0.2.0", 24, 1)]);
        assert_eq!(
            t.placement(vip("203.0.113.9")),
            Some(Placement {
                ifindex: 3,
                prefix_len: 32
            })
        );
        assert_eq!(
            t.placement(vip("192.0.2.9")),
            Some(Placement {
                ifindex: 1,
                prefix_len: 24
            })
        );
    }

    #[test]
    fn no_match_is_none() {
        let t = RouteTable::new(vec![route("192.0.2.0", 24, 1)]);
        assert_eq!(t.placement(vip("203.0.113.9")), None);
        assert_eq!(RouteTable::default().placement(vip("192.0.2.1")), None);
    }

    #[test]
    fn ties_are_deterministic_and_interfaceless_routes_ignored() {
        let mut a = route("192.0.2.0", 24, 5);
        a.metric = 100;
        let b = route("192.0.2.0", 24, 7);
        let blackhole = route("192.0.2.0", 25, 0);
        let t1 = RouteTable::new(vec![a.clone(), b.clone(), blackhole.clone()]);
        let t2 = RouteTable::new(vec![blackhole, b, a]);
        let want = Some(Placement {
            ifindex: 7,
            prefix_len: 24,
        });
        assert_eq!(t1.placement(vip("192.0.2.1")), want);
        assert_eq!(t2.placement(vip("192.0.2.1")), want);
    }

    #[test]
    fn host_route_matches_exactly() {
        let t = RouteTable::new(vec![route("192.0.2.0", 24, 1), route("192.0.2.50", 32, 2)]);
        assert_eq!(
            t.placement(vip("192.0.2.50")),
            Some(Placement {
                ifindex: 2,
                prefix_len: 32
            })
        );
        assert_eq!(
            t.placement(vip("192.0.2.51")),
            Some(Placement {
                ifindex: 1,
                prefix_len: 24
            })
        );
    }

    #[test]
    fn masks() {
        assert_eq!(prefix_mask(0), 0);
        assert_eq!(prefix_mask(24), 0xffff_ff00);
        assert_eq!(prefix_mask(32), u32::MAX);
        assert_eq!(format_mac(&[0x02, 0, 0, 0, 0xab, 1]), "02:00:00:00:ab:01");
    }
}
