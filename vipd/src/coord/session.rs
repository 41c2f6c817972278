//! One ZooKeeper session: connecting (with optional digest auth), the ACL
//! our znodes get, and a deadline around every request, because requests
//! issued while disconnected are queued by the client, not failed.

use std::{future::Future, path::Path, time::Duration};

use tracing::instrument;
use zookeeper_client::{Acl, AuthId, Client, CreateMode, CreateOptions, Permission};

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

impl ZkAuth {
    /// Reads `user:password` (one line; surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self, ZkAuthError> {
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

    fn digest(&self) -> Vec<u8> {
        format!("{}:{}", self.user, self.password).into_bytes()
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
    pub fn zk(&self) -> Option<&zookeeper_client::Error> {
        match self {
            ZkCallError::Failed { source, .. } => Some(source),
            ZkCallError::Timeout { .. } => None,
        }
    }

    pub fn is(&self, e: &zookeeper_client::Error) -> bool {
        self.zk() == Some(e)
    }
}

/// Runs one request under a deadline.
pub async fn call<T>(
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

/// The ACL of every znode vipd or vipctl creates: without auth, open to
/// all (ZooKeeper's default); with auth, full rights for the authenticated
/// digest identity (the `auth` scheme: the server substitutes the session's
/// `digest:user:<hash>` id, so we never compute the hash) and read for anyone,
/// so anybody can read the configuration but only credential holders write.
#[derive(Clone, Debug)]
pub struct ZnodeAcl(Vec<Acl>);

impl ZnodeAcl {
    pub fn new(auth: Option<&ZkAuth>) -> Self {
        ZnodeAcl(match auth {
            None => vec![Acl::new(Permission::ALL, AuthId::anyone())],
            Some(_) => vec![
                Acl::new(Permission::ALL, AuthId::authed()),
                Acl::new(Permission::READ, AuthId::anyone()),
            ],
        })
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
        // FACTS: T/4 reports a dead connection sooner than the default 2T/5.
        .with_connection_timeout(session_timeout / 4);
    if let Some(auth) = auth {
        connector = connector.with_auth("digest", &auth.digest());
    }
    if fail_eagerly {
        connector = connector.with_fail_eagerly();
    }
    call("connect", hosts, deadline, connector.connect(hosts)).await
}

/// Closes the session (dropping the last handle sends CloseSession) and
/// waits, bounded, until the client reports it closed, so ephemeral znodes
/// go at once and not one session timeout later.
pub async fn close(client: Client, limit: Duration) {
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
