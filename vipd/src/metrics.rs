//! Prometheus metrics over plain HTTP (`--metrics-listen`), in the
//! OpenMetrics text format (prometheus-client): the same numbers `vipctl
//! status` and `vipctl arp stats` show, read from the same state.

use std::{net::SocketAddr, sync::atomic::AtomicU64, time::Duration};

use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
    },
    registry::{Registry, Unit},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

use crate::{
    api::{ApiState, ArpStats, ArpStatsRow},
    connections::{Connections, Limits},
    coord::CoordStatus,
    engine::{EngineStatus, VipState},
    health::{CheckStatus, HealthStatus},
    role::Role,
};

/// The content type of [`render`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// A registry filled, at each scrape, from the state `vipctl` reads too.
struct Page(Registry);

impl Page {
    fn gauge(&mut self, name: &str, help: &str, v: i64) {
        let g: Gauge = Gauge::default();
        g.set(v);
        self.0.register(name, help, g);
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.0.register(name, help, ConstCounter::new(v));
    }

    fn gauges(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = (Labels, i64)>) {
        let f = Family::<Labels, Gauge>::default();
        for (labels, v) in samples {
            f.get_or_create(&labels).set(v);
        }
        self.0.register(name, help, f);
    }

    fn seconds_gauge(&mut self, name: &str, help: &str, v: f64) {
        let g: Gauge<f64, AtomicU64> = Gauge::default();
        g.set(v);
        self.0.register_with_unit(name, help, Unit::Seconds, g);
    }

    fn counters(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        let f = Family::<Labels, Counter>::default();
        for (labels, v) in samples {
            f.get_or_create(&labels).inc_by(v);
        }
        self.0.register(name, help, f);
    }
}

/// Renders every metric in the OpenMetrics text format. Counters get their
/// `_total` suffix and units their `_seconds` from the encoder.
pub(crate) fn render(state: &ApiState) -> String {
    let e = state.engine.borrow().clone();
    let mut p = Page(Registry::default());
    p.leadership_and_lease(&e);
    if let Some(h) = &state.health {
        p.health(&h.borrow().clone());
    }
    if let Some(c) = &state.coord {
        p.coordination(&c.borrow().clone());
    }
    p.vips(&e);
    p.reconcile(&e);
    let stats = state.arp_stats();
    p.announcements(&stats, state.announcer.total_dropped());
    p.per_vip(&stats);
    if let Some(t) = &state.tickler {
        p.tcp_handoff(&t.stats());
    }
    p.xdp(&e, state.xdp_program.is_some());
    let pinned = state
        .xdp_program
        .as_ref()
        .map(|x| x.lock().expect("XDP program lock").fence_outlives_agent());
    p.fence(&e, pinned);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &p.0);
    out
}

/// One section of the page per method, in the order they appear.
impl Page {
    fn leadership_and_lease(&mut self, e: &EngineStatus) {
        self.gauge(
            "vipd_leader",
            "1 if this node is the leader",
            i64::from(e.role == Role::Leader),
        );
        self.counter(
            "vipd_leader_terms",
            "Leader terms this agent started",
            e.leader_terms,
        );
        self.counter(
            "vipd_lease_renewals",
            "Lease renewals the engine applied (address lifetimes, XDP expiry)",
            e.lease.renewals,
        );
        self.0.register_with_unit(
            "vipd_lease_renewal",
            "Time the engine spent applying lease renewals",
            Unit::Seconds,
            ConstCounter::new(e.lease.renewal_us_total as f64 / 1e6),
        );
        self.gauge(
            "vipd_vip_links_down",
            "VIP interfaces down or without carrier now (past a grace, the node stops standing for election)",
            count(e.links.down.len()),
        );
    }

    fn health(&mut self, h: &HealthStatus) {
        self.gauge(
            "vipd_healthy",
            "1 if every health check is healthy (otherwise the node does not stand for election)",
            i64::from(h.healthy),
        );
        let of = |f: &dyn Fn(&CheckStatus) -> u64| {
            h.checks
                .iter()
                .map(|c| (vec![("check", label(&c.check))], f(c)))
                .collect::<Vec<_>>()
        };
        self.gauges(
            "vipd_check_healthy",
            "1 if the check is healthy, 0 if unhealthy or without a result yet",
            of(&|c| u64::from(c.state.healthy == Some(true)))
                .into_iter()
                .map(|(l, v)| (l, v as i64)),
        );
        self.counters("vipd_check_runs", "Runs of the check", of(&|c| c.runs));
        self.counters(
            "vipd_check_failures",
            "Failed runs of the check (timeouts included)",
            of(&|c| c.failures),
        );
    }

