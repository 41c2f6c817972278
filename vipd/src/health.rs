//! Health checks: `tcp:HOST:PORT`, `http://...` and `exec:PATH ARGS`,
//! each run in a task of its own every interval under a timeout, turned into
//! healthy/unhealthy with rise/fall counts. An unhealthy node withdraws from
//! the election (coord); the state is shown in `vipctl status` and metrics.

use std::{
    path::PathBuf,
    str::FromStr,
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// One health check, as written on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckSpec {
    /// A TCP connect.
    Tcp { host: String, port: u16 },
    /// An HTTP/1.1 GET answered 2xx.
    Http {
        host: String,
        port: u16,
        path: String,
    },
    /// A program run without a shell; exit 0 is healthy.
    Exec { path: PathBuf, args: Vec<String> },
}

/// Why a check cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid check {spec:?}: {why}")]
pub struct InvalidCheck {
    pub spec: String,
    pub why: String,
}

/// `host:port` or `[v6]:port`.
fn host_port(spec: &str, s: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed '[' in the host".to_string())?;
        match after.strip_prefix(':') {
            Some(p) => (h.to_string(), Some(p)),
            None if after.is_empty() => (h.to_string(), None),
            None => return Err(format!("unexpected {after:?} after the host")),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (s.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = match (port, default_port) {
        (Some(p), _) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port {p:?} is not 1-65535"))?,
        (None, Some(d)) => d,
        (None, None) => return Err(format!("no port (write {spec}:PORT)")),
    };
    Ok((host, port))
}

impl FromStr for CheckSpec {
    type Err = InvalidCheck;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| InvalidCheck {
            spec: s.to_string(),
            why,
        };
        if let Some(rest) = s.strip_prefix("tcp:") {
            let (host, port) = host_port(s, rest, None).map_err(bad)?;
            return Ok(CheckSpec::Tcp { host, port });
        }
        if let Some(rest) = s.strip_prefix("http://") {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], rest[i..].to_string()),
                None => (rest, "/".to_string()),
            };
            if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad("the path contains white space".into()));
            }
            let (host, port) = host_port(s, authority, Some(80)).map_err(bad)?;
            return Ok(CheckSpec::Http { host, port, path });
        }
        if s.starts_with("https://") {
            return Err(bad(
                "https is not supported: check the plain port with tcp:HOST:PORT, or run a client with exec:".into(),
            ));
        }
        if let Some(rest) = s.strip_prefix("exec:") {
            let mut words = rest.split_whitespace();
            let path = PathBuf::from(
                words
                    .next()
                    .ok_or_else(|| bad("no program after exec:".into()))?,
            );
            if !path.is_absolute() {
                return Err(bad(format!(
                    "the program {} must be an absolute path (it runs without a shell and without PATH lookup)",
                    path.display()
                )));
            }
            let args = words.map(str::to_string).collect();
            return Ok(CheckSpec::Exec { path, args });
        }
        Err(bad(
            "use tcp:HOST:PORT, http://HOST[:PORT]/PATH or exec:/PATH [ARGS...]".into(),
        ))
    }
}

impl std::fmt::Display for CheckSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = |h: &str| {
            if h.contains(':') {
                format!("[{h}]")
            } else {
                h.to_string()
            }
        };
        match self {
            CheckSpec::Tcp { host, port } => write!(f, "tcp:{}:{port}", h(host)),
            CheckSpec::Http { host, port, path } => write!(f, "http://{}:{port}{path}", h(host)),
            CheckSpec::Exec { path, args } => {
                write!(f, "exec:{}", path.display())?;
                for a in args {
                    write!(f, " {a}")?;
                }
                Ok(())
            }
        }
    }
}

/// The check settings, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CheckSettings {
    pub checks: Vec<CheckSpec>,
    pub interval: Duration,
    pub timeout: Duration,
    pub fall: u32,
    pub rise: u32,
}

/// Rise/fall: consecutive results needed to change a check's state. The
/// first result decides at once (a node that starts with its service down
/// must not stand for `rise` intervals first, nor one with its service up
/// wait `rise` intervals).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RiseFall {
    /// `None` until the first result.
    pub healthy: Option<bool>,
    pub consecutive_ok: u32,
    pub consecutive_failed: u32,
}

