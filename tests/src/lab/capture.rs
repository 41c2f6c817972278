//! Captures: AF_PACKET threads that record the frames an interface sends
//! and receives, each stamped when it was seen.

use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::frames::{ArpFrame, NdpFrame};
use super::netns::Netns;
use super::process::StoppableThread;

impl Netns {
    /// Records every ARP frame seen on `ifname` (both directions) until stopped.
    pub fn capture_arp(&self, ifname: &str) -> ArpCapture {
        self.capture(ifname, libc::ETH_P_ARP as u16)
    }

    /// Records every IPv6 frame seen on `ifname` (both directions) until
    /// stopped; [`ArpCapture::ndp_frames`] picks out Neighbor Discovery.
    pub fn capture_ndp(&self, ifname: &str) -> ArpCapture {
        self.capture(ifname, libc::ETH_P_IPV6 as u16)
    }

    /// Records every frame of ethertype `proto` (`libc::ETH_P_ALL` for all) on
    /// `ifname`, both directions. The socket is an ETH_P_ALL one filtered here,
    /// because the kernel hands outgoing frames only to ETH_P_ALL sockets.
    /// Frames sent by XDP_TX bypass the stack and are never seen as outgoing:
    /// capture them on the receiving side.
    pub fn capture(&self, ifname: &str, proto: u16) -> ArpCapture {
        self.capture_with(
            ifname,
            CaptureOptions {
                proto,
                keep: None,
                realtime: false,
            },
        )
    }

    /// [`Netns::capture`] with options: frames of `opts.proto` that
    /// `opts.keep` accepts (a long capture keeps only what it needs), the
    /// thread at a real-time priority if `opts.realtime`.
    pub fn capture_with(&self, ifname: &str, opts: CaptureOptions) -> ArpCapture {
        let CaptureOptions {
            proto,
            keep,
            realtime,
        } = opts;
        let ifname_owned = ifname.to_string();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (frames, stop) = (frames.clone(), stop.clone());
            let open = move || {
                if realtime {
                    realtime_priority();
                }
                packet_socket(&ifname_owned, libc::ETH_P_ALL as u16)
            };
            self.spawn_opened(&format!("capture on {ifname}"), open, move |socket| {
                let mut buf = vec![MaybeUninit::<u8>::uninit(); 65536];
                while !stop.load(Ordering::Relaxed) {
                    match socket.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            let at = Instant::now();
                            if n < 14 {
                                continue;
                            }
                            // SAFETY: recv_from initialised the first n >= 14 bytes.
                            let ethertype = unsafe {
                                u16::from_be_bytes([buf[12].assume_init(), buf[13].assume_init()])
                            };
                            if proto != libc::ETH_P_ALL as u16 && ethertype != proto {
                                continue;
                            }
                            // SAFETY: recv_from initialised the first n bytes.
                            let bytes: Vec<u8> = buf[..n]
                                .iter()
                                .map(|b| unsafe { b.assume_init() })
                                .collect();
                            if keep.is_some_and(|keep| !keep(&bytes)) {
                                continue;
                            }
                            // SAFETY: an AF_PACKET socket reports a sockaddr_ll, and
                            // SockAddr's storage is a sockaddr_storage, large enough.
                            let ll = unsafe { &*from.as_ptr().cast::<libc::sockaddr_ll>() };
                            let outgoing = ll.sll_pkttype == libc::PACKET_OUTGOING;
                            frames.lock().unwrap().push(CapturedFrame {
                                at,
                                outgoing,
                                bytes,
                            });
                        }
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        // The interface went away (namespace deleted): nothing more to see.
                        Err(_) => break,
                    }
                }
            })
        };
        ArpCapture {
            frames,
            thread: StoppableThread::new(stop, thread),
        }
    }
}

