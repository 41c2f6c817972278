//! The lab: hosts are network namespaces joined by three bridges that live in a
//! namespace of their own, plus the tools to run and observe things inside
//! them. A `Lab` removes every namespace and process it created on drop, also
//! when the test panics; nothing is ever added to the root namespace except
//! the `ip netns` names.
//!
//! Errors here are panics with the command and its output: this is test code,
//! and a failed setup step must fail the test with a message saying what broke.
//!
//! This file builds and tears down the topology; the rest, by concern:
//! `netns` (a namespace: commands in it, threads moved into it, sysctls),
//! `host` (a host and its interfaces), `process` (processes started in a
//! namespace, the binaries under test, helper threads and waits), `inspect`
//! (what a namespace's kernel holds: addresses, links, neighbours; ping and
//! arping), `tcp` (a banner server and its client), `capture` (AF_PACKET
//! captures), `frames` (ARP and NDP frames parsed), `checksum` (the
//! Internet checksum and its pseudo-headers), `netlink` (address
//! dumps, and address and neighbour events as they happen).

mod capture;
mod checksum;
mod frames;
mod host;
mod inspect;
mod netlink;
mod netns;
mod process;
mod tcp;

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

pub use capture::{ArpCapture, CaptureOptions, CapturedFrame, packet_socket, realtime_priority};
pub use checksum::{icmpv6_checksum, internet_checksum, pseudo_header4, pseudo_header6};
pub use frames::{ArpFrame, NdpFrame, fmt_mac, is_announcement, parse_mac};
pub use host::Host;
use host::{HostIface, HostInner};
pub use inspect::{Addr6, Arping, Neighbour};
pub use netlink::{
    Addr6Event, AddrEvent, AddrMonitor, AddrReader, MonitorOptions, NeighEvent, NlAddr, NlAddr6,
    NlNeigh, addr_events, route_socket,
};
pub(crate) use netns::enter_netns;
pub use netns::{Netns, ifindex_here, in_new_netns, ip_here};
use process::ProcInner;
pub(crate) use process::StoppableThread;
pub use process::{
    LabProcess, check_config_settings, require_root, succeeded, vipctl_bin, vipd_bin, wait_until,
};
pub use tcp::ServerHandle;

/// The three lab bridges (index = `HostIf::bridge`) and the subnet each carries.
/// The bridges themselves have no address: they are plain L2 switches.
pub const BRIDGES: [(&str, &str); 3] = [
    ("br0", "192.0.2.0/24"),
    ("br1", "198.51.100.0/24"),
    ("br2", "203.0.113.0/24"),
];

/// The IPv6 prefix each bridge carries beside its IPv4 subnet (same index
/// as [`BRIDGES`]); hosts get addresses in it only when a test asks
/// ([`Host::add_addr6`]). Besides these, lab interfaces have only the
/// link-local addresses the kernel gives them.
pub const BRIDGES_V6: [&str; 3] = [
    "2001:db8:0:1::/64",
    "2001:db8:0:2::/64",
    "2001:db8:0:3::/64",
];

/// Every lab's namespace names start with `vl<pid>-<n>-`; the stale sweep relies on it.
const NAME_TAG: &str = "vl";
const NETNS_DIR: &str = "/var/run/netns";
/// How long a process gets between SIGTERM and SIGKILL at teardown.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// Lines of each process log printed when a test fails.
const LOG_TAIL_LINES: usize = 200;

/// The ZooKeeper user of every lab's cluster credential.
pub const ZK_USER: &str = "vipd";
/// The systemd credential name vipd reads (`LoadCredential=vipd-zk:...`).
const CREDENTIAL_NAME: &str = "vipd-zk";

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

fn credential_dir(lab_dir: &Path) -> PathBuf {
    lab_dir.join("credentials")
}

/// Writes the lab's cluster credential: user [`ZK_USER`], a password no
/// other lab shares.
fn write_credential(lab_dir: &Path) {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let dir = credential_dir(lab_dir);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let password = format!("lab-{}-{nanos:x}", std::process::id());
    let path = dir.join(CREDENTIAL_NAME);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{ZK_USER}:{password}"))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// One interface of a host: which bridge it plugs into and its address
/// (`"192.0.2.11/24"`; an empty string leaves the interface without one).
#[derive(Clone, Copy, Debug)]
pub struct HostIf<'a> {
    pub bridge: usize,
    pub addr: &'a str,
}

