//! What the demo and the failover benchmarks share: a lab cluster (three
//! agent nodes, vipd or keepalived, a ZooKeeper for vipd and a client; the
//! VIP IPv4 or, for vipd, IPv6), the observers that timestamp a takeover
//! (the lab toolkit's netlink monitors in every namespace and its capture
//! of the client's announcements, the client's TCP probe), one takeover
//! read off them, and the SVG plot of takeover timelines.

use std::{
    fs::{self, File},
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use plotters::prelude::*;
use vipd_tests::{
    lab::{
        AddrMonitor, ArpCapture, CaptureOptions, Host, HostIf, Lab, LabProcess, MonitorOptions,
        ServerHandle, is_announcement, parse_mac, realtime_priority,
    },
    zk::ZkServer,
};

use super::plot;

/// The service address every lab cluster moves around.
pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
/// The service address of a cluster with an IPv6 VIP (vipd only), on the
/// data segment's 2001:db8:0:1::/64 as in the IPv6 integration tests.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x100);
/// The data segment's IPv6 prefix of a cluster with an IPv6 VIP (nodes
/// ::11 to ::13, the client ::50), a /64.
pub const NET6: &str = "2001:db8:0:1::";
/// The TCP service each node offers on the VIP (banner `served-by <node>`).
pub const PORT: u16 = 8080;
const ZK_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const ZK_HOSTS: &str = "203.0.113.2:2181";
const CLUSTER: &str = "lab";
const SERVICE: &str = "web";
const NODES: usize = 3;

/// Set by the SIGINT handler; long waits check it and give up.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Fails when Ctrl-C was pressed, so the caller unwinds and the lab goes.
pub fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps in small steps, stopping early on Ctrl-C.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupt()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C sets [`INTERRUPTED`] instead of killing us, so the lab's Drop runs.
pub fn install_sigint_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

fn enter_netns(path: &Path) -> std::io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: setns on a valid namespace fd changes only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Starts a thread inside network namespace `path`; `setup` runs there first
/// and its error (if any) is returned here before the thread goes on with `body`.
fn netns_thread<S: Send + 'static>(
    path: &Path,
    setup: impl FnOnce() -> std::io::Result<S> + Send + 'static,
    body: impl FnOnce(S) + Send + 'static,
) -> Result<JoinHandle<()>> {
    let path = path.to_path_buf();
    let shown = path.display().to_string();
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        realtime_priority();
        let state = enter_netns(&path).and_then(|()| setup());
        match state {
            Ok(s) => {
                let _ = tx.send(Ok(()));
                body(s);
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    rx.recv()
        .context("observer thread died")?
        .with_context(|| format!("starting an observer in {shown}"))?;
    Ok(thread)
}

/// Fails with a clear message when the lab cannot run here.
pub fn preflight() -> Result<()> {
    if !crate::is_root() {
        bail!(
            "the lab needs root (network namespaces, veths, XDP, AF_PACKET): \
             run it as root, e.g. `sudo -E cargo xtask ...`"
        );
    }
    if !Path::new("/usr/share/java/zookeeper.jar").is_file() {
        bail!(
            "ZooKeeper is not installed (/usr/share/java/zookeeper.jar): run `cargo xtask setup`"
        );
    }
    Ok(())
}

/// Builds (release) what is missing and returns the directory of vipd and
/// vipctl; `VIPD_BIN_DIR` names a directory of binaries to use instead.
pub fn binaries() -> Result<std::path::PathBuf> {
    let dir = match std::env::var_os("VIPD_BIN_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None => crate::build::build(&crate::build::Options { release: true })?,
    };
    for b in ["vipd", "vipctl"] {
        if !dir.join(b).is_file() {
            bail!("{} is missing", dir.join(b).display());
        }
    }
    Ok(dir)
}

/// Which binaries the lab runs, for the reports.
pub fn binaries_note() -> String {
    match std::env::var_os("VIPD_BIN_DIR") {
        Some(d) => format!("the build in VIPD_BIN_DIR={}", d.to_string_lossy()),
        None => "release build".to_string(),
    }
}

/// Prints one progress line with the seconds since `start`.
pub fn progress(start: Instant, what: &str) {
    eprintln!("[{:>6.1}s] {what}", start.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------- probe

/// The client's TCP probe: a connection to the VIP every 10 ms, each
/// answer's banner (the node that served it) with its instant.
/// Each probe's instant and the node that answered (None: no answer).
type ProbeLog = Arc<Mutex<Vec<(Instant, Option<String>)>>>;

pub struct Prober {
    results: ProbeLog,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn probe_once(addr: &SocketAddr) -> Option<String> {
    // A short connect timeout: in the lab an answer takes well under a
    // millisecond, and a SYN to a dead MAC must not hold up the next probe.
    let mut s = TcpStream::connect_timeout(addr, Duration::from_millis(30)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.trim().strip_prefix("served-by ").map(str::to_string)
}

/// One HTTP/1.0 GET of `/` at `addr`: the node the page names. A page
/// takes a millisecond or two; a request sent just as the holder dropped
/// the VIP is never answered, and the prober is blind while it waits, so
/// the wait is short.
fn http_get_once(addr: &SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(addr, Duration::from_millis(30)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(100))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    http_served_by(&buf)
}

/// The node named by an HTTP reply from the lab's console (`200`, body
/// `served-by <node>`).
pub fn http_served_by(reply: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(reply);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    if !status.starts_with("HTTP/1.") || status.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    body.trim().strip_prefix("served-by ").map(str::to_string)
}

impl Prober {
    /// The TCP probe of the lab's echo service on `vip` ([`PORT`], `[vip]:PORT`
    /// for an IPv6 VIP) every `every`.
    pub fn start(netns: &Path, vip: IpAddr, every: Duration) -> Result<Prober> {
        Prober::start_on(netns, SocketAddr::new(vip, PORT), every, probe_once)
    }

    /// An HTTP client of the console on `port` of `vip`, a GET every
    /// `every` (the same log: the node that served each page).
    pub fn start_http(netns: &Path, vip: IpAddr, port: u16, every: Duration) -> Result<Prober> {
        Prober::start_on(netns, SocketAddr::new(vip, port), every, http_get_once)
    }

    fn start_on(
        netns: &Path,
        addr: SocketAddr,
        every: Duration,
        probe: fn(&SocketAddr) -> Option<String>,
    ) -> Result<Prober> {
        let results = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (res, st) = (results.clone(), stop.clone());
        let thread = netns_thread(
            netns,
            || Ok(()),
            move |()| {
                while !st.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let got = probe(&addr);
                    res.lock().unwrap().push((Instant::now(), got));
                    std::thread::sleep(every.saturating_sub(start.elapsed()));
                }
            },
        )?;
        Ok(Prober {
            results,
            stop,
            thread: Some(thread),
        })
    }

    /// First answer from `node` after `since`.
    pub fn first_served_by(&self, node: &str, since: Instant) -> Option<Instant> {
        self.results
            .lock()
            .unwrap()
            .iter()
            .find(|(at, who)| *at >= since && who.as_deref() == Some(node))
            .map(|(at, _)| *at)
    }

    /// Every probe in [from, to]: its instant and whether it was answered.
    pub fn outcomes(&self, from: Instant, to: Instant) -> Vec<(Instant, bool)> {
        self.results
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .map(|(at, who)| (*at, who.is_some()))
            .collect()
    }

    /// The node of the latest successful probe, if it came after `since`.
    pub fn last_served(&self, since: Instant) -> Option<String> {
        self.results
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(at, who)| *at >= since && who.is_some())
            .and_then(|(_, who)| who.clone())
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------- cluster

/// vipd's settings for a lab run.
#[derive(Clone, Copy, Debug)]
pub struct VipdSettings {
    pub session_timeout: Duration,
    pub garp_interval: Duration,
    pub garp_rounds: u32,
}

/// keepalived's settings for a lab run.
#[derive(Clone, Copy, Debug)]
pub struct KeepalivedSettings {
    /// VRRP advertisement interval (VRRPv3 allows centiseconds).
    pub advert_int: Duration,
}

#[derive(Clone, Copy, Debug)]
pub enum Agent {
    Vipd(VipdSettings),
    Keepalived(KeepalivedSettings),
}

impl Agent {
    pub fn name(&self) -> &'static str {
        match self {
            Agent::Vipd(_) => "vipd",
            Agent::Keepalived(_) => "keepalived",
        }
    }
}

/// How the holder fails in a takeover run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// Its two links lose carrier (the bridge-side veth ends go down).
    Cut,
    /// Its two links are detached from their bridges: carrier stays, nothing
    /// gets through in either direction (a dead switch upstream).
    Partition,
    /// SIGKILL of the agent (keepalived: its main process and its VRRP
    /// child), so no cleanup of its own runs.
    Kill,
    /// SIGSTOP of the agent (keepalived: both processes) until the takeover
    /// is over, then SIGCONT.
    Stop,
    /// A planned handover, each system's own: vipd's `vipctl handover` (the
    /// leader removes its VIP and steps down; it stands again, last in
    /// line), keepalived's SIGTERM of the master (it sends a priority-0
    /// advert and removes the VIP as it exits; the bench starts it again).
    /// Not one of [`Fault::ALL`]: `bench services` measures it.
    Handover,
}

impl Fault {
    pub const ALL: [Fault; 4] = [Fault::Cut, Fault::Partition, Fault::Kill, Fault::Stop];

    /// The column heading in the reports.
    pub fn label(self) -> &'static str {
        match self {
            Fault::Cut => "link cut",
            Fault::Partition => "silent partition",
            Fault::Kill => "SIGKILL",
            Fault::Stop => "SIGSTOP",
            Fault::Handover => "planned handover",
        }
    }

    /// The name on the command line (`--faults cut,kill`).
    pub fn arg(self) -> &'static str {
        match self {
            Fault::Cut => "cut",
            Fault::Partition => "partition",
            Fault::Kill => "kill",
            Fault::Stop => "stop",
            Fault::Handover => "handover",
        }
    }
}

/// The agent process of a node: replaced when the bench restarts it.
pub struct AgentProcess(Mutex<LabProcess>);

impl AgentProcess {
    fn new(p: LabProcess) -> AgentProcess {
        AgentProcess(Mutex::new(p))
    }

    /// The process running now (the latest started).
    pub fn current(&self) -> LabProcess {
        self.0.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.current().pid()
    }

    /// Sends `signal` to the current process; false if it had exited.
    pub fn kill(&self, signal: i32) -> bool {
        self.current().kill(signal)
    }

    /// What the current process wrote to stderr (vipd's log).
    pub fn stderr(&self) -> String {
        self.current().stderr()
    }

    fn replace(&self, p: LabProcess) {
        *self.0.lock().unwrap() = p;
    }
}

/// One agent node: its namespace, service and observers.
pub struct Node {
    pub name: String,
    pub host: Host,
    pub mac: [u8; 6],
    pub agent: AgentProcess,
    /// vipd's control socket.
    pub socket: PathBuf,
    /// keepalived's VRRP child pid file.
    pub vrrp_pidfile: PathBuf,
    /// The node's address events (the VIP's adds and removals).
    pub watch: AddrMonitor,
    _server: ServerHandle,
}

/// What starting (and restarting) one node's agent needs.
struct Launch {
    agent: Agent,
    /// vipd's `--lease` (None: its default, no flag passed).
    lease: Option<Duration>,
    /// More vipd flags.
    flags: Vec<String>,
    bins: PathBuf,
    dir: PathBuf,
}

impl Launch {
    fn keepalived_pidfile(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}-keepalived.pid"))
    }

    /// Starts node `index`'s agent in `host`.
    fn spawn(&self, index: usize, node: &Node0) -> Result<LabProcess> {
        let name = &node.name;
        Ok(match self.agent {
            Agent::Vipd(s) => {
                let bin = self.bins.join("vipd");
                let config = self.dir.join("empty.toml");
                if !config.is_file() {
                    fs::write(&config, "")?;
                }
                let mut argv: Vec<std::ffi::OsString> = vec![
                    bin.into(),
                    "--config".into(),
                    config.into(),
                    "--zk".into(),
                    ZK_HOSTS.into(),
                    "--cluster".into(),
                    CLUSTER.into(),
                    "--node-id".into(),
                    name.into(),
                    "--session-timeout".into(),
                    format!("{}ms", s.session_timeout.as_millis()).into(),
                    "--garp-interval".into(),
                    format!("{}ms", s.garp_interval.as_millis()).into(),
                    "--garp-rounds".into(),
                    s.garp_rounds.to_string().into(),
                    "--xdp-mode".into(),
                    "generic".into(),
                    "--xdp-interface".into(),
                    "eth0".into(),
                    "--api-socket".into(),
                    node.socket.clone().into(),
                    "--log-format".into(),
                    "json".into(),
                ];
                if let Some(l) = self.lease {
                    argv.push("--lease".into());
                    argv.push(format!("{}ms", l.as_millis()).into());
                }
                argv.extend(self.flags.iter().map(Into::into));
                node.host.spawn_env(argv, &[("RUST_LOG", "info")])
            }
            Agent::Keepalived(s) => {
                let conf = self.dir.join(format!("{name}-keepalived.conf"));
                // Distinct priorities make the first election predictable;
                // nopreempt keeps a restored node from taking the VIP back.
                fs::write(&conf, keepalived_conf(name, 100 - index as u32, &s))?;
                let pid = self.keepalived_pidfile(name);
                // A killed keepalived leaves its pid files; a new one would
                // read them to decide whether it already runs.
                let _ = fs::remove_file(&pid);
                let _ = fs::remove_file(&node.vrrp_pidfile);
                node.host.spawn([
                    "keepalived".as_ref(),
                    "-n".as_ref(),
                    "-l".as_ref(),
                    "-D".as_ref(),
                    "-G".as_ref(),
                    "-P".as_ref(),
                    "-f".as_ref(),
                    conf.as_os_str(),
                    "-p".as_ref(),
                    pid.as_os_str(),
                    "-r".as_ref(),
                    node.vrrp_pidfile.as_os_str(),
                ])
            }
        })
    }
}

/// A node before its agent runs (what [`Launch::spawn`] reads).
struct Node0 {
    name: String,
    host: Host,
    socket: PathBuf,
    vrrp_pidfile: PathBuf,
}

/// A lab with three agent nodes (vipd, or keepalived as the peer we are
/// measured against: hence not the tests' vipd-only `vipd_tests::cluster::
/// Cluster`), each with an access and a ZooKeeper link, and a client that
/// probes the VIP and captures its announcements (fields drop in order:
/// the observers, the nodes, ZooKeeper, then the lab with its processes).
pub struct FailoverLab {
    pub agent: Agent,
    /// The service address: [`VIP`], or [`VIP6`] for an IPv6 cluster.
    pub vip: IpAddr,
    /// The client's address and neighbour events.
    pub client_watch: AddrMonitor,
    pub prober: Prober,
    /// The announcements the client receives: gratuitous ARP, or
    /// unsolicited Neighbor Advertisements for an IPv6 VIP.
    pub capture: ArpCapture,
    pub nodes: Vec<Node>,
    pub client: Host,
    /// Held for its Drop, which stops the server.
    _zk: Option<ZkServer>,
    pub zk_host: Option<Host>,
    pub bins: PathBuf,
    launch: Launch,
    /// Processes this cluster sent SIGSTOP and has not resumed yet: resumed
    /// on drop, so a failing run leaves nothing frozen behind.
    stopped: Mutex<Vec<u32>>,
    pub lab: Lab,
}

impl Drop for FailoverLab {
    fn drop(&mut self) {
        for pid in self.stopped.lock().unwrap().drain(..) {
            // SAFETY: kill(2) on a process of this lab that we stopped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
        }
    }
}

/// The observers' netlink monitors: exact timestamps; the client's sees
/// its neighbour entries too.
fn monitor(host: &Host, neighbours: bool) -> AddrMonitor {
    AddrMonitor::start_with(
        host,
        MonitorOptions {
            neighbours,
            realtime: true,
        },
    )
}

fn keepalived_conf(name: &str, priority: u32, s: &KeepalivedSettings) -> String {
    format!(
        "global_defs {{
  router_id {name}
  vrrp_version 3
}}
vrrp_instance VI_1 {{
  state BACKUP
  nopreempt
  interface eth0
  virtual_router_id 51
  priority {priority}
  advert_int {:.2}
  virtual_ipaddress {{
    {VIP}/24
  }}
}}
",
        s.advert_int.as_secs_f64()
    )
}

