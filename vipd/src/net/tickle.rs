//! Tickle ACKs, and the task that sends them at a move and aborts a
//! released VIP's sockets. A tickle is a TCP segment VIP:port -> client:port,
//! ACK only, seq 0, ack 0, a non-zero window: out of the client's window,
//! so the client answers with an ACK carrying its real numbers; that answer
//! reaches this node (the VIP was announced first), whose kernel has no
//! socket for it and resets it, and the client reconnects at once instead
//! of waiting for its retransmission timer. A client whose connection is
//! live here (or gone) loses nothing: only a stale connection fails fast.
//!
//! The task joins three facts per VIP before it tickles: the engine holds
//! it anew (`acquired`), its first announcement went out (`announced`: a
//! tickle answered towards the old MAC is lost, and the client ignores a
//! second one within its 500 ms per-socket limit), and the connections the
//! last holder published (`expect`). An IPv6 VIP waits for its local route.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io,
    net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use serde::Serialize;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::sockdiag::{CONNECTED, SockDiag};
use crate::vip::Vip;

/// Tickles sent back to back before a pause of [`TICKLE_PAUSE`]: about
/// 12,800 a second, so 1000 go out in under 100 ms, without filling the
/// interface's queue in one go.
const TICKLE_BURST: usize = 64;
const TICKLE_PAUSE: Duration = Duration::from_millis(5);
/// How long an IPv6 VIP's tickles wait for its local route (the kernel
/// installs it up to a few ms after the address).
const LOCAL_ROUTE_WAIT: Duration = Duration::from_millis(200);
/// A VIP's half-joined facts are forgotten after this long (the VIP was
/// never acquired, or never announced).
const PENDING_FOR: Duration = Duration::from_secs(60);

/// Window of a tickle: any non-zero value (a zero window is a probe the
/// client may treat differently).
const TICKLE_WINDOW: u16 = 1234;

/// A client connection of a VIP: the service's port on the VIP, and the
/// client's address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    pub port: u16,
    pub client: SocketAddr,
}

/// The IPv4 tickle (IP header and TCP segment) from `local` to `remote`;
/// the kernel fills the IP header's checksum and id.
pub(crate) fn tickle_v4(local: SocketAddrV4, remote: SocketAddrV4) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64;
    p[9] = libc::IPPROTO_TCP as u8;
    p[12..16].copy_from_slice(&local.ip().octets());
    p[16..20].copy_from_slice(&remote.ip().octets());
    let tcp = tcp_segment(local.port(), remote.port());
    p[20..].copy_from_slice(&tcp);
    let mut pseudo = Vec::with_capacity(12 + 20);
    pseudo.extend_from_slice(&local.ip().octets());
    pseudo.extend_from_slice(&remote.ip().octets());
    pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8, 0, 20]);
    pseudo.extend_from_slice(&tcp);
    p[36..38].copy_from_slice(&checksum(&pseudo).to_be_bytes());
    p
}

/// The IPv6 tickle: a full IPv6 header (an IPPROTO_RAW socket of IPv6
/// sends what it is given) and the TCP segment.
pub(crate) fn tickle_v6(local: SocketAddrV6, remote: SocketAddrV6) -> [u8; 60] {
    let mut p = [0u8; 60];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&20u16.to_be_bytes());
    p[6] = libc::IPPROTO_TCP as u8;
    p[7] = 64;
    p[8..24].copy_from_slice(&local.ip().octets());
    p[24..40].copy_from_slice(&remote.ip().octets());
    let tcp = tcp_segment(local.port(), remote.port());
    p[40..].copy_from_slice(&tcp);
    let mut pseudo = Vec::with_capacity(40 + 20);
    pseudo.extend_from_slice(&local.ip().octets());
    pseudo.extend_from_slice(&remote.ip().octets());
    pseudo.extend_from_slice(&20u32.to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, libc::IPPROTO_TCP as u8]);
    pseudo.extend_from_slice(&tcp);
    p[56..58].copy_from_slice(&checksum(&pseudo).to_be_bytes());
    p
}

