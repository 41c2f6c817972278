//! Lab services: what a VIP is for in a storage cluster. Every node runs a
//! real iSCSI target, Debian's `tgtd`, exporting one LUN backed by one image
//! file that all nodes share (as a real cluster's nodes share their
//! storage), listening on port 3260 of the wildcard address so that it
//! answers on whichever address the node holds, the VIP included; and a web
//! console, `busybox httpd`, whose page names the node that served it.
//! Clients are real ones too: libiscsi's user-space initiator tools (no
//! kernel module) and `busybox wget`.
//!
//! Every server is a lab process, so the lab's teardown stops it by PID,
//! also after a panic. `tgtd -f` ignores SIGTERM, so [`Services`] SIGKILLs
//! it on drop (by PID) instead of leaving the lab to wait out its grace.

use std::{
    fs,
    io::{ErrorKind, Read as _},
    mem::MaybeUninit,
    net::Ipv4Addr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Output,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    cluster::Cluster,
    lab::{Host, LabProcess, Netns, StoppableThread, packet_socket, wait_until},
};

/// The iSCSI portal port every target listens on (all addresses).
pub const ISCSI_PORT: u16 = 3260;
/// The web console's port (all addresses).
pub const CONSOLE_PORT: u16 = 80;
/// The one target every node serves.
pub const IQN: &str = "iqn.2003-01.org.example.vipd:storage";
/// Size of the shared LUN (a sparse file).
pub const IMAGE_SIZE: u64 = 64 << 20;
/// tgt's default logical block size.
pub const BLOCK_SIZE: usize = 512;
/// The identity every node's LU reports (INQUIRY VPD pages 0x80 and 0x83).
/// Initiators, multipath above all, recognise a disk by it, so every
/// target of the cluster must report the same one.
const SCSI_SN: &str = "VIPDLAB0001";
const SCSI_ID: &str = "vipd-lab-storage-lun1";
/// Where tgtd keeps its control socket and lock file: one directory for
/// the whole machine, whichever namespace tgtd runs in.
const TGTD_RUN_DIR: &str = "/var/run/tgtd";
/// How long a server gets to come up.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// `iscsi://<addr>/<IQN>/1`, the LUN as libiscsi's tools name it.
pub fn lun_url(addr: Ipv4Addr) -> String {
    format!("iscsi://{addr}/{IQN}/1")
}

/// The console's page at `addr`.
pub fn console_url(addr: Ipv4Addr) -> String {
    format!("http://{addr}:{CONSOLE_PORT}/")
}

/// One node's iSCSI target daemon.
pub struct Target {
    pub host: Host,
    /// tgtd's `--control-port`, which `tgtadm -C` must name.
    pub control_port: u32,
    pub process: LabProcess,
}

impl Target {
    /// `tgtadm -C <port> <args>` in the node's namespace.
    pub fn tgtadm(&self, args: &[&str]) -> Output {
        let port = self.control_port.to_string();
        let mut argv = vec!["tgtadm", "-C", &port];
        argv.extend_from_slice(args);
        self.host.exec(&argv)
    }

