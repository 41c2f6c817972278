//! The chaos checker's eyes: what a client on the data segment sees of the
//! VIPs, and what the nodes' kernels say they hold, on one monotonic clock
//! (`Instant`, the same in every namespace).
//!
//! An [`Observer`] records three views, raw:
//! - **Probe rounds.** Every [`Options::every`] the client sends, for each
//!   VIP and each node, a neighbour probe and a TCP SYN, unicast to the
//!   node's MAC, from one AF_PACKET socket kept open for the whole run. The
//!   neighbour probe is an ARP request from an address of its own on the
//!   data segment ([`PROBE_SRC4`], IPv4) or a Neighbor Solicitation from a
//!   link-local address of its own ([`PROBE_SRC6`], IPv6), both from a locally administered MAC that
//!   carries the round number ([`probe_mac`]): an answer goes back to that
//!   MAC, so it names its round whenever it arrives, and neither form
//!   touches the nodes' entry for the client's real address. The SYN goes
//!   from the client's own address to [`Options::syn_port`] with the round
//!   in its sequence number; a SYN-ACK or a RST from the node acknowledges
//!   it (the client's kernel resets a stray SYN-ACK). An answer is
//!   attributed to a node by its source MAC. Either answer means that
//!   node's kernel (or vipd's XDP program) takes the VIP as its own.
//! - **Address events**: every node's RTM_NEWADDR/RTM_DELADDR for the VIPs
//!   ([`AddrMonitor`]), on top of a dump taken when the observer started.
//! - **The client's own connections** to each VIP ([`Options::service`]).
//!
//! What probing changes: a node answering a SYN may first have to resolve
//! the client's address, and Linux asks from the packet's source, the VIP;
//! the client's kernel then points its own entry for the VIP at that node.
//! With one holder that is the holder; during an overlap the client's
//! connections may thus follow the second node (and fail when it lets go).
//! The neighbour probes leave the nodes' entry for the client alone.
//!
//! The analysis turns samples into intervals as follows:
//! - A round stands for the interval from its send time to the next
//!   round's send time (the last round: one `every`). What it saw is what
//!   answered it, whenever the answer came.
//! - **Serving overlap** ([`serving_overlaps`]): a maximal run of
//!   consecutive rounds in each of which the same two nodes both answered
//!   the same VIP's probes of one kind; it runs from the first round's send
//!   time to the send time of the round after the last one. Each end is
//!   thus within one round interval of the truth. Answers of different
//!   rounds are never combined: a handover between two rounds is no
//!   overlap, however late the old holder's answer arrived.
//! - **Unserved** ([`unserved_by`]): a maximal run of consecutive rounds in
//!   which no node answered the VIP's probe of that kind, from the first
//!   such round's send time to the next answered round's send time (or the
//!   end of the last round). Rounds with a probe that could not be sent
//!   are passed over.
//! - **Address overlap** ([`address_overlaps`]): two nodes had the VIP
//!   from the event that gave it to the second to the event that took it
//!   from one of them (an IPv6 address whose DAD failed counts as gone).
//! - **Client failures** ([`client_failures`]): a maximal run of failed
//!   connection attempts, from the first one's start to the end of the next
//!   successful attempt (or of the last failed one).

use std::collections::{BTreeSet, HashMap};
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::lab::{
    AddrMonitor, AddrReader, ArpFrame, Host, MonitorOptions, NdpFrame, Netns, StoppableThread,
    enter_netns, internet_checksum, packet_socket, pseudo_header4, pseudo_header6,
    realtime_priority,
};

/// The IPv4 sender of the neighbour probes: on the data segment, and no
/// address anyone uses. Not 0.0.0.0: an ARP request from 0.0.0.0 for an
/// address is another host's RFC 5227 probe for it, and vipd rightly keeps
/// a VIP another host is probing for off its node.
pub const PROBE_SRC4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 253);
/// The IPv6 source of the neighbour probes: link-local, so every node can
/// answer it on the segment, and no address anyone uses.
pub const PROBE_SRC6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0x76, 0x7072, 0x6f62);
/// The neighbour probes' MACs cycle through this many values: the bridge
/// learns each, so the cycle bounds its table; an answer later than this
/// many rounds would be taken for a newer round's.
const MAC_CYCLE: u32 = 4096;
/// The first four bytes of a probe MAC (locally administered, unicast).
const MAC_PREFIX: [u8; 4] = [0x02, 0x76, 0x70, 0x62];
/// The low byte of every SYN's sequence number; the round is above it.
const SEQ_TAG: u32 = 0x5a;
/// The SYNs' source ports cycle through this range (above Linux's
/// ephemeral ports, so no client socket of ours is ever hit): a new port
/// per round keeps a node's half-open connection of the last round out of
/// the next round's way.
const SPORT_BASE: u16 = 61000;
const SPORT_SPAN: u32 = 1000;
/// The receive buffer of the observer's packet socket, in bytes.
const RECEIVE_BUFFER: libc::c_int = 8 << 20;
/// How long the last round's answers get before the receiver stops.
const ANSWER_GRACE: Duration = Duration::from_millis(100);
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMPV6: u8 = 58;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// One node the observer watches: its name (for reports), the MAC of its
/// data interface (answers are attributed by source MAC), and its host
/// (its namespace, where its address events are read).
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub mac: [u8; 6],
    pub host: Host,
}

impl Target {
    /// `host` watched through its interface `ifname` (the one on the
    /// client's segment); named after the host.
    pub fn new(host: &Host, ifname: &str) -> Target {
        Target {
            name: host.name().to_string(),
            mac: host.mac_bytes(ifname),
            host: host.clone(),
        }
    }
}

/// How the client's own connections are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// A plain TCP connect to this port; a banner `served-by <node>`, if
    /// the server sends one at once, names the node.
    Connect(u16),
    /// An HTTP/1.0 GET of `/` on this port; a body `served-by <node>`
    /// names the node (the lab's console).
    HttpGet(u16),
}

/// What the observer does, and how often.
#[derive(Clone, Debug)]
pub struct Options {
    /// Interval between two probe rounds.
    pub every: Duration,
    /// The port the TCP SYN probes go to.
    pub syn_port: u16,
    /// The client's own connections, one thread per VIP (`None`: none).
    pub service: Option<Service>,
    /// Interval between two connection attempts to one VIP.
    pub connect_every: Duration,
    /// How long one connection attempt may take before it counts as failed.
    pub connect_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            every: Duration::from_millis(25),
            syn_port: 9,
            service: None,
            connect_every: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// Which raw probe an answer came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeKind {
    /// An ARP request (IPv4) or a Neighbor Solicitation (IPv6) answered.
    Neighbour,
    /// A TCP SYN answered by a SYN-ACK or a RST.
    Tcp,
}

/// What an [`Overlap`] was seen in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Evidence {
    /// Two nodes answered one probe round of this kind.
    Probe(ProbeKind),
    /// Two nodes had the address at once (their address events).
    Address,
}

