//! The address-conflict probe (RFC 5227 for IPv4, duplicate address
//! detection of RFC 4862 for IPv6): before a VIP the cluster never held is
//! first configured, ask the segment whether any host answers for it. ARP
//! probes carry sender IP 0.0.0.0 and DAD solicitations come from `::`, so
//! asking updates nobody's neighbour table.
//!
//! Answers are read on packet sockets of our own, not from the XDP program:
//! the program reports foreign claims only for VIPs we hold, it may not be
//! loaded at all (`--no-xdp`), and an owner's answer to a probe is unicast to
//! us (ARP) or sent to all nodes (NDP), which a socket sees either way.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use pnet_base::MacAddr;
use pnet_packet::{
    Packet,
    ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket},
    icmpv6::{
        self, Icmpv6Code, Icmpv6Packet, Icmpv6Types,
        ndp::{MutableNeighborSolicitPacket, NdpOptionTypes, NeighborAdvertPacket},
    },
    ip::IpNextHeaderProtocols,
    ipv6::{Ipv6Packet, MutableIpv6Packet},
};
use socket2::{Domain, Protocol, Socket, Type};

use super::garp::{ETH_P_ARP, ETH_P_IPV6, GarpForm, garp_frame, link_addr, parse_arp, recv_frame};
use crate::vip::Vip;

/// Ethernet (14) + IPv6 (40) + Neighbor Solicitation (24), no option: a
/// solicitation from `::` must not carry a source link-layer address.
pub(crate) const DAD_NS_FRAME_LEN: usize = 78;

const ETH_HEADER_LEN: usize = 14;
const IPV6_HEADER_LEN: usize = 40;
const NS_LEN: usize = 24;
const ICMPV6_NS: u8 = 135;
const ICMPV6_NA: u8 = 136;

/// How a probe asks: `probes` frames per VIP, evenly spaced over the first
/// half of `wait`, and answers counted until `wait` after the first. The
/// defaults (3 over 200 ms: at 0, 50 and 100 ms) catch any host on a LAN,
/// which answers within a millisecond or two, also when one frame is lost;
/// RFC 5227's own 1-2 s would delay every new VIP for nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProbeTiming {
    pub probes: u32,
    pub wait: Duration,
}

impl ProbeTiming {
    /// Three probes over `wait`.
    pub(crate) fn new(wait: Duration) -> Self {
        ProbeTiming { probes: 3, wait }
    }

    /// When probe `k` (from 0) is sent, after the first.
    pub(crate) fn send_at(&self, k: u32) -> Duration {
        let gaps = (self.probes.max(2) - 1) * 2;
        self.wait / gaps * k
    }
}

/// For each probed VIP, the MACs that answered for it (none: free).
pub(crate) type Answers = BTreeMap<Vip, BTreeSet<[u8; 6]>>;

/// Why a probe could not be made. Nothing is configured then: the VIP is
/// probed again at the next attempt.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("cannot open a packet socket on interface index {ifindex} to probe VIPs: {source}")]
    Open { ifindex: u32, source: io::Error },
    #[error("cannot send the address probe for VIP {vip} on interface index {ifindex}: {source}")]
    Send {
        vip: Vip,
        ifindex: u32,
        source: io::Error,
    },
    #[error("cannot read answers to address probes on interface index {ifindex}: {source}")]
    Receive { ifindex: u32, source: io::Error },
}

/// The ARP probe for `vip` from `mac` (RFC 5227 § 2.1.1): a broadcast
/// request with sender IP 0.0.0.0 and target hardware address zero.
pub(crate) fn arp_probe_frame(mac: [u8; 6], vip: Ipv4Addr) -> [u8; super::garp::GARP_FRAME_LEN] {
    let mut frame = garp_frame(GarpForm::Request, mac, vip);
    // spa (bytes 28..32) and tha (32..38) of the announcement's request form.
    frame[28..38].fill(0);
    frame
}

/// The solicited-node multicast group of `addr` (RFC 4291 § 2.7.1) and its
/// Ethernet address (RFC 2464 § 7).
fn solicited_node(addr: Ipv6Addr) -> (Ipv6Addr, [u8; 6]) {
    let o = addr.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    );
    (group, [0x33, 0x33, 0xff, o[13], o[14], o[15]])
}

