//! The local control socket: a Unix stream socket (mode 0600) where vipctl
//! sends one JSON request line and reads one JSON answer line.
//!
//! Requests: `{"request":"status"}` and `{"request":"arp_stats"}`. The
//! answers are vipd-api's types (docs/API.md describes them); their fields
//! stay stable.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::de::DeserializeOwned;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};
use tokio_util::sync::CancellationToken;
use vipd_common::ArpCounters;

use crate::{
    announce::Announcer,
    config::XdpMode,
    connections::{Connections, Limits},
    coord::CoordStatus,
    engine::{EngineStatus, SharedXdp, VipState},
    vip::Vip,
    xdp::{AttachedMode, XdpAttachment},
};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot create the control socket directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on the control socket {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another vipd is already serving the control socket {0}")]
    InUse(PathBuf),
    #[error(
        "cannot reach vipd at {path}: {source} (is vipd running, and is this its --api-socket?)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to vipd at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vipd at {path} answered something unreadable: {detail}")]
    Protocol { path: PathBuf, detail: String },
}

pub use vipd_api::{ArpStats, ArpStatsRow, Request, Status};

/// What the API server reads from.
#[derive(Clone)]
pub(crate) struct ApiState {
    pub node_id: String,
    pub mode: &'static str,
    pub engine: watch::Receiver<EngineStatus>,
    pub coord: Option<watch::Receiver<CoordStatus>>,
    pub xdp_program: Option<SharedXdp>,
    pub announcer: Announcer,
    /// The TCP handoff's counters; `None` when it is off.
    pub tickler: Option<crate::net::tickle::Tickler>,
    /// Health checks, which decide whether the node stands; `None` without
    /// `--check`.
    pub health: Option<watch::Receiver<crate::health::HealthStatus>>,
}

impl ApiState {
    /// The answer to `{"request":"status"}`.
    pub(crate) fn status(&self) -> Status {
        let e = self.engine.borrow().clone();
        let (pinned, bpf_dir) = self.xdp_program.as_ref().map_or((false, None), |x| {
            let x = x.lock().expect("XDP program lock");
            let dir = x.bpf_dir().map(|d| d.root().display().to_string());
            (x.fence_outlives_agent(), dir)
        });
        let coord = self.coord.as_ref().map(|c| c.borrow().clone());
        Status {
            node_id: self.node_id.clone(),
            mode: self.mode.to_string(),
            role: e.role,
            term: e.term,
            leader_terms: e.leader_terms,
            vips: e.vips,
            last_reconcile: e.last_reconcile,
            xdp: vipd_api::XdpStatus {
                enabled: self.xdp_program.is_some(),
                setting: e.xdp_setting.map(xdp_setting),
                attached: e.xdp_attached.into_iter().map(xdp_attachment).collect(),
                errors: e.xdp_errors,
                // Per family; VIPs beyond it are served by the kernel alone.
                capacity: vipd_common::MAX_VIPS,
                over_capacity: e.xdp_over_capacity,
                pinned,
                bpf_dir,
                fence: fence_now(&e.fence),
            },
            conflicts: by_ip(e.conflicts),
            lease: e.lease,
            announcements: by_ip(self.announcer.stats().into_iter().map(|(v, a)| {
                let a = vipd_api::AnnounceStats {
                    frames_sent: a.frames_sent,
                    last_sent_unix_ms: a.last_sent_unix_ms,
                    errors: a.errors,
                    dropped: a.dropped,
                };
                (v, a)
            })),
            tcp_handoff: by_ip(
                self.tickler
                    .as_ref()
                    .map(|t| t.stats())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(v, h)| {
                        let h = vipd_api::TcpHandoffStats {
                            published: h.published,
                            publish_overflow: h.publish_overflow,
                            tickles_sent: h.tickles_sent,
                            tickle_errors: h.tickle_errors,
                            aborted: h.aborted,
                            not_aborted: h.not_aborted,
                        };
                        (v, h)
                    }),
            ),
            zookeeper: coord.map(zookeeper_status),
            links: e.links,
            probes: e.probes,
            health: self.health.as_ref().map(|h| health_status(&h.borrow())),
        }
    }

    pub(crate) fn arp_stats(&self) -> ArpStats {
        let e = self.engine.borrow().clone();
        // ARP counters for IPv4 VIPs and NDP counters for IPv6 ones, in
        // the same fields (docs/API.md).
        let counters: BTreeMap<Vip, ArpCounters> = self
            .xdp_program
            .as_ref()
            .and_then(|xdp| xdp.lock().ok()?.counters().ok())
            .unwrap_or_default();
        // Keyed by address, as the engine's VIP entries are.
        let counters = by_ip(counters);
        let sent = by_ip(self.announcer.stats());
        let conflicts = by_ip(e.conflicts);
        let interfaces = by_ip(e.interfaces);
        let mut vips: BTreeMap<IpAddr, ArpStatsRow> = BTreeMap::new();
        let all = e
            .vips
            .iter()
            .map(|v| v.vip)
            .chain(counters.keys().copied())
            .chain(sent.keys().copied());
        for vip in all {
            let c = counters.get(&vip).copied().unwrap_or_default();
            let conflict = conflicts.get(&vip);
            vips.entry(vip).or_insert_with(|| ArpStatsRow {
                vip,
                interface: interfaces.get(&vip).cloned(),
                held: e
                    .vips
                    .iter()
                    .any(|v| v.vip == vip && v.state == VipState::Held),
                requests: c.requests,
                xdp_replies: c.xdp_replies,
                announcements_seen: c.announcements,
                announcements_sent: sent.get(&vip).map_or(0, |s| s.frames_sent),
                foreign_claims: c.foreign_claims,
                last_foreign_mac: conflict.and_then(|c| c.last_mac.clone()),
            });
        }
        ArpStats {
            role: e.role,
            xdp: self.xdp_program.is_some(),
            vips: vips.into_values().collect(),
        }
    }
}

