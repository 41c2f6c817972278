//! The flags of each part of the agent (ZooKeeper, the engine, serving,
//! XDP), grouped as clap sees them, with the settings derived from them.

use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use super::{parse_duration, parse_positive_duration};
use crate::net::garp::GarpMode;

/// How the XDP program is attached. Whatever the setting, an interface
/// where native answers are seen lost moves to generic mode (see
/// `xdp::XdpProgram::check_delivery`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpMode {
    /// Native (driver) mode where the driver's native XDP_TX delivers,
    /// generic on veth and where the driver refuses native mode.
    Auto,
    /// Driver mode first (generic after answers are seen lost).
    Native,
    /// Generic (skb) mode: works on every interface, slower.
    Generic,
}

/// `--garp-mode`'s values: the command line's view of
/// [`GarpMode`], kept here so the frame code does not depend on clap.
impl ValueEnum for GarpMode {
    fn value_variants<'a>() -> &'a [Self] {
        &[GarpMode::Request, GarpMode::Reply, GarpMode::Both]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        use clap::builder::PossibleValue;
        Some(match self {
            GarpMode::Request => PossibleValue::new("request")
                .help("Request form, as `arping -U` and keepalived: tha ff:ff:ff:ff:ff:ff"),
            GarpMode::Reply => {
                PossibleValue::new("reply").help("Reply form, as `arping -A`: tha = our MAC")
            }
            GarpMode::Both => PossibleValue::new("both").help("Both, request first"),
        })
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// ZooKeeper coordination (cluster mode).
#[derive(Args, Debug, Clone)]
pub struct ZkArgs {
    /// ZooKeeper servers, `host:port[,host:port...]`. Without it vipd runs
    /// in single-node mode.
    #[arg(global = true, long = "zk", env = "VIPD_ZK")]
    pub hosts: Option<String>,

    /// Cluster name: vipd's znodes live under /vipd/<cluster>.
    #[arg(global = true, long, env = "VIPD_CLUSTER", default_value = "default")]
    pub cluster: String,

    /// This node's id in the election (default: the host name).
    #[arg(global = true, long, env = "VIPD_NODE_ID")]
    pub node_id: Option<String>,

    /// ZooKeeper session timeout.
    #[arg(global = true, long, env = "VIPD_SESSION_TIMEOUT", value_parser = parse_positive_duration, default_value = "6s")]
    pub session_timeout: Duration,

    /// File with the cluster's ZooKeeper credential, `user:password` (the
    /// same on every node). Without it vipd reads the systemd credential
    /// `vipd-zk` ($CREDENTIALS_DIRECTORY/vipd-zk) if the unit loads one.
    #[arg(global = true, long, env = "VIPD_ZK_AUTH_FILE")]
    pub zk_auth_file: Option<PathBuf>,

    /// Without a credential, create the cluster's ZooKeeper tree open to
    /// anyone who reaches ZooKeeper (refused otherwise). Ignored when a
    /// credential is configured.
    #[arg(global = true, long, env = "VIPD_ZK_INSECURE")]
    pub zk_insecure: bool,

    /// Deprecated and ignored: a leader no longer gives up leadership for
    /// a VIP it cannot route (it serves the others and hands over only to a
    /// member that can serve more). Accepted so older configurations load.
    #[arg(global = true, long, env = "VIPD_STEP_DOWN_BACKOFF", value_parser = parse_positive_duration, default_value = "5s")]
    pub step_down_backoff: Duration,

    /// The leader's lease, its right to hold the VIPs: it renews it every
    /// lease / 4 (lease / 16 below 1 s) and fences when its last
    /// acknowledged renewal was sent longer ago; the VIP addresses' kernel
    /// lifetime follows it. Must be below the session timeout minus
    /// one renewal interval. Default: a third of the session timeout.
    #[arg(global = true, long, env = "VIPD_LEASE", value_parser = parse_positive_duration)]
    pub lease: Option<Duration>,

    /// Added by the next in line to the lease and the clocks' rate
    /// allowance (2/11 of the lease) before it takes over from a silent
    /// leader whose fence outlives its agent (at least 10ms). A leader
    /// whose fence dies with it is waited for the lease, one renewal
    /// interval and this margin counted as at least 100ms, which covers
    /// its own fencing.
    #[arg(global = true, long, env = "VIPD_TAKEOVER_MARGIN", value_parser = parse_duration, default_value = "25ms")]
    pub takeover_margin: Duration,
}

impl ZkArgs {
    /// The lease settings, validated against the session timeout.
    pub fn lease_times(&self) -> Result<vipd_lease::LeaseTimes, String> {
        vipd_lease::LeaseTimes::new(self.session_timeout, self.lease, self.takeover_margin)
            .map_err(|e| e.to_string())
    }
}

/// The VIP engine: reconcile and announce.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// How often the leader re-checks every VIP, besides at once on
    /// netlink events: a change the events miss is repaired within this.
    #[arg(global = true, long, env = "VIPD_RECONCILE_INTERVAL", value_parser = parse_positive_duration, default_value = "3s")]
    pub reconcile_interval: Duration,

    /// Interval of the sync task's rounds after becoming leader: each
    /// round re-checks every VIP and announces those held.
    #[arg(global = true, long, env = "VIPD_GARP_INTERVAL", value_parser = parse_positive_duration, default_value = "10s")]
    pub garp_interval: Duration,

    /// Number of sync rounds after becoming leader, so neighbours that
    /// missed the first announcement learn the new MAC.
    #[arg(global = true, long, env = "VIPD_GARP_ROUNDS", default_value_t = 6)]
    pub garp_rounds: u32,

    /// Gratuitous ARP form: request (as `arping -U`), reply (as `arping -A`)
    /// or both.
    #[arg(
        global = true,
        long,
        env = "VIPD_GARP_MODE",
        value_enum,
        default_value = "both"
    )]
    pub garp_mode: GarpMode,

    /// Announcement frames per second per interface, at most: thousands
    /// of VIPs are announced paced, never flooding the segment.
    #[arg(global = true, long, env = "VIPD_GARP_RATE", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub garp_rate: u32,

    /// React to netlink address, route and link events at once (on by
    /// default; `false` leaves only the periodic reconcile).
    #[arg(global = true, long, env = "VIPD_NETLINK_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub netlink_events: bool,

    /// Debounce of netlink events: a burst costs one reconcile pass.
    #[arg(global = true, long, env = "VIPD_EVENT_DEBOUNCE", value_parser = parse_duration, default_value = "2ms")]
    pub event_debounce: Duration,

    /// After the sync rounds, the leader announces every VIP again at this
    /// interval for as long as it leads, paced as every announcement;
    /// 0 turns it off.
    #[arg(global = true, long, env = "VIPD_GARP_REFRESH", value_parser = parse_duration, default_value = "60s")]
    pub garp_refresh: Duration,

    /// How long a VIP's interface may be down or without carrier before the
    /// leader gives up leadership to a node that can serve, so a flap does
    /// not move the VIPs.
    #[arg(global = true, long, env = "VIPD_LINK_GRACE", value_parser = parse_duration, default_value = "200ms")]
    pub link_grace: Duration,

    /// TCP handoff: the leader publishes its VIPs' TCP connections in
    /// ZooKeeper; a new holder sends each client a tickle ACK right after
    /// announcing the VIP, so the client's stale connection fails at once
    /// and it reconnects; a node that releases an IPv4 VIP aborts its own
    /// sockets on it. `false` turns all of it off.
    #[arg(global = true, long, env = "VIPD_TCP_HANDOFF", default_value_t = true, action = clap::ArgAction::Set)]
    pub tcp_handoff: bool,

    /// How often, at most, the leader publishes its VIPs' TCP connections
    /// (only the VIPs whose connections changed are written).
    #[arg(global = true, long, env = "VIPD_TCP_PUBLISH_INTERVAL", value_parser = parse_positive_duration, default_value = "2s")]
    pub tcp_publish_interval: Duration,

    /// Before first adding a VIP the cluster never held, probe whether
    /// another host answers for it (ARP probes, IPv6 duplicate address
    /// detection): three probes over the first half of this wait; 0 turns
    /// probing off.
    #[arg(global = true, long, env = "VIPD_PROBE_WAIT", value_parser = parse_duration, default_value = "200ms")]
    pub probe_wait: Duration,

    /// How often a VIP found in use by another host is probed again (it is
    /// added once nobody answers).
    #[arg(global = true, long, env = "VIPD_PROBE_RETRY", value_parser = parse_positive_duration, default_value = "5s")]
    pub probe_retry: Duration,
}

