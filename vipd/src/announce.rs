//! Announcing VIPs: paced gratuitous ARP (IPv4) and unsolicited Neighbor
//! Advertisements (IPv6) per interface, both under one budget
//! per interface. One task owns the sockets and the queues; callers hand it
//! batches, and tell it what the node claims now (the VIPs it holds, where,
//! and until when its lease runs). Each frame is checked against those
//! claims when it goes out, not when it was queued: a renewed lease keeps
//! a long paced queue going, and a frame of a VIP no longer held (or past
//! the lease) is dropped and counted. A node that steps down drops
//! everything still queued at once with `clear()`.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
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
    net::{
        garp::{GarpForm, GarpMode, GarpSocket, garp_frame},
        ndp::na_frame,
        sysctl::forwarding,
    },
    vip::Vip,
};

/// Largest burst an interface may send back to back (thousands of VIPs
/// must not flood a segment, yet a handful should go out at once).
pub(crate) const MAX_BURST: u32 = 32;

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
    /// Frames dropped unsent: the VIP was no longer held (or held on
    /// another interface), or the lease had run out, when its turn came.
    pub dropped: u64,
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
    /// What the node claims now; every frame is checked against it as it
    /// goes out. Taken after `gate` when both are held.
    claims: Mutex<Claims>,
    stats: Mutex<BTreeMap<Vip, AnnounceStats>>,
    total_sent: AtomicU64,
    total_dropped: AtomicU64,
    /// Told of every frame sent: a VIP's tickles wait for its first.
    tickler: std::sync::OnceLock<crate::net::tickle::Tickler>,
}

/// The VIPs the node holds, on which interface, and until when.
#[derive(Debug, Default)]
struct Claims {
    held: HashMap<Vip, u32>,
    /// The current lease's end; `None`: no lease bounds the claims
    /// (single-node mode).
    until: Option<Instant>,
}

impl Claims {
    /// Whether a frame for `vip` on `ifindex` may go out at `now`.
    fn allow(&self, vip: Vip, ifindex: u32, now: Instant) -> bool {
        self.held.get(&vip) == Some(&ifindex) && self.until.is_none_or(|u| now < u)
    }
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
    /// order; interfaces take turns. A frame goes out only if, when its turn
    /// comes, the node still holds the VIP on that interface under a lease
    /// that still runs ([`Announcer::hold`]); a frame already waiting is not
    /// queued twice.
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

    /// What the node claims from now on: the VIPs it holds, each on its
    /// interface, and the end of its lease (`None`: no lease). The leader's
    /// lease bounds its claims on the wire too, as it bounds the addresses: a vipd frozen in the
    /// middle of a paced burst and thawed after the lease ran out sends
    /// nothing more.
    pub fn hold(&self, held: impl IntoIterator<Item = (Vip, u32)>, until: Option<Instant>) {
        let held: HashMap<Vip, u32> = held.into_iter().collect();
        let mut claims = lock(&self.shared.claims);
        claims.held = held;
        claims.until = until;
    }

    /// A renewed lease: what is held (and queued) is claimed until `until`.
    pub fn extend(&self, until: Option<Instant>) {
        lock(&self.shared.claims).until = until;
    }

    /// Drops every announcement queued and not yet sent, and claims
    /// nothing more until the next [`Announcer::hold`]. Nothing queued
    /// before this call is sent after it returns; later `announce` calls are
    /// served as usual.
    pub fn clear(&self) {
        let _gate = lock(&self.shared.gate);
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let mut claims = lock(&self.shared.claims);
        claims.held.clear();
        debug!(generation, "queued announcements cleared");
    }

    /// Tells `tickler` of every announcement sent from now on.
    pub(crate) fn tell_on_sent(&self, tickler: crate::net::tickle::Tickler) {
        let _ = self.shared.tickler.set(tickler);
    }

    /// Frames sent and failed per VIP since start.
    pub fn stats(&self) -> BTreeMap<Vip, AnnounceStats> {
        lock(&self.shared.stats).clone()
    }

    /// Frames sent, all VIPs together.
    pub fn total_sent(&self) -> u64 {
        self.shared.total_sent.load(Ordering::SeqCst)
    }

    /// Frames dropped unsent (not held, or past the lease, when their turn
    /// came; or cleared at a step-down), all VIPs together.
    pub fn total_dropped(&self) -> u64 {
        self.shared.total_dropped.load(Ordering::SeqCst)
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
pub(crate) struct Pace {
    interval: Duration,
    /// How far ahead of now the schedule may run: (burst - 1) intervals.
    tolerance: Duration,
    tat: Instant,
}

impl Pace {
    /// A full bucket at `now`. `rate` 0 is taken as 1 frame per second.
    pub(crate) fn new(rate: u32, now: Instant) -> Self {
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
    pub(crate) fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let tat = self.tat.max(now);
        let ahead = tat - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        self.tat = tat + self.interval;
        Ok(())
    }
}

/// One frame of an announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum FrameKind {
    /// A gratuitous ARP frame of this form for an IPv4 VIP.
    Arp(GarpForm, Ipv4Addr),
    /// One unsolicited Neighbor Advertisement for an IPv6 VIP; the Router
    /// flag as the interface forwarded when the batch was queued.
    Na { router: bool, vip: Ipv6Addr },
}

/// One frame waiting to be sent.
struct Pending {
    generation: u64,
    announcement: Announcement,
    kind: FrameKind,
}

impl Pending {
    /// Cleared by `clear()`, or not claimed now (not held there, or the
    /// lease ran out).
    fn stale(&self, current_generation: u64, claims: &Claims, now: Instant) -> bool {
        let Announcement { vip, ifindex, .. } = self.announcement;
        self.generation < current_generation || !claims.allow(vip, ifindex, now)
    }

