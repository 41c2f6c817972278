//! The chaos checker's eyes: what a client on the data segment sees of the
//! VIPs, and what the nodes' kernels say they hold, on one monotonic clock.
//!
//! (Skeleton: the API is fixed, the bodies come next.)

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::lab::{Host, Netns};

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
    _private: (),
}

impl Observer {
    /// Starts probing `vips` on every node of `targets` from `client`'s
    /// interface `ifname`, recording the nodes' address events and, if
    /// asked, the client's own connections.
    pub fn start(
        client: &Netns,
        ifname: &str,
        targets: Vec<Target>,
        vips: Vec<IpAddr>,
        opts: Options,
    ) -> Observer {
        let _ = (client, ifname, targets, vips, opts);
        todo!()
    }

    /// What has been observed so far (the observer goes on).
    pub fn snapshot(&self) -> Observations {
        todo!()
    }

    /// Stops every thread (after the last round's answers had time to
    /// come) and returns everything observed.
    pub fn stop(self) -> Observations {
        todo!()
    }
}

/// Every stretch in which two nodes answered the same probe round for one
/// VIP, by kind.
pub fn serving_overlaps(o: &Observations) -> Vec<Overlap> {
    let _ = o;
    todo!()
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

/// [`unserved`] for probes of `kind`.
pub fn unserved_by(
    o: &Observations,
    vip: IpAddr,
    kind: ProbeKind,
    from: Instant,
    to: Instant,
) -> Vec<(Instant, Instant)> {
    let _ = (o, vip, kind, from, to);
    todo!()
}

/// Every stretch in which two nodes had one VIP at once, from their
/// address events.
pub fn address_overlaps(o: &Observations) -> Vec<Overlap> {
    let _ = o;
    todo!()
}

/// The stretches within `from..to` in which the client's connections to
/// `vip` failed.
pub fn client_failures(
    o: &Observations,
    vip: IpAddr,
    from: Instant,
    to: Instant,
) -> Vec<(Instant, Instant)> {
    let _ = (o, vip, from, to);
    todo!()
}
