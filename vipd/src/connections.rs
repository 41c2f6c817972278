//! Bounded, tracked connection handling for vipd's servers (the control
//! socket and the metrics port, which may face a network): at most `max`
//! connections at once (one more is closed at once), each ended after
//! `timeout`, every one tracked and ended at shutdown.

use std::{future::Future, io, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, warn};

/// A listening socket of one of vipd's servers.
pub trait Listener: Send {
    type Stream: Send + 'static;
    fn accept_stream(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    async fn accept_stream(&self) -> io::Result<UnixStream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    async fn accept_stream(&self) -> io::Result<TcpStream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// How many connections a server takes at once and how long each may last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; one more is closed without an answer.
    pub max: usize,
    /// A connection still open after this (a slow or idle client) is closed.
    pub timeout: Duration,
}

/// The connections of one server.
pub struct Connections {
    what: &'static str,
    limits: Limits,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Connections {
    /// `what` names the server in logs.
    pub fn new(what: &'static str, limits: Limits) -> Connections {
        Connections {
            what,
            limits,
            slots: Arc::new(Semaphore::new(limits.max)),
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
        }
    }

    /// Serves `stream` with `handle` in a tracked task, or closes it at
    /// once (dropping it) when `max` connections are already open. Returns
    /// whether it was taken.
    pub fn serve<S, F, Fut>(&self, stream: S, handle: F) -> bool
    where
        S: Send + 'static,
        F: FnOnce(S) -> Fut + Send + 'static,
        Fut: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            debug!(
                server = self.what,
                max = self.limits.max,
                "too many connections: one closed"
            );
            return false;
        };
        let (what, timeout, cancel) = (self.what, self.limits.timeout, self.cancel.clone());
        self.tracker.spawn(async move {
            let mut work = Box::pin(tokio::time::timeout(timeout, handle(stream)));
            tokio::select! {
                () = cancel.cancelled() => {}
                r = &mut work => match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(server = what, error = %e, "client"),
                    Err(_) => debug!(server = what, ?timeout, "client timed out: closed"),
                },
            }
            // The slot frees before a timed-out or cancelled handler (and
            // the stream it owns) is dropped: a client that sees its
            // connection closed finds the slot free when it connects again.
            // (A handler that ends by itself drops its stream as it
            // returns, a moment before this.)
            drop(permit);
            drop(work);
        });
        true
    }

    /// Accepts connections on `listener` and serves each with `handle`
    /// until `cancel`, then closes the listener and ends the open
    /// connections. A failed accept (out of file descriptors) is logged and
    /// retried after a pause rather than spinning.
    pub async fn accept_until<L, F, Fut>(self, listener: L, cancel: &CancellationToken, handle: F)
    where
        L: Listener,
        F: Fn(L::Stream) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = io::Result<()>> + Send + 'static,
    {
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                conn = listener.accept_stream() => match conn {
                    Ok(stream) => {
                        self.serve(stream, handle.clone());
                    }
                    Err(e) => {
                        warn!(error = %e, "{} accept failed", self.what);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        drop(listener);
        self.close().await;
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.limits.max - self.slots.available_permits()
    }

    /// Ends every open connection and waits until their tasks are done.
    pub async fn close(self) {
        self.tracker.close();
        self.cancel.cancel();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cap_holds_and_close_ends_open_connections() {
        let conns = Connections::new(
            "test",
            Limits {
                max: 2,
                timeout: Duration::from_secs(3600),
            },
        );
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let idle = |tx: tokio::sync::mpsc::UnboundedSender<()>| async move {
            std::future::pending::<()>().await;
            drop(tx);
            Ok(())
        };
        assert!(conns.serve(tx.clone(), idle));
        assert!(conns.serve(tx.clone(), idle));
        assert!(
            !conns.serve(tx.clone(), idle),
            "a third connection was taken"
        );
        assert_eq!(conns.open(), 2);
        drop(tx);
        // Closing ends the two pending handlers (dropping their senders).
        conns.close().await;
        assert!(rx.recv().await.is_none());
    }

    /// Records the free slots at the moment it is dropped.
    struct Probe {
        slots: Arc<Semaphore>,
        seen: Arc<std::sync::Mutex<Option<usize>>>,
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            *self.seen.lock().unwrap() = Some(self.slots.available_permits());
        }
    }

    #[tokio::test]
    async fn a_timed_out_connection_frees_its_slot_before_its_stream_closes() {
        let conns = Connections::new(
            "test",
            Limits {
                max: 1,
                timeout: Duration::from_millis(10),
            },
        );
        let seen = Arc::new(std::sync::Mutex::new(None));
        let probe = Probe {
            slots: Arc::clone(&conns.slots),
            seen: Arc::clone(&seen),
        };
        assert!(conns.serve(probe, |p| async move {
            std::future::pending::<()>().await;
            drop(p);
            Ok(())
        }));
        conns.tracker.close();
        conns.tracker.wait().await;
        assert_eq!(
            *seen.lock().unwrap(),
            Some(1),
            "the stream of a timed-out connection closed while it still held its slot"
        );
    }

    #[tokio::test]
    async fn a_connection_past_its_timeout_frees_its_slot() {
        let conns = Connections::new(
            "test",
            Limits {
                max: 1,
                timeout: Duration::from_millis(20),
            },
        );
        assert!(conns.serve((), |()| std::future::pending()));
        for _ in 0..500 {
            if conns.open() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(conns.open(), 0, "the timed out connection kept its slot");
        assert!(conns.serve((), |()| async { Ok(()) }));
        conns.close().await;
    }
}