    /// Like [`Target::tgtadm`], panicking unless it succeeds; returns stdout.
    pub fn tgtadm_ok(&self, args: &[&str]) -> String {
        let out = self.tgtadm(args);
        assert!(
            out.status.success(),
            "tgtadm -C {} {} on {} failed ({}): {}{}",
            self.control_port,
            args.join(" "),
            self.host.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The backing store paths of the LUs this target serves (`tgtadm --op
    /// show`), to check that a node serves the shared image.
    pub fn backing_stores(&self) -> Vec<PathBuf> {
        self.tgtadm_ok(&["--lld", "iscsi", "--op", "show", "--mode", "target"])
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Backing store path: "))
            .filter(|p| p.starts_with('/'))
            .map(PathBuf::from)
            .collect()
    }
}

/// The services of every node: stops them on drop (see the module doc).
pub struct Services {
    targets: Vec<Target>,
    consoles: Vec<LabProcess>,
    image: PathBuf,
}

impl Services {
    /// Starts a target and a console on each of `nodes`, the target's LUN
    /// backed by one new zero-filled image in `dir`.
    pub fn start(dir: &Path, nodes: &[&Host]) -> Services {
        let image = dir.join("shared-lun.img");
        let file = fs::File::create(&image)
            .unwrap_or_else(|e| panic!("creating {}: {e}", image.display()));
        file.set_len(IMAGE_SIZE)
            .unwrap_or_else(|e| panic!("sizing {}: {e}", image.display()));
        // Built up one server at a time, so a failure half-way still stops
        // (on drop) whatever was started.
        let mut services = Services {
            targets: Vec::new(),
            consoles: Vec::new(),
            image,
        };
        for host in nodes {
            let target = start_target(host, &services.image);
            services.targets.push(target);
            let console = start_console(host, dir);
            services.consoles.push(console);
        }
        services
    }

    /// [`Services::start`] on every node of `c`.
    pub fn on_cluster(c: &Cluster) -> Services {
        let hosts: Vec<&Host> = c.nodes.iter().map(|n| &n.host).collect();
        Services::start(c.lab.dir(), &hosts)
    }

    /// The image file behind every node's LUN.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Node `i`'s target (in the order the nodes were given).
    pub fn target(&self, i: usize) -> &Target {
        &self.targets[i]
    }

    /// Stops every server: SIGKILL for tgtd (it ignores SIGTERM), SIGTERM
    /// for the consoles; removes tgtd's control socket and lock file.
    /// Calling it twice is harmless.
    pub fn stop(&mut self) {
        for t in self.targets.drain(..) {
            if t.process.kill(libc::SIGKILL) {
                let _ = t.process.wait_timeout(Duration::from_secs(5));
            }
            if !t.process.is_running() {
                for path in control_files(t.control_port) {
                    let _ = fs::remove_file(path);
                }
            }
        }
        for c in self.consoles.drain(..) {
            if c.kill(libc::SIGTERM) && c.wait_timeout(Duration::from_secs(2)).is_none() {
                c.kill(libc::SIGKILL);
                let _ = c.wait_timeout(Duration::from_secs(5));
            }
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop();
    }
}

fn control_files(port: u32) -> [PathBuf; 2] {
    let dir = Path::new(TGTD_RUN_DIR);
    [
        dir.join(format!("socket.{port}")),
        dir.join(format!("socket.{port}.lock")),
    ]
}

/// A control port for a new tgtd. The ports name files in one directory of
/// the whole machine, so each test process draws from a range of its own;
/// a collision anyway (tgtd then exits: it locks the port's lock file) is
/// retried on the next port. tgtd takes ports up to 32767.
fn next_control_port() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    1000 + (std::process::id() % 960) * 32 + n % 32
}

/// Whether process `pid` holds the lock on tgtd's lock file for `port`
/// (`/proc/locks`: `1: POSIX  ADVISORY  WRITE <pid> <maj>:<min>:<inode> 0 EOF`).
fn holds_control_lock(pid: u32, port: u32) -> bool {
    let [_, lock] = control_files(port);
    let Ok(meta) = fs::metadata(&lock) else {
        return false;
    };
    let (pid, ino) = (pid.to_string(), meta.ino().to_string());
    fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .any(|f| f.len() >= 6 && f[4] == pid && f[5].rsplit(':').next() == Some(&ino))
}

fn start_target(host: &Host, image: &Path) -> Target {
    let mut failures = Vec::new();
    for _ in 0..8 {
        let port = next_control_port();
        let process = host.spawn([
            "tgtd",
            "-f",
            "-C",
            &port.to_string(),
            "--iscsi",
            &format!("portal=0.0.0.0:{ISCSI_PORT}"),
        ]);
        // Ours once it holds the port's lock: only then can `tgtadm -C`
        // not be talking to some other tgtd.
        let locked = wait_until(START_TIMEOUT, Duration::from_millis(10), || {
            !process.is_running() || holds_control_lock(process.pid(), port)
        });
        if locked.is_err() || !process.is_running() {
            process.kill(libc::SIGKILL);
            let _ = process.wait_timeout(Duration::from_secs(5));
            failures.push(format!("port {port}: {}", process.stderr().trim()));
            continue;
        }
        let target = Target {
            host: host.clone(),
            control_port: port,
            process,
        };
        let answered = wait_until(START_TIMEOUT, Duration::from_millis(20), || {
            target
                .tgtadm(&["--op", "show", "--mode", "system"])
                .status
                .success()
        });
        if let Err(e) = answered {
            panic!(
                "tgtd on {} (control port {port}) never answered tgtadm: {e}; stderr: {}",
                host.name(),
                target.process.stderr()
            );
        }
        configure_target(&target, image);
        return target;
    }
    panic!(
        "tgtd on {} did not start: {}",
        host.name(),
        failures.join("; ")
    );
}

/// One target (tid 1, [`IQN`]), LUN 1 backed by `image` with the cluster's
/// LU identity, open to every initiator.
fn configure_target(t: &Target, image: &Path) {
    let image = image.display().to_string();
    let params = format!("scsi_sn={SCSI_SN},scsi_id={SCSI_ID}");
    // The fixed words, then one that may hold anything (a path).
    let argv = |words: &str, last: &str| -> Vec<String> {
        words
            .split_whitespace()
            .chain([last])
            .map(str::to_string)
            .collect()
    };
    for args in [
        argv("--lld iscsi --op new --mode target --tid 1 -T", IQN),
        argv(
            "--lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b",
            &image,
        ),
        argv(
            "--lld iscsi --op update --mode logicalunit --tid 1 --lun 1 --params",
            &params,
        ),
        argv("--lld iscsi --op bind --mode target --tid 1 -I", "ALL"),
    ] {
        t.tgtadm_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

fn start_console(host: &Host, dir: &Path) -> LabProcess {
    let root = dir.join(format!("console-{}", host.name()));
    fs::create_dir_all(&root).unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
    let page = root.join("index.html");
    fs::write(&page, format!("served-by {}\n", host.name()))
        .unwrap_or_else(|e| panic!("writing {}: {e}", page.display()));
    let root = root.display().to_string();
    let process = host.spawn([
        "busybox",
        "httpd",
        "-f",
        "-p",
        &format!("0.0.0.0:{CONSOLE_PORT}"),
        "-h",
        &root,
    ]);
    let local = Ipv4Addr::LOCALHOST;
    let up = wait_until(START_TIMEOUT, Duration::from_millis(20), || {
        !process.is_running() || console_get(host, local, Duration::from_secs(1)).is_some()
    });
    assert!(
        up.is_ok() && process.is_running(),
        "busybox httpd on {} did not come up: {}",
        host.name(),
        process.stderr()
    );
    process
}

// ---- clients, in the client's namespace ----

/// The node named by the console page at `addr` (`busybox wget`), or `None`
/// when nothing answered within `timeout`.
pub fn console_get(client: &Netns, addr: Ipv4Addr, timeout: Duration) -> Option<String> {
    let url = console_url(addr);
    let out = client.exec_timeout(&["busybox", "wget", "-q", "-O", "-", &url], timeout)?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("served-by ")
        .map(str::to_string)
}

/// The LUN's size in bytes as `iscsi-readcapacity16` reports it through
/// `addr`, or `None` when it failed or took longer than `timeout`.
pub fn read_capacity(client: &Netns, addr: Ipv4Addr, timeout: Duration) -> Option<u64> {
    let url = lun_url(addr);
    let out = client.exec_timeout(&["iscsi-readcapacity16", &url], timeout)?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Total size:"))
        .and_then(|n| n.trim().parse().ok())
}

/// The fill byte libiscsi's multipath test leaves on the LUN: path `i`
/// writes `0xa6 ^ i`, and the second (last) path writes last.
pub const MULTIPATH_LAST_FILL: u8 = 0xa7;

/// What one `iscsi-test-cu` run counted.
#[derive(Clone, Debug)]
pub struct CompareRun {
    pub asserts_passed: u64,
    pub output: String,
}

/// libiscsi's own write-and-compare across two paths, `iscsi-test-cu
/// --dataloss --test SCSI.MultipathIO.Simple <via[0]> <via[1]>`: through
/// each path in turn it WRITE10s a fill (`0xa6 ^ path`) over 1..=256
/// blocks at LBA 0, READ10s them back through the other path and compares
/// every byte; first it checks that both paths report the same LU device
/// identifier. Panics with the tool's output unless every check passed.
/// Leaves [`MULTIPATH_LAST_FILL`] in the first 256 blocks, written through
/// `via[1]`.
pub fn write_and_compare(client: &Netns, via: [Ipv4Addr; 2]) -> CompareRun {
    let (a, b) = (lun_url(via[0]), lun_url(via[1]));
    let argv = [
        "iscsi-test-cu",
        "--dataloss",
        "--silent",
        "--test",
        "SCSI.MultipathIO.Simple",
        &a,
        &b,
    ];
    let out = client
        .exec_timeout(&argv, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{} hung for 60 s", argv.join(" ")));
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = |what: &str| -> Option<Vec<String>> {
        output
            .lines()
            .map(str::split_whitespace)
            .map(|w| w.map(str::to_string).collect::<Vec<_>>())
            .find(|w| w.first().map(String::as_str) == Some(what))
    };
    // CUnit's run summary: "tests 1 1 1 0 0" (total ran passed failed
    // inactive), "asserts 1536 1536 1536 0 n/a".
    let tests = summary("tests").unwrap_or_default();
    let asserts = summary("asserts").unwrap_or_default();
    let num = |w: &[String], i: usize| w.get(i).and_then(|s| s.parse::<u64>().ok());
    let ok = out.status.success()
        && output
            .to_lowercase()
            .contains("found matching lu device identifier for all (2) paths")
        && num(&tests, 3) == Some(1)
        && num(&tests, 4) == Some(0)
        && num(&asserts, 4) == Some(0)
        // Two paths x 256 compares, besides the status checks.
        && num(&asserts, 3).is_some_and(|n| n >= 512);
    assert!(ok, "{} failed ({}):\n{output}", argv.join(" "), out.status);
    CompareRun {
        asserts_passed: num(&asserts, 3).unwrap_or(0),
        output,
    }
}

/// The byte the first `blocks` blocks of `image` are all filled with, if
/// they are.
pub fn image_fill(image: &Path, blocks: usize) -> Option<u8> {
    let mut buf = vec![0u8; blocks * BLOCK_SIZE];
    fs::File::open(image)
        .and_then(|mut f| f.read_exact(&mut buf))
        .unwrap_or_else(|e| panic!("reading {}: {e}", image.display()));
    let first = buf[0];
    buf.iter().all(|&b| b == first).then_some(first)
}

// ---- observing through a takeover ----

/// One outcome of a repeated probe.
#[derive(Clone, Debug)]
pub struct Sample<T> {
    /// When the probe started.
    pub started: Instant,
    /// When it completed: when its answer (or its failure) arrived.
    pub at: Instant,
    pub value: Option<T>,
}

/// Runs a probe every `every` on a thread and records each outcome.
pub struct Poller<T> {
    samples: Arc<Mutex<Vec<Sample<T>>>>,
    thread: StoppableThread,
}

impl<T: Clone + Send + 'static> Poller<T> {
    pub fn start(every: Duration, mut probe: impl FnMut() -> Option<T> + Send + 'static) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (samples, stop) = (samples.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let value = probe();
                    samples.lock().unwrap().push(Sample {
                        started,
                        at: Instant::now(),
                        value,
                    });
                    std::thread::sleep(every.saturating_sub(started.elapsed()));
                }
            })
        };
        Poller {
            samples,
            thread: StoppableThread::new(stop, thread),
        }
    }

