//! The vipd agent: wires the source of truth (static VIPs or ZooKeeper), the
//! engine, the XDP program and the control socket, and shuts them down in
//! order: stop announcing and answering, remove VIPs, then leave ZooKeeper.

use std::{
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use vipd::{
    agent::{Engine, EngineStatus, SharedOffload},
    announce::Announcer,
    api::{self, ApiState},
    arp_offload::ArpOffload,
    config::{self, Config, ConfigError, LogFormat, VipdCommand},
    coord::{self, CoordStatus, ZkAuth, ZkSettings},
    health,
    hooks::Hook,
    metrics,
    net::netlink::Netlink,
    notify::notify,
    role::{Desired, EngineReport, Role},
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
    if loaded.config.command == Some(VipdCommand::CheckConfig) {
        for (key, value, source) in &loaded.effective {
            println!("{key} = {value:?}  # {source}");
        }
        if loaded.config.zk.hosts.is_some()
            && let Ok(lease) = loaded.config.zk.lease_times()
        {
            for line in lease.describe() {
                println!("{line}");
            }
        }
        println!("# configuration is valid");
        return ExitCode::SUCCESS;
    }
    let config = loaded.config;
    init_tracing(config.log_format);
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
    match rt.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("vipd: {e:#}");
            ExitCode::FAILURE
        }
    }
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

