//! Gratuitous ARP: the frames that tell a segment where a VIP lives (the
//! request form, the reply form or both, as receivers differ in which they
//! take), and an AF_PACKET sender for them. Frames are built with
//! pnet_packet and sent on a plain send-only packet socket (docs/DESIGN.md
//! (facts): pnet_datalink's channel would open a promiscuous receiver we do
//! not want).

use std::{io, mem, net::Ipv4Addr, os::fd::AsRawFd, time::Duration};

use pnet_base::MacAddr;
use pnet_packet::{
    Packet,
    arp::{ArpHardwareTypes, ArpOperation, ArpPacket, MutableArpPacket},
    ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket},
};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::instrument;

/// Which form of gratuitous ARP to send (`--garp-mode`: its command-line
/// values are in config.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GarpMode {
    /// Request form, as `arping -U` and keepalived: tha ff:ff:ff:ff:ff:ff.
    Request,
    /// Reply form, as `arping -A`: tha = our MAC.
    Reply,
    /// Both, request first.
    Both,
}

impl GarpMode {
    /// The frames one announcement sends, in order.
    pub(crate) fn forms(self) -> &'static [GarpForm] {
        match self {
            GarpMode::Request => &[GarpForm::Request],
            GarpMode::Reply => &[GarpForm::Reply],
            GarpMode::Both => &[GarpForm::Request, GarpForm::Reply],
        }
    }
}

/// Ethernet header (14) + ARP for IPv4 over Ethernet (28).
pub(crate) const GARP_FRAME_LEN: usize = 42;

const ETH_HEADER_LEN: usize = 14;
const BROADCAST: [u8; 6] = [0xff; 6];
pub(crate) const ETH_P_ARP: u16 = 0x0806;

/// One frame of a gratuitous ARP announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum GarpForm {
    /// ARP request, oper 1, tha ff:ff:ff:ff:ff:ff (as `arping -U` and keepalived).
    Request,
    /// ARP reply, oper 2, tha = our MAC (as `arping -A`). docs/DESIGN.md (facts): Linux
    /// ignores a reply whose tha is 00.. or ff.. shortly after an update.
    Reply,
}

/// One gratuitous ARP frame, broadcast from `mac`, saying that `vip` is at
/// `mac`: spa = tpa = vip, sha = mac.
pub(crate) fn garp_frame(form: GarpForm, mac: [u8; 6], vip: Ipv4Addr) -> [u8; GARP_FRAME_LEN] {
    let mut frame = [0u8; GARP_FRAME_LEN];
    let (oper, tha) = match form {
        GarpForm::Request => (ArpOperation(1), BROADCAST),
        GarpForm::Reply => (ArpOperation(2), mac),
    };
    {
        let mut eth = MutableEthernetPacket::new(&mut frame)
            .expect("GARP_FRAME_LEN holds an Ethernet header");
        eth.set_destination(MacAddr::from(BROADCAST));
        eth.set_source(MacAddr::from(mac));
        eth.set_ethertype(EtherTypes::Arp);
    }
    let mut arp = MutableArpPacket::new(&mut frame[ETH_HEADER_LEN..])
        .expect("GARP_FRAME_LEN holds an IPv4 ARP packet");
    arp.set_hardware_type(ArpHardwareTypes::Ethernet);
    arp.set_protocol_type(EtherTypes::Ipv4);
    arp.set_hw_addr_len(6);
    arp.set_proto_addr_len(4);
    arp.set_operation(oper);
    arp.set_sender_hw_addr(MacAddr::from(mac));
    arp.set_sender_proto_addr(vip);
    arp.set_target_hw_addr(MacAddr::from(tha));
    arp.set_target_proto_addr(vip);
    frame
}

/// An Ethernet frame carrying ARP for IPv4, taken apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedArp {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub oper: u16,
    pub sha: [u8; 6],
    pub spa: Ipv4Addr,
    pub tha: [u8; 6],
    pub tpa: Ipv4Addr,
}

impl ParsedArp {
    /// A gratuitous announcement: sender and target protocol address agree.
    pub fn is_gratuitous(&self) -> bool {
        self.spa == self.tpa
    }
}