/// How long a takeover run waits, once the client is served by the new
/// holder, for the old holder to drop the VIP by itself. A killed or
/// frozen keepalived never does: its VIP stays until the bench ends the
/// fault (and removes the leftover address of a killed one).
pub const FENCE_WAIT: Duration = Duration::from_secs(2);

/// How long a node gets to be a quiet standby again after the fault ends.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(30);

/// After the fault ended, how long the client may go unserved by a settled
/// single holder before the bench flushes its neighbour entry for the VIP
/// (a stale entry naming a node that dropped the VIP would otherwise last
/// the kernel's reachable time, tens of seconds).
pub const CLIENT_FLUSH_AFTER: Duration = Duration::from_secs(5);

impl FailoverLab {
    /// Builds the lab and starts everything; returns once exactly one node
    /// holds the VIP and the client is served through it.
    pub fn start(
        hint: &str,
        agent: Agent,
        bins: &Path,
        progress: &dyn Fn(&str),
    ) -> Result<FailoverLab> {
        FailoverLab::start_with(hint, agent, None, VIP.into(), bins, progress)
    }

    /// [`FailoverLab::start`] with vipd's `--lease` (None: no flag, its
    /// default) and the service address `vip`: [`VIP`], or [`VIP6`] (vipd
    /// only; the nodes and the client then have addresses on the data
    /// segment's 2001:db8:0:1::/64 too, and the client reaches the service
    /// over IPv6).
    pub fn start_with(
        hint: &str,
        agent: Agent,
        lease: Option<Duration>,
        vip: IpAddr,
        bins: &Path,
        progress: &dyn Fn(&str),
    ) -> Result<FailoverLab> {
        FailoverLab::start_with_flags(hint, agent, lease, vip, &[], bins, progress)
    }

