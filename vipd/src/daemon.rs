//! The agent as one call: [`run`] wires the source of truth (static VIPs or
//! ZooKeeper), the engine, the XDP program, the health checks, the hook, the
//! control socket and the metrics port, runs them until `shutdown` completes
//! (or a part fails), and stops them in order: stop announcing and
//! answering, remove the VIPs, then leave ZooKeeper.

use std::{
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use sd_notify::NotifyState;
use tokio::{
    net::{TcpListener, UnixListener},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
    task::{JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    announce::Announcer,
    api::{self, ApiState},
    config::Config,
    coord::{self, CoordStatus, Handoff, ZkSettings},
    engine::{Engine, EngineSettings, EngineStatus, SharedXdp},
    health::{self, HealthStatus},
    hooks::Hook,
    instance::Instance,
    metrics,
    net::{netlink::Netlink, probe::ProbeTiming, tickle::Tickler},
    role::{Desired, EngineReport, Role},
    xdp::{ConflictReader, XdpProgram},
};

/// Runs vipd with `config` until `shutdown` completes, then shuts down in
/// order. Returns an error when vipd cannot start, or when a part failed
/// (ZooKeeper coordination, the metrics port) and vipd stopped because of
/// it. SIGUSR1 logs the ARP counters.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let node_id = config.node_id();
    // Settings first: a bad one stops vipd before it touches anything.
    let mut zk = ZkSettings::from_args(&config.zk, node_id.clone())?;
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
    can_announce()?;
    let (xdp_program, conflicts) = open_xdp(&config, &instance, &netlink).await?;
    if let Some(zk) = &mut zk {
        zk.fence_outlives_agent = fence_outlives_agent(&config, xdp_program.as_ref());
    }
    let listeners = Listeners::bind(&config, api_socket).await?;

    let stops = Stops::default();
    // A part that fails says why here; vipd then shuts down.
    let (failed_tx, mut failed_rx) = mpsc::unbounded_channel::<String>();
    let (announcer, announcer_task) = Announcer::spawn(
        config.engine.garp_mode,
        config.engine.garp_rate,
        stops.engine.child_token(),
    );
    let tickler = spawn_tickler(&config, &announcer, &stops);
    let (desired_tx, desired_rx) = watch::channel(Desired::default());
    let (report_tx, report_rx) = watch::channel(EngineReport::default());
    let (status_tx, status_rx) = watch::channel(EngineStatus::default());

    let mut tasks = JoinSet::new();
    let health = spawn_checks(&config, &stops, &mut tasks);
    let handoff = (tickler.clone()).map(|t| Handoff::new(t, config.engine.tcp_publish_interval));
    let source = Source {
        desired: desired_tx,
        report: report_rx.clone(),
        health: health.clone(),
        failed: failed_tx,
        handoff,
    }
    .start(zk, &config, &node_id, &stops);
    let state = ApiState {
        node_id,
        mode: source.mode,
        engine: status_rx,
        coord: source.status,
        xdp_program: xdp_program.clone(),
        announcer: announcer.clone(),
        tickler: tickler.clone(),
        health,
    };
    spawn_hook(&config, &state, report_rx, &stops, &mut tasks);
    listeners.serve(&state, &stops, &mut tasks);

    let engine = Engine::new(
        engine_settings(&config),
        netlink,
        announcer,
        xdp_program,
        desired_rx,
        report_tx,
        status_tx,
    )
    .with_tickler(tickler);
    let stop_engine = stops.engine.clone();
    let engine_task = tokio::spawn(async move { engine.run(conflicts, stop_engine).await });
    let failure = serve_until_stop(shutdown, &mut failed_rx, &state).await?;
    let running = Running {
        coord: source.task,
        engine: engine_task,
        tasks,
        announcer: announcer_task,
    };
    running.stop_in_order(&stops, &state).await;
    drop(source.desired);
    info!("vipd stopped");
    failure.map_or(Ok(()), |why| Err(anyhow!(why)))
}

/// The TCP handoff's tickler when it is on, told of every announcement
/// sent (it tickles a VIP's clients only after its first announcement).
fn spawn_tickler(config: &Config, announcer: &Announcer, stops: &Stops) -> Option<Tickler> {
    config.engine.tcp_handoff.then(|| {
        let (t, _task) = Tickler::spawn(stops.hook.child_token());
        announcer.tell_on_sent(t.clone());
        t
    })
}

/// The engine's settings from the configuration (a zero probe wait turns
/// the probe off).
fn engine_settings(config: &Config) -> EngineSettings {
    let e = &config.engine;
    EngineSettings {
        reconcile_interval: e.reconcile_interval,
        netlink_events: e.netlink_events,
        event_debounce: e.event_debounce,
        garp_rounds: e.garp_rounds,
        garp_interval: e.garp_interval,
        garp_refresh: e.garp_refresh,
        link_grace: e.link_grace,
        probe: (!e.probe_wait.is_zero()).then(|| ProbeTiming::new(e.probe_wait)),
        probe_retry: e.probe_retry,
        xdp_interfaces: config.xdp.interfaces.clone(),
        xdp_mode: config.xdp.mode,
        xdp_responder: config.xdp.responder,
    }
}

/// Announcing needs an AF_PACKET socket (CAP_NET_RAW): find out at start,
/// not at the first takeover, when a missing capability would leave the
/// network with stale ARP caches.
fn can_announce() -> Result<()> {
    socket2::Socket::new(socket2::Domain::PACKET, socket2::Type::RAW, None).context(
        "cannot open an AF_PACKET socket to send gratuitous ARP (vipd needs CAP_NET_RAW)",
    )?;
    Ok(())
}

/// What stops each part, in the order [`Running::stop_in_order`] cancels
/// them.
#[derive(Default)]
struct Stops {
    /// Cancelled first at shutdown: the source steps down. The engine stops
    /// after the source has asked it to step down; the source (ZooKeeper)
    /// leaves only once the engine reports nothing held.
    source: CancellationToken,
    /// The engine, the announcer, the API and the metrics port.
    engine: CancellationToken,
    /// Health checks (a failing one makes the leader hand over) run in
    /// tasks of their own: a hung check never blocks the engine,
    /// coordination or the API.
    checks: CancellationToken,
    /// The hook stops last, after telling the engine's final step down.
    hook: CancellationToken,
}

/// Loads the XDP program and attaches it where the operator said and where
/// static VIPs route to, unless XDP is disabled; with its conflict reader.
/// Whether this run's fence outlives the agent for every VIP it may hold,
/// fixed for the run (the successor times each lease version by what it
/// said): the held-VIP entries are written (the responder is on), and
/// the maps and every link attached at start are pinned. A link attached
/// later whose pin fails is logged as such (`cannot pin`): see
/// docs/OPERATIONS.md "The pinned fence".
fn fence_outlives_agent(config: &Config, xdp: Option<&SharedXdp>) -> bool {
    let pinned = xdp.is_some_and(|x| x.lock().expect("XDP program lock").fence_outlives_agent());
    let outlives = pinned && config.xdp.responder;
    info!(
        fence_outlives_agent = outlives,
        "the successor times this node's leases by the {} rule",
        if outlives { "fenced" } else { "unfenced" }
    );
    outlives
}

async fn open_xdp(
    config: &Config,
    instance: &Instance,
    netlink: &Netlink,
) -> Result<(Option<SharedXdp>, Option<ConflictReader>)> {
    if config.xdp.disabled {
        info!("XDP disabled (--no-xdp): no ARP counters, the kernel answers ARP");
        return Ok((None, None));
    }
    let pins = crate::xdp::bpf_dir_for(config.xdp.bpf_dir.as_deref(), instance.name())?;
    let mut xdp = XdpProgram::load_pinned(pins).context("loading the XDP program")?;
    xdp.serve_as(instance.clone());
    // Before any attach: the pinned links move to this program in place.
    xdp.adopt_pinned();
    for ifname in &config.xdp.interfaces {
        let mode = xdp
            .attach(ifname, config.xdp.mode)
            .with_context(|| format!("attaching the XDP program to {ifname}"))?;
        info!(ifname = %ifname, mode = ?mode, "XDP program attached");
    }
    attach_static(&mut xdp, netlink, config).await?;
    let conflicts = xdp
        .take_conflicts()
        .context("opening the XDP conflict ring buffers")?;
    Ok((Some(Arc::new(Mutex::new(xdp))), Some(conflicts)))
}

/// The control socket and the metrics port, bound before any part starts.
struct Listeners {
    api: UnixListener,
    api_path: PathBuf,
    metrics: Option<TcpListener>,
}

impl Listeners {
    async fn bind(config: &Config, api_path: PathBuf) -> Result<Self> {
        let api = api::bind(&api_path).await?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                metrics::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for metrics on {addr}"))?,
            ),
            None => None,
        };
        Ok(Listeners {
            api,
            api_path,
            metrics,
        })
    }

    /// Serves the control socket and the metrics port until the engine stops.
    fn serve(self, state: &ApiState, stops: &Stops, tasks: &mut JoinSet<&'static str>) {
        let (state_api, c) = (state.clone(), stops.engine.clone());
        let (listener, path) = (self.api, self.api_path);
        tasks.spawn(async move {
            api::serve(listener, path, state_api, c).await;
            "api"
        });
        if let Some(listener) = self.metrics {
            let (state, c) = (state.clone(), stops.engine.clone());
            tasks.spawn(async move {
                metrics::serve(listener, state, c).await;
                "metrics"
            });
        }
    }
}