    fn coordination(&mut self, c: &CoordStatus) {
        self.gauges(
            "vipd_zookeeper_session",
            "ZooKeeper session state (1 for the current one)",
            [
                "connecting",
                "connected",
                "disconnected",
                "expired",
                "closed",
            ]
            .map(|s| (vec![("state", s.to_string())], i64::from(c.session == s))),
        );
        self.gauge(
            "vipd_zookeeper_open_znodes",
            "Znodes of the cluster's ZooKeeper tree anyone who reaches ZooKeeper may change, as last searched",
            count(c.tree_acl.open_znodes),
        );
        self.gauge(
            "vipd_fenced",
            "1 while the node fenced itself (cannot confirm its ZooKeeper session)",
            i64::from(c.fenced),
        );
        self.gauge(
            "vipd_withdrawn",
            "1 while the node does not stand for election (a VIP interface down, a health check failing, or drained)",
            i64::from(c.withdrawn.is_some()),
        );
        self.seconds_gauge(
            "vipd_lease",
            "The lease this node leads on in its current ZooKeeper session",
            c.lease_ms as f64 / 1e3,
        );
        self.gauge(
            "vipd_lease_adjusted",
            "1 while ZooKeeper granted a session too short for the configured lease (shortened, or not standing)",
            i64::from(c.lease_adjusted.is_some()),
        );
        self.gauge(
            "vipd_vips_unplaceable",
            "On the leader: configured VIPs it cannot serve while no standing member can serve more (held nowhere)",
            count(c.unplaceable.len()),
        );
        if let Some(term) = c.term {
            self.gauge(
                "vipd_term",
                "The cluster's leader term as last seen: the leader znode's sequence number",
                i64::try_from(term).unwrap_or(i64::MAX),
            );
        }
    }

    fn vips(&mut self, e: &EngineStatus) {
        let in_state = |s: VipState| count(e.vips.iter().filter(|v| v.state == s).count());
        self.gauge(
            "vipd_vips_wanted",
            "VIPs configured for the cluster",
            count(e.vips.len()),
        );
        self.gauge(
            "vipd_vips_held",
            "VIPs configured on this node",
            in_state(VipState::Held),
        );
        self.gauge(
            "vipd_vips_address_in_use",
            "VIPs not added because a host outside the cluster answers for the address",
            in_state(VipState::AddressInUse),
        );
        let pr = &e.probes;
        self.counters(
            "vipd_address_probes",
            "Address-conflict probes before a VIP is first added, one per VIP probed, by result",
            [
                ("free", pr.free),
                ("cluster", pr.cluster_answers),
                ("in_use", pr.in_use),
                ("error", pr.errors),
            ]
            .map(|(r, v)| (vec![("result", r.to_string())], v)),
        );
    }

    fn reconcile(&mut self, e: &EngineStatus) {
        let r = &e.last_reconcile;
        self.counter("vipd_reconcile_passes", "Reconcile passes", r.passes);
        self.counter(
            "vipd_reconcile_errors",
            "Reconcile passes that met an error",
            r.error_passes,
        );
        self.0.register_with_unit(
            "vipd_reconcile_duration",
            "Durations of the reconcile passes",
            Unit::Seconds,
            e.pass_durations.histogram(),
        );
        self.seconds_gauge(
            "vipd_reconcile_last_duration",
            "Duration of the last reconcile pass",
            r.duration_us as f64 / 1e6,
        );
    }

    fn announcements(&mut self, stats: &ArpStats, dropped: u64) {
        self.counter(
            "vipd_announcements_sent",
            "Announcement frames sent (gratuitous ARP, unsolicited Neighbor Advertisements)",
            stats.vips.iter().map(|v| v.announcements_sent).sum(),
        );
        self.counter(
            "vipd_announcements_dropped",
            "Announcement frames dropped unsent: the VIP was no longer held there, or the lease had ended, when their turn came",
            dropped,
        );
    }

