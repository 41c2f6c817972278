//! The local control socket: a Unix stream socket (mode 0600) where vipctl
//! sends one JSON request line and reads one JSON answer line.
//!
//! Requests: `{"request":"status"}` and `{"request":"arp_stats"}`. The
//! answers' fields are documented in docs/API.md and stay stable.

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};
use tokio_util::sync::CancellationToken;
use vipd_common::ArpCounters;

use crate::{
    announce::Announcer,
    connections::{Connections, Limits},
    coord::CoordStatus,
    engine::{EngineStatus, SharedXdp, VipState},
    vip::Vip,
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

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status,
    ArpStats,
}

/// One row of `vipctl arp stats`. For an IPv6 VIP the counters are of
/// Neighbor Discovery: solicitations for requests, the XDP program's
/// solicited advertisements for replies, advertisements of the VIP for
/// announcements, unsolicited Neighbor Advertisements sent for announcements
/// sent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ArpStatsRow {
    pub vip: Vip,
    pub interface: Option<String>,
    pub held: bool,
    /// ARP requests for the VIP seen by the XDP program.
    pub requests: u64,
    /// Requests answered by the XDP program.
    pub xdp_replies: u64,
    /// Replies and gratuitous announcements about the VIP seen coming in.
    pub announcements_seen: u64,
    /// Gratuitous ARP frames this agent sent for the VIP.
    pub announcements_sent: u64,
    /// Claims of the VIP from a MAC that is not ours, while we held it.
    pub foreign_claims: u64,
    pub last_foreign_mac: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ArpStats {
    pub role: String,
    pub xdp: bool,
    pub vips: Vec<ArpStatsRow>,
}

/// What the API server reads from.
#[derive(Clone)]
pub struct ApiState {
    pub node_id: String,
    pub mode: &'static str,
    pub engine: watch::Receiver<EngineStatus>,
    pub coord: Option<watch::Receiver<CoordStatus>>,
    pub xdp_program: Option<SharedXdp>,
    pub announcer: Announcer,
    /// Health checks (R18); `None` without `--check`.
    pub health: Option<watch::Receiver<crate::health::HealthStatus>>,
}

impl ApiState {
    pub fn status(&self) -> serde_json::Value {
        let e = self.engine.borrow().clone();
        let coord = self.coord.as_ref().map(|c| c.borrow().clone());
        serde_json::json!({
            "node_id": self.node_id,
            "mode": self.mode,
            "role": e.role,
            "term": e.term,
            "leader_terms": e.leader_terms,
            "vips": e.vips,
            "last_reconcile": e.last_reconcile,
            "xdp": {
                "enabled": self.xdp_program.is_some(),
                "setting": e.xdp_setting,
                "attached": e.xdp_attached,
                "errors": e.xdp_errors,
                // Per family; VIPs beyond it are served by the kernel alone.
                "capacity": vipd_common::MAX_VIPS,
                "over_capacity": e.xdp_over_capacity,
            },
            "conflicts": e.conflicts,
            "lease": e.lease,
            "announcements": self.announcer.stats(),
            "zookeeper": coord,
            "links": e.links,
            "probes": e.probes,
            "health": self.health.as_ref().map(|h| h.borrow().clone()),
        })
    }

    pub fn arp_stats(&self) -> ArpStats {
        let e = self.engine.borrow().clone();
        // ARP counters for IPv4 VIPs and NDP counters for IPv6 ones, in
        // the same fields (docs/API.md).
        let counters: BTreeMap<Vip, ArpCounters> = self
            .xdp_program
            .as_ref()
            .and_then(|xdp| xdp.lock().ok()?.counters().ok())
            .unwrap_or_default();
        let sent = self.announcer.stats();
        let mut vips: BTreeMap<Vip, ArpStatsRow> = BTreeMap::new();
        let all = e
            .vips
            .iter()
            .map(|v| v.vip)
            .chain(counters.keys().copied())
            .chain(sent.keys().copied());
        for vip in all {
            let c = counters.get(&vip).copied().unwrap_or_default();
            let conflict = e.conflicts.get(&vip);
            vips.entry(vip).or_insert_with(|| ArpStatsRow {
                vip,
                interface: e.interfaces.get(&vip).cloned(),
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
            role: serde_json::to_value(e.role)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            xdp: self.xdp_program.is_some(),
            vips: vips.into_values().collect(),
        }
    }
}

/// The XDP part of `vipctl status` as text, from a status answer: the
/// setting, then one line per interface with the mode in effect and why.
pub fn xdp_status_text(status: &serde_json::Value) -> String {
    let xdp = &status["xdp"];
    if xdp["enabled"] != serde_json::Value::Bool(true) {
        return "xdp off (--no-xdp): the kernel answers ARP\n".to_string();
    }
    let mut out = format!("xdp setting {}\n", xdp["setting"].as_str().unwrap_or("-"));
    for a in xdp["attached"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "xdp {}: {} ({}; driver {})\n",
            a["interface"].as_str().unwrap_or("?"),
            a["mode"].as_str().unwrap_or("?"),
            a["reason"].as_str().unwrap_or("?"),
            a["driver"].as_str().unwrap_or("unknown"),
        ));
    }
    for e in xdp["errors"].as_array().into_iter().flatten() {
        out.push_str(&format!("xdp error: {}\n", e.as_str().unwrap_or("?")));
    }
    out
}

/// Binds the control socket: creates its directory, refuses to steal a
/// socket another live vipd serves, replaces a stale one, sets mode 0600.
pub async fn bind(path: &Path) -> Result<UnixListener, ApiError> {
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
pub async fn serve(
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
    let answer = match serde_json::from_str::<Request>(line.trim()) {
        Ok(Request::Status) => state.status(),
        Ok(Request::ArpStats) => serde_json::to_value(state.arp_stats()).unwrap_or_default(),
        Err(e) => serde_json::json!({"error": format!("bad request {:?}: {e}", line.trim())}),
    };
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

/// Sends one request to the agent and returns its JSON answer.
pub async fn request(path: &Path, req: Request) -> Result<serde_json::Value, ApiError> {
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
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(ApiError::Protocol {
            path: path.to_path_buf(),
            detail: err.to_string(),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_text_shows_each_interface_with_its_mode_and_why() {
        let status = serde_json::json!({"xdp": {
            "enabled": true,
            "setting": "native",
            "attached": [{"interface": "eth0", "mode": "generic", "driver": "veth",
                          "reason": "fallback from native: 1 XDP_TX errors for 1 answers in 250 ms",
                          "reason_code": "fallback"}],
            "errors": [],
        }});
        assert_eq!(
            xdp_status_text(&status),
            "xdp setting native\n\
             xdp eth0: generic (fallback from native: 1 XDP_TX errors for 1 answers in 250 ms; driver veth)\n"
        );
        let off = serde_json::json!({"xdp": {"enabled": false, "attached": [], "errors": []}});
        assert_eq!(
            xdp_status_text(&off),
            "xdp off (--no-xdp): the kernel answers ARP\n"
        );
    }
}