    /// What makes two waiting frames the same frame.
    fn key(&self) -> (Vip, [u8; 6], FrameKind) {
        (self.announcement.vip, self.announcement.mac, self.kind)
    }
}

struct Interface {
    queue: VecDeque<Pending>,
    /// The keys of the frames in `queue`: a round that repeats a frame still
    /// waiting adds nothing, so the queue stays bounded by the VIPs held.
    queued: HashSet<(Vip, [u8; 6], FrameKind)>,
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
        let mut routers: BTreeMap<u32, bool> = BTreeMap::new();
        for announcement in batch.announcements {
            let rate = self.rate;
            let iface = self
                .interfaces
                .entry(announcement.ifindex)
                .or_insert_with(|| Interface {
                    queue: VecDeque::new(),
                    queued: HashSet::new(),
                    pace: Pace::new(rate, now),
                    socket: None,
                    failing: false,
                });
            let mut push = |kind| {
                let pending = Pending {
                    generation: batch.generation,
                    announcement,
                    kind,
                };
                if iface.queued.insert(pending.key()) {
                    iface.queue.push_back(pending);
                }
            };
            match announcement.vip.ip() {
                IpAddr::V6(vip) => {
                    // Read per batch and interface, not per frame: a batch
                    // of thousands reads the sysctl once.
                    let router = *routers
                        .entry(announcement.ifindex)
                        .or_insert_with(|| ipv6_forwarding(announcement.ifindex));
                    push(FrameKind::Na { router, vip });
                }
                IpAddr::V4(vip) => {
                    for &form in self.mode.forms() {
                        push(FrameKind::Arp(form, vip));
                    }
                }
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
        let mut dropped: BTreeMap<Vip, u64> = BTreeMap::new();
        for iface in self.interfaces.values_mut() {
            let Interface { queue, queued, .. } = iface;
            queue.retain(|p| {
                let keep = p.generation >= current;
                if !keep {
                    queued.remove(&p.key());
                    *dropped.entry(p.announcement.vip).or_default() += 1;
                }
                keep
            });
        }
        if !dropped.is_empty() {
            let total: u64 = dropped.values().sum();
            debug!(dropped = total, "dropped cleared announcement frames");
            count_dropped(&self.shared, dropped);
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
                let mut dropped: BTreeMap<Vip, u64> = BTreeMap::new();
                {
                    let claims = lock(&self.shared.claims);
                    while let Some(p) = iface.queue.front()
                        && p.stale(current, &claims, now)
                    {
                        iface.queued.remove(&p.key());
                        *dropped.entry(p.announcement.vip).or_default() += 1;
                        iface.queue.pop_front();
                    }
                }
                if !dropped.is_empty() {
                    count_dropped(&self.shared, dropped);
                }
                if iface.queue.is_empty() {
                    continue;
                }
                match iface.pace.try_take(now) {
                    Ok(()) => {
                        let pending = iface.queue.pop_front().expect("queue is not empty");
                        iface.queued.remove(&pending.key());
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

/// Frames dropped unsent, per VIP: counted, and logged at debug (a
/// step-down drops thousands at once; the counters say it).
fn count_dropped(shared: &Shared, dropped: BTreeMap<Vip, u64>) {
    let mut stats = lock(&shared.stats);
    for (vip, n) in dropped {
        stats.entry(vip).or_default().dropped += n;
        shared.total_dropped.fetch_add(n, Ordering::SeqCst);
        debug!(vip = %vip, frames = n, "announcement dropped: VIP not held or lease over");
    }
}

/// Sends one frame unless it became stale (cleared, no longer held, the
/// lease over) since the queue was checked, and records the outcome.
fn send_one(shared: &Shared, ifindex: u32, iface: &mut Interface, pending: &Pending) {
    let Announcement { vip, mac, .. } = pending.announcement;
    let result = {
        let _gate = lock(&shared.gate);
        let stale = pending.stale(
            shared.generation.load(Ordering::SeqCst),
            &lock(&shared.claims),
            Instant::now(),
        );
        if stale {
            count_dropped(shared, BTreeMap::from([(vip, 1)]));
            return;
        }
        let socket = match iface.socket.take() {
            Some(s) => Ok(s),
            None => GarpSocket::open(ifindex),
        };
        socket.and_then(|s| {
            match pending.kind {
                FrameKind::Arp(form, v4) => s.send(&garp_frame(form, mac, v4))?,
                FrameKind::Na { router, vip } => s.send(&na_frame(mac, vip, router))?,
            }
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
            debug!(vip = %vip, ifindex, frame = ?pending.kind, "sent announcement");
            if let Some(t) = shared.tickler.get() {
                t.announced(vip);
            }
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
                warn!(vip = %vip, ifindex, %error, "cannot send announcement");
            } else {
                debug!(vip = %vip, ifindex, %error, "cannot send announcement");
            }
        }
    }
}

/// Whether interface `ifindex` forwards IPv6 (Router flag of its
/// advertisements). Unknown counts as not: a host's advertisement never
/// claims to be a router by mistake.
fn ipv6_forwarding(ifindex: u32) -> bool {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname needs.
    let p = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if p.is_null() {
        debug!(ifindex, "interface gone; Router flag off");
        return false;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into the buffer.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy();
    forwarding(&name).unwrap_or_else(|error| {
        debug!(ifindex, %error, "cannot read IPv6 forwarding; Router flag off");
        false
    })
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
}
