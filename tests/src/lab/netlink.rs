//! Netlink in a lab namespace: dumps of its addresses ([`AddrReader`]) and
//! a recorder of its address and neighbour events ([`AddrMonitor`]), each
//! event stamped on receipt with the monotonic clock, the same in every
//! namespace. Parsed with netlink-packet-route, not with the agent's own
//! netlink code: a test must not share the code it checks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
};

use super::capture::realtime_priority;
use super::netns::Netns;
use super::process::StoppableThread;

/// One IPv4 address as netlink reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NlAddr {
    pub ifindex: u32,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

/// One IPv6 address as netlink reports it, with its flags and vipd's mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NlAddr6 {
    pub ifindex: u32,
    pub addr: Ipv6Addr,
    pub prefix_len: u8,
    /// IFA_FLAGS (IFA_F_*), or the header's 8 bits when absent.
    pub flags: u32,
    /// IFA_PROTO (vipd marks its addresses with 0x76).
    pub proto: Option<u8>,
}

impl NlAddr6 {
    pub const IFA_F_NODAD: u32 = 0x02;
    pub const IFA_F_DADFAILED: u32 = 0x08;
    pub const IFA_F_TENTATIVE: u32 = 0x40;
    pub const IFA_F_PERMANENT: u32 = 0x80;
    pub const IFA_F_NOPREFIXROUTE: u32 = 0x200;

    pub fn tentative(&self) -> bool {
        self.flags & Self::IFA_F_TENTATIVE != 0
    }

    pub fn dadfailed(&self) -> bool {
        self.flags & Self::IFA_F_DADFAILED != 0
    }
}

/// One IPv6 RTM_NEWADDR / RTM_DELADDR event.
#[derive(Clone, Copy, Debug)]
pub struct Addr6Event {
    pub at: Instant,
    pub new: bool,
    pub addr: NlAddr6,
}

/// One RTM_NEWADDR / RTM_DELADDR event, stamped on receipt with the
/// monotonic clock (`Instant`), the same in every namespace.
#[derive(Clone, Copy, Debug)]
pub struct AddrEvent {
    pub at: Instant,
    pub new: bool,
    pub addr: NlAddr,
}

/// One neighbour table entry as netlink reports it (RTM_NEWNEIGH /
/// RTM_DELNEIGH), either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NlNeigh {
    pub ifindex: u32,
    pub ip: IpAddr,
    /// NDA_LLADDR; absent in states without one (INCOMPLETE, FAILED).
    pub mac: Option<[u8; 6]>,
    /// NUD_* (0x02 REACHABLE, 0x04 STALE, ...).
    pub state: u16,
}

/// One neighbour event, stamped on receipt like [`AddrEvent`].
#[derive(Clone, Copy, Debug)]
pub struct NeighEvent {
    pub at: Instant,
    /// RTM_NEWNEIGH (an entry added or changed) rather than RTM_DELNEIGH.
    pub new: bool,
    pub neigh: NlNeigh,
}

const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;

/// A NETLINK_ROUTE socket made in `ns`, subscribed to the multicast
/// `groups` (`RTMGRP_*`), with a 50 ms receive timeout; it stays bound to
/// that namespace whichever thread uses it later. For a test that polls it
/// itself ([`addr_events`] reads what it gets); [`AddrMonitor`] records
/// from one.
pub fn route_socket(ns: &Netns, groups: u32) -> OwnedFd {
    ns.in_netns(|| {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        assert!(
            fd >= 0,
            "netlink socket in {}: {}",
            ns.name(),
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero is a valid sockaddr_nl.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = groups;
        // SAFETY: sa is a valid sockaddr_nl and we pass its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sa).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        assert!(
            rc == 0,
            "netlink bind in {}: {}",
            ns.name(),
            std::io::Error::last_os_error()
        );
        // 32 MiB, past rmem_max (FORCE: the lab runs as root): a thousand
        // address events at once (the engine bench's 759 VIPs) must not
        // overrun. Only queued messages use it.
        let rcvbuf: libc::c_int = 32 << 20;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: valid option pointers and sizes.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const rcvbuf).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        fd
    })
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The route messages in `buf` (one datagram), parsed by
/// netlink-packet-route; a message it cannot parse is passed over, and a
/// truncated one ends the datagram.
fn messages(buf: &[u8]) -> Vec<NetlinkPayload<RouteNetlinkMessage>> {
    let mut out = Vec::new();
    let mut off = 0;
    while let Ok(nl) = NetlinkBuffer::new_checked(&buf[off..]) {
        let len = nl.length() as usize;
        if let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..off + len]) {
            out.push(m.payload);
        }
        off += (len + 3) & !3;
        if off >= buf.len() {
            break;
        }
    }
    out
}