/// One probe round: every probe of it was sent at about `sent`.
#[derive(Clone, Copy, Debug)]
pub struct Round {
    pub seq: u32,
    pub sent: Instant,
    /// Probes of this round that could not be sent (link down, full queue).
    pub unsent: u32,
}

/// One answer to a raw probe, attributed to its round by the fields it
/// echoes, and to its node by its source MAC.
#[derive(Clone, Copy, Debug)]
pub struct Answer {
    pub round: u32,
    pub vip: IpAddr,
    /// Index into [`Observations::targets`].
    pub node: usize,
    pub kind: ProbeKind,
    /// When the client read it.
    pub at: Instant,
}

/// One address added to or removed from a node (RTM_NEWADDR/DELADDR).
#[derive(Clone, Copy, Debug)]
pub struct AddrChange {
    pub at: Instant,
    /// Index into [`Observations::targets`].
    pub node: usize,
    pub vip: IpAddr,
    pub added: bool,
}

/// One client connection attempt.
#[derive(Clone, Debug)]
pub struct Connection {
    pub vip: IpAddr,
    pub started: Instant,
    /// When it succeeded or failed.
    pub at: Instant,
    /// `Ok(node)` when it succeeded (the node, if the server named it),
    /// else the error.
    pub outcome: Result<Option<String>, String>,
}

/// Everything observed, raw, on the monotonic clock.
#[derive(Clone, Debug)]
pub struct Observations {
    /// Node names, by index.
    pub targets: Vec<String>,
    pub vips: Vec<IpAddr>,
    pub every: Duration,
    pub started: Instant,
    pub stopped: Instant,
    /// (node, VIP) pairs present when observation started.
    pub initial: Vec<(usize, IpAddr)>,
    pub rounds: Vec<Round>,
    pub answers: Vec<Answer>,
    /// Frames from a node's MAC that matched no probe (late beyond
    /// recognition, or not ours): counted, not used.
    pub stray: usize,
    pub addr_changes: Vec<AddrChange>,
    pub connections: Vec<Connection>,
}

/// Two nodes serving (or holding) one VIP at once, `from` to `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    pub vip: IpAddr,
    pub nodes: (String, String),
    pub from: Instant,
    pub to: Instant,
    pub how: Evidence,
    /// Probe rounds in which both answered (0 for address overlaps).
    pub rounds: usize,
}

impl Overlap {
    pub fn duration(&self) -> Duration {
        self.to.saturating_duration_since(self.from)
    }
}

/// The running observer; [`Observer::stop`] returns what it saw.
pub struct Observer {
    shared: Arc<Shared>,
    sender: StoppableThread,
    receiver: StoppableThread,
    clients: Vec<StoppableThread>,
    monitors: Vec<AddrMonitor>,
    targets: Vec<String>,
    vips: Vec<IpAddr>,
    every: Duration,
    started: Instant,
    initial: Vec<(usize, IpAddr)>,
}

/// What the threads record.
#[derive(Default)]
struct Shared {
    rounds: Mutex<Vec<Round>>,
    answers: Mutex<Vec<Answer>>,
    stray: AtomicUsize,
    connections: Mutex<Vec<Connection>>,
}

/// What the sender and the receiver need to know of the run.
struct Plan {
    targets: Vec<[u8; 6]>,
    vips: Vec<IpAddr>,
    client_mac: [u8; 6],
    client4: Option<Ipv4Addr>,
    client6: Option<Ipv6Addr>,
    syn_port: u16,
    /// Rounds started so far (the next round's number).
    started_rounds: AtomicU32,
}

impl Observer {
    /// Starts probing `vips` on every node of `targets` from `client`'s
    /// interface `ifname`, recording the nodes' address events and, if
    /// asked, the client's own connections. Panics when the client lacks an
    /// address of a VIP's family (the SYNs come from it) or a socket cannot
    /// be opened.
    pub fn start(
        client: &Netns,
        ifname: &str,
        targets: Vec<Target>,
        vips: Vec<IpAddr>,
        opts: Options,
    ) -> Observer {
        assert!(
            targets.len() <= 64,
            "{} targets: the observer tells at most 64 apart",
            targets.len()
        );
        assert!(!opts.every.is_zero(), "a probe interval of zero");
        let client4 = client.ipv4_addrs(ifname).first().map(|&(a, _)| a);
        let client6 = client
            .ipv6_addrs(ifname)
            .iter()
            .find(|a| !a.tentative && !a.dadfailed && a.addr.segments()[0] & 0xffc0 != 0xfe80)
            .map(|a| a.addr);
        for vip in &vips {
            let have = match vip {
                IpAddr::V4(_) => client4.is_some(),
                IpAddr::V6(_) => client6.is_some(),
            };
            assert!(
                have,
                "the client {} has no {} address on {ifname} to probe {vip} from",
                client.name(),
                if vip.is_ipv4() { "IPv4" } else { "global IPv6" }
            );
        }
        let plan = Arc::new(Plan {
            targets: targets.iter().map(|t| t.mac).collect(),
            vips: vips.clone(),
            client_mac: client.mac_bytes(ifname),
            client4,
            client6,
            syn_port: opts.syn_port,
            started_rounds: AtomicU32::new(0),
        });

        // Subscribed before the dump, and the clock read before it too: an
        // event during the dump is then replayed on top of it, which
        // changes nothing (adding what is there, removing what is not).
        // At a real-time priority, so an event's stamp is when it happened
        // even on a machine the chaos run keeps busy.
        let monitor = MonitorOptions {
            realtime: true,
            ..MonitorOptions::default()
        };
        let monitors: Vec<AddrMonitor> = targets
            .iter()
            .map(|t| AddrMonitor::start_with(&t.host, monitor))
            .collect();
        let started = Instant::now();
        let mut initial = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            let reader = AddrReader::new(&t.host);
            let present: BTreeSet<IpAddr> = reader
                .addrs()
                .into_iter()
                .map(|a| IpAddr::V4(a.addr))
                .chain(
                    reader
                        .addrs6()
                        .into_iter()
                        .filter(|a| !a.dadfailed())
                        .map(|a| IpAddr::V6(a.addr)),
                )
                .collect();
            initial.extend(vips.iter().filter(|v| present.contains(v)).map(|&v| (i, v)));
        }

