//! Announcing VIPs: paced gratuitous ARP per interface (R7, R9). One task
//! owns the sockets and the queues; callers hand it batches, and a node that
//! steps down drops everything still queued at once with `clear()`, so it
//! never announces a VIP it no longer holds.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    net::garp::{GarpForm, GarpMode, GarpSocket, garp_frame},
    vip::Vip,
};

/// Largest burst an interface may send back to back (R9: thousands of VIPs
/// must not flood a segment, yet a handful should go out at once).
pub const MAX_BURST: u32 = 32;

/// One VIP to announce on one interface, from that interface's MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub vip: Vip,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// What the announcer did for one VIP since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AnnounceStats {
    pub frames_sent: u64,
    pub last_sent_unix_ms: Option<u64>,
    /// Frames that could not be sent (socket open or send failed).
    pub errors: u64,
}

/// Handle to the announcing task; cheap to clone.
#[derive(Clone, Debug)]
pub struct Announcer {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Batch>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Bumped by `clear()`; a frame queued under an older generation is
    /// never sent.
    generation: AtomicU64,
    /// Held across "is this frame's generation current?" and its send, and by
    /// `clear()` while it bumps the generation: once `clear()` returns, no
    /// frame queued before it can still be on its way out.
    gate: Mutex<()>,
    stats: Mutex<BTreeMap<Vip, AnnounceStats>>,
    total_sent: AtomicU64,
}

struct Batch {
    generation: u64,
    announcements: Vec<Announcement>,
}

impl Announcer {
    /// Spawns the sending task on the current tokio runtime. `rate` is frames
    /// per second per interface (0 is taken as 1), with bursts of up to
    /// `min(rate, MAX_BURST)`; `mode` picks the forms sent per announcement.
    pub fn spawn(
        mode: GarpMode,
        rate: u32,
        cancel: CancellationToken,
    ) -> (Announcer, JoinHandle<()>) {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let task = SendTask {
            shared: Arc::clone(&shared),
            mode,
            rate,
            interfaces: BTreeMap::new(),
            next_ifindex: 0,
            seen_generation: 0,
        };
        let handle = tokio::spawn(task.run(rx, cancel));
        (Announcer { shared, tx }, handle)
    }

    /// Queues announcements without waiting. Each interface sends its own in
    /// order; interfaces take turns.
    pub fn announce(&self, batch: Vec<Announcement>) {
        if batch.is_empty() {
            return;
        }
        let batch = Batch {
            generation: self.shared.generation.load(Ordering::SeqCst),
            announcements: batch,
        };
        if self.tx.send(batch).is_err() {
            debug!("announcer has stopped; announcements dropped");
        }
    }

    /// Drops every announcement queued and not yet sent. Nothing queued
    /// before this call is sent after it returns; later `announce` calls are
    /// served as usual.
    pub fn clear(&self) {
        let _gate = lock(&self.shared.gate);
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        debug!(generation, "queued announcements cleared");
    }

    /// Frames sent and failed per VIP since start.
    pub fn stats(&self) -> BTreeMap<Vip, AnnounceStats> {
        lock(&self.shared.stats).clone()
    }

    /// Frames sent, all VIPs together.
    pub fn total_sent(&self) -> u64 {
        self.shared.total_sent.load(Ordering::SeqCst)
    }
}

/// A mutex poisoned by a panicking holder still guards consistent data here
/// (counters and a unit gate), so keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Token bucket per interface, kept as a "theoretical arrival time" (GCRA):
/// exact integer time, no refill loop. Frames are spaced `1/rate` apart on
/// average, with up to `burst` frames back to back after an idle spell.
#[derive(Clone, Debug)]
pub struct Pace {
    interval: Duration,
    /// How far ahead of now the schedule may run: (burst - 1) intervals.
    tolerance: Duration,
    tat: Instant,
}

impl Pace {
    /// A full bucket at `now`. `rate` 0 is taken as 1 frame per second.
    pub fn new(rate: u32, now: Instant) -> Self {
        let rate = rate.max(1);
        let burst = rate.min(MAX_BURST);
        let interval = Duration::from_secs(1) / rate;
        Pace {
            interval,
            tolerance: interval * (burst - 1),
            tat: now,
        }
    }