    /// The outcomes so far.
    pub fn samples(&self) -> Vec<Sample<T>> {
        self.samples.lock().unwrap().clone()
    }

    /// Stops the thread and returns every outcome.
    pub fn stop(mut self) -> Vec<Sample<T>> {
        self.thread.halt();
        self.samples()
    }
}

/// Around `fault`: when the last success that completed at or before it
/// and the first success of a probe started after it completed.
pub fn gap_around<T>(samples: &[Sample<T>], fault: Instant) -> (Option<Instant>, Option<Instant>) {
    let ok = |s: &&Sample<T>| s.value.is_some();
    let last = samples.iter().filter(ok).filter(|s| s.at <= fault).last();
    let first = samples.iter().filter(ok).find(|s| s.started > fault);
    (last.map(|s| s.at), first.map(|s| s.at))
}

/// The iSCSI PDUs (RFC 7143 opcodes) by which a target completes a
/// command for its initiator: SCSI Response and SCSI Data-In (iscsi-perf's
/// READ16s end with a Data-In carrying the status).
const COMPLETING_OPCODES: [u8; 2] = [0x21, 0x25];

/// The first byte of the TCP payload of Ethernet frame `frame`, if it is
/// an IPv4 TCP segment from `src`:`sport` carrying data.
pub fn tcp_payload_start(frame: &[u8], src: Ipv4Addr, sport: u16) -> Option<u8> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 || *ip.get(9)? != 6 {
        return None;
    }
    if ip.get(12..16)? != src.octets() {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let tcp = ip.get(ihl..total.min(ip.len()))?;
    if u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]) != sport {
        return None;
    }
    let offset = usize::from(tcp.get(12)? >> 4) * 4;
    tcp.get(offset).copied()
}

