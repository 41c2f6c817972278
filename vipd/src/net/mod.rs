//! The kernel's network state as vipd sees it: interfaces, the main IPv4 and
//! IPv6 routing tables, addresses of both families (with vipd's ownership
//! mark), and the frames that announce a VIP (gratuitous ARP, unsolicited
//! Neighbor Advertisements). Pure types and lookups live here; `netlink`
//! talks to the kernel, `sysctl` reads and writes its per-interface settings.

pub mod garp;
pub mod ndp;
pub mod netlink;
pub(crate) mod probe;
pub mod sockdiag;
pub mod sysctl;
pub mod tickle;

use std::net::IpAddr;

use serde::Serialize;

use crate::vip::Vip;

/// IFA_PROTO value that marks an address as added by vipd. vipd only ever
/// removes addresses carrying it (docs/DESIGN.md, facts: netlink).
pub const VIPD_ADDR_PROTO: u8 = 0x76;

/// The main routing table's id.
pub(crate) const RT_TABLE_MAIN: u32 = 254;

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub mac: [u8; 6],
    /// Administratively up and with carrier (IFF_UP and IFF_RUNNING/LOWER_UP).
    pub up: bool,
}

/// A unicast route of the main table (IPv4 or IPv6: `dst` says which).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix_len: u8,
    /// Output interface; a route without one (blackhole, multipath) is kept
    /// with 0 and never chosen.
    pub ifindex: u32,
    pub gateway: Option<IpAddr>,
    pub metric: u32,
}

/// Whether an address can be used, as far as duplicate address detection
/// goes (IPv6; an IPv4 address is always `Usable`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AddrState {
    #[default]
    Usable,
    /// `tentative`: DAD runs (or will, once the link is up); the kernel
    /// neither answers for the address nor sends from it meanwhile.
    Tentative,
    /// `tentative` with IFA_F_NODAD: waits for the link to come up, then is
    /// usable at once, without DAD.
    AwaitingLink,
    /// `dadfailed`: another host answered for the address; the kernel will
    /// never use it.
    DadFailed,
}

/// An address on an interface (IPv4 or IPv6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Address {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// Carries vipd's mark ([`VIPD_ADDR_PROTO`]): vipd added it.
    pub owned: bool,
    pub state: AddrState,
    /// IFA_F_SECONDARY (IPv4 only): another address of its subnet on its
    /// interface is the primary one.
    pub secondary: bool,
}

/// The secondaries rule, decided here only: whether removing `a` would take
/// other addresses with it. It does when `a` is the primary IPv4 address of
/// its subnet on its interface and `all` holds secondaries of that subnet:
/// with `promote_secondaries=0` the kernel deletes them along with it
/// (docs/DESIGN.md, facts). IPv6 has no primary addresses.
pub(crate) fn guards_secondaries(a: &Address, all: &[Address]) -> bool {
    a.addr.is_ipv4()
        && !a.secondary
        && all.iter().any(|b| {
            b.secondary
                && b.ifindex == a.ifindex
                && b.prefix_len == a.prefix_len
                && in_prefix(b.addr, a.addr, a.prefix_len)
        })
}

/// Where a VIP belongs on this node: the interface and prefix length that
/// the main table's longest-prefix match gives: a VIP is configured by
/// address alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Placement {
    pub ifindex: u32,
    pub prefix_len: u8,
}

/// The main routing tables, IPv4 and IPv6 together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    pub routes: Vec<Route>,
}

impl RouteTable {
    pub(crate) fn new(routes: Vec<Route>) -> Self {
        RouteTable { routes }
    }

    /// Longest-prefix match for `vip` over the routes of its family (the
    /// IPv4 or the IPv6 main table). A match on the default route alone
    /// places the VIP as a host address (/32, /128) on the default route's
    /// interface; ties between equal prefixes go to the lowest metric, then
    /// lowest ifindex, so the answer does not depend on dump order.
    pub fn placement(&self, vip: Vip) -> Option<Placement> {
        let ip = vip.ip();
        let best = self
            .routes
            .iter()
            .filter(|r| r.ifindex != 0 && in_prefix(ip, r.dst, r.prefix_len))
            .min_by_key(|r| (std::cmp::Reverse(r.prefix_len), r.metric, r.ifindex))?;
        Some(Placement {
            ifindex: best.ifindex,
            prefix_len: if best.prefix_len == 0 {
                vip.host_prefix_len()
            } else {
                best.prefix_len
            },
        })
    }
}