    /// Takes one token at `now`, or says how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let tat = self.tat.max(now);
        let ahead = tat - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        self.tat = tat + self.interval;
        Ok(())
    }
}

/// One frame waiting to be sent.
struct Pending {
    generation: u64,
    announcement: Announcement,
    form: GarpForm,
}

struct Interface {
    queue: VecDeque<Pending>,
    pace: Pace,
    /// Opened on first use; dropped after an error so the next frame reopens
    /// it (the interface may have been down, or replaced).
    socket: Option<GarpSocket>,
    /// The last send failed: later failures are not logged again until one
    /// succeeds.
    failing: bool,
}

struct SendTask {
    shared: Arc<Shared>,
    mode: GarpMode,
    rate: u32,
    interfaces: BTreeMap<u32, Interface>,
    /// Round-robin cursor: the turn starts at the first interface at or
    /// after this ifindex.
    next_ifindex: u32,
    seen_generation: u64,
}

impl SendTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Batch>, cancel: CancellationToken) {
        let mut open = true;
        loop {
            while let Ok(batch) = rx.try_recv() {
                self.enqueue(batch);
            }
            self.drop_cleared();
            let wait = self.send_ready();
            if wait.is_none() && !open {
                return;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                batch = rx.recv(), if open => match batch {
                    Some(batch) => self.enqueue(batch),
                    None => open = false,
                },
                _ = sleep_for(wait) => {}
            }
        }
    }

    fn enqueue(&mut self, batch: Batch) {
        let now = Instant::now();
        for announcement in batch.announcements {
            let rate = self.rate;
            let iface = self
                .interfaces
                .entry(announcement.ifindex)
                .or_insert_with(|| Interface {
                    queue: VecDeque::new(),
                    pace: Pace::new(rate, now),
                    socket: None,
                    failing: false,
                });
            for &form in self.mode.forms() {
                iface.queue.push_back(Pending {
                    generation: batch.generation,
                    announcement,
                    form,
                });
            }
        }
    }

    /// Frees the queues of everything `clear()` made stale.
    fn drop_cleared(&mut self) {
        let current = self.shared.generation.load(Ordering::SeqCst);
        if current == self.seen_generation {
            return;
        }
        self.seen_generation = current;
        let mut dropped = 0usize;
        for iface in self.interfaces.values_mut() {
            let before = iface.queue.len();
            iface.queue.retain(|p| p.generation >= current);
            dropped += before - iface.queue.len();
        }
        if dropped > 0 {
            debug!(dropped, "dropped cleared gratuitous ARP frames");
        }
        // Idle interfaces keep nothing worth remembering but their socket;
        // forgetting them bounds the map by the interfaces in use.
        self.interfaces
            .retain(|_, iface| !iface.queue.is_empty() || iface.socket.is_some());
    }

    /// Sends every frame the pacing allows now, one per interface per turn.
    /// Returns how long until the next frame may go, or `None` when nothing
    /// is queued.
    fn send_ready(&mut self) -> Option<Duration> {
        loop {
            let now = Instant::now();
            let mut sent_any = false;
            let mut wait: Option<Duration> = None;
            let order: Vec<u32> = self
                .interfaces
                .range(self.next_ifindex..)
                .chain(self.interfaces.range(..self.next_ifindex))
                .map(|(&i, _)| i)
                .collect();
            for ifindex in order {
                let current = self.shared.generation.load(Ordering::SeqCst);
                let Some(iface) = self.interfaces.get_mut(&ifindex) else {
                    continue;
                };
                // Stale frames cost no token.
                while iface.queue.front().is_some_and(|p| p.generation < current) {
                    iface.queue.pop_front();
                }
                if iface.queue.is_empty() {
                    continue;
                }
                match iface.pace.try_take(now) {
                    Ok(()) => {
                        let pending = iface.queue.pop_front().expect("queue is not empty");
                        send_one(&self.shared, ifindex, iface, &pending);
                        sent_any = true;
                        self.next_ifindex = ifindex.wrapping_add(1);
                        if !iface.queue.is_empty() {
                            wait = Some(Duration::ZERO);
                        }
                    }
                    Err(w) => wait = Some(wait.map_or(w, |cur| cur.min(w))),
                }
            }
            // Another turn only if something went out and more is queued.
            if !sent_any || wait.is_none() {
                return wait;
            }
        }
    }
}

