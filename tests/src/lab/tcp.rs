//! TCP in the lab: a banner server a client can tell nodes apart by, and
//! a client that reads what it says.

use std::io::{ErrorKind, Read, Write as _};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::netns::Netns;
use super::process::StoppableThread;

impl Netns {
    /// A TCP server thread in this namespace on `ip:port`, IPv4 or IPv6
    /// (bound with IP_FREEBIND, so `ip` may be a VIP that is not there yet;
    /// use 0.0.0.0 or :: to serve every address of a family). Each
    /// connection gets the banner `served-by <host>\n` and is closed. Stops
    /// on drop.
    pub fn tcp_echo_server(&self, ip: impl Into<IpAddr>, port: u16) -> ServerHandle {
        let banner = format!("served-by {}\n", self.label);
        let addr = SocketAddr::new(ip.into(), port);
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, served) = (stop.clone(), served.clone());
            self.spawn_opened(
                &format!("tcp server on {addr}"),
                move || listen(addr),
                move |listener| {
                    while !stop.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((mut stream, _)) => {
                                // Counted before the banner is written: a client
                                // that has read the banner must see the count
                                // (counting after the write raced the client).
                                served.fetch_add(1, Ordering::SeqCst);
                                let _ = stream.set_nonblocking(false);
                                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                                let _ = stream.write_all(banner.as_bytes());
                                let _ = stream.shutdown(Shutdown::Both);
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                },
            )
        };
        ServerHandle {
            addr,
            served,
            _thread: StoppableThread::new(stop, thread),
        }
    }

    /// Connects to `ip:port` from this namespace and reads what the server
    /// sends until it closes (or `timeout`). `None` when the connection fails
    /// or nothing arrives.
    pub fn tcp_probe(&self, ip: impl Into<IpAddr>, port: u16, timeout: Duration) -> Option<String> {
        let addr = SocketAddr::new(ip.into(), port);
        self.in_netns(|| {
            let deadline = Instant::now() + timeout;
            let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 512];
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                    break;
                }
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            (!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).into_owned())
        })
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // One family per server, as for IPv4.
        socket.set_only_v6(true)?;
        socket.set_freebind_ipv6(true)?;
    } else {
        socket.set_freebind(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A TCP banner server thread; stops (and closes its socket) on drop.
pub struct ServerHandle {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    /// Stopped when this is dropped.
    _thread: StoppableThread,
}

impl ServerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far (counted before the banner is written).
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}