    /// [`FailoverLab::start_with`] passing vipd `flags` too.
    pub fn start_with_flags(
        hint: &str,
        agent: Agent,
        lease: Option<Duration>,
        vip: IpAddr,
        flags: &[&str],
        bins: &Path,
        progress: &dyn Fn(&str),
    ) -> Result<FailoverLab> {
        if vip.is_ipv6() && matches!(agent, Agent::Keepalived(_)) {
            bail!("the lab runs keepalived with an IPv4 VIP only");
        }
        let lab = std::panic::catch_unwind(|| Lab::new(hint)).map_err(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            anyhow::anyhow!(
                "cannot build the lab (network namespaces): {msg}\n\
                 This needs root and a kernel with network namespaces (`ip netns add` must work)."
            )
        })?;
        check_interrupt()?;
        let (zk, zk_host) = match agent {
            Agent::Vipd(_) => {
                progress("starting ZooKeeper (tickTime 100 ms) in the lab");
                let h = lab.add_host(
                    "zk",
                    &[HostIf {
                        bridge: 2,
                        addr: "203.0.113.2/24",
                    }],
                );
                let zk = ZkServer::start_standalone(ZK_IP, Some(h.netns()));
                (Some(zk), Some(h))
            }
            Agent::Keepalived(_) => (None, None),
        };
        check_interrupt()?;
        let client = lab.add_host(
            "client",
            &[HostIf {
                bridge: 0,
                addr: "192.0.2.50/24",
            }],
        );
        if vip.is_ipv6() {
            client.add_addr6("eth0", &format!("{NET6}50/64"));
        }
        let launch = Launch {
            agent,
            lease,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            bins: bins.to_path_buf(),
            dir: lab.dir().to_path_buf(),
        };
        let mut nodes = Vec::new();
        for i in 0..NODES {
            let name = format!("n{}", i + 1);
            let lan = format!("192.0.2.{}/24", 11 + i);
            let zkn = format!("203.0.113.{}/24", 11 + i);
            let host = lab.add_host(
                &name,
                &[
                    HostIf {
                        bridge: 0,
                        addr: &lan,
                    },
                    HostIf {
                        bridge: 2,
                        addr: &zkn,
                    },
                ],
            );
            if vip.is_ipv6() {
                host.add_addr6("eth0", &format!("{NET6}{}/64", 11 + i));
            }
            let server = host.tcp_echo_server(vip, PORT);
            let watch = monitor(&host, false);
            let mac = host.mac_bytes("eth0");
            let n0 = Node0 {
                socket: lab.dir().join(format!("{name}.sock")),
                vrrp_pidfile: lab.dir().join(format!("{name}-vrrp.pid")),
                name,
                host,
            };
            let agent_proc = launch.spawn(i, &n0)?;
            nodes.push(Node {
                name: n0.name,
                host: n0.host,
                mac,
                agent: AgentProcess::new(agent_proc),
                socket: n0.socket,
                vrrp_pidfile: n0.vrrp_pidfile,
                watch,
                _server: server,
            });
        }
        let client_watch = monitor(&client, true);
        let capture = client.capture_with(
            "eth0",
            CaptureOptions {
                proto: libc::ETH_P_ALL as u16,
                keep: Some(is_announcement),
                realtime: true,
            },
        );
        let prober = Prober::start(&client.path(), vip, Duration::from_millis(10))?;
        let cluster = FailoverLab {
            agent,
            vip,
            client_watch,
            prober,
            capture,
            nodes,
            client,
            _zk: zk,
            zk_host,
            bins: bins.to_path_buf(),
            launch,
            stopped: Mutex::new(Vec::new()),
            lab,
        };
        progress(&format!("three {} nodes started", agent.name()));
        if matches!(agent, Agent::Vipd(_)) {
            let out = cluster.vipctl_set()?;
            progress(&format!(
                "vipctl vip set {SERVICE} {vip}: {}",
                out.trim().lines().next().unwrap_or("ok")
            ));
        }
        progress("waiting for one node to hold the VIP and serve the client");
        cluster.wait_settled(Duration::from_secs(40))?;
        Ok(cluster)
    }

    /// Starts node `node`'s agent again (after a SIGKILL), as a fresh process.
    pub fn restart_agent(&self, node: usize) -> Result<()> {
        let n = &self.nodes[node];
        let n0 = Node0 {
            name: n.name.clone(),
            host: n.host.clone(),
            socket: n.socket.clone(),
            vrrp_pidfile: n.vrrp_pidfile.clone(),
        };
        let p = self.launch.spawn(node, &n0)?;
        n.agent.replace(p);
        Ok(())
    }

    /// `vipctl vip --zk .. set web <the VIP>`, run where ZooKeeper lives.
    pub fn vipctl_set(&self) -> Result<String> {
        let vip = self.vip.to_string();
        self.vipctl_zk(&["vip", "set", SERVICE, &vip])
    }

    /// Where the lab's ZooKeeper keeps its data (its transaction logs),
    /// for a vipd lab.
    pub fn zk_data_root(&self) -> Option<&Path> {
        self._zk.as_ref().map(ZkServer::data_root)
    }

    /// `vipctl <command> --zk .. --cluster lab <args>`, run where ZooKeeper
    /// lives: its output, or why not.
    pub fn vipctl_zk(&self, args: &[&str]) -> Result<String> {
        let host = self.zk_host.as_ref().context("no ZooKeeper in this lab")?;
        let vipctl = self.bins.join("vipctl");
        // Every vipctl option is global: after the subcommand is fine.
        let mut argv: Vec<&std::ffi::OsStr> = vec![vipctl.as_os_str()];
        argv.extend(args.iter().map(std::ffi::OsStr::new));
        argv.extend(["--zk", ZK_HOSTS, "--cluster", CLUSTER].map(std::ffi::OsStr::new));
        let out = host.exec(&argv);
        if !out.status.success() {
            bail!(
                "vipctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `vipctl <args> --api-socket <node's socket>`: the output, or why not.
    pub fn vipctl_node(&self, node: usize, args: &[&str]) -> Result<String> {
        let out = Command::new(self.bins.join("vipctl"))
            .args(args)
            .arg("--api-socket")
            .arg(&self.nodes[node].socket)
            .output()
            .context("running vipctl")?;
        if !out.status.success() {
            bail!(
                "vipctl {} on {}: {}",
                args.join(" "),
                self.nodes[node].name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// vipd's status of a node as JSON.
    pub fn status(&self, node: usize) -> Option<serde_json::Value> {
        self.vipctl_node(node, &["status", "--json"])
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
    }

    /// The nodes that have the VIP on eth0 now.
    pub fn holders(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.vip_prefix(i).is_some())
            .collect()
    }

    /// The prefix length of the VIP on `node`'s eth0, if it has it.
    fn vip_prefix(&self, node: usize) -> Option<u8> {
        let host = &self.nodes[node].host;
        match self.vip {
            IpAddr::V4(vip) => host
                .ipv4_addrs("eth0")
                .iter()
                .find(|(ip, _)| *ip == vip)
                .map(|(_, len)| *len),
            IpAddr::V6(vip) => host
                .ipv6_addrs("eth0")
                .iter()
                .find(|a| a.addr == vip)
                .map(|a| a.prefix_len),
        }
    }

    /// Waits until exactly one node holds the VIP and the client is served by it.
    pub fn wait_settled(&self, timeout: Duration) -> Result<usize> {
        let start = Instant::now();
        loop {
            check_interrupt()?;
            let h = self.holders();
            if let [one] = h[..] {
                let since = Instant::now();
                sleep(Duration::from_millis(60))?;
                if self.prober.last_served(since).as_deref() == Some(&self.nodes[one].name) {
                    return Ok(one);
                }
            }
            if start.elapsed() > timeout {
                bail!(
                    "no single holder serving the client after {timeout:?} (holders now: {:?}); logs in {}",
                    h.iter().map(|&i| &self.nodes[i].name).collect::<Vec<_>>(),
                    self.lab.dir().display()
                );
            }
            sleep(Duration::from_millis(50))?;
        }
    }

    /// Cuts every link of `node` (carrier loss, as a holder failure).
    pub fn cut(&self, node: usize) {
        let h = &self.nodes[node].host;
        // Both at once: keepalived's adverts use eth0, vipd's ZooKeeper
        // path eth1; cutting one before the other would favour one system.
        self.lab.cut_peers(h, &["eth0", "eth1"]);
    }

    /// The keepalived VRRP child of `node` (from its pid file), only while
    /// it is a child of the node's keepalived.
    pub fn vrrp_child(&self, node: usize) -> Option<u32> {
        let pid: u32 = fs::read_to_string(&self.nodes[node].vrrp_pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())?;
        children(self.nodes[node].agent.pid())
            .contains(&pid)
            .then_some(pid)
    }

    /// Sends `sig` to `node`'s agent. keepalived's main process is frozen
    /// first, so it neither respawns nor mourns its VRRP child; then the
    /// child gets `sig`, then (for SIGKILL) the main process.
    fn signal_agent(&self, node: usize, sig: i32) -> Result<()> {
        let main = self.nodes[node].agent.current();
        let mut stopped = self.stopped.lock().unwrap();
        match self.agent {
            Agent::Vipd(_) => {
                if !main.kill(sig) {
                    bail!(
                        "vipd on {} had exited before the fault",
                        self.nodes[node].name
                    );
                }
                if sig == libc::SIGSTOP {
                    stopped.push(main.pid());
                }
            }
            Agent::Keepalived(_) => {
                // Without its VRRP child the fault would be another one: the
                // child shuts down cleanly when its parent dies.
                let child = self.vrrp_child(node).with_context(|| {
                    format!("no VRRP child of keepalived on {}", self.nodes[node].name)
                })?;
                main.kill(libc::SIGSTOP);
                stopped.push(main.pid());
                // SAFETY: kill(2) on the VRRP child of a keepalived we started.
                unsafe { libc::kill(child as libc::pid_t, sig) };
                if sig == libc::SIGSTOP {
                    stopped.push(child);
                } else {
                    main.kill(sig);
                    stopped.retain(|p| *p != main.pid());
                }
            }
        }
        Ok(())
    }

    /// Resumes what [`FailoverLab::signal_agent`] stopped on `node`.
    fn resume_agent(&self, node: usize) {
        let main = self.nodes[node].agent.pid();
        let child = self.vrrp_child(node);
        let mut stopped = self.stopped.lock().unwrap();
        for pid in child.into_iter().chain([main]) {
            if let Some(at) = stopped.iter().position(|p| *p == pid) {
                stopped.remove(at);
                // SAFETY: kill(2) on a process of this lab that we stopped.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
            }
        }
    }

    /// Makes `node` fail as `fault` says.
    pub fn inject(&self, fault: Fault, node: usize) -> Result<()> {
        let h = &self.nodes[node].host;
        match fault {
            Fault::Cut => self.cut(node),
            Fault::Partition => {
                self.lab.isolate_all(h, &["eth0", "eth1"]);
            }
            Fault::Kill => self.signal_agent(node, libc::SIGKILL)?,
            Fault::Stop => self.signal_agent(node, libc::SIGSTOP)?,
            Fault::Handover => match self.agent {
                Agent::Vipd(_) => {
                    self.vipctl_zk(&["handover"])?;
                }
                Agent::Keepalived(_) => {
                    if !self.nodes[node].agent.kill(libc::SIGTERM) {
                        bail!(
                            "keepalived on {} had exited before the handover",
                            self.nodes[node].name
                        );
                    }
                }
            },
        }
        Ok(())
    }

    /// Ends `fault` on `node`: links back, or the agent resumed, or (after
    /// a SIGKILL) the address it left removed and the agent started again.
    /// Returns whether the bench had to remove a leftover VIP.
    fn heal(&self, fault: Fault, node: usize) -> Result<bool> {
        let h = &self.nodes[node].host;
        match fault {
            Fault::Cut => {
                self.lab.restore_peer(h, "eth0");
                self.lab.restore_peer(h, "eth1");
                Ok(false)
            }
            Fault::Partition => {
                self.lab.rejoin(h, "eth0");
                self.lab.rejoin(h, "eth1");
                Ok(false)
            }
            Fault::Stop => {
                self.resume_agent(node);
                Ok(false)
            }
            Fault::Handover => {
                if let Agent::Keepalived(_) = self.agent {
                    // It exits by itself after its priority-0 advert.
                    let agent = self.nodes[node].agent.current();
                    if agent.wait_timeout(Duration::from_secs(10)).is_none() {
                        bail!(
                            "keepalived on {} still runs 10 s after its SIGTERM",
                            self.nodes[node].name
                        );
                    }
                    self.restart_agent(node)?;
                }
                Ok(false)
            }
            Fault::Kill => {
                let leftover = self.vip_prefix(node);
                if let Some(len) = leftover {
                    h.del_addr("eth0", &format!("{}/{len}", self.vip));
                }
                self.restart_agent(node)?;
                Ok(leftover.is_some())
            }
        }
    }

    /// Gives `node` its links back and waits until it is a quiet standby.
    pub fn restore(&self, node: usize, holder: usize) -> Result<()> {
        self.heal(Fault::Cut, node)?;
        self.wait_standby(node, Some(holder), Instant::now(), None)
            .map(|_| ())
    }

    /// Ends the fault of takeover `t` and waits until the cluster is quiet:
    /// one holder serving the client and the failed node a standby (vipd;
    /// keepalived may settle with the failed node as master again, which
    /// is then the holder). Completes `t` with when the fault ended,
    /// whether the bench removed a leftover address, and the overlap over
    /// the whole run. Returns the holder.
    pub fn restore_from(&self, t: &mut Takeover) -> Result<usize> {
        let healed_at = Instant::now();
        t.healed = Some(healed_at.saturating_duration_since(t.cut_at));
        t.leftover_removed = self.heal(t.fault, t.old)?;
        let expected = match self.agent {
            Agent::Vipd(_) => t.new,
            Agent::Keepalived(_) => None,
        };
        let mut flushed = None;
        let result = self.wait_standby(t.old, expected, healed_at, Some(&mut flushed));
        let quiet = Instant::now();
        t.overlap = self.overlap(t.old, t.cut_at, quiet);
        t.after_heal_outage = Some(longest_outage(
            &self.prober.outcomes(healed_at, quiet),
            healed_at,
            quiet,
        ));
        t.client_flushed = flushed;
        result
    }

    /// Waits until `node` is a standby and one node holds the VIP (`holder`,
    /// if given) and serves the client. With `flushed`, a client still not
    /// served by a settled holder [`CLIENT_FLUSH_AFTER`] after `since` has
    /// its neighbour entry for the VIP flushed, and `flushed` names the
    /// node that entry pointed at.
    fn wait_standby(
        &self,
        node: usize,
        holder: Option<usize>,
        since: Instant,
        mut flushed: Option<&mut Option<String>>,
    ) -> Result<usize> {
        loop {
            check_interrupt()?;
            let holders = self.holders();
            let single = match holders[..] {
                [one] if holder.is_none_or(|h| h == one) => Some(one),
                _ => None,
            };
            let ready = single.is_some_and(|one| match self.agent {
                Agent::Vipd(_) => {
                    one != node
                        && self.status(node).is_some_and(|s| {
                            let zk = &s["zookeeper"];
                            zk["session"] == "connected"
                                && zk["is_leader"] == false
                                && zk["leader"].as_str() == Some(&self.nodes[one].name)
                        })
                }
                // keepalived leaves FAULT on link up and listens as BACKUP.
                Agent::Keepalived(s) => since.elapsed() > s.advert_int * 4,
            });
            if ready && let Some(one) = single {
                let probe = Instant::now();
                sleep(Duration::from_millis(60))?;
                if self.prober.last_served(probe).as_deref() == Some(&self.nodes[one].name)
                    && self.holders() == [one]
                {
                    return Ok(one);
                }
                if let Some(f) = flushed.as_deref_mut()
                    && f.is_none()
                    && since.elapsed() > CLIENT_FLUSH_AFTER
                {
                    *f = Some(self.client_neigh_node());
                    let family = if self.vip.is_ipv6() { "-6" } else { "-4" };
                    let vip = self.vip.to_string();
                    self.client.ip(&[family, "neigh", "flush", "to", &vip]);
                }
            }
            if since.elapsed() > RESTORE_TIMEOUT {
                bail!(
                    "{} did not settle as a standby within {RESTORE_TIMEOUT:?} after the fault ended (holders {:?}); logs in {}",
                    self.nodes[node].name,
                    holders
                        .iter()
                        .map(|&i| &self.nodes[i].name)
                        .collect::<Vec<_>>(),
                    self.lab.dir().display()
                );
            }
            sleep(Duration::from_millis(100))?;
        }
    }

    /// Cuts the holder, waits for the takeover to complete (the client
    /// served by another node and its neighbour entry moved), then keeps
    /// observing for `linger` after the VIP was configured on the new node.
    pub fn takeover(&self, linger: Duration, timeout: Duration) -> Result<Takeover> {
        self.takeover_on(Fault::Cut, linger, timeout)
    }

    /// Fails the holder as `fault` says and waits for the takeover: the
    /// client served by another node, its neighbour entry moved, `linger`
    /// past the VIP's add on the new node, and the old holder's VIP gone
    /// (waited for at most [`FENCE_WAIT`] after the client was served), or
    /// `timeout` after the fault. The fault is still on when this returns:
    /// [`FailoverLab::restore_from`] ends it.
    pub fn takeover_on(
        &self,
        fault: Fault,
        linger: Duration,
        timeout: Duration,
    ) -> Result<Takeover> {
        let old = self.wait_settled(Duration::from_secs(15))?;
        let cut_wall = SystemTime::now();
        let cut = Instant::now();
        self.inject(fault, old)?;
        let (mut new, mut configured): (Option<usize>, Option<Instant>);
        loop {
            check_interrupt()?;
            // The new holder: the one node besides the old holder that
            // added the VIP after the fault and holds it now. Two may add it
            // (keepalived's backups can both take over, and the higher
            // priority keeps it): wait until one is left.
            let holding: Vec<(usize, Instant)> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != old)
                .filter_map(|(i, n)| {
                    let added = n.watch.first_of(true, self.vip, cut)?;
                    let holds = n
                        .watch
                        .changes_of(self.vip)
                        .last()
                        .is_some_and(|&(_, add)| add);
                    holds.then_some((i, added))
                })
                .collect();
            (new, configured) = match holding[..] {
                [(i, at)] => (Some(i), Some(at)),
                _ => (None, None),
            };
            if let (Some(n), Some(conf)) = (new, configured) {
                let node = &self.nodes[n];
                let served = self.prober.first_served_by(&node.name, cut);
                let switched = self.neigh_switch(node.mac, cut).is_some();
                let fenced = self.nodes[old]
                    .watch
                    .first_of(false, self.vip, cut)
                    .is_some();
                if let Some(served) = served
                    && switched
                    && conf.elapsed() >= linger
                    && (fenced || served.elapsed() >= FENCE_WAIT)
                {
                    break;
                }
            }
            if cut.elapsed() > timeout {
                break;
            }
            sleep(Duration::from_millis(10))?;
        }
        let end = Instant::now();
        let off = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(cut));
        let mut t = Takeover {
            old_removed: off(self.nodes[old].watch.first_of(false, self.vip, cut)),
            configured: off(configured),
            overlap: self.overlap(old, cut, end),
            ..Takeover::at_fault(fault, cut_wall, cut, old, new)
        };
        if let Some(n) = new {
            let node = &self.nodes[n];
            if let Agent::Vipd(_) = self.agent {
                let log = node.agent.stderr();
                t.decided = log_event_at(&log, TAKEOVER_LINE, cut_wall);
                t.elected = elected_at(&log, cut_wall);
            }
            let garps = self.announcements(node.mac, cut);
            t.first_garp = off(garps.first().copied());
            t.garp_frames = garps.len();
            t.neigh_switched = off(self.neigh_switch(node.mac, cut));
            t.served = off(self.prober.first_served_by(&node.name, cut));
            t.rss_kib = self.rss_kib(n);
        }
        Ok(t)
    }

    /// When the client received announcements of the VIP at `mac` (gratuitous
    /// ARP, or unsolicited NA for an IPv6 VIP) at or after `since`.
    fn announcements(&self, mac: [u8; 6], since: Instant) -> Vec<Instant> {
        self.capture
            .frames()
            .iter()
            .filter(|f| f.at >= since && f.announces(self.vip) == Some(mac))
            .map(|f| f.at)
            .collect()
    }

    /// The node whose MAC the client's neighbour entry for the VIP names now.
    fn client_neigh_node(&self) -> String {
        let entry = self.client.neigh(self.vip);
        let mac = entry.as_ref().and_then(|e| e.lladdr.clone());
        let node = mac.as_deref().and_then(|m| {
            let m = parse_mac(m)?;
            self.nodes.iter().find(|n| n.mac == m)
        });
        match (node, entry) {
            (Some(n), Some(e)) => format!("{} ({})", n.name, e.state.join(",")),
            (None, Some(e)) => format!("{} ({})", mac.unwrap_or_default(), e.state.join(",")),
            (None | Some(_), None) => "no entry".to_string(),
        }
    }

    /// When the client's neighbour entry for the VIP first named `mac` after `since`.
    fn neigh_switch(&self, mac: [u8; 6], since: Instant) -> Option<Instant> {
        self.client_watch.neigh_to(self.vip, mac, since)
    }

    /// The VIP's address events in every node in [from, to]: (instant,
    /// node, added), in order.
    pub fn vip_changes(&self, from: Instant, to: Instant) -> Vec<(Instant, usize, bool)> {
        let mut changes: Vec<(Instant, usize, bool)> = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for (at, added) in n.watch.changes_of(self.vip) {
                if at >= from && at <= to {
                    changes.push((at, i, added));
                }
            }
        }
        changes.sort_by_key(|c| c.0);
        changes
    }

    /// How long two or more nodes held the VIP at once in [from, to],
    /// from each namespace's address events (`old` held it at `from`).
    fn overlap(&self, old: usize, from: Instant, to: Instant) -> Duration {
        let held: Vec<bool> = (0..self.nodes.len()).map(|i| i == old).collect();
        overlap_of(&self.vip_changes(from, to), held, from, to)
    }

    /// The agent's resident memory on `node` (keepalived: its processes summed).
    pub fn rss_kib(&self, node: usize) -> Option<u64> {
        let pid = self.nodes[node].agent.pid();
        let mut pids = vec![pid];
        if matches!(self.agent, Agent::Keepalived(_)) {
            pids.extend(children(pid));
        }
        let mut sum = 0;
        for p in pids {
            sum += vm_rss_kib(p)?;
        }
        Some(sum)
    }
}

/// The longest stretch in [from, to] without an answered probe (a stretch
/// from `from` to the first answer counts, and one from the last to `to`).
pub fn longest_outage(outcomes: &[(Instant, bool)], from: Instant, to: Instant) -> Duration {
    let mut last_ok = from;
    let mut longest = Duration::ZERO;
    for &(at, ok) in outcomes {
        if ok && at >= from && at <= to {
            longest = longest.max(at.saturating_duration_since(last_ok));
            last_ok = at;
        }
    }
    longest.max(to.saturating_duration_since(last_ok))
}

/// How long two or more nodes held the VIP at once in [from, to], given
/// the address events in order (instant, node, added) and who held it at
/// `from`. An add on a node that holds it already (a lifetime renewal)
/// changes nothing.
pub fn overlap_of(
    changes: &[(Instant, usize, bool)],
    mut held: Vec<bool>,
    from: Instant,
    to: Instant,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut last = from;
    for &(at, i, added) in changes {
        if held.iter().filter(|h| **h).count() >= 2 {
            total += at.saturating_duration_since(last);
        }
        held[i] = added;
        last = at;
    }
    if held.iter().filter(|h| **h).count() >= 2 {
        total += to.saturating_duration_since(last);
    }
    total
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// One takeover, offsets from the fault (the cut, for [`Fault::Cut`]).
#[derive(Clone, Debug)]
pub struct Takeover {
    pub fault: Fault,
    /// The wall-clock time of the fault (for agents' log timestamps).
    pub cut_wall: SystemTime,
    /// The instant of the fault.
    pub cut_at: Instant,
    pub old: usize,
    pub new: Option<usize>,
    /// The old holder removed the VIP (its own netlink event).
    pub old_removed: Option<Duration>,
    /// The next in line's log line deciding the takeover (its wait for a
    /// renewal is up; it deletes the leader's znode next).
    pub decided: Option<Duration>,
    /// vipd's "elected leader" log line on the new node.
    pub elected: Option<Duration>,
    /// The VIP appeared on the new node (netlink event there).
    pub configured: Option<Duration>,
    /// The first gratuitous ARP (for an IPv6 VIP: unsolicited Neighbor
    /// Advertisement) from the new node seen by the client.
    pub first_garp: Option<Duration>,
    /// The client's neighbour entry for the VIP names the new node's MAC.
    pub neigh_switched: Option<Duration>,
    /// The first probe answered by the new node.
    pub served: Option<Duration>,
    /// Time with the VIP on two nodes at once: until the takeover was
    /// over, and after [`FailoverLab::restore_from`] until the cluster was
    /// quiet again.
    pub overlap: Duration,
    /// When the bench ended the fault (set by [`FailoverLab::restore_from`]).
    pub healed: Option<Duration>,
    /// The old holder still had the VIP when the fault ended (after a
    /// SIGKILL) and the bench removed it.
    pub leftover_removed: bool,
    /// The longest stretch without an answered probe from the end of the
    /// fault until the cluster was quiet.
    pub after_heal_outage: Option<Duration>,
    /// The bench flushed the client's neighbour entry after the fault
    /// ended (see [`CLIENT_FLUSH_AFTER`]): where that entry pointed.
    pub client_flushed: Option<String>,
    /// Gratuitous ARP (IPv6 VIP: unsolicited NA) frames from the new node
    /// seen by the client.
    pub garp_frames: usize,
    pub rss_kib: Option<u64>,
}

impl Takeover {
    /// A takeover after `fault` at `cut_at` (`cut_wall` on the wall clock)
    /// from `old` to `new`, nothing observed yet.
    pub fn at_fault(
        fault: Fault,
        cut_wall: SystemTime,
        cut_at: Instant,
        old: usize,
        new: Option<usize>,
    ) -> Takeover {
        Takeover {
            fault,
            cut_wall,
            cut_at,
            old,
            new,
            old_removed: None,
            decided: None,
            elected: None,
            configured: None,
            first_garp: None,
            neigh_switched: None,
            served: None,
            overlap: Duration::ZERO,
            healed: None,
            leftover_removed: false,
            after_heal_outage: None,
            client_flushed: None,
            garp_frames: 0,
            rss_kib: None,
        }
    }

    /// The client reached the service through the new node.
    pub fn complete(&self) -> bool {
        self.served.is_some() && self.configured.is_some()
    }

    /// The VIP was on two nodes and the old holder had not removed it by
    /// itself when the bench ended the fault: the overlap lasted as long as
    /// the bench let the fault last.
    pub fn overlap_ended_by_bench(&self) -> bool {
        !self.overlap.is_zero() && self.old_removed.is_none()
    }
}

/// vipd's log line when the next in line's wait for a renewal is up.
pub const TAKEOVER_LINE: &str = "the leader has not renewed its lease";

/// The first "elected leader" line of a vipd JSON log after `after`,
/// as an offset from `after`.
pub fn elected_at(log: &str, after: SystemTime) -> Option<Duration> {
    log_event_at(log, "elected leader", after)
}

/// The first line of a vipd JSON log whose message starts with `message`,
/// logged after `after`; its offset from `after`.
pub fn log_event_at(log: &str, message: &str, after: SystemTime) -> Option<Duration> {
    log.lines().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let msg = v["fields"]["message"].as_str()?;
        if !msg.starts_with(message) {
            return None;
        }
        let at = parse_rfc3339(v["timestamp"].as_str()?)?;
        at.duration_since(after).ok()
    })
}