impl RiseFall {
    /// Records one result; true when the state changed.
    pub(crate) fn record(&mut self, ok: bool, rise: u32, fall: u32) -> bool {
        if ok {
            self.consecutive_ok = self.consecutive_ok.saturating_add(1);
            self.consecutive_failed = 0;
        } else {
            self.consecutive_failed = self.consecutive_failed.saturating_add(1);
            self.consecutive_ok = 0;
        }
        let next = match self.healthy {
            None => ok,
            Some(false) if ok && self.consecutive_ok >= rise => true,
            Some(true) if !ok && self.consecutive_failed >= fall => false,
            Some(h) => h,
        };
        let changed = self.healthy != Some(next);
        self.healthy = Some(next);
        changed
    }
}

/// One check as operators see it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CheckStatus {
    pub check: String,
    #[serde(flatten)]
    pub state: RiseFall,
    pub runs: u64,
    pub failures: u64,
    /// Why the last run failed (None after a success).
    pub last_error: Option<String>,
    pub last_duration_ms: Option<u64>,
}

/// Every check; `healthy` is what the election reads.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HealthStatus {
    /// True with no checks, or when every check is healthy; false while a
    /// check has no result yet.
    pub healthy: bool,
    pub checks: Vec<CheckStatus>,
}

impl Default for HealthStatus {
    fn default() -> Self {
        HealthStatus {
            healthy: true,
            checks: Vec::new(),
        }
    }
}

impl HealthStatus {
    fn summarize(&mut self) {
        self.healthy = self.checks.iter().all(|c| c.state.healthy == Some(true));
    }

    /// The failing checks, for a log line or an error.
    pub(crate) fn failing(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| c.state.healthy != Some(true))
            .map(|c| c.check.clone())
            .collect()
    }
}

/// Starts one task per check; the watch carries every result.
pub(crate) fn spawn(
    settings: &CheckSettings,
    cancel: CancellationToken,
) -> (watch::Receiver<HealthStatus>, JoinSet<()>) {
    let initial = HealthStatus {
        healthy: settings.checks.is_empty(),
        checks: settings
            .checks
            .iter()
            .map(|c| CheckStatus {
                check: c.to_string(),
                state: RiseFall::default(),
                runs: 0,
                failures: 0,
                last_error: None,
                last_duration_ms: None,
            })
            .collect(),
    };
    let (tx, rx) = watch::channel(initial);
    let mut tasks = JoinSet::new();
    for (i, spec) in settings.checks.iter().cloned().enumerate() {
        let tx = tx.clone();
        let s = settings.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(s.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let started = Instant::now();
                let r = tokio::select! {
                    () = cancel.cancelled() => return,
                    r = run_once(&spec, s.timeout) => r,
                };
                let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                tx.send_modify(|h| {
                    let c = &mut h.checks[i];
                    c.runs += 1;
                    c.last_duration_ms = Some(took);
                    if let Err(e) = &r {
                        c.failures += 1;
                        c.last_error = Some(e.clone());
                    } else {
                        c.last_error = None;
                    }
                    if c.state.record(r.is_ok(), s.rise, s.fall) {
                        match (c.state.healthy, &r) {
                            (Some(true), _) => info!(check = %c.check, "health check healthy"),
                            (_, Err(e)) => {
                                warn!(check = %c.check, error = %e, "health check unhealthy")
                            }
                            _ => {}
                        }
                    }
                    h.summarize();
                });
            }
        });
    }
    (rx, tasks)
}

/// Runs one check under `timeout`; a hang counts as a failure at the timeout
/// (the exec child is killed when its future is dropped).
pub(crate) async fn run_once(spec: &CheckSpec, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, attempt(spec)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn attempt(spec: &CheckSpec) -> Result<(), String> {
    match spec {
        CheckSpec::Tcp { host, port } => TcpStream::connect((host.as_str(), *port))
            .await
            .map(drop)
            .map_err(|e| format!("connect to {host}:{port}: {e}")),
        CheckSpec::Http { host, port, path } => http_get(host, *port, path).await,
        CheckSpec::Exec { path, args } => {
            let no_env: [(&str, &str); 0] = [];
            let child = crate::sandbox::command(path, no_env)
                .args(args)
                .spawn()
                .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
            // Without a limit here: `run_once` holds the timeout, and
            // dropping this future at it kills the check's whole group.
            let status = crate::sandbox::wait_or_kill(child, Duration::MAX)
                .await
                .unwrap_or_else(|| Err(std::io::Error::from(std::io::ErrorKind::TimedOut)))
                .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("{} exited with {status}", path.display()))
            }
        }
    }
}

