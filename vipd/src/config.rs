//! vipd's settings: flags, `VIPD_*` environment variables and a TOML file,
//! with precedence flag > environment > file > default, validated once at
//! start into one [`Config`] that is passed down.

use std::{
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{
    ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum,
    parser::ValueSource,
};

use crate::{
    names::{hostname, valid_name},
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
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("invalid duration {s:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
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

/// [`parse_duration`], refusing zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: must be greater than zero"));
    }
    Ok(d)
}

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

/// The vipd agent.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "vipd",
    version,
    about = "Keeps virtual IPs on exactly one node of a cluster"
)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<VipdCommand>,

    /// Configuration file (TOML; keys are the long flag names with `_` or
    /// `-`). A missing file at the default path is not an error.
    #[arg(global = true, long, env = "VIPD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Single-node mode: this node always leads and serves these VIPs
    /// (comma-separated, IPv4 and IPv6). Without --zk this is the whole
    /// configuration.
    #[arg(global = true, long, env = "VIPD_STATIC_VIPS", value_parser = parse_vips, default_value = "")]
    pub static_vips: VipList,

    #[command(flatten)]
    pub zk: ZkArgs,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub xdp: XdpArgs,

    #[command(flatten)]
    pub serving: ServingArgs,

    /// Local control socket for vipctl. Default: /run/vipd/vipd.sock, or
    /// /run/vipd/<instance>.sock for a named instance.
    #[arg(global = true, long, env = "VIPD_API_SOCKET")]
    pub api_socket: Option<PathBuf>,

    /// This vipd's instance name, for several vipd on one host (two
    /// clusters, a test and a production instance): each instance has its
    /// own ownership mark on the addresses it adds, its own control socket
    /// and its own interfaces. The default instance keeps a host with one
    /// vipd as it was.
    #[arg(global = true, long, env = "VIPD_INSTANCE", default_value = crate::instance::DEFAULT_INSTANCE)]
    pub instance: String,

    /// The ownership mark (IFA_PROTO, 4-255) of this instance's addresses,
    /// when the one derived from its name is taken by another instance on
    /// the host. Default: 118 for the default instance, 128-183 from the
    /// name for another.
    #[arg(global = true, long, env = "VIPD_INSTANCE_MARK")]
    pub instance_mark: Option<u8>,

    /// Serve Prometheus metrics on this address (off when unset).
    #[arg(global = true, long, env = "VIPD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format.
    #[arg(
        global = true,
        long,
        env = "VIPD_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// Where vipd looks for its configuration file by default.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vipd/vipd.toml";

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum VipdCommand {
    /// Validate the configuration and print the effective settings with
    /// where each comes from; exit 0 if valid, 2 if not.
    CheckConfig,
}

/// Why the configuration cannot be used.
#[derive(Debug)]
pub enum ConfigError {
    /// Help or version was asked for, or clap refused the command line:
    /// clap prints it and picks the exit code.
    Clap(clap::Error),
    /// Anything else: a message naming the file, key and value.
    Invalid(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Clap(e) => write!(f, "{e}"),
            ConfigError::Invalid(m) => f.write_str(m),
        }
    }
}

/// The settings and, for `check-config`, each one's value and origin.
pub struct Loaded {
    pub config: Config,
    pub effective: Vec<(String, String, &'static str)>,
}

/// Reads flags, environment and the configuration file, in that order of
/// precedence, and validates the result.
pub fn load<I, T>(args: I) -> Result<Loaded, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let first = Config::command()
        .try_get_matches_from(&args)
        .map_err(ConfigError::Clap)?;
    let path: PathBuf = first
        .get_one::<PathBuf>("config")
        .cloned()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let explicit = first.value_source("config") != Some(ValueSource::DefaultValue);
    let file_args = match std::fs::read_to_string(&path) {
        Ok(text) => file_arguments(&path, &text, &first)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Vec::new(),
        Err(e) => {
            return Err(ConfigError::Invalid(format!(
                "cannot read the configuration file {}: {e}",
                path.display()
            )));
        }
    };
    let file_keys: Vec<(String, String)> = file_args
        .iter()
        .map(|(k, l, _)| (k.clone(), l.clone()))
        .collect();
    let mut argv: Vec<OsString> = args.first().cloned().into_iter().collect();
    for (_, _, a) in file_args {
        argv.extend(a);
    }
    argv.extend(args.iter().skip(1).cloned());
    let matches = Config::command().try_get_matches_from(&argv).map_err(|e| {
        let arg = e
            .get(clap::error::ContextKind::InvalidArg)
            .map(|v| v.to_string())
            .unwrap_or_default();
        match file_keys
            .iter()
            .find(|(_, long)| arg.starts_with(&format!("--{long} ")) || arg == format!("--{long}"))
        {
            Some((key, _)) => ConfigError::Invalid(format!(
                "configuration file {}: key {key}: {}",
                path.display(),
                e.kind_message(),
            )),
            None => ConfigError::Clap(e),
        }
    })?;
    let config = Config::from_arg_matches(&matches).map_err(ConfigError::Clap)?;
    config.validate().map_err(ConfigError::Invalid)?;
    let effective = effective(&matches, &file_keys);
    Ok(Loaded { config, effective })
}

