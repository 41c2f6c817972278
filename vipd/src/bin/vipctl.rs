//! vipctl: the operator's tool. `status` and `arp stats` ask the local agent
//! over its control socket; `vip ...` reads and writes the VIP configuration
//! in ZooKeeper; `cleanup` removes vipd's addresses after the agent stopped.

use std::{io::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand, parser::ValueSource};
use vipd::{
    api::{self, ArpStats, Request, Status},
    config::parse_positive_duration,
    coord::{
        AdminError, VipCommand, ZkAccess, ZkAuth,
        admin::{run_acl_repair_within, run_vip_command_within},
        nodes::{NodeCommand, run_handover_within, run_node_command_within},
    },
    instance::Instance,
    net::netlink::Netlink,
};

/// Every option is global: it may stand before or after any subcommand
/// (`vipctl vip set --zk ...` and `vipctl --zk ... vip set ...` alike). An
/// option given on the command line to a command it does not apply to is
/// an error, not silently ignored.
#[derive(Parser, Debug)]
#[command(name = "vipctl", version, about = "Drive and inspect vipd")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    zk: ZkArg,
    #[command(flatten)]
    output: OutputArg,
    #[command(flatten)]
    handover: HandoverArg,
}

#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Handover")]
struct HandoverArg {
    /// Hand over to this node (it must stand for election).
    #[arg(global = true, long)]
    to: Option<String>,
}

#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Agent (status, arp stats, cleanup)")]
struct SocketArg {
    /// The agent's control socket. Default: the instance's,
    /// /run/vipd/vipd.sock (the default instance) or /run/vipd/<instance>.sock.
    #[arg(global = true, long, env = "VIPD_API_SOCKET")]
    api_socket: Option<PathBuf>,
    /// The vipd instance on this host (status, arp stats: its socket;
    /// cleanup: only its addresses).
    #[arg(global = true, long, env = "VIPD_INSTANCE", default_value = vipd::instance::DEFAULT_INSTANCE)]
    instance: String,
    /// The instance's ownership mark, if vipd was given one with
    /// --instance-mark (cleanup).
    #[arg(global = true, long, env = "VIPD_INSTANCE_MARK")]
    instance_mark: Option<u8>,
}

impl SocketArg {
    fn instance(&self) -> Result<Instance, String> {
        Instance::new(&self.instance, self.instance_mark).map_err(|e| e.to_string())
    }

    /// `--api-socket`, or the instance's control socket.
    fn path(&self) -> Result<PathBuf, String> {
        match &self.api_socket {
            Some(p) => Ok(p.clone()),
            None => self.instance().map(|i| i.default_socket()),
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "ZooKeeper (vip)")]
struct ZkArg {
    /// ZooKeeper servers, `host:port[,host:port...]` (required by `vip`).
    #[arg(global = true, long = "zk", env = "VIPD_ZK")]
    hosts: Option<String>,
    /// Cluster name (znodes under /vipd/<cluster>).
    #[arg(global = true, long, env = "VIPD_CLUSTER", default_value = "default")]
    cluster: String,
    /// File with the cluster's ZooKeeper credential, `user:password`
    /// (default: the systemd credential vipd-zk, if one was passed).
    #[arg(global = true, long, env = "VIPD_ZK_AUTH_FILE")]
    zk_auth_file: Option<PathBuf>,
    /// Without a credential, create the cluster's tree open to anyone who
    /// reaches ZooKeeper (refused otherwise); ignored with a credential.
    #[arg(global = true, long, env = "VIPD_ZK_INSECURE")]
    zk_insecure: bool,
    /// How long to keep trying the servers (refused, not serving yet)
    /// before giving up.
    #[arg(global = true, long, env = "VIPCTL_CONNECT_TIMEOUT",
          value_parser = parse_positive_duration, default_value = "10s")]
    connect_timeout: Duration,
}