/// ACK only, seq 0, ack 0, no options; checksum left zero.
fn tcp_segment(sport: u16, dport: u16) -> [u8; 20] {
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x10; // ACK
    t[14..16].copy_from_slice(&TICKLE_WINDOW.to_be_bytes());
    t
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let word = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The raw sockets tickles go out on, one per family, opened on first use
/// and kept.
#[derive(Default)]
pub(crate) struct TickleSockets {
    v4: Option<Socket>,
    v6: Option<Socket>,
}

impl TickleSockets {
    fn socket(&mut self, v6: bool) -> io::Result<&Socket> {
        let slot = if v6 { &mut self.v6 } else { &mut self.v4 };
        if slot.is_none() {
            let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
            *slot = Some(Socket::new(
                domain,
                Type::RAW,
                Some(Protocol::from(libc::IPPROTO_RAW)),
            )?);
        }
        Ok(slot.as_ref().expect("just opened"))
    }

    /// One tickle for the connection `vip:port` <-> `client`. A client of
    /// the other family (or a v6 VIP's v4 client) is refused.
    pub(crate) fn send(&mut self, vip: IpAddr, peer: Peer) -> io::Result<()> {
        match (vip, peer.client) {
            (IpAddr::V4(v), SocketAddr::V4(c)) => {
                let frame = tickle_v4(SocketAddrV4::new(v, peer.port), c);
                let to = SockAddr::from(SocketAddrV4::new(*c.ip(), 0));
                self.socket(false)?.send_to(&frame, &to)?;
            }
            (IpAddr::V6(v), SocketAddr::V6(c)) => {
                let frame = tickle_v6(SocketAddrV6::new(v, peer.port, 0, 0), c);
                let to = SockAddr::from(SocketAddrV6::new(*c.ip(), 0, 0, 0));
                self.socket(true)?.send_to(&frame, &to)?;
            }
            _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
        Ok(())
    }
}

/// Sends one tickle per peer, paced; returns how many went out, how many
/// failed, and the first error.
fn send_paced(
    sockets: &mut TickleSockets,
    vip: IpAddr,
    peers: &[Peer],
) -> (u64, u64, Option<io::Error>) {
    let (mut sent, mut failed, mut first) = (0, 0, None);
    for (i, peer) in peers.iter().enumerate() {
        if i > 0 && i % TICKLE_BURST == 0 {
            std::thread::sleep(TICKLE_PAUSE);
        }
        match sockets.send(vip, *peer) {
            Ok(()) => sent += 1,
            Err(e) => {
                failed += 1;
                first.get_or_insert(e);
            }
        }
    }
    (sent, failed, first)
}

/// What the handoff did for one VIP since start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HandoffStats {
    /// Connections in this node's last publish for the VIP.
    pub published: u64,
    /// Connections over the cap, left out of the last publish.
    pub publish_overflow: u64,
    pub tickles_sent: u64,
    pub tickle_errors: u64,
    /// Local sockets aborted after the VIP was released.
    pub aborted: u64,
    /// Releases of an IPv6 VIP whose sockets were left alone: the egress
    /// fence was not dropping the VIP's frames then, so an abort's reset
    /// would have left the node.
    pub not_aborted: u64,
}

enum Event {
    Acquired(Vip),
    Announced(Vip),
    Expect(Vip, Vec<Peer>),
    Released(Vip, Fenced),
}

/// Whether the egress fence drops a released VIP's frames, as the engine
/// wrote its entry: until `fence_end_ns` (the programs' clock), or not at
/// all (no XDP program, no entry, or an interface without the egress
/// fence).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fenced {
    Until { fence_end_ns: u64 },
    No,
}

/// An IPv6 abort must be over this long before the fence window closes.
const ABORT_FENCE_MARGIN: Duration = Duration::from_millis(100);

impl Fenced {
    /// Whether the window is open at `now_ns` with [`ABORT_FENCE_MARGIN`]
    /// to spare.
    fn open_at(self, now_ns: u64) -> bool {
        let margin = u64::try_from(ABORT_FENCE_MARGIN.as_nanos()).unwrap_or(u64::MAX);
        match self {
            Fenced::Until { fence_end_ns } => now_ns.saturating_add(margin) < fence_end_ns,
            Fenced::No => false,
        }
    }
}

/// Handle to the handoff task; cheap to clone.
#[derive(Clone, Debug)]
pub struct Tickler {
    tx: mpsc::UnboundedSender<Event>,
    stats: Arc<Mutex<BTreeMap<Vip, HandoffStats>>>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Acquired(v) => write!(f, "acquired {v}"),
            Event::Announced(v) => write!(f, "announced {v}"),
            Event::Expect(v, p) => write!(f, "expect {v} ({} connections)", p.len()),
            Event::Released(v, fenced) => write!(f, "released {v} ({fenced:?})"),
        }
    }
}