/// A GET answered 2xx (only the status line is read).
async fn http_get(host: &str, port: u16, path: &str) -> Result<(), String> {
    let mut s = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: vipd-check\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send to {authority}: {e}"))?;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 1024 {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read from {authority}: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or_default();
    let code = line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("{authority} answered no HTTP status line: {line:?}"))?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("GET {path} from {authority} answered {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> CheckSpec {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_the_three_kinds() {
        assert_eq!(
            p("tcp:192.0.2.10:3260"),
            CheckSpec::Tcp {
                host: "192.0.2.10".into(),
                port: 3260
            }
        );
        assert_eq!(
            p("tcp:[2001:db8::1]:80"),
            CheckSpec::Tcp {
                host: "2001:db8::1".into(),
                port: 80
            }
        );
        assert_eq!(
            p("http://127.0.0.1:8080/health?x=1"),
            CheckSpec::Http {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/health?x=1".into()
            }
        );
        assert_eq!(
            p("http://localhost"),
            CheckSpec::Http {
                host: "localhost".into(),
                port: 80,
                path: "/".into()
            }
        );
        assert_eq!(
            p("exec:/usr/bin/test -e /run/ok"),
            CheckSpec::Exec {
                path: "/usr/bin/test".into(),
                args: vec!["-e".into(), "/run/ok".into()]
            }
        );
        for s in [
            "tcp:192.0.2.10:3260",
            "http://127.0.0.1:8080/health",
            "exec:/bin/true a b",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
    }

    #[test]
    fn bad_checks_name_themselves() {
        for (s, why) in [
            ("tcp:192.0.2.1", "no port"),
            ("tcp:192.0.2.1:0", "1-65535"),
            ("tcp::80", "no host"),
            ("tcp:192.0.2.1:http", "1-65535"),
            ("https://192.0.2.1/", "https"),
            ("exec:", "no program"),
            ("exec:true", "absolute"),
            ("ping:192.0.2.1", "use tcp:"),
            ("http://[2001:db8::1/", "unclosed"),
        ] {
            let e = s.parse::<CheckSpec>().unwrap_err().to_string();
            assert!(e.contains(s) && e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn rise_and_fall() {
        let (rise, fall) = (2, 3);
        let mut r = RiseFall::default();
        // The first result decides.
        assert!(r.record(true, rise, fall));
        assert_eq!(r.healthy, Some(true));
        // Two failures are not enough, the third is.
        assert!(!r.record(false, rise, fall));
        assert!(!r.record(false, rise, fall));
        assert_eq!(r.healthy, Some(true));
        assert!(r.record(false, rise, fall));
        assert_eq!(r.healthy, Some(false));
        // One success, then a failure: the count starts again.
        assert!(!r.record(true, rise, fall));
        assert!(!r.record(false, rise, fall));
        assert!(!r.record(true, rise, fall));
        assert!(r.record(true, rise, fall));
        assert_eq!(r.healthy, Some(true));
        let mut r = RiseFall::default();
        assert!(r.record(false, rise, fall));
        assert_eq!(r.healthy, Some(false));
    }

    #[tokio::test]
    async fn a_hanging_check_fails_at_its_timeout() {
        let spec = p("exec:/bin/sleep 30");
        let t = Instant::now();
        let e = run_once(&spec, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(e.contains("200ms"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(
            run_once(&p("exec:/bin/true"), Duration::from_secs(5))
                .await
                .is_ok()
        );
        let e = run_once(&p("exec:/bin/false"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.contains("exit status: 1"), "{e}");
    }

    #[tokio::test]
    async fn tcp_and_http_checks() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 204 No Content\r\n\r\n",
                "HTTP/1.0 503 Busy\r\n\r\n",
            ] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await.unwrap();
                s.write_all(answer.as_bytes()).await.unwrap();
            }
            l
        });
        let t = Duration::from_secs(5);
        let http = p(&format!("http://127.0.0.1:{port}/health"));
        run_once(&http, t).await.unwrap();
        let e = run_once(&http, t).await.unwrap_err();
        assert!(e.contains("503"), "{e}");
        let l = server.await.unwrap();
        run_once(&p(&format!("tcp:127.0.0.1:{port}")), t)
            .await
            .unwrap();
        drop(l);
        let e = run_once(&p(&format!("tcp:127.0.0.1:{port}")), t)
            .await
            .unwrap_err();
        assert!(e.contains("connect"), "{e}");
    }
}
