//! A delaying TCP proxy inside a node's namespace: the node's vipd reaches
//! every ZooKeeper server through it (127.0.0.1:2281+i -> server i), so the
//! nemesis can hold that node's ZooKeeper traffic back (this kernel has no
//! netem). Each chunk read is forwarded once it is `delay` old, in order.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::lab::{Netns, enter_netns};

/// The first local port: server i is proxied at 127.0.0.1:(BASE_PORT + i).
pub const BASE_PORT: u16 = 2281;

/// The proxies of one node (one per ZooKeeper server).
pub struct ZkProxy {
    delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    local: Vec<SocketAddr>,
}

impl ZkProxy {
    /// Listens in `ns` on 127.0.0.1:BASE_PORT+i for each of `servers`.
    pub fn start(ns: &Netns, servers: &[SocketAddr]) -> ZkProxy {
        let delay_ms = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut local = Vec::new();
        for (i, upstream) in servers.iter().copied().enumerate() {
            let addr = SocketAddr::from(([127, 0, 0, 1], BASE_PORT + i as u16));
            let listener = ns
                .in_netns(|| TcpListener::bind(addr))
                .unwrap_or_else(|e| panic!("ZooKeeper proxy: bind {addr} in {}: {e}", ns.name()));
            listener
                .set_nonblocking(true)
                .expect("non-blocking listener");
            let (delay_ms, stop, path) = (delay_ms.clone(), stop.clone(), ns.path());
            threads.push(std::thread::spawn(move || {
                accept_loop(listener, upstream, path, delay_ms, stop)
            }));
            local.push(addr);
        }
        ZkProxy {
            delay_ms,
            stop,
            threads,
            local,
        }
    }

    /// The connect string vipd gets: the local ends.
    pub fn connect_string(&self) -> String {
        self.local
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Holds every chunk this long before forwarding it (0: pass through).
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for ZkProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    ns: PathBuf,
    delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    // Upstream sockets must be made in the node's namespace: its routes,
    // its nftables rules, its links.
    enter_netns(&ns);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((down, _)) => {
                let _ = down.set_nonblocking(false);
                let Ok(up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) else {
                    // Refused or unreachable: the client sees the close and
                    // tries the next server, as it would without us.
                    continue;
                };
                let _ = up.set_nodelay(true);
                let _ = down.set_nodelay(true);
                pump_pair(down, up, &delay_ms, &stop);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Two directions, each a reader and a writer thread joined by a queue of
/// (due, bytes). When either side closes, both close.
fn pump_pair(a: TcpStream, b: TcpStream, delay_ms: &Arc<AtomicU64>, stop: &Arc<AtomicBool>) {
    for (from, to) in [
        (a.try_clone(), b.try_clone()),
        (b.try_clone(), a.try_clone()),
    ] {
        let (Ok(from), Ok(to)) = (from, to) else {
            return;
        };
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        let (delay_ms, stop) = (delay_ms.clone(), stop.clone());
        let reader_to = to.try_clone();
        std::thread::spawn(move || {
            let mut from = from;
            let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let due = Instant::now()
                            + Duration::from_millis(delay_ms.load(Ordering::Relaxed));
                        if tx.send((due, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            let _ = from.shutdown(Shutdown::Both);
            if let Ok(t) = reader_to {
                let _ = t.shutdown(Shutdown::Read);
            }
        });
        std::thread::spawn(move || {
            let mut to = to;
            for (due, bytes) in rx {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if to.write_all(&bytes).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Both);
        });
    }
}
