//! One ZooKeeper session: connecting (with optional digest auth), the ACL
//! our znodes get, and a deadline around every request, because requests
//! issued while disconnected are queued by the client, not failed.

use std::{future::Future, path::Path, time::Duration};

use tracing::{debug, instrument};
use zookeeper_client::{
    Acl, AuthId, Client, CreateMode, CreateOptions, OneshotWatcher, Permission, SessionState,
};

/// Digest credentials (`user:password`) for ZooKeeper.
#[derive(Clone, PartialEq, Eq)]
pub struct ZkAuth {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for ZkAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password, also not in a debug log line.
        f.debug_struct("ZkAuth")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Why an auth file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ZkAuthError {
    #[error("cannot read ZooKeeper auth file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "ZooKeeper auth file {path} must hold one line `user:password` with a non-empty user and password"
    )]
    Format { path: String },
}

/// The name of the systemd credential (`LoadCredential=vipd-zk:...`) vipd
/// and vipctl read from `$CREDENTIALS_DIRECTORY` when no auth file is named.
pub const CREDENTIAL_NAME: &str = "vipd-zk";

/// Where the credential came from, for the start-up log and check-config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// `--zk-auth-file` (flag, environment or configuration file).
    File(std::path::PathBuf),
    /// `$CREDENTIALS_DIRECTORY/vipd-zk`, as systemd provides it.
    Systemd(std::path::PathBuf),
}

impl std::fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialSource::File(p) => write!(f, "auth file {}", p.display()),
            CredentialSource::Systemd(p) => write!(f, "systemd credential {}", p.display()),
        }
    }
}

impl ZkAuth {
    /// Reads `user:password` (one line; surrounding whitespace ignored).
    pub(crate) fn from_file(path: &Path) -> Result<Self, ZkAuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| ZkAuthError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(text.trim()).ok_or_else(|| ZkAuthError::Format {
            path: path.display().to_string(),
        })
    }

    /// Parses `user:password`; the password may itself contain ':'.
    pub fn parse(s: &str) -> Option<Self> {
        let (user, password) = s.split_once(':')?;
        if user.is_empty() || password.is_empty() || s.contains('\n') {
            return None;
        }
        Some(ZkAuth {
            user: user.to_string(),
            password: password.to_string(),
        })
    }

    /// The credential to use: the named file, else the systemd credential
    /// [`CREDENTIAL_NAME`] if the service manager passed one (an empty one,
    /// the unit's fallback when the file it loads is missing, is none).
    pub fn resolve(file: Option<&Path>) -> Result<Option<(ZkAuth, CredentialSource)>, ZkAuthError> {
        if let Some(path) = file {
            return Ok(Some((
                Self::from_file(path)?,
                CredentialSource::File(path.to_path_buf()),
            )));
        }
        let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) else {
            return Ok(None);
        };
        let path = Path::new(&dir).join(CREDENTIAL_NAME);
        match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Ok(text) if text.trim().is_empty() => Ok(None),
            Ok(text) => Self::parse(text.trim())
                .map(|a| Some((a, CredentialSource::Systemd(path.clone()))))
                .ok_or_else(|| ZkAuthError::Format {
                    path: path.display().to_string(),
                }),
            Err(source) => Err(ZkAuthError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    fn digest(&self) -> Vec<u8> {
        format!("{}:{}", self.user, self.password).into_bytes()
    }

    /// The id ZooKeeper's digest scheme gives a session authenticated with
    /// this credential: `user:base64(sha1(user:password))`. ACLs name it.
    pub(crate) fn digest_id(&self) -> String {
        use base64::Engine as _;
        let hash = sha1_smol::Sha1::from(self.digest()).digest().bytes();
        format!(
            "{}:{}",
            self.user,
            base64::engine::general_purpose::STANDARD.encode(hash)
        )
    }
}

