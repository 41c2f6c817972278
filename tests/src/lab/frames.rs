//! The frames the lab reads off the wire: Ethernet + ARP, and Ethernet +
//! IPv6 + Neighbor Discovery, parsed field by field; MAC addresses as `ip`
//! prints them.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::checksum::icmpv6_checksum;

/// A gratuitous ARP or an unsolicited Neighbor Advertisement: how a node
/// announces that an address (a VIP) is now at its MAC.
pub fn is_announcement(frame: &[u8]) -> bool {
    ArpFrame::parse(frame).is_some_and(|a| a.is_gratuitous())
        || NdpFrame::parse(frame).is_some_and(|n| n.is_unsolicited_na())
}

/// Ethernet + ARP (IPv4 over Ethernet) fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpFrame {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    /// 1 request, 2 reply.
    pub op: u16,
    pub sha: [u8; 6],
    pub spa: Ipv4Addr,
    pub tha: [u8; 6],
    pub tpa: Ipv4Addr,
}

impl ArpFrame {
    pub const REQUEST: u16 = 1;
    pub const REPLY: u16 = 2;

    pub fn parse(b: &[u8]) -> Option<ArpFrame> {
        if b.len() < 42 || b[12..14] != [0x08, 0x06] || b[14..20] != [0, 1, 8, 0, 6, 4] {
            return None;
        }
        let mac = |at: usize| -> [u8; 6] { b[at..at + 6].try_into().expect("6 bytes") };
        let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
        Some(ArpFrame {
            eth_dst: mac(0),
            eth_src: mac(6),
            op: u16::from_be_bytes([b[20], b[21]]),
            sha: mac(22),
            spa: ip(28),
            tha: mac(32),
            tpa: ip(38),
        })
    }

    /// Sender and target protocol address are equal (gratuitous ARP, either form).
    pub fn is_gratuitous(&self) -> bool {
        self.spa == self.tpa
    }
}

/// Ethernet + IPv6 + a Neighbor Solicitation (135) or Advertisement (136),
/// with no extension headers (what NDP senders use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NdpFrame {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    /// 135 solicitation, 136 advertisement.
    pub icmp_type: u8,
    pub code: u8,
    /// NA flags (all false in a solicitation).
    pub router: bool,
    pub solicited: bool,
    pub override_flag: bool,
    pub target: Ipv6Addr,
    /// The link-layer address option: target's in an NA (type 2), source's
    /// in an NS (type 1).
    pub lladdr: Option<[u8; 6]>,
    /// The ICMPv6 checksum over the pseudo-header verifies.
    pub checksum_ok: bool,
}

impl NdpFrame {
    pub const SOLICITATION: u8 = 135;
    pub const ADVERTISEMENT: u8 = 136;

    pub fn parse(b: &[u8]) -> Option<NdpFrame> {
        if b.len() < 14 + 40 + 24 || b[12..14] != [0x86, 0xdd] || b[14] >> 4 != 6 || b[20] != 58 {
            return None;
        }
        let payload_len = usize::from(u16::from_be_bytes([b[18], b[19]]));
        let icmp = b.get(54..54 + payload_len)?;
        let icmp_type = icmp[0];
        if icmp.len() < 24 || !matches!(icmp_type, Self::SOLICITATION | Self::ADVERTISEMENT) {
            return None;
        }
        let mac = |at: usize| -> [u8; 6] { b[at..at + 6].try_into().expect("6 bytes") };
        let ip6 = |s: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(s).expect("16 bytes"));
        let (src, dst) = (ip6(&b[22..38]), ip6(&b[38..54]));
        let want_option = if icmp_type == Self::ADVERTISEMENT {
            2
        } else {
            1
        };
        let mut lladdr = None;
        let mut off = 24;
        while off + 8 <= icmp.len() {
            let len = usize::from(icmp[off + 1]) * 8;
            if len == 0 || off + len > icmp.len() {
                break;
            }
            if icmp[off] == want_option && len == 8 {
                lladdr = Some(icmp[off + 2..off + 8].try_into().expect("6 bytes"));
            }
            off += len;
        }
        let flags = icmp[4];
        Some(NdpFrame {
            eth_dst: mac(0),
            eth_src: mac(6),
            src,
            dst,
            hop_limit: b[21],
            icmp_type,
            code: icmp[1],
            router: icmp_type == Self::ADVERTISEMENT && flags & 0x80 != 0,
            solicited: icmp_type == Self::ADVERTISEMENT && flags & 0x40 != 0,
            override_flag: icmp_type == Self::ADVERTISEMENT && flags & 0x20 != 0,
            target: ip6(&icmp[8..24]),
            lladdr,
            checksum_ok: icmpv6_checksum(src, dst, icmp) == 0,
        })
    }

    /// An unsolicited advertisement (as vipd announces a VIP).
    pub fn is_unsolicited_na(&self) -> bool {
        self.icmp_type == Self::ADVERTISEMENT && !self.solicited
    }
}