/// Parses an Ethernet frame as ARP for IPv4 over Ethernet; anything else
/// (another ethertype, other address sizes, a short frame) is `None`.
/// Trailing bytes (padding to 60) are accepted.
pub fn parse_arp(frame: &[u8]) -> Option<ParsedArp> {
    if frame.len() < GARP_FRAME_LEN {
        return None;
    }
    let eth = EthernetPacket::new(frame)?;
    if eth.get_ethertype() != EtherTypes::Arp {
        return None;
    }
    // pnet's ArpPacket assumes hlen 6 / plen 4 and reads fixed offsets, so
    // check them before trusting its fields.
    let arp = ArpPacket::new(eth.payload())?;
    if arp.get_hardware_type() != ArpHardwareTypes::Ethernet
        || arp.get_protocol_type() != EtherTypes::Ipv4
        || arp.get_hw_addr_len() != 6
        || arp.get_proto_addr_len() != 4
    {
        return None;
    }
    Some(ParsedArp {
        eth_dst: eth.get_destination().octets(),
        eth_src: eth.get_source().octets(),
        oper: arp.get_operation().0,
        sha: arp.get_sender_hw_addr().octets(),
        spa: arp.get_sender_proto_addr(),
        tha: arp.get_target_hw_addr().octets(),
        tpa: arp.get_target_proto_addr(),
    })
}

/// A `sockaddr_ll` for `ifindex`; `protocol` in host order (0 = none).
pub(crate) fn link_addr(ifindex: u32, protocol: u16, dst: [u8; 6]) -> io::Result<SockAddr> {
    let ifindex = i32::try_from(ifindex).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface index {ifindex} out of range"),
        )
    })?;
    // SAFETY: sockaddr_storage is plain data for which all zero bytes are
    // valid, and is large and aligned enough to hold a sockaddr_ll.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    {
        // SAFETY: see above; the reference does not outlive `storage`.
        let ll = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_ll>() };
        ll.sll_family = libc::AF_PACKET as u16;
        ll.sll_protocol = protocol.to_be();
        ll.sll_ifindex = ifindex;
        ll.sll_halen = 6;
        ll.sll_addr[..6].copy_from_slice(&dst);
    }
    let len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the family is AF_PACKET and the storage holds a sockaddr_ll
    // of `len` bytes.
    Ok(unsafe { SockAddr::new(storage, len) })
}

/// Send-only AF_PACKET socket bound to one interface. Protocol 0 means the
/// kernel delivers it no frames at all: it never becomes a receiver. It
/// sends gratuitous ARP and unsolicited Neighbor Advertisements alike.
#[derive(Debug)]
pub struct GarpSocket {
    socket: Socket,
    dst: SockAddr,
    dst_ndp: SockAddr,
}

pub(crate) const ETH_P_IPV6: u16 = 0x86dd;

impl GarpSocket {
    #[instrument(level = "debug")]
    pub fn open(ifindex: u32) -> io::Result<Self> {
        let socket = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))?;
        // Non-blocking: the announcer sends from an async task, and a full
        // queue is better counted as an error than waited on.
        socket.set_nonblocking(true)?;
        socket.bind(&link_addr(ifindex, 0, [0; 6])?)?;
        let dst = link_addr(ifindex, ETH_P_ARP, BROADCAST)?;
        let dst_ndp = link_addr(ifindex, ETH_P_IPV6, super::ndp::ALL_NODES_MAC)?;
        Ok(GarpSocket {
            socket,
            dst,
            dst_ndp,
        })
    }

    /// Sends one complete Ethernet frame (header included) on the interface.
    /// An IPv6 frame (an advertisement) goes out as IPv6, anything else as
    /// ARP: the kernel takes the frame's protocol from the address.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let ipv6 = frame.get(12..14) == Some(&ETH_P_IPV6.to_be_bytes()[..]);
        let dst = if ipv6 { &self.dst_ndp } else { &self.dst };
        let n = self.socket.send_to(frame, dst)?;
        if n != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {n} of {} bytes", frame.len()),
            ));
        }
        Ok(())
    }
}

/// Receives the ARP frames arriving on one interface (the lab's and the
/// tests' view of the wire). Frames this host sends on that interface are
/// not reported.
#[derive(Debug)]
pub struct ArpCapture {
    socket: Socket,
}

impl ArpCapture {
    #[instrument(level = "debug")]
    pub fn open(ifindex: u32) -> io::Result<Self> {
        let socket = Socket::new(
            Domain::PACKET,
            Type::RAW,
            Some(Protocol::from(i32::from(ETH_P_ARP.to_be()))),
        )?;
        socket.bind(&link_addr(ifindex, ETH_P_ARP, [0; 6])?)?;
        // Until bind the socket saw every interface; drop what it queued then.
        socket.set_nonblocking(true)?;
        let mut buf = [0u8; 2048];
        while recv_frame(&socket, &mut buf).is_ok() {}
        socket.set_nonblocking(false)?;
        Ok(ArpCapture { socket })
    }