        let shared = Arc::new(Shared::default());
        let receiver = {
            let (shared, plan) = (shared.clone(), plan.clone());
            let stop = Arc::new(AtomicBool::new(false));
            let ifname = ifname.to_string();
            let halt = stop.clone();
            let thread = client.spawn_opened(
                &format!("the observer's receiver on {ifname}"),
                move || receive_socket(&ifname),
                move |socket| receive(&socket, &plan, &shared, &halt),
            );
            StoppableThread::new(stop, thread)
        };
        let sender = {
            let (shared, plan) = (shared.clone(), plan.clone());
            let stop = Arc::new(AtomicBool::new(false));
            let ifname = ifname.to_string();
            let halt = stop.clone();
            let every = opts.every;
            let thread = client.spawn_opened(
                &format!("the observer's sender on {ifname}"),
                move || {
                    // Rounds on time under load: the sender only ever sleeps.
                    realtime_priority();
                    let socket = packet_socket(&ifname, 0)?;
                    socket.set_nonblocking(true)?;
                    Ok::<_, std::io::Error>(socket)
                },
                move |socket| send_rounds(&socket, &plan, &shared, every, &halt),
            );
            StoppableThread::new(stop, thread)
        };
        let clients = match opts.service {
            None => Vec::new(),
            Some(service) => vips
                .iter()
                .map(|&vip| connect_loop(client, vip, service, &opts, &shared))
                .collect(),
        };
        Observer {
            shared,
            sender,
            receiver,
            clients,
            monitors,
            targets: targets.into_iter().map(|t| t.name).collect(),
            vips,
            every: opts.every,
            started,
            initial,
        }
    }

    /// What has been observed so far (the observer goes on). Rounds sent
    /// in the last moments, whose answers may still be on their way, are
    /// left out.
    pub fn snapshot(&self) -> Observations {
        let now = Instant::now();
        let mut o = self.collect(now);
        o.rounds.retain(|r| r.sent + ANSWER_GRACE <= now);
        o
    }

    /// Stops every thread (after the last round's answers had time to
    /// come) and returns everything observed.
    pub fn stop(mut self) -> Observations {
        self.sender.halt();
        std::thread::sleep(ANSWER_GRACE);
        self.receiver.halt();
        for c in &mut self.clients {
            c.halt();
        }
        let o = self.collect(Instant::now());
        // The monitors stop on drop; everything they saw is in `o`.
        drop(std::mem::take(&mut self.monitors));
        o
    }

    fn collect(&self, stopped: Instant) -> Observations {
        let mut addr_changes = Vec::new();
        for (node, m) in self.monitors.iter().enumerate() {
            addr_changes.extend(
                m.events()
                    .into_iter()
                    .map(|e| (e.at, IpAddr::V4(e.addr.addr), e.new))
                    .chain(
                        m.events6()
                            .into_iter()
                            .map(|e| (e.at, IpAddr::V6(e.addr.addr), e.new && !e.addr.dadfailed())),
                    )
                    .filter(|(_, vip, _)| self.vips.contains(vip))
                    .map(|(at, vip, added)| AddrChange {
                        at,
                        node,
                        vip,
                        added,
                    }),
            );
        }
        addr_changes.sort_by_key(|c| c.at);
        let mut connections = self.shared.connections.lock().unwrap().clone();
        connections.sort_by_key(|c| c.started);
        Observations {
            targets: self.targets.clone(),
            vips: self.vips.clone(),
            every: self.every,
            started: self.started,
            stopped,
            initial: self.initial.clone(),
            rounds: self.shared.rounds.lock().unwrap().clone(),
            answers: self.shared.answers.lock().unwrap().clone(),
            stray: self.shared.stray.load(Ordering::Relaxed),
            addr_changes,
            connections,
        }
    }
}

// ---- the sender ----

/// Sends a round every `every` until `stop`: a neighbour probe and a SYN
/// per VIP and node. A late wake-up is not made up for with a burst: the
/// next round is then one interval after this one.
fn send_rounds(socket: &Socket, plan: &Plan, shared: &Shared, every: Duration, stop: &AtomicBool) {
    let mut next = Instant::now();
    let mut seq: u32 = 0;
    let mut frames: Vec<Vec<u8>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
            continue;
        }
        frames.clear();
        for &vip in &plan.vips {
            for &mac in &plan.targets {
                frames.push(neighbour_probe(mac, vip, seq));
                frames.push(syn_probe(plan, mac, vip, seq));
            }
        }
        // Published before the first frame leaves, so the receiver knows
        // the round of any answer it gets.
        plan.started_rounds
            .store(seq.wrapping_add(1), Ordering::SeqCst);
        let sent = Instant::now();
        let mut unsent = 0;
        for f in &frames {
            // SAFETY: `f` is valid for its length; the socket is bound to
            // the interface, so no address is needed.
            let n = unsafe {
                libc::send(
                    socket.as_raw_fd(),
                    f.as_ptr().cast(),
                    f.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if usize::try_from(n).ok() != Some(f.len()) {
                unsent += 1;
            }
        }
        shared
            .rounds
            .lock()
            .unwrap()
            .push(Round { seq, sent, unsent });
        seq = seq.wrapping_add(1);
        next = (next + every).max(sent);
    }
}

/// The MAC a neighbour probe of round `seq` comes from (and its answer
/// goes to).
pub fn probe_mac(seq: u32) -> [u8; 6] {
    let low = (seq % MAC_CYCLE) as u16;
    let [hi, lo] = low.to_be_bytes();
    [
        MAC_PREFIX[0],
        MAC_PREFIX[1],
        MAC_PREFIX[2],
        MAC_PREFIX[3],
        hi,
        lo,
    ]
}

/// The round a probe MAC names, modulo [`MAC_CYCLE`].
fn mac_round(mac: [u8; 6]) -> Option<u32> {
    (mac[..4] == MAC_PREFIX)
        .then(|| u32::from(u16::from_be_bytes([mac[4], mac[5]])))
        .filter(|&low| low < MAC_CYCLE)
}

/// The latest round up to `last` that is `low` modulo `cycle`.
fn unwrap_round(low: u32, cycle: u32, last: u32) -> Option<u32> {
    (low <= last).then(|| last - (last - low) % cycle)
}

/// An ARP request (from [`PROBE_SRC4`]) or a Neighbor Solicitation
/// (from [`PROBE_SRC6`], to the VIP itself) for `vip`, to `node`'s MAC,
/// from round `seq`'s probe MAC.
fn neighbour_probe(node: [u8; 6], vip: IpAddr, seq: u32) -> Vec<u8> {
    let me = probe_mac(seq);
    match vip {
        IpAddr::V4(vip) => {
            let mut f = eth(node, me, ETH_P_ARP);
            f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            f.extend_from_slice(&me);
            f.extend_from_slice(&PROBE_SRC4.octets());
            f.extend_from_slice(&[0; 6]);
            f.extend_from_slice(&vip.octets());
            f
        }
        IpAddr::V6(vip) => {
            let mut icmp = vec![NdpFrame::SOLICITATION, 0, 0, 0, 0, 0, 0, 0];
            icmp.extend_from_slice(&vip.octets());
            icmp.extend_from_slice(&[1, 1]);
            icmp.extend_from_slice(&me);
            let sum = internet_checksum(&[
                &pseudo_header6(PROBE_SRC6, vip, IPPROTO_ICMPV6, icmp.len()),
                &icmp,
            ]);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            let mut f = eth(node, me, ETH_P_IPV6);
            f.extend_from_slice(&ipv6_header(
                PROBE_SRC6,
                vip,
                IPPROTO_ICMPV6,
                icmp.len(),
                255,
            ));
            f.extend_from_slice(&icmp);
            f
        }
    }
}