#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Output")]
struct OutputArg {
    /// Print JSON instead of a table (status, arp stats, vip list).
    #[arg(global = true, long)]
    json: bool,
    /// Refresh every second until interrupted (arp stats, status, node list).
    #[arg(global = true, long)]
    watch: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The node's role, its VIPs and the last reconcile result.
    Status,
    /// ARP traffic per VIP, as counted by the XDP program.
    Arp {
        #[command(subcommand)]
        command: ArpCommand,
    },
    /// Read or change the VIP configuration in ZooKeeper.
    Vip {
        #[command(subcommand)]
        command: VipArgs,
    },
    /// Drain, undrain and list the cluster's nodes (through ZooKeeper).
    Node {
        #[command(subcommand)]
        command: NodeArgs,
    },
    /// The leader steps down now in favour of the next candidate (or --to).
    Handover,
    /// Who may change the cluster's tree in ZooKeeper.
    Acl {
        #[command(subcommand)]
        command: AclArgs,
    },
    /// Remove every address vipd added on this node (for a service manager
    /// to run after the agent stopped or crashed). Never touches others.
    Cleanup,
}

/// `vipctl acl ...`.
#[derive(Subcommand, Debug)]
enum AclArgs {
    /// Give every znode of the cluster's tree that anyone may change the
    /// cluster's digest ACL (needs the credential); prints what it changed.
    Repair,
}

#[derive(Subcommand, Debug)]
enum ArpCommand {
    /// Counters per VIP.
    Stats,
}

/// `vipctl vip ...`: the VIP configuration in ZooKeeper.
#[derive(Subcommand, Debug)]
enum VipArgs {
    /// Show every service with its VIPs, and the leader.
    List,
    /// Replace a service's VIPs (creates the service).
    Set {
        service: String,
        #[arg(required = true)]
        vips: Vec<String>,
    },
    /// Add VIPs to a service (creates the service).
    Add {
        service: String,
        #[arg(required = true)]
        vips: Vec<String>,
    },
    /// Remove VIPs from a service.
    Remove {
        service: String,
        #[arg(required = true)]
        vips: Vec<String>,
    },
    /// Remove a service and all its VIPs.
    Clear { service: String },
}

impl VipArgs {
    /// The library's command; `json` is vipctl's `--json`, an option of
    /// vipctl as a whole so that it may stand anywhere on the line.
    fn command(self, json: bool) -> VipCommand {
        match self {
            VipArgs::List => VipCommand::List { json },
            VipArgs::Set { service, vips } => VipCommand::Set { service, vips },
            VipArgs::Add { service, vips } => VipCommand::Add { service, vips },
            VipArgs::Remove { service, vips } => VipCommand::Remove { service, vips },
            VipArgs::Clear { service } => VipCommand::Clear { service },
        }
    }
}

/// `vipctl node ...`.
#[derive(Subcommand, Debug)]
enum NodeArgs {
    /// Every node: role, health, drained, and the ZooKeeper session it holds.
    List,
    /// Keep a node out of the election (a drained leader hands over); it
    /// stays drained across restarts until undrained.
    Drain { node: String },
    /// Let a drained node stand again.
    Undrain { node: String },
}

impl NodeArgs {
    /// The library's command; `json` as for [`VipArgs::command`].
    fn command(self, json: bool) -> NodeCommand {
        match self {
            NodeArgs::List => NodeCommand::List { json },
            NodeArgs::Drain { node } => NodeCommand::Drain { node },
            NodeArgs::Undrain { node } => NodeCommand::Undrain { node },
        }
    }
}

/// Which options each command reads (clap ids), by the command's words.
const OPTIONS: &[(&str, &[&str])] = &[
    ("status", &["api_socket", "instance", "json", "watch"]),
    (
        "node list",
        &[
            "hosts",
            "cluster",
            "zk_auth_file",
            "connect_timeout",
            "json",
            "watch",
        ],
    ),
    ("node drain", ZK_WRITE_OPTIONS),
    ("node undrain", ZK_WRITE_OPTIONS),
    (
        "handover",
        &[
            "hosts",
            "cluster",
            "zk_auth_file",
            "zk_insecure",
            "connect_timeout",
            "to",
        ],
    ),
    ("acl repair", ZK_OPTIONS),
    ("arp stats", &["api_socket", "instance", "json", "watch"]),
    (
        "vip list",
        &[
            "hosts",
            "cluster",
            "zk_auth_file",
            "connect_timeout",
            "json",
        ],
    ),
    ("vip set", ZK_WRITE_OPTIONS),
    ("vip add", ZK_WRITE_OPTIONS),
    ("vip remove", ZK_WRITE_OPTIONS),
    ("vip clear", ZK_WRITE_OPTIONS),
    ("cleanup", &["instance", "instance_mark"]),
];
const ZK_OPTIONS: &[&str] = &["hosts", "cluster", "zk_auth_file", "connect_timeout"];
/// Commands that write may create the cluster's tree: open only when asked.
const ZK_WRITE_OPTIONS: &[&str] = &[
    "hosts",
    "cluster",
    "zk_auth_file",
    "zk_insecure",
    "connect_timeout",
];