    /// The per-VIP counters, as `vipctl arp stats` shows them.
    fn per_vip(&mut self, stats: &ArpStats) {
        let per_vip = |f: &dyn Fn(&ArpStatsRow) -> u64| {
            stats
                .vips
                .iter()
                .map(|v| {
                    let labels = vec![
                        ("vip", v.vip.to_string()),
                        ("interface", label(v.interface.as_deref().unwrap_or(""))),
                    ];
                    (labels, f(v))
                })
                .collect::<Vec<_>>()
        };
        type PerVip = fn(&ArpStatsRow) -> u64;
        let per_vip_counters: [(&str, &str, PerVip); 5] = [
            (
                "vipd_arp_requests",
                "Requests for the VIP seen by XDP (ARP requests; Neighbor Solicitations for IPv6)",
                |v| v.requests,
            ),
            (
                "vipd_arp_xdp_replies",
                "Requests answered by XDP (ARP replies; solicited Neighbor Advertisements for IPv6)",
                |v| v.xdp_replies,
            ),
            (
                "vipd_arp_announcements_seen",
                "Announcements about the VIP seen by XDP (ARP replies and gratuitous ARP; Neighbor Advertisements for IPv6)",
                |v| v.announcements_seen,
            ),
            (
                "vipd_arp_announcements_sent",
                "Announcement frames this agent sent for the VIP (gratuitous ARP; unsolicited Neighbor Advertisements for IPv6)",
                |v| v.announcements_sent,
            ),
            (
                "vipd_arp_foreign_claims",
                "Claims of a held VIP from a MAC that is not ours",
                |v| v.foreign_claims,
            ),
        ];
        for (name, help, value) in per_vip_counters {
            self.counters(name, help, per_vip(&value));
        }
        self.gauges(
            "vipd_vip_held",
            "1 if this node holds the VIP",
            per_vip(&|v| u64::from(v.held))
                .into_iter()
                .map(|(l, v)| (l, v as i64)),
        );
    }

    /// The TCP handoff's counters per VIP (only with the handoff on).
    fn tcp_handoff(
        &mut self,
        stats: &std::collections::BTreeMap<crate::vip::Vip, crate::net::tickle::HandoffStats>,
    ) {
        let per_vip = |f: fn(&crate::net::tickle::HandoffStats) -> u64| {
            stats
                .iter()
                .map(move |(vip, s)| (vec![("vip", vip.to_string())], f(s)))
                .collect::<Vec<_>>()
        };
        self.gauges(
            "vipd_tcp_handoff_published",
            "TCP connections in this node's last publish of the VIP",
            per_vip(|s| s.published)
                .into_iter()
                .map(|(l, v)| (l, i64::try_from(v).unwrap_or(i64::MAX))),
        );
        self.counters(
            "vipd_tcp_handoff_tickles_sent",
            "Tickle ACKs sent to the clients of the VIP's last holder",
            per_vip(|s| s.tickles_sent),
        );
        self.counters(
            "vipd_tcp_handoff_aborted",
            "Local TCP sockets aborted after the VIP was released",
            per_vip(|s| s.aborted),
        );
    }

    fn xdp(&mut self, e: &EngineStatus, loaded: bool) {
        if loaded {
            self.gauge(
                "vipd_xdp_vips_over_capacity",
                "Configured VIPs the XDP maps cannot hold (both families): the kernel answers ARP/NDP for them",
                count(e.xdp_over_capacity),
            );
        }
        self.gauges(
            "vipd_xdp_attached",
            "1 per interface the XDP program is attached to, with the mode in effect and why \
             (reason: configured, driver_native, driver_loses_native_tx, native_refused, fallback, adopted)",
            e.xdp_attached.iter().map(|a| {
                let labels = vec![
                    ("interface", label(&a.interface)),
                    ("mode", a.mode.to_string()),
                    ("driver", label(a.driver.as_deref().unwrap_or(""))),
                    ("reason", a.reason_code.to_string()),
                ];
                (labels, 1)
            }),
        );
    }
}

