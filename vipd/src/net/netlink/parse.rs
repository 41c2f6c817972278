//! Netlink messages read into vipd's types: links, main-table routes,
//! addresses with their state and vipd's mark; and the attributes vipd
//! writes on an IPv6 VIP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtnetlink::packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressFlags, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};

use crate::net::{AddrState, Address, Link, RT_TABLE_MAIN, Route, VIPD_ADDR_PROTO};

pub(super) fn link_of(message: &LinkMessage) -> Link {
    let mut name = String::new();
    let mut mac = [0u8; 6];
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name.clone_from(n),
            LinkAttribute::Address(bytes) if bytes.len() == 6 => mac.copy_from_slice(bytes),
            _ => {}
        }
    }
    let flags = message.header.flags;
    Link {
        ifindex: message.header.index,
        name,
        mac,
        up: flags.contains(LinkFlags::Up)
            && flags.intersects(LinkFlags::Running | LinkFlags::LowerUp),
    }
}

/// IFA_FLAGS of every IPv6 VIP: no DAD, no prefix route of its own.
pub(super) fn vip6_flags() -> AddressFlags {
    AddressFlags::Nodad | AddressFlags::Noprefixroute
}

/// A main-table unicast route of either family. The IPv6 main table also
/// holds the kernel's link-local prefixes (`fe80::/64`, harmless: no VIP
/// is link-local); local, multicast and anycast routes live in the local
/// table or have other types and are skipped.
pub(super) fn main_unicast_route(message: &RouteMessage) -> Option<Route> {
    let mut dst = match message.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    if message.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(message.header.table);
    let mut ifindex = 0;
    let mut gateway = None;
    let mut metric = 0;
    for attribute in &message.attributes {
        match attribute {
            // The header holds only 8 bits of the table id.
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) if dst.is_ipv4() => {
                dst = IpAddr::V4(*a);
            }
            RouteAttribute::Destination(RouteAddress::Inet6(a)) if dst.is_ipv6() => {
                dst = IpAddr::V6(*a);
            }
            RouteAttribute::Oif(i) => ifindex = *i,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gateway = Some(IpAddr::V6(*g)),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    (table == RT_TABLE_MAIN).then_some(Route {
        dst,
        prefix_len: message.header.destination_prefix_length,
        ifindex,
        gateway,
        metric,
    })
}

pub(super) fn address_of(message: &AddressMessage, mark: u8) -> Option<Address> {
    let v6 = match message.header.family {
        AddressFamily::Inet => false,
        AddressFamily::Inet6 => true,
        _ => return None,
    };
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
    // point-to-point links and equal to it elsewhere (IPv6 sends IFA_LOCAL
    // only on point-to-point links).
    let mut local = None;
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(a) if a.is_ipv6() == v6 => local = Some(*a),
            AddressAttribute::Address(a) if a.is_ipv6() == v6 => address = Some(*a),
            _ => {}
        }
    }
    let addr = local.or(address)?;
    Some(Address {
        ifindex: message.header.index,
        addr,
        prefix_len: message.header.prefix_len,
        owned: is_marked(message, mark),
        state: state_of(&flags_of(message)),
        // The same bit means a temporary address in IPv6.
        secondary: addr.is_ipv4() && is_secondary(message),
    })
}

/// The address's flags: IFA_FLAGS (32 bits) when present, else the
/// header's 8-bit copy.
fn flags_of(message: &AddressMessage) -> AddressFlags {
    message
        .attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Flags(f) => Some(*f),
            _ => None,
        })
        .unwrap_or_else(|| AddressFlags::from_bits_retain(u32::from(message.header.flags.bits())))
}

fn state_of(flags: &AddressFlags) -> AddrState {
    if flags.contains(AddressFlags::Dadfailed) {
        AddrState::DadFailed
    } else if flags.contains(AddressFlags::Tentative) {
        if flags.contains(AddressFlags::Nodad) {
            AddrState::AwaitingLink
        } else {
            AddrState::Tentative
        }
    } else {
        AddrState::Usable
    }
}

pub(super) fn is_marked(message: &AddressMessage, mark: u8) -> bool {
    message
        .attributes
        .iter()
        .any(|a| matches!(a, AddressAttribute::Protocol(p) if u8::from(*p) == mark))
}