impl<'a> HostIf<'a> {
    /// On bridge `bridge` (0 is br0) with `addr`.
    pub const fn on(bridge: usize, addr: &'a str) -> HostIf<'a> {
        HostIf { bridge, addr }
    }
}

/// A uniquely named lab topology. See the module doc.
pub struct Lab {
    shared: Arc<LabShared>,
    bridge: Netns,
    hosts: Mutex<Vec<Host>>,
    torn_down: AtomicBool,
}

struct LabShared {
    prefix: String,
    hint: String,
    dir: PathBuf,
    /// Namespaces this lab created, in creation order (the bridge namespace first).
    namespaces: Mutex<Vec<String>>,
    processes: Mutex<Vec<Arc<ProcInner>>>,
    next_proc: AtomicU32,
    /// The bpffs mounted for each host (its vipd's --bpf-dir), by label.
    bpf_mounts: Mutex<Vec<(String, PathBuf)>>,
}

impl Lab {
    /// Builds the bridge namespace with `br0`, `br1`, `br2` (see [`BRIDGES`]).
    /// `name_hint` shows up in namespace names and the temp dir, for humans.
    pub fn new(name_hint: &str) -> Lab {
        require_root();
        SWEEP.call_once(sweep_stale);
        let hint: String = name_hint
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(16)
            .collect();
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NAME_TAG}{}-{n}-{hint}", std::process::id());
        let dir = std::env::temp_dir().join(format!("vipd-lab-{prefix}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("creating lab dir {}: {e}", dir.display()));
        write_credential(&dir);
        let shared = Arc::new(LabShared {
            prefix: prefix.clone(),
            hint,
            dir,
            namespaces: Mutex::new(Vec::new()),
            processes: Mutex::new(Vec::new()),
            next_proc: AtomicU32::new(0),
            bpf_mounts: Mutex::new(Vec::new()),
        });
        let bridge = Netns {
            ns: format!("{prefix}-br"),
            label: "bridge".to_string(),
            lab: shared.clone(),
        };
        // Built before any namespace exists, so a panic half-way still tears down.
        let lab = Lab {
            shared,
            bridge,
            hosts: Mutex::new(Vec::new()),
            torn_down: AtomicBool::new(false),
        };
        lab.shared.add_netns(&lab.bridge.ns);
        // No IPv6 in the switch: its bridges would otherwise send MLD/RS noise.
        lab.bridge.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
        lab.bridge.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        for (br, _) in BRIDGES {
            lab.bridge.ip(&[
                "link",
                "add",
                br,
                "type",
                "bridge",
                "forward_delay",
                "0",
                "stp_state",
                "0",
            ]);
            lab.bridge.ip(&["link", "set", br, "up"]);
        }
        lab
    }

    /// The unique prefix of this lab's namespace names, e.g. `vl4242-0-failover`.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The per-lab temp dir (process logs live here); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The cluster credential file every vipd and vipctl of the lab uses
    /// (see [`Netns::zk_credential_file`]).
    pub fn zk_credential_file(&self) -> PathBuf {
        credential_dir(&self.shared.dir).join(CREDENTIAL_NAME)
    }

    /// The namespace holding the bridges (to capture on `br0`, run `bridge fdb`, ...).
    pub fn bridge_netns(&self) -> &Netns {
        &self.bridge
    }

    /// Adds host namespace `<prefix>-<name>` with one veth per entry of `ifs`,
    /// named `eth0`, `eth1`, ... in order; each peer sits in the bridge
    /// namespace as a port of its bridge. `lo` and every interface are up.
    pub fn add_host(&self, name: &str, ifs: &[HostIf<'_>]) -> Host {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "host name {name:?}: use letters, digits, '_' and '-'"
        );
        let mut hosts = self.hosts.lock().unwrap();
        assert!(
            hosts.iter().all(|h| h.name() != name),
            "host {name} already exists in lab {}",
            self.prefix()
        );
        let index = hosts.len();
        let netns = Netns {
            ns: format!("{}-{name}", self.shared.prefix),
            label: name.to_string(),
            lab: self.shared.clone(),
        };
        self.shared.add_netns(&netns.ns);
        self.shared.mount_bpffs(name);
        // IPv6 on, whatever the machine's defaults: the interfaces made
        // next take the namespace's `default` settings. DAD stays on as the
        // kernel has it, so a VIP that skipped IFA_F_NODAD would show.
        netns.sysctl("net.ipv6.conf.all.disable_ipv6", "0");
        netns.sysctl("net.ipv6.conf.default.disable_ipv6", "0");
        netns.ip(&["link", "set", "lo", "up"]);
        let mut ifaces = Vec::new();
        for (i, hif) in ifs.iter().enumerate() {
            let (br, _) = *BRIDGES.get(hif.bridge).unwrap_or_else(|| {
                panic!(
                    "host {name}: bridge index {} (only 0..=2 exist)",
                    hif.bridge
                )
            });
            let ifname = format!("eth{i}");
            // Interface names max 15 chars; the peer's name must be unique in the
            // bridge namespace only.
            let mut peer = format!("{name}-{ifname}");
            if peer.len() > 15 {
                peer = format!("h{index}-{ifname}");
            }
            // Created inside the bridge namespace with the peer end placed
            // straight into the host: the root namespace never sees either end.
            self.bridge.ip(&[
                "link", "add", &peer, "type", "veth", "peer", "name", &ifname, "netns", &netns.ns,
            ]);
            self.bridge.ip(&["link", "set", &peer, "master", br, "up"]);
            netns.ip(&["link", "set", &ifname, "up"]);
            if !hif.addr.is_empty() {
                netns.ip(&["addr", "add", hif.addr, "dev", &ifname]);
            }
            ifaces.push(HostIface {
                ifname,
                bridge: hif.bridge,
                peer,
            });
        }
        let host = Host {
            inner: Arc::new(HostInner { netns, ifaces }),
        };
        hosts.push(host.clone());
        host
    }

    /// Waits until every link of `host` carries frames. The kernel applies
    /// a new link's carrier (operstate, and the bridge port's move to
    /// forwarding) from its link-watch work, which may run up to a second
    /// after [`Lab::add_host`] returned: until then frames are dropped. A
    /// test that needs the first packet through waits here; vipd and
    /// ZooKeeper clients retry and need not.
    pub fn wait_links(&self, host: &Host) {
        for iface in &host.inner.ifaces {
            wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
                let port = &self
                    .bridge
                    .ip_json(&["-d", "link", "show", "dev", &iface.peer])[0];
                let end = &host
                    .inner
                    .netns
                    .ip_json(&["link", "show", "dev", &iface.ifname])[0];
                port["operstate"] == "UP"
                    && port["linkinfo"]["info_slave_data"]["state"] == "forwarding"
                    && end["operstate"] == "UP"
            })
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {} not forwarding frames: {e}",
                    host.inner.netns.ns, iface.ifname
                )
            });
        }
    }

    /// The hosts added so far.
    pub fn hosts(&self) -> Vec<Host> {
        self.hosts.lock().unwrap().clone()
    }

    /// Sets the bridge-side peer of `host`'s `ifname` down. The host keeps its
    /// interface admin up with its addresses and routes, but sees carrier loss
    /// (`NO-CARRIER`, operstate `LOWERLAYERDOWN`), like a pulled cable.
    pub fn cut_peer(&self, host: &Host, ifname: &str) {
        let peer = host.iface(ifname).peer.clone();
        self.bridge.ip(&["link", "set", &peer, "down"]);
    }

    /// Undoes [`Lab::cut_peer`].
    pub fn restore_peer(&self, host: &Host, ifname: &str) {
        let peer = host.iface(ifname).peer.clone();
        self.bridge.ip(&["link", "set", &peer, "up"]);
    }

    /// Detaches the bridge-side peer from its bridge: the host keeps carrier
    /// and sees nothing at all, but its frames go nowhere and nothing reaches
    /// it (a silent partition, like a dead switch upstream).
    pub fn isolate(&self, host: &Host, ifname: &str) {
        let peer = host.iface(ifname).peer.clone();
        self.bridge.ip(&["link", "set", &peer, "nomaster"]);
    }

    /// [`Lab::cut_peer`] for several of `host`'s interfaces at once: one
    /// `ip -batch` in the bridge namespace, so they lose carrier within a
    /// fraction of a millisecond of each other rather than one `ip` process
    /// apart (about 3 ms, more under load). A benchmark that cuts a node's
    /// data and ZooKeeper links this way favours neither path.
    pub fn cut_peers(&self, host: &Host, ifnames: &[&str]) {
        self.bridge_batch(host, ifnames, |peer| format!("link set {peer} down"));
    }

    /// [`Lab::isolate`] for several of `host`'s interfaces at once (one
    /// `ip -batch`, as [`Lab::cut_peers`]).
    pub fn isolate_all(&self, host: &Host, ifnames: &[&str]) {
        self.bridge_batch(host, ifnames, |peer| format!("link set {peer} nomaster"));
    }

    fn bridge_batch(&self, host: &Host, ifnames: &[&str], line: impl Fn(&str) -> String) {
        let lines: String = ifnames
            .iter()
            .map(|i| line(&host.iface(i).peer) + "\n")
            .collect();
        let file = self
            .shared
            .dir
            .join(format!("batch-{}-{}", host.name(), ifnames.join("-")));
        fs::write(&file, &lines).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
        self.bridge.ip(&["-batch", &file.display().to_string()]);
    }

    /// Undoes [`Lab::isolate`].
    pub fn rejoin(&self, host: &Host, ifname: &str) {
        let iface = host.iface(ifname);
        let (br, _) = BRIDGES[iface.bridge];
        self.bridge
            .ip(&["link", "set", &iface.peer, "master", br, "up"]);
    }

    /// Prints the tail of every process log (done on drop when panicking).
    pub fn dump_logs(&self) {
        let procs = self.shared.processes.lock().unwrap().clone();
        let mut out = String::new();
        for p in procs {
            for (what, path) in [("stdout", &p.stdout_path), ("stderr", &p.stderr_path)] {
                let text = fs::read_to_string(path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let skip = lines.len().saturating_sub(LOG_TAIL_LINES);
                let _ = writeln!(
                    out,
                    "===== lab {}: {} (pid {}) {what}, {} lines, {} =====",
                    self.shared.prefix,
                    p.label,
                    p.pid,
                    lines.len(),
                    path.display()
                );
                for line in &lines[skip..] {
                    let _ = writeln!(out, "{line}");
                }
            }
        }
        eprint!("{out}");
    }

    /// Kills every process (SIGTERM, up to 3 s, then SIGKILL), deletes every
    /// namespace and the temp dir. Keeps going past failures and returns them
    /// all. Drop calls it; calling it twice is harmless.
    pub fn teardown(&self) -> Result<(), Vec<String>> {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let mut errors = Vec::new();
        let procs = std::mem::take(&mut *self.shared.processes.lock().unwrap());
        let running: Vec<_> = procs.iter().filter(|p| p.signal(libc::SIGTERM)).collect();
        let deadline = Instant::now() + TERM_GRACE;
        for p in running {
            let left = deadline.saturating_duration_since(Instant::now());
            if p.wait_timeout(left).is_none() {
                p.signal(libc::SIGKILL);
                if p.wait_timeout(Duration::from_secs(5)).is_none() {
                    errors.push(format!("{} (pid {}) survived SIGKILL", p.label, p.pid));
                }
            }
        }
        // Unmounted, a host's bpffs releases what vipd pinned there: its
        // links leave the interfaces before the namespaces go.
        for (_, dir) in std::mem::take(&mut *self.shared.bpf_mounts.lock().unwrap()) {
            if let Err(e) = unmount(&dir) {
                errors.push(format!("unmounting {}: {e}", dir.display()));
            }
        }
        // Hosts before the bridge namespace (reverse creation order).
        let namespaces = std::mem::take(&mut *self.shared.namespaces.lock().unwrap());
        for ns in namespaces.iter().rev() {
            let out = run(Command::new("ip").args(["netns", "del", ns]));
            if !out.status.success() {
                errors.push(format!(
                    "ip netns del {ns}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        if std::env::var_os("VIPD_LAB_KEEP").is_none() {
            if let Err(e) = fs::remove_dir_all(&self.shared.dir) {
                errors.push(format!("removing {}: {e}", self.shared.dir.display()));
            }
        } else {
            eprintln!("VIPD_LAB_KEEP: keeping {}", self.shared.dir.display());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking && !self.torn_down.load(Ordering::SeqCst) {
            eprintln!(
                "lab {} ({}) torn down after a panic; process logs follow",
                self.shared.prefix, self.shared.hint
            );
            self.dump_logs();
        }
        if let Err(errors) = self.teardown() {
            let msg = format!(
                "lab {} teardown failed: {}",
                self.shared.prefix,
                errors.join("; ")
            );
            if panicking {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

impl LabShared {
    /// Mounts a bpffs of its own for host `label`, outside /sys (`ip
    /// netns exec` mounts a fresh /sys): the lab's vipd and vipctl get it
    /// as VIPD_BPF_DIR.
    fn mount_bpffs(&self, label: &str) {
        let dir = self.dir.join("bpf").join(label);
        fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("creating bpffs mount point {}: {e}", dir.display()));
        let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
        let target = c(dir.to_str().expect("lab dir is UTF-8"));
        let (src, fstype) = (c("bpf"), c("bpf"));
        // SAFETY: valid NUL-terminated strings; no data.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert!(
            rc == 0,
            "mounting a bpffs at {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        self.bpf_mounts
            .lock()
            .unwrap()
            .push((label.to_string(), dir));
    }

    /// The bpffs mounted for host `label`, if any.
    pub(super) fn bpf_dir(&self, label: &str) -> Option<PathBuf> {
        self.bpf_mounts
            .lock()
            .unwrap()
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, d)| d.clone())
    }

    fn add_netns(&self, name: &str) {
        let out = run(Command::new("ip").args(["netns", "add", name]));
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        self.namespaces.lock().unwrap().push(name.to_string());
    }
}

/// Removes namespaces and temp dirs left by lab runs whose process is gone
/// (a test binary killed before its drops ran). Only names of our own
/// pattern `vl<pid>-<n>-...` with a dead `<pid>` are touched; processes still
/// inside such a namespace are reported, not killed.
/// Lazily unmounts `dir` (a lab host's bpffs).
fn unmount(dir: &Path) -> std::io::Result<()> {
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The bpffs mounts of labs whose test process is gone (`owner_dead` on
/// the lab's prefix), from /proc/self/mounts.
fn stale_bpf_mounts(owner_dead: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let tmp = std::env::temp_dir();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "bpf").then(|| PathBuf::from(at))
        })
        .filter(|at| {
            at.strip_prefix(&tmp)
                .ok()
                .and_then(|rest| rest.iter().next())
                .and_then(|d| d.to_str()?.strip_prefix("vipd-lab-").map(&owner_dead))
                .unwrap_or(false)
        })
        .collect()
}

fn sweep_stale() {
    let own = std::process::id();
    let dead_owner = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(NAME_TAG) else {
            return false;
        };
        let mut parts = rest.splitn(3, '-');
        let (Some(pid), Some(n), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), n.parse::<u32>()) else {
            return false;
        };
        pid != own && !Path::new(&format!("/proc/{pid}")).exists()
    };
    for dir in stale_bpf_mounts(dead_owner) {
        let done = unmount(&dir);
        eprintln!("unmounted stale lab bpffs {} ({done:?})", dir.display());
    }
    if let Ok(entries) = fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !dead_owner(&name) {
                continue;
            }
            let pids = run(Command::new("ip").args(["netns", "pids", &name]));
            let pids = String::from_utf8_lossy(&pids.stdout)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            if !pids.is_empty() {
                eprintln!(
                    "stale lab namespace {name} still has processes {pids}; not killing them"
                );
            }
            let out = run(Command::new("ip").args(["netns", "del", &name]));
            eprintln!(
                "removed stale lab namespace {name}{}",
                if out.status.success() {
                    ""
                } else {
                    " (failed)"
                }
            );
        }
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(lab) = name.strip_prefix("vipd-lab-")
                && dead_owner(lab)
            {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}
