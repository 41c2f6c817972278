//! vipctl: the operator's tool. `status` and `arp stats` ask the local agent
//! over its control socket; `vip ...` reads and writes the VIP configuration
//! in ZooKeeper; `cleanup` removes vipd's addresses after the agent stopped.

use std::{io::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use vipd::{
    api::{self, ArpStats, Request},
    coord::{self, VipCommand, ZkAuth},
    net::netlink::Netlink,
};

#[derive(Parser)]
#[command(name = "vipctl", version, about = "Drive and inspect vipd")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct SocketArg {
    /// The agent's control socket.
    #[arg(long, env = "VIPD_API_SOCKET", default_value = "/run/vipd/vipd.sock")]
    api_socket: PathBuf,
}

#[derive(clap::Args, Clone)]
struct ZkArg {
    /// ZooKeeper servers, `host:port[,host:port...]`.
    #[arg(long = "zk", env = "VIPD_ZK")]
    hosts: String,
    /// Cluster name (znodes under /vipd/<cluster>).
    #[arg(long, env = "VIPD_CLUSTER", default_value = "default")]
    cluster: String,
    /// File with `user:password` for ZooKeeper digest authentication.
    #[arg(long, env = "VIPD_ZK_AUTH_FILE")]
    zk_auth_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// The node's role, its VIPs and the last reconcile result.
    Status {
        #[command(flatten)]
        socket: SocketArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// ARP traffic per VIP, as counted by the XDP program.
    Arp {
        #[command(subcommand)]
        command: ArpCommand,
    },
    /// Read or change the VIP configuration in ZooKeeper.
    Vip {
        #[command(flatten)]
        zk: ZkArg,
        #[command(subcommand)]
        command: VipCommand,
    },
    /// Remove every address vipd added on this node (for a service manager
    /// to run after the agent stopped or crashed). Never touches others.
    Cleanup,
}

#[derive(Subcommand)]
enum ArpCommand {
    /// Counters per VIP.
    Stats {
        #[command(flatten)]
        socket: SocketArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Refresh every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match cli.command {
        Command::Status { socket, json } => {
            match api::request(&socket.api_socket, Request::Status).await {
                Ok(v) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    } else {
                        print!("{}", status_table(&v));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Arp {
            command:
                ArpCommand::Stats {
                    socket,
                    json,
                    watch,
                },
        } => loop {
            match api::request(&socket.api_socket, Request::ArpStats).await {
                Ok(v) => {
                    let stats: ArpStats = match serde_json::from_value(v) {
                        Ok(s) => s,
                        Err(e) => return fail(&format!("unreadable answer from vipd: {e}")),
                    };
                    if watch && !json {
                        print!("\x1b[2J\x1b[H");
                    }
                    if json {
                        println!("{}", serde_json::to_string(&stats).unwrap_or_default());
                    } else {
                        print!("{}", arp_table(&stats));
                    }
                    let _ = std::io::stdout().flush();
                }
                Err(e) => return fail(&e.to_string()),
            }
            if !watch {
                return ExitCode::SUCCESS;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        },
        Command::Vip { zk, command } => {
            let auth = match &zk.zk_auth_file {
                Some(p) => match ZkAuth::from_file(p) {
                    Ok(a) => Some(a),
                    Err(e) => return fail(&e.to_string()),
                },
                None => None,
            };
            match coord::run_vip_command(&zk.hosts, &zk.cluster, auth, command).await {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vipctl: {e}");
                    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
                }
            }
        }
        Command::Cleanup => {
            let nl = match Netlink::new() {
                Ok(n) => n,
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
                        println!("no vipd addresses on this node");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            }
        }
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("vipctl: {msg}");
    ExitCode::FAILURE
}

fn s(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn status_table(v: &serde_json::Value) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "node {}  mode {}  role {}  term {}\n",
        s(&v["node_id"]),
        s(&v["mode"]),
        s(&v["role"]),
        s(&v["term"])
    ));
    if let Some(zk) = v.get("zookeeper").filter(|z| !z.is_null()) {
        out.push_str(&format!(
            "zookeeper session {}  leader {}  fenced {}\n",
            s(&zk["session"]),
            s(&zk["leader"]),
            s(&zk["fenced"])
        ));
        if let Some(services) = zk["services"].as_object() {
            for (name, svc) in services {
                let vips: Vec<String> = svc["vips"]
                    .as_array()
                    .map(|a| a.iter().map(s).collect())
                    .unwrap_or_default();
                let err = svc["error"]
                    .as_str()
                    .map(|e| format!("  ERROR: {e}"))
                    .unwrap_or_default();
                out.push_str(&format!("service {name}: {}{err}\n", vips.join(" ")));
            }
        }
    }
    let r = &v["last_reconcile"];
    out.push_str(&format!(
        "last reconcile: {} passes, {} us, +{} -{}, {} errors\n",
        s(&r["passes"]),
        s(&r["duration_us"]),
        s(&r["added"]),
        s(&r["removed"]),
        r["errors"].as_array().map_or(0, Vec::len)
    ));
    for e in r["errors"].as_array().into_iter().flatten() {
        out.push_str(&format!("  error: {}\n", s(e)));
    }
    out.push_str(&format!(
        "{:<16} {:<17} {:<12} {:>6}  {}\n",
        "VIP", "STATE", "INTERFACE", "PREFIX", "NOTE"
    ));
    for vip in v["vips"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<16} {:<17} {:<12} {:>6}  {}\n",
            s(&vip["vip"]),
            s(&vip["state"]),
            s(&vip["interface"]),
            s(&vip["prefix_len"]),
            vip["error"].as_str().unwrap_or("")
        ));
    }
    out
}

fn arp_table(stats: &ArpStats) -> String {
    let mut out = format!(
        "role {}  xdp {}\n{:<16} {:<12} {:<5} {:>9} {:>9} {:>9} {:>9} {:>8}  {}\n",
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
            "{:<16} {:<12} {:<5} {:>9} {:>9} {:>9} {:>9} {:>8}  {}\n",
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
