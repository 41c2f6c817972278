//! The agent as one call: [`run`] wires the source of truth (static VIPs or
//! ZooKeeper), the engine, the XDP program, the health checks, the hook, the
//! control socket and the metrics port, runs them until `shutdown` completes
//! (or a part fails), and stops them in order: stop announcing and
//! answering, remove the VIPs, then leave ZooKeeper.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use sd_notify::NotifyState;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    announce::Announcer,
    api::{self, ApiState},
    config::Config,
    coord::{self, CoordStatus, ZkSettings},
    engine::{Engine, EngineStatus, SharedXdp},
    health,
    hooks::Hook,
    metrics,
    net::netlink::Netlink,
    role::{Desired, EngineReport, Role},
    xdp::XdpProgram,
};

/// Runs vipd with `config` until `shutdown` completes, then shuts down in
/// order. Returns an error when vipd cannot start, or when a part failed
/// (ZooKeeper coordination, the metrics port) and vipd stopped because of
/// it. SIGUSR1 logs the ARP counters.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let node_id = config.node_id();
    // Settings first: a bad one stops vipd before it touches anything.
    let zk = ZkSettings::from_args(&config.zk, node_id.clone())?;
    let instance = config.instance().map_err(|e| anyhow!(e))?;
    let api_socket = config.api_socket();
    // Before anything is touched: another vipd on this host with the same
    // name or mark would take this one's addresses for its own.
    let _claims = instance.claim()?;
    info!(instance = instance.name(), mark = instance.mark(), socket = %api_socket.display(),
          "instance");
    let netlink = Netlink::new()
        .context("opening netlink")?
        .with_mark(instance.mark());
    // Announcing needs an AF_PACKET socket (CAP_NET_RAW): find out now, not
    // at the first takeover, when a missing capability would leave the
    // network with stale ARP caches.
    socket2::Socket::new(socket2::Domain::PACKET, socket2::Type::RAW, None).context(
        "cannot open an AF_PACKET socket to send gratuitous ARP (vipd needs CAP_NET_RAW)",
    )?;

    let xdp_program: Option<SharedXdp> = if config.xdp.disabled {
        info!("XDP disabled (--no-xdp): no ARP counters, the kernel answers ARP");
        None
    } else {
        let mut xdp = XdpProgram::load().context("loading the XDP program")?;
        xdp.serve_as(instance.clone());
        for ifname in &config.xdp.interfaces {
            let mode = xdp
                .attach(ifname, config.xdp.mode)
                .with_context(|| format!("attaching the XDP program to {ifname}"))?;
            info!(ifname = %ifname, mode = ?mode, "XDP program attached");
        }
        attach_static(&mut xdp, &netlink, &config).await?;
        Some(Arc::new(Mutex::new(xdp)))
    };
    let conflicts = match &xdp_program {
        Some(xdp) => Some(
            xdp.lock()
                .expect("XDP program lock")
                .take_conflicts()
                .context("opening the XDP conflict ring buffers")?,
        ),
        None => None,
    };
    let api_listener = api::bind(&api_socket).await?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            metrics::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?,
        ),
        None => None,
    };

    // Cancelled first at shutdown: the source steps down. The engine stops
    // after the source has asked it to step down; the source (ZooKeeper)
    // leaves only once the engine reports nothing held.
    let source_cancel = CancellationToken::new();
    // The engine, the announcer, the API and the metrics port.
    let engine_cancel = CancellationToken::new();
    // Health checks (R18) run in tasks of their own: a hung check never
    // blocks the engine, coordination or the API.
    let checks_cancel = CancellationToken::new();
    // The hook stops last, after telling the engine's final step down.
    let hook_cancel = CancellationToken::new();
    // A part that fails says why here; vipd then shuts down.
    let (failed_tx, mut failed_rx) = mpsc::unbounded_channel::<String>();

    let (announcer, announcer_task) = Announcer::spawn(
        config.engine.garp_mode,
        config.engine.garp_rate,
        engine_cancel.child_token(),
    );
    let (desired_tx, desired_rx) = watch::channel(Desired::default());
    let (report_tx, report_rx) = watch::channel(EngineReport::default());
    let (status_tx, status_rx) = watch::channel(EngineStatus::default());

    let mut tasks = JoinSet::new();
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
    match zk {
        None => {
            mode = "static";
            let vips = config.static_vips.0.iter().copied().collect();
            info!(node_id = %node_id, vips = config.static_vips.0.len(), "single-node mode: this node leads");
            desired_tx.send_replace(Desired {
                role: Role::Leader,
                vips,
                term: 1,
                lease: None,
                record: Default::default(),
            });
        }
        Some(settings) => {
            mode = "zookeeper";
            let (cs_tx, cs_rx) = watch::channel(CoordStatus::default());
            coord_status = Some(cs_rx);
            let (c, report, health, failed) = (
                source_cancel.clone(),
                report_rx.clone(),
                health.clone(),
                failed_tx.clone(),
            );
            coord_task = Some(tokio::spawn(async move {
                if let Err(e) =
                    coord::run_serving(settings, desired_tx, report, cs_tx, health, c).await
                {
                    error!(error = %e, "ZooKeeper coordination failed");
                    let _ = failed.send(format!("ZooKeeper coordination failed: {e}"));
                }
            }));
        }
    }

    let state = ApiState {
        node_id: node_id.clone(),
        mode,
        engine: status_rx,
        coord: coord_status,
        xdp_program: xdp_program.clone(),
        announcer: announcer.clone(),
        health,
    };
    if let Some(program) = &config.serving.on_change {
        let hook = Hook {
            program: program.clone(),
            timeout: config.serving.on_change_timeout,
            node: node_id.clone(),
        };
        let (report, coord, c) = (report_rx.clone(), state.coord.clone(), hook_cancel.clone());
        tasks.spawn(async move {
            hook.run(report, coord, c).await;
            "on-change hook"
        });
    }
    {
        let (path, state, c) = (api_socket.clone(), state.clone(), engine_cancel.clone());
        tasks.spawn(async move {
            api::serve(api_listener, path, state, c).await;
            "api"
        });
    }
    if let Some(listener) = metrics_listener {
        let (state, c) = (state.clone(), engine_cancel.clone());
        tasks.spawn(async move {
            metrics::serve(listener, state, c).await;
            "metrics"
        });
    }

    let engine = Engine::new(
        config.engine.clone(),
        config.xdp.clone(),
        netlink,
        announcer.clone(),
        xdp_program.clone(),
        desired_rx,
        report_tx,
        status_tx,
    );
    let engine_task = {
        let c = engine_cancel.clone();
        tokio::spawn(async move { engine.run(conflicts, c).await })
    };
    let ready = tokio::spawn(notify_ready(state.clone()));

    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut failure = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => { break; }
            _ = usr1.recv() => log_counters(&state),
            Some(why) = failed_rx.recv() => {
                warn!("a part failed: shutting down");
                failure = Some(why);
                break;
            }
        }
    }
    ready.abort();
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);

    // Order matters (docs/DESIGN.md, R3): the source steps down first (the
    // engine then stops announcing, clears XDP replies and removes the
    // VIPs), and ZooKeeper is left only once nothing is held; then the
    // engine, the API, the metrics port and the announcer stop.
    source_cancel.cancel();
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
    let stopped = tokio::time::timeout(Duration::from_secs(2), async {
        while tasks.join_next().await.is_some() {}
        let _ = announcer_task.await;
    })
    .await;
    if stopped.is_err() {
        warn!(
            tasks = tasks.len(),
            "tasks still running 2 s after the engine stopped"
        );
    }
    info!("vipd stopped");
    match failure {
        Some(why) => Err(anyhow!(why)),
        None => Ok(()),
    }
}

