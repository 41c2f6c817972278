//! The vipd agent: parses the configuration, sets up logging and hands the
//! rest to `vipd::daemon::run`, shutting it down on SIGTERM or SIGINT.

use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};
use vipd::{
    config::{self, Config, ConfigError, Loaded, LogFormat, VipdCommand},
    daemon,
    sandbox::UnsafeProgram,
};

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(code) =
        vipd::shell::write_if_asked(&args, <Config as clap::CommandFactory>::command)
    {
        return code;
    }
    let loaded = match config::load(args) {
        Ok(l) => l,
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(ConfigError::Invalid(m)) => {
            eprintln!("vipd: {m}");
            return ExitCode::from(2);
        }
    };
    let unsafe_programs = loaded.config.unsafe_programs();
    if loaded.config.command == Some(VipdCommand::CheckConfig) {
        check_config(&loaded, &unsafe_programs);
        return ExitCode::SUCCESS;
    }
    if !unsafe_programs.is_empty() {
        for e in &unsafe_programs {
            eprintln!("vipd: {e}");
        }
        return ExitCode::from(2);
    }
    let config = loaded.config;
    init_tracing(config.log_format);
    abort_on_panic();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vipd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(daemon::run(config, signalled())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("vipd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `vipd check-config`: every setting with its origin, then what the
/// settings imply and the warnings an operator should read before starting.
fn check_config(loaded: &Loaded, unsafe_programs: &[UnsafeProgram]) {
    for (key, value, source) in &loaded.effective {
        println!("{key} = {value:?}  # {source}");
    }
    for e in unsafe_programs {
        println!("# warning: vipd will refuse to start: {e}");
    }
    let over = loaded.config.static_vips_over_xdp_capacity();
    if over > 0 {
        println!(
            "# warning: {over} static VIPs beyond the XDP maps' {} per family: the kernel answers ARP/NDP for them",
            vipd_common::MAX_VIPS
        );
    }
    if loaded.config.zk.hosts.is_some()
        && let Ok(lease) = loaded.config.zk.lease_times()
    {
        for line in lease.describe() {
            println!("{line}");
        }
    }
    for line in loaded.config.instance_lines() {
        println!("{line}");
    }
    if loaded.config.engine.probe_wait.is_zero() {
        println!(
            "# warning: probe_wait is 0: a new VIP is added without probing, so a VIP equal to another host's address (a client, the gateway) takes that address away from it (docs/OPERATIONS.md, \"An address another host uses\")"
        );
    } else {
        println!(
            "# a VIP the cluster never held is probed for {} ms before it is first added; one another host answers for is not added and is probed again every {} ms",
            loaded.config.engine.probe_wait.as_millis(),
            loaded.config.engine.probe_retry.as_millis()
        );
    }
    for w in vipd::coord::ZkSettings::credential_warnings(&loaded.config.zk) {
        println!("# warning: {w}");
    }
    println!("# configuration is valid");
}

/// A panic anywhere (in any task) aborts vipd: a task that died would
/// otherwise leave the rest running, a leader renewing its lease for VIPs
/// no engine serves. Aborted, vipd stops renewing; the kernel drops its
/// VIPs at their lifetime's end, the next node takes over at the lease's
/// end, and systemd restarts it.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        error!(panic = %info, "vipd panicked: aborting");
        std::process::abort();
    }));
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes at the first SIGTERM or SIGINT.
async fn signalled() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot listen for SIGTERM and SIGINT: shutting down");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
}