/// The instants at which the client received, from the portal at `addr`,
/// a TCP segment opening with a PDU that completes a command: the I/O
/// completions of every session, as the initiator's side of the wire sees
/// them (an AF_PACKET socket on the client's interface, microseconds
/// apart at full rate). A segment that starts inside a PDU is not counted,
/// which only thins a dense stream.
pub struct IoCompletions {
    at: Arc<Mutex<Vec<Instant>>>,
    thread: StoppableThread,
}

impl IoCompletions {
    pub fn start(client: &Netns, ifname: &str, addr: Ipv4Addr) -> IoCompletions {
        let ifname_owned = ifname.to_string();
        let at = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (at, stop) = (at.clone(), stop.clone());
            // Incoming frames only: an ETH_P_IP socket sees no outgoing ones.
            let open = move || packet_socket(&ifname_owned, libc::ETH_P_IP as u16);
            client.spawn_opened(&format!("capture on {ifname}"), open, move |socket| {
                // Headers are enough: the opcode is the payload's first byte.
                let mut buf = [MaybeUninit::<u8>::uninit(); 256];
                while !stop.load(Ordering::Relaxed) {
                    match socket.recv(&mut buf) {
                        Ok(n) => {
                            let now = Instant::now();
                            // SAFETY: recv initialised the first n bytes (at most the buffer).
                            let bytes: Vec<u8> = buf[..n.min(buf.len())]
                                .iter()
                                .map(|b| unsafe { b.assume_init() })
                                .collect();
                            if tcp_payload_start(&bytes, addr, ISCSI_PORT)
                                .is_some_and(|b| COMPLETING_OPCODES.contains(&(b & 0x3f)))
                            {
                                at.lock().unwrap().push(now);
                            }
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                ErrorKind::WouldBlock
                                    | ErrorKind::TimedOut
                                    | ErrorKind::Interrupted
                            ) => {}
                        Err(_) => break,
                    }
                }
            })
        };
        IoCompletions {
            at,
            thread: StoppableThread::new(stop, thread),
        }
    }

    /// The completions so far, in order.
    pub fn times(&self) -> Vec<Instant> {
        self.at.lock().unwrap().clone()
    }

    /// The latest completion so far.
    pub fn last(&self) -> Option<Instant> {
        self.at.lock().unwrap().last().copied()
    }

    /// Stops the capture and returns every completion.
    pub fn stop(mut self) -> Vec<Instant> {
        self.thread.halt();
        self.times()
    }
}