/// Starts the health checks, if any are configured.
fn spawn_checks(
    config: &Config,
    stops: &Stops,
    tasks: &mut JoinSet<&'static str>,
) -> Option<watch::Receiver<HealthStatus>> {
    if config.serving.checks.is_empty() {
        return None;
    }
    let settings = config.serving.check_settings();
    info!(checks = settings.checks.len(), interval = ?settings.interval, timeout = ?settings.timeout,
          fall = settings.fall, rise = settings.rise, "health checks");
    let (rx, set) = health::spawn(&settings, stops.checks.clone());
    tasks.spawn(async move {
        set.join_all().await;
        "health checks"
    });
    Some(rx)
}

/// Starts the `--on-change` hook, if one is configured.
fn spawn_hook(
    config: &Config,
    state: &ApiState,
    report: watch::Receiver<EngineReport>,
    stops: &Stops,
    tasks: &mut JoinSet<&'static str>,
) {
    let Some(program) = &config.serving.on_change else {
        return;
    };
    let hook = Hook {
        program: program.clone(),
        timeout: config.serving.on_change_timeout,
        node: state.node_id.clone(),
    };
    let (coord, c) = (state.coord.clone(), stops.hook.clone());
    tasks.spawn(async move {
        hook.run(report, coord, c).await;
        "on-change hook"
    });
}