/// The timestamp of the first JSON log line whose message is `message`.
pub fn log_time(log: &str, message: &str) -> Option<SystemTime> {
    log.lines().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v["fields"]["message"].as_str()? != message {
            return None;
        }
        parse_rfc3339(v["timestamp"].as_str()?)
    })
}

/// `2026-11-25T15:22:39.123456Z` (UTC, as tracing writes it).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let digits: String = frac.chars().take(9).collect();
    let nanos: u64 = format!("{digits:0<9}").parse().ok()?;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

// ---------------------------------------------------------------- figures

/// Milliseconds, as printed in the tables.
pub fn ms(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.1}", d.as_secs_f64() * 1000.0)
    } else {
        format!("{}", d.as_millis())
    }
}

/// (median, min, max) of some durations.
pub fn spread(mut v: Vec<Duration>) -> Option<(Duration, Duration, Duration)> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    };
    Some((median, v[0], v[n - 1]))
}

/// `median (min–max)` in ms, or `n/a`.
pub fn spread_ms(v: Vec<Duration>) -> String {
    match spread(v) {
        Some((m, lo, hi)) => format!("{} ({}–{})", ms(m), ms(lo), ms(hi)),
        None => "n/a".to_string(),
    }
}

/// A difference `b - a` when both happened.
pub fn between(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    Some(b?.checked_sub(a?).unwrap_or_default())
}