/// The longest stretch between two consecutive instants of `times` (in
/// order) within [from, to], as (the earlier, the later); `None` with fewer
/// than two.
pub fn longest_gap(times: &[Instant], from: Instant, to: Instant) -> Option<(Instant, Instant)> {
    let inside: Vec<Instant> = times
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect();
    inside
        .windows(2)
        .map(|w| (w[0], w[1]))
        .max_by_key(|(a, b)| b.saturating_duration_since(*a))
}

/// One status line of `iscsi-perf` (it prints one a second).
#[derive(Clone, Copy, Debug)]
pub struct PerfReport {
    /// When the line was read (within [`PERF_POLL`] of its printing).
    pub at: Instant,
    /// Its "iops current": reads completed since the previous line.
    pub iops: u64,
}

/// How often [`PerfRun`] reads iscsi-perf's output.
pub const PERF_POLL: Duration = Duration::from_millis(20);

/// Continuous reads through the VIP: `iscsi-perf` (libiscsi; sequential
/// READ16s, a few in flight, reconnecting when the connection breaks), its
/// once-a-second reports stamped as they appear. It runs at nice 19 so
/// that a saturating I/O loop on a two-core machine does not starve the
/// cluster under test; tgtd, serving it, follows its pace.
pub struct PerfRun {
    pub process: LabProcess,
    reports: Arc<Mutex<Vec<PerfReport>>>,
    thread: StoppableThread,
}