/// How vipctl's session authenticates, and whether it may create the
/// cluster's tree open (`--zk-insecure`, without a credential).
#[derive(Clone, Debug, Default)]
pub struct ZkAccess {
    pub auth: Option<ZkAuth>,
    pub insecure: bool,
}

impl ZkAccess {
    /// With the cluster's credential.
    pub fn with(auth: ZkAuth) -> Self {
        ZkAccess {
            auth: Some(auth),
            insecure: false,
        }
    }

    /// Without a credential, creating an open tree if there is none.
    pub fn insecure() -> Self {
        ZkAccess {
            auth: None,
            insecure: true,
        }
    }
}

/// A ZooKeeper request that did not complete: the operation, the znode and why.
#[derive(Debug, thiserror::Error)]
pub enum ZkCallError {
    #[error("ZooKeeper {op} {path}: {source}")]
    Failed {
        op: &'static str,
        path: String,
        source: zookeeper_client::Error,
    },
    #[error("ZooKeeper {op} {path}: no answer within {after:?}")]
    Timeout {
        op: &'static str,
        path: String,
        after: Duration,
    },
}

impl ZkCallError {
    /// The ZooKeeper error, if the server (or the client library) answered.
    pub(crate) fn zk(&self) -> Option<&zookeeper_client::Error> {
        match self {
            ZkCallError::Failed { source, .. } => Some(source),
            ZkCallError::Timeout { .. } => None,
        }
    }

    pub(crate) fn is(&self, e: &zookeeper_client::Error) -> bool {
        self.zk() == Some(e)
    }
}

/// Runs one request under a deadline.
pub(crate) async fn call<T>(
    op: &'static str,
    path: &str,
    after: Duration,
    fut: impl Future<Output = Result<T, zookeeper_client::Error>>,
) -> Result<T, ZkCallError> {
    match tokio::time::timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(ZkCallError::Failed {
            op,
            path: path.to_string(),
            source,
        }),
        Err(_) => Err(ZkCallError::Timeout {
            op,
            path: path.to_string(),
            after,
        }),
    }
}

/// Creates the persistent directory `dir` (and its parents) if missing.
pub(crate) async fn mkdir(
    client: &Client,
    dir: &str,
    acl: &ZnodeAcl,
    deadline: Duration,
) -> Result<(), ZkCallError> {
    call(
        "mkdir",
        dir,
        deadline,
        client.mkdir(dir, &acl.options(CreateMode::Persistent)),
    )
    .await
}

/// Waits until the session behind `state` has ended for good (expired,
/// closed, auth failed), and says how.
pub(crate) async fn until_terminated(state: &mut zookeeper_client::StateWatcher) -> SessionState {
    loop {
        let s = state.changed().await;
        if s.is_terminated() {
            return s;
        }
    }
}

/// Completes when one of `watchers` fires; never, when there are none.
pub(crate) async fn any_fired(watchers: Vec<OneshotWatcher>) {
    if watchers.is_empty() {
        std::future::pending::<()>().await;
    }
    drop(futures::future::select_all(watchers.into_iter().map(|w| Box::pin(w.changed()))).await);
}

/// Follows what `read` reads, for the session's life, and returns the
/// session's terminal state. `publish` gets each read's outcome: the value,
/// or the error. After a read the next one comes when one of the watches it
/// set fires, or `reread` has passed (if set); after a failed read, or one
/// that set no watch, when `retry` has passed.
pub(crate) async fn follow<T, Fut>(
    client: &Client,
    reread: Option<Duration>,
    retry: Duration,
    mut read: impl FnMut() -> Fut,
    mut publish: impl FnMut(Result<T, ZkCallError>),
) -> SessionState
where
    Fut: Future<Output = Result<(T, Vec<OneshotWatcher>), ZkCallError>>,
{
    let mut state = client.state_watcher();
    loop {
        if state.peek_state().is_terminated() {
            return state.peek_state();
        }
        let (watchers, wait) = match read().await {
            Ok((value, watchers)) => {
                publish(Ok(value));
                let wait = if watchers.is_empty() {
                    Some(retry)
                } else {
                    reread
                };
                (watchers, wait)
            }
            Err(e) => {
                publish(Err(e));
                (Vec::new(), Some(retry))
            }
        };
        let wait = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = any_fired(watchers) => {}
            () = wait => {}
            s = until_terminated(&mut state) => return s,
        }
    }
}