/// In single-node mode, attaches the XDP program to the interfaces the
/// static VIPs route to now, so an interface another instance on the host
/// serves stops this one at start rather than at its first pass. Other
/// failures are left to the engine's passes, which retry.
async fn attach_static(xdp: &mut XdpProgram, netlink: &Netlink, config: &Config) -> Result<()> {
    if config.static_vips.0.is_empty() {
        return Ok(());
    }
    let snap = netlink
        .snapshot()
        .await
        .context("reading the kernel's routes")?;
    let ifnames: std::collections::BTreeSet<String> = config
        .static_vips
        .0
        .iter()
        .filter_map(|vip| snap.routes.placement(*vip))
        .filter_map(|p| snap.link(p.ifindex).map(|l| l.name.clone()))
        .filter(|name| name != "lo")
        .collect();
    for ifname in ifnames {
        match xdp.attach(&ifname, config.xdp.mode) {
            Ok(mode) => info!(ifname = %ifname, mode = ?mode, "XDP program attached"),
            Err(e @ crate::xdp::XdpError::InterfaceTaken { .. }) => {
                return Err(anyhow::Error::new(e));
            }
            Err(e) => warn!(ifname = %ifname, error = %e, "cannot attach the XDP program yet"),
        }
    }
    Ok(())
}

/// Tells systemd (Type=notify) vipd is ready once the first role is known:
/// the engine's first pass, in cluster mode the first election result, and
/// the address-conflict probes of VIPs never held done (so a unit ordered
/// after vipd finds the VIPs in place; bounded, a probe takes 200 ms).
async fn notify_ready(state: ApiState) {
    let mut st = state.engine.clone();
    let _ = st.wait_for(|s| s.last_reconcile.passes > 0).await;
    if let Some(mut c) = state.coord.clone() {
        let _ =
            tokio::time::timeout(Duration::from_secs(30), c.wait_for(|c| c.leader.is_some())).await;
    }
    let probed = st.wait_for(|s| {
        !s.vips
            .iter()
            .any(|v| v.state == crate::engine::VipState::Probing)
    });
    let _ = tokio::time::timeout(Duration::from_secs(5), probed).await;
    let role = serde_json::to_string(&st.borrow().role).unwrap_or_default();
    let status = format!("role {}", role.trim_matches('"'));
    // Without $NOTIFY_SOCKET (not under systemd) this does nothing.
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(&status)]) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// Logs every watched VIP's ARP counters (at exit and on SIGUSR1).
pub fn log_counters(state: &ApiState) {
    let stats = state.arp_stats();
    for r in stats.vips {
        info!(vip = %r.vip, interface = r.interface.as_deref().unwrap_or("-"), held = r.held,
              requests = r.requests, xdp_replies = r.xdp_replies,
              announcements_seen = r.announcements_seen, announcements_sent = r.announcements_sent,
              foreign_claims = r.foreign_claims, "ARP counters");
    }
}