impl PerfRun {
    pub fn start(client: &Netns, addr: Ipv4Addr) -> PerfRun {
        let url = lun_url(addr);
        let process = client.spawn([
            "nice",
            "-n",
            "19",
            "iscsi-perf",
            "-m",
            "4",
            // Reconnect (without giving up) when the connection breaks.
            "-x",
            "1000",
            &url,
        ]);
        let reports = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (reports, stop) = (reports.clone(), stop.clone());
            let path = process.stdout_path().to_path_buf();
            std::thread::spawn(move || {
                let mut seen = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let text = fs::read_to_string(&path).unwrap_or_default();
                    let iops = perf_reports(&text);
                    if iops.len() > seen {
                        let at = Instant::now();
                        let mut r = reports.lock().unwrap();
                        r.extend(iops[seen..].iter().map(|&iops| PerfReport { at, iops }));
                        seen = iops.len();
                    }
                    std::thread::sleep(PERF_POLL);
                }
            })
        };
        PerfRun {
            process,
            reports,
            thread: StoppableThread::new(stop, thread),
        }
    }

    /// The reports so far.
    pub fn reports(&self) -> Vec<PerfReport> {
        self.reports.lock().unwrap().clone()
    }

    /// Waits until a report after `since` counts reads; whether one did
    /// within `timeout`.
    pub fn wait_reads(&self, since: Instant, timeout: Duration) -> bool {
        wait_until(timeout, Duration::from_millis(50), || {
            self.reports().iter().any(|r| r.at > since && r.iops > 0)
        })
        .is_ok()
    }

    /// Stops iscsi-perf (by PID) and returns every report and its output.
    pub fn stop(mut self) -> (Vec<PerfReport>, String) {
        self.halt();
        let out = format!("{}{}", self.process.stdout(), self.process.stderr());
        (self.reports(), out.replace('\r', "\n"))
    }

    fn halt(&mut self) {
        if self.process.kill(libc::SIGTERM)
            && self.process.wait_timeout(Duration::from_secs(3)).is_none()
        {
            self.process.kill(libc::SIGKILL);
            let _ = self.process.wait_timeout(Duration::from_secs(5));
        }
        self.thread.halt();
    }
}