/// The duplicate address detection probe for `vip` from `mac` (RFC 4862
/// § 5.4.2): a Neighbor Solicitation from `::` to the VIP's solicited-node
/// group, hop limit 255, no options.
pub(crate) fn dad_ns_frame(mac: [u8; 6], vip: Ipv6Addr) -> [u8; DAD_NS_FRAME_LEN] {
    let (group, group_mac) = solicited_node(vip);
    let mut frame = [0u8; DAD_NS_FRAME_LEN];
    {
        let mut eth = MutableEthernetPacket::new(&mut frame)
            .expect("DAD_NS_FRAME_LEN holds an Ethernet header");
        eth.set_destination(MacAddr::from(group_mac));
        eth.set_source(MacAddr::from(mac));
        eth.set_ethertype(EtherTypes::Ipv6);
    }
    {
        let mut ip = MutableIpv6Packet::new(&mut frame[ETH_HEADER_LEN..])
            .expect("DAD_NS_FRAME_LEN holds an IPv6 header");
        ip.set_version(6);
        ip.set_payload_length(NS_LEN as u16);
        ip.set_next_header(IpNextHeaderProtocols::Icmpv6);
        ip.set_hop_limit(255);
        ip.set_source(Ipv6Addr::UNSPECIFIED);
        ip.set_destination(group);
    }
    let icmp = &mut frame[ETH_HEADER_LEN + IPV6_HEADER_LEN..];
    {
        let mut ns = MutableNeighborSolicitPacket::new(icmp)
            .expect("DAD_NS_FRAME_LEN holds a Neighbor Solicitation");
        ns.set_icmpv6_type(Icmpv6Types::NeighborSolicit);
        ns.set_icmpv6_code(Icmpv6Code(0));
        ns.set_target_addr(vip);
    }
    let checksum = {
        let packet = Icmpv6Packet::new(icmp).expect("an ICMPv6 header");
        icmpv6::checksum(&packet, &Ipv6Addr::UNSPECIFIED, &group)
    };
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    frame
}

/// Who says it has an IPv4 address, from one ARP frame not sent by `ours`:
/// a sender protocol address (a reply to our probe, an announcement, a
/// request from the address), or the target of another host's probe
/// (RFC 5227: two hosts probing one address conflict too).
pub(crate) fn arp_claim(frame: &[u8], ours: [u8; 6]) -> Option<(Ipv4Addr, [u8; 6])> {
    let arp = parse_arp(frame)?;
    if arp.sha == ours || arp.eth_src == ours {
        return None;
    }
    if !arp.spa.is_unspecified() {
        return Some((arp.spa, arp.sha));
    }
    (arp.oper == 1).then_some((arp.tpa, arp.sha))
}

/// Who says it has an IPv6 address, from one frame not sent by `ours`: a
/// Neighbor Advertisement's target (its link-layer address from the option,
/// else the frame's source), or the target of another host's DAD probe.
pub(crate) fn ndp_claim(frame: &[u8], ours: [u8; 6]) -> Option<(Ipv6Addr, [u8; 6])> {
    let eth = EthernetPacket::new(frame)?;
    let src = eth.get_source().octets();
    if eth.get_ethertype() != EtherTypes::Ipv6 || src == ours {
        return None;
    }
    let ip = Ipv6Packet::new(eth.payload())?;
    if ip.get_next_header() != IpNextHeaderProtocols::Icmpv6 || ip.get_hop_limit() != 255 {
        return None;
    }
    let icmp = ip.payload();
    match icmp.first().copied()? {
        ICMPV6_NA => {
            let na = NeighborAdvertPacket::new(icmp)?;
            let mac = na
                .get_options_iter()
                .find(|o| o.get_option_type() == NdpOptionTypes::TargetLLAddr)
                .and_then(|o| <[u8; 6]>::try_from(o.payload().get(..6)?).ok())
                .unwrap_or(src);
            (mac != ours).then_some((na.get_target_addr(), mac))
        }
        ICMPV6_NS if ip.get_source().is_unspecified() && icmp.len() >= NS_LEN => {
            let target: [u8; 16] = icmp[8..24].try_into().ok()?;
            Some((Ipv6Addr::from(target), src))
        }
        _ => None,
    }
}

/// A classic BPF filter keeping ICMPv6 Neighbor Solicitations and
/// Advertisements (without extension headers, as NDP is sent): the IPv6
/// socket would otherwise copy every IPv6 frame of a busy interface.
fn ndp_filter() -> [libc::sock_filter; 7] {
    let ins = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    [
        ins(LD_B_ABS, 0, 0, 20), // next header
        ins(JEQ, 0, 4, 58),      // ICMPv6, else drop
        ins(LD_B_ABS, 0, 0, 54), // ICMPv6 type
        ins(JEQ, 1, 0, u32::from(ICMPV6_NS)),
        ins(JEQ, 0, 1, u32::from(ICMPV6_NA)),
        ins(RET, 0, 0, 0xffff),
        ins(RET, 0, 0, 0),
    ]
}