/// An AF_PACKET socket of this thread's namespace bound to `ifname` for
/// ethertype `proto` (host order; 0: sending only), with a 50 ms read
/// timeout. Needs CAP_NET_RAW.
pub fn packet_socket(ifname: &str, proto: u16) -> std::io::Result<Socket> {
    let socket = Socket::new(
        Domain::PACKET,
        Type::RAW,
        Some(Protocol::from(i32::from(proto.to_be()))),
    )?;
    let c_name = std::ffi::CString::new(ifname).map_err(std::io::Error::other)?;
    // SAFETY: a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::other(format!("no interface {ifname}")));
    }
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto.to_be();
    sll.sll_ifindex = i32::try_from(ifindex).map_err(std::io::Error::other)?;
    // SAFETY: sll is a fully initialised sockaddr_ll and we pass its size.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const sll).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Short timeout so the thread notices `stop` promptly.
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    Ok(socket)
}

/// What [`Netns::capture_with`] records.
#[derive(Clone, Copy, Debug)]
pub struct CaptureOptions {
    /// The ethertype (`libc::ETH_P_ALL` for all).
    pub proto: u16,
    /// Only the frames (whole Ethernet frames) this accepts are kept.
    pub keep: Option<fn(&[u8]) -> bool>,
    /// Run the capture thread at a real-time priority ([`realtime_priority`]).
    pub realtime: bool,
}

/// Observers timestamp what they see when they wake up; on a loaded
/// machine a normal thread may wake tens of ms late. A real-time priority
/// (we are root) keeps that to microseconds; observer threads only ever
/// block. Applies to the calling thread; failure only costs precision.
pub fn realtime_priority() {
    let param = libc::sched_param { sched_priority: 20 };
    // SAFETY: pid 0 is the calling thread; param is valid. The result is
    // ignored on purpose (see above).
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
}

/// One captured frame.
#[derive(Clone, Debug)]
pub struct CapturedFrame {
    pub at: Instant,
    /// Sent by this interface (PACKET_OUTGOING) rather than received.
    pub outgoing: bool,
    /// The whole Ethernet frame.
    pub bytes: Vec<u8>,
}

impl CapturedFrame {
    /// The frame parsed as Ethernet + ARP for IPv4, if it is one.
    pub fn arp(&self) -> Option<ArpFrame> {
        ArpFrame::parse(&self.bytes)
    }

    /// The frame parsed as a Neighbor Solicitation or Advertisement, if
    /// it is one.
    pub fn ndp(&self) -> Option<NdpFrame> {
        NdpFrame::parse(&self.bytes)
    }

    /// The MAC this frame announces `ip` at, if it is a gratuitous ARP
    /// (IPv4) or an unsolicited Neighbor Advertisement (IPv6) for `ip`:
    /// the sender hardware address, or the NA's target link-layer address
    /// option (its Ethernet source when the option is missing).
    pub fn announces(&self, ip: IpAddr) -> Option<[u8; 6]> {
        match ip {
            IpAddr::V4(ip) => self
                .arp()
                .filter(|a| a.is_gratuitous() && a.spa == ip)
                .map(|a| a.sha),
            IpAddr::V6(ip) => self
                .ndp()
                .filter(|n| n.is_unsolicited_na() && n.target == ip)
                .map(|n| n.lladdr.unwrap_or(n.eth_src)),
        }
    }
}

/// An AF_PACKET capture thread; stops on [`ArpCapture::stop`] or drop.
pub struct ArpCapture {
    frames: Arc<Mutex<Vec<CapturedFrame>>>,
    thread: StoppableThread,
}

impl ArpCapture {
    /// The frames so far (the capture goes on).
    pub fn frames(&self) -> Vec<CapturedFrame> {
        self.frames.lock().unwrap().clone()
    }

    /// The ARP frames so far, parsed.
    pub fn arp_frames(&self) -> Vec<(CapturedFrame, ArpFrame)> {
        self.frames()
            .into_iter()
            .filter_map(|f| f.arp().map(|a| (f, a)))
            .collect()
    }

    /// The Neighbor Discovery frames (NS, NA) so far, parsed.
    pub fn ndp_frames(&self) -> Vec<(CapturedFrame, NdpFrame)> {
        self.frames()
            .into_iter()
            .filter_map(|f| f.ndp().map(|n| (f, n)))
            .collect()
    }

    /// Stops the thread and returns everything captured.
    pub fn stop(mut self) -> Vec<CapturedFrame> {
        self.thread.halt();
        self.frames()
    }
}
