//! What a namespace's kernel says: its addresses (a netlink dump), links
//! and neighbour entries (`ip -j`), and what `ping` and `arping` get back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::frames::parse_mac;
use super::netlink::{AddrReader, NlAddr6};
use super::netns::{Netns, ifindex_here};

impl Netns {
    /// The IPv4 addresses on `ifname`, in kernel order.
    pub fn ipv4_addrs(&self, ifname: &str) -> Vec<(Ipv4Addr, u8)> {
        let index = self.ifindex(ifname);
        AddrReader::new(self)
            .addrs()
            .into_iter()
            .filter(|a| a.ifindex == index)
            .map(|a| (a.addr, a.prefix_len))
            .collect()
    }

    /// The IPv6 addresses on `ifname` (link-local ones included), in
    /// kernel order, with their DAD flags.
    pub fn ipv6_addrs(&self, ifname: &str) -> Vec<Addr6> {
        let index = self.ifindex(ifname);
        AddrReader::new(self)
            .addrs6()
            .into_iter()
            .filter(|a| a.ifindex == index)
            .map(|a| Addr6 {
                addr: a.addr,
                prefix_len: a.prefix_len,
                tentative: a.tentative(),
                dadfailed: a.dadfailed(),
                nodad: a.flags & NlAddr6::IFA_F_NODAD != 0,
            })
            .collect()
    }

    /// The ifindex of `ifname` in this namespace; panics if there is none.
    fn ifindex(&self, ifname: &str) -> u32 {
        self.in_netns(|| ifindex_here(ifname))
    }

    /// The MAC address of `ifname`, e.g. `"aa:bb:cc:dd:ee:ff"`.
    pub fn mac(&self, ifname: &str) -> String {
        let json = self.ip_json(&["link", "show", "dev", ifname]);
        json[0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no address for {ifname} in {}: {json}", self.ns))
            .to_string()
    }

    /// The MAC address of `ifname` as bytes.
    pub fn mac_bytes(&self, ifname: &str) -> [u8; 6] {
        let text = self.mac(ifname);
        parse_mac(&text).unwrap_or_else(|| panic!("MAC {text} of {ifname} in {}", self.ns))
    }

    /// Whether `ifname` has carrier (`LOWER_UP`).
    pub fn has_carrier(&self, ifname: &str) -> bool {
        let json = self.ip_json(&["link", "show", "dev", ifname]);
        json[0]["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f == "LOWER_UP")
    }

    /// The neighbour entry for `ip` (ARP for IPv4, NDP for IPv6), if the
    /// table has one.
    pub fn neigh(&self, ip: impl Into<IpAddr>) -> Option<Neighbour> {
        let ip = ip.into();
        let ip_text = ip.to_string();
        let family = if ip.is_ipv6() { "-6" } else { "-4" };
        let json = self.ip_json(&[family, "neigh", "show", "to", &ip_text]);
        json.as_array()?
            .iter()
            .find(|e| e["dst"].as_str() == Some(ip_text.as_str()))
            .map(|e| Neighbour {
                dev: e["dev"].as_str().unwrap_or_default().to_string(),
                lladdr: e["lladdr"].as_str().map(str::to_string),
                state: e["state"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect(),
            })
    }

    /// `ping -c1 -W1 ip` (IPv4 or IPv6): whether one echo came back.
    pub fn ping(&self, ip: impl Into<IpAddr>) -> bool {
        let ip = ip.into();
        self.exec(&["ping", "-n", "-q", "-c1", "-W1", &ip.to_string()])
            .status
            .success()
    }

    /// Habets' arping (Debian package `arping`): `count` requests to `ip` out
    /// of `ifname`, 200 ms apart, giving up `count * 0.2 + 1` s after the start.
    pub fn arping(&self, ip: Ipv4Addr, count: u32, ifname: &str) -> Arping {
        assert!(count > 0, "arping count must be positive");
        let deadline = format!("{:.1}", f64::from(count) * 0.2 + 1.0);
        let out = self.exec(&[
            "arping",
            "-c",
            &count.to_string(),
            "-W",
            "0.2",
            "-w",
            &deadline,
            "-i",
            ifname,
            &ip.to_string(),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        parse_arping(&stdout).unwrap_or_else(|| {
            panic!(
                "cannot read arping output in {} (is it Habets' arping?): status {}, stdout {stdout:?}, stderr {:?}",
                self.ns,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

/// An IPv6 address as `ip -j -6 addr` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr6 {
    pub addr: Ipv6Addr,
    pub prefix_len: u8,
    pub tentative: bool,
    pub dadfailed: bool,
    pub nodad: bool,
}

/// A neighbour table entry (`ip -j neigh`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub dev: String,
    /// `None` in states without an address (`INCOMPLETE`, `FAILED`).
    pub lladdr: Option<String>,
    /// E.g. `["REACHABLE"]`, `["STALE"]`, `["PERMANENT"]`.
    pub state: Vec<String>,
}

/// What `arping` saw.
#[derive(Clone, Debug, Default)]
pub struct Arping {
    pub sent: u32,
    pub received: u32,
    /// The sender MAC of each reply, in arrival order.
    pub reply_macs: Vec<String>,
    pub stdout: String,
}

fn parse_arping(stdout: &str) -> Option<Arping> {
    let mut result = Arping {
        stdout: stdout.to_string(),
        ..Arping::default()
    };
    let mut summary = false;
    for line in stdout.lines() {
        // "42 bytes from 52:54:00:12:34:56 (192.0.2.12): index=0 time=21.3 usec"
        if let Some((_, rest)) = line.split_once(" bytes from ")
            && let Some(mac) = rest.split_whitespace().next()
        {
            result.reply_macs.push(mac.to_string());
        }
        // "3 packets transmitted, 3 packets received,   0% unanswered (0 extra)"
        if line.contains("packets transmitted") {
            let numbers: Vec<u32> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect();
            if let [sent, received, ..] = numbers[..] {
                result.sent = sent;
                result.received = received;
                summary = true;
            }
        }
    }
    summary.then_some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_habets_arping_output() {
        let out = "ARPING 192.0.2.12\n\
            42 bytes from 7a:1c:00:11:22:33 (192.0.2.12): index=0 time=31.2 usec\n\
            42 bytes from 7a:1c:00:11:22:33 (192.0.2.12): index=1 time=20.1 usec\n\
            \n\
            --- 192.0.2.12 statistics ---\n\
            3 packets transmitted, 2 packets received,  33% unanswered (0 extra)\n";
        let r = parse_arping(out).expect("parsed");
        assert_eq!((r.sent, r.received), (3, 2));
        assert_eq!(r.reply_macs, vec!["7a:1c:00:11:22:33"; 2]);
        assert!(parse_arping("arping: usage").is_none());
    }
}
