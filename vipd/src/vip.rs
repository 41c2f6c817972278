//! A VIP is an IPv4 unicast address a cluster serves from one node. This
//! module is the one place that decides what counts as a valid VIP.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use serde::{Deserialize, Serialize};

/// A validated virtual IP: an IPv4 unicast address that can be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Vip(Ipv4Addr);

/// Why a value is not a VIP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid VIP {value:?}: {reason}")]
pub struct InvalidVip {
    pub value: String,
    pub reason: &'static str,
}

impl Vip {
    /// Validates an address as a VIP.
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
            return Ok(Vip(addr));
        };
        Err(InvalidVip {
            value: addr.to_string(),
            reason,
        })
    }

    pub fn addr(self) -> Ipv4Addr {
        self.0
    }

    pub fn octets(self) -> [u8; 4] {
        self.0.octets()
    }
}

impl FromStr for Vip {
    type Err = InvalidVip;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        // Ipv4Addr's parser already refuses leading zeros, short forms and
        // prefixes; say so plainly instead of passing its terse error on.
        let addr: Ipv4Addr = trimmed.parse().map_err(|_| InvalidVip {
            value: s.to_string(),
            reason: "not an IPv4 address in dotted-quad form (like 192.0.2.10)",
        })?;
        Vip::new(addr).map_err(|e| InvalidVip {
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

impl From<Vip> for Ipv4Addr {
    fn from(v: Vip) -> Ipv4Addr {
        v.0
    }
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Parses a comma-separated list of VIPs (`192.0.2.100,192.0.2.101`), as
/// the `--static-vips` flag takes them. Empty items are refused.
pub fn parse_vip_list(s: &str) -> Result<Vec<Vip>, InvalidVip> {
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
        for ok in ["192.0.2.100", "198.51.100.1", "203.0.113.254", "10.1.2.3"] {
            let v: Vip = ok.parse().unwrap();
            assert_eq!(v.to_string(), ok);
        }
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
            ("192.0.2", "dotted-quad"),
            ("192.0.2.300", "dotted-quad"),
            ("192.0.2.1/24", "dotted-quad"),
            ("::1", "dotted-quad"),
            ("", "dotted-quad"),
            ("vip", "dotted-quad"),
        ] {
            let err = bad.parse::<Vip>().unwrap_err();
            assert_eq!(err.value, bad);
            assert!(err.reason.contains(word), "{bad}: {}", err.reason);
            assert!(err.to_string().contains(bad));
        }
    }

    #[test]
    fn list_parsing() {
        let v = parse_vip_list("192.0.2.100, 192.0.2.101").unwrap();
        assert_eq!(v.len(), 2);
        assert!(parse_vip_list("").unwrap().is_empty());
        assert!(parse_vip_list("192.0.2.1,,192.0.2.2").is_err());
        assert!(parse_vip_list("192.0.2.1,127.0.0.1").is_err());
    }

    #[test]
    fn serde_round_trip_validates() {
        let v: Vec<Vip> = serde_json::from_str(r#"["192.0.2.7"]"#).unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"["192.0.2.7"]"#);
        assert!(serde_json::from_str::<Vec<Vip>>(r#"["224.0.0.5"]"#).is_err());
    }
}