trait KindMessage {
    fn kind_message(&self) -> String;
}

impl KindMessage for clap::Error {
    /// clap's message without its usage footer.
    fn kind_message(&self) -> String {
        let text = self.to_string();
        let line = text.lines().next().unwrap_or_default();
        line.trim_start_matches("error: ").to_string()
    }
}

/// Turns the file's keys into command-line arguments for every setting the
/// command line and the environment left at its default. Unknown keys and
/// values of the wrong type are errors naming the key.
fn file_arguments(
    path: &Path,
    text: &str,
    cli: &clap::ArgMatches,
) -> Result<Vec<(String, String, Vec<OsString>)>, ConfigError> {
    let bad =
        |m: String| ConfigError::Invalid(format!("configuration file {}: {m}", path.display()));
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(e.message().to_string()))?;
    let cmd = Config::command();
    let mut out = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
        else {
            return Err(bad(format!("unknown key {key:?}")));
        };
        let id = arg.get_id().as_str();
        if matches!(
            cli.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let scalar = |v: &toml::Value| -> Result<String, ConfigError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                toml::Value::Boolean(b) => Ok(b.to_string()),
                other => Err(bad(format!(
                    "key {key}: {other:?} is not a string, number or boolean"
                ))),
            }
        };
        let mut a: Vec<OsString> = Vec::new();
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(b)) => {
                if *b {
                    a.push(format!("--{long}").into());
                }
            }
            (ArgAction::SetTrue, other) => {
                return Err(bad(format!("key {key}: {other:?} is not true or false")));
            }
            (_, toml::Value::Array(items)) => {
                for item in items {
                    a.push(format!("--{long}={}", scalar(item)?).into());
                }
            }
            (_, v) => a.push(format!("--{long}={}", scalar(v)?).into()),
        }
        out.push((key.clone(), long, a));
    }
    Ok(out)
}