async fn run(config: Config) -> Result<()> {
    let cancel = CancellationToken::new();
    let node_id = config.node_id();
    let netlink = Netlink::new().context("opening netlink")?;
    // Announcing needs an AF_PACKET socket (CAP_NET_RAW): find out now, not
    // at the first takeover, when a missing capability would leave the
    // network with stale ARP caches.
    socket2::Socket::new(socket2::Domain::PACKET, socket2::Type::RAW, None).context(
        "cannot open an AF_PACKET socket to send gratuitous ARP (vipd needs CAP_NET_RAW)",
    )?;

    let offload: Option<SharedOffload> = if config.xdp.disabled {
        info!("XDP disabled (--no-xdp): no ARP counters, the kernel answers ARP");
        None
    } else {
        let mut off = ArpOffload::load().context("loading the XDP program")?;
        for ifname in &config.xdp.interfaces {
            let mode = off
                .attach(ifname, config.xdp.mode)
                .with_context(|| format!("attaching the XDP program to {ifname}"))?;
            info!(ifname = %ifname, mode = ?mode, "XDP program attached");
        }
        Some(Arc::new(Mutex::new(off)))
    };
    let (conflicts, conflicts6) = match &offload {
        Some(o) => {
            let mut o = o.lock().expect("offload lock");
            let v4 = o
                .take_conflicts()
                .context("opening the XDP conflict ring buffer (ARP)")?;
            let v6 = o
                .take_conflicts6()
                .context("opening the XDP conflict ring buffer (NDP)")?;
            (Some(v4), Some(v6))
        }
        None => (None, None),
    };

    // The engine stops after the source has asked it to step down; the
    // source (ZooKeeper) leaves only once the engine reports nothing held.
    let engine_cancel = CancellationToken::new();
    let (announcer, announcer_task) = Announcer::spawn(
        config.engine.garp_mode,
        config.engine.garp_rate,
        engine_cancel.child_token(),
    );

    let (desired_tx, desired_rx) = watch::channel(Desired::default());
    let (report_tx, report_rx) = watch::channel(EngineReport::default());
    let (status_tx, status_rx) = watch::channel(EngineStatus::default());

    let mut tasks = JoinSet::new();
    // Health checks (R18) run in tasks of their own: a hung check never
    // blocks the engine, coordination or the API.
    let checks_cancel = CancellationToken::new();
    // The hook stops last, after telling the engine's final step down.
    let hook_cancel = CancellationToken::new();
    let health = if config.serving.checks.is_empty() {
        None
    } else {
        let settings = config.serving.check_settings();
        info!(checks = settings.checks.len(), interval = ?settings.interval, timeout = ?settings.timeout,
              fall = settings.fall, rise = settings.rise, "health checks");
        let (rx, set) = health::spawn(&settings, checks_cancel.clone());
        tasks.spawn(async move {
            set.join_all().await;
            "health checks"
        });
        Some(rx)
    };
    let mode;
    let mut coord_status = None;
    let mut coord_task = None;
    match &config.zk.hosts {
        None => {
            mode = "static";
            let vips = config.static_vips.0.iter().copied().collect();
            info!(node_id = %node_id, vips = config.static_vips.0.len(), "single-node mode: this node leads");
            desired_tx.send_replace(Desired {
                role: Role::Leader,
                vips,
                term: 1,
                lease: None,
            });
        }
        Some(hosts) => {
            mode = "zookeeper";
            let auth = match &config.zk.zk_auth_file {
                Some(p) => Some(ZkAuth::from_file(p)?),
                None => None,
            };
            let settings = ZkSettings {
                hosts: hosts.clone(),
                cluster: config.zk.cluster.clone(),
                node_id: node_id.clone(),
                session_timeout: config.zk.session_timeout,
                auth,
                step_down_backoff: config.zk.step_down_backoff,
                lease: config
                    .zk
                    .lease_times()
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            };
            let (cs_tx, cs_rx) = watch::channel(CoordStatus::default());
            coord_status = Some(cs_rx);
            let c = cancel.clone();
            let report = report_rx.clone();
            let health = health.clone();
            coord_task = Some(tokio::spawn(async move {
                if let Err(e) =
                    coord::run_serving(settings, desired_tx, report, cs_tx, health, c.clone()).await
                {
                    error!(error = %e, "ZooKeeper coordination failed");
                    c.cancel();
                }
            }));
        }
    }

    let listener = api::bind(&config.api_socket).await?;
    let state = ApiState {
        node_id: node_id.clone(),
        mode,
        engine: status_rx,
        coord: coord_status,
        offload: offload.clone(),
        announcer: announcer.clone(),
        health,
    };
    if let Some(program) = &config.serving.on_change {
        let hook = Hook {
            program: program.clone(),
            timeout: config.serving.on_change_timeout,
            node: node_id.clone(),
        };
        let (report, coord) = (report_rx.clone(), state.coord.clone());
        let c = hook_cancel.clone();
        tasks.spawn(async move {
            hook.run(report, coord, c).await;
            "on-change hook"
        });
    }
    {
        let path = config.api_socket.clone();
        let c = engine_cancel.clone();
        let state = state.clone();
        tasks.spawn(async move {
            api::serve(listener, path, state, c).await;
            "api"
        });
    }

    if let Some(addr) = config.metrics_listen {
        let c = engine_cancel.clone();
        let state = state.clone();
        let listener_cancel = cancel.clone();
        tasks.spawn(async move {
            if let Err(e) = metrics::serve(addr, state, c).await {
                error!(addr = %addr, error = %e, "cannot serve metrics");
                listener_cancel.cancel();
            }
            "metrics"
        });
    }

    let engine = Engine::new(
        config.engine.clone(),
        config.xdp.clone(),
        netlink,
        announcer.clone(),
        offload.clone(),
        desired_rx,
        report_tx,
        status_tx,
    );
    let engine_task = {
        let c = engine_cancel.clone();
        tokio::spawn(async move { engine.run(conflicts, conflicts6, c).await })
    };

    // Ready (systemd Type=notify) once the first role is known: the engine's
    // first pass, and in cluster mode the first election result.
    {
        let mut st = state.engine.clone();
        let coord = state.coord.clone();
        tokio::spawn(async move {
            let _ = st.wait_for(|s| s.last_reconcile.passes > 0).await;
            if let Some(mut c) = coord {
                let _ = tokio::time::timeout(
                    Duration::from_secs(30),
                    c.wait_for(|c| c.leader.is_some()),
                )
                .await;
            }
            let role = serde_json::to_string(&st.borrow().role).unwrap_or_default();
            if let Err(e) = notify(&format!("READY=1\nSTATUS=role {}", role.trim_matches('"'))) {
                warn!(error = %e, "cannot notify systemd");
            }
        });
    }

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = usr1.recv() => log_counters(&state),
            () = cancel.cancelled() => { warn!("a task failed: shutting down"); break; }
        }
    }

    // Order matters (docs/DESIGN.md, R3): the source steps down first (the engine
    // then stops announcing, clears XDP replies and removes the VIPs), and
    // ZooKeeper is left only once nothing is held; then the engine, the API
    // and the announcer stop.
    cancel.cancel();
    if let Some(task) = coord_task
        && tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .is_err()
    {
        warn!("ZooKeeper coordination did not stop within 10 s");
    }
    engine_cancel.cancel();
    checks_cancel.cancel();
    if let Err(e) = engine_task.await {
        error!(error = %e, "engine task failed");
    }
    hook_cancel.cancel();
    log_counters(&state);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while tasks.join_next().await.is_some() {}
        let _ = announcer_task.await;
    })
    .await;
    info!("vipd stopped");
    Ok(())
}

/// Logs every watched VIP's ARP counters (at exit and on SIGUSR1).
fn log_counters(state: &ApiState) {
    let stats = state.arp_stats();
    for r in stats.vips {
        info!(vip = %r.vip, interface = r.interface.as_deref().unwrap_or("-"), held = r.held,
              requests = r.requests, xdp_replies = r.xdp_replies,
              announcements_seen = r.announcements_seen, announcements_sent = r.announcements_sent,
              foreign_claims = r.foreign_claims, "ARP counters");
    }
}
