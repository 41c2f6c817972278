//! A VIP is an IPv4 or IPv6 unicast address a cluster serves from one node;
//! both families go through the same placement, lease and announcements.
//! This module is the one place that decides what counts as a valid
//! VIP.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

/// A validated virtual IP: an IPv4 or IPv6 unicast address that can be
/// served. Ordered IPv4 first, then IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Vip(IpAddr);

/// Why a value is not a VIP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid VIP {value:?}: {reason}")]
pub struct InvalidVip {
    pub value: String,
    pub reason: &'static str,
}

impl Vip {
    /// Validates an IPv4 address as a VIP.
    pub fn new(addr: Ipv4Addr) -> Result<Self, InvalidVip> {
        let reason = if addr.is_unspecified() {
            "the unspecified address cannot be a VIP"
        } else if addr.is_loopback() {
            "a loopback address cannot be a VIP"
        } else if addr.is_multicast() {
            "a multicast address cannot be a VIP"
        } else if addr.is_broadcast() {
            "the broadcast address cannot be a VIP"
        } else if addr.is_link_local() {
            "a link-local address cannot be a VIP"
        } else if addr.octets()[0] >= 240 {
            "a reserved (class E) address cannot be a VIP"
        } else if addr.octets()[0] == 0 {
            "an address in 0.0.0.0/8 cannot be a VIP"
        } else {
            return Ok(Vip(IpAddr::V4(addr)));
        };
        Err(InvalidVip {
            value: addr.to_string(),
            reason,
        })
    }

    /// Validates an IPv6 address as a VIP.
    pub fn new_v6(addr: Ipv6Addr) -> Result<Self, InvalidVip> {
        let reason = if addr.is_unspecified() {
            "the unspecified address (::) cannot be a VIP"
        } else if addr.is_loopback() {
            "the loopback address (::1) cannot be a VIP"
        } else if addr.is_multicast() {
            "a multicast address (ff00::/8) cannot be a VIP"
        } else if addr.is_unicast_link_local() {
            "a link-local address (fe80::/10) cannot be a VIP"
        } else if addr.to_ipv4_mapped().is_some() {
            "an IPv4-mapped address (::ffff:0:0/96) cannot be a VIP: give the IPv4 address itself"
        } else {
            return Ok(Vip(IpAddr::V6(addr)));
        };
        Err(InvalidVip {
            value: addr.to_string(),
            reason,
        })
    }

    /// Validates an address of either family as a VIP.
    pub(crate) fn from_ip(addr: IpAddr) -> Result<Self, InvalidVip> {
        match addr {
            IpAddr::V4(a) => Vip::new(a),
            IpAddr::V6(a) => Vip::new_v6(a),
        }
    }

    pub fn ip(self) -> IpAddr {
        self.0
    }

    pub fn is_ipv6(self) -> bool {
        self.0.is_ipv6()
    }

