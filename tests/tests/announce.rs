//! The announcer on the wire: gratuitous ARP frames from vipd's paced
//! sender, captured on the other end of a veth pair in a network namespace
//! of the test's own (privileged: these need root and fail without it).

use std::{
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use vipd::{
    announce::{Announcement, Announcer},
    net::{
        format_mac,
        garp::{ArpCapture, GarpMode, parse_arp},
    },
    vip::Vip,
};
use vipd_tests::lab::{ifindex_here as ifindex, in_new_netns as in_netns};

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const MAC_C: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];

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
    let (ma, mb) = (format_mac(&mac_a), format_mac(&mac_b));
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

/// Tells `announcer` the node holds every VIP of `batches` where they
/// are announced, with no lease: what single-node mode does.
fn hold_all(announcer: &Announcer, batches: &[&[Announcement]]) {
    let held = batches
        .iter()
        .flat_map(|b| b.iter().map(|a| (a.vip, a.ifindex)));
    announcer.hold(held, None);
}

#[test]
fn both_forms_for_three_vips_on_the_wire() {
    in_netns(|| {
        let (a, b) = veth("va", MAC_A, "vb", MAC_B);
        let cap = Capture::start(b);
        let (announcer, stats) = block_on(async {
            let cancel = CancellationToken::new();
            let (announcer, task) = Announcer::spawn(GarpMode::Both, 100, cancel.clone());
            let batch = announcements(3, a, MAC_A);
            hold_all(&announcer, &[&batch]);
            announcer.announce(batch);
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
            let v = vip(i / 2).v4().unwrap();
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
            let (announcer, task) = Announcer::spawn(GarpMode::Request, 100, cancel.clone());
            let batch = announcements(2000, a, MAC_A);
            hold_all(&announcer, &[&batch]);
            announcer.announce(batch);
            tokio::time::sleep(Duration::from_millis(400)).await;
            announcer.clear();
            let cleared_at = Instant::now();
            let sent_at_clear = announcer.total_sent();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let sent_later = announcer.total_sent();
            // The announcer still serves what comes after clear().
            let one = vec![Announcement {
                vip: "198.51.100.250".parse().unwrap(),
                ifindex: a,
                mac: MAC_A,
            }];
            hold_all(&announcer, &[&one]);
            announcer.announce(one);
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
            let (announcer, task) = Announcer::spawn(GarpMode::Request, 100, cancel.clone());
            let batch = announcements(200, a, MAC_A);
            hold_all(&announcer, &[&batch]);
            announcer.announce(batch);
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
            assert_eq!(parse_arp(f).unwrap().spa, vip(i).v4().unwrap(), "in order");
        }
    });
}

/// The lease bounds what goes out: frames still queued when a lease that
/// is not renewed ends are dropped (and counted), the rest of the queue
/// with them.
#[test]
fn frames_queued_past_the_lease_are_never_sent() {
    in_netns(|| {
        let (a, b) = veth("va", MAC_A, "vb", MAC_B);
        let cap = Capture::start(b);
        let (queued, until, dropped) = block_on(async {
            let cancel = CancellationToken::new();
            let (announcer, task) = Announcer::spawn(GarpMode::Request, 100, cancel.clone());
            let queued = Instant::now();
            let until = tokio::time::Instant::now() + Duration::from_millis(500);
            let batch = announcements(200, a, MAC_A);
            announcer.hold(batch.iter().map(|x| (x.vip, x.ifindex)), Some(until));
            announcer.announce(batch);
            // 200 frames at 100/s take 1.7 s; wait well past the lease.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            cancel.cancel();
            task.await.unwrap();
            (queued, until.into_std(), announcer.total_dropped())
        });
        let frames = cap.snapshot();
        // 32 at once, then one every 10 ms until the deadline: about 80
        // (at least the first burst, however loaded the machine; far from 200).
        assert!(
            (32..=100).contains(&frames.len()),
            "{} frames went out before a 500 ms deadline",
            frames.len()
        );
        let last = frames.last().unwrap().0;
        assert!(
            last < until + Duration::from_millis(20),
            "a frame went out {:?} after the batch was queued, past the lease",
            last - queued
        );
        assert_eq!(
            dropped as usize,
            200 - frames.len(),
            "every frame not sent is counted as dropped"
        );
    });
}

/// Renewals extend what is queued: a paced queue five times longer than
/// one lease goes out in full while the lease keeps being renewed, whatever
/// lease was current when the frames were queued.
#[test]
fn a_renewed_lease_keeps_the_whole_queue_going() {
    in_netns(|| {
        let (a, b) = veth("va", MAC_A, "vb", MAC_B);
        let cap = Capture::start(b);
        let lease = Duration::from_millis(200);
        let dropped = block_on(async {
            let cancel = CancellationToken::new();
            let (announcer, task) = Announcer::spawn(GarpMode::Request, 200, cancel.clone());
            let batch = announcements(200, a, MAC_A);
            let until = tokio::time::Instant::now() + lease;
            announcer.hold(batch.iter().map(|x| (x.vip, x.ifindex)), Some(until));
            announcer.announce(batch);
            // 200 frames at 200/s take about 0.85 s: renew every 50 ms.
            let deadline = Instant::now() + Duration::from_secs(5);
            while cap.count() < 200 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                announcer.extend(Some(tokio::time::Instant::now() + lease));
            }
            cancel.cancel();
            task.await.unwrap();
            announcer.total_dropped()
        });
        let frames = cap.snapshot();
        assert_eq!(frames.len(), 200, "frames sent under a renewed lease");
        assert_eq!(dropped, 0);
        for (i, (_, f)) in frames.iter().enumerate() {
            assert_eq!(parse_arp(f).unwrap().spa, vip(i).v4().unwrap(), "in order");
        }
    });
}