/// Whether `ip` lies in `net/prefix_len`; never across families, and never
/// for a prefix longer than the family's addresses.
pub(crate) fn in_prefix(ip: IpAddr, net: IpAddr, prefix_len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if prefix_len <= 32 => {
            let mask = prefix_mask(prefix_len);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if prefix_len <= 128 => {
            let mask = prefix_mask_v6(prefix_len);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// The IPv4 netmask of a prefix length, host order.
pub(crate) fn prefix_mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len.min(32)))
    }
}

/// The IPv6 netmask of a prefix length, host order.
pub(crate) fn prefix_mask_v6(prefix_len: u8) -> u128 {
    if prefix_len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix_len.min(128)))
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

    /// Checks where `t` places each VIP: (VIP, ifindex, prefix length).
    fn assert_placements(t: &RouteTable, cases: &[(&str, u32, u8)]) {
        for &(v, ifindex, prefix_len) in cases {
            let want = Placement {
                ifindex,
                prefix_len,
            };
            assert_eq!(t.placement(vip(v)), Some(want), "{v}");
        }
    }

    #[test]
    fn longest_prefix_wins_over_a_wider_route() {
        // A /16 via if1 and a /24 inside it via if2, in lab ranges: a VIP in
        // the /24 goes on if2, one elsewhere in the /16 on if1.
        let t = RouteTable::new(vec![
            route("198.51.0.0", 16, 1),
            route("198.51.100.0", 24, 2),
        ]);
        assert_placements(&t, &[("198.51.100.7", 2, 24), ("198.51.1.7", 1, 16)]);
    }

    #[test]
    fn default_route_only_gives_slash_32() {
        let t = RouteTable::new(vec![route("0.0.0.0", 0, 3), route("192.0.2.0", 24, 1)]);
        assert_placements(&t, &[("203.0.113.9", 3, 32), ("192.0.2.9", 1, 24)]);
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
        assert_placements(&t, &[("192.0.2.50", 2, 32), ("192.0.2.51", 1, 24)]);
    }

    #[test]
    fn v6_longest_prefix_on_link_64_beside_a_longer_route_elsewhere() {
        // if1 carries the on-link /64 (kernel prefix route, metric 256);
        // a /80 inside it is routed out of if2; the default goes via if3.
        let mut onlink = route("2001:db8:1::", 64, 1);
        onlink.metric = 256;
        let mut longer = route("2001:db8:1::", 80, 2);
        longer.metric = 1024;
        let mut default = route("::", 0, 3);
        default.gateway = Some("2001:db8:ff::1".parse().unwrap());
        let t = RouteTable::new(vec![
            default,
            onlink,
            longer,
            // IPv4 routes never match an IPv6 VIP, not even the default.
            route("0.0.0.0", 0, 4),
        ]);
        assert_placements(
            &t,
            &[
                ("2001:db8:1::7", 2, 80),
                ("2001:db8:1:0:1::7", 1, 64),
                // Default route only: a /128 on its interface.
                ("2001:db8:2::7", 3, 128),
                ("192.0.2.7", 4, 32),
            ],
        );
    }

    #[test]
    fn v6_without_a_route_is_none_and_families_never_mix() {
        let t = RouteTable::new(vec![route("0.0.0.0", 0, 1), route("2001:db8:1::", 64, 2)]);
        assert_eq!(t.placement(vip("2001:db8:2::7")), None);
        let t = RouteTable::new(vec![route("::", 0, 1)]);
        assert_eq!(t.placement(vip("192.0.2.7")), None);
        assert!(!in_prefix(
            "192.0.2.1".parse().unwrap(),
            "::".parse().unwrap(),
            0
        ));
        assert!(!in_prefix(
            "2001:db8::1".parse().unwrap(),
            "2001:db8::".parse().unwrap(),
            129
        ));
        assert!(in_prefix(
            "2001:db8::1".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
            128
        ));
    }

    #[test]
    fn masks() {
        assert_eq!(prefix_mask_v6(0), 0);
        assert_eq!(prefix_mask_v6(64), u128::MAX << 64);
        assert_eq!(prefix_mask_v6(128), u128::MAX);
        assert_eq!(prefix_mask(0), 0);
        assert_eq!(prefix_mask(24), 0xffff_ff00);
        assert_eq!(prefix_mask(32), u32::MAX);
        assert_eq!(format_mac(&[0x02, 0, 0, 0, 0xab, 1]), "02:00:00:00:ab:01");
    }
}