/// A receiving packet socket for `protocol` on `ifindex`, non-blocking,
/// with whatever it queued before the bind (and the filter) dropped.
fn receiver(ifindex: u32, protocol: u16) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::PACKET,
        Type::RAW,
        Some(Protocol::from(i32::from(protocol.to_be()))),
    )?;
    if protocol == ETH_P_IPV6 {
        let filter = ndp_filter();
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr().cast_mut(),
        };
        // SAFETY: prog points to `filter`, alive for the call; the kernel copies it.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&raw const prog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    socket.bind(&link_addr(ifindex, protocol, [0; 6])?)?;
    socket.set_nonblocking(true)?;
    let mut buf = [0u8; 2048];
    while recv_frame(&socket, &mut buf).is_ok() {}
    Ok(socket)
}

/// Probes every VIP of `vips` on interface `ifindex` (whose MAC is `mac`)
/// and returns who answered for each. Blocks for `timing.wait`: run it on
/// a blocking thread.
pub(crate) fn probe(
    ifindex: u32,
    mac: [u8; 6],
    vips: &[Vip],
    timing: ProbeTiming,
) -> Result<Answers, ProbeError> {
    let sockets = ProbeSockets::open(ifindex, mac, vips)?;
    let mut answers: Answers = vips.iter().map(|v| (*v, BTreeSet::new())).collect();
    let started = Instant::now();
    let end = started + timing.wait;
    let mut sent = 0;
    loop {
        let now = Instant::now();
        if sent < timing.probes && now >= started + timing.send_at(sent) {
            sockets.send_probes(vips)?;
            sent += 1;
            continue;
        }
        if now >= end {
            break;
        }
        let next = if sent < timing.probes {
            (started + timing.send_at(sent)).min(end)
        } else {
            end
        };
        if sockets.wait_until(next)? {
            sockets.collect(&mut answers)?;
        }
    }
    Ok(answers)
}

/// The sockets of one probe run: a receiver for each family probed, and the
/// sender of the probes.
struct ProbeSockets {
    ifindex: u32,
    mac: [u8; 6],
    arp: Option<Socket>,
    ndp: Option<Socket>,
    sender: super::garp::GarpSocket,
}

impl ProbeSockets {
    /// A receiver only for a family that has a VIP to probe: an IPv4-only
    /// probe reads no IPv6 traffic.
    fn open(ifindex: u32, mac: [u8; 6], vips: &[Vip]) -> Result<Self, ProbeError> {
        let open = |e| ProbeError::Open { ifindex, source: e };
        let has_v4 = vips.iter().any(|v| v.v4().is_some());
        let has_v6 = vips.iter().any(|v| v.v6().is_some());
        let arp = has_v4
            .then(|| receiver(ifindex, ETH_P_ARP))
            .transpose()
            .map_err(open)?;
        let ndp = has_v6
            .then(|| receiver(ifindex, ETH_P_IPV6))
            .transpose()
            .map_err(open)?;
        let sender = super::garp::GarpSocket::open(ifindex).map_err(open)?;
        Ok(ProbeSockets {
            ifindex,
            mac,
            arp,
            ndp,
            sender,
        })
    }

    fn receivers(&self) -> impl Iterator<Item = &Socket> {
        [&self.arp, &self.ndp].into_iter().flatten()
    }

    /// One probe for every VIP: an ARP probe or a DAD solicitation.
    fn send_probes(&self, vips: &[Vip]) -> Result<(), ProbeError> {
        for vip in vips {
            let r = match (vip.v4(), vip.v6()) {
                (Some(v4), _) => self.sender.send(&arp_probe_frame(self.mac, v4)),
                (_, Some(v6)) => self.sender.send(&dad_ns_frame(self.mac, v6)),
                _ => Ok(()),
            };
            r.map_err(|e| ProbeError::Send {
                vip: *vip,
                ifindex: self.ifindex,
                source: e,
            })?;
        }
        Ok(())
    }