pub(super) fn is_secondary(message: &AddressMessage) -> bool {
    flags_of(message).contains(AddressFlags::Secondary)
}

/// [`crate::net::guards_secondaries`] on `all`, a dump fresher than the plan's:
/// the removal is checked again right before it is made, so an address
/// added since the plan is guarded too.
pub(super) fn guards_secondaries_now(message: &AddressMessage, all: &[AddressMessage]) -> bool {
    // Ownership plays no part here: any mark does.
    let Some(this) = address_of(message, VIPD_ADDR_PROTO) else {
        return false;
    };
    let all: Vec<Address> = all
        .iter()
        .filter_map(|m| address_of(m, VIPD_ADDR_PROTO))
        .collect();
    crate::net::guards_secondaries(&this, &all)
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::address::AddressProtocol;

    use super::*;

    #[test]
    fn dad_state_comes_from_the_flags() {
        let f = |flags: AddressFlags| state_of(&flags);
        assert_eq!(f(AddressFlags::Permanent), AddrState::Usable);
        assert_eq!(f(AddressFlags::empty()), AddrState::Usable);
        assert_eq!(f(AddressFlags::Tentative), AddrState::Tentative);
        assert_eq!(
            f(AddressFlags::Tentative | AddressFlags::Nodad),
            AddrState::AwaitingLink
        );
        assert_eq!(
            f(AddressFlags::Tentative | AddressFlags::Dadfailed),
            AddrState::DadFailed
        );
        assert!(vip6_flags().contains(AddressFlags::Nodad | AddressFlags::Noprefixroute));
    }

    #[test]
    fn v6_address_messages_parse_with_their_flags_and_mark() {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet6;
        m.header.index = 3;
        m.header.prefix_len = 64;
        let ip: IpAddr = "2001:db8:1::100".parse().unwrap();
        m.attributes.push(AddressAttribute::Address(ip));
        m.attributes.push(AddressAttribute::Flags(
            AddressFlags::Tentative | AddressFlags::Dadfailed,
        ));
        m.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::Other(
                VIPD_ADDR_PROTO,
            )));
        // Another instance's mark: the same address, not ours.
        assert!(address_of(&m, 130).is_some_and(|a| !a.owned));
        assert_eq!(
            address_of(&m, VIPD_ADDR_PROTO),
            Some(Address {
                ifindex: 3,
                addr: ip,
                prefix_len: 64,
                owned: true,
                state: AddrState::DadFailed,
                secondary: false,
            })
        );
        // An IPv4 attribute in an IPv6 message is no address of it.
        m.attributes[0] = AddressAttribute::Address("192.0.2.1".parse().unwrap());
        assert_eq!(address_of(&m, VIPD_ADDR_PROTO), None);
    }

    #[test]
    fn v6_routes_parse_and_non_unicast_is_skipped() {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet6;
        m.header.kind = RouteType::Unicast;
        m.header.destination_prefix_length = 64;
        m.attributes.push(RouteAttribute::Table(RT_TABLE_MAIN));
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet6(
                "2001:db8:1::".parse().unwrap(),
            )));
        m.attributes.push(RouteAttribute::Oif(2));
        m.attributes.push(RouteAttribute::Priority(256));
        assert_eq!(
            main_unicast_route(&m),
            Some(Route {
                dst: "2001:db8:1::".parse().unwrap(),
                prefix_len: 64,
                ifindex: 2,
                gateway: None,
                metric: 256,
            })
        );
        // The default route has no destination attribute: `::`.
        let mut d = m.clone();
        d.header.destination_prefix_length = 0;
        d.attributes
            .retain(|a| !matches!(a, RouteAttribute::Destination(_)));
        d.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet6(
                "2001:db8:1::1".parse().unwrap(),
            )));
        let r = main_unicast_route(&d).unwrap();
        assert_eq!(r.dst, "::".parse::<IpAddr>().unwrap());
        assert_eq!(r.gateway, Some("2001:db8:1::1".parse().unwrap()));
        for kind in [RouteType::Local, RouteType::Multicast, RouteType::Anycast] {
            let mut x = m.clone();
            x.header.kind = kind;
            assert_eq!(main_unicast_route(&x), None, "{kind:?}");
        }
        let mut other_table = m.clone();
        other_table.attributes[0] = RouteAttribute::Table(255);
        assert_eq!(main_unicast_route(&other_table), None);
    }
}