impl Page {
    fn fence(&mut self, e: &EngineStatus, pinned: Option<bool>) {
        if let Some(pinned) = pinned {
            self.gauge(
                "vipd_fence_pinned",
                "1 when the fence outlives vipd: its XDP and egress links and maps are pinned (--bpf-dir)",
                i64::from(pinned),
            );
        }
        let now = crate::xdp::program_ns(std::time::Instant::now());
        self.gauges(
            "vipd_fence_state",
            "1 per VIP with an entry in the programs' maps, with its fence state \
             (serving: before its lease end; fenced: from then until its window ends; inert: past it)",
            e.fence.iter().map(|(vip, (lease_end, fence_end))| {
                let (state, _) = crate::engine::fence_state(now, *lease_end, *fence_end);
                let labels = vec![("vip", vip.to_string()), ("state", state.as_str().to_string())];
                (labels, 1)
            }),
        );
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A label value: backslash, quote and newline escaped (the encoder
/// writes values as given).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// At most this many scrapers at once, each for at most 5 s: the metrics
/// port may face a network.
pub const LIMITS: Limits = Limits {
    max: 16,
    timeout: Duration::from_secs(5),
};

/// Binds the metrics port.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` until `cancel`, then ends the open connections.
pub(crate) async fn serve(listener: TcpListener, state: ApiState, cancel: CancellationToken) {
    Connections::new("metrics", LIMITS)
        .accept_until(listener, &cancel, move |s| {
            let state = state.clone();
            async move { answer(s, &state).await }
        })
        .await;
}

async fn answer(mut stream: TcpStream, state: &ApiState) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    // Read the request head (bounded; the connection's timeout bounds it in time).
    while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        let m = stream.read(&mut buf[n..]).await?;
        if m == 0 {
            break;
        }
        n += m;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let first = head.lines().next().unwrap_or_default();
    let (status, body, ctype) = if first.starts_with("GET /metrics ") || first.starts_with("GET / ")
    {
        ("200 OK", render(state), CONTENT_TYPE)
    } else {
        ("404 Not Found", "try /metrics\n".to_string(), "text/plain")
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use crate::{announce::Announcer, api::ApiState, engine::EngineStatus, net::garp::GarpMode};

    #[tokio::test]
    async fn counters_end_in_total_and_pass_durations_are_a_histogram() {
        let cancel = CancellationToken::new();
        let (announcer, task) = Announcer::spawn(GarpMode::Request, 10, cancel.clone());
        let status = EngineStatus::default();
        status
            .pass_durations
            .observe(std::time::Duration::from_millis(3));
        let (_tx, engine) = watch::channel(status);
        let state = ApiState {
            node_id: "n1".into(),
            mode: "static",
            engine,
            coord: None,
            xdp_program: None,
            announcer,
            tickler: None,
            health: None,
        };
        let page = super::render(&state);
        for line in [
            "# TYPE vipd_reconcile_passes counter",
            "vipd_reconcile_passes_total 0",
            "# TYPE vipd_reconcile_duration_seconds histogram",
            "# UNIT vipd_reconcile_duration_seconds seconds",
            "vipd_reconcile_duration_seconds_count 1",
            "vipd_reconcile_duration_seconds_bucket{le=\"0.0016\"} 0",
            "vipd_reconcile_duration_seconds_bucket{le=\"0.0032\"} 1",
            "vipd_lease_renewal_seconds_total 0.0",
            "vipd_leader 0",
            "# EOF",
        ] {
            assert!(
                page.lines().any(|l| l == line),
                "no line {line:?} in\n{page}"
            );
        }
        for l in page.lines().filter(|l| l.starts_with("# TYPE ")) {
            if l.ends_with(" counter") {
                let name = l.split(' ').nth(2).unwrap();
                assert!(
                    page.lines()
                        .any(|s| s.starts_with(&format!("{name}_total"))),
                    "{name}: no sample ends in _total"
                );
            }
        }
        cancel.cancel();
        let _ = task.await;
    }

    /// The whole page for a state with every section filled: the exposition
    /// an operator's dashboards read, held to the byte.
    #[tokio::test]
    async fn the_full_page_for_a_filled_state() {
        use std::collections::BTreeMap;

        use crate::{
            coord::{CoordStatus, TreeAcl},
            engine::{VipState, VipStatus},
            health::{CheckStatus, HealthStatus, RiseFall},
            role::Role,
            vip::Vip,
            xdp::{AttachedMode, XdpAttachment},
        };

        let cancel = CancellationToken::new();
        let (announcer, task) = Announcer::spawn(GarpMode::Request, 10, cancel.clone());
        let held: Vip = "192.0.2.10".parse().unwrap();
        let in_use: Vip = "2001:db8::20".parse().unwrap();
        let mut status = EngineStatus {
            role: Role::Leader,
            term: 7,
            leader_terms: 3,
            xdp_over_capacity: 1,
            ..Default::default()
        };
        status.vips = vec![
            VipStatus {
                vip: held.ip(),
                state: VipState::Held,
                interface: Some("eth0".into()),
                ifindex: Some(2),
                prefix_len: Some(24),
                error: None,
                in_use_by: None,
            },
            VipStatus {
                vip: in_use.ip(),
                state: VipState::AddressInUse,
                interface: Some("eth\"1".into()),
                ifindex: Some(3),
                prefix_len: Some(64),
                error: None,
                in_use_by: Some("02:00:00:00:00:09".into()),
            },
        ];
        status.interfaces =
            BTreeMap::from([(held, "eth0".to_string()), (in_use, "eth\"1".to_string())]);
        status.lease.renewals = 5;
        status.lease.renewal_us_total = 1_500;
        status.links.down = vec!["eth9".into()];
        status.probes.free = 2;
        status.probes.cluster_answers = 1;
        status.probes.in_use = 1;
        status.probes.errors = 4;
        status.last_reconcile.passes = 11;
        status.last_reconcile.error_passes = 2;
        status.last_reconcile.duration_us = 2_500;
        status
            .pass_durations
            .observe(std::time::Duration::from_micros(2_500));
        status
            .pass_durations
            .observe(std::time::Duration::from_millis(40));
        status.fence = BTreeMap::from([(held, (u64::MAX, u64::MAX)), (in_use, (0, 0))]);
        status.xdp_attached = vec![XdpAttachment {
            interface: "eth0".into(),
            mode: AttachedMode::Native,
            driver: Some("veth".into()),
            reason: "auto: driver veth".into(),
            reason_code: "driver_native",
        }];
        let (_tx, engine) = watch::channel(status);
        let (_ctx, coord) = watch::channel(CoordStatus {
            session: "connected".into(),
            term: Some(7),
            fenced: false,
            withdrawn: Some("drained".into()),
            lease_ms: 2_000,
            unplaceable: BTreeMap::from([(in_use, "no interface".to_string())]),
            tree_acl: TreeAcl {
                open_znodes: 2,
                ..Default::default()
            },
            ..Default::default()
        });
        let check = |name: &str, healthy: Option<bool>, runs, failures| CheckStatus {
            check: name.into(),
            state: RiseFall {
                healthy,
                consecutive_ok: 0,
                consecutive_failed: 0,
            },
            runs,
            failures,
            last_error: None,
            last_duration_ms: None,
        };
        let (_htx, health) = watch::channel(HealthStatus {
            healthy: false,
            checks: vec![
                check("http \"/\"", Some(true), 9, 1),
                check("tcp:80", None, 0, 0),
            ],
        });
        let state = ApiState {
            node_id: "n1".into(),
            mode: "zookeeper",
            engine,
            coord: Some(coord),
            xdp_program: None,
            announcer,
            tickler: Some({
                let (t, _task) = crate::net::tickle::Tickler::spawn(cancel.clone());
                t.published(held, 3, 0);
                t
            }),
            health: Some(health),
        };
        let page = samples_sorted(&super::render(&state));
        let want = include_str!("metrics_page.txt");
        assert_eq!(page, want, "the metrics page changed");
        cancel.cancel();
        let _ = task.await;
    }

    /// The page with each metric's samples sorted: the encoder writes a
    /// family's label sets in hash order, which differs from run to run.
    fn samples_sorted(page: &str) -> String {
        let mut out = Vec::new();
        let mut samples: Vec<&str> = Vec::new();
        for line in page.lines() {
            if line.starts_with('#') {
                samples.sort_unstable();
                out.append(&mut samples);
                out.push(line);
            } else {
                samples.push(line);
            }
        }
        samples.sort_unstable();
        out.append(&mut samples);
        out.iter().map(|l| format!("{l}\n")).collect()
    }

    #[tokio::test]
    async fn the_lease_of_the_session_and_whether_it_was_shortened() {
        let cancel = CancellationToken::new();
        let (announcer, task) = Announcer::spawn(GarpMode::Request, 10, cancel.clone());
        let (_tx, engine) = watch::channel(EngineStatus::default());
        let (_ctx, coord) = watch::channel(crate::coord::CoordStatus {
            lease_ms: 333,
            lease_adjusted: Some("ZooKeeper granted a 1000 ms session".into()),
            ..Default::default()
        });
        let state = ApiState {
            node_id: "n1".into(),
            mode: "zookeeper",
            engine,
            coord: Some(coord),
            xdp_program: None,
            announcer,
            tickler: None,
            health: None,
        };
        let page = super::render(&state);
        for line in [
            "# UNIT vipd_lease_seconds seconds",
            "vipd_lease_seconds 0.333",
            "vipd_lease_adjusted 1",
        ] {
            assert!(
                page.lines().any(|l| l == line),
                "no line {line:?} in\n{page}"
            );
        }
        cancel.cancel();
        let _ = task.await;
    }
}
