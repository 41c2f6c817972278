//! vipd's settings: flags and `VIPD_*` environment variables, validated once
//! at start into one [`Config`] that is passed down.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, ValueEnum};

use crate::{
    net::garp::GarpMode,
    vip::{InvalidVip, Vip, parse_vip_list},
};

/// Parses a duration written like `200ms`, `10s`, `1.5s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| {
            format!("invalid duration {s:?}: missing unit (ms, s, m, h), as in 200ms or 10s")
        })?;
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: {num:?} is not a number"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 || secs > 86_400.0 * 365.0 {
        return Err(format!("invalid duration {s:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A comma-separated list of VIPs as one flag value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipList(pub Vec<Vip>);

fn parse_vips(s: &str) -> Result<VipList, String> {
    parse_vip_list(s)
        .map(VipList)
        .map_err(|e: InvalidVip| e.to_string())
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: must be greater than zero"));
    }
    Ok(d)
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic when the driver refuses.
    Auto,
    /// Driver mode only.
    Native,
    /// Generic (skb) mode: works on every interface, slower.
    Generic,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The vipd agent.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "vipd",
    version,
    about = "Keeps virtual IPs on exactly one node of a cluster"
)]
pub struct Config {
    /// Single-node mode: this node always leads and serves these VIPs
    /// (comma-separated). Without --zk this is the whole configuration.
    #[arg(long, env = "VIPD_STATIC_VIPS", value_parser = parse_vips, default_value = "")]
    pub static_vips: VipList,

    #[command(flatten)]
    pub zk: ZkArgs,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub xdp: XdpArgs,

    /// Local control socket for vipctl.
    #[arg(long, env = "VIPD_API_SOCKET", default_value = "/run/vipd/vipd.sock")]
    pub api_socket: PathBuf,

    /// Serve Prometheus metrics on this address (off when unset).
    #[arg(long, env = "VIPD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format.
    #[arg(long, env = "VIPD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// ZooKeeper coordination (cluster mode).
#[derive(Args, Debug, Clone)]
pub struct ZkArgs {
    /// ZooKeeper servers, `host:port[,host:port...]`. Without it vipd runs
    /// in single-node mode.
    #[arg(long = "zk", env = "VIPD_ZK")]
    pub hosts: Option<String>,

    /// Cluster name: vipd's znodes live under /vipd/<cluster>.
    #[arg(long, env = "VIPD_CLUSTER", default_value = "default")]
    pub cluster: String,

    /// This node's id in the election (default: the host name).
    #[arg(long, env = "VIPD_NODE_ID")]
    pub node_id: Option<String>,

    /// ZooKeeper session timeout.
    #[arg(long, env = "VIPD_SESSION_TIMEOUT", value_parser = parse_positive_duration, default_value = "6s")]
    pub session_timeout: Duration,

    /// File with `user:password` for ZooKeeper digest authentication.
    #[arg(long, env = "VIPD_ZK_AUTH_FILE")]
    pub zk_auth_file: Option<PathBuf>,

    /// How long a leader that gave up (no route for a VIP) waits before it
    /// stands for election again.
    #[arg(long, env = "VIPD_STEP_DOWN_BACKOFF", value_parser = parse_positive_duration, default_value = "5s")]
    pub step_down_backoff: Duration,
}

/// The VIP engine: reconcile and announce.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// How often the leader re-checks every VIP (R6).
    #[arg(long, env = "VIPD_RECONCILE_INTERVAL", value_parser = parse_positive_duration, default_value = "3s")]
    pub reconcile_interval: Duration,

    /// Interval of the sync task's rounds after becoming leader (R8).
    #[arg(long, env = "VIPD_GARP_INTERVAL", value_parser = parse_positive_duration, default_value = "10s")]
    pub garp_interval: Duration,

    /// Number of sync rounds after becoming leader (R8).
    #[arg(long, env = "VIPD_GARP_ROUNDS", default_value_t = 6)]
    pub garp_rounds: u32,

    /// Gratuitous ARP form: request (as `arping -U`), reply (as `arping -A`)
    /// or both.
    #[arg(long, env = "VIPD_GARP_MODE", value_enum, default_value = "both")]
    pub garp_mode: GarpMode,

    /// Announcement frames per second per interface, at most (R9 pacing).
    #[arg(long, env = "VIPD_GARP_RATE", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub garp_rate: u32,