/// An address message, if IPv4.
fn parse_ifaddr(m: &AddressMessage) -> Option<NlAddr> {
    let a = parse_ifaddr_any(m)?;
    match a.addr {
        IpAddr::V4(addr) => Some(NlAddr {
            ifindex: a.ifindex,
            addr,
            prefix_len: a.prefix_len,
        }),
        IpAddr::V6(_) => None,
    }
}

/// An address message, if IPv6.
fn parse_ifaddr6(m: &AddressMessage) -> Option<NlAddr6> {
    let a = parse_ifaddr_any(m)?;
    match a.addr {
        IpAddr::V6(addr) => Some(NlAddr6 {
            ifindex: a.ifindex,
            addr,
            prefix_len: a.prefix_len,
            flags: a.flags,
            proto: a.proto,
        }),
        IpAddr::V4(_) => None,
    }
}

struct AnyAddr {
    ifindex: u32,
    addr: IpAddr,
    prefix_len: u8,
    flags: u32,
    proto: Option<u8>,
}

/// An address message of either family: IFA_LOCAL, else IFA_ADDRESS (a
/// point-to-point peer's); IFA_FLAGS over the header's 8 bits.
fn parse_ifaddr_any(m: &AddressMessage) -> Option<AnyAddr> {
    let (mut local, mut address, mut proto) = (None, None, None);
    let mut flags = u32::from(m.header.flags.bits());
    for attr in &m.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Flags(f) => flags = f.bits(),
            AddressAttribute::Protocol(p) => proto = Some(u8::from(*p)),
            _ => {}
        }
    }
    Some(AnyAddr {
        ifindex: m.header.index,
        addr: local.or(address)?,
        prefix_len: m.header.prefix_len,
        flags,
        proto,
    })
}

/// A neighbour message of either family (a bridge's FDB entry has no IP
/// destination and is passed over).
fn parse_ndmsg(m: &NeighbourMessage) -> Option<NlNeigh> {
    let (mut ip, mut mac) = (None, None);
    for attr in &m.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(IpAddr::V4(*a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                ip = Some(IpAddr::V6(*a));
            }
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(&l[..]).ok(),
            _ => {}
        }
    }
    Some(NlNeigh {
        ifindex: m.header.ifindex,
        ip: ip?,
        mac,
        state: u16::from(m.header.state),
    })
}

/// Dumps a namespace's IPv4 addresses on demand (RTM_GETADDR).
pub struct AddrReader {
    fd: Mutex<OwnedFd>,
    ns: String,
}

impl AddrReader {
    pub fn new(ns: &Netns) -> AddrReader {
        AddrReader {
            fd: Mutex::new(route_socket(ns, 0)),
            ns: ns.name().to_string(),
        }
    }

    /// Every IPv4 address in the namespace now.
    pub fn addrs(&self) -> Vec<NlAddr> {
        self.dump(AddressFamily::Inet, parse_ifaddr)
    }

    /// Every IPv6 address in the namespace now (link-local ones included).
    pub fn addrs6(&self) -> Vec<NlAddr6> {
        self.dump(AddressFamily::Inet6, parse_ifaddr6)
    }

