//! vipctl: the operator's tool. `status` and `arp stats` ask the local agent
//! over its control socket; `vip ...` reads and writes the VIP configuration
//! in ZooKeeper; `cleanup` removes vipd's addresses after the agent stopped.

mod agent;
mod cli;
mod tables;
mod zk;

use std::{io::Write as _, process::ExitCode, time::Duration};

use clap::CommandFactory as _;
use vipd::coord::AdminError;

use crate::cli::{AclArgs, ArpCommand, Cli, Command, OutputArg, Usage, parse};

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
    match command {
        Command::Status => agent::status(&socket, &output).await,
        Command::Arp {
            command: ArpCommand::Stats,
        } => agent::arp_stats(&socket, &output).await,
        Command::Cleanup => agent::cleanup(&socket).await,
        Command::Node { command } => zk::node(&zk, &output, command).await,
        Command::Handover => zk::handover(&zk, &output, handover).await,
        Command::Vip { command } => zk::vip(&zk, &output, command).await,
        Command::Acl {
            command: AclArgs::Repair,
        } => zk::acl_repair(&zk, &output).await,
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
