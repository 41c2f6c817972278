//! vipctl's command line: the commands, the options each one reads, and
//! the checks clap cannot make (an option given to a command it does not
//! apply to, `vip` without servers).

use std::{path::PathBuf, time::Duration};

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand, parser::ValueSource};
use vipd::{
    config::parse_positive_duration,
    coord::{VipCommand, nodes::NodeCommand},
    instance::Instance,
};

/// Every option is global: it may stand before or after any subcommand
/// (`vipctl vip set --zk ...` and `vipctl --zk ... vip set ...` alike). An
/// option given on the command line to a command it does not apply to is
/// an error, not silently ignored.
#[derive(Parser, Debug)]
#[command(name = "vipctl", version, about = "Drive and inspect vipd")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    #[command(flatten)]
    pub(crate) socket: SocketArg,
    #[command(flatten)]
    pub(crate) zk: ZkArg,
    #[command(flatten)]
    pub(crate) output: OutputArg,
    #[command(flatten)]
    pub(crate) handover: HandoverArg,
}

#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Handover")]
pub(crate) struct HandoverArg {
    /// Hand over to this node (it must stand for election).
    #[arg(global = true, long)]
    pub(crate) to: Option<String>,
}

#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Agent (status, arp stats, cleanup)")]
pub(crate) struct SocketArg {
    /// The agent's control socket. Default: the instance's,
    /// /run/vipd/vipd.sock (the default instance) or /run/vipd/<instance>.sock.
    #[arg(global = true, long, env = "VIPD_API_SOCKET")]
    pub(crate) api_socket: Option<PathBuf>,
    /// The vipd instance on this host (status, arp stats: its socket;
    /// cleanup: only its addresses).
    #[arg(global = true, long, env = "VIPD_INSTANCE", default_value = vipd::instance::DEFAULT_INSTANCE)]
    pub(crate) instance: String,
    /// The instance's ownership mark, if vipd was given one with
    /// --instance-mark (cleanup).
    #[arg(global = true, long, env = "VIPD_INSTANCE_MARK")]
    pub(crate) instance_mark: Option<u8>,
    /// The bpf dir vipd pinned its fence in, if it was given --bpf-dir
    /// (cleanup). Default: /sys/fs/bpf/vipd/<instance> when a bpffs is
    /// mounted at /sys/fs/bpf.
    #[arg(global = true, long, env = "VIPD_BPF_DIR", value_name = "PATH")]
    pub(crate) bpf_dir: Option<PathBuf>,
}

impl SocketArg {
    pub(crate) fn instance(&self) -> Result<Instance, String> {
        Instance::new(&self.instance, self.instance_mark).map_err(|e| e.to_string())
    }

    /// `--api-socket`, or the instance's control socket.
    pub(crate) fn path(&self) -> Result<PathBuf, String> {
        match &self.api_socket {
            Some(p) => Ok(p.clone()),
            None => self.instance().map(|i| i.default_socket()),
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "ZooKeeper (vip)")]
pub(crate) struct ZkArg {
    /// ZooKeeper servers, `host:port[,host:port...]` (required by `vip`).
    #[arg(global = true, long = "zk", env = "VIPD_ZK")]
    pub(crate) hosts: Option<String>,
    /// Cluster name (znodes under /vipd/<cluster>).
    #[arg(global = true, long, env = "VIPD_CLUSTER", default_value = "default")]
    pub(crate) cluster: String,
    /// File with the cluster's ZooKeeper credential, `user:password`
    /// (default: the systemd credential vipd-zk, if one was passed).
    #[arg(global = true, long, env = "VIPD_ZK_AUTH_FILE")]
    pub(crate) zk_auth_file: Option<PathBuf>,
    /// Without a credential, create the cluster's tree open to anyone who
    /// reaches ZooKeeper (refused otherwise); ignored with a credential.
    #[arg(global = true, long, env = "VIPD_ZK_INSECURE")]
    pub(crate) zk_insecure: bool,
    /// How long to keep trying the servers (refused, not serving yet)
    /// before giving up.
    #[arg(global = true, long, env = "VIPCTL_CONNECT_TIMEOUT",
          value_parser = parse_positive_duration, default_value = "10s")]
    pub(crate) connect_timeout: Duration,
}

#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Output")]
pub(crate) struct OutputArg {
    /// Print JSON instead of a table (status, arp stats, vip list).
    #[arg(global = true, long)]
    pub(crate) json: bool,
    /// Refresh every second until interrupted (arp stats, status, node list).
    #[arg(global = true, long)]
    pub(crate) watch: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
    /// Remove every address vipd added on this node and its pinned fence
    /// (for a service manager to run after the agent stopped or crashed).
    /// Never touches others.
    Cleanup,
}

/// `vipctl acl ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum AclArgs {
    /// Give every znode of the cluster's tree that anyone may change the
    /// cluster's digest ACL (needs the credential); prints what it changed.
    Repair,
}

#[derive(Subcommand, Debug)]
pub(crate) enum ArpCommand {
    /// Counters per VIP.
    Stats,
}

/// `vipctl vip ...`: the VIP configuration in ZooKeeper.
#[derive(Subcommand, Debug)]
pub(crate) enum VipArgs {
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
    pub(crate) fn command(self, json: bool) -> VipCommand {
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
pub(crate) enum NodeArgs {
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
    pub(crate) fn command(self, json: bool) -> NodeCommand {
        match self {
            NodeArgs::List => NodeCommand::List { json },
            NodeArgs::Drain { node } => NodeCommand::Drain { node },
            NodeArgs::Undrain { node } => NodeCommand::Undrain { node },
        }
    }
}

/// Which options each command reads (clap ids), by the command's words.
pub(crate) const OPTIONS: &[(&str, &[&str])] = &[
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
    ("cleanup", &["instance", "instance_mark", "bpf_dir"]),
];
pub(crate) const ZK_OPTIONS: &[&str] = &["hosts", "cluster", "zk_auth_file", "connect_timeout"];
/// Commands that write may create the cluster's tree: open only when asked.
pub(crate) const ZK_WRITE_OPTIONS: &[&str] = &[
    "hosts",
    "cluster",
    "zk_auth_file",
    "zk_insecure",
    "connect_timeout",
];

impl Command {
    /// The command's words (`arp stats`), as in [`OPTIONS`].
    pub(crate) fn name(&self) -> &'static str {
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

pub(crate) fn options_of(command: &str) -> &'static [&'static str] {
    OPTIONS
        .iter()
        .find(|(c, _)| *c == command)
        .map_or(&[], |(_, o)| o)
}

/// A command line vipctl refuses after clap accepted it (exit status 2).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Usage(pub(crate) String);

/// Parses the command line: clap's errors exit as clap decides; an option
/// given to a command it does not apply to, or `vip` without servers, is
/// a [`Usage`] error.
pub(crate) fn parse<I, T>(args: I) -> Result<Result<Cli, Usage>, clap::Error>
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