/// The ACL of every znode vipd or vipctl creates: with a credential, all
/// rights for the cluster's digest identity and read for anyone, so anybody
/// can read the configuration but only credential holders change it;
/// without one (`--zk-insecure`), open to all (ZooKeeper's default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ZnodeAcl(Vec<Acl>);

impl ZnodeAcl {
    pub fn new(auth: Option<&ZkAuth>) -> Self {
        ZnodeAcl(match auth {
            None => vec![Acl::new(Permission::ALL, AuthId::anyone())],
            Some(auth) => vec![
                Acl::new(Permission::ALL, AuthId::new("digest", &auth.digest_id())),
                Acl::new(Permission::READ, AuthId::anyone()),
            ],
        })
    }

    /// The ACL of `/vipd`, the parent every cluster shares: as
    /// [`ZnodeAcl::new`], but anyone may also create in it, so that another
    /// cluster, with a credential of its own, can make its tree there.
    pub fn namespace(auth: Option<&ZkAuth>) -> Self {
        let mut acl = Self::new(auth);
        if auth.is_some() {
            acl.0[1] = Acl::new(Permission::READ | Permission::CREATE, AuthId::anyone());
        }
        acl
    }

    pub fn acls(&self) -> &[Acl] {
        &self.0
    }

    pub fn options(&self, mode: CreateMode) -> CreateOptions<'_> {
        mode.with_acls(self.0.as_slice().into())
    }
}

/// Opens a session. `fail_eagerly` gives up after one pass over the hosts
/// (vipctl); the agent keeps trying until the deadline.
#[instrument(skip(auth), fields(user = auth.map(|a| a.user.as_str())))]
pub async fn connect(
    hosts: &str,
    session_timeout: Duration,
    auth: Option<&ZkAuth>,
    fail_eagerly: bool,
    deadline: Duration,
) -> Result<Client, ZkCallError> {
    let mut connector = Client::connector()
        .with_session_timeout(session_timeout)
        // T/4 reports a dead connection sooner than the default 2T/5 (a
        // cut link measured at T = 1 s: Disconnected after about 250 ms
        // instead of 360 ms).
        .with_connection_timeout(session_timeout / 4);
    if let Some(auth) = auth {
        connector = connector.with_auth("digest", &auth.digest());
    }
    if fail_eagerly {
        connector = connector.with_fail_eagerly();
    }
    call("connect", hosts, deadline, connector.connect(hosts)).await
}

/// One server of a connect string: how it was written and where to probe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkHost {
    /// The element as written (`zk1:2181`, `tcp://zk1`), for messages and
    /// for a connect string of this server alone.
    pub written: String,
    pub host: String,
    pub port: u16,
}

/// A connect string `host:port[,host:port...][/chroot]` split into its
/// servers, with the rules the client library applies (port 2181 when
/// omitted, `[v6]:port`, an optional `tcp://`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkHosts {
    pub servers: Vec<ZkHost>,
    /// `/chroot` or empty.
    pub chroot: String,
}

