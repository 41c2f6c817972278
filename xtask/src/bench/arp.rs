//! The ARP benchmark: a client floods ARP requests for a VIP that vipd holds
//! on another lab host, answered by the XDP program in native mode (with a
//! pass program on the veth's other end, as docs/DESIGN.md (facts) says native XDP_TX on
//! veth needs), in generic mode, and by the kernel (`--no-xdp`); it measures
//! replies per second, CPU time per reply, and the `arping` round trip.
//!
//! CPU is taken from the scheduler's exact run times (`schedstat`) of the
//! threads that do the work, not from machine-wide `/proc/stat`: other jobs
//! share this machine, and on veth the whole path (bridge, the node's receive
//! and reply, the client's receive) runs as softirq work inline in the
//! sending thread, or in `ksoftirqd` when the softirq budget runs out.

use std::{
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Protocol, Socket, Type};
use vipd_tests::lab::{Host, HostIf, Lab, LabProcess, wait_until};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
/// How long one flood lasts, and the most frames it may send.
const FLOOD_FOR: Duration = Duration::from_secs(2);
const FLOOD_MAX_FRAMES: u64 = 2_000_000;
/// `arping -c 1` round trips measured per mode.
const ARPINGS: usize = 50;
const ETH_P_ARP: u16 = 0x0806;

/// One flood: what was sent, what came back, what it cost.
#[derive(Clone, Copy, Debug)]
struct Flood {
    sent: u64,
    /// Sends refused with ENOBUFS (a full queue), retried.
    refused: u64,
    replies: u64,
    elapsed: Duration,
    /// CPU time of the sending thread plus every `ksoftirqd` (ns).
    cpu_ns: u64,
    /// CPU time of the client's counting thread (ns), reported apart.
    receiver_ns: u64,
}

/// The figures of one case over its runs.
struct Case {
    name: &'static str,
    floods: Vec<Flood>,
    /// Answered `arping -c 1` round trips (us).
    rtts: Vec<f64>,
    /// `arping -c 1` sent.
    arpings: usize,
    /// Replies the XDP program counted (xdp_replies), over all floods.
    xdp_replies: Option<u64>,
}

impl Case {
    fn new(name: &'static str) -> Case {
        Case {
            name,
            floods: Vec::new(),
            rtts: Vec::new(),
            arpings: 0,
            xdp_replies: None,
        }
    }
}

/// Who answers the requests on n1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Responder {
    /// vipd's XDP program in native (driver) mode: XDP_TX before any skb on n1.
    Native,
    /// vipd's XDP program in generic (skb) mode.
    Generic,
    /// vipd with `--no-xdp`: the kernel's ARP code answers.
    Kernel,
}

impl Responder {
    const ALL: [Responder; 3] = [Responder::Native, Responder::Generic, Responder::Kernel];

    fn name(self) -> &'static str {
        match self {
            Responder::Native => "XDP (native)",
            Responder::Generic => "XDP (generic)",
            Responder::Kernel => "kernel (--no-xdp)",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Responder::Native => &["--xdp-mode", "native"],
            Responder::Generic => &["--xdp-mode", "generic"],
            Responder::Kernel => &["--no-xdp"],
        }
    }

    /// The mode vipd's status must report for eth0 (None: XDP off).
    fn attached_mode(self) -> Option<&'static str> {
        match self {
            Responder::Native => Some("native"),
            Responder::Generic => Some("generic"),
            Responder::Kernel => None,
        }
    }
}