async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Sends one frame unless `clear()` made it stale, and records the outcome.
fn send_one(shared: &Shared, ifindex: u32, iface: &mut Interface, pending: &Pending) {
    let Announcement { vip, mac, .. } = pending.announcement;
    let result = {
        let _gate = lock(&shared.gate);
        if pending.generation < shared.generation.load(Ordering::SeqCst) {
            return;
        }
        let frame = garp_frame(pending.form, mac, vip.addr());
        let socket = match iface.socket.take() {
            Some(s) => Ok(s),
            None => GarpSocket::open(ifindex),
        };
        socket.and_then(|s| {
            s.send(&frame)?;
            iface.socket = Some(s);
            Ok(())
        })
    };
    let mut stats = lock(&shared.stats);
    let entry = stats.entry(vip).or_default();
    match result {
        Ok(()) => {
            entry.frames_sent += 1;
            entry.last_sent_unix_ms = Some(unix_ms());
            shared.total_sent.fetch_add(1, Ordering::SeqCst);
            debug!(vip = %vip, ifindex, form = ?pending.form, "sent gratuitous ARP");
            if iface.failing {
                iface.failing = false;
                info!(ifindex, "gratuitous ARP sends work again");
            }
        }
        Err(error) => {
            entry.errors += 1;
            // The socket was dropped above (taken, not put back): reopen next time.
            if !iface.failing {
                iface.failing = true;
                warn!(vip = %vip, ifindex, %error, "cannot send gratuitous ARP");
            } else {
                debug!(vip = %vip, ifindex, %error, "cannot send gratuitous ARP");
            }
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `frames` through a bucket on a virtual clock; returns the
    /// virtual time each frame went out, relative to the start.
    fn schedule(rate: u32, frames: usize) -> Vec<Duration> {
        let start = Instant::now();
        let mut now = start;
        let mut pace = Pace::new(rate, start);
        let mut out = Vec::with_capacity(frames);
        while out.len() < frames {
            match pace.try_take(now) {
                Ok(()) => out.push(now - start),
                Err(wait) => {
                    assert!(wait > Duration::ZERO, "a refusal must ask to wait");
                    now += wait;
                }
            }
        }
        out
    }

    #[test]
    fn thousand_frames_at_500_take_about_two_seconds() {
        let times = schedule(500, 1000);
        let last = *times.last().unwrap();
        // 32 at once, then 968 more 2 ms apart.
        assert_eq!(last, Duration::from_millis(968 * 2));
        assert!(last >= Duration::from_millis(1900), "{last:?}");
    }

    #[test]
    fn burst_is_capped_then_frames_are_spaced() {
        let times = schedule(500, 40);
        assert!(times[..32].iter().all(|t| t.is_zero()), "{times:?}");
        for w in times[31..].windows(2) {
            assert_eq!(w[1] - w[0], Duration::from_millis(2));
        }
        // A low rate bursts only `rate` frames.
        let times = schedule(4, 6);
        assert_eq!(
            times,
            [0, 0, 0, 0, 250, 500].map(Duration::from_millis).to_vec()
        );
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let start = Instant::now();
        let mut pace = Pace::new(100, start);
        let later = start + Duration::from_secs(60);
        let sent = (0..100)
            .take_while(|_| pace.try_take(later).is_ok())
            .count();
        assert_eq!(sent, 32);
        assert_eq!(pace.try_take(later), Err(Duration::from_millis(10)));
    }

    #[test]
    fn zero_rate_is_one_per_second() {
        let times = schedule(0, 3);
        assert_eq!(times, [0, 1000, 2000].map(Duration::from_millis).to_vec());
    }

    /// Privileged tests: a veth pair in a network namespace of the test's own.
    mod wire {
        use std::{
            io,
            process::Command,
            sync::{
                Arc, Mutex,
                atomic::{AtomicBool, Ordering},
            },
            thread,
            time::{Duration, Instant},
        };

        use tokio_util::sync::CancellationToken;

        use super::super::*;
        use crate::net::garp::{ArpCapture, parse_arp};

        const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
        const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
        const MAC_C: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];

        /// Runs `f` on a thread moved into a fresh network namespace, which
        /// disappears with the thread (and every socket it made).
        fn in_netns<F: FnOnce() + Send + 'static>(f: F) {
            let t = thread::spawn(move || {
                // SAFETY: unshare only changes this thread's namespaces.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    panic!(
                        "unshare(CLONE_NEWNET) failed (these tests need root): {}",
                        io::Error::last_os_error()
                    );
                }
                f();
            });
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }

        fn ip(args: &[&str]) {
            let out = Command::new("ip")
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("cannot run `ip {}`: {e}", args.join(" ")));
            assert!(
                out.status.success(),
                "`ip {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        fn ifindex(name: &str) -> u32 {
            let c = std::ffi::CString::new(name).unwrap();
            // SAFETY: c is a valid NUL-terminated string.
            let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
            assert_ne!(i, 0, "no interface {name}");
            i
        }

        /// Waits until the link's operstate is UP: only then is its queue
        /// attached; frames sent earlier are silently lost.
        fn wait_oper_up(name: &str) {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let out = Command::new("ip")
                    .args(["-o", "link", "show", "dev", name])
                    .output()
                    .expect("cannot run ip");
                if String::from_utf8_lossy(&out.stdout).contains("state UP") {
                    return;
                }
                assert!(Instant::now() < deadline, "{name} never came up");
                thread::sleep(Duration::from_millis(20));
            }
        }

        /// veth pair `<a>`/`<b>` (MACs given), both up; returns their ifindexes.
        fn veth(a: &str, mac_a: [u8; 6], b: &str, mac_b: [u8; 6]) -> (u32, u32) {
            let (ma, mb) = (
                crate::net::format_mac(&mac_a),
                crate::net::format_mac(&mac_b),
            );
            ip(&[
                "link", "add", a, "address", &ma, "type", "veth", "peer", "name", b, "address", &mb,
            ]);
            ip(&["link", "set", a, "up"]);
            ip(&["link", "set", b, "up"]);
            wait_oper_up(a);
            wait_oper_up(b);
            (ifindex(a), ifindex(b))
        }

        type Frames = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

        /// Records every ARP frame arriving on one interface, with its time.
        struct Capture {
            frames: Frames,
            stop: Arc<AtomicBool>,
            thread: Option<thread::JoinHandle<()>>,
        }

        impl Capture {
            fn start(ifindex: u32) -> Capture {
                let cap = ArpCapture::open(ifindex).expect("open ARP capture");
                let frames = Frames::default();
                let stop = Arc::new(AtomicBool::new(false));
                let (f, s) = (Arc::clone(&frames), Arc::clone(&stop));
                let thread = thread::spawn(move || {
                    while !s.load(Ordering::SeqCst) {
                        if let Some(frame) = cap.recv(Duration::from_millis(50)).unwrap() {
                            f.lock().unwrap().push((Instant::now(), frame));
                        }
                    }
                });
                Capture {
                    frames,
                    stop,
                    thread: Some(thread),
                }
            }

            fn count(&self) -> usize {
                self.frames.lock().unwrap().len()
            }

            fn snapshot(&self) -> Vec<(Instant, Vec<u8>)> {
                self.frames.lock().unwrap().clone()
            }

            async fn wait_for(&self, n: usize, within: Duration) {
                let deadline = Instant::now() + within;
                while self.count() < n && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }

        impl Drop for Capture {
            fn drop(&mut self) {
                self.stop.store(true, Ordering::SeqCst);
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
        }

        fn block_on<F: std::future::Future>(f: F) -> F::Output {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(f)
        }

        fn vip(i: usize) -> Vip {
            let net = [[192, 0, 2], [198, 51, 100], [203, 0, 113]][i / 250 % 3];
            format!("{}.{}.{}.{}", net[0], net[1], net[2], i % 250 + 1)
                .parse()
                .unwrap()
        }

        fn announcements(n: usize, ifindex: u32, mac: [u8; 6]) -> Vec<Announcement> {
            (0..n)
                .map(|i| Announcement {
                    vip: vip(i),
                    ifindex,
                    mac,
                })
                .collect()
        }

        #[test]
        fn both_forms_for_three_vips_on_the_wire() {
            in_netns(|| {
                let (a, b) = veth("va", MAC_A, "vb", MAC_B);
                let cap = Capture::start(b);
                let (announcer, stats) = block_on(async {
                    let cancel = CancellationToken::new();
                    let (announcer, task) = Announcer::spawn(GarpMode::Both, 100, cancel.clone());
                    announcer.announce(announcements(3, a, MAC_A));
                    cap.wait_for(6, Duration::from_secs(3)).await;
                    // Anything extra would show up now.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    cancel.cancel();
                    task.await.unwrap();
                    let stats = announcer.stats();
                    (announcer, stats)
                });
                let frames = cap.snapshot();
                assert_eq!(frames.len(), 6, "frames on vb: {frames:?}");
                for (i, (_, f)) in frames.iter().enumerate() {
                    let p = parse_arp(f).expect("an ARP frame");
                    let v = vip(i / 2).addr();
                    let (oper, tha) = if i % 2 == 0 {
                        (1, [0xff; 6])
                    } else {
                        (2, MAC_A)
                    };
                    assert_eq!(p.eth_dst, [0xff; 6], "frame {i}");
                    assert_eq!(p.eth_src, MAC_A, "frame {i}");
                    assert_eq!((p.oper, p.tha), (oper, tha), "frame {i}");
                    assert_eq!((p.sha, p.spa, p.tpa), (MAC_A, v, v), "frame {i}");
                }
                assert_eq!(announcer.total_sent(), 6);
                assert_eq!(stats.len(), 3);
                for i in 0..3 {
                    let s = &stats[&vip(i)];
                    assert_eq!((s.frames_sent, s.errors), (2, 0), "{}", vip(i));
                    assert!(s.last_sent_unix_ms.is_some());
                }
            });
        }

        #[test]
        fn clear_stops_the_flow_at_once() {
            in_netns(|| {
                let (a, b) = veth("va", MAC_A, "vb", MAC_B);
                let cap = Capture::start(b);
                let (cleared_at, sent_at_clear, sent_later) = block_on(async {
                    let cancel = CancellationToken::new();
                    let (announcer, task) =
                        Announcer::spawn(GarpMode::Request, 100, cancel.clone());
                    announcer.announce(announcements(2000, a, MAC_A));
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    announcer.clear();
                    let cleared_at = Instant::now();
                    let sent_at_clear = announcer.total_sent();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let sent_later = announcer.total_sent();
                    // The announcer still serves what comes after clear().
                    announcer.announce(vec![Announcement {
                        vip: "198.51.100.250".parse().unwrap(),
                        ifindex: a,
                        mac: MAC_A,
                    }]);
                    cap.wait_for(sent_later as usize + 1, Duration::from_secs(2))
                        .await;
                    cancel.cancel();
                    task.await.unwrap();
                    (cleared_at, sent_at_clear, sent_later)
                });
                let frames = cap.snapshot();
                let after = frames.iter().filter(|(t, _)| *t > cleared_at).count();
                assert!(
                    (32..200).contains(&sent_at_clear),
                    "about 72 frames expected before clear, sent {sent_at_clear}"
                );
                assert_eq!(sent_later, sent_at_clear, "sent after clear() returned");
                // The one post-clear announcement, plus frames still in flight.
                assert!(after <= 3, "{after} frames seen after clear() returned");
                let last = parse_arp(&frames.last().unwrap().1).unwrap();
                assert_eq!(last.spa.to_string(), "198.51.100.250");
                assert_eq!(frames.len() as u64, sent_later + 1);
            });
        }

        #[test]
        fn two_hundred_frames_at_100_per_second() {
            in_netns(|| {
                let (a, b) = veth("va", MAC_A, "vb", MAC_B);
                let cap = Capture::start(b);
                block_on(async {
                    let cancel = CancellationToken::new();
                    let (announcer, task) =
                        Announcer::spawn(GarpMode::Request, 100, cancel.clone());
                    announcer.announce(announcements(200, a, MAC_A));
                    cap.wait_for(200, Duration::from_secs(6)).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    cancel.cancel();
                    task.await.unwrap();
                });
                let frames = cap.snapshot();
                assert_eq!(frames.len(), 200);
                let spread = frames[199].0 - frames[0].0;
                // Ideal: 32 at once, then 168 at 10 ms = 1.68 s.
                assert!(
                    spread >= Duration::from_millis(1500) && spread <= Duration::from_secs(3),
                    "200 frames took {spread:?}"
                );
                for (i, (_, f)) in frames.iter().enumerate() {
                    assert_eq!(parse_arp(f).unwrap().spa, vip(i).addr(), "in order");
                }
            });
        }

        #[test]
        fn interfaces_are_paced_separately_and_take_turns() {
            in_netns(|| {
                let (a1, b1) = veth("va", MAC_A, "vb", MAC_B);
                let (a2, b2) = veth("vc", MAC_C, "vd", [0x02, 0, 0, 0, 0, 0x0d]);
                let (cap1, cap2) = (Capture::start(b1), Capture::start(b2));
                let start = Instant::now();
                block_on(async {
                    let cancel = CancellationToken::new();
                    let (announcer, task) = Announcer::spawn(GarpMode::Request, 50, cancel.clone());
                    // All of a1's frames are queued first; a2 must not wait for them.
                    announcer.announce(announcements(60, a1, MAC_A));
                    announcer.announce(announcements(60, a2, MAC_C));
                    cap1.wait_for(60, Duration::from_secs(5)).await;
                    cap2.wait_for(60, Duration::from_secs(5)).await;
                    cancel.cancel();
                    task.await.unwrap();
                });
                let (f1, f2) = (cap1.snapshot(), cap2.snapshot());
                assert_eq!((f1.len(), f2.len()), (60, 60));
                assert!(
                    f2[0].0 - start < Duration::from_millis(300),
                    "second interface waited {:?}",
                    f2[0].0 - start
                );
                // Each interface has its own bucket: 32 + 28 at 20 ms = 0.56 s,
                // not the 1.76 s one shared bucket would take.
                for f in [&f1, &f2] {
                    let spread = f[59].0 - f[0].0;
                    assert!(
                        spread >= Duration::from_millis(450)
                            && spread < Duration::from_millis(1200),
                        "{spread:?}"
                    );
                    assert!(f.iter().all(|(_, x)| parse_arp(x).is_some()));
                }
            });
        }

        #[test]
        fn send_errors_are_counted_and_the_socket_reopened() {
            in_netns(|| {
                let (a, b) = veth("va", MAC_A, "vb", MAC_B);
                let cap = Capture::start(b);
                let v = vip(0);
                let one = vec![Announcement {
                    vip: v,
                    ifindex: a,
                    mac: MAC_A,
                }];
                block_on(async {
                    let cancel = CancellationToken::new();
                    let (announcer, task) =
                        Announcer::spawn(GarpMode::Request, 100, cancel.clone());
                    // Open the socket while the link is up, then take it down.
                    announcer.announce(one.clone());
                    cap.wait_for(1, Duration::from_secs(2)).await;
                    assert_eq!(cap.count(), 1);
                    ip(&["link", "set", "va", "down"]);
                    announcer.announce(one.clone());
                    announcer.announce(one.clone());
                    let deadline = Instant::now() + Duration::from_secs(2);
                    while announcer.stats()[&v].errors < 2 && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    let s = announcer.stats()[&v].clone();
                    assert_eq!((s.frames_sent, s.errors), (1, 2), "link down: ENETDOWN");
                    ip(&["link", "set", "va", "up"]);
                    wait_oper_up("va");
                    wait_oper_up("vb");
                    announcer.announce(one.clone());
                    cap.wait_for(2, Duration::from_secs(2)).await;
                    let s = announcer.stats()[&v].clone();
                    assert_eq!((s.frames_sent, s.errors), (2, 2), "reopened after up");
                    assert_eq!(cap.count(), 2);
                    cancel.cancel();
                    task.await.unwrap();
                });
            });
        }
    }
}