/// A TCP SYN of round `seq` from the client to `vip`, to `node`'s MAC.
fn syn_probe(plan: &Plan, node: [u8; 6], vip: IpAddr, seq: u32) -> Vec<u8> {
    let sport = SPORT_BASE + (seq % SPORT_SPAN) as u16;
    let isn = syn_seq(seq);
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&plan.syn_port.to_be_bytes());
    tcp.extend_from_slice(&isn.to_be_bytes());
    tcp.extend_from_slice(&[0; 4]);
    tcp.extend_from_slice(&[5 << 4, TCP_SYN]);
    tcp.extend_from_slice(&1024u16.to_be_bytes());
    tcp.extend_from_slice(&[0; 4]);
    match vip {
        IpAddr::V4(vip) => {
            let src = plan.client4.expect("checked at start");
            let sum = internet_checksum(&[&pseudo_header4(src, vip, IPPROTO_TCP, tcp.len()), &tcp]);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&(20 + tcp.len() as u16).to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_TCP, 0, 0]);
            ip.extend_from_slice(&src.octets());
            ip.extend_from_slice(&vip.octets());
            let sum = internet_checksum(&[&ip]);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            let mut f = eth(node, plan.client_mac, ETH_P_IP);
            f.extend_from_slice(&ip);
            f.extend_from_slice(&tcp);
            f
        }
        IpAddr::V6(vip) => {
            let src = plan.client6.expect("checked at start");
            let sum = internet_checksum(&[&pseudo_header6(src, vip, IPPROTO_TCP, tcp.len()), &tcp]);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            let mut f = eth(node, plan.client_mac, ETH_P_IPV6);
            f.extend_from_slice(&ipv6_header(src, vip, IPPROTO_TCP, tcp.len(), 64));
            f.extend_from_slice(&tcp);
            f
        }
    }
}

/// The initial sequence number of round `seq`'s SYNs.
fn syn_seq(seq: u32) -> u32 {
    (seq << 8) | SEQ_TAG
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(90);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, next: u8, len: usize, hops: u8) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(len as u16).to_be_bytes());
    h.extend_from_slice(&[next, hops]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h
}

// ---- the receiver ----

/// An ETH_P_ALL socket on `ifname` that also sees frames to other MACs
/// (the probe MACs): promiscuous for as long as it is open.
fn receive_socket(ifname: &str) -> std::io::Result<Socket> {
    let socket = packet_socket(ifname, libc::ETH_P_ALL as u16)?;
    // Room for a few seconds of answers, should the thread be kept from
    // reading: a dropped answer would read as a node not serving.
    let bytes: libc::c_int = RECEIVE_BUFFER;
    // SAFETY: an int option of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let c_name = std::ffi::CString::new(ifname).map_err(std::io::Error::other)?;
    // SAFETY: a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    // SAFETY: all-zero is a valid packet_mreq.
    let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mreq.mr_ifindex = i32::try_from(ifindex).map_err(std::io::Error::other)?;
    mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
    // SAFETY: mreq is a valid packet_mreq and we pass its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            (&raw const mreq).cast(),
            std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(socket)
}

fn receive(socket: &Socket, plan: &Plan, shared: &Shared, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: buf and from are valid for the lengths passed.
        let n = unsafe {
            libc::recvfrom(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &raw mut len,
            )
        };
        let Ok(n) = usize::try_from(n) else {
            match std::io::Error::last_os_error().kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted => continue,
                // The interface went away: nothing more to see.
                _ => break,
            }
        };
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let at = Instant::now();
        let last = plan.started_rounds.load(Ordering::SeqCst).checked_sub(1);
        match classify(&buf[..n], plan, last) {
            Seen::Answer {
                round,
                vip,
                node,
                kind,
            } => shared.answers.lock().unwrap().push(Answer {
                round,
                vip,
                node,
                kind,
                at,
            }),
            Seen::Stray => {
                shared.stray.fetch_add(1, Ordering::Relaxed);
            }
            Seen::Other => {}
        }
    }
}

/// What a received frame is to the observer.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Answer {
        round: u32,
        vip: IpAddr,
        node: usize,
        kind: ProbeKind,
    },
    /// From a node, about a VIP, shaped like an answer, but to no probe
    /// of ours that was sent.
    Stray,
    Other,
}

/// Reads `frame` as an answer to a probe of rounds up to `last`.
fn classify(frame: &[u8], plan: &Plan, last: Option<u32>) -> Seen {
    let Some(src) = frame
        .get(6..12)
        .map(|m| <[u8; 6]>::try_from(m).expect("6 bytes"))
    else {
        return Seen::Other;
    };
    let Some(node) = plan.targets.iter().position(|&m| m == src) else {
        return Seen::Other;
    };
    let answer = |vip: IpAddr, kind: ProbeKind, round: Option<u32>| {
        if !plan.vips.contains(&vip) {
            return Seen::Other;
        }
        match round {
            Some(round) => Seen::Answer {
                round,
                vip,
                node,
                kind,
            },
            None => Seen::Stray,
        }
    };
    let last = last.unwrap_or(0);
    let unwrap_mac =
        |mac: [u8; 6]| mac_round(mac).and_then(|low| unwrap_round(low, MAC_CYCLE, last));
    // Replies to the client's own kernel (its address resolution, its
    // connections) are no answers to probes, and no strays either.
    if let Some(a) = ArpFrame::parse(frame) {
        if a.op != ArpFrame::REPLY || a.tpa != PROBE_SRC4 || mac_round(a.tha).is_none() {
            return Seen::Other;
        }
        return answer(IpAddr::V4(a.spa), ProbeKind::Neighbour, unwrap_mac(a.tha));
    }
    if let Some(n) = NdpFrame::parse(frame) {
        if n.icmp_type != NdpFrame::ADVERTISEMENT || !n.solicited || n.dst != PROBE_SRC6 {
            return Seen::Other;
        }
        return answer(
            IpAddr::V6(n.target),
            ProbeKind::Neighbour,
            unwrap_mac(n.eth_dst),
        );
    }
    let Some((vip, tcp)) = tcp_segment(frame) else {
        return Seen::Other;
    };
    if tcp.len() < 20 || u16::from_be_bytes([tcp[0], tcp[1]]) != plan.syn_port {
        return Seen::Other;
    }
    let flags = tcp[13];
    let acks_syn = flags & TCP_ACK != 0 && (flags & TCP_RST != 0 || flags & TCP_SYN != 0);
    if !acks_syn {
        return Seen::Other;
    }
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    if !(SPORT_BASE..SPORT_BASE + SPORT_SPAN as u16).contains(&dport) {
        return Seen::Other;
    }
    let isn = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]).wrapping_sub(1);
    let round = (isn & 0xff == SEQ_TAG)
        .then_some(isn >> 8)
        .filter(|&r| r <= last && SPORT_BASE + (r % SPORT_SPAN) as u16 == dport);
    answer(vip, ProbeKind::Tcp, round)
}