impl Tickler {
    /// Spawns the task on the current runtime.
    pub fn spawn(cancel: CancellationToken) -> (Tickler, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Mutex::new(BTreeMap::new()));
        let task = Task {
            pending: HashMap::new(),
            stats: Arc::clone(&stats),
        };
        (Tickler { tx, stats }, tokio::spawn(task.run(rx, cancel)))
    }

    /// The engine added `vip` and is about to announce it.
    pub(crate) fn acquired(&self, vip: Vip) {
        let _ = self.tx.send(Event::Acquired(vip));
    }

    /// An announcement of `vip` went out.
    pub(crate) fn announced(&self, vip: Vip) {
        let _ = self.tx.send(Event::Announced(vip));
    }

    /// The connections the last holder of `vip` published.
    pub(crate) fn expect(&self, vip: Vip, peers: Vec<Peer>) {
        let _ = self.tx.send(Event::Expect(vip, peers));
    }

    /// The engine removed `vip`'s address: its local sockets are aborted.
    /// An IPv6 VIP's only while `fenced` says the egress fence drops its
    /// frames (an IPv6 abort's reset leaves the node otherwise).
    pub(crate) fn released(&self, vip: Vip, fenced: Fenced) {
        let _ = self.tx.send(Event::Released(vip, fenced));
    }

    /// Records a publish of `vip`'s connections.
    pub(crate) fn published(&self, vip: Vip, count: u64, overflow: u64) {
        let mut s = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let e = s.entry(vip).or_default();
        e.published = count;
        e.publish_overflow = overflow;
    }

    pub fn stats(&self) -> BTreeMap<Vip, HandoffStats> {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[derive(Default)]
struct Pending {
    since: Option<Instant>,
    acquired: bool,
    announced: bool,
    peers: Option<Vec<Peer>>,
}

struct Task {
    pending: HashMap<Vip, Pending>,
    stats: Arc<Mutex<BTreeMap<Vip, HandoffStats>>>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>, cancel: CancellationToken) {
        let mut sockets = Some(TickleSockets::default());
        loop {
            let ev = tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    // The last step-down's releases still abort.
                    while let Ok(ev) = rx.try_recv() {
                        if let Event::Released(vip, fenced) = ev {
                            self.abort(vip, fenced).await;
                        }
                    }
                    return;
                }
                ev = rx.recv() => match ev {
                    Some(ev) => ev,
                    None => return,
                },
            };
            debug!(event = ?ev, "handoff");
            let now = Instant::now();
            self.pending
                .retain(|_, p| p.since.is_none_or(|s| now - s < PENDING_FOR));
            match ev {
                Event::Acquired(vip) => {
                    let p = self.entry(vip, now);
                    p.acquired = true;
                    p.announced = false;
                }
                Event::Announced(vip) => match self.pending.get_mut(&vip) {
                    Some(p) if p.acquired => p.announced = true,
                    _ => continue,
                },
                Event::Expect(vip, peers) => self.entry(vip, now).peers = Some(peers),
                Event::Released(vip, fenced) => {
                    self.pending.remove(&vip);
                    self.abort(vip, fenced).await;
                    continue;
                }
            }
            let ready = self
                .pending
                .iter()
                .filter(|(_, p)| p.acquired && p.announced && p.peers.is_some())
                .map(|(v, _)| *v)
                .collect::<Vec<_>>();
            for vip in ready {
                let peers = self
                    .pending
                    .remove(&vip)
                    .and_then(|p| p.peers)
                    .unwrap_or_default();
                if !peers.is_empty() {
                    self.tickle(vip, peers, &mut sockets).await;
                }
            }
        }
    }

    /// Sends one tickle to each of `peers` of `vip` (an IPv6 VIP once its
    /// local route is in place), off the async threads, and counts them.
    async fn tickle(&self, vip: Vip, peers: Vec<Peer>, sockets: &mut Option<TickleSockets>) {
        if vip.ip().is_ipv6() {
            wait_local_route(vip.ip()).await;
        }
        let socks = sockets.take().unwrap_or_default();
        let ip = vip.ip();
        let (socks, (sent, failed, error)) = tokio::task::spawn_blocking(move || {
            let mut socks = socks;
            let r = send_paced(&mut socks, ip, &peers);
            (socks, r)
        })
        .await
        .unwrap_or_else(|_| (TickleSockets::default(), (0, 0, None)));
        *sockets = Some(socks);
        {
            let mut s = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
            let e = s.entry(vip).or_default();
            e.tickles_sent += sent;
            e.tickle_errors += failed;
        }
        match error {
            None => info!(vip = %vip, tickles = sent, "tickled the VIP's clients"),
            Some(error) => {
                warn!(vip = %vip, tickles = sent, failed, %error, "tickled the VIP's clients; some tickles could not be sent")
            }
        }
    }

    fn entry(&mut self, vip: Vip, now: Instant) -> &mut Pending {
        let p = self.pending.entry(vip).or_default();
        p.since.get_or_insert(now);
        p
    }

    /// Aborts the local sockets of a released VIP. An IPv6 one's only
    /// while the egress fence drops its frames: an IPv6 socket keeps
    /// sending from a removed address, and its abort's reset would leave
    /// the node and send the client to reconnect into the gap. The window
    /// is checked again right before the abort (it is open for a second or
    /// more after a release: the address's lifetime and the kernel's
    /// slack).
    async fn abort(&self, vip: Vip, fenced: Fenced) {
        let ip = vip.ip();
        let v6 = ip.is_ipv6();
        if v6 && !fenced.open_at(crate::xdp::program_ns(Instant::now())) {
            info!(vip = %vip, ?fenced, "released IPv6 VIP not fenced: its TCP sockets are left alone");
            let mut s = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
            s.entry(vip).or_default().not_aborted += 1;
            return;
        }
        let deadline = match (v6, fenced) {
            (true, Fenced::Until { fence_end_ns }) => Some(fence_end_ns),
            _ => None,
        };
        let r = tokio::task::spawn_blocking(move || abort_sockets_until(ip, deadline)).await;
        match r {
            Ok(Ok((0, 0))) => {}
            Ok(Ok((n, left))) => {
                if n > 0 {
                    info!(vip = %vip, sockets = n, "aborted the released VIP's TCP sockets");
                }
                if left > 0 {
                    warn!(vip = %vip, sockets = left, "the fence window was closing: some of the released VIP's TCP sockets were left alone");
                }
                let mut s = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
                let e = s.entry(vip).or_default();
                e.aborted += n;
                e.not_aborted += u64::from(left > 0);
            }
            Ok(Err(e)) => {
                warn!(vip = %vip, error = %e, "cannot abort the released VIP's TCP sockets")
            }
            Err(e) => warn!(vip = %vip, error = %e, "socket abort task failed"),
        }
    }
}