/// A map keyed by VIP as the API keys it: by address.
fn by_ip<T>(m: impl IntoIterator<Item = (Vip, T)>) -> BTreeMap<IpAddr, T> {
    m.into_iter().map(|(v, t)| (v.ip(), t)).collect()
}

fn xdp_setting(m: XdpMode) -> vipd_api::XdpSetting {
    match m {
        XdpMode::Auto => vipd_api::XdpSetting::Auto,
        XdpMode::Native => vipd_api::XdpSetting::Native,
        XdpMode::Generic => vipd_api::XdpSetting::Generic,
    }
}

fn xdp_attachment(a: XdpAttachment) -> vipd_api::XdpAttachment {
    vipd_api::XdpAttachment {
        interface: a.interface,
        mode: match a.mode {
            AttachedMode::Native => vipd_api::AttachedMode::Native,
            AttachedMode::Generic => vipd_api::AttachedMode::Generic,
        },
        driver: a.driver,
        reason: a.reason,
        reason_code: a.reason_code.to_string(),
    }
}

fn zookeeper_status(c: CoordStatus) -> vipd_api::ZooKeeperStatus {
    let ips = |v: Vec<Vip>| v.into_iter().map(Vip::ip).collect();
    vipd_api::ZooKeeperStatus {
        session: c.session,
        leader: c.leader,
        is_leader: c.is_leader,
        term: c.term,
        fenced: c.fenced,
        services: c
            .services
            .into_iter()
            .map(|(name, s)| {
                let s = vipd_api::ServiceStatus {
                    vips: ips(s.vips),
                    refused: s
                        .refused
                        .into_iter()
                        .map(|r| vipd_api::RefusedValue {
                            value: r.value,
                            reason: r.reason,
                        })
                        .collect(),
                    error: s.error,
                    last_good: s.last_good,
                };
                (name, s)
            })
            .collect(),
        duplicate_vips: ips(c.duplicate_vips),
        unplaceable: by_ip(c.unplaceable),
        last_error: c.last_error,
        withdrawn: c.withdrawn,
        lease_ms: c.lease_ms,
        granted_session_ms: c.granted_session_ms,
        lease_adjusted: c.lease_adjusted,
        tree_acl: vipd_api::TreeAcl {
            open_znodes: c.tree_acl.open_znodes,
            examples: c.tree_acl.examples,
        },
    }
}

