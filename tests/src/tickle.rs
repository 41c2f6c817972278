//! TCP sessions that outlive a VIP move, for the handoff tests: a server
//! on every node that keeps each connection open and idle, and clients
//! whose sockets are watched for the moment they fail.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::lab::Host;

/// A server on every address of `ip`'s family, port `port`, in a host's
/// namespace: accepts and keeps every connection open, sending nothing.
pub struct HoldServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HoldServer {
    pub fn start(host: &Host, ip: IpAddr, port: u16) -> HoldServer {
        let any: IpAddr = if ip.is_ipv4() {
            "0.0.0.0".parse().unwrap()
        } else {
            "::".parse().unwrap()
        };
        let listener = host.in_netns(|| {
            TcpListener::bind(SocketAddr::new(any, port))
                .unwrap_or_else(|e| panic!("listen on port {port}: {e}"))
        });
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        HoldServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HoldServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Idle client connections to one server, each watched for its first
/// error or hang-up.
pub struct Clients {
    failed: Arc<Mutex<Vec<Option<Instant>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub locals: Vec<SocketAddr>,
}

impl Clients {
    /// `n` connections from `host` to `server`.
    pub fn connect(host: &Host, server: SocketAddr, n: usize) -> Clients {
        let streams: Vec<TcpStream> = host.in_netns(|| {
            (0..n)
                .map(|i| {
                    TcpStream::connect_timeout(&server, Duration::from_secs(5))
                        .unwrap_or_else(|e| panic!("client {i} connecting to {server}: {e}"))
                })
                .collect()
        });
        let locals = streams.iter().map(|s| s.local_addr().unwrap()).collect();
        let failed = Arc::new(Mutex::new(vec![None; n]));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (failed.clone(), stop.clone());
        let thread = std::thread::spawn(move || watch(&streams, &f, &s));
        Clients {
            failed,
            stop,
            thread: Some(thread),
            locals,
        }
    }

    /// When each connection failed (`None`: not yet).
    pub fn failed(&self) -> Vec<Option<Instant>> {
        self.failed.lock().unwrap().clone()
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Polls every stream until stopped; records when each first reports an
/// error or hang-up (a reset).
fn watch(streams: &[TcpStream], failed: &Mutex<Vec<Option<Instant>>>, stop: &AtomicBool) {
    let mut fds: Vec<libc::pollfd> = streams
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: fds is a valid array of pollfd of the length passed.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        if n <= 0 {
            continue;
        }
        let now = Instant::now();
        let mut f = failed.lock().unwrap();
        for (i, p) in fds.iter_mut().enumerate() {
            if p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLRDHUP) != 0 {
                if f[i].is_none() {
                    f[i] = Some(now);
                }
                // Watched no more.
                p.fd = -1;
            }
        }
    }
}