/// The source of truth's ends of the engine's channels.
struct Source {
    desired: watch::Sender<Desired>,
    report: watch::Receiver<EngineReport>,
    health: Option<watch::Receiver<HealthStatus>>,
    failed: mpsc::UnboundedSender<String>,
    handoff: Option<Handoff>,
}

/// The source of truth, started.
struct Started {
    mode: &'static str,
    status: Option<watch::Receiver<CoordStatus>>,
    task: Option<JoinHandle<()>>,
    /// The static source's sender, kept for as long as vipd runs: the
    /// engine stops when the sender is gone.
    desired: Option<watch::Sender<Desired>>,
}

impl Source {
    /// Without ZooKeeper settings this node leads the static VIPs; with
    /// them, ZooKeeper coordination runs in a task of its own and reports
    /// its failure on `failed`.
    fn start(
        self,
        zk: Option<ZkSettings>,
        config: &Config,
        node_id: &str,
        stops: &Stops,
    ) -> Started {
        let Some(settings) = zk else {
            let vips = config.static_vips.0.iter().copied().collect();
            info!(node_id = %node_id, vips = config.static_vips.0.len(), "single-node mode: this node leads");
            self.desired.send_replace(Desired {
                role: Role::Leader,
                vips,
                term: 1,
                lease: None,
                record: Default::default(),
            });
            return Started {
                mode: "static",
                status: None,
                task: None,
                desired: Some(self.desired),
            };
        };
        let (cs_tx, cs_rx) = watch::channel(CoordStatus::default());
        let c = stops.source.clone();
        let task = tokio::spawn(async move {
            let Source {
                desired,
                report,
                health,
                failed,
                handoff,
            } = self;
            if let Err(e) =
                coord::run_serving(settings, desired, report, cs_tx, health, handoff, c).await
            {
                error!(error = %e, "ZooKeeper coordination failed");
                let _ = failed.send(format!("ZooKeeper coordination failed: {e}"));
            }
        });
        Started {
            mode: "zookeeper",
            status: Some(cs_rx),
            task: Some(task),
            desired: None,
        }
    }
}