/// The source address and the TCP header of `frame`, if it is a TCP
/// segment over IPv4 (any header length) or IPv6 (no extension headers).
fn tcp_segment(frame: &[u8]) -> Option<(IpAddr, &[u8])> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    match ethertype {
        ETH_P_IP => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            if ip[0] >> 4 != 4 || *ip.get(9)? != IPPROTO_TCP || ihl < 20 {
                return None;
            }
            let src = Ipv4Addr::new(*ip.get(12)?, ip[13], ip[14], ip[15]);
            Some((IpAddr::V4(src), ip.get(ihl..)?))
        }
        ETH_P_IPV6 => {
            if ip.first()? >> 4 != 6 || *ip.get(6)? != IPPROTO_TCP {
                return None;
            }
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            Some((IpAddr::V6(Ipv6Addr::from(src)), ip.get(40..)?))
        }
        _ => None,
    }
}

// ---- the client's own connections ----

/// A thread in `client`'s namespace that connects to `vip` every
/// `opts.connect_every` and records each attempt.
fn connect_loop(
    client: &Netns,
    vip: IpAddr,
    service: Service,
    opts: &Options,
    shared: &Arc<Shared>,
) -> StoppableThread {
    let stop = Arc::new(AtomicBool::new(false));
    let (halt, shared) = (stop.clone(), shared.clone());
    let (every, timeout) = (opts.connect_every, opts.connect_timeout);
    let path = client.path();
    let thread = std::thread::spawn(move || {
        enter_netns(&path);
        while !halt.load(Ordering::Relaxed) {
            let started = Instant::now();
            let outcome = attempt(vip, service, started + timeout);
            shared.connections.lock().unwrap().push(Connection {
                vip,
                started,
                at: Instant::now(),
                outcome,
            });
            std::thread::sleep((started + every).saturating_duration_since(Instant::now()));
        }
    });
    StoppableThread::new(stop, thread)
}

/// One connection to `vip` for `service`, given up at `deadline`: the node
/// the server named (if it did), or what went wrong.
fn attempt(vip: IpAddr, service: Service, deadline: Instant) -> Result<Option<String>, String> {
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "timed out".to_string())
    };
    let port = match service {
        Service::Connect(p) | Service::HttpGet(p) => p,
    };
    let mut s = TcpStream::connect_timeout(&SocketAddr::new(vip, port), left()?)
        .map_err(|e| format!("connect: {e}"))?;
    match service {
        Service::Connect(_) => {
            // A server that sends no banner at once is fine: connected is served.
            let mut buf = [0u8; 256];
            let _ = s.set_read_timeout(Some(left().unwrap_or(Duration::from_millis(1))));
            let n = s.read(&mut buf).unwrap_or(0);
            Ok(served_by(&String::from_utf8_lossy(&buf[..n])))
        }
        Service::HttpGet(_) => {
            s.set_write_timeout(Some(left()?))
                .and_then(|()| {
                    s.write_all(format!("GET / HTTP/1.0\r\nHost: {vip}\r\n\r\n").as_bytes())
                })
                .map_err(|e| format!("request: {e}"))?;
            let mut reply = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                s.set_read_timeout(Some(left()?))
                    .map_err(|e| format!("reply: {e}"))?;
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => reply.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("reply: {e}")),
                }
            }
            let text = String::from_utf8_lossy(&reply);
            let status = text.lines().next().unwrap_or("");
            if !(status.starts_with("HTTP/1.") && status.split_whitespace().nth(1) == Some("200")) {
                return Err(format!("HTTP status line {status:?}"));
            }
            Ok(text
                .split_once("\r\n\r\n")
                .and_then(|(_, body)| served_by(body)))
        }
    }
}

/// The node named by a `served-by <node>` banner or page.
fn served_by(text: &str) -> Option<String> {
    text.trim()
        .strip_prefix("served-by ")
        .map(|n| n.trim().to_string())
}

// ---- analysis ----

/// The entry of `o.rounds` each round number is at.
fn round_index(o: &Observations) -> impl Fn(u32) -> Option<usize> + '_ {
    // The sender numbers its rounds 0, 1, 2, ...: a lookup is then a
    // subtraction; anything else (hand-made samples) takes a map.
    let first = o.rounds.first().map_or(0, |r| r.seq);
    let contiguous = o
        .rounds
        .iter()
        .enumerate()
        .all(|(i, r)| r.seq.wrapping_sub(first) as usize == i);
    let map: HashMap<u32, usize> = if contiguous {
        HashMap::new()
    } else {
        o.rounds
            .iter()
            .enumerate()
            .map(|(i, r)| (r.seq, i))
            .collect()
    };
    move |seq| {
        if contiguous {
            let i = seq.wrapping_sub(first) as usize;
            (i < o.rounds.len()).then_some(i)
        } else {
            map.get(&seq).copied()
        }
    }
}

/// The nodes that answered `vip`'s probe of `kind` in each round, as a
/// bit mask per entry of `o.rounds`.
fn answer_mask(o: &Observations, vip: IpAddr, kind: ProbeKind) -> Vec<u64> {
    let index = round_index(o);
    let mut mask = vec![0u64; o.rounds.len()];
    for a in o
        .answers
        .iter()
        .filter(|a| a.kind == kind && a.vip == vip && a.node < 64)
    {
        if let Some(i) = index(a.round) {
            mask[i] |= 1 << a.node;
        }
    }
    mask
}

/// When the interval that round `i` stands for ends.
fn round_end(o: &Observations, i: usize) -> Instant {
    o.rounds
        .get(i + 1)
        .map_or_else(|| o.rounds[i].sent + o.every, |r| r.sent)
}

const KINDS: [ProbeKind; 2] = [ProbeKind::Neighbour, ProbeKind::Tcp];

/// Every stretch in which two nodes answered the same probe round for one
/// VIP, by kind (see the module doc), in the order of VIPs, kinds, pairs
/// and time.
pub fn serving_overlaps(o: &Observations) -> Vec<Overlap> {
    let n = o.targets.len();
    let mut out = Vec::new();
    for &vip in &o.vips {
        for kind in KINDS {
            let m = answer_mask(o, vip, kind);
            for a in 0..n {
                for b in a + 1..n {
                    let both = (1u64 << a) | (1u64 << b);
                    let mut run: Option<(usize, usize)> = None;
                    for i in 0..=m.len() {
                        let hit = m.get(i).is_some_and(|&x| x & both == both);
                        match (hit, run) {
                            (true, None) => run = Some((i, 1)),
                            (true, Some((s, k))) => run = Some((s, k + 1)),
                            (false, Some((s, k))) => {
                                out.push(Overlap {
                                    vip,
                                    nodes: (o.targets[a].clone(), o.targets[b].clone()),
                                    from: o.rounds[s].sent,
                                    to: round_end(o, i - 1),
                                    how: Evidence::Probe(kind),
                                    rounds: k,
                                });
                                run = None;
                            }
                            (false, None) => {}
                        }
                    }
                }
            }
        }
    }
    out
}

/// The stretches within `from..to` in which no node answered the TCP probe
/// for `vip`.
pub fn unserved(
    o: &Observations,
    vip: IpAddr,
    from: Instant,
    to: Instant,
) -> Vec<(Instant, Instant)> {
    unserved_by(o, vip, ProbeKind::Tcp, from, to)
}