pub fn run(runs: usize) -> Result<String> {
    let runs = runs.max(1);
    let vipd = vipd_binary()?;
    let vipctl = vipd.with_file_name("vipctl");
    let lab = Lab::new("bench_arp");
    let n1 = lab.add_host(
        "n1",
        &[HostIf {
            bridge: 0,
            addr: "192.0.2.11/24",
        }],
    );
    let c1 = lab.add_host(
        "c1",
        &[HostIf {
            bridge: 0,
            addr: "192.0.2.50/24",
        }],
    );
    let sock = lab.dir().join("n1.sock");
    let c1_mac = parse_mac(&c1.mac("eth0"))?;

    // Native XDP_TX on a veth reaches the peer only when the peer runs an
    // XDP program itself (docs/DESIGN.md, facts): a second vipd holding no VIP passes
    // every frame on the bridge side of n1's eth0. It stays for every case,
    // so all of them cross the same path.
    let peer = n1.peer_name("eth0").to_string();
    let peer_sock = lab.dir().join("peer.sock");
    let peer_pass = start_peer_pass(&lab, &vipd, &vipctl, &peer, &peer_sock)?;

    // The lab's bridge runs br_netfilter's hooks (bridge-nf-call-*), about a
    // tenth of each flood's CPU in a profile: switch overhead that no real
    // wire has and that every case pays alike. Off in this lab's bridge
    // namespace only (the sysctls are per namespace).
    for key in ["arptables", "iptables", "ip6tables"] {
        let key = format!("net.bridge.bridge-nf-call-{key}");
        if Path::new("/proc/sys").join(key.replace('.', "/")).exists() {
            lab.bridge_netns().sysctl(&key, "0");
        }
    }

    // Warm up the path (neighbour entries, bridge fdb) once.
    flood(&c1, c1_mac, Duration::from_millis(200))?;

    // The cases take turns run by run, so that load from other jobs on
    // this shared machine spreads over all of them alike.
    let mut baseline = Case::new("no responder (baseline)");
    let mut cases: Vec<(Responder, Case)> = Responder::ALL
        .iter()
        .map(|r| (*r, Case::new(r.name())))
        .collect();
    let arpings = ARPINGS.div_ceil(runs);
    for run in 1..=runs {
        eprintln!("arp bench: run {run}/{runs}: baseline (nobody answers)");
        baseline.floods.push(flood(&c1, c1_mac, FLOOD_FOR)?);
        for (responder, case) in &mut cases {
            eprintln!("arp bench: run {run}/{runs}: {}", responder.name());
            let proc = start_vipd(&n1, &vipd, &vipctl, &sock, *responder)?;
            let before = match responder.attached_mode() {
                Some(_) => Some(xdp_replies(&vipctl, &sock)?),
                None => None,
            };
            case.floods.push(flood(&c1, c1_mac, FLOOD_FOR)?);
            if let Some(before) = before {
                let counted = xdp_replies(&vipctl, &sock)? - before;
                *case.xdp_replies.get_or_insert(0) += counted;
            }
            case.rtts.extend(arping_rtts(&c1, arpings));
            case.arpings += arpings;
            if !proc.is_running() {
                bail!(
                    "vipd ({}) died during the flood:\n{}",
                    responder.name(),
                    proc.stderr()
                );
            }
            proc.terminate(Duration::from_secs(10));
        }
    }
    if !peer_pass.is_running() {
        bail!(
            "the pass-through vipd on {peer} died:\n{}",
            peer_pass.stderr()
        );
    }
    peer_pass.terminate(Duration::from_secs(10));
    lab.teardown()
        .map_err(|e| anyhow::anyhow!("lab teardown: {}", e.join("; ")))?;

    for (_, case) in &cases {
        let replies: u64 = case.floods.iter().map(|f| f.replies).sum();
        if replies == 0 {
            bail!(
                "{}: no reply reached the client during the floods",
                case.name
            );
        }
        if case.rtts.is_empty() {
            bail!("{}: no arping to {VIP} was answered", case.name);
        }
    }
    let section = report(runs, &baseline, &cases);
    println!("{section}");
    Ok(section)
}

/// Starts the pass-through vipd in the bridge namespace: no VIPs, its XDP
/// program attached in native mode to `peer` (n1's eth0's other end).
fn start_peer_pass(
    lab: &Lab,
    bin: &Path,
    vipctl: &Path,
    peer: &str,
    sock: &Path,
) -> Result<LabProcess> {
    let argv = [
        bin.display().to_string(),
        "--config".to_string(),
        "/dev/null".to_string(),
        "--static-vips".to_string(),
        String::new(),
        "--xdp-interface".to_string(),
        peer.to_string(),
        "--xdp-mode".to_string(),
        "native".to_string(),
        "--api-socket".to_string(),
        sock.display().to_string(),
        "--garp-rounds".to_string(),
        "0".to_string(),
    ];
    let proc = lab.bridge_netns().spawn(&argv);
    let ready = wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
        proc.is_running()
            && attached_mode(vipctl, sock, peer).is_ok_and(|m| m.as_deref() == Some("native"))
    });
    if let Err(e) = ready {
        bail!(
            "the pass-through vipd did not attach natively to {peer}: {e}; status: {}\n{}",
            status(vipctl, sock).map_or_else(|e| e.to_string(), |v| v.to_string()),
            proc.stderr()
        );
    }
    Ok(proc)
}