impl Drop for PerfRun {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The "iops current" of every complete report in iscsi-perf's output.
/// Each report is written (and flushed) as `\r<text>`, the text ending in
/// padding spaces: "00:00:02 - lba 76992, iops current 12749 (49 MB/s),
/// iops average 12987 (50 MB/s), in_flight 32, busy 0        ".
fn perf_reports(text: &str) -> Vec<u64> {
    text.split('\r')
        .skip(1)
        .filter(|r| r.ends_with("        "))
        .filter_map(|r| {
            r.split_once("iops current ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The longest silence in iscsi-perf's reports, as (last read before it,
/// first read after it). iscsi-perf reports from the completion of a read,
/// the first one a second or more after its previous report, with the mean
/// rate since then: after a silence, the report is the first read, and the
/// reads it counts (rate x window) at `steady_iops` say when the last read
/// before the silence was. `None` without a gap over 1.5 s.
pub fn perf_stall(reports: &[PerfReport], steady_iops: u64) -> Option<(Instant, Instant)> {
    let (a, b) = reports
        .windows(2)
        .map(|w| (w[0], w[1]))
        .filter(|(a, b)| b.at.saturating_duration_since(a.at) > Duration::from_millis(1500))
        .max_by_key(|(a, b)| b.at.saturating_duration_since(a.at))?;
    let window = b.at.saturating_duration_since(a.at).as_secs_f64();
    let reads = b.iops as f64 * window;
    let busy = if steady_iops > 0 {
        (reads / steady_iops as f64).min(window)
    } else {
        0.0
    };
    Some((a.at + Duration::from_secs_f64(busy), b.at))
}

/// Reads per second as the client saw them: for each whole second `k` of
/// `seconds` (the second `[origin + k s, origin + k + 1 s)`), the reads
/// iscsi-perf's reports count in it. A report's reads (mean rate x window)
/// are spread evenly over its window, except across the silence
/// [`perf_stall`] finds, where they all come before its last read.
pub fn reads_per_second(
    reports: &[PerfReport],
    steady_iops: u64,
    origin: Instant,
    seconds: std::ops::Range<i64>,
) -> Vec<(i64, u64)> {
    let secs = |t: Instant| {
        if t >= origin {
            (t - origin).as_secs_f64()
        } else {
            -(origin - t).as_secs_f64()
        }
    };
    let stall = perf_stall(reports, steady_iops);
    let mut buckets: Vec<(i64, f64)> = seconds.map(|k| (k, 0.0)).collect();
    for w in reports.windows(2) {
        let (a, b) = (w[0], w[1]);
        let reads = b.iops as f64 * b.at.saturating_duration_since(a.at).as_secs_f64();
        let end = match stall {
            Some((last, first)) if first == b.at => last,
            _ => b.at,
        };
        let (from, to) = (secs(a.at), secs(end));
        if to <= from {
            continue;
        }
        for (k, n) in &mut buckets {
            let (lo, hi) = (*k as f64, *k as f64 + 1.0);
            let overlap = to.min(hi) - from.max(lo);
            if overlap > 0.0 {
                *n += reads * overlap / (to - from);
            }
        }
    }
    buckets
        .into_iter()
        .map(|(k, n)| (k, n.round() as u64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iscsi_perf_reports() {
        let text = "connected to iscsi://x/y/1\ninfinite runtime - press CTRL-C to abort.\n\n\
            \r00:00:01 - lba 79784, iops current 9967 (38 MB/s), iops average 9967 (38 MB/s), in_flight 4, busy 0        \
            \r00:00:02 - lba 31088, iops current 10295 (40 MB/s), iops average 10131 (39 MB/s), in_flight 4, busy 0        \
            \r00:00:03 - lba 117056, iops curr";
        assert_eq!(perf_reports(text), vec![9967, 10295]);
        assert!(perf_reports("connected\n").is_empty());
    }

    #[test]
    fn a_silence_in_the_reports_is_a_stall() {
        let t0 = Instant::now();
        let at = |ms: u64, iops: u64| PerfReport {
            at: t0 + Duration::from_millis(ms),
            iops,
        };
        // Reports at 1 s, 2 s; reads stop at 2.5 s; the next report, at
        // 6 s, counts 0.5 s of reads at 10,000 IOPS over its 4 s window.
        let r = [at(1000, 10_000), at(2000, 10_000), at(6000, 1250)];
        let (last, first) = perf_stall(&r, 10_000).expect("a stall");
        assert_eq!(last, t0 + Duration::from_millis(2500));
        assert_eq!(first, t0 + Duration::from_millis(6000));
        assert!(perf_stall(&r[..2], 10_000).is_none());
        // Per second: 10,000 in [1, 2), 5,000 in [2, 3) (until 2.5 s), then
        // nothing until the report at 6 s.
        let per = reads_per_second(&r, 10_000, t0, 0..6);
        assert_eq!(
            per,
            vec![(0, 0), (1, 10_000), (2, 5_000), (3, 0), (4, 0), (5, 0)]
        );
    }

    /// An Ethernet + IPv4 + TCP frame from 192.0.2.100:3260 with `payload`.
    fn segment(src: [u8; 4], sport: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend([0x08, 0x00]);
        let total = (20 + 20 + payload.len()) as u16;
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend(src);
        ip.extend([192, 0, 2, 50]);
        f.extend(ip);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&40000u16.to_be_bytes());
        tcp[12] = 5 << 4;
        f.extend(tcp);
        f.extend(payload);
        // Ethernet padding past the IP length is not payload.
        f.resize(f.len().max(60), 0);
        f
    }

    #[test]
    fn finds_the_opcode_of_a_targets_segment() {
        let vip = Ipv4Addr::new(192, 0, 2, 100);
        let data_in = segment(vip.octets(), ISCSI_PORT, &[0x25, 0x81, 0, 0]);
        assert_eq!(tcp_payload_start(&data_in, vip, ISCSI_PORT), Some(0x25));
        // A bare ACK (padded to 60 bytes) carries nothing.
        let ack = segment(vip.octets(), ISCSI_PORT, &[]);
        assert_eq!(tcp_payload_start(&ack, vip, ISCSI_PORT), None);
        // Another source or port.
        let other = segment([192, 0, 2, 11], ISCSI_PORT, &[0x25]);
        assert_eq!(tcp_payload_start(&other, vip, ISCSI_PORT), None);
        let http = segment(vip.octets(), 80, &[0x25]);
        assert_eq!(tcp_payload_start(&http, vip, ISCSI_PORT), None);
        assert_eq!(tcp_payload_start(&data_in[..20], vip, ISCSI_PORT), None);
    }

    #[test]
    fn longest_gap_between_completions() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let t = [at(0), at(1), at(2), at(700), at(701), at(5000)];
        assert_eq!(longest_gap(&t, at(0), at(1000)), Some((at(2), at(700))));
        assert_eq!(longest_gap(&t, at(0), at(6000)), Some((at(701), at(5000))));
        assert_eq!(longest_gap(&t[..1], at(0), at(6000)), None);
    }

    #[test]
    fn finds_the_gap_around_a_fault() {
        let t0 = Instant::now();
        let at = |ms: u64, ok: bool| Sample {
            started: t0 + Duration::from_millis(ms.saturating_sub(20)),
            at: t0 + Duration::from_millis(ms),
            value: ok.then_some(()),
        };
        let s = [
            at(0, true),
            at(100, true),
            at(200, false),
            at(300, false),
            // Started before the fault, answered after it: not "after".
            at(160, true),
            at(400, true),
        ];
        let (last, first) = gap_around(&s, t0 + Duration::from_millis(150));
        assert_eq!(last, Some(t0 + Duration::from_millis(100)));
        assert_eq!(first, Some(t0 + Duration::from_millis(400)));
    }
}