    /// React to netlink address, route and link events at once (on by
    /// default; `false` leaves only the periodic reconcile).
    #[arg(long, env = "VIPD_NETLINK_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub netlink_events: bool,

    /// Debounce of netlink events: a burst costs one reconcile pass.
    #[arg(long, env = "VIPD_EVENT_DEBOUNCE", value_parser = parse_duration, default_value = "2ms")]
    pub event_debounce: Duration,
}

/// The XDP program.
#[derive(Args, Debug, Clone)]
pub struct XdpArgs {
    /// Also attach the XDP program to this interface (repeatable); every
    /// interface that carries a VIP is attached without being named.
    #[arg(
        long = "xdp-interface",
        env = "VIPD_XDP_INTERFACES",
        value_delimiter = ','
    )]
    pub interfaces: Vec<String>,

    /// XDP attach mode.
    #[arg(
        long = "xdp-mode",
        env = "VIPD_XDP_MODE",
        value_enum,
        default_value = "auto"
    )]
    pub mode: XdpMode,

    /// Run without the XDP program (no ARP counters, no in-kernel replies).
    #[arg(long = "no-xdp", env = "VIPD_NO_XDP")]
    pub disabled: bool,

    /// Answer ARP requests for held VIPs in XDP (on by default).
    #[arg(long = "xdp-responder", env = "VIPD_XDP_RESPONDER", default_value_t = true, action = clap::ArgAction::Set)]
    pub responder: bool,
}

impl Config {
    /// Checks what clap cannot: combinations of settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.zk.hosts.is_some() && !self.static_vips.0.is_empty() {
            return Err("--static-vips and --zk exclude each other: in cluster mode the VIPs come from ZooKeeper".into());
        }
        if self
            .zk
            .hosts
            .as_deref()
            .is_some_and(|h| h.trim().is_empty())
        {
            return Err("--zk is empty: give host:port[,host:port...]".into());
        }
        if !valid_name(&self.zk.cluster) {
            return Err(format!(
                "invalid cluster name {:?}: use letters, digits, '-', '_' and '.'",
                self.zk.cluster
            ));
        }
        if let Some(id) = &self.zk.node_id
            && !valid_name(id)
        {
            return Err(format!(
                "invalid node id {id:?}: use letters, digits, '-', '_' and '.'"
            ));
        }
        Ok(())
    }

    /// The node id: `--node-id`, or the host name.
    pub fn node_id(&self) -> String {
        self.zk.node_id.clone().unwrap_or_else(hostname)
    }
}

/// A znode-safe name: non-empty, at most 128 of `[A-Za-z0-9._-]`, not `.`/`..`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// This machine's host name (`unknown` if it has none).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| valid_name(s))
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "10", "s", "10x", "-1s", "1..2s", "ms"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        assert_eq!(format_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
    }

    #[test]
    fn flags_parse_and_validate() {
        let c = Config::try_parse_from([
            "vipd",
            "--static-vips",
            "192.0.2.100,192.0.2.101",
            "--garp-interval",
            "200ms",
            "--garp-rounds",
            "6",
            "--xdp-interface",
            "eth0",
            "--xdp-interface",
            "eth1",
        ])
        .unwrap();
        assert_eq!(c.static_vips.0.len(), 2);
        assert_eq!(c.engine.garp_interval, Duration::from_millis(200));
        assert_eq!(c.xdp.interfaces, vec!["eth0", "eth1"]);
        assert_eq!(c.engine.reconcile_interval, Duration::from_secs(3));
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_name_themselves() {
        let e =
            Config::try_parse_from(["vipd", "--static-vips", "192.0.2.1,224.0.0.1"]).unwrap_err();
        assert!(e.to_string().contains("224.0.0.1"), "{e}");
        let e = Config::try_parse_from(["vipd", "--garp-interval", "10q"]).unwrap_err();
        assert!(e.to_string().contains("10q"), "{e}");
        let e = Config::try_parse_from(["vipd", "--reconcile-interval", "0s"]).unwrap_err();
        assert!(e.to_string().contains("greater than zero"), "{e}");
        let c = Config::try_parse_from([
            "vipd",
            "--zk",
            "127.0.0.1:2181",
            "--static-vips",
            "192.0.2.1",
        ])
        .unwrap();
        assert!(c.validate().is_err());
        let c = Config::try_parse_from(["vipd", "--cluster", "a/b"]).unwrap();
        assert!(c.validate().unwrap_err().contains("a/b"));
    }
}
