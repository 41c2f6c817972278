//! Unsolicited Neighbor Advertisements (RFC 4861 § 7.2.6): what tells an
//! IPv6 segment where a VIP lives, as gratuitous ARP does for IPv4: an IPv6
//! VIP is announced when added and on the sync rounds, like an IPv4 one.
//! Built with pnet_packet, sent on the same AF_PACKET socket as the ARP
//! frames ([`super::garp::GarpSocket`]).

use std::net::Ipv6Addr;

use pnet_base::MacAddr;
use pnet_packet::{
    Packet,
    ethernet::{EtherTypes, MutableEthernetPacket},
    icmpv6::{
        self, Icmpv6Code, Icmpv6Packet, Icmpv6Types,
        ndp::{MutableNeighborAdvertPacket, NdpOption, NdpOptionTypes, NeighborAdvertFlags},
    },
    ip::IpNextHeaderProtocols,
    ipv6::MutableIpv6Packet,
};

/// Ethernet (14) + IPv6 (40) + Neighbor Advertisement (24) + Target
/// Link-Layer Address option (8).
pub(crate) const NA_FRAME_LEN: usize = 86;

const ETH_HEADER_LEN: usize = 14;
const IPV6_HEADER_LEN: usize = 40;
const NA_LEN: usize = 24;
const TLLA_OPTION_LEN: usize = 8;