    /// Waits until a receiver has a frame or `until` comes. `false`: a
    /// signal interrupted the wait, nothing to read yet.
    fn wait_until(&self, until: Instant) -> Result<bool, ProbeError> {
        let mut fds: Vec<libc::pollfd> = self
            .receivers()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = until
            .saturating_duration_since(Instant::now())
            .as_millis()
            .max(1);
        let ms = i32::try_from(ms).unwrap_or(i32::MAX);
        // SAFETY: fds is a valid array of fds.len() pollfd structs.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(ProbeError::Receive {
                ifindex: self.ifindex,
                source: e,
            });
        }
        Ok(true)
    }

    /// Reads every frame waiting on the receivers and adds each claim of a
    /// probed VIP by another MAC to `answers`.
    fn collect(&self, answers: &mut Answers) -> Result<(), ProbeError> {
        let mut buf = [0u8; 2048];
        for socket in self.receivers() {
            loop {
                match recv_frame(socket, &mut buf) {
                    Ok((_, true)) => {}
                    Ok((n, false)) => {
                        if let Some((vip, m)) = self.claim(&buf[..n])
                            && let Some(macs) = answers.get_mut(&vip)
                        {
                            macs.insert(m);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(ProbeError::Receive {
                            ifindex: self.ifindex,
                            source: e,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The VIP and MAC a received frame claims, if it is an ARP or NDP
    /// claim by a MAC other than ours.
    fn claim(&self, frame: &[u8]) -> Option<(Vip, [u8; 6])> {
        let (vip, m) = arp_claim(frame, self.mac)
            .map(|(ip, m)| (Vip::new(ip), m))
            .or_else(|| ndp_claim(frame, self.mac).map(|(ip, m)| (Vip::new_v6(ip), m)))?;
        Some((vip.ok()?, m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];
    const OTHER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];

    #[test]
    fn probes_are_spread_over_the_first_half_of_the_wait() {
        let t = ProbeTiming::new(Duration::from_millis(200));
        let at: Vec<u128> = (0..t.probes).map(|k| t.send_at(k).as_millis()).collect();
        assert_eq!(at, vec![0, 50, 100]);
    }

    #[test]
    fn arp_probe_has_no_sender_address() {
        let vip = Ipv4Addr::new(192, 0, 2, 200);
        let f = arp_probe_frame(MAC, vip);
        let p = parse_arp(&f).unwrap();
        assert_eq!(p.eth_dst, [0xff; 6]);
        assert_eq!(p.oper, 1);
        assert_eq!(p.sha, MAC);
        assert_eq!(p.spa, Ipv4Addr::UNSPECIFIED);
        assert_eq!(p.tha, [0; 6]);
        assert_eq!(p.tpa, vip);
        // Our own probe is no claim; another host's probe of the address is.
        assert_eq!(arp_claim(&f, MAC), None);
        assert_eq!(arp_claim(&f, OTHER), Some((vip, MAC)));
    }

    /// The owner's reply to a probe, as Linux sends it: unicast to the
    /// prober, sender the owner, target IP 0.0.0.0.
    #[test]
    fn a_reply_to_the_probe_is_a_claim_by_its_sender() {
        let vip = Ipv4Addr::new(192, 0, 2, 200);
        let mut f = garp_frame(GarpForm::Reply, OTHER, vip);
        f[0..6].copy_from_slice(&MAC);
        f[32..38].copy_from_slice(&MAC);
        f[38..42].fill(0);
        assert_eq!(arp_claim(&f, MAC), Some((vip, OTHER)));
        // Not ARP at all: nothing.
        assert_eq!(
            arp_claim(&dad_ns_frame(OTHER, "2001:db8::1".parse().unwrap()), MAC),
            None
        );
    }

    #[test]
    fn dad_probe_goes_to_the_solicited_node_group_with_a_valid_checksum() {
        let vip: Ipv6Addr = "2001:db8::200".parse().unwrap();
        let f = dad_ns_frame(MAC, vip);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0xff, 0x00, 0x02, 0x00]);
        let ip = Ipv6Packet::new(&f[14..]).unwrap();
        assert_eq!(ip.get_source(), Ipv6Addr::UNSPECIFIED);
        assert_eq!(
            ip.get_destination(),
            "ff02::1:ff00:200".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(ip.get_hop_limit(), 255);
        let icmp = Icmpv6Packet::new(ip.payload()).unwrap();
        assert_eq!(
            icmpv6::checksum(&icmp, &ip.get_source(), &ip.get_destination()),
            icmp.get_checksum()
        );
        assert_eq!(&f[62..78], &vip.octets());
        assert_eq!(ndp_claim(&f, MAC), None);
        assert_eq!(ndp_claim(&f, OTHER), Some((vip, MAC)));
    }

    #[test]
    fn an_advertisement_is_a_claim_by_its_link_layer_address() {
        let vip: Ipv6Addr = "2001:db8::200".parse().unwrap();
        let na = super::super::ndp::na_frame(OTHER, vip, false);
        assert_eq!(ndp_claim(&na, MAC), Some((vip, OTHER)));
        assert_eq!(ndp_claim(&na, OTHER), None);
        // A routed copy (hop limit below 255) is no NDP.
        let mut routed = na;
        routed[21] = 64;
        assert_eq!(ndp_claim(&routed, MAC), None);
    }
}