/// [`unserved`] for probes of `kind` (see the module doc), clipped to
/// `from..to`.
pub fn unserved_by(
    o: &Observations,
    vip: IpAddr,
    kind: ProbeKind,
    from: Instant,
    to: Instant,
) -> Vec<(Instant, Instant)> {
    let m = answer_mask(o, vip, kind);
    let mut out = Vec::new();
    let mut open: Option<Instant> = None;
    let mut last = None;
    for (i, r) in o.rounds.iter().enumerate() {
        if r.unsent > 0 {
            continue;
        }
        last = Some(i);
        let answered = m[i] != 0;
        match (answered, open) {
            (false, None) => open = Some(r.sent),
            (true, Some(start)) => {
                out.push((start, r.sent));
                open = None;
            }
            _ => {}
        }
    }
    if let (Some(start), Some(i)) = (open, last) {
        out.push((start, o.rounds[i].sent + o.every));
    }
    clip(out, from, to)
}

fn clip(stretches: Vec<(Instant, Instant)>, from: Instant, to: Instant) -> Vec<(Instant, Instant)> {
    stretches
        .into_iter()
        .map(|(a, b)| (a.max(from), b.min(to)))
        .filter(|(a, b)| a < b)
        .collect()
}

/// Every stretch in which two nodes had one VIP at once, from their
/// address events on top of the addresses present at the start.
pub fn address_overlaps(o: &Observations) -> Vec<Overlap> {
    let n = o.targets.len();
    let mut out = Vec::new();
    for &vip in &o.vips {
        let mut present: Vec<bool> = (0..n).map(|i| o.initial.contains(&(i, vip))).collect();
        let mut open: HashMap<(usize, usize), Instant> = HashMap::new();
        let pairs = |present: &[bool]| -> Vec<(usize, usize)> {
            (0..n)
                .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
                .filter(|&(a, b)| present[a] && present[b])
                .collect()
        };
        for p in pairs(&present) {
            open.insert(p, o.started);
        }
        let close = |p: (usize, usize), from: Instant, to: Instant, out: &mut Vec<Overlap>| {
            out.push(Overlap {
                vip,
                nodes: (o.targets[p.0].clone(), o.targets[p.1].clone()),
                from,
                to,
                how: Evidence::Address,
                rounds: 0,
            });
        };
        for c in o
            .addr_changes
            .iter()
            .filter(|c| c.vip == vip && c.at >= o.started && c.node < n)
        {
            present[c.node] = c.added;
            let now: BTreeSet<(usize, usize)> = pairs(&present).into_iter().collect();
            let mut ended: Vec<(usize, usize)> =
                open.keys().filter(|p| !now.contains(p)).copied().collect();
            ended.sort_unstable();
            for p in ended {
                let from = open.remove(&p).expect("open");
                close(p, from, c.at, &mut out);
            }
            for p in now {
                open.entry(p).or_insert(c.at);
            }
        }
        let mut rest: Vec<_> = open.into_iter().collect();
        rest.sort_unstable();
        for (p, from) in rest {
            close(p, from, o.stopped, &mut out);
        }
    }
    out.sort_by_key(|v| (v.vip, v.from));
    out
}