/// The vipd binary: `VIPD_BIN`, else the release build (`cargo xtask build
/// --release`, which `bench` runs first).
fn vipd_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("VIPD_BIN") {
        Some(p) => PathBuf::from(p),
        None => crate::build::target_dir().join("release").join("vipd"),
    };
    if !path.is_file() {
        bail!(
            "vipd binary not found at {}: run `cargo xtask build --release` or set VIPD_BIN",
            path.display()
        );
    }
    Ok(path)
}

/// Starts vipd on `n1` holding the VIP and waits until the VIP is on eth0
/// and vipd's status reports the XDP attachment the case asks for (or none).
fn start_vipd(
    n1: &Host,
    bin: &Path,
    vipctl: &Path,
    sock: &Path,
    responder: Responder,
) -> Result<LabProcess> {
    let mut argv = vec![
        bin.display().to_string(),
        "--static-vips".to_string(),
        VIP.to_string(),
        "--api-socket".to_string(),
        sock.display().to_string(),
        // No R8 rounds: their announcements would fall into the floods.
        "--garp-rounds".to_string(),
        "0".to_string(),
    ];
    argv.extend(responder.args().iter().map(|s| s.to_string()));
    let proc = n1.spawn(&argv);
    let want = responder.attached_mode();
    let ready = wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
        let held = n1.ipv4_addrs("eth0").iter().any(|(a, _)| *a == VIP);
        proc.is_running()
            && held
            && attached_mode(vipctl, sock, "eth0").is_ok_and(|m| m.as_deref() == want)
    });
    if let Err(e) = ready {
        bail!(
            "vipd {} did not come up holding {VIP} with XDP {}: {e}; status: {}\n{}",
            responder.args().join(" "),
            want.unwrap_or("off"),
            status(vipctl, sock).map_or_else(|e| e.to_string(), |v| v.to_string()),
            proc.stderr()
        );
    }
    Ok(proc)
}

