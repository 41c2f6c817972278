//! Prometheus metrics over plain HTTP (`--metrics-listen`): the same numbers
//! `vipctl status` and `vipctl arp stats` show, read from the same state.

use std::{fmt::Write as _, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{
    api::ApiState,
    connections::{Connections, Limits},
    role::Role,
};

/// Renders every metric in the Prometheus text format.
pub fn render(state: &ApiState) -> String {
    let e = state.engine.borrow().clone();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let leader = f64::from(u8::from(e.role == Role::Leader));
    metric(
        "vipd_leader",
        "gauge",
        "1 if this node is the leader.",
        &[(String::new(), leader)],
    );
    metric(
        "vipd_leader_terms_total",
        "counter",
        "Leader terms this agent started.",
        &[(String::new(), e.leader_terms as f64)],
    );
    metric(
        "vipd_lease_renewals_total",
        "counter",
        "Lease renewals the engine applied (address lifetimes, XDP expiry).",
        &[(String::new(), e.lease.renewals as f64)],
    );
    metric(
        "vipd_lease_renewal_seconds_total",
        "counter",
        "Time the engine spent applying lease renewals.",
        &[(String::new(), e.lease.renewal_us_total as f64 / 1e6)],
    );
    metric(
        "vipd_vip_links_down",
        "gauge",
        "VIP interfaces down or without carrier now (R18).",
        &[(String::new(), e.links.down.len() as f64)],
    );
    if let Some(h) = &state.health {
        let h = h.borrow().clone();
        metric(
            "vipd_healthy",
            "gauge",
            "1 if every health check is healthy (R18).",
            &[(String::new(), f64::from(u8::from(h.healthy)))],
        );
        let of = |f: &dyn Fn(&crate::health::CheckStatus) -> f64| -> Vec<(String, f64)> {
            h.checks
                .iter()
                .map(|c| (format!("{{check=\"{}\"}}", label(&c.check)), f(c)))
                .collect()
        };
        metric(
            "vipd_check_healthy",
            "gauge",
            "1 if the check is healthy, 0 if unhealthy or without a result yet.",
            &of(&|c| f64::from(u8::from(c.state.healthy == Some(true)))),
        );
        metric(
            "vipd_check_runs_total",
            "counter",
            "Runs of the check.",
            &of(&|c| c.runs as f64),
        );
        metric(
            "vipd_check_failures_total",
            "counter",
            "Failed runs of the check (timeouts included).",
            &of(&|c| c.failures as f64),
        );
    }
    if let Some(c) = &state.coord {
        let c = c.borrow().clone();
        let samples: Vec<(String, f64)> = [
            "connecting",
            "connected",
            "disconnected",
            "expired",
            "closed",
        ]
        .iter()
        .map(|s| {
            (
                format!("{{state=\"{s}\"}}"),
                f64::from(u8::from(c.session == *s)),
            )
        })
        .collect();
        metric(
            "vipd_zookeeper_session",
            "gauge",
            "ZooKeeper session state (1 for the current one).",
            &samples,
        );
        metric(
            "vipd_fenced",
            "gauge",
            "1 while the node fenced itself (cannot confirm its ZooKeeper session).",
            &[(String::new(), f64::from(u8::from(c.fenced)))],
        );
        metric(
            "vipd_withdrawn",
            "gauge",
            "1 while the node does not stand for election (R18: VIP interface down, unhealthy, drained).",
            &[(String::new(), f64::from(u8::from(c.withdrawn.is_some())))],
        );
        if let Some(term) = c.term {
            metric(
                "vipd_term",
                "gauge",
                "The cluster's leader term as last seen: the leader znode's sequence number.",
                &[(String::new(), term as f64)],
            );
        }
    }
    let wanted = e.vips.len() as f64;
    let held = e.vips.iter().filter(|v| v.state == "held").count() as f64;
    metric(
        "vipd_vips_wanted",
        "gauge",
        "VIPs configured for the cluster.",
        &[(String::new(), wanted)],
    );
    metric(
        "vipd_vips_held",
        "gauge",
        "VIPs configured on this node.",
        &[(String::new(), held)],
    );
    let r = &e.last_reconcile;
    metric(
        "vipd_reconcile_passes_total",
        "counter",
        "Reconcile passes.",
        &[(String::new(), r.passes as f64)],
    );
    metric(
        "vipd_reconcile_errors_total",
        "counter",
        "Reconcile passes that met an error.",
        &[(String::new(), r.error_passes as f64)],
    );
    metric(
        "vipd_reconcile_duration_seconds_sum",
        "counter",
        "Total time spent in reconcile passes.",
        &[(String::new(), r.duration_us_total as f64 / 1e6)],
    );
    metric(
        "vipd_reconcile_last_duration_seconds",
        "gauge",
        "Duration of the last reconcile pass.",
        &[(String::new(), r.duration_us as f64 / 1e6)],
    );
    let stats = state.arp_stats();
    let total_sent: u64 = stats.vips.iter().map(|v| v.announcements_sent).sum();
    metric(
        "vipd_announcements_sent_total",
        "counter",
        "Announcement frames sent (gratuitous ARP, unsolicited Neighbor Advertisements).",
        &[(String::new(), total_sent as f64)],
    );
    let per_vip = |f: &dyn Fn(&crate::api::ArpStatsRow) -> u64| -> Vec<(String, f64)> {
        stats
            .vips
            .iter()
            .map(|v| {
                (
                    format!(
                        "{{vip=\"{}\",interface=\"{}\"}}",
                        v.vip,
                        v.interface.as_deref().unwrap_or("")
                    ),
                    f(v) as f64,
                )
            })
            .collect()
    };
    metric(
        "vipd_arp_requests_total",
        "counter",
        "Requests for the VIP seen by XDP (ARP requests; Neighbor Solicitations for IPv6).",
        &per_vip(&|v| v.requests),
    );
    metric(
        "vipd_arp_xdp_replies_total",
        "counter",
        "Requests answered by XDP (ARP replies; solicited Neighbor Advertisements for IPv6).",
        &per_vip(&|v| v.xdp_replies),
    );
    metric(
        "vipd_arp_announcements_seen_total",
        "counter",
        "Announcements about the VIP seen by XDP (ARP replies and gratuitous ARP; Neighbor Advertisements for IPv6).",
        &per_vip(&|v| v.announcements_seen),
    );
    metric(
        "vipd_arp_announcements_sent_total",
        "counter",
        "Announcement frames this agent sent for the VIP (gratuitous ARP; unsolicited Neighbor Advertisements for IPv6).",
        &per_vip(&|v| v.announcements_sent),
    );
    metric(
        "vipd_arp_foreign_claims_total",
        "counter",
        "Claims of a held VIP from a MAC that is not ours.",
        &per_vip(&|v| v.foreign_claims),
    );
    metric(
        "vipd_vip_held",
        "gauge",
        "1 if this node holds the VIP.",
        &per_vip(&|v| u64::from(v.held)),
    );
    let attached: Vec<(String, f64)> = e
        .xdp_attached
        .iter()
        .map(|a| {
            (
                format!(
                    "{{interface=\"{}\",mode=\"{}\",driver=\"{}\",reason=\"{}\"}}",
                    label(&a.interface),
                    a.mode,
                    label(a.driver.as_deref().unwrap_or("")),
                    a.reason_code
                ),
                1.0,
            )
        })
        .collect();
    metric(
        "vipd_xdp_attached",
        "gauge",
        "1 per interface the XDP program is attached to, with the mode in effect and why \
         (reason: configured, driver_native, driver_loses_native_tx, native_refused, fallback).",
        &attached,
    );
    out
}

/// A Prometheus label value: backslash, quote and newline escaped.
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
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` until `cancel`, then ends the open connections.
pub async fn serve(listener: TcpListener, state: ApiState, cancel: CancellationToken) {
    let conns = Connections::new("metrics", LIMITS);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    let state = state.clone();
                    conns.serve(stream, |s| async move { answer(s, &state).await });
                }
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    drop(listener);
    conns.close().await;
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
        ("200 OK", render(state), "text/plain; version=0.0.4")
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