fn effective(
    m: &clap::ArgMatches,
    file_keys: &[(String, String)],
) -> Vec<(String, String, &'static str)> {
    let cmd = Config::command();
    let mut out = Vec::new();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let id = arg.get_id().as_str();
        let value = m
            .get_raw(id)
            .map(|vals| {
                vals.map(|v| v.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let source = match m.value_source(id) {
            Some(ValueSource::CommandLine) if file_keys.iter().any(|(_, l)| l == long) => "file",
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        out.push((long.replace('-', "_"), value, source));
    }
    out
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

    /// The leader's lease (R15): it renews it every lease / 4 (lease / 16
    /// below 1 s) and fences when
    /// its last acknowledged renewal was sent longer ago; the VIP addresses'
    /// kernel lifetime follows it. Must be below the session timeout minus
    /// one renewal interval. Default: a third of the session timeout.
    #[arg(global = true, long, env = "VIPD_LEASE", value_parser = parse_positive_duration)]
    pub lease: Option<Duration>,

    /// Added by the next in line to lease + one renewal interval before it
    /// takes over from a silent leader (at least 100ms): covers clock rate
    /// drift between the nodes and the old leader's own fencing.
    #[arg(global = true, long, env = "VIPD_TAKEOVER_MARGIN", value_parser = parse_duration, default_value = "100ms")]
    pub takeover_margin: Duration,
}

impl ZkArgs {
    /// The lease settings, validated against the session timeout.
    pub fn lease_times(&self) -> Result<crate::coord::lease::LeaseTimes, String> {
        crate::coord::lease::LeaseTimes::new(self.session_timeout, self.lease, self.takeover_margin)
            .map_err(|e| e.to_string())
    }
}

/// The VIP engine: reconcile and announce.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// How often the leader re-checks every VIP (R6).
    #[arg(global = true, long, env = "VIPD_RECONCILE_INTERVAL", value_parser = parse_positive_duration, default_value = "3s")]
    pub reconcile_interval: Duration,

    /// Interval of the sync task's rounds after becoming leader (R8).
    #[arg(global = true, long, env = "VIPD_GARP_INTERVAL", value_parser = parse_positive_duration, default_value = "10s")]
    pub garp_interval: Duration,

    /// Number of sync rounds after becoming leader (R8).
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

    /// Announcement frames per second per interface, at most (R9 pacing).
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
    /// interval for as long as it leads (R19), paced as every announcement;
    /// 0 turns it off.
    #[arg(global = true, long, env = "VIPD_GARP_REFRESH", value_parser = parse_duration, default_value = "60s")]
    pub garp_refresh: Duration,

    /// How long a VIP's interface may be down or without carrier before the
    /// leader gives up leadership (R18), so a flap does not move the VIPs.
    #[arg(global = true, long, env = "VIPD_LINK_GRACE", value_parser = parse_duration, default_value = "200ms")]
    pub link_grace: Duration,

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

/// Serving (R18, R19): health checks and the transition hook.
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
    pub fn check_settings(&self) -> crate::health::CheckSettings {
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
        self.zk.lease_times()?;
        self.instance()?;
        if let Some(p) = &self.serving.on_change
            && !p.is_absolute()
        {
            return Err(format!(
                "--on-change {}: give an absolute path (the hook runs without a shell and without PATH lookup)",
                p.display()
            ));
        }
        Ok(())
    }

    /// The instance: its name and ownership mark.
    pub fn instance(&self) -> Result<crate::instance::Instance, String> {
        crate::instance::Instance::new(&self.instance, self.instance_mark)
            .map_err(|e| e.to_string())
    }

    /// The control socket: `--api-socket`, or the instance's default.
    pub fn api_socket(&self) -> PathBuf {
        match &self.api_socket {
            Some(p) => p.clone(),
            None => self
                .instance()
                .map(|i| i.default_socket())
                .unwrap_or_else(|_| PathBuf::from(crate::instance::DEFAULT_SOCKET)),
        }
    }

    /// What `check-config` says about the instance: its mark and control
    /// socket, and warnings about settings that would make instances on
    /// one host collide.
    pub fn instance_lines(&self) -> Vec<String> {
        let Ok(instance) = self.instance() else {
            return Vec::new();
        };
        let socket = self.api_socket();
        let mut lines = vec![format!(
            "# instance {:?}: ownership mark {} on the addresses it adds, control socket {}",
            instance.name(),
            instance.mark(),
            socket.display()
        )];
        if !instance.is_default() {
            if instance.mark() == crate::instance::DEFAULT_MARK {
                lines.push(format!(
                    "# warning: instance {:?} uses the default instance's mark {}: the two cannot run on one host",
                    instance.name(),
                    instance.mark()
                ));
            }
            if socket == Path::new(crate::instance::DEFAULT_SOCKET) {
                lines.push(format!(
                    "# warning: instance {:?} uses the default instance's control socket {}: the two cannot run on one host",
                    instance.name(),
                    socket.display()
                ));
            }
        }
        lines
    }

    /// The check and hook programs that vipd would refuse to run, each with
    /// why (`sandbox::check_program`): someone other than root could change them.
    pub fn unsafe_programs(&self) -> Vec<crate::sandbox::UnsafeProgram> {
        let checks = self.serving.checks.iter().filter_map(|c| match c {
            crate::health::CheckSpec::Exec { path, .. } => Some(("--check", path)),
            _ => None,
        });
        let hook = self.serving.on_change.iter().map(|p| ("--on-change", p));
        checks
            .chain(hook)
            .filter_map(|(what, p)| crate::sandbox::check_program(what, p).err())
            .collect()
    }

    /// Static VIPs beyond what the XDP maps hold (per family), which only
    /// the kernel will answer for; 0 with XDP off.
    pub fn static_vips_over_xdp_capacity(&self) -> usize {
        if self.xdp.disabled {
            return 0;
        }
        let cap = vipd_common::MAX_VIPS as usize;
        let v4 = self
            .static_vips
            .0
            .iter()
            .filter(|v| v.v4().is_some())
            .count();
        let v6 = self.static_vips.0.len() - v4;
        v4.saturating_sub(cap) + v6.saturating_sub(cap)
    }

    /// The node id: `--node-id`, or the host name.
    pub fn node_id(&self) -> String {
        self.zk.node_id.clone().unwrap_or_else(hostname)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn check_config_sees_static_vips_beyond_the_xdp_maps() {
        let cap = vipd_common::MAX_VIPS as usize;
        for (n4, n6, xdp_off, want) in [
            (2, 0, false, 0),
            (cap, cap, false, 0),
            (cap + 1, 0, false, 1),
            (3, cap + 4, false, 4),
            (cap + 2, cap + 3, false, 5),
            (cap + 2, cap + 3, true, 0),
        ] {
            let mut c = Config::try_parse_from(["vipd"]).unwrap();
            let v4 = (0..n4).map(|i| Vip::new(Ipv4Addr::from(0xc633_0000 + i as u32)).unwrap());
            let base = u128::from("2001:db8::1:0".parse::<Ipv6Addr>().unwrap());
            let v6 = (0..n6).map(|i| Vip::new_v6(Ipv6Addr::from(base + i as u128)).unwrap());
            c.static_vips = VipList(v4.chain(v6).collect());
            c.xdp.disabled = xdp_off;
            assert_eq!(
                c.static_vips_over_xdp_capacity(),
                want,
                "{n4} IPv4, {n6} IPv6, XDP off {xdp_off}"
            );
        }
    }

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

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::new(text)
    }

    /// A file in the target's tmp dir, removed on drop (no extra crate).
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn new(text: &str) -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "vipd-config-test-{}-{}.toml",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&p, text).unwrap();
                TempPath(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn file_then_env_then_flag() {
        let f = write(
            "garp_interval = \"5s\"\ngarp_rounds = 3\nxdp_interface = [\"eth0\", \"eth1\"]\nno_xdp = true\nreconcile-interval = \"1s\"\n",
        );
        let p = f.0.to_str().unwrap();
        let l = load(["vipd", "--config", p]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.config.engine.garp_interval, Duration::from_secs(5));
        assert_eq!(l.config.engine.garp_rounds, 3);
        assert_eq!(l.config.engine.reconcile_interval, Duration::from_secs(1));
        assert_eq!(l.config.xdp.interfaces, vec!["eth0", "eth1"]);
        assert!(l.config.xdp.disabled);
        assert!(
            l.effective
                .contains(&("garp_interval".into(), "5s".into(), "file"))
        );
        assert!(
            l.effective
                .contains(&("garp_mode".into(), "both".into(), "default"))
        );
        // A flag beats the file.
        let l =
            load(["vipd", "--config", p, "--garp-rounds", "9"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.config.engine.garp_rounds, 9);
        assert_eq!(l.config.engine.garp_interval, Duration::from_secs(5));
    }

    #[test]
    fn file_errors_name_key_and_value() {
        let f = write("garp_intervall = \"5s\"\n");
        let e = load(["vipd", "--config", f.0.to_str().unwrap()])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("unknown key") && e.contains("garp_intervall"),
            "{e}"
        );
        let f = write("garp_interval = \"5q\"\n");
        let e = load(["vipd", "--config", f.0.to_str().unwrap()])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("garp_interval") && e.contains("5q"), "{e}");
        let f = write("static_vips = \"192.0.2.1,127.0.0.1\"\n");
        let e = load(["vipd", "--config", f.0.to_str().unwrap()])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("static_vips") && e.contains("127.0.0.1"), "{e}");
        let f = write("garp_rounds = [\n");
        assert!(load(["vipd", "--config", f.0.to_str().unwrap()]).is_err());
        let e = load(["vipd", "--config", "/nonexistent/vipd.toml"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent/vipd.toml"), "{e}");
    }

    #[test]
    fn every_option_is_global() {
        Config::command().debug_assert();
        for arg in Config::command().get_arguments() {
            let id = arg.get_id().as_str();
            assert!(
                matches!(id, "help" | "version") || arg.is_global_set(),
                "--{id} must be global (accepted before and after the subcommand)"
            );
        }
    }

    #[test]
    fn options_before_or_after_the_subcommand() {
        let f = write("garp_rounds = 3\nsession_timeout = \"4s\"\n");
        let p = f.0.to_str().unwrap();
        // `vipd check-config --config FILE` (as `nginx -t -c FILE`) and
        // `vipd --config FILE check-config` read the same file.
        for args in [
            &["vipd", "check-config", "--config", p][..],
            &["vipd", "--config", p, "check-config"],
        ] {
            let l = load(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(l.config.command, Some(VipdCommand::CheckConfig), "{args:?}");
            assert_eq!(l.config.config, PathBuf::from(p), "{args:?}");
            assert_eq!(l.config.engine.garp_rounds, 3, "{args:?}");
            assert_eq!(
                l.config.zk.session_timeout,
                Duration::from_secs(4),
                "{args:?}"
            );
            assert!(
                l.effective
                    .contains(&("garp_rounds".into(), "3".into(), "file")),
                "{args:?}"
            );
            assert!(
                l.effective.contains(&("config".into(), p.into(), "flag")),
                "{args:?}: {:?}",
                l.effective
            );
        }
        // A flag beats the file in either position.
        for args in [
            &["vipd", "check-config", "--config", p, "--garp-rounds", "9"][..],
            &["vipd", "--garp-rounds", "9", "check-config", "--config", p],
            &["vipd", "--config", p, "check-config", "--garp-rounds", "9"],
        ] {
            let l = load(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(l.config.engine.garp_rounds, 9, "{args:?}");
            assert!(
                l.effective
                    .contains(&("garp_rounds".into(), "9".into(), "flag")),
                "{args:?}"
            );
        }
        let c = Config::try_parse_from([
            "vipd",
            "check-config",
            "--zk",
            "zk1:2181",
            "--cluster",
            "prod",
            "--xdp-interface",
            "eth0",
            "--no-xdp",
        ])
        .unwrap();
        assert_eq!(c.command, Some(VipdCommand::CheckConfig));
        assert_eq!(c.zk.hosts.as_deref(), Some("zk1:2181"));
        assert_eq!(c.zk.cluster, "prod");
        assert_eq!(c.xdp.interfaces, vec!["eth0"]);
        assert!(c.xdp.disabled);
        // A bad value after the subcommand is refused as before it.
        let e = load(["vipd", "check-config", "--garp-interval", "10q"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("10q"), "{e}");
        // An explicit file that is missing is an error in either position.
        let e = load(["vipd", "check-config", "--config", "/nonexistent/vipd.toml"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent/vipd.toml"), "{e}");
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

    #[test]
    fn lease_defaults_and_is_checked_against_the_session() {
        let c = Config::try_parse_from(["vipd"]).unwrap();
        let t = c.zk.lease_times().unwrap();
        assert_eq!(t.length, Duration::from_secs(2));
        assert_eq!(t.margin, Duration::from_millis(100));
        let c = Config::try_parse_from(["vipd", "--lease", "200ms", "--session-timeout", "1s"])
            .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.zk.lease_times().unwrap().length,
            Duration::from_millis(200)
        );
        let c = Config::try_parse_from(["vipd", "--lease", "5s"]).unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.contains("--lease 5s") && e.contains("session"), "{e}");
        let c = Config::try_parse_from(["vipd", "--takeover-margin", "50ms"]).unwrap();
        assert!(c.validate().unwrap_err().contains("takeover-margin"));
        let f = write("lease = \"7s\"\nsession_timeout = \"8s\"\n");
        let e = load(["vipd", "--config", f.0.to_str().unwrap()])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--lease 7s"), "{e}");
        let f = write("lease = \"1s\"\n");
        let l = load(["vipd", "--config", f.0.to_str().unwrap()]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.config.zk.lease, Some(Duration::from_secs(1)));
    }
}
