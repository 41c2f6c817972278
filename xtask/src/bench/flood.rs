//! The flood both ARP rigs measure with: a raw AF_PACKET sender in the
//! client that sends one request over and over (at a rate, in batches,
//! pinned to a CPU, as asked), a second socket that counts the replies, and
//! the scheduler's exact run times (`schedstat`) of the threads that do the
//! work, read before and after.

use std::{
    fs,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use socket2::Socket;
use vipd_tests::lab::Host;

pub(super) const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub(super) const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
/// The most frames one flood may send.
pub(super) const FLOOD_MAX_FRAMES: u64 = 2_000_000;
pub(super) const ETH_P_ARP: u16 = 0x0806;

/// What a flood sends, and which frames count as its replies.
pub(super) struct Ask {
    pub frame: Vec<u8>,
    /// Ethertype of the replies: the counting socket's protocol.
    pub reply_proto: u16,
    pub is_reply: fn(&[u8]) -> bool,
}

/// One flood: what was sent, what came back, what it cost.
#[derive(Clone, Debug)]
pub(super) struct Flood {
    pub sent: u64,
    /// Sends refused with ENOBUFS (a full queue), retried.
    pub refused: u64,
    pub replies: u64,
    /// Frames the kernel dropped at the counting socket (its buffer was
    /// full; `PACKET_STATISTICS`).
    pub socket_drops: u64,
    pub elapsed: Duration,
    /// CPU time of the sending thread (ns).
    pub sender_ns: u64,
    /// CPU time of the client's counting thread (ns), reported apart.
    pub receiver_ns: u64,
    /// Run time of each watched thread over the flood and its drain (ns),
    /// in the order given to [`flood`].
    pub watched_ns: Vec<u64>,
}

impl Flood {
    /// The sending thread plus every watched thread (the bridge rig
    /// watches the `ksoftirqd` threads).
    pub(super) fn cpu_ns(&self) -> u64 {
        self.sender_ns + self.watched_ns.iter().sum::<u64>()
    }
}

/// How a flood sends.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pace {
    pub duration: Duration,
    /// Pin the sending and the counting thread to this CPU.
    pub cpu: Option<usize>,
    /// Frames per `sendmmsg` call (1: one `send` per frame).
    pub batch: usize,
    /// At most this many frames per second (None: as fast as it can).
    pub rate: Option<u64>,
}

/// Floods `ask.frame` from `host`'s `ifname` as `pace` says (at most
/// FLOOD_MAX_FRAMES), counting the replies that reach `host`. The run
/// times of the `watch` threads (any PIDs) are read before and after.
pub(super) fn flood(
    host: &Host,
    ifname: &str,
    ask: &Ask,
    pace: Pace,
    watch: &[u32],
) -> Result<Flood> {
    let Pace {
        duration,
        cpu,
        batch,
        rate,
    } = pace;
    let watched_before: Vec<u64> = watch.iter().map(|p| schedstat_pid(*p)).collect();
    let result = host.in_netns(|| -> Result<Flood> {
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(AtomicU64::new(0));
        let receiver_sock = packet_socket(ifname, ask.reply_proto)?;
        // Room for every reply of a burst: a drop here would count as no reply.
        set_rcvbuf_force(&receiver_sock, 64 << 20);
        receiver_sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let sender_sock = packet_socket(ifname, 0)?;
        let is_reply = ask.is_reply;
        std::thread::scope(|s| {
            let receiver = {
                let (stop, replies, receiver_sock) =
                    (stop.clone(), replies.clone(), &receiver_sock);
                s.spawn(move || -> Result<u64> {
                    if let Some(cpu) = cpu {
                        pin_thread(0, cpu)?;
                    }
                    let start = thread_cpu_ns();
                    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 128];
                    loop {
                        match receiver_sock.recv(&mut buf) {
                            Ok(n) => {
                                // SAFETY: recv initialised the first n bytes.
                                let b = unsafe {
                                    std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n)
                                };
                                if is_reply(b) {
                                    replies.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(_) if stop.load(Ordering::Relaxed) => break,
                            Err(_) => {}
                        }
                    }
                    Ok(thread_cpu_ns() - start)
                })
            };
            let frame = &ask.frame;
            let sender = s.spawn(move || -> Result<(u64, u64, Duration, u64)> {
                if let Some(cpu) = cpu {
                    pin_thread(0, cpu)?;
                }
                let mut batcher = Batch::new(frame, batch.max(1));
                let cpu0 = thread_cpu_ns();
                let t0 = Instant::now();
                let mut sent = 0u64;
                let mut refused = 0u64;
                // A clock read costs little beside a batch, much beside one send.
                let check_every = if batcher.len() > 1 { 1 } else { 256 };
                let mut calls = 0u64;
                while sent < FLOOD_MAX_FRAMES {
                    if calls.is_multiple_of(check_every) && t0.elapsed() >= duration {
                        break;
                    }
                    calls += 1;
                    match batcher.send(&sender_sock) {
                        Ok(n) => {
                            sent += n as u64;
                            // sendmmsg stops at the first frame the queue
                            // refused (and drops it): try again.
                            if n < batcher.len() {
                                refused += 1;
                            }
                        }
                        // A full queue: try again (counted only when sent).
                        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => refused += 1,
                        Err(e) => return Err(e).context("sending the flood"),
                    }
                    if let Some(rate) = rate {
                        let due = t0 + Duration::from_secs_f64(sent as f64 / rate as f64);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                    }
                }
                Ok((sent, refused, t0.elapsed(), thread_cpu_ns() - cpu0))
            });
            let sent = sender.join().expect("sender thread");
            // Late replies: the path drains within milliseconds.
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, Ordering::Relaxed);
            let receiver_ns = receiver.join().expect("receiver thread")?;
            let (sent, refused, elapsed, sender_ns) = sent?;
            Ok(Flood {
                sent,
                refused,
                replies: replies.load(Ordering::Relaxed),
                socket_drops: socket_drops(&receiver_sock),
                elapsed,
                sender_ns,
                receiver_ns,
                watched_ns: Vec::new(),
            })
        })
    })?;
    let watched_ns = watch
        .iter()
        .zip(watched_before)
        .map(|(p, before)| schedstat_pid(*p).saturating_sub(before))
        .collect();
    Ok(Flood {
        watched_ns,
        ..result
    })
}