/// The stretches within `from..to` in which the client's connections to
/// `vip` failed (see the module doc).
pub fn client_failures(
    o: &Observations,
    vip: IpAddr,
    from: Instant,
    to: Instant,
) -> Vec<(Instant, Instant)> {
    let mut out = Vec::new();
    let mut open: Option<(Instant, Instant)> = None;
    for c in o.connections.iter().filter(|c| c.vip == vip) {
        match (c.outcome.is_ok(), open) {
            (false, None) => open = Some((c.started, c.at)),
            (false, Some((start, _))) => open = Some((start, c.at)),
            (true, Some((start, _))) => {
                out.push((start, c.at));
                open = None;
            }
            (true, None) => {}
        }
    }
    if let Some(stretch) = open {
        out.push(stretch);
    }
    clip(out, from, to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pnet_packet::Packet as _;
    use pnet_packet::ipv4::Ipv4Packet;
    use pnet_packet::ipv6::Ipv6Packet;
    use pnet_packet::tcp::TcpPacket;

    const NODE: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
    const OTHER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
    const CLIENT: [u8; 6] = [0x02, 0, 0, 0, 0, 0x50];
    const V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
    const V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x100);
    const MS: Duration = Duration::from_millis(1);

    fn plan() -> Plan {
        Plan {
            targets: vec![NODE, OTHER],
            vips: vec![IpAddr::V4(V4), IpAddr::V6(V6)],
            client_mac: CLIENT,
            client4: Some(Ipv4Addr::new(192, 0, 2, 50)),
            client6: Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x50)),
            syn_port: 9,
            started_rounds: AtomicU32::new(0),
        }
    }

    #[test]
    fn neighbour_probes_ask_from_the_round_mac() {
        for seq in [0, 1, 4095, 4096, 123_456] {
            let a = ArpFrame::parse(&neighbour_probe(NODE, IpAddr::V4(V4), seq)).expect("ARP");
            assert_eq!(
                (a.eth_dst, a.eth_src, a.op, a.sha, a.spa, a.tpa),
                (
                    NODE,
                    probe_mac(seq),
                    ArpFrame::REQUEST,
                    probe_mac(seq),
                    PROBE_SRC4,
                    V4
                )
            );
            let n = NdpFrame::parse(&neighbour_probe(NODE, IpAddr::V6(V6), seq)).expect("NS");
            assert!(n.checksum_ok, "{n:?}");
            assert_eq!(
                (
                    n.eth_dst,
                    n.eth_src,
                    n.icmp_type,
                    n.src,
                    n.dst,
                    n.target,
                    n.lladdr,
                    n.hop_limit
                ),
                (
                    NODE,
                    probe_mac(seq),
                    NdpFrame::SOLICITATION,
                    PROBE_SRC6,
                    V6,
                    V6,
                    Some(probe_mac(seq)),
                    255
                )
            );
            assert_eq!(mac_round(probe_mac(seq)), Some(seq % MAC_CYCLE));
        }
    }

    #[test]
    fn syn_probes_carry_their_round_and_correct_checksums() {
        let p = plan();
        for seq in [0u32, 7, 999, 1000, 70_000] {
            let f = syn_probe(&p, NODE, IpAddr::V4(V4), seq);
            assert_eq!(&f[..6], &NODE);
            let ip = Ipv4Packet::new(&f[14..]).expect("IPv4");
            assert_eq!(ip.get_checksum(), pnet_packet::ipv4::checksum(&ip));
            assert_eq!(ip.get_destination(), V4);
            let tcp = TcpPacket::new(ip.payload()).expect("TCP");
            let sum = pnet_packet::tcp::ipv4_checksum(&tcp, &ip.get_source(), &V4);
            assert_eq!(tcp.get_checksum(), sum);
            assert_eq!(
                (tcp.get_flags(), tcp.get_sequence()),
                (TCP_SYN, syn_seq(seq))
            );
            assert_eq!(tcp.get_destination(), 9);

            let f = syn_probe(&p, NODE, IpAddr::V6(V6), seq);
            let ip = Ipv6Packet::new(&f[14..]).expect("IPv6");
            assert_eq!((ip.get_destination(), ip.get_payload_length()), (V6, 20));
            let tcp = TcpPacket::new(ip.payload()).expect("TCP");
            let sum = pnet_packet::tcp::ipv6_checksum(&tcp, &ip.get_source(), &V6);
            assert_eq!(tcp.get_checksum(), sum);
            assert_eq!(tcp.get_sequence(), syn_seq(seq));
        }
    }

    /// The answer a node's kernel sends to `probe` (ARP, NS or SYN), from
    /// `mac`; `rst` picks a RST over a SYN-ACK.
    fn answer_to(probe: &[u8], mac: [u8; 6], rst: bool) -> Vec<u8> {
        if let Some(a) = ArpFrame::parse(probe) {
            let mut f = eth(a.sha, mac, ETH_P_ARP);
            f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
            f.extend_from_slice(&mac);
            f.extend_from_slice(&a.tpa.octets());
            f.extend_from_slice(&a.sha);
            f.extend_from_slice(&a.spa.octets());
            return f;
        }
        if let Some(n) = NdpFrame::parse(probe) {
            let mut icmp = vec![NdpFrame::ADVERTISEMENT, 0, 0, 0, 0x60, 0, 0, 0];
            icmp.extend_from_slice(&n.target.octets());
            icmp.extend_from_slice(&[2, 1]);
            icmp.extend_from_slice(&mac);
            let sum = internet_checksum(&[
                &pseudo_header6(n.target, n.src, IPPROTO_ICMPV6, icmp.len()),
                &icmp,
            ]);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            let mut f = eth(n.lladdr.expect("SLLA"), mac, ETH_P_IPV6);
            f.extend_from_slice(&ipv6_header(
                n.target,
                n.src,
                IPPROTO_ICMPV6,
                icmp.len(),
                255,
            ));
            f.extend_from_slice(&icmp);
            return f;
        }
        // TCP: swap the ports, acknowledge the SYN; the checksum is not
        // checked by the observer.
        let (_, syn) = tcp_segment(probe).expect("a SYN");
        let vip = if probe[12..14] == ETH_P_IP.to_be_bytes() {
            IpAddr::V4(<[u8; 4]>::try_from(&probe[30..34]).unwrap().into())
        } else {
            IpAddr::V6(<[u8; 16]>::try_from(&probe[38..54]).unwrap().into())
        };
        let mut tcp = syn[..20].to_vec();
        tcp[..2].copy_from_slice(&syn[2..4]);
        tcp[2..4].copy_from_slice(&syn[..2]);
        let isn = u32::from_be_bytes([syn[4], syn[5], syn[6], syn[7]]);
        tcp[4..8].copy_from_slice(&if rst { 0u32 } else { 77 }.to_be_bytes());
        tcp[8..12].copy_from_slice(&isn.wrapping_add(1).to_be_bytes());
        tcp[13] = if rst {
            TCP_RST | TCP_ACK
        } else {
            TCP_SYN | TCP_ACK
        };
        let mut f = match vip {
            IpAddr::V4(v) => {
                let mut f = eth(CLIENT, mac, ETH_P_IP);
                f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, IPPROTO_TCP, 0, 0]);
                f.extend_from_slice(&v.octets());
                f.extend_from_slice(&[192, 0, 2, 50]);
                f
            }
            IpAddr::V6(v) => {
                let mut f = eth(CLIENT, mac, ETH_P_IPV6);
                f.extend_from_slice(&ipv6_header(v, PROBE_SRC6, IPPROTO_TCP, 20, 64));
                f
            }
        };
        f.extend_from_slice(&tcp);
        f
    }

    #[test]
    fn answers_name_their_round_and_node_however_late() {
        let p = plan();
        let vips = [IpAddr::V4(V4), IpAddr::V6(V6)];
        for (seq, late) in [(0u32, 0u32), (5, 1), (4095, 3), (4096, 4000), (10_000, 17)] {
            for vip in vips {
                for (node, mac) in [(0, NODE), (1, OTHER)] {
                    let probes = [
                        (neighbour_probe(mac, vip, seq), ProbeKind::Neighbour, false),
                        (syn_probe(&p, mac, vip, seq), ProbeKind::Tcp, false),
                        (syn_probe(&p, mac, vip, seq), ProbeKind::Tcp, true),
                    ];
                    for (probe, kind, rst) in probes {
                        let got = classify(&answer_to(&probe, mac, rst), &p, Some(seq + late));
                        let want = Seen::Answer {
                            round: seq,
                            vip,
                            node,
                            kind,
                        };
                        assert_eq!(got, want, "round {seq}, {late} later, {vip} {kind:?}");
                        // Before its round was sent, the same frame is no
                        // answer (a neighbour answer names its round only
                        // within one MAC cycle: then it is the last cycle's).
                        if seq > 0 && (kind == ProbeKind::Tcp || seq < MAC_CYCLE) {
                            let early = classify(&answer_to(&probe, mac, rst), &p, Some(seq - 1));
                            assert_eq!(early, Seen::Stray, "round {seq} {vip} {kind:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn frames_that_answer_no_probe_are_not_answers() {
        let p = plan();
        let probe = neighbour_probe(NODE, IpAddr::V4(V4), 3);
        // From a MAC that is no target.
        let stranger = [0x02, 9, 9, 9, 9, 9];
        assert_eq!(
            classify(&answer_to(&probe, stranger, false), &p, Some(3)),
            Seen::Other
        );
        // The node answering the client kernel's own ARP request.
        let mut own = answer_to(&probe, NODE, false);
        own[..6].copy_from_slice(&CLIENT);
        own[32..38].copy_from_slice(&CLIENT);
        assert_eq!(classify(&own, &p, Some(3)), Seen::Other);
        // A VIP that is not watched.
        let unwatched = neighbour_probe(NODE, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 3);
        assert_eq!(
            classify(&answer_to(&unwatched, NODE, false), &p, Some(3)),
            Seen::Other
        );
        // Our own probe seen coming back, and a RST without ACK.
        assert_eq!(classify(&probe, &p, Some(3)), Seen::Other);
        let mut bare = answer_to(&syn_probe(&p, NODE, IpAddr::V4(V4), 3), NODE, true);
        let flags = bare.len() - 20 + 13;
        bare[flags] = TCP_RST;
        assert_eq!(classify(&bare, &p, Some(3)), Seen::Other);
        // A wrong tag in the acknowledged sequence number.
        let mut odd = answer_to(&syn_probe(&p, NODE, IpAddr::V4(V4), 3), NODE, true);
        let ack = odd.len() - 20 + 11;
        odd[ack] ^= 0x01;
        assert_eq!(classify(&odd, &p, Some(3)), Seen::Stray);
    }

    // ---- analysis over synthetic samples ----

    /// `n` rounds 20 ms apart, two nodes `a` and `b` (and `c`).
    fn observations(n: u32) -> Observations {
        let t0 = Instant::now();
        Observations {
            targets: vec!["a".into(), "b".into(), "c".into()],
            vips: vec![IpAddr::V4(V4)],
            every: 20 * MS,
            started: t0,
            stopped: t0 + 20 * MS * n + 100 * MS,
            initial: Vec::new(),
            rounds: (0..n)
                .map(|seq| Round {
                    seq,
                    sent: t0 + 20 * MS * seq,
                    unsent: 0,
                })
                .collect(),
            answers: Vec::new(),
            stray: 0,
            addr_changes: Vec::new(),
            connections: Vec::new(),
        }
    }

    /// `node` answered rounds `rounds` by `kind`, each `delay` after its send.
    fn answered(
        o: &mut Observations,
        node: usize,
        kind: ProbeKind,
        rounds: std::ops::Range<u32>,
        delay: Duration,
    ) {
        for round in rounds {
            let at = o.rounds[round as usize].sent + delay;
            o.answers.push(Answer {
                round,
                vip: IpAddr::V4(V4),
                node,
                kind,
                at,
            });
        }
    }

    fn sent(o: &Observations, round: usize) -> Instant {
        o.rounds[round].sent
    }

    #[test]
    fn a_late_answer_is_no_overlap() {
        let mut o = observations(12);
        for kind in KINDS {
            // a's answers arrive two rounds late; b takes over at round 6.
            answered(&mut o, 0, kind, 0..6, 45 * MS);
            answered(&mut o, 1, kind, 6..12, MS);
        }
        assert_eq!(serving_overlaps(&o), Vec::new());
        let vip = IpAddr::V4(V4);
        assert_eq!(unserved(&o, vip, o.started, o.stopped), Vec::new());
    }

    #[test]
    fn two_nodes_in_one_round_overlap_from_its_send_to_the_next_rounds() {
        let mut o = observations(12);
        answered(&mut o, 0, ProbeKind::Tcp, 0..12, MS);
        answered(&mut o, 1, ProbeKind::Tcp, 3..7, MS);
        answered(&mut o, 2, ProbeKind::Tcp, 5..6, MS);
        answered(&mut o, 0, ProbeKind::Neighbour, 0..12, MS);
        answered(&mut o, 2, ProbeKind::Neighbour, 11..12, MS);
        let names = |a: &str, b: &str| (a.to_string(), b.to_string());
        let overlap = |nodes, from, to, kind, rounds| Overlap {
            vip: IpAddr::V4(V4),
            nodes,
            from,
            to,
            how: Evidence::Probe(kind),
            rounds,
        };
        let want = vec![
            overlap(
                names("a", "c"),
                sent(&o, 11),
                sent(&o, 11) + 20 * MS,
                ProbeKind::Neighbour,
                1,
            ),
            overlap(names("a", "b"), sent(&o, 3), sent(&o, 7), ProbeKind::Tcp, 4),
            overlap(names("a", "c"), sent(&o, 5), sent(&o, 6), ProbeKind::Tcp, 1),
            overlap(names("b", "c"), sent(&o, 5), sent(&o, 6), ProbeKind::Tcp, 1),
        ];
        assert_eq!(serving_overlaps(&o), want);
        // A lost answer in the middle splits the overlap; both halves count.
        o.answers
            .retain(|a| !(a.node == 1 && a.round == 4 && a.kind == ProbeKind::Tcp));
        let ab: Vec<_> = serving_overlaps(&o)
            .into_iter()
            .filter(|v| v.nodes == names("a", "b"))
            .map(|v| (v.from, v.to, v.rounds))
            .collect();
        assert_eq!(
            ab,
            vec![(sent(&o, 3), sent(&o, 4), 1), (sent(&o, 5), sent(&o, 7), 2)]
        );
    }

    #[test]
    fn unserved_runs_from_the_first_silent_round_to_the_next_answered_one() {
        let mut o = observations(20);
        let vip = IpAddr::V4(V4);
        answered(&mut o, 0, ProbeKind::Tcp, 0..4, MS);
        answered(&mut o, 1, ProbeKind::Tcp, 7..15, MS);
        let all = unserved(&o, vip, o.started, o.stopped);
        let end = sent(&o, 19) + 20 * MS;
        assert_eq!(all, vec![(sent(&o, 4), sent(&o, 7)), (sent(&o, 15), end)]);
        // Clipped to the window asked for.
        let window = unserved(&o, vip, sent(&o, 5), sent(&o, 16));
        assert_eq!(
            window,
            vec![(sent(&o, 5), sent(&o, 7)), (sent(&o, 15), sent(&o, 16))]
        );
        // The other kind was never answered: unserved throughout.
        let arp = unserved_by(&o, vip, ProbeKind::Neighbour, o.started, o.stopped);
        assert_eq!(arp, vec![(sent(&o, 0), end)]);
        // A round whose probes were not all sent tells nothing.
        o.rounds[5].unsent = 3;
        o.rounds[6].unsent = 1;
        o.rounds[4].unsent = 1;
        let skipped = unserved(&o, vip, o.started, sent(&o, 10));
        assert_eq!(skipped, Vec::new());
    }

    #[test]
    fn address_overlaps_replay_the_events_on_the_initial_holdings() {
        let mut o = observations(50);
        let vip = IpAddr::V4(V4);
        let start = o.started;
        let t = |ms: u32| start + MS * ms;
        o.initial = vec![(0, vip)];
        let change = |at, node, added| AddrChange {
            at,
            node,
            vip,
            added,
        };
        o.addr_changes = vec![
            // Before the start: the dump already says so.
            change(o.started - 5 * MS, 0, true),
            change(t(100), 1, true),
            // A renewal of b's lifetime changes nothing.
            change(t(150), 1, true),
            change(t(300), 0, false),
            change(t(400), 2, true),
            change(t(500), 1, false),
            change(t(600), 0, true),
        ];
        let names = |a: &str, b: &str| (a.to_string(), b.to_string());
        let got: Vec<_> = address_overlaps(&o)
            .into_iter()
            .map(|v| (v.nodes, v.from, v.to, v.how))
            .collect();
        assert_eq!(
            got,
            vec![
                (names("a", "b"), t(100), t(300), Evidence::Address),
                (names("b", "c"), t(400), t(500), Evidence::Address),
                (names("a", "c"), t(600), o.stopped, Evidence::Address),
            ]
        );
    }

    #[test]
    fn client_failures_run_until_the_next_success_ends() {
        let mut o = observations(1);
        let vip = IpAddr::V4(V4);
        let start = o.started;
        let t = |ms: u32| start + MS * ms;
        let conn = |started, at, ok: bool| Connection {
            vip,
            started,
            at,
            outcome: if ok {
                Ok(Some("a".into()))
            } else {
                Err("connect: timed out".into())
            },
        };
        o.connections = vec![
            conn(t(0), t(1), true),
            conn(t(50), t(350), false),
            conn(t(350), t(650), false),
            conn(t(650), t(652), true),
            conn(t(700), t(1000), false),
        ];
        assert_eq!(
            client_failures(&o, vip, o.started, t(2000)),
            vec![(t(50), t(652)), (t(700), t(1000))]
        );
        assert_eq!(
            client_failures(&o, vip, t(800), t(2000)),
            vec![(t(800), t(1000))]
        );
    }
}