/// Aborts every connected TCP socket whose local address is `ip`; returns
/// how many.
pub fn abort_sockets(ip: IpAddr) -> Result<u64, super::sockdiag::SockDiagError> {
    abort_sockets_until(ip, None).map(|(n, _)| n)
}

/// [`abort_sockets`], each abort only while the programs' clock is before
/// `deadline_ns` less [`ABORT_FENCE_MARGIN`]; returns how many were
/// aborted and how many left.
fn abort_sockets_until(
    ip: IpAddr,
    deadline_ns: Option<u64>,
) -> Result<(u64, u64), super::sockdiag::SockDiagError> {
    let mut diag = SockDiag::open()?;
    let conns = diag.connections(&BTreeSet::from([ip]), CONNECTED)?;
    let mut n = 0;
    for (i, c) in conns.iter().enumerate() {
        let open = |end| {
            Fenced::Until { fence_end_ns: end }.open_at(crate::xdp::program_ns(Instant::now()))
        };
        if deadline_ns.is_some_and(|end| !open(end)) {
            return Ok((n, (conns.len() - i) as u64));
        }
        diag.destroy(c)?;
        n += 1;
    }
    Ok((n, 0))
}

/// Waits (bounded) until the kernel routes `ip` locally: a client's answer
/// to a tickle sent before is dropped.
async fn wait_local_route(ip: IpAddr) {
    let start = Instant::now();
    while start.elapsed() < LOCAL_ROUTE_WAIT {
        if is_local(ip) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    debug!(vip = %ip, "no local route for the VIP yet; tickling anyway");
}

/// Whether the kernel routes `ip` locally now: RTM_GETROUTE answers with a
/// route of type RTN_LOCAL.
fn is_local(ip: IpAddr) -> bool {
    local_route(ip).unwrap_or(false)
}

fn local_route(ip: IpAddr) -> io::Result<bool> {
    const RTM_NEWROUTE: u16 = 24;
    const RTM_GETROUTE: u16 = 26;
    const RTA_DST: u16 = 1;
    const RTN_LOCAL: u8 = 2;
    let (family, addr): (u8, Vec<u8>) = match ip {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let s = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::DGRAM,
        Some(Protocol::from(libc::NETLINK_ROUTE)),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let attr_len = 4 + addr.len();
    let len = 16 + 12 + attr_len;
    let mut req = Vec::with_capacity(len);
    req.extend_from_slice(&(len as u32).to_ne_bytes());
    req.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
    req.extend_from_slice(&1u16.to_ne_bytes()); // NLM_F_REQUEST
    req.extend_from_slice(&[0; 8]);
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
    req.extend_from_slice(&[family, (addr.len() * 8) as u8, 0, 0, 0, 0, 0, 0]);
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    req.extend_from_slice(&RTA_DST.to_ne_bytes());
    req.extend_from_slice(&addr);
    // SAFETY: an all-zero sockaddr_nl is valid; nl_family set below.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: req and kernel outlive the call; sizes are theirs.
    let rc = unsafe {
        libc::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&raw const kernel).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 1024];
    // SAFETY: buf is valid for writes of its length.
    let n = unsafe {
        libc::recv(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let b = &buf[..n as usize];
    // An error (no route) answers NLMSG_ERROR: not local.
    Ok(b.len() >= 28 && u16::from_ne_bytes([b[4], b[5]]) == RTM_NEWROUTE && b[16 + 7] == RTN_LOCAL)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    /// The checksum over a frame (pseudo header included) comes out 0.
    fn verify(pseudo_and_segment: &[u8]) -> bool {
        checksum(pseudo_and_segment) == 0
    }

    #[test]
    fn the_v4_tickle_is_an_ack_with_seq_and_ack_zero_and_a_valid_checksum() {
        for (vip, client, sport, dport) in [
            ([192, 0, 2, 10], [192, 0, 2, 50], 80, 40000),
            ([203, 0, 113, 1], [198, 51, 100, 255], 3260, 65535),
            ([192, 0, 2, 100], [192, 0, 2, 1], 1, 1),
        ] {
            let f = tickle_v4(
                SocketAddrV4::new(Ipv4Addr::from(vip), sport),
                SocketAddrV4::new(Ipv4Addr::from(client), dport),
            );
            assert_eq!(f[0], 0x45);
            assert_eq!(&f[12..16], &vip);
            assert_eq!(&f[16..20], &client);
            let tcp = &f[20..];
            assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), sport);
            assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), dport);
            assert_eq!(&tcp[4..12], &[0; 8], "seq 0, ack 0");
            assert_eq!(tcp[13], 0x10, "ACK only");
            assert_ne!(u16::from_be_bytes([tcp[14], tcp[15]]), 0, "window");
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&vip);
            pseudo.extend_from_slice(&client);
            pseudo.extend_from_slice(&[0, 6, 0, 20]);
            pseudo.extend_from_slice(tcp);
            assert!(verify(&pseudo));
        }
    }

    #[test]
    fn the_v6_tickle_carries_a_full_header_and_a_valid_checksum() {
        let vip: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let client: Ipv6Addr = "2001:db8:1::50".parse().unwrap();
        let f = tickle_v6(
            SocketAddrV6::new(vip, 3260, 0, 0),
            SocketAddrV6::new(client, 51000, 0, 0),
        );
        assert_eq!(f[0] >> 4, 6);
        assert_eq!(u16::from_be_bytes([f[4], f[5]]), 20, "payload length");
        assert_eq!(f[6], 6, "next header TCP");
        assert_eq!(&f[8..24], &vip.octets());
        assert_eq!(&f[24..40], &client.octets());
        let tcp = &f[40..];
        assert_eq!(tcp[13], 0x10);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&vip.octets());
        pseudo.extend_from_slice(&client.octets());
        pseudo.extend_from_slice(&20u32.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 6]);
        pseudo.extend_from_slice(tcp);
        assert!(verify(&pseudo));
    }

    #[test]
    fn an_ipv6_abort_needs_the_fence_window_open_with_a_margin() {
        let end = 10_000_000_000u64;
        let fenced = Fenced::Until { fence_end_ns: end };
        assert!(fenced.open_at(0));
        assert!(fenced.open_at(end - 100_000_001));
        assert!(!fenced.open_at(end - 100_000_000), "within the margin");
        assert!(!fenced.open_at(end), "closed");
        assert!(!fenced.open_at(u64::MAX));
        assert!(!Fenced::No.open_at(0));
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071's example words sum to ddf2; the checksum is its complement.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
        // Odd lengths pad with a zero byte.
        assert_eq!(checksum(&[0xff]), !0xff00);
    }
}
