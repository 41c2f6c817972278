//! The Internet checksum (RFC 1071) of the frames the lab builds and reads,
//! and the pseudo-headers it covers for TCP and ICMPv6. Written apart from
//! the agent's own on purpose: a test must not share the code it checks.

use std::net::{Ipv4Addr, Ipv6Addr};

/// ICMPv6's next-header number, which its pseudo-header carries.
const IPPROTO_ICMPV6: u8 = 58;

/// The Internet checksum of the concatenated `parts`, each of an even
/// length but the last. Over a message whose checksum field is zero it is
/// the value to put there; over one carrying a correct checksum, 0.
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for w in part.chunks(2) {
            let hi = u32::from(w[0]) << 8;
            let lo = w.get(1).map_or(0, |&b| u32::from(b));
            sum += hi | lo;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The IPv4 pseudo-header a TCP or UDP checksum covers: the addresses, the
/// protocol and the segment's length.
pub fn pseudo_header4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    p
}

/// The IPv6 pseudo-header an upper-layer checksum covers (RFC 8200 8.1).
pub fn pseudo_header6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, next]);
    p
}

/// The checksum of the ICMPv6 message `icmp` from `src` to `dst`: the value
/// for its checksum field when that is zero, 0 when the message is correct.
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
    internet_checksum(&[&pseudo_header6(src, dst, IPPROTO_ICMPV6, icmp.len()), icmp])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unsolicited Neighbor Advertisement of 2001:db8::100 to ff02::1
    /// with a target link-layer address option: the ICMPv6 message, its
    /// checksum 0x78ed (computed apart, by hand from RFC 1071) in place.
    #[rustfmt::skip]
    const NA: [u8; 32] = [
        0x88, 0, 0x78, 0xed, 0x20, 0, 0, 0,
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
        2, 1, 2, 0, 0x5e, 0x10, 0x20, 0x30,
    ];

    #[test]
    fn icmpv6_checksum_of_a_known_advertisement() {
        let src: Ipv6Addr = "2001:db8::100".parse().unwrap();
        let dst: Ipv6Addr = "ff02::1".parse().unwrap();
        assert_eq!(
            icmpv6_checksum(src, dst, &NA),
            0,
            "a correct message sums to 0"
        );
        let mut zeroed = NA;
        zeroed[2..4].fill(0);
        assert_eq!(icmpv6_checksum(src, dst, &zeroed), 0x78ed);
        // Every address byte is covered: another source or destination,
        // or a flipped bit anywhere, no longer sums to 0.
        let other: Ipv6Addr = "2001:db8::101".parse().unwrap();
        assert_ne!(icmpv6_checksum(other, dst, &NA), 0);
        assert_ne!(icmpv6_checksum(src, other, &NA), 0);
        for i in 0..NA.len() {
            let mut bad = NA;
            bad[i] ^= 0x01;
            assert_ne!(
                icmpv6_checksum(src, dst, &bad),
                0,
                "bit flipped in byte {i}"
            );
        }
    }

    #[test]
    fn internet_checksum_of_a_known_ipv4_header() {
        // The textbook header 192.168.0.1 -> 192.168.0.199, checksum 0xb861.
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&[&header]), 0);
        header[10..12].fill(0);
        assert_eq!(internet_checksum(&[&header]), 0xb861);
        // Split anywhere on an even boundary, the sum is the same.
        assert_eq!(internet_checksum(&[&header[..8], &header[8..]]), 0xb861);
    }

    #[test]
    fn a_carry_out_of_the_top_bit_is_added_back() {
        // 0xffff + 0x0001 = 0x10000: ones' complement addition folds the
        // carry in (0x0001), so the checksum is !0x0001.
        assert_eq!(internet_checksum(&[&[0xff, 0xff, 0x00, 0x01]]), 0xfffe);
        // Many carries: eight words of 0xffff sum to 0xffff, checksum 0.
        assert_eq!(internet_checksum(&[&[0xff; 16]]), 0);
    }

    #[test]
    fn an_odd_length_is_padded_with_a_zero() {
        assert_eq!(internet_checksum(&[&[0x12, 0x34, 0x56]]), !0x6834);
        assert_eq!(internet_checksum(&[]), 0xffff);
    }
}