/// Waits for `shutdown` or a part's failure (the reason, returned); logs
/// the ARP counters on each SIGUSR1 meanwhile.
/// Tells systemd when vipd is ready, waits for the stop (or a failed
/// part), and tells systemd it is stopping.
async fn serve_until_stop(
    shutdown: impl Future<Output = ()>,
    failed: &mut mpsc::UnboundedReceiver<String>,
    state: &ApiState,
) -> Result<Option<String>> {
    let ready = tokio::spawn(notify_ready(state.clone()));
    let failure = wait_for_stop(shutdown, failed, state).await;
    ready.abort();
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
    failure
}

async fn wait_for_stop(
    shutdown: impl Future<Output = ()>,
    failed: &mut mpsc::UnboundedReceiver<String>,
    state: &ApiState,
) -> Result<Option<String>> {
    let mut usr1 = signal(SignalKind::user_defined1())?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(None),
            _ = usr1.recv() => log_counters(state),
            Some(why) = failed.recv() => {
                warn!("a part failed: shutting down");
                return Ok(Some(why));
            }
        }
    }
}

/// The running parts, stopped by [`Running::stop_in_order`].
struct Running {
    coord: Option<JoinHandle<()>>,
    engine: JoinHandle<()>,
    tasks: JoinSet<&'static str>,
    announcer: JoinHandle<()>,
}

impl Running {
    /// Order matters, so that no two nodes ever hold a VIP at once (see
    /// docs/DESIGN.md): the source steps down first (the
    /// engine then stops announcing, clears XDP replies and removes the
    /// VIPs), and ZooKeeper is left only once nothing is held; then the
    /// engine, the API, the metrics port and the announcer stop.
    async fn stop_in_order(mut self, stops: &Stops, state: &ApiState) {
        stops.source.cancel();
        if let Some(task) = self.coord
            && tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
        {
            warn!("ZooKeeper coordination did not stop within 10 s");
        }
        stops.engine.cancel();
        stops.checks.cancel();
        if let Err(e) = self.engine.await {
            error!(error = %e, "engine task failed");
        }
        stops.hook.cancel();
        log_counters(state);
        let tasks = &mut self.tasks;
        let stopped = tokio::time::timeout(Duration::from_secs(2), async {
            while tasks.join_next().await.is_some() {}
            let _ = self.announcer.await;
        })
        .await;
        if stopped.is_err() {
            warn!(
                tasks = self.tasks.len(),
                "tasks still running 2 s after the engine stopped"
            );
        }
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
    let status = format!("role {}", st.borrow().role);
    // Without $NOTIFY_SOCKET (not under systemd) this does nothing.
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(&status)]) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// Logs every watched VIP's ARP counters (at exit and on SIGUSR1).
pub(crate) fn log_counters(state: &ApiState) {
    let stats = state.arp_stats();
    for r in stats.vips {
        info!(vip = %r.vip, interface = r.interface.as_deref().unwrap_or("-"), held = r.held,
              requests = r.requests, xdp_replies = r.xdp_replies,
              announcements_seen = r.announcements_seen, announcements_sent = r.announcements_sent,
              foreign_claims = r.foreign_claims, "ARP counters");
    }
}