/// Serving: the health checks that decide whether this node stands for
/// election, and the hook run when its role or VIPs change.
#[derive(Args, Debug, Clone)]
pub struct ServingArgs {
    /// A health check (repeatable): `tcp:HOST:PORT`, `http://HOST[:PORT]/PATH`
    /// (a GET answered 2xx) or `exec:/PATH [ARGS...]` (run without a shell,
    /// exit 0 is healthy). An unhealthy node withdraws from the election.
    /// Several checks in one value (the environment) are separated by `;`.
    #[arg(global = true, long = "check", env = "VIPD_CHECK", value_delimiter = ';',
          value_parser = parse_check)]
    pub checks: Vec<crate::health::CheckSpec>,

    /// How often each check runs.
    #[arg(global = true, long, env = "VIPD_CHECK_INTERVAL", value_parser = parse_positive_duration, default_value = "1s")]
    pub check_interval: Duration,

    /// A check not done within this fails (a hung program is killed).
    #[arg(global = true, long, env = "VIPD_CHECK_TIMEOUT", value_parser = parse_positive_duration, default_value = "1s")]
    pub check_timeout: Duration,

    /// Consecutive failures that make a healthy check unhealthy.
    #[arg(global = true, long, env = "VIPD_CHECK_FALL", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub check_fall: u32,

    /// Consecutive successes that make an unhealthy check healthy.
    #[arg(global = true, long, env = "VIPD_CHECK_RISE", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub check_rise: u32,

    /// A program run (without a shell) on every role change of this node and
    /// every change of the VIPs it holds, with VIPD_ROLE, VIPD_NODE,
    /// VIPD_TERM and VIPD_VIPS in its environment; one at a time, in order.
    #[arg(global = true, long, env = "VIPD_ON_CHANGE")]
    pub on_change: Option<PathBuf>,

    /// The hook is killed when it runs longer than this.
    #[arg(global = true, long, env = "VIPD_ON_CHANGE_TIMEOUT", value_parser = parse_positive_duration, default_value = "10s")]
    pub on_change_timeout: Duration,
}