/// `vipctl status --json`.
fn status(vipctl: &Path, sock: &Path) -> Result<serde_json::Value> {
    let out = std::process::Command::new(vipctl)
        .args(["status", "--json", "--api-socket"])
        .arg(sock)
        .output()
        .with_context(|| format!("running {}", vipctl.display()))?;
    if !out.status.success() {
        bail!(
            "vipctl status: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The mode vipd reports its XDP program attached in on `ifname`
/// (`xdp.attached[].mode`); None when not attached there.
fn attached_mode(vipctl: &Path, sock: &Path, ifname: &str) -> Result<Option<String>> {
    let v = status(vipctl, sock)?;
    Ok(v["xdp"]["attached"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["interface"] == ifname)
        .and_then(|a| a["mode"].as_str())
        .map(str::to_string))
}

/// `xdp_replies` of the VIP from `vipctl arp stats --json`.
fn xdp_replies(vipctl: &Path, sock: &Path) -> Result<u64> {
    let out = std::process::Command::new(vipctl)
        .args(["arp", "stats", "--json", "--api-socket"])
        .arg(sock)
        .output()
        .with_context(|| format!("running {}", vipctl.display()))?;
    if !out.status.success() {
        bail!(
            "vipctl arp stats: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["vip"] == VIP.to_string())
        .and_then(|r| r["xdp_replies"].as_u64())
        .with_context(|| format!("no xdp_replies for {VIP} in {v}"))
}

/// Floods ARP requests for the VIP from the client's eth0 for `duration`
/// (at most FLOOD_MAX_FRAMES), counting the replies that reach the client.
fn flood(c1: &Host, c1_mac: [u8; 6], duration: Duration) -> Result<Flood> {
    let frame = request(c1_mac);
    let softirqd = ksoftirqd_pids();
    let soft_before: u64 = softirqd.iter().map(|p| schedstat_pid(*p)).sum();
    let result = c1.in_netns(|| -> Result<Flood> {
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(AtomicU64::new(0));
        let receiver_sock = packet_socket("eth0", ETH_P_ARP)?;
        // Room for every reply of a burst: a drop here would count as no reply.
        set_rcvbuf_force(&receiver_sock, 64 << 20);
        receiver_sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let sender_sock = packet_socket("eth0", 0)?;
        std::thread::scope(|s| {
            let receiver = {
                let (stop, replies) = (stop.clone(), replies.clone());
                s.spawn(move || {
                    let start = thread_cpu_ns();
                    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 128];
                    loop {
                        match receiver_sock.recv(&mut buf) {
                            Ok(n) if n >= 42 => {
                                // SAFETY: recv initialised the first n bytes.
                                let b: Vec<u8> = buf[..42]
                                    .iter()
                                    .map(|x| unsafe { x.assume_init() })
                                    .collect();
                                if b[20..22] == [0, 2] && b[28..32] == VIP.octets() {
                                    replies.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Ok(_) => {}
                            Err(_) if stop.load(Ordering::Relaxed) => break,
                            Err(_) => {}
                        }
                    }
                    thread_cpu_ns() - start
                })
            };
            let sender = s.spawn(move || -> Result<(u64, u64, Duration, u64)> {
                let cpu0 = thread_cpu_ns();
                let t0 = Instant::now();
                let mut sent = 0u64;
                let mut refused = 0u64;
                while sent < FLOOD_MAX_FRAMES {
                    if sent.is_multiple_of(256) && t0.elapsed() >= duration {
                        break;
                    }
                    match sender_sock.send(&frame) {
                        Ok(_) => sent += 1,
                        // A full queue: try again (counted only when sent).
                        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => refused += 1,
                        Err(e) => return Err(e).context("sending the flood"),
                    }
                }
                Ok((sent, refused, t0.elapsed(), thread_cpu_ns() - cpu0))
            });
            let sent = sender.join().expect("sender thread");
            // Late replies: the path drains within milliseconds.
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, Ordering::Relaxed);
            let receiver_ns = receiver.join().expect("receiver thread");
            let (sent, refused, elapsed, sender_ns) = sent?;
            Ok(Flood {
                sent,
                refused,
                replies: replies.load(Ordering::Relaxed),
                elapsed,
                cpu_ns: sender_ns,
                receiver_ns,
            })
        })
    })?;
    let soft_after: u64 = softirqd.iter().map(|p| schedstat_pid(*p)).sum();
    let flood = Flood {
        cpu_ns: result.cpu_ns + soft_after.saturating_sub(soft_before),
        ..result
    };
    eprintln!(
        "  flood: {} sent ({} ENOBUFS retries), {} replies in {:.2} s; sender+ksoftirqd {} ms (ksoftirqd {} ms), receiver {} ms",
        flood.sent,
        flood.refused,
        flood.replies,
        flood.elapsed.as_secs_f64(),
        flood.cpu_ns / 1_000_000,
        soft_after.saturating_sub(soft_before) / 1_000_000,
        flood.receiver_ns / 1_000_000
    );
    Ok(flood)
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

/// An AF_PACKET socket bound to `ifname` for ethertype `proto` (0: send only).
fn packet_socket(ifname: &str, proto: u16) -> Result<Socket> {
    let socket = Socket::new(
        Domain::PACKET,
        Type::RAW,
        Some(Protocol::from(i32::from(proto.to_be()))),
    )
    .context("AF_PACKET socket (needs CAP_NET_RAW)")?;
    let c_name = std::ffi::CString::new(ifname)?;
    // SAFETY: a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {ifname}");
    }
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto.to_be();
    sll.sll_ifindex = i32::try_from(ifindex)?;
    // SAFETY: sll is an initialised sockaddr_ll and we pass its size.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const sll).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("binding to {ifname}"));
    }
    Ok(socket)
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

/// PIDs of the `ksoftirqd/N` kernel threads.
fn ksoftirqd_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

/// `count` single `arping -c 1` from the client: the answered round trips (us).
fn arping_rtts(c1: &Host, count: usize) -> Vec<f64> {
    let mut times = Vec::new();
    for _ in 0..count {
        let out = c1.exec(&[
            "arping",
            "-c",
            "1",
            "-w",
            "1",
            "-i",
            "eth0",
            &VIP.to_string(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(us) = text.lines().find_map(parse_rtt_us) {
            times.push(us);
        }
    }
    times
}

/// "42 bytes from ...: index=0 time=21.3 usec" -> 21.3.
fn parse_rtt_us(line: &str) -> Option<f64> {
    let rest = line.split_once("time=")?.1;
    let mut words = rest.split_whitespace();
    let value: f64 = words.next()?.parse().ok()?;
    match words.next()? {
        "usec" => Some(value),
        "msec" => Some(value * 1e3),
        "sec" => Some(value * 1e6),
        "nsec" => Some(value / 1e3),
        _ => None,
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<Vec<u8>, _>>()
        .with_context(|| format!("MAC {text}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC {text}: not 6 bytes"))
}

/// Per-case medians: (frames sent/s, replies/s, CPU ns per sent frame,
/// responder CPU ns per reply given the baseline's ns per frame).
fn figures(case: &Case, base_ns_per_frame: f64) -> (f64, f64, f64, f64) {
    let rate = |n: u64, f: &Flood| n as f64 / f.elapsed.as_secs_f64();
    let sent = median(case.floods.iter().map(|f| rate(f.sent, f)).collect());
    let replies = median(case.floods.iter().map(|f| rate(f.replies, f)).collect());
    let per_frame = median(
        case.floods
            .iter()
            .map(|f| f.cpu_ns as f64 / f.sent.max(1) as f64)
            .collect(),
    );
    let per_reply = median(
        case.floods
            .iter()
            .filter(|f| f.replies > 0)
            .map(|f| (f.cpu_ns as f64 - base_ns_per_frame * f.sent as f64) / f.replies as f64)
            .collect(),
    );
    (sent, replies, per_frame, per_reply)
}

fn report(runs: usize, baseline: &Case, cases: &[(Responder, Case)]) -> String {
    let (base_sent, _, base_ns, _) = figures(baseline, 0.0);
    let case = |r: Responder| {
        cases
            .iter()
            .find(|(c, _)| *c == r)
            .map(|(_, case)| case)
            .expect("every responder is measured")
    };
    let mut s = String::new();
    let _ = writeln!(s, "## ARP: XDP responder against the kernel\n");
    let _ = writeln!(
        s,
        "Lab: client c1 and node n1 on one bridge (veth). vipd (single-node, VIP {VIP}) \
         answers with its XDP program in native mode (XDP_TX before n1 builds an skb), in \
         generic mode (on the skb), or, with `--no-xdp`, the kernel answers. Native XDP_TX \
         on a veth reaches the other end only when that end runs an XDP program itself \
         (docs/DESIGN.md, facts), so a second vipd in the bridge namespace, holding no VIP, attaches its \
         program natively to the bridge-side end of n1's eth0, where it passes every frame; \
         it runs during every case, the baseline and the kernel included, so all cases \
         cross the same path. The mode each vipd attached in is checked in its status \
         (`xdp.attached[].mode`). A raw AF_PACKET sender in c1 floods broadcast requests \
         for the VIP as fast as it can for {} s (at most {FLOOD_MAX_FRAMES} frames); a \
         second socket in c1 counts the replies. {runs} runs; in each run every case floods \
         once, in turn (vipd restarted per case), so load from other jobs spreads over all \
         cases; medians shown.\n",
        FLOOD_FOR.as_secs()
    );
    let _ = writeln!(
        s,
        "CPU: exact scheduler run times (`schedstat`) of the sending thread plus all \
         `ksoftirqd` threads. On veth the whole path (bridge, n1's receive, the XDP program \
         or the kernel's ARP code, the reply, c1's receive) runs as softirq work inline in \
         the sender's `send()`, or in `ksoftirqd` when the budget runs out; machine-wide \
         `/proc/stat` was not usable because other jobs share the 2 cores. The baseline \
         floods with nobody answering (no VIP on n1: the kernel drops each request); \
         responder CPU per reply = (CPU of the flood - baseline CPU per frame x frames \
         sent) / replies. It includes the reply's way back (the bridge-side pass program, \
         the bridge, delivery to c1's counting socket; the same for every case); that \
         thread's own user-space time is not counted.\n"
    );
    let _ = writeln!(
        s,
        "| case | frames sent/s | replies/s | CPU per frame sent | responder CPU per reply | arping RTT median (p90) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let _ = writeln!(
        s,
        "| {} | {:.0} | - | {:.0} ns | - | - |",
        baseline.name, base_sent, base_ns
    );
    for (_, case) in cases {
        let (sent, rps, ns, cost) = figures(case, base_ns);
        let rtt = if case.rtts.is_empty() {
            "-".to_string()
        } else {
            let mut t = case.rtts.clone();
            t.sort_by(f64::total_cmp);
            format!(
                "{:.0} us ({:.0} us), {}/{} answered",
                percentile(&t, 0.5),
                percentile(&t, 0.9),
                t.len(),
                case.arpings
            )
        };
        let _ = writeln!(
            s,
            "| {} | {sent:.0} | {rps:.0} | {ns:.0} ns | {cost:.0} ns | {rtt} |",
            case.name
        );
    }
    let _ = writeln!(s);
    let (_, n_rps, _, n_cost) = figures(case(Responder::Native), base_ns);
    let (_, g_rps, _, g_cost) = figures(case(Responder::Generic), base_ns);
    let (_, k_rps, _, k_cost) = figures(case(Responder::Kernel), base_ns);
    let _ = writeln!(
        s,
        "Ratios XDP (native) / kernel: replies/s {:.2} (target >= 3), responder CPU per \
         reply {:.2} (target < 1). XDP (generic) / kernel: replies/s {:.2}, CPU per reply \
         {:.2}.",
        n_rps / k_rps,
        n_cost / k_cost,
        g_rps / k_rps,
        g_cost / k_cost
    );
    let (_, _, k_ns, _) = figures(case(Responder::Kernel), base_ns);
    let _ = writeln!(
        s,
        "What limits replies/s here: on veth one CPU runs the whole path per frame (the \
         sender's syscall, the bridge, n1, the reply's way back, c1's kernel processing the \
         reply and the counting socket), and the baseline alone, without any reply, costs \
         {base_ns:.0} ns per frame. Even a responder that cost nothing, reply path included, \
         would raise replies/s over the kernel's by at most the kernel's CPU per frame / the \
         baseline's = {:.2}{}. The flood is CPU-bound, not held back by the socket ({} \
         sends refused with ENOBUFS over all floods; {} of {} requests answered), and on \
         the 2 shared cores the sending thread got a median {} of its wall time (the counting thread and other jobs compete), so replies/s also tracks \
         machine load; CPU per reply is the figure that compares the responders. On veth \
         native XDP is not skb-free either: the request reaches n1's veth as an skb (built \
         by c1's socket, cloned by the bridge), which veth copies into a page for the \
         program, and the bridge side builds a new skb from the XDP_TX frame.",
        k_ns / base_ns,
        if k_ns / base_ns < 3.0 {
            ": 3x is out of reach of this lab whatever answers"
        } else {
            ""
        },
        cases
            .iter()
            .flat_map(|(_, c)| &c.floods)
            .map(|f| f.refused)
            .sum::<u64>(),
        cases
            .iter()
            .flat_map(|(_, c)| &c.floods)
            .map(|f| f.replies)
            .sum::<u64>(),
        cases
            .iter()
            .flat_map(|(_, c)| &c.floods)
            .map(|f| f.sent)
            .sum::<u64>(),
        cases
            .iter()
            .map(|(r, c)| {
                let busy = median(
                    c.floods
                        .iter()
                        .map(|f| f.cpu_ns as f64 / f.elapsed.as_nanos() as f64)
                        .collect(),
                );
                format!("{:.0}% ({})", busy * 100.0, r.name())
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (_, case) in cases {
        let Some(counted) = case.xdp_replies else {
            continue;
        };
        let replies: u64 = case.floods.iter().map(|f| f.replies).sum();
        let sent: u64 = case.floods.iter().map(|f| f.sent).sum();
        let _ = writeln!(
            s,
            "Cross-check, {}: over its floods the program counted {counted} replies \
             (`vipctl arp stats`), the client received {replies} of {sent} requests sent.",
            case.name
        );
    }
    let recv: Vec<f64> = cases
        .iter()
        .flat_map(|(_, c)| &c.floods)
        .map(|f| f.receiver_ns as f64 / f.replies.max(1) as f64)
        .collect();
    let _ = writeln!(
        s,
        "The client's counting thread (not included above) spent a median {:.0} ns per reply.",
        median(recv)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_arping_times() {
        let line = "42 bytes from 7a:1c:00:11:22:33 (192.0.2.100): index=0 time=21.3 usec";
        assert_eq!(parse_rtt_us(line), Some(21.3));
        assert_eq!(parse_rtt_us("... time=1.5 msec"), Some(1500.0));
        assert_eq!(parse_rtt_us("Timeout"), None);
    }

    #[test]
    fn request_frame_asks_for_the_vip() {
        let f = request([2, 0, 0, 0, 0, 1]);
        assert_eq!(f.len(), 42);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[38..42], &VIP.octets());
    }
}