impl ZkHosts {
    pub fn parse(s: &str) -> Result<ZkHosts, String> {
        let mut chroot = String::new();
        let mut servers = Vec::new();
        let elements: Vec<&str> = s.split(',').collect();
        for (i, element) in elements.iter().enumerate() {
            let mut hostport = element.strip_prefix("tcp://").unwrap_or(element);
            if hostport.starts_with("tcp+tls://") {
                return Err(format!("{element:?}: TLS is not supported"));
            }
            if let Some(slash) = hostport.find('/') {
                if i + 1 != elements.len() {
                    return Err(format!(
                        "{element:?}: a chroot (/path) may only follow the last server"
                    ));
                }
                chroot = hostport[slash..].to_string();
                hostport = &hostport[..slash];
            }
            let (host, port) = match hostport.strip_prefix('[') {
                Some(rest) => {
                    let (host, after) = rest
                        .split_once(']')
                        .ok_or_else(|| format!("{element:?}: missing ']'"))?;
                    match after {
                        "" => (host, ""),
                        p => (
                            host,
                            p.strip_prefix(':')
                                .ok_or_else(|| format!("{element:?}: expected ':' after ']'"))?,
                        ),
                    }
                }
                None => hostport.rsplit_once(':').unwrap_or((hostport, "")),
            };
            if host.is_empty() {
                return Err(format!("{element:?}: empty host name"));
            }
            let port = match port {
                "" => 2181,
                p => p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{element:?}: invalid port {p:?}"))?,
            };
            let scheme = if element.starts_with("tcp://") {
                "tcp://"
            } else {
                ""
            };
            servers.push(ZkHost {
                written: format!("{scheme}{hostport}"),
                host: host.to_string(),
                port,
            });
        }
        Ok(ZkHosts { servers, chroot })
    }
}

/// What one server did on the last attempt to open a session with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostOutcome {
    /// The deadline passed before this server's turn came.
    NotTried,
    /// The host name does not resolve.
    Unresolved(String),
    /// TCP connection refused: nothing listens there (yet).
    Refused,
    /// No answer to the TCP connect within this long.
    TimedOut(Duration),
    /// Another socket error (no route to host, ...).
    Io(String),
    /// The server took the TCP connection but opened no session: a
    /// ZooKeeper that is still starting (it already answers `ruok`), one
    /// without a quorum, or a stopped process.
    NoSession(String),
}

impl std::fmt::Display for HostOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostOutcome::NotTried => f.write_str("not tried (no time left)"),
            HostOutcome::Unresolved(e) => write!(f, "cannot resolve the host name: {e}"),
            HostOutcome::Refused => f.write_str("connection refused"),
            HostOutcome::TimedOut(d) => write!(f, "TCP connect timed out after {d:?}"),
            HostOutcome::Io(e) => f.write_str(e),
            HostOutcome::NoSession(why) => write!(
                f,
                "accepted the connection but opened no session ({why}): not serving yet \
                 (starting, without a quorum, or stopped)"
            ),
        }
    }
}

/// Why [`connect_within`] returned no session.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connect string cannot be used; nothing was tried.
    #[error("invalid ZooKeeper servers {hosts:?}: {reason}")]
    Invalid { hosts: String, reason: String },
    /// Every server was tried until the deadline; each one's last outcome.
    #[error("{}", gave_up(.within, *.rounds, .hosts))]
    GaveUp {
        within: Duration,
        rounds: u32,
        hosts: Vec<(String, HostOutcome)>,
    },
    /// A server answered with an error that retrying cannot fix.
    #[error("ZooKeeper {host}: {source}")]
    Refused {
        host: String,
        source: zookeeper_client::Error,
    },
}

fn gave_up(within: &Duration, rounds: u32, hosts: &[(String, HostOutcome)]) -> String {
    let mut s = format!(
        "no ZooKeeper session within {within:?} ({rounds} round{} over {} server{}); last outcome per server:",
        if rounds == 1 { "" } else { "s" },
        hosts.len(),
        if hosts.len() == 1 { "" } else { "s" },
    );
    for (host, outcome) in hosts {
        s.push_str(&format!("\n  {host}: {outcome}"));
    }
    s
}