impl Command {
    /// The command's words (`arp stats`), as in [`OPTIONS`].
    fn name(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Arp { .. } => "arp stats",
            Command::Vip { command } => match command {
                VipArgs::List => "vip list",
                VipArgs::Set { .. } => "vip set",
                VipArgs::Add { .. } => "vip add",
                VipArgs::Remove { .. } => "vip remove",
                VipArgs::Clear { .. } => "vip clear",
            },
            Command::Node { command } => match command {
                NodeArgs::List => "node list",
                NodeArgs::Drain { .. } => "node drain",
                NodeArgs::Undrain { .. } => "node undrain",
            },
            Command::Handover => "handover",
            Command::Acl {
                command: AclArgs::Repair,
            } => "acl repair",
            Command::Cleanup => "cleanup",
        }
    }
}

fn options_of(command: &str) -> &'static [&'static str] {
    OPTIONS
        .iter()
        .find(|(c, _)| *c == command)
        .map_or(&[], |(_, o)| o)
}

/// A command line vipctl refuses after clap accepted it (exit status 2).
#[derive(Debug, PartialEq, Eq)]
struct Usage(String);

/// Parses the command line: clap's errors exit as clap decides; an option
/// given to a command it does not apply to, or `vip` without servers, is
/// a [`Usage`] error.
fn parse<I, T>(args: I) -> Result<Result<Cli, Usage>, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = Cli::command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let name = cli.command.name();
    let allowed = options_of(name);
    for arg in Cli::command().get_arguments() {
        let id = arg.get_id().as_str();
        if matches.value_source(id) == Some(ValueSource::CommandLine) && !allowed.contains(&id) {
            let users: Vec<&str> = OPTIONS
                .iter()
                .filter(|(_, o)| o.contains(&id))
                .map(|(c, _)| *c)
                .collect();
            return Ok(Err(Usage(format!(
                "--{} does not apply to `vipctl {name}` (it is an option of: {})",
                arg.get_long().unwrap_or(id),
                users.join(", ")
            ))));
        }
    }
    if matches!(
        cli.command,
        Command::Vip { .. } | Command::Node { .. } | Command::Handover | Command::Acl { .. }
    ) && cli.zk.hosts.as_deref().is_none_or(|h| h.trim().is_empty())
    {
        return Ok(Err(Usage(
            "`vipctl vip`, `node`, `handover` and `acl` need the ZooKeeper servers: give --zk host:port[,host:port...] \
             (before or after the subcommand) or set VIPD_ZK"
                .into(),
        )));
    }
    Ok(Ok(cli))
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(code) = vipd::shell::write_if_asked(&args, Cli::command) {
        return code;
    }
    let cli = match parse(args) {
        Ok(Ok(cli)) => cli,
        Ok(Err(Usage(m))) => {
            eprintln!("vipctl: {m}");
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vipctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let Cli {
        command,
        socket,
        zk,
        output,
        handover,
    } = cli;
    let json = output.json;
    match command {
        Command::Status => {
            let path = match socket.path() {
                Ok(p) => p,
                Err(e) => return usage_failure(&e),
            };
            let path = &path;
            let watch = output.watch;
            let status = move || async move {
                let status: Status = api::request(path, Request::Status)
                    .await
                    .map_err(|e| e.to_string())?;
                // Through `Value`, which sorts the keys, as the agent's answer.
                let v = serde_json::to_value(&status).unwrap_or_default();
                Ok(if json && watch {
                    format!("{}\n", serde_json::to_string(&v).unwrap_or_default())
                } else if json {
                    format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default())
                } else {
                    status_table(&status)
                })
            };
            print_each(&output, watch, status, |e: String| fail(&e)).await
        }
        Command::Arp {
            command: ArpCommand::Stats,
        } => {
            let path = match socket.path() {
                Ok(p) => p,
                Err(e) => return usage_failure(&e),
            };
            let path = &path;
            let stats = move || async move {
                let stats: ArpStats = api::request(path, Request::ArpStats)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(if json {
                    format!("{}\n", serde_json::to_string(&stats).unwrap_or_default())
                } else {
                    arp_table(&stats)
                })
            };
            print_each(&output, output.watch, stats, |e: String| fail(&e)).await
        }
        Command::Node { command } => {
            let (hosts, access) = match zk.connection() {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let command = command.command(json);
            let watch = output.watch && matches!(command, NodeCommand::List { .. });
            let (hosts, cluster, timeout) = (&hosts, &zk.cluster, zk.connect_timeout);
            let node = move || {
                run_node_command_within(hosts, cluster, access.clone(), command.clone(), timeout)
            };
            print_each(&output, watch, node, zk_failure).await
        }
        Command::Handover => {
            let (hosts, access) = match zk.connection() {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let (hosts, cluster, timeout) = (&hosts, &zk.cluster, zk.connect_timeout);
            let handover = move || {
                let wait = Duration::from_secs(10);
                run_handover_within(
                    hosts,
                    cluster,
                    access.clone(),
                    handover.to.clone(),
                    timeout,
                    wait,
                )
            };
            print_each(&output, false, handover, zk_failure).await
        }
        Command::Vip { command } => {
            let (hosts, access) = match zk.connection() {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let command = command.command(json);
            let (hosts, cluster, timeout) = (&hosts, &zk.cluster, zk.connect_timeout);
            let vip = move || {
                run_vip_command_within(hosts, cluster, access.clone(), command.clone(), timeout)
            };
            print_each(&output, false, vip, zk_failure).await
        }
        Command::Acl {
            command: AclArgs::Repair,
        } => {
            let (hosts, access) = match zk.connection() {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let (hosts, cluster, timeout) = (&hosts, &zk.cluster, zk.connect_timeout);
            let repair = move || run_acl_repair_within(hosts, cluster, access.clone(), timeout);
            print_each(&output, false, repair, zk_failure).await
        }
        Command::Cleanup => {
            let instance = match socket.instance() {
                Ok(i) => i,
                Err(e) => return usage_failure(&e),
            };
            let nl = match Netlink::new() {
                Ok(n) => n.with_mark(instance.mark()),
                Err(e) => return fail(&e.to_string()),
            };
            match nl.remove_all_marked().await {
                Ok(removed) => {
                    for a in &removed {
                        println!(
                            "removed {}/{} (ifindex {})",
                            a.addr, a.prefix_len, a.ifindex
                        );
                    }
                    if removed.is_empty() {
                        println!(
                            "no addresses of vipd instance {:?} (mark {}) on this node",
                            instance.name(),
                            instance.mark()
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            }
        }
    }
}

impl ZkArg {
    /// The servers and the credential: `--zk-auth-file`, else the systemd
    /// credential vipd-zk if one was passed.
    fn connection(&self) -> Result<(String, ZkAccess), String> {
        let auth = ZkAuth::resolve(self.zk_auth_file.as_deref())
            .map_err(|e| e.to_string())?
            .map(|(a, _)| a);
        let access = ZkAccess {
            auth,
            insecure: self.zk_insecure,
        };
        // `parse` made sure the servers are there.
        Ok((self.hosts.clone().unwrap_or_default(), access))
    }
}

/// Prints what `once` answers, again every second under `watch` (each
/// refresh on a new screen); its first failure ends vipctl as `failed` says.
async fn print_each<F, Fut, E>(
    output: &OutputArg,
    watch: bool,
    mut once: F,
    failed: impl Fn(E) -> ExitCode,
) -> ExitCode
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<String, E>>,
{
    loop {
        match once().await {
            Ok(text) => {
                output.new_screen();
                print!("{text}");
                let _ = std::io::stdout().flush();
            }
            Err(e) => return failed(e),
        }
        if !watch {
            return ExitCode::SUCCESS;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A ZooKeeper command failed: its message, and the exit status it asks for.
fn zk_failure(e: AdminError) -> ExitCode {
    eprintln!("vipctl: {e}");
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
}

impl OutputArg {
    /// Under `--watch` (tables only) each refresh starts on a clear screen.
    fn new_screen(&self) {
        if self.watch && !self.json {
            print!("\x1b[2J\x1b[H");
        }
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("vipctl: {msg}");
    ExitCode::FAILURE
}

/// A bad value on the command line (exit status 2, as clap's).
fn usage_failure(msg: &str) -> ExitCode {
    eprintln!("vipctl: {msg}");
    ExitCode::from(2)
}

/// An optional value in a table: `-` when absent.
fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Whether this node serves in `vipctl status`: withdrawn or not and why,
/// VIP links, checks.
fn serving_text(v: &Status) -> String {
    let mut out = String::new();
    if let Some(why) = v.zookeeper.as_ref().and_then(|z| z.withdrawn.as_ref()) {
        out.push_str(&format!("withdrawn from the election: {why}\n"));
    }
    let links = &v.links;
    if !links.down.is_empty() {
        out.push_str(&format!(
            "VIP interfaces down: {} for {} ms{}\n",
            links.down.join(" "),
            opt(links.down_for_ms),
            if links.withdrawn {
                " (past the grace)"
            } else {
                ""
            }
        ));
    }
    if let Some(h) = &v.health {
        out.push_str(&format!(
            "health {}\n",
            if h.healthy { "healthy" } else { "UNHEALTHY" }
        ));
        for c in &h.checks {
            let state = match c.healthy {
                Some(true) => "healthy",
                Some(false) => "unhealthy",
                None => "pending",
            };
            out.push_str(&format!(
                "  check {}: {state}  ok {} failed {} in a row, {} runs, {} failures{}\n",
                c.check,
                c.consecutive_ok,
                c.consecutive_failed,
                c.runs,
                c.failures,
                c.last_error
                    .as_ref()
                    .map(|e| format!("  last error: {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

/// The ZooKeeper part of `vipctl status`: session, lease, tree, services.
fn zookeeper_text(zk: &vipd_api::ZooKeeperStatus) -> String {
    let mut out = format!(
        "zookeeper session {}  leader {}  fenced {}  lease {} ms\n",
        zk.session,
        opt(zk.leader.as_ref()),
        zk.fenced,
        zk.lease_ms
    );
    if let Some(why) = &zk.lease_adjusted {
        out.push_str(&format!("lease adjusted: {why}\n"));
    }
    let open = zk.tree_acl.open_znodes;
    if open > 0 {
        out.push_str(&format!(
            "zookeeper tree OPEN: {open} znodes anyone can change (e.g. {}): run `vipctl acl repair` with the cluster's credential\n",
            zk.tree_acl.examples.join(" ")
        ));
    }
    for (name, svc) in &zk.services {
        let vips: Vec<String> = svc.vips.iter().map(ToString::to_string).collect();
        let err = svc
            .error
            .as_ref()
            .map(|e| {
                if svc.last_good {
                    format!("  (LAST GOOD VIPs kept) ERROR: {e}")
                } else {
                    format!("  ERROR: {e}")
                }
            })
            .unwrap_or_default();
        out.push_str(&format!("service {name}: {}{err}\n", vips.join(" ")));
        for r in &svc.refused {
            out.push_str(&format!("  refused {:?}: {}\n", r.value, r.reason));
        }
    }
    for (vip, why) in &zk.unplaceable {
        out.push_str(&format!("unplaceable {vip}: {why}\n"));
    }
    out
}

fn status_table(v: &Status) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "node {}  mode {}  role {}  term {}\n",
        v.node_id, v.mode, v.role, v.term
    ));
    if let Some(zk) = &v.zookeeper {
        out.push_str(&zookeeper_text(zk));
    }
    out.push_str(&serving_text(v));
    let r = &v.last_reconcile;
    out.push_str(&format!(
        "last reconcile: {} passes, {} us, +{} -{}, {} errors\n",
        r.passes,
        r.duration_us,
        r.added,
        r.removed,
        r.errors.len()
    ));
    for e in &r.errors {
        out.push_str(&format!("  error: {e}\n"));
    }
    out.push_str(&vipd::api::xdp_status_text(&v.xdp));
    let w = vip_width(v.vips.iter().map(|vip| vip.vip.to_string().len()));
    out.push_str(&format!(
        "{:<w$} {:<17} {:<12} {:>6}  {}\n",
        "VIP", "STATE", "INTERFACE", "PREFIX", "NOTE"
    ));
    for vip in &v.vips {
        out.push_str(&format!(
            "{:<w$} {:<17} {:<12} {:>6}  {}\n",
            vip.vip.to_string(),
            vip.state.as_str(),
            opt(vip.interface.as_ref()),
            opt(vip.prefix_len),
            vip.error.as_deref().unwrap_or("")
        ));
    }
    out
}

/// Width of the VIP column: 15 characters hold every IPv4 address; an IPv6
/// one may take up to 39.
fn vip_width(lengths: impl Iterator<Item = usize>) -> usize {
    lengths.max().unwrap_or(0).max(16)
}

fn arp_table(stats: &ArpStats) -> String {
    let w = vip_width(stats.vips.iter().map(|r| r.vip.to_string().len()));
    let mut out = format!(
        "role {}  xdp {}\n{:<w$} {:<12} {:<5} {:>9} {:>9} {:>9} {:>9} {:>8}  {}\n",
        stats.role,
        if stats.xdp { "on" } else { "off" },
        "VIP",
        "INTERFACE",
        "HELD",
        "REQUESTS",
        "XDP-REPL",
        "ANN-SEEN",
        "ANN-SENT",
        "CLAIMS",
        "LAST-FOREIGN-MAC"
    );
    for r in &stats.vips {
        out.push_str(&format!(
            "{:<w$} {:<12} {:<5} {:>9} {:>9} {:>9} {:>9} {:>8}  {}\n",
            r.vip.to_string(),
            r.interface.as_deref().unwrap_or("-"),
            if r.held { "yes" } else { "no" },
            r.requests,
            r.xdp_replies,
            r.announcements_seen,
            r.announcements_sent,
            r.foreign_claims,
            r.last_foreign_mac.as_deref().unwrap_or("-")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use vipd::coord::admin::DEFAULT_CONNECT_TIMEOUT;

    use super::*;

    fn ok(args: &[&str]) -> Cli {
        match parse(std::iter::once("vipctl").chain(args.iter().copied())) {
            Ok(Ok(cli)) => cli,
            Ok(Err(Usage(m))) => panic!("vipctl {}: {m}", args.join(" ")),
            Err(e) => panic!("vipctl {}: {e}", args.join(" ")),
        }
    }

    fn usage(args: &[&str]) -> String {
        match parse(std::iter::once("vipctl").chain(args.iter().copied())) {
            Ok(Err(Usage(m))) => m,
            Ok(Ok(cli)) => panic!("vipctl {} was accepted: {cli:?}", args.join(" ")),
            Err(e) => panic!("vipctl {}: clap refused it: {e}", args.join(" ")),
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
        for arg in Cli::command().get_arguments() {
            let id = arg.get_id().as_str();
            assert!(
                matches!(id, "help" | "version") || arg.is_global_set(),
                "--{id} must be global (accepted before and after the subcommand)"
            );
            assert!(
                matches!(id, "help" | "version") || OPTIONS.iter().any(|(_, o)| o.contains(&id)),
                "--{id} is used by no command in OPTIONS"
            );
        }
        assert_eq!(
            ok(&["vip", "--zk", "h:1", "list"]).zk.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT
        );
    }

    #[test]
    fn zk_options_before_or_after_the_subcommand() {
        let lines: [&[&str]; 4] = [
            // README's example: options after the last subcommand.
            &[
                "vip",
                "set",
                "--zk",
                "zk1:2181",
                "--cluster",
                "prod",
                "web",
                "192.0.2.100",
                "192.0.2.101",
            ],
            &[
                "vip",
                "--zk",
                "zk1:2181",
                "--cluster",
                "prod",
                "set",
                "web",
                "192.0.2.100",
                "192.0.2.101",
            ],
            &[
                "--zk",
                "zk1:2181",
                "--cluster",
                "prod",
                "vip",
                "set",
                "web",
                "192.0.2.100",
                "192.0.2.101",
            ],
            &[
                "vip",
                "set",
                "web",
                "192.0.2.100",
                "--cluster",
                "prod",
                "192.0.2.101",
                "--zk",
                "zk1:2181",
            ],
        ];
        for args in lines {
            let cli = ok(args);
            assert_eq!(cli.zk.hosts.as_deref(), Some("zk1:2181"), "{args:?}");
            assert_eq!(cli.zk.cluster, "prod", "{args:?}");
            assert_eq!(
                format!("{:?}", cli.command),
                format!(
                    "{:?}",
                    Command::Vip {
                        command: VipArgs::Set {
                            service: "web".into(),
                            vips: vec!["192.0.2.100".into(), "192.0.2.101".into()],
                        }
                    }
                ),
                "{args:?}"
            );
        }
        let cli = ok(&[
            "vip",
            "list",
            "--json",
            "--zk",
            "h:1",
            "--connect-timeout",
            "30s",
        ]);
        assert!(cli.output.json);
        assert_eq!(cli.zk.connect_timeout, Duration::from_secs(30));
        assert!(ok(&["--json", "vip", "--zk", "h:1", "list"]).output.json);
    }

    #[test]
    fn agent_options_before_or_after_the_subcommand() {
        for args in [
            &["status", "--json", "--api-socket", "/s"][..],
            &["--json", "--api-socket", "/s", "status"],
            &["--api-socket", "/s", "status", "--json"],
        ] {
            let cli = ok(args);
            assert!(cli.output.json, "{args:?}");
            assert_eq!(cli.socket.path(), Ok(PathBuf::from("/s")), "{args:?}");
        }
        for args in [
            &["arp", "stats", "--watch", "--api-socket", "/s"][..],
            &["arp", "--watch", "stats", "--api-socket", "/s"],
            &["--watch", "arp", "stats", "--api-socket", "/s"],
        ] {
            let cli = ok(args);
            assert!(cli.output.watch && !cli.output.json, "{args:?}");
            assert_eq!(cli.socket.path(), Ok(PathBuf::from("/s")), "{args:?}");
        }
    }

    #[test]
    fn the_instance_picks_the_socket_and_the_cleanup_mark() {
        let cli = ok(&["status"]);
        assert_eq!(cli.socket.path(), Ok(PathBuf::from("/run/vipd/vipd.sock")));
        assert_eq!(cli.socket.instance().unwrap().mark(), 0x76);
        let cli = ok(&["status", "--instance", "b"]);
        assert_eq!(cli.socket.path(), Ok(PathBuf::from("/run/vipd/b.sock")));
        let cli = ok(&["cleanup", "--instance", "b"]);
        assert_eq!(
            cli.socket.instance().unwrap().mark(),
            vipd::instance::mark_of("b")
        );
        let cli = ok(&["cleanup", "--instance", "b", "--instance-mark", "200"]);
        assert_eq!(cli.socket.instance().unwrap().mark(), 200);
        let cli = ok(&["cleanup", "--instance", "a/b"]);
        assert!(cli.socket.instance().unwrap_err().contains("a/b"));
    }

    #[test]
    fn misplaced_and_missing_options_are_named() {
        let m = usage(&["cleanup", "--zk", "h:1"]);
        assert!(m.contains("--zk") && m.contains("vipctl cleanup"), "{m}");
        let m = usage(&["cleanup", "--watch"]);
        assert!(m.contains("--watch") && m.contains("arp stats"), "{m}");
        let m = usage(&["status", "--to", "n2"]);
        assert!(m.contains("--to") && m.contains("handover"), "{m}");
        let m = usage(&["vip", "set", "--json", "--zk", "h:1", "web", "192.0.2.1"]);
        assert!(m.contains("--json") && m.contains("vip set"), "{m}");
        let m = usage(&["vip", "--cluster", "prod", "list"]);
        assert!(m.contains("--zk") && m.contains("VIPD_ZK"), "{m}");
        let m = usage(&["vip", "--zk", " ", "list"]);
        assert!(m.contains("--zk"), "{m}");
        // clap's own errors still come from clap.
        assert!(parse(["vipctl", "vip", "set", "--zk", "h:1", "web"]).is_err());
        assert!(
            parse([
                "vipctl",
                "vip",
                "list",
                "--connect-timeout",
                "0s",
                "--zk",
                "h:1"
            ])
            .is_err()
        );
    }
}