/// `aa:bb:cc:dd:ee:ff`, the form `ip` prints.
pub fn fmt_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `aa:bb:cc:dd:ee:ff` (as `ip` prints it) as bytes.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| (b.len() == 2).then(|| u8::from_str_radix(b, 16).ok())?)
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Instant;

    use super::*;
    use crate::lab::CapturedFrame;

    #[test]
    fn parses_arp_frames() {
        let mut f = vec![0xff; 6];
        f.extend([2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend([
            2, 0, 0, 0, 0, 1, 192, 0, 2, 11, 0, 0, 0, 0, 0, 0, 192, 0, 2, 12,
        ]);
        let a = ArpFrame::parse(&f).expect("an ARP frame");
        assert_eq!(a.op, ArpFrame::REQUEST);
        assert_eq!(a.spa, Ipv4Addr::new(192, 0, 2, 11));
        assert_eq!(a.tpa, Ipv4Addr::new(192, 0, 2, 12));
        assert_eq!(fmt_mac(a.sha), "02:00:00:00:00:01");
        assert!(!a.is_gratuitous());
        assert!(ArpFrame::parse(&f[..41]).is_none());
    }

    #[test]
    fn macs_parse_as_ip_prints_them() {
        let m = [2, 0, 0x5e, 0x10, 0x20, 0xff];
        assert_eq!(parse_mac(&fmt_mac(m)), Some(m));
        assert_eq!(parse_mac("02:00:5E:10:20:FF"), Some(m));
        assert_eq!(parse_mac("02:00:5e:10:20"), None);
        assert_eq!(parse_mac("02:00:5e:10:20:ff:01"), None);
        assert_eq!(parse_mac("02:00:5e:10:20:f"), None);
        assert_eq!(parse_mac("02:00:5e:10:20:gg"), None);
        assert_eq!(parse_mac(""), None);
    }

    #[test]
    fn announcements_of_either_family() {
        let frame = |bytes: Vec<u8>| CapturedFrame {
            at: Instant::now(),
            outgoing: false,
            bytes,
        };
        let mac = [2, 0, 0, 0, 0, 1];
        let arp = |spa: [u8; 4], tpa: [u8; 4]| {
            let mut f = vec![0xff; 6];
            f.extend(mac);
            f.extend([0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
            f.extend(mac);
            f.extend(spa);
            f.extend([0; 6]);
            f.extend(tpa);
            f
        };
        let v4: IpAddr = "192.0.2.100".parse().unwrap();
        let garp = frame(arp([192, 0, 2, 100], [192, 0, 2, 100]));
        assert_eq!(garp.announces(v4), Some(mac));
        assert!(is_announcement(&garp.bytes));
        assert_eq!(garp.announces("192.0.2.101".parse().unwrap()), None);
        assert_eq!(garp.announces("2001:db8::100".parse().unwrap()), None);
        let request = frame(arp([192, 0, 2, 50], [192, 0, 2, 100]));
        assert_eq!(request.announces(v4), None);
        assert!(!is_announcement(&request.bytes));

        let mut na = unsolicited_na();
        let v6: IpAddr = "2001:db8::100".parse().unwrap();
        assert_eq!(
            frame(na.clone()).announces(v6),
            Some([2, 0, 0x5e, 0x10, 0x20, 0x30])
        );
        assert!(is_announcement(&na));
        assert_eq!(
            frame(na.clone()).announces("2001:db8::101".parse().unwrap()),
            None
        );
        assert_eq!(frame(na.clone()).announces(v4), None);
        // Solicited (an answer to an NS): not an announcement.
        na[58] |= 0x40;
        assert_eq!(frame(na.clone()).announces(v6), None);
        assert!(!is_announcement(&na));
    }

    #[rustfmt::skip]
    fn unsolicited_na() -> Vec<u8> {
        vec![
            0x33, 0x33, 0, 0, 0, 1, 2, 0, 0x5e, 0x10, 0x20, 0x30, 0x86, 0xdd,
            0x60, 0, 0, 0, 0, 0x20, 58, 255,
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
            0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
            0x88, 0, 0x78, 0xed, 0x20, 0, 0, 0,
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
            2, 1, 2, 0, 0x5e, 0x10, 0x20, 0x30,
        ]
    }

    #[test]
    fn parses_an_unsolicited_na() {
        let mut f = unsolicited_na();
        let n = NdpFrame::parse(&f).expect("an NA");
        let vip: Ipv6Addr = "2001:db8::100".parse().unwrap();
        assert_eq!(
            (n.src, n.target, n.dst),
            (vip, vip, "ff02::1".parse().unwrap())
        );
        assert_eq!(n.hop_limit, 255);
        assert!(n.is_unsolicited_na() && n.override_flag && !n.router);
        assert_eq!(n.lladdr, Some([2, 0, 0x5e, 0x10, 0x20, 0x30]));
        assert!(n.checksum_ok);
        f[57] ^= 1;
        assert!(!NdpFrame::parse(&f).unwrap().checksum_ok);
        assert!(NdpFrame::parse(&f[..60]).is_none());
        f[20] = 17;
        assert!(NdpFrame::parse(&f).is_none(), "UDP is not NDP");
    }
}
