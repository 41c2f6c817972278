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

/// A TCP reset seen on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reset {
    /// The Ethernet source: which node sent it.
    pub eth_src: [u8; 6],
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// The IP header and the TCP segment of an Ethernet frame (untagged), with
/// the source and destination addresses.
fn tcp_of(frame: &[u8]) -> Option<(IpAddr, IpAddr, &[u8])> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    match ethertype {
        0x0800 => {
            if ip.first()? >> 4 != 4 || *ip.get(9)? != 6 {
                return None;
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            Some((src.into(), dst.into(), ip.get(ihl..)?))
        }
        0x86dd => {
            // Only a TCP segment right after the fixed header.
            if ip.first()? >> 4 != 6 || *ip.get(6)? != 6 {
                return None;
            }
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            Some((src.into(), dst.into(), ip.get(40..)?))
        }
        _ => None,
    }
}

impl Reset {
    /// `frame` (a whole Ethernet frame) as a TCP segment with RST set.
    pub fn parse(frame: &[u8]) -> Option<Reset> {
        let (src, dst, tcp) = tcp_of(frame)?;
        if tcp.get(13)? & 0x04 == 0 {
            return None;
        }
        let port = |i: usize| Some(u16::from_be_bytes([*tcp.get(i)?, *tcp.get(i + 1)?]));
        Some(Reset {
            eth_src: frame.get(6..12)?.try_into().ok()?,
            src: SocketAddr::new(src, port(0)?),
            dst: SocketAddr::new(dst, port(2)?),
        })
    }
}

/// A capture filter: TCP resets.
pub fn is_reset(frame: &[u8]) -> bool {
    Reset::parse(frame).is_some()
}

/// A capture filter: announcements (gratuitous ARP, unsolicited NA) and
/// TCP resets, what a move and its handoff look like from a client.
pub fn is_announcement_or_reset(frame: &[u8]) -> bool {
    crate::lab::is_announcement(frame) || Reset::parse(frame).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(v6: bool, flags: u8) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        if v6 {
            f.extend([0x86, 0xdd, 0x60, 0, 0, 0, 0, 20, 6, 64]);
            f.extend(
                [0x20, 0x01, 0x0d, 0xb8]
                    .iter()
                    .chain(&[0; 11])
                    .chain(&[0x10]),
            );
            f.extend(
                [0x20, 0x01, 0x0d, 0xb8]
                    .iter()
                    .chain(&[0; 11])
                    .chain(&[0x50]),
            );
        } else {
            f.extend([0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
            f.extend([192, 0, 2, 100, 192, 0, 2, 50]);
        }
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&3260u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&40000u16.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        f.extend(tcp);
        f
    }

    #[test]
    fn finds_resets_of_both_families() {
        let r = Reset::parse(&segment(false, 0x14)).expect("an IPv4 reset");
        assert_eq!(r.src, "192.0.2.100:3260".parse().unwrap());
        assert_eq!(r.dst, "192.0.2.50:40000".parse().unwrap());
        assert_eq!(r.eth_src, [2, 0, 0, 0, 0, 2]);
        let r = Reset::parse(&segment(true, 0x04)).expect("an IPv6 reset");
        assert_eq!(r.src, "[2001:db8::10]:3260".parse().unwrap());
        assert_eq!(r.dst, "[2001:db8::50]:40000".parse().unwrap());
        assert!(Reset::parse(&segment(false, 0x10)).is_none(), "a bare ACK");
        assert!(Reset::parse(&segment(true, 0x18)).is_none());
        assert!(Reset::parse(&segment(false, 0x14)[..30]).is_none());
    }
}