    /// The next incoming ARP frame, or `None` after `timeout` without one.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        self.socket.set_read_timeout(Some(timeout))?;
        let mut buf = [0u8; 2048];
        loop {
            match recv_frame(&self.socket, &mut buf) {
                Ok((n, outgoing)) if !outgoing => return Ok(Some(buf[..n].to_vec())),
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// One frame from a packet socket: its length and whether it was sent by
/// this host (PACKET_OUTGOING).
pub(crate) fn recv_frame(socket: &Socket, buf: &mut [u8]) -> io::Result<(usize, bool)> {
    // SAFETY: sockaddr_ll is plain data; all zero bytes are valid.
    let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: buf and from are valid for writes of the lengths given.
    let n = unsafe {
        libc::recvfrom(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&raw mut from).cast(),
            &mut len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, from.sll_pkttype == libc::PACKET_OUTGOING))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];

    fn vip() -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, 100)
    }

    /// The request form, byte by byte.
    #[rustfmt::skip]
    const REQUEST: [u8; GARP_FRAME_LEN] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // eth dst: broadcast
        0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // eth src: our MAC
        0x08, 0x06,                         // ethertype ARP
        0x00, 0x01,                         // htype Ethernet
        0x08, 0x00,                         // ptype IPv4
        0x06, 0x04,                         // hlen, plen
        0x00, 0x01,                         // oper request
        0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // sha
        0xc0, 0x00, 0x02, 0x64,             // spa 192.0.2.100
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // tha
        0xc0, 0x00, 0x02, 0x64,             // tpa 192.0.2.100
    ];

    #[test]
    fn request_form_bytes() {
        assert_eq!(garp_frame(GarpForm::Request, MAC, vip()), REQUEST);
    }

    #[test]
    fn reply_form_bytes() {
        // The reply form is the request but for two fields.
        let mut want = REQUEST;
        want[20..22].copy_from_slice(&[0x00, 0x02]); // oper reply
        want[32..38].copy_from_slice(&MAC); // tha = our MAC
        assert_eq!(garp_frame(GarpForm::Reply, MAC, vip()), want);
    }

    #[test]
    fn modes_pick_forms_request_first() {
        assert_eq!(GarpMode::Request.forms(), &[GarpForm::Request]);
        assert_eq!(GarpMode::Reply.forms(), &[GarpForm::Reply]);
        assert_eq!(
            GarpMode::Both.forms(),
            &[GarpForm::Request, GarpForm::Reply]
        );
    }

    #[test]
    fn parse_round_trip() {
        let req = parse_arp(&garp_frame(GarpForm::Request, MAC, vip())).unwrap();
        assert_eq!(
            req,
            ParsedArp {
                eth_dst: BROADCAST,
                eth_src: MAC,
                oper: 1,
                sha: MAC,
                spa: vip(),
                tha: BROADCAST,
                tpa: vip(),
            }
        );
        assert!(req.is_gratuitous());
        let rep = parse_arp(&garp_frame(GarpForm::Reply, MAC, vip())).unwrap();
        assert_eq!((rep.oper, rep.tha, rep.sha), (2, MAC, MAC));
        assert_eq!((rep.spa, rep.tpa), (vip(), vip()));

        // Padded to the Ethernet minimum, as frames arrive from a wire.
        let mut padded = garp_frame(GarpForm::Request, MAC, vip()).to_vec();
        padded.resize(60, 0);
        assert_eq!(parse_arp(&padded), Some(req));
    }

    #[test]
    fn parse_rejects_what_is_not_ipv4_arp() {
        let good = garp_frame(GarpForm::Request, MAC, vip());
        for len in [0, 13, 14, 41] {
            assert_eq!(parse_arp(&good[..len]), None, "truncated to {len}");
        }
        let mutate = |at: usize, v: u8| {
            let mut f = good;
            f[at] = v;
            parse_arp(&f)
        };
        assert_eq!(mutate(12, 0x08).map(|_| ()), Some(()), "sanity: unchanged");
        assert_eq!(mutate(13, 0x00), None, "ethertype IPv4");
        assert_eq!(mutate(15, 0x06), None, "htype IEEE 802");
        assert_eq!(mutate(17, 0xdd), None, "ptype IPv6");
        assert_eq!(mutate(18, 8), None, "hlen 8");
        assert_eq!(mutate(19, 16), None, "plen 16");
    }
}