fn health_status(h: &crate::health::HealthStatus) -> vipd_api::HealthStatus {
    vipd_api::HealthStatus {
        healthy: h.healthy,
        checks: h
            .checks
            .iter()
            .map(|c| vipd_api::CheckStatus {
                check: c.check.clone(),
                healthy: c.state.healthy,
                consecutive_ok: c.state.consecutive_ok,
                consecutive_failed: c.state.consecutive_failed,
                runs: c.runs,
                failures: c.failures,
                last_error: c.last_error.clone(),
                last_duration_ms: c.last_duration_ms,
            })
            .collect(),
    }
}

/// The XDP part of `vipctl status` as text: the setting, then one line per
/// interface with the mode in effect and why.
pub fn xdp_status_text(xdp: &vipd_api::XdpStatus) -> String {
    if !xdp.enabled {
        return "xdp off (--no-xdp): the kernel answers ARP\n".to_string();
    }
    let setting = match xdp.setting {
        Some(vipd_api::XdpSetting::Auto) => "auto",
        Some(vipd_api::XdpSetting::Native) => "native",
        Some(vipd_api::XdpSetting::Generic) => "generic",
        None => "-",
    };
    let mut out = format!("xdp setting {setting}\n");
    for a in &xdp.attached {
        out.push_str(&format!(
            "xdp {}: {} ({}; driver {})\n",
            a.interface,
            a.mode.as_str(),
            a.reason,
            a.driver.as_deref().unwrap_or("unknown"),
        ));
    }
    match &xdp.bpf_dir {
        Some(dir) if xdp.pinned => out.push_str(&format!("fence pinned in {dir}\n")),
        Some(dir) => out.push_str(&format!(
            "fence partly pinned in {dir}: some links are not (see xdp errors)\n"
        )),
        None => out.push_str("fence not pinned: it dies with vipd\n"),
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    for f in &xdp.fence {
        let until = match f.until_unix_ms {
            Some(t) => format!(" for {} ms", t.saturating_sub(now_ms)),
            None if f.state == vipd_api::FenceState::Fenced => " until cleared".to_string(),
            None => String::new(),
        };
        out.push_str(&format!("fence {}: {}{until}\n", f.vip, f.state.as_str()));
    }
    for e in &xdp.errors {
        out.push_str(&format!("xdp error: {e}\n"));
    }
    out
}

/// Binds the control socket: creates its directory, refuses to steal a
/// socket another live vipd serves, replaces a stale one, sets mode 0600.
pub(crate) async fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|source| ApiError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ApiError::InUse(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| ApiError::Listen {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        ApiError::Listen {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

/// At most this many control socket clients at once, each for at most 5 s.
pub const LIMITS: Limits = Limits {
    max: 16,
    timeout: Duration::from_secs(5),
};

/// Serves requests until `cancel`, then ends the open connections and
/// removes the socket file.
pub(crate) async fn serve(
    listener: UnixListener,
    path: PathBuf,
    state: ApiState,
    cancel: CancellationToken,
) {
    Connections::new("control socket", LIMITS)
        .accept_until(listener, &cancel, move |s| {
            let state = state.clone();
            async move { handle(s, &state).await }
        })
        .await;
    let _ = std::fs::remove_file(&path);
}

async fn handle(stream: UnixStream, state: &ApiState) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r).take(64 * 1024);
    reader.read_line(&mut line).await?;
    // Through `Value`, whose objects keep their keys sorted: the answer's
    // bytes stay what scripts have seen so far.
    let answer = match serde_json::from_str::<Request>(line.trim()) {
        Ok(Request::Status) => serde_json::to_value(state.status()),
        Ok(Request::ArpStats) => serde_json::to_value(state.arp_stats()),
        Err(e) => serde_json::to_value(vipd_api::ErrorAnswer {
            error: format!("bad request {:?}: {e}", line.trim()),
        }),
    }
    .unwrap_or_default();
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

/// Sends one request to the agent and returns its answer, read as `T`
/// ([`Status`] for a status request, [`ArpStats`] for ARP statistics).
pub async fn request<T: DeserializeOwned>(path: &Path, req: Request) -> Result<T, ApiError> {
    let io = |source| ApiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ApiError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(&req).unwrap_or_default();
    line.push(b'\n');
    w.write_all(&line).await.map_err(io)?;
    let mut answer = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        BufReader::new(r).read_line(&mut answer),
    )
    .await
    .map_err(|_| ApiError::Protocol {
        path: path.to_path_buf(),
        detail: "no answer within 5 s".into(),
    })?
    .map_err(io)?;
    let v: serde_json::Value =
        serde_json::from_str(answer.trim()).map_err(|e| ApiError::Protocol {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if let Ok(e) = serde_json::from_value::<vipd_api::ErrorAnswer>(v.clone()) {
        return Err(ApiError::Protocol {
            path: path.to_path_buf(),
            detail: e.error,
        });
    }
    serde_json::from_value(v).map_err(|e| ApiError::Protocol {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Each held-map entry's fence state now, with its end on the wall clock.
fn fence_now(
    entries: &std::collections::BTreeMap<crate::vip::Vip, (u64, u64)>,
) -> Vec<vipd_api::VipFence> {
    let now = std::time::Instant::now();
    let now_ns = crate::xdp::program_ns(now);
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    entries
        .iter()
        .map(|(vip, (lease_end, fence_end))| {
            let (state, until) = crate::engine::fence_state(now_ns, *lease_end, *fence_end);
            vipd_api::VipFence {
                vip: (*vip).into(),
                state,
                until_unix_ms: until
                    .map(|t| unix_ms.saturating_add(t.saturating_sub(now_ns) / 1_000_000)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_text_shows_each_interface_with_its_mode_and_why() {
        let xdp = vipd_api::XdpStatus {
            enabled: true,
            setting: Some(vipd_api::XdpSetting::Native),
            attached: vec![vipd_api::XdpAttachment {
                interface: "eth0".into(),
                mode: vipd_api::AttachedMode::Generic,
                driver: Some("veth".into()),
                reason: "fallback from native: 1 XDP_TX errors for 1 answers in 250 ms".into(),
                reason_code: "fallback".into(),
            }],
            errors: vec![],
            capacity: vipd_common::MAX_VIPS,
            over_capacity: 0,
            pinned: false,
            bpf_dir: None,
            fence: vec![],
        };
        assert_eq!(
            xdp_status_text(&xdp),
            "xdp setting native\n\
             xdp eth0: generic (fallback from native: 1 XDP_TX errors for 1 answers in 250 ms; driver veth)\n\
             fence not pinned: it dies with vipd\n"
        );
        let pinned = vipd_api::XdpStatus {
            pinned: true,
            bpf_dir: Some("/sys/fs/bpf/vipd/vipd".into()),
            fence: vec![
                vipd_api::VipFence {
                    vip: "192.0.2.1".parse().unwrap(),
                    state: vipd_api::FenceState::Serving,
                    until_unix_ms: None,
                },
                vipd_api::VipFence {
                    vip: "192.0.2.2".parse().unwrap(),
                    state: vipd_api::FenceState::Fenced,
                    until_unix_ms: None,
                },
            ],
            attached: vec![],
            ..xdp.clone()
        };
        assert_eq!(
            xdp_status_text(&pinned),
            "xdp setting native\n\
             fence pinned in /sys/fs/bpf/vipd/vipd\n\
             fence 192.0.2.1: serving\n\
             fence 192.0.2.2: fenced until cleared\n"
        );
        let off = vipd_api::XdpStatus {
            enabled: false,
            setting: None,
            attached: vec![],
            ..xdp
        };
        assert_eq!(
            xdp_status_text(&off),
            "xdp off (--no-xdp): the kernel answers ARP\n"
        );
    }
}