fn parse_check(s: &str) -> Result<crate::health::CheckSpec, String> {
    s.trim()
        .parse()
        .map_err(|e: crate::health::InvalidCheck| e.to_string())
}

impl ServingArgs {
    /// The health check settings.
    pub(crate) fn check_settings(&self) -> crate::health::CheckSettings {
        crate::health::CheckSettings {
            checks: self.checks.clone(),
            interval: self.check_interval,
            timeout: self.check_timeout,
            fall: self.check_fall,
            rise: self.check_rise,
        }
    }
}

/// The XDP program.
#[derive(Args, Debug, Clone)]
pub struct XdpArgs {
    /// Also attach the XDP program to this interface (repeatable); every
    /// interface that carries a VIP is attached without being named.
    #[arg(
        global = true,
        long = "xdp-interface",
        env = "VIPD_XDP_INTERFACES",
        value_delimiter = ','
    )]
    pub interfaces: Vec<String>,

    /// XDP attach mode; native answers seen lost move an interface to
    /// generic in every mode.
    #[arg(
        global = true,
        long = "xdp-mode",
        env = "VIPD_XDP_MODE",
        value_enum,
        default_value = "auto"
    )]
    pub mode: XdpMode,

    /// Run without the XDP program (no ARP counters, no in-kernel replies).
    #[arg(global = true, long = "no-xdp", env = "VIPD_NO_XDP")]
    pub disabled: bool,

    /// Answer ARP requests for held VIPs in XDP (on by default).
    #[arg(global = true, long = "xdp-responder", env = "VIPD_XDP_RESPONDER", default_value_t = true, action = clap::ArgAction::Set)]
    pub responder: bool,

    /// Pin the fence (XDP and egress links, held-VIP maps) in this
    /// directory on a bpffs, so the kernel fences this node's VIPs at lease
    /// end even after vipd is killed; a restarted vipd adopts it. Default:
    /// /sys/fs/bpf/vipd/<instance> when a bpffs is mounted at /sys/fs/bpf,
    /// else nothing is pinned (logged). A directory not on a bpffs is
    /// refused.
    #[arg(
        global = true,
        long = "bpf-dir",
        env = "VIPD_BPF_DIR",
        value_name = "PATH"
    )]
    pub bpf_dir: Option<std::path::PathBuf>,
}