    /// The IPv4 address, if this is an IPv4 VIP.
    pub fn v4(self) -> Option<Ipv4Addr> {
        match self.0 {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }

    /// The IPv6 address, if this is an IPv6 VIP.
    pub fn v6(self) -> Option<Ipv6Addr> {
        match self.0 {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }

    /// The IPv4 address's bytes, network order (the ARP maps' key).
    ///
    /// # Panics
    ///
    /// On an IPv6 VIP: callers that see both families filter with
    /// [`Vip::v4`] first. A made-up key would be worse than a crash: it
    /// would count or answer ARP for an address nobody configured.
    pub(crate) fn octets(self) -> [u8; 4] {
        match self.0 {
            IpAddr::V4(a) => a.octets(),
            IpAddr::V6(a) => panic!("Vip::octets() on IPv6 VIP {a}: use Vip::v4 or Vip::v6"),
        }
    }

    /// A host prefix of the VIP's family: 32 or 128.
    pub(crate) fn host_prefix_len(self) -> u8 {
        match self.0 {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }
}

impl FromStr for Vip {
    type Err = InvalidVip;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        let invalid = |reason| InvalidVip {
            value: s.to_string(),
            reason,
        };
        // Say plainly what is wrong with the common near misses instead of
        // passing the parser's terse error on.
        if trimmed.contains('/') {
            return Err(invalid(
                "a VIP is an address alone, without a prefix length (the route decides it)",
            ));
        }
        if trimmed.contains('%') {
            return Err(invalid(
                "a VIP is an address alone, without a zone (%interface)",
            ));
        }
        // Ipv4Addr's parser refuses leading zeros and short forms; Ipv6Addr's
        // refuses brackets and ports.
        let addr: IpAddr = trimmed.parse().map_err(|_| {
            invalid("not an IP address (IPv4 like 192.0.2.10, or IPv6 like 2001:db8::10)")
        })?;
        Vip::from_ip(addr).map_err(|e| InvalidVip {
            value: s.to_string(),
            ..e
        })
    }
}

impl TryFrom<String> for Vip {
    type Error = InvalidVip;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Vip> for String {
    fn from(v: Vip) -> String {
        v.0.to_string()
    }
}

impl From<Vip> for IpAddr {
    fn from(v: Vip) -> IpAddr {
        v.0
    }
}

impl fmt::Display for Vip {
    /// IPv6 in its canonical text form (RFC 5952: lower case, longest run
    /// of zeros compressed), so one VIP is always written one way.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Parses a comma-separated list of VIPs (`192.0.2.100,2001:db8::100`), as
/// the `--static-vips` flag takes them. Empty items are refused.
pub(crate) fn parse_vip_list(s: &str) -> Result<Vec<Vip>, InvalidVip> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    s.split(',').map(str::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_unicast() {
        for ok in [
            "192.0.2.100",
            "198.51.100.1",
            "203.0.113.254",
            "10.1.2.3",
            "2001:db8::100",
            "2001:db8:0:1::7",
            "fd00::1",
            "2001:db8::c000:264",
        ] {
            let v: Vip = ok.parse().unwrap();
            assert_eq!(v.to_string(), ok);
        }
    }

    #[test]
    fn ipv6_is_written_in_canonical_form() {
        let v: Vip = "2001:DB8:0:0:0:0:0:0100".parse().unwrap();
        assert_eq!(v.to_string(), "2001:db8::100");
        assert_eq!(v, "2001:db8::100".parse().unwrap());
        assert!(v.is_ipv6());
        assert_eq!(v.host_prefix_len(), 128);
        assert_eq!(v.v4(), None);
        assert_eq!(v.v6(), Some("2001:db8::100".parse().unwrap()));
    }

    #[test]
    fn refuses_what_cannot_be_served() {
        for (bad, word) in [
            ("0.0.0.0", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("169.254.1.1", "link-local"),
            ("240.0.0.1", "reserved"),
            ("0.1.2.3", "0.0.0.0/8"),
            ("192.0.2", "not an IP address"),
            ("192.0.2.300", "not an IP address"),
            ("192.0.2.1/24", "prefix length"),
            ("", "not an IP address"),
            ("vip", "not an IP address"),
            // IPv6
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("ff02::1", "multicast"),
            ("ff05::2", "multicast"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("::ffff:192.0.2.1", "IPv4-mapped"),
            ("::ffff:c000:201", "IPv4-mapped"),
            ("2001:db8::1/64", "prefix length"),
            ("2001:db8::1/128", "prefix length"),
            ("fe80::1%eth0", "zone"),
            ("2001:db8::1%2", "zone"),
            ("[2001:db8::1]", "not an IP address"),
            ("2001:db8::1::2", "not an IP address"),
            ("2001:db8:::1", "not an IP address"),
            ("2001:db8::g", "not an IP address"),
            ("1:2:3:4:5:6:7:8:9", "not an IP address"),
        ] {
            let err = bad.parse::<Vip>().unwrap_err();
            assert_eq!(err.value, bad);
            assert!(err.reason.contains(word), "{bad}: {}", err.reason);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn v4_accessors() {
        let v: Vip = "192.0.2.7".parse().unwrap();
        assert_eq!(v.octets(), [192, 0, 2, 7]);
        assert_eq!(v.v4(), Some(Ipv4Addr::new(192, 0, 2, 7)));
        assert_eq!(v.v6(), None);
        assert!(!v.is_ipv6());
        assert_eq!(v.host_prefix_len(), 32);
        assert_eq!(Vip::new(Ipv4Addr::new(192, 0, 2, 7)), Ok(v));
    }

    #[test]
    #[should_panic(expected = "IPv6 VIP")]
    fn octets_refuses_ipv6() {
        let v: Vip = "2001:db8::1".parse().unwrap();
        let _ = v.octets();
    }

    #[test]
    fn families_sort_v4_first() {
        let mut v: Vec<Vip> = ["2001:db8::1", "203.0.113.1", "192.0.2.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        v.sort();
        let text: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["192.0.2.1", "203.0.113.1", "2001:db8::1"]);
    }

    #[test]
    fn list_parsing() {
        let v = parse_vip_list("192.0.2.100, 192.0.2.101").unwrap();
        assert_eq!(v.len(), 2);
        let v = parse_vip_list("192.0.2.100,2001:db8::100").unwrap();
        assert!(v[1].is_ipv6());
        assert!(parse_vip_list("").unwrap().is_empty());
        assert!(parse_vip_list("192.0.2.1,,192.0.2.2").is_err());
        assert!(parse_vip_list("192.0.2.1,127.0.0.1").is_err());
        assert!(parse_vip_list("192.0.2.1,fe80::1").is_err());
    }

    #[test]
    fn serde_round_trip_validates() {
        let v: Vec<Vip> = serde_json::from_str(r#"["192.0.2.7", "2001:DB8::7"]"#).unwrap();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"["192.0.2.7","2001:db8::7"]"#
        );
        assert!(serde_json::from_str::<Vec<Vip>>(r#"["224.0.0.5"]"#).is_err());
        assert!(serde_json::from_str::<Vec<Vip>>(r#"["ff02::5"]"#).is_err());
    }
}