/// `len` copies of one frame, sent with one `sendmmsg` (or a plain `send`
/// for one).
struct Batch<'a> {
    frame: &'a [u8],
    iov: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers point into `frame` and `iov`, which the batch
// borrows or owns; it moves to the sending thread as a whole.
unsafe impl Send for Batch<'_> {}

impl<'a> Batch<'a> {
    fn new(frame: &'a [u8], len: usize) -> Batch<'a> {
        let mut iov: Vec<libc::iovec> = (0..len)
            .map(|_| libc::iovec {
                // The kernel only reads from it.
                iov_base: frame.as_ptr().cast_mut().cast(),
                iov_len: frame.len(),
            })
            .collect();
        let msgs = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: all-zero is a valid msghdr (no name, no control).
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        Batch { frame, iov, msgs }
    }

    fn len(&self) -> usize {
        self.iov.len()
    }

    /// Sends the batch: how many frames the kernel took.
    fn send(&mut self, socket: &Socket) -> std::io::Result<usize> {
        if self.len() == 1 {
            return socket.send(self.frame).map(|_| 1);
        }
        // SAFETY: msgs holds len() valid mmsghdr, each pointing at one
        // iovec of iov, which points at frame; all outlive the call.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                u32::try_from(self.len()).unwrap_or(u32::MAX),
                0,
            )
        };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
    }
}

/// The ARP flood: who-has VIP, tell the client at `mac`.
pub(super) fn arp_ask(mac: [u8; 6]) -> Ask {
    Ask {
        frame: request(mac),
        reply_proto: ETH_P_ARP,
        is_reply: is_arp_reply,
    }
}

/// An ARP reply about the VIP.
fn is_arp_reply(b: &[u8]) -> bool {
    b.len() >= 42 && b[12..14] == [0x08, 0x06] && b[20..22] == [0, 2] && b[28..32] == VIP.octets()
}

/// A broadcast who-has VIP, tell the client.
fn request(mac: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&CLIENT_IP.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&VIP.octets());
    f
}

/// The lab's [`vipd_tests::lab::packet_socket`], with the interface named on
/// error.
fn packet_socket(ifname: &str, proto: u16) -> Result<Socket> {
    vipd_tests::lab::packet_socket(ifname, proto)
        .with_context(|| format!("AF_PACKET socket on {ifname} (needs CAP_NET_RAW)"))
}

/// SO_RCVBUFFORCE (root may exceed rmem_max); best effort.
fn set_rcvbuf_force(socket: &Socket, bytes: i32) {
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const bytes).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

/// Frames the kernel dropped at a packet socket since the last call
/// (`PACKET_STATISTICS`, which resets on read); 0 when unreadable.
fn socket_drops(socket: &Socket) -> u64 {
    // SAFETY: all-zero is a valid tpacket_stats.
    let mut stats: libc::tpacket_stats = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: a valid socket fd, and a buffer of `len` bytes for the option.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&raw mut stats).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        u64::from(stats.tp_drops)
    } else {
        0
    }
}

/// Pins thread `tid` (0: the calling thread) to `cpu`.
pub(super) fn pin_thread(tid: u32, cpu: usize) -> Result<()> {
    // SAFETY: all-zero is an empty cpu_set_t; CPU_SET stays within it for
    // cpu < CPU_SETSIZE, checked first.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        bail!("CPU {cpu}: beyond CPU_SETSIZE");
    }
    unsafe { libc::CPU_SET(cpu, &mut set) };
    let pid = libc::pid_t::try_from(tid)?;
    // SAFETY: a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning thread {tid} to CPU {cpu}"));
    }
    Ok(())
}

/// Pins every thread of process `pid` to `cpu` (threads it starts later
/// inherit the mask).
pub(super) fn pin_process(pid: u32, cpu: usize) -> Result<()> {
    let dir = format!("/proc/{pid}/task");
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Some(tid) = entry?.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        pin_thread(tid, cpu)?;
    }
    Ok(())
}

/// This thread's run time in ns (`/proc/thread-self/schedstat`, exact; it
/// includes softirq work the kernel ran inline on this thread).
fn thread_cpu_ns() -> u64 {
    first_number(&fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default())
}

fn schedstat_pid(pid: u32) -> u64 {
    first_number(&fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap_or_default())
}

fn first_number(text: &str) -> u64 {
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// PIDs and names of the threads whose name starts with `prefix`
/// (`ksoftirqd/`, `napi/`).
pub(super) fn kernel_threads(prefix: &str) -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<(u32, String)> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let comm = comm.trim_end();
            comm.starts_with(prefix).then(|| (pid, comm.to_string()))
        })
        .collect();
    found.sort();
    found
}

pub(super) fn percentile(sorted: &[f64], q: f64) -> f64 {
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frame_asks_for_the_vip() {
        let f = request([2, 0, 0, 0, 0, 1]);
        assert_eq!(f.len(), 42);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[38..42], &VIP.octets());
    }
}