/// All-nodes multicast, where unsolicited advertisements go.
pub(crate) const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Its Ethernet address (33:33 + the group's low 32 bits, RFC 2464 § 7).
pub(crate) const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// NDP messages must arrive with hop limit 255, or receivers drop them
/// (RFC 4861 § 7.1.2): the proof they were not routed.
const NDP_HOP_LIMIT: u8 = 255;

/// One unsolicited Neighbor Advertisement for `vip` from `mac`: to
/// ff02::1, source and target the VIP, Override set, Solicited clear,
/// Router set only when `router` (the interface forwards), and a Target
/// Link-Layer Address option carrying `mac`.
pub fn na_frame(mac: [u8; 6], vip: Ipv6Addr, router: bool) -> [u8; NA_FRAME_LEN] {
    let mut frame = [0u8; NA_FRAME_LEN];
    {
        let mut eth =
            MutableEthernetPacket::new(&mut frame).expect("NA_FRAME_LEN holds an Ethernet header");
        eth.set_destination(MacAddr::from(ALL_NODES_MAC));
        eth.set_source(MacAddr::from(mac));
        eth.set_ethertype(EtherTypes::Ipv6);
    }
    {
        let mut ip = MutableIpv6Packet::new(&mut frame[ETH_HEADER_LEN..])
            .expect("NA_FRAME_LEN holds an IPv6 header");
        ip.set_version(6);
        ip.set_traffic_class(0);
        ip.set_flow_label(0);
        ip.set_payload_length((NA_LEN + TLLA_OPTION_LEN) as u16);
        ip.set_next_header(IpNextHeaderProtocols::Icmpv6);
        ip.set_hop_limit(NDP_HOP_LIMIT);
        // The VIP itself: an address of the sending interface, as Linux's
        // own unsolicited advertisements use (ndisc_send_unsol_na).
        ip.set_source(vip);
        ip.set_destination(ALL_NODES);
    }
    let icmp = &mut frame[ETH_HEADER_LEN + IPV6_HEADER_LEN..];
    {
        let mut na =
            MutableNeighborAdvertPacket::new(icmp).expect("NA_FRAME_LEN holds a Neighbor Advert");
        na.set_icmpv6_type(Icmpv6Types::NeighborAdvert);
        na.set_icmpv6_code(Icmpv6Code(0));
        let mut flags = NeighborAdvertFlags::Override;
        if router {
            flags |= NeighborAdvertFlags::Router;
        }
        na.set_flags(flags);
        na.set_target_addr(vip);
        na.set_options(&[NdpOption {
            option_type: NdpOptionTypes::TargetLLAddr,
            // In units of 8 bytes: type, length and the 6-byte MAC.
            length: 1,
            data: mac.to_vec(),
        }]);
    }
    let checksum = {
        let packet = Icmpv6Packet::new(icmp).expect("an ICMPv6 header");
        icmpv6::checksum(&packet, &vip, &ALL_NODES)
    };
    let mut na = MutableNeighborAdvertPacket::new(icmp).expect("a Neighbor Advert");
    na.set_checksum(checksum);
    debug_assert_eq!(na.packet().len(), NA_LEN + TLLA_OPTION_LEN);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];

    fn vip() -> Ipv6Addr {
        "2001:db8::100".parse().unwrap()
    }

    /// The Internet checksum (RFC 1071) of the IPv6 pseudo-header and an
    /// ICMPv6 message, written here independently of pnet.
    fn reference_checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
        let mut data = Vec::new();
        data.extend_from_slice(&src.octets());
        data.extend_from_slice(&dst.octets());
        data.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        data.extend_from_slice(&[0, 0, 0, 58]);
        data.extend_from_slice(icmp);
        if data.len() % 2 == 1 {
            data.push(0);
        }
        let mut sum: u32 = data
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[rustfmt::skip]
    fn want(router: bool) -> [u8; NA_FRAME_LEN] {
        // Checksum by hand: the 16-bit words of the pseudo-header are
        // src 2001+0db8+0100 = 2eb9, dst ff02+0001 = ff03, length 0020,
        // next header 003a; of the message 8800 (type 136, code 0), flags
        // 2000 (Override), target 2eb9, option 0201, MAC 0200+5e10+2030.
        // Sum 2_8710, folded 8712, complement 78ed. The Router flag adds
        // 8000: 3_0710, folded 0713, complement f8ec.
        let (flags, checksum) = if router { (0xa0, [0xf8, 0xec]) } else { (0x20, [0x78, 0xed]) };
        [
            0x33, 0x33, 0x00, 0x00, 0x00, 0x01, // eth dst: all-nodes multicast
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // eth src: our MAC
            0x86, 0xdd,                         // ethertype IPv6
            0x60, 0x00, 0x00, 0x00,             // version 6, class 0, flow 0
            0x00, 0x20,                         // payload length 32
            0x3a,                               // next header ICMPv6
            0xff,                               // hop limit 255
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00, // src: the VIP
            0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // dst ff02::1
            0x88, 0x00,                         // type 136 (NA), code 0
            checksum[0], checksum[1],
            flags, 0x00, 0x00, 0x00,            // R S O + reserved
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00, // target: the VIP
            0x02, 0x01,                         // option: target link-layer address, 8 bytes
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // our MAC
        ]
    }

    #[test]
    fn na_bytes_match_a_frame_written_by_hand() {
        assert_eq!(na_frame(MAC, vip(), false), want(false));
        assert_eq!(na_frame(MAC, vip(), true), want(true));
    }

    #[test]
    fn checksum_agrees_with_an_independent_computation() {
        for router in [false, true] {
            let frame = na_frame(MAC, vip(), router);
            let mut icmp = frame[54..].to_vec();
            let carried = u16::from_be_bytes([icmp[2], icmp[3]]);
            icmp[2] = 0;
            icmp[3] = 0;
            assert_eq!(reference_checksum(vip(), ALL_NODES, &icmp), carried);
            // Summed over with the checksum in place, a correct message
            // gives zero.
            assert_eq!(reference_checksum(vip(), ALL_NODES, &frame[54..]), 0);
        }
    }

    #[test]
    fn other_vips_and_macs_change_only_their_fields() {
        let other: Ipv6Addr = "2001:db8:0:1::7".parse().unwrap();
        let mac = [0x02, 0, 0, 0, 0, 0x99];
        let f = na_frame(mac, other, false);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[22..38], &other.octets());
        assert_eq!(&f[62..78], &other.octets());
        assert_eq!(&f[80..86], &mac);
        assert_eq!(f[21], 255, "hop limit");
        assert_eq!(f[58] & 0x40, 0, "Solicited is clear");
        let mut icmp = f[54..].to_vec();
        icmp[2..4].copy_from_slice(&[0, 0]);
        assert_eq!(
            reference_checksum(other, ALL_NODES, &icmp),
            u16::from_be_bytes([f[56], f[57]])
        );
    }
}