// ---------------------------------------------------------------- plot

/// One row of the timeline plot: a label and the takeover's marks.
pub struct PlotRow {
    pub label: String,
    pub takeover: Takeover,
}

/// The timeline plot: one row per takeover, x = ms after the cut; a bar
/// from the cut to the VIP configured, one on to the neighbour switch, one
/// on to the first answer, and marks for the first gratuitous ARP (or
/// unsolicited NA) and the old holder's removal.
pub fn timeline_svg(title: &str, rows: &[PlotRow]) -> String {
    let max_ms = rows
        .iter()
        .filter_map(|r| {
            let t = &r.takeover;
            [t.served, t.neigh_switched, t.configured, t.old_removed]
                .into_iter()
                .flatten()
                .max()
        })
        .max()
        .map_or(1000, |d| d.as_millis() as u64);
    let step = [100u64, 250, 500, 1000, 2000, 5000]
        .into_iter()
        .find(|s| max_ms / s <= 10)
        .unwrap_or(10_000);
    let axis_ms = max_ms.div_ceil(step).max(1) * step;
    // x in µs (plotters' exact ticks need an integer axis), ticks every
    // `step` ms; y in rows of 14 units from the top, 14 px each.
    let us = |d: Duration| d.as_micros() as i64;
    let axis_us = axis_ms as i64 * 1000;
    let ticks = (0..=axis_us).step_by(step as usize * 1000).collect();
    let (label_w, plot_w, row_h) = (180u32, 700u32, 14i32);
    let (top, x_labels) = (6, 45);
    // A bar stays at least a pixel wide, as a zero-length phase still happened.
    let pixel_us = axis_us / plot_w as i64;
    let (configured, switched, served, garp, removed) = (
        plot::rgb(0x9bb8d9),
        plot::rgb(0xf0b35b),
        plot::rgb(0x7cc47c),
        plot::rgb(0xc0392b),
        plot::rgb(0x333333),
    );
    let legend = [
        (configured, "cut → VIP configured on the new holder"),
        (switched, "→ client's neighbour entry switched"),
        (served, "→ first TCP answer from the new holder"),
        (garp, "| first gratuitous ARP (IPv6: NA) at the client"),
        (removed, "| old holder removed the VIP"),
    ];
    let layout = plot::LegendLayout {
        left: label_w as i32,
        columns: 3,
        column_width: 240,
    };
    plot::svg(
        label_w + plot_w + 30,
        top + row_h as u32 * rows.len().max(1) as u32 + x_labels,
        title,
        &legend,
        &layout,
        |area| {
            let bottom = row_h * rows.len().max(1) as i32;
            let middles = (0..rows.len() as i32)
                .map(|i| i * row_h + row_h / 2)
                .collect();
            let label = |y: &i32| {
                rows.get((y / row_h) as usize)
                    .map_or(String::new(), |r| r.label.clone())
            };
            let mut chart = ChartBuilder::on(area)
                .margin_top(top)
                .margin_right(30)
                .y_label_area_size(label_w)
                .x_label_area_size(x_labels)
                .build_cartesian_2d(
                    (0..axis_us).with_key_points(ticks),
                    (bottom..0).with_key_points(middles),
                )?;
            chart
                .configure_mesh()
                .disable_y_mesh()
                .bold_line_style(plot::rgb(0xdddddd))
                .x_label_formatter(&|t| (t / 1000).to_string())
                .y_label_formatter(&label)
                .x_desc("ms after the holder's links were cut")
                .label_style(("sans-serif", plot::TEXT).into_font())
                .axis_desc_style(("sans-serif", plot::TEXT).into_font())
                .draw()?;
            for (i, r) in rows.iter().enumerate() {
                let (y, t) = (i as i32 * row_h, &r.takeover);
                let bars = [
                    (Some(Duration::ZERO), t.configured, configured),
                    (t.configured, t.neigh_switched, switched),
                    (t.neigh_switched.or(t.configured), t.served, served),
                ];
                chart.draw_series(bars.into_iter().filter_map(|(a, b, color)| {
                    let (a, b) = (us(a?), us(b?));
                    Some(Rectangle::new(
                        [(a, y + 2), (b.max(a + pixel_us), y + row_h - 2)],
                        color.filled(),
                    ))
                }))?;
                let marks = [(t.first_garp, garp), (t.old_removed, removed)];
                chart.draw_series(marks.into_iter().filter_map(|(m, color)| {
                    let m = us(m?);
                    Some(PathElement::new(
                        [(m, y + 1), (m, y + row_h - 1)],
                        color.stroke_width(2),
                    ))
                }))?;
            }
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_replies() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\nserved-by n2\n";
        assert_eq!(http_served_by(ok).as_deref(), Some("n2"));
        let missing = b"HTTP/1.0 404 Not Found\r\n\r\nserved-by n2\n";
        assert_eq!(http_served_by(missing), None);
        assert_eq!(http_served_by(b"HTTP/1.0 200 OK\r\n"), None);
        assert_eq!(http_served_by(b""), None);
    }

    #[test]
    fn finds_log_lines_by_message() {
        let log = "{\"timestamp\":\"2026-11-25T15:22:29.5Z\",\"level\":\"INFO\",\
                   \"fields\":{\"message\":\"leader term starts\",\"term\":1},\"target\":\"vipd::agent\"}\n";
        let t = log_time(log, "leader term starts").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_millis(),
            1_795_620_149_500
        );
        assert!(log_time(log, "VIP added").is_none());
    }

    #[test]
    fn rfc3339_timestamps() {
        let t = parse_rfc3339("1970-01-02T00:00:01.5Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_millis(86_401_500)
        );
        let t = parse_rfc3339("2026-11-25T15:22:39.123456Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_micros(),
            1_795_620_159_123_456
        );
        assert!(parse_rfc3339("2026-11-25 15:22:39").is_none());
    }

    #[test]
    fn elected_line_is_found_after_the_cut() {
        let log = r#"{"timestamp":"2026-11-25T15:22:39.100000Z","level":"INFO","fields":{"message":"elected leader","term":1}}
{"timestamp":"2026-11-25T15:22:41.250000Z","level":"INFO","fields":{"message":"elected leader","term":2}}"#;
        let cut = parse_rfc3339("2026-11-25T15:22:40.000000Z").unwrap();
        assert_eq!(elected_at(log, cut), Some(Duration::from_millis(1250)));
    }

    #[test]
    fn overlap_counts_two_holders_only() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let held = vec![true, false, false];
        // n0 renews (no change), n1 adds at 100, n0 removes at 250, n1 renews.
        let changes = [
            (at(50), 0, true),
            (at(100), 1, true),
            (at(250), 0, false),
            (at(300), 1, true),
        ];
        assert_eq!(
            overlap_of(&changes, held.clone(), t0, at(1000)),
            Duration::from_millis(150)
        );
        // Still two holders at the end: counted up to `to`.
        assert_eq!(
            overlap_of(&changes[..2], held.clone(), t0, at(400)),
            Duration::from_millis(300)
        );
        assert_eq!(overlap_of(&[], held, t0, at(400)), Duration::ZERO);
    }

    #[test]
    fn outages_count_from_the_window_start() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let o = [
            (at(5), false),
            (at(40), true),
            (at(50), true),
            (at(60), false),
        ];
        // 0 -> 40 unanswered, then 50 -> 100.
        assert_eq!(longest_outage(&o, t0, at(100)), Duration::from_millis(50));
        assert_eq!(longest_outage(&o, t0, at(70)), Duration::from_millis(40));
        assert_eq!(longest_outage(&[], t0, at(30)), Duration::from_millis(30));
    }

    #[test]
    fn medians() {
        let d = |v: &[u64]| v.iter().map(|m| Duration::from_millis(*m)).collect();
        assert_eq!(spread_ms(d(&[30, 10, 20])), "20 (10–30)");
        assert_eq!(spread_ms(d(&[4, 1, 2, 3])), "2.5 (1.0–4.0)");
        assert_eq!(spread_ms(vec![]), "n/a");
    }

    /// A takeover with these marks, in ms after the cut.
    fn marked(
        configured: Option<u64>,
        neigh_switched: Option<u64>,
        served: Option<u64>,
        first_garp: Option<u64>,
        old_removed: Option<u64>,
    ) -> Takeover {
        let ms = |m: Option<u64>| m.map(Duration::from_millis);
        Takeover {
            old_removed: ms(old_removed),
            configured: ms(configured),
            first_garp: ms(first_garp),
            neigh_switched: ms(neigh_switched),
            served: ms(served),
            ..Takeover::at_fault(Fault::Cut, UNIX_EPOCH, Instant::now(), 0, Some(1))
        }
    }

    #[test]
    fn the_timeline_draws_every_segment_and_mark() {
        let rows = [
            PlotRow {
                label: "vipd #1".to_string(),
                takeover: marked(Some(300), Some(310), Some(420), Some(305), Some(900)),
            },
            // Not served: the bar stops at the VIP configured, no marks.
            PlotRow {
                label: "keepalived <#2>".to_string(),
                takeover: marked(Some(1000), None, None, None, None),
            },
        ];
        let svg = timeline_svg("link cut & takeover", &rows);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        let texts = plot::texts(&svg);
        let ticks = (0..=1000).step_by(100).map(|t| t.to_string());
        for text in ["link cut & takeover", "vipd #1", "keepalived <#2>"]
            .map(str::to_string)
            .into_iter()
            .chain(["ms after the holder's links were cut".to_string()])
            .chain(ticks)
            .chain(
                [
                    "cut → VIP configured on the new holder",
                    "→ client's neighbour entry switched",
                    "→ first TCP answer from the new holder",
                    "| first gratuitous ARP (IPv6: NA) at the client",
                    "| old holder removed the VIP",
                ]
                .map(str::to_string),
            )
        {
            assert!(texts.contains(&text), "no text {text:?} in {texts:?}");
        }
        // Each colour: its legend square plus one bar or mark per row that has it.
        for (what, count) in [
            (r##"<rect"##, 1 + 5 + 4),
            (r##"fill="#9BB8D9""##, 1 + 2),
            (r##"fill="#F0B35B""##, 1 + 1),
            (r##"fill="#7CC47C""##, 1 + 1),
            (r##"fill="#C0392B""##, 1),
            (r##"stroke="#C0392B""##, 1),
            (r##"fill="#333333""##, 1),
            (r##"stroke="#333333""##, 1),
        ] {
            assert_eq!(svg.matches(what).count(), count, "{what}");
        }
    }
}