    fn dump<T>(&self, family: AddressFamily, parse: fn(&AddressMessage) -> Option<T>) -> Vec<T> {
        let fd = self.fd.lock().unwrap();
        let mut msg = AddressMessage::default();
        msg.header.family = family;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = 1;
        let mut req = NetlinkMessage::new(
            header,
            NetlinkPayload::from(RouteNetlinkMessage::GetAddress(msg)),
        );
        req.finalize();
        let mut bytes = vec![0u8; req.buffer_len()];
        req.serialize(&mut bytes);
        // SAFETY: bytes is valid for its length.
        let n = unsafe { libc::send(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        assert!(
            usize::try_from(n).is_ok_and(|n| n == bytes.len()),
            "netlink dump request in {}: {}",
            self.ns,
            std::io::Error::last_os_error()
        );
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let n = match recv(&fd, &mut buf) {
                Ok(n) => n,
                // The 50 ms receive timeout: a loaded machine may be slower.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) && Instant::now() < deadline =>
                {
                    continue;
                }
                Err(e) => panic!("netlink dump in {}: {e}", self.ns),
            };
            for m in messages(&buf[..n]) {
                match m {
                    NetlinkPayload::Done(_) => return out,
                    NetlinkPayload::Error(e) => {
                        panic!("netlink dump in {} answered an error: {e:?}", self.ns)
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a)) => {
                        out.extend(parse(&a));
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Records every address event in a namespace until stopped: IPv4 in
/// [`AddrMonitor::events`], IPv6 in [`AddrMonitor::events6`]; with
/// [`MonitorOptions::neighbours`], neighbour events of both families in
/// [`AddrMonitor::neigh_events`].
pub struct AddrMonitor {
    events: Arc<Mutex<Vec<AddrEvent>>>,
    events6: Arc<Mutex<Vec<Addr6Event>>>,
    neigh: Arc<Mutex<Vec<NeighEvent>>>,
    overrun: Arc<AtomicBool>,
    /// Stopped when this is dropped.
    _thread: StoppableThread,
}

/// What an [`AddrMonitor`] records besides address events, and how.
#[derive(Clone, Copy, Debug, Default)]
pub struct MonitorOptions {
    /// Neighbour events too (RTMGRP_NEIGH), both families.
    pub neighbours: bool,
    /// The recording thread at a real-time priority
    /// ([`crate::lab::realtime_priority`]), so its timestamps stay exact on
    /// a loaded machine.
    pub realtime: bool,
}

/// The events of one netlink datagram received at `at`, sorted by kind.
#[derive(Debug, Default)]
struct Batch {
    addrs: Vec<AddrEvent>,
    addrs6: Vec<Addr6Event>,
    neigh: Vec<NeighEvent>,
}

/// The IPv4 address events in `buf` (one datagram from a
/// [`route_socket`]), stamped `at`.
pub fn addr_events(buf: &[u8], at: Instant) -> Vec<AddrEvent> {
    parse_events(buf, at).addrs
}

/// Address events of both families and neighbour events in `buf` (one
/// datagram from a NETLINK_ROUTE socket), stamped `at`.
fn parse_events(buf: &[u8], at: Instant) -> Batch {
    let mut b = Batch::default();
    for m in messages(buf) {
        let NetlinkPayload::InnerMessage(m) = m else {
            continue;
        };
        match m {
            RouteNetlinkMessage::NewAddress(ref a) | RouteNetlinkMessage::DelAddress(ref a) => {
                let new = matches!(m, RouteNetlinkMessage::NewAddress(_));
                if let Some(addr) = parse_ifaddr(a) {
                    b.addrs.push(AddrEvent { at, new, addr });
                } else if let Some(addr) = parse_ifaddr6(a) {
                    b.addrs6.push(Addr6Event { at, new, addr });
                }
            }
            RouteNetlinkMessage::NewNeighbour(ref n) | RouteNetlinkMessage::DelNeighbour(ref n) => {
                if let Some(neigh) = parse_ndmsg(n) {
                    b.neigh.push(NeighEvent {
                        at,
                        new: matches!(m, RouteNetlinkMessage::NewNeighbour(_)),
                        neigh,
                    });
                }
            }
            _ => {}
        }
    }
    b
}

impl AddrMonitor {
    /// Subscribes (before returning) and starts recording.
    pub fn start(ns: &Netns) -> AddrMonitor {
        AddrMonitor::start_with(ns, MonitorOptions::default())
    }

    /// [`AddrMonitor::start`] with options.
    pub fn start_with(ns: &Netns, opts: MonitorOptions) -> AddrMonitor {
        let mut groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
        if opts.neighbours {
            groups |= RTMGRP_NEIGH;
        }
        let fd = route_socket(ns, groups);
        let events = Arc::new(Mutex::new(Vec::new()));
        let events6 = Arc::new(Mutex::new(Vec::new()));
        let neigh = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let overrun = Arc::new(AtomicBool::new(false));
        let thread = {
            let (events, events6, neigh, stop, overrun) = (
                events.clone(),
                events6.clone(),
                neigh.clone(),
                stop.clone(),
                overrun.clone(),
            );
            std::thread::spawn(move || {
                if opts.realtime {
                    realtime_priority();
                }
                let mut buf = vec![0u8; 1 << 16];
                while !stop.load(Ordering::Relaxed) {
                    match recv(&fd, &mut buf) {
                        Ok(n) => {
                            let b = parse_events(&buf[..n], Instant::now());
                            events.lock().unwrap().extend(b.addrs);
                            events6.lock().unwrap().extend(b.addrs6);
                            neigh.lock().unwrap().extend(b.neigh);
                        }
                        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                            overrun.store(true, Ordering::Relaxed);
                        }
                        Err(_) => {}
                    }
                }
            })
        };
        AddrMonitor {
            events,
            events6,
            neigh,
            overrun,
            _thread: StoppableThread::new(stop, thread),
        }
    }

    /// The events so far. Panics if the socket overran (events were lost).
    pub fn events(&self) -> Vec<AddrEvent> {
        assert!(
            !self.overrun.load(Ordering::Relaxed),
            "address monitor overran: events lost"
        );
        self.events.lock().unwrap().clone()
    }

    /// The IPv6 events so far. Panics if the socket overran.
    pub fn events6(&self) -> Vec<Addr6Event> {
        assert!(
            !self.overrun.load(Ordering::Relaxed),
            "address monitor overran: events lost"
        );
        self.events6.lock().unwrap().clone()
    }

    /// The first event of kind `new` for `addr` at or after `since`.
    pub fn first(&self, new: bool, addr: Ipv4Addr, since: Instant) -> Option<Instant> {
        self.events()
            .iter()
            .find(|e| e.new == new && e.addr.addr == addr && e.at >= since)
            .map(|e| e.at)
    }

    /// The neighbour events so far (none unless started with
    /// [`MonitorOptions::neighbours`]). Panics if the socket overran.
    pub fn neigh_events(&self) -> Vec<NeighEvent> {
        assert!(
            !self.overrun.load(Ordering::Relaxed),
            "address monitor overran: events lost"
        );
        self.neigh.lock().unwrap().clone()
    }

    /// Every address event for `ip` (either family), in order: (instant,
    /// added).
    pub fn changes_of(&self, ip: IpAddr) -> Vec<(Instant, bool)> {
        match ip {
            IpAddr::V4(ip) => self
                .events()
                .iter()
                .filter(|e| e.addr.addr == ip)
                .map(|e| (e.at, e.new))
                .collect(),
            IpAddr::V6(ip) => self
                .events6()
                .iter()
                .filter(|e| e.addr.addr == ip)
                .map(|e| (e.at, e.new))
                .collect(),
        }
    }

    /// [`AddrMonitor::first`] for an address of either family.
    pub fn first_of(&self, new: bool, ip: IpAddr, since: Instant) -> Option<Instant> {
        self.changes_of(ip)
            .into_iter()
            .find(|&(at, n)| n == new && at >= since)
            .map(|(at, _)| at)
    }

    /// The first add seen of each address of `want` (either family).
    pub fn first_adds(&self, want: &BTreeSet<IpAddr>) -> BTreeMap<IpAddr, Instant> {
        let v4 = self
            .events()
            .into_iter()
            .map(|e| (e.new, IpAddr::V4(e.addr.addr), e.at));
        let v6 = self
            .events6()
            .into_iter()
            .map(|e| (e.new, IpAddr::V6(e.addr.addr), e.at));
        let mut out = BTreeMap::new();
        for (_, ip, at) in v4
            .chain(v6)
            .filter(|&(new, ip, _)| new && want.contains(&ip))
        {
            out.entry(ip).or_insert(at);
        }
        out
    }

    /// When the neighbour entry for `ip` first named `mac` at or after
    /// `since` (an RTM_NEWNEIGH with that link-layer address).
    pub fn neigh_to(&self, ip: IpAddr, mac: [u8; 6], since: Instant) -> Option<Instant> {
        self.neigh_events()
            .iter()
            .find(|e| e.new && e.neigh.ip == ip && e.neigh.mac == Some(mac) && e.at >= since)
            .map(|e| e.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The kernel's numbers (linux/rtnetlink.h, if_addr.h, neighbour.h),
    // written out so the fixtures do not lean on the parser's crate.
    const RTM_NEWADDR: u16 = 20;
    const RTM_DELADDR: u16 = 21;
    const RTM_NEWNEIGH: u16 = 28;
    const RTM_DELNEIGH: u16 = 29;
    const IFA_ADDRESS: u16 = 1;
    const IFA_LOCAL: u16 = 2;
    const IFA_FLAGS: u16 = 8;
    const IFA_PROTO: u16 = 11;
    const NDA_DST: u16 = 1;
    const NDA_LLADDR: u16 = 2;

    /// A netlink message of `kind`: header, fixed part, attributes.
    fn msg(buf: &mut Vec<u8>, kind: u16, fixed: &[u8], attrs: &[(u16, &[u8])]) {
        let mut body = fixed.to_vec();
        for (k, v) in attrs {
            body.extend(((4 + v.len()) as u16).to_ne_bytes());
            body.extend(k.to_ne_bytes());
            body.extend(*v);
            while !body.len().is_multiple_of(4) {
                body.push(0);
            }
        }
        buf.extend(((16 + body.len()) as u32).to_ne_bytes());
        buf.extend(kind.to_ne_bytes());
        buf.extend([0u8; 10]);
        buf.extend(body);
    }

    /// An ndmsg's fixed part: family, pads, ifindex 3, state, flags, type.
    fn ndmsg(family: i32, state: u16) -> Vec<u8> {
        let mut f = vec![u8::try_from(family).unwrap(), 0, 0, 0];
        f.extend(3u32.to_ne_bytes());
        f.extend(state.to_ne_bytes());
        f.extend([0, 1]);
        f
    }

    #[test]
    fn address_and_neighbour_events_of_both_families() {
        let v4 = Ipv4Addr::new(192, 0, 2, 100);
        let v6: Ipv6Addr = "2001:db8:0:1::100".parse().unwrap();
        let mac = [2, 0, 0, 0, 0, 9];
        let mut buf = Vec::new();
        let inet = u8::try_from(libc::AF_INET).unwrap();
        let inet6 = u8::try_from(libc::AF_INET6).unwrap();
        msg(
            &mut buf,
            RTM_NEWADDR,
            &[inet, 24, 0, 0, 3, 0, 0, 0],
            &[(IFA_ADDRESS, &v4.octets()), (IFA_LOCAL, &v4.octets())],
        );
        msg(
            &mut buf,
            RTM_DELADDR,
            &[inet6, 64, 0, 0, 3, 0, 0, 0],
            &[
                (IFA_ADDRESS, &v6.octets()),
                (IFA_FLAGS, &0x282u32.to_ne_bytes()),
                (IFA_PROTO, &[0x76]),
            ],
        );
        msg(
            &mut buf,
            RTM_NEWNEIGH,
            &ndmsg(libc::AF_INET, 0x02),
            &[(NDA_DST, &v4.octets()), (NDA_LLADDR, &mac)],
        );
        msg(
            &mut buf,
            RTM_NEWNEIGH,
            &ndmsg(libc::AF_INET6, 0x04),
            &[(NDA_DST, &v6.octets()), (NDA_LLADDR, &mac)],
        );
        // An INCOMPLETE entry has no link-layer address.
        msg(
            &mut buf,
            RTM_NEWNEIGH,
            &ndmsg(libc::AF_INET6, 0x01),
            &[(NDA_DST, &v6.octets())],
        );
        msg(
            &mut buf,
            RTM_DELNEIGH,
            &ndmsg(libc::AF_INET, 0x02),
            &[(NDA_DST, &v4.octets())],
        );
        // A bridge's FDB entry (AF_BRIDGE) and a route: neither is kept.
        msg(&mut buf, RTM_NEWNEIGH, &ndmsg(libc::AF_BRIDGE, 0x80), &[]);
        msg(&mut buf, 24, &[inet, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
        let at = Instant::now();
        let b = parse_events(&buf, at);
        assert_eq!(b.addrs.len(), 1);
        assert!(b.addrs[0].new && b.addrs[0].addr.addr == v4 && b.addrs[0].addr.prefix_len == 24);
        assert_eq!(b.addrs6.len(), 1);
        let a6 = b.addrs6[0];
        assert!(!a6.new && a6.addr.addr == v6 && a6.addr.prefix_len == 64);
        assert_eq!((a6.addr.flags, a6.addr.proto), (0x282, Some(0x76)));
        let neigh: Vec<(bool, NlNeigh)> = b.neigh.iter().map(|e| (e.new, e.neigh)).collect();
        let n = |ip: IpAddr, mac: Option<[u8; 6]>, state: u16| NlNeigh {
            ifindex: 3,
            ip,
            mac,
            state,
        };
        assert_eq!(
            neigh,
            [
                (true, n(v4.into(), Some(mac), 0x02)),
                (true, n(v6.into(), Some(mac), 0x04)),
                (true, n(v6.into(), None, 0x01)),
                (false, n(v4.into(), None, 0x02)),
            ]
        );
        assert!(b.neigh.iter().all(|e| e.at == at));
        // A truncated datagram yields what is whole and no more.
        let b = parse_events(&buf[..buf.len() - 3], at);
        assert_eq!(b.neigh.len(), 4);
        assert!(parse_events(&buf[..10], at).addrs.is_empty());
    }
}