/// A frame goes out only for a VIP still held, and on the interface it is
/// held on: frames of a VIP released (or moved) while they wait are
/// dropped and counted per VIP; a round that repeats frames still waiting
/// queues nothing twice.
#[test]
fn frames_of_vips_no_longer_held_are_dropped_and_counted() {
    in_netns(|| {
        let (a, b) = veth("va", MAC_A, "vb", MAC_B);
        let cap = Capture::start(b);
        let (stats, dropped, sent) = block_on(async {
            let cancel = CancellationToken::new();
            let (announcer, task) = Announcer::spawn(GarpMode::Request, 100, cancel.clone());
            let batch = announcements(100, a, MAC_A);
            hold_all(&announcer, &[&batch]);
            announcer.announce(batch.clone());
            // The same round again at once: already waiting, not queued twice.
            announcer.announce(batch.clone());
            // Keep the even VIPs; the odd ones move to another interface
            // (held, but not where these frames would go out).
            announcer.hold(
                batch
                    .iter()
                    .map(|x| (x.vip, if x.vip == vip(1) { a + 1000 } else { x.ifindex }))
                    .enumerate()
                    .filter(|(i, _)| i % 2 == 0 || *i == 1)
                    .map(|(_, h)| h),
                None,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while announcer.total_sent() + announcer.total_dropped() < 100
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            cancel.cancel();
            task.await.unwrap();
            (
                announcer.stats(),
                announcer.total_dropped(),
                announcer.total_sent(),
            )
        });
        let frames = cap.snapshot();
        assert_eq!(
            sent + dropped,
            100,
            "each frame queued once: sent {sent}, dropped {dropped}"
        );
        assert_eq!(frames.len() as u64, sent);
        // Only the first burst (sent before the release) may carry an odd VIP.
        for (_, f) in &frames[32.min(frames.len())..] {
            let spa = parse_arp(f).unwrap().spa;
            let i = (0..100).find(|&i| vip(i).v4() == Some(spa)).unwrap();
            assert!(i % 2 == 0, "{spa} was released but announced");
        }
        assert!(dropped >= 40, "dropped {dropped}");
        for i in (33..100).step_by(2) {
            let s = &stats[&vip(i)];
            assert_eq!((s.frames_sent, s.dropped), (0, 1), "{}", vip(i));
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
            // A VIP is held on one interface: the second takes other VIPs.
            let b1 = announcements(60, a1, MAC_A);
            let b2: Vec<Announcement> = announcements(120, a2, MAC_C).split_off(60);
            hold_all(&announcer, &[&b1, &b2]);
            announcer.announce(b1);
            announcer.announce(b2);
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
                spread >= Duration::from_millis(450) && spread < Duration::from_millis(1200),
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
            let (announcer, task) = Announcer::spawn(GarpMode::Request, 100, cancel.clone());
            hold_all(&announcer, &[&one]);
            // Open the socket while the link is up, then take it down.
            announcer.announce(one.clone());
            cap.wait_for(1, Duration::from_secs(2)).await;
            assert_eq!(cap.count(), 1);
            ip(&["link", "set", "va", "down"]);
            // One at a time: a frame still waiting is not queued twice.
            for errors in 1..=2 {
                announcer.announce(one.clone());
                let deadline = Instant::now() + Duration::from_secs(2);
                while announcer.stats()[&v].errors < errors && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
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