/// The first retry comes this soon after a round failed, doubling up to
/// [`MAX_BACKOFF`]: a ZooKeeper that starts serving is found within a second.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Opens a session, trying each server in turn and again until `limit`
/// has passed (vipctl: a script that starts ZooKeeper and then configures
/// VIPs must not fail while the server is still starting). Each attempt
/// first opens a plain TCP connection to tell "refused" from "timed out"
/// from "took the connection but opened no session", because the client
/// library reports all of them as "no available hosts".
#[instrument(skip(auth), fields(user = auth.map(|a| a.user.as_str())))]
pub async fn connect_within(
    hosts: &str,
    session_timeout: Duration,
    auth: Option<&ZkAuth>,
    limit: Duration,
) -> Result<Client, ConnectError> {
    let parsed = ZkHosts::parse(hosts).map_err(|reason| ConnectError::Invalid {
        hosts: hosts.to_string(),
        reason,
    })?;
    let start = tokio::time::Instant::now();
    let deadline = start + limit;
    let per_try = session_timeout / 4;
    let mut outcomes: Vec<(String, HostOutcome)> = parsed
        .servers
        .iter()
        .map(|s| (s.written.clone(), HostOutcome::NotTried))
        .collect();
    let mut backoff = FIRST_BACKOFF;
    let mut rounds = 0;
    loop {
        rounds += 1;
        for (i, server) in parsed.servers.iter().enumerate() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let outcome = match probe(server, per_try.min(left)).await {
                Some(o) => o,
                None => {
                    let mut connector = Client::connector()
                        .with_session_timeout(session_timeout)
                        .with_connection_timeout(per_try)
                        .with_fail_eagerly();
                    if let Some(auth) = auth {
                        connector = connector.with_auth("digest", &auth.digest());
                    }
                    let alone = format!("{}{}", server.written, parsed.chroot);
                    let left = deadline
                        .saturating_duration_since(tokio::time::Instant::now())
                        .max(Duration::from_millis(1));
                    match tokio::time::timeout(left, connector.connect(&alone)).await {
                        Ok(Ok(client)) => return Ok(client),
                        Ok(Err(
                            e @ (zookeeper_client::Error::AuthFailed
                            | zookeeper_client::Error::BadArguments(_)),
                        )) => {
                            return Err(ConnectError::Refused {
                                host: server.written.clone(),
                                source: e,
                            });
                        }
                        // The library reports the cause of a one-server
                        // pass as NoHosts; anything else is worth showing.
                        Ok(Err(zookeeper_client::Error::NoHosts)) => {
                            HostOutcome::NoSession("the server closed it or did not answer".into())
                        }
                        Ok(Err(e)) => HostOutcome::NoSession(e.to_string()),
                        Err(_) => HostOutcome::NoSession(format!("no answer within {left:?}")),
                    }
                }
            };
            debug!(server = %server.written, outcome = %outcome, "no ZooKeeper session yet");
            outcomes[i].1 = outcome;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(ConnectError::GaveUp {
                within: limit,
                rounds,
                hosts: outcomes,
            });
        }
        tokio::time::sleep(backoff.min(left)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A plain TCP connect to `server`: `None` if it took the connection.
async fn probe(server: &ZkHost, limit: Duration) -> Option<HostOutcome> {
    let addrs = match tokio::time::timeout(
        limit,
        tokio::net::lookup_host((server.host.as_str(), server.port)),
    )
    .await
    {
        Ok(Ok(a)) => a.collect::<Vec<_>>(),
        Ok(Err(e)) => return Some(HostOutcome::Unresolved(e.to_string())),
        Err(_) => {
            return Some(HostOutcome::Unresolved(format!(
                "no answer within {limit:?}"
            )));
        }
    };
    let mut last = HostOutcome::Unresolved("no addresses".into());
    for addr in addrs {
        last = match tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => return None,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => HostOutcome::Refused,
            Ok(Err(e)) => HostOutcome::Io(e.to_string()),
            Err(_) => HostOutcome::TimedOut(limit),
        };
    }
    Some(last)
}

/// Closes the session (dropping the last handle sends CloseSession) and
/// waits, bounded, until the client reports it closed, so ephemeral znodes
/// go at once and not one session timeout later.
pub(crate) async fn close(client: Client, limit: Duration) {
    let mut state = client.state_watcher();
    drop(client);
    let _ = tokio::time::timeout(limit, async {
        while !state.peek_state().is_terminated() && !state.changed().await.is_terminated() {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_parsing() {
        let a = ZkAuth::parse("vipd:s3cr:et").unwrap();
        assert_eq!(a.user, "vipd");
        assert_eq!(a.password, "s3cr:et");
        assert!(!format!("{a:?}").contains("s3cr"));
        for bad in ["", "vipd", ":pw", "vipd:", "a:b\nc"] {
            assert!(ZkAuth::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn digest_ids_are_zookeepers() {
        // The example of ZooKeeper's administrator guide (superDigest).
        let a = ZkAuth::parse("super:test").unwrap();
        assert_eq!(a.digest_id(), "super:D/InIHSb7yEEbrWz8b9l71RjZJU=");
    }

    #[test]
    fn connect_strings_split_like_the_client_library() {
        let h = ZkHosts::parse("zk1:2181,tcp://zk2,[2001:db8::1]:2182/vipd").unwrap();
        let servers: Vec<(&str, &str, u16)> = h
            .servers
            .iter()
            .map(|s| (s.written.as_str(), s.host.as_str(), s.port))
            .collect();
        assert_eq!(
            servers,
            [
                ("zk1:2181", "zk1", 2181),
                ("tcp://zk2", "zk2", 2181),
                ("[2001:db8::1]:2182", "2001:db8::1", 2182)
            ]
        );
        assert_eq!(h.chroot, "/vipd");
        for bad in [
            "",
            "zk1:2181,",
            ":2181",
            "zk1:0",
            "zk1:x",
            "zk1/a,zk2",
            "[::1",
            "tcp+tls://zk1",
        ] {
            assert!(ZkHosts::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// A port on 127.0.0.1 that nothing listens on (bound, then released).
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn giving_up_names_every_server_and_what_it_did() {
        let refused = format!("127.0.0.1:{}", closed_port());
        // Takes TCP connections (the kernel's backlog) and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let silent = format!("127.0.0.1:{}", silent.local_addr().unwrap().port());
        let hosts = format!("{refused},{silent}");
        let started = std::time::Instant::now();
        let e = connect_within(&hosts, Duration::from_secs(1), None, Duration::from_secs(1))
            .await
            .expect_err("no server");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_secs(4),
            "{waited:?}"
        );
        let ConnectError::GaveUp { rounds, hosts, .. } = &e else {
            panic!("{e}");
        };
        assert!(*rounds >= 2, "{e}");
        assert_eq!(hosts[0], (refused.clone(), HostOutcome::Refused), "{e}");
        assert!(matches!(hosts[1].1, HostOutcome::NoSession(_)), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&format!("{refused}: connection refused"))
                && text.contains(&format!("{silent}: accepted the connection"))
                && text.contains("not serving yet"),
            "{text}"
        );
        // A connect string the library cannot use is refused before trying.
        let e = connect_within(
            "zk1:x",
            Duration::from_secs(1),
            None,
            Duration::from_secs(1),
        )
        .await
        .expect_err("invalid");
        assert!(matches!(e, ConnectError::Invalid { .. }), "{e}");
    }

    #[test]
    fn auth_file_errors_name_the_file() {
        let e = ZkAuth::from_file(Path::new("/nonexistent/vipd-auth")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vipd-auth"), "{e}");
        let dir = std::env::temp_dir().join(format!("vipd-auth-test-{}", std::process::id()));
        std::fs::write(&dir, "no-colon\n").unwrap();
        let e = ZkAuth::from_file(&dir).unwrap_err();
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
        std::fs::write(&dir, "vipd:pw\n").unwrap();
        assert_eq!(ZkAuth::from_file(&dir).unwrap().password, "pw");
        std::fs::remove_file(&dir).unwrap();
    }
}
