//! The lab: hosts are network namespaces joined by three bridges that live in a
//! namespace of their own, plus the tools to run and observe things inside
//! them. A `Lab` removes every namespace and process it created on drop, also
//! when the test panics; nothing is ever added to the root namespace except
//! the `ip netns` names.
//!
//! Errors here are panics with the command and its output: this is test code,
//! and a failed setup step must fail the test with a message saying what broke.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write as _};
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

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

/// Panics unless we run as root: privileged tests never skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (network namespaces, veths, AF_PACKET); euid is {euid}. \
         Run it as root, e.g. `sudo -E cargo test -p vipd-tests`"
    );
}

/// The built `vipd` binary (`VIPD_BIN` overrides).
pub fn vipd_bin() -> PathBuf {
    built_binary("vipd", "VIPD_BIN")
}

/// The built `vipctl` binary (`VIPCTL_BIN` overrides).
pub fn vipctl_bin() -> PathBuf {
    built_binary("vipctl", "VIPCTL_BIN")
}

/// The test executable lives in target/<profile>/deps/; the binaries one level up.
fn binary_beside(test_exe: &Path, name: &str) -> PathBuf {
    let mut dir = test_exe.parent().unwrap_or(Path::new("/")).to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

fn built_binary(name: &str, env: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{env}={} does not name a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("path of the test executable");
    let path = binary_beside(&exe, name);
    assert!(
        path.is_file(),
        "{name} not found at {}: build it first with `cargo xtask build` \
         (or `cargo build -p vipd`), or set {env} to its path",
        path.display()
    );
    path
}

/// Polls `cond` every `poll` until it holds or `timeout` passes. Returns how
/// long it took, or a message saying how long we waited.
pub fn wait_until(
    timeout: Duration,
    poll: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        if cond() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "condition still false after {:?} (timeout {timeout:?})",
                start.elapsed()
            ));
        }
        std::thread::sleep(poll);
    }
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

/// A network namespace of a lab (a host, or the bridge namespace).
pub struct Netns {
    ns: String,
    label: String,
    lab: Arc<LabShared>,
}

impl Netns {
    /// The `ip netns` name, e.g. `vl4242-0-failover-n1`.
    pub fn name(&self) -> &str {
        &self.ns
    }

    /// `/var/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.ns)
    }

    /// Runs `argv` inside the namespace (`ip netns exec`) and returns its
    /// output whatever the exit status.
    pub fn exec<S: AsRef<OsStr>>(&self, argv: &[S]) -> Output {
        run(&mut self.command(argv))
    }

    /// Like [`Netns::exec`], but panics (with stderr) unless it succeeds; returns stdout.
    pub fn exec_ok<S: AsRef<OsStr>>(&self, argv: &[S]) -> String {
        let out = self.exec(argv);
        check(&self.ns, argv, &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell script inside the namespace (`sh -c`).
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script])
    }

    /// Runs `ip <args>` against this namespace (`ip -n`); panics unless it succeeds.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run(Command::new("ip").arg("-n").arg(&self.ns).args(args));
        check(&self.ns, &[&["ip"], args].concat(), &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ip(&[&["-j"], args].concat());
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("ip -j {} in {}: {e}: {out}", args.join(" "), self.ns))
    }

    fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Command {
        assert!(!argv.is_empty(), "empty command for {}", self.ns);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]);
        cmd.args(argv);
        // Every vipd and vipctl the lab runs gets the cluster credential as
        // an operator gives it: vipd from systemd's credentials directory
        // (LoadCredential=), vipctl through VIPD_ZK_AUTH_FILE. A caller's
        // own environment (`spawn_env`) comes after and wins: an empty
        // CREDENTIALS_DIRECTORY runs vipd without one.
        let dir = credential_dir(&self.lab.dir);
        match Path::new(argv[0].as_ref())
            .file_name()
            .and_then(OsStr::to_str)
        {
            Some("vipd") => {
                cmd.env("CREDENTIALS_DIRECTORY", &dir);
            }
            Some("vipctl") => {
                cmd.env("VIPD_ZK_AUTH_FILE", dir.join(CREDENTIAL_NAME));
            }
            _ => {}
        }
        cmd
    }

    /// The file holding the lab's cluster credential `vipd:<password>`
    /// (mode 0600, as /etc/vipd/zk-auth on a node): every vipd and vipctl
    /// this namespace runs uses it unless told otherwise.
    pub fn zk_credential_file(&self) -> PathBuf {
        credential_dir(&self.lab.dir).join(CREDENTIAL_NAME)
    }

    /// The lab's cluster credential, `user:password`.
    pub fn zk_credential(&self) -> String {
        let path = self.zk_credential_file();
        fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    /// Starts `argv` inside the namespace with stdout and stderr going to
    /// files in the lab dir. The lab kills it on drop if still running.
    pub fn spawn<I, S>(&self, argv: I) -> LabProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.spawn_env(argv, &[])
    }

    /// [`Netns::spawn`] with extra environment variables.
    pub fn spawn_env<I, S>(&self, argv: I, env: &[(&str, &str)]) -> LabProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv: Vec<OsString> = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
        assert!(!argv.is_empty(), "empty command for {}", self.ns);
        let n = self.lab.next_proc.fetch_add(1, Ordering::Relaxed);
        let prog = Path::new(&argv[0])
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "proc".to_string());
        let base = format!("{n:02}-{}-{prog}", self.label);
        let stdout_path = self.lab.dir.join(format!("{base}.stdout"));
        let stderr_path = self.lab.dir.join(format!("{base}.stderr"));
        let create =
            |p: &Path| File::create(p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        let mut cmd = self.command(&argv);
        cmd.stdin(Stdio::null())
            .stdout(create(&stdout_path))
            .stderr(create(&stderr_path))
            .envs(env.iter().copied());
        // `ip netns exec` execs the command after setns, so the PID is the command's.
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?} in {}: {e}", self.ns));
        let inner = Arc::new(ProcInner {
            pid: child.id(),
            label: format!("{}: {}", self.label, shell_words(&argv)),
            stdout_path,
            stderr_path,
            child: Mutex::new(child),
        });
        self.lab.processes.lock().unwrap().push(inner.clone());
        LabProcess { inner }
    }

    /// Runs `f` on a fresh thread that has joined this namespace (`setns`) and
    /// returns its result; sockets made there live in the namespace. A panic
    /// in `f` propagates.
    pub fn in_netns<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                enter_netns(&path);
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Writes a sysctl of this namespace (`net.ipv4.conf.eth0.arp_ignore`;
    /// use '/' separators for names containing dots).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = sysctl_path(key);
        self.in_netns(|| {
            fs::write(&path, value)
                .unwrap_or_else(|e| panic!("sysctl {key}={value} in {}: {e}", self.ns))
        });
    }

    /// Reads a sysctl of this namespace.
    pub fn sysctl_get(&self, key: &str) -> String {
        let path = sysctl_path(key);
        self.in_netns(|| {
            fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("sysctl {key} in {}: {e}", self.ns))
                .trim()
                .to_string()
        })
    }

    /// The IPv4 addresses on `ifname`, in kernel order.
    pub fn ipv4_addrs(&self, ifname: &str) -> Vec<(Ipv4Addr, u8)> {
        self.addr_info("-4", ifname)
            .into_iter()
            .map(|(ip, len, _)| (ip, len))
            .collect()
    }

    /// The IPv6 addresses on `ifname` (link-local ones included), in
    /// kernel order, with their DAD flags.
    pub fn ipv6_addrs(&self, ifname: &str) -> Vec<Addr6> {
        self.addr_info("-6", ifname)
            .into_iter()
            .map(|(addr, prefix_len, a)| {
                let flag = |name: &str| a[name].as_bool() == Some(true);
                Addr6 {
                    addr,
                    prefix_len,
                    tentative: flag("tentative"),
                    dadfailed: flag("dadfailed"),
                    nodad: flag("nodad"),
                }
            })
            .collect()
    }

    /// What `ip -j <family> addr show dev <ifname>` lists, in kernel order:
    /// each address, its prefix length, and its entry (for the flags).
    fn addr_info<A>(&self, family: &str, ifname: &str) -> Vec<(A, u8, serde_json::Value)>
    where
        A: std::str::FromStr,
        A::Err: std::fmt::Display,
    {
        let json = self.ip_json(&[family, "addr", "show", "dev", ifname]);
        let mut addrs = Vec::new();
        for link in json.as_array().into_iter().flatten() {
            for a in link["addr_info"].as_array().into_iter().flatten() {
                let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64())
                else {
                    continue;
                };
                let ip = local
                    .parse()
                    .unwrap_or_else(|e| panic!("address {local}: {e}"));
                let len = u8::try_from(len).expect("prefix length fits u8");
                addrs.push((ip, len, a.clone()));
            }
        }
        addrs
    }

    /// The MAC address of `ifname`, e.g. `"aa:bb:cc:dd:ee:ff"`.
    pub fn mac(&self, ifname: &str) -> String {
        let json = self.ip_json(&["link", "show", "dev", ifname]);
        json[0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no address for {ifname} in {}: {json}", self.ns))
            .to_string()
    }

    /// The MAC address of `ifname` as bytes.
    pub fn mac_bytes(&self, ifname: &str) -> [u8; 6] {
        let text = self.mac(ifname);
        parse_mac(&text).unwrap_or_else(|| panic!("MAC {text} of {ifname} in {}", self.ns))
    }

    /// Whether `ifname` has carrier (`LOWER_UP`).
    pub fn has_carrier(&self, ifname: &str) -> bool {
        let json = self.ip_json(&["link", "show", "dev", ifname]);
        json[0]["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f == "LOWER_UP")
    }

    /// The neighbour entry for `ip` (ARP for IPv4, NDP for IPv6), if the
    /// table has one.
    pub fn neigh(&self, ip: impl Into<IpAddr>) -> Option<Neighbour> {
        let ip = ip.into();
        let ip_text = ip.to_string();
        let family = if ip.is_ipv6() { "-6" } else { "-4" };
        let json = self.ip_json(&[family, "neigh", "show", "to", &ip_text]);
        json.as_array()?
            .iter()
            .find(|e| e["dst"].as_str() == Some(ip_text.as_str()))
            .map(|e| Neighbour {
                dev: e["dev"].as_str().unwrap_or_default().to_string(),
                lladdr: e["lladdr"].as_str().map(str::to_string),
                state: e["state"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect(),
            })
    }

    /// `ping -c1 -W1 ip` (IPv4 or IPv6): whether one echo came back.
    pub fn ping(&self, ip: impl Into<IpAddr>) -> bool {
        let ip = ip.into();
        self.exec(&["ping", "-n", "-q", "-c1", "-W1", &ip.to_string()])
            .status
            .success()
    }

    /// Habets' arping (Debian package `arping`): `count` requests to `ip` out
    /// of `ifname`, 200 ms apart, giving up `count * 0.2 + 1` s after the start.
    pub fn arping(&self, ip: Ipv4Addr, count: u32, ifname: &str) -> Arping {
        assert!(count > 0, "arping count must be positive");
        let deadline = format!("{:.1}", f64::from(count) * 0.2 + 1.0);
        let out = self.exec(&[
            "arping",
            "-c",
            &count.to_string(),
            "-W",
            "0.2",
            "-w",
            &deadline,
            "-i",
            ifname,
            &ip.to_string(),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        parse_arping(&stdout).unwrap_or_else(|| {
            panic!(
                "cannot read arping output in {} (is it Habets' arping?): status {}, stdout {stdout:?}, stderr {:?}",
                self.ns,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

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

impl Netns {
    /// Runs `open` on a thread of its own inside this namespace, then `serve`
    /// there with what it opened; returns once `open` succeeded, so nothing
    /// sent after it is missed. Panics, naming `what`, when `open` fails.
    pub(crate) fn spawn_opened<T, E: std::fmt::Display>(
        &self,
        what: &str,
        open: impl FnOnce() -> Result<T, E> + Send + 'static,
        serve: impl FnOnce(T) + Send + 'static,
    ) -> JoinHandle<()> {
        let path = self.path();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter_netns(&path);
            match open() {
                Ok(opened) => {
                    let _ = ready_tx.send(Ok(()));
                    serve(opened);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            }
        });
        match ready_rx.recv() {
            Ok(Ok(())) => thread,
            Ok(Err(e)) => panic!("{what} in {}: {e}", self.ns),
            Err(_) => panic!("{what} in {}: its thread died", self.ns),
        }
    }
}

impl Netns {
    /// Runs `argv` inside the namespace like [`Netns::exec`], but gives up
    /// after `timeout`: the command is then killed (SIGKILL, by its PID,
    /// while it is still our unreaped child) and `None` is returned. For
    /// clients that may hang on an unreachable address (a TCP connect to a
    /// VIP in the middle of a takeover).
    pub fn exec_timeout<S: AsRef<OsStr>>(&self, argv: &[S], timeout: Duration) -> Option<Output> {
        let mut cmd = self.command(argv);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?} in {}: {e}", self.ns));
        // Both pipes are drained on threads, so a chatty command never blocks
        // on a full pipe and looks hung.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        };
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let deadline = Instant::now() + timeout;
        // Polled here, on the thread that owns the child, so the kill below
        // can never hit a reaped (and possibly reused) PID.
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        status.map(|status| Output {
            status,
            stdout,
            stderr,
        })
    }
}

fn check<S: AsRef<OsStr>>(ns: &str, argv: &[S], out: &Output) {
    if !out.status.success() {
        let argv: Vec<OsString> = argv.iter().map(|a| a.as_ref().to_owned()).collect();
        panic!(
            "`{}` in {ns} failed ({}): {}{}",
            shell_words(&argv),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
}

fn shell_words(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn sysctl_path(key: &str) -> PathBuf {
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    Path::new("/proc/sys").join(rel)
}

/// Moves the calling thread into the namespace at `path`. The thread must be
/// one we spawned: it never comes back to the root namespace.
pub(crate) fn enter_netns(path: &Path) {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    // SAFETY: a valid fd of a namespace file; setns only affects this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert!(
        rc == 0,
        "setns({}): {}",
        path.display(),
        std::io::Error::last_os_error()
    );
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

/// A host of the lab: its namespace plus its interfaces. Cheap to clone.
/// Derefs to [`Netns`] for `exec`, `spawn`, `in_netns`, captures, probes.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

struct HostInner {
    netns: Netns,
    ifaces: Vec<HostIface>,
}

struct HostIface {
    ifname: String,
    bridge: usize,
    peer: String,
}

impl Deref for Host {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.inner.netns
    }
}

impl Host {
    /// The host name given to `add_host` (`n1`).
    pub fn name(&self) -> &str {
        &self.inner.netns.label
    }

    /// The `ip netns` name (`<prefix>-n1`), e.g. to run vipd in.
    pub fn netns(&self) -> &str {
        &self.inner.netns.ns
    }

    /// Name of the bridge-side veth end of `ifname` (in the bridge namespace).
    pub fn peer_name(&self, ifname: &str) -> &str {
        &self.iface(ifname).peer
    }

    /// Which bridge (index into [`BRIDGES`]) `ifname` plugs into.
    pub fn bridge_of(&self, ifname: &str) -> usize {
        self.iface(ifname).bridge
    }

    fn iface(&self, ifname: &str) -> &HostIface {
        self.inner
            .ifaces
            .iter()
            .find(|i| i.ifname == ifname)
            .unwrap_or_else(|| panic!("host {} has no lab interface {ifname}", self.name()))
    }

    /// Sets the host's own end admin up or down. Down removes its routes, keeps
    /// its addresses, and the bridge-side peer then loses carrier.
    pub fn set_link(&self, ifname: &str, up: bool) {
        self.ip(&["link", "set", ifname, if up { "up" } else { "down" }]);
    }

    /// `set_link(ifname, false)`.
    pub fn link_down(&self, ifname: &str) {
        self.set_link(ifname, false);
    }

    /// `set_link(ifname, true)`.
    pub fn link_up(&self, ifname: &str) {
        self.set_link(ifname, true);
    }

    /// `ip route add default via <gateway>`.
    pub fn add_default_route(&self, gateway: &str) {
        self.ip(&["route", "add", "default", "via", gateway]);
    }

    /// `ip -6 route add default via <gateway> dev <ifname>`.
    pub fn add_default_route6(&self, gateway: &str, ifname: &str) {
        self.ip(&[
            "-6", "route", "add", "default", "via", gateway, "dev", ifname,
        ]);
    }

    /// `ip -6 addr add <cidr> dev <ifname> nodad`: the lab's own IPv6
    /// addresses skip DAD, so a test never waits for them to leave
    /// `tentative`. Only 2001:db8::/32 (the lab's range) is accepted.
    pub fn add_addr6(&self, ifname: &str, cidr: &str) {
        let addr: Ipv6Addr = cidr
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{cidr}: not an IPv6 address/prefix"));
        assert!(
            addr.segments()[..2] == [0x2001, 0x0db8],
            "{cidr}: lab IPv6 addresses come from 2001:db8::/32 only"
        );
        self.ip(&["-6", "addr", "add", cidr, "dev", ifname, "nodad"]);
    }

    /// `ip addr add <cidr> dev <ifname>`.
    pub fn add_addr(&self, ifname: &str, cidr: &str) {
        self.ip(&["addr", "add", cidr, "dev", ifname]);
    }

    /// `ip addr del <cidr> dev <ifname>`.
    pub fn del_addr(&self, ifname: &str, cidr: &str) {
        self.ip(&["addr", "del", cidr, "dev", ifname]);
    }
}

/// An IPv6 address as `ip -j -6 addr` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr6 {
    pub addr: Ipv6Addr,
    pub prefix_len: u8,
    pub tentative: bool,
    pub dadfailed: bool,
    pub nodad: bool,
}

/// A neighbour table entry (`ip -j neigh`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub dev: String,
    /// `None` in states without an address (`INCOMPLETE`, `FAILED`).
    pub lladdr: Option<String>,
    /// E.g. `["REACHABLE"]`, `["STALE"]`, `["PERMANENT"]`.
    pub state: Vec<String>,
}

/// What `arping` saw.
#[derive(Clone, Debug, Default)]
pub struct Arping {
    pub sent: u32,
    pub received: u32,
    /// The sender MAC of each reply, in arrival order.
    pub reply_macs: Vec<String>,
    pub stdout: String,
}

fn parse_arping(stdout: &str) -> Option<Arping> {
    let mut result = Arping {
        stdout: stdout.to_string(),
        ..Arping::default()
    };
    let mut summary = false;
    for line in stdout.lines() {
        // "42 bytes from 52:54:00:12:34:56 (192.0.2.12): index=0 time=21.3 usec"
        if let Some((_, rest)) = line.split_once(" bytes from ")
            && let Some(mac) = rest.split_whitespace().next()
        {
            result.reply_macs.push(mac.to_string());
        }
        // "3 packets transmitted, 3 packets received,   0% unanswered (0 extra)"
        if line.contains("packets transmitted") {
            let numbers: Vec<u32> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect();
            if let [sent, received, ..] = numbers[..] {
                result.sent = sent;
                result.received = received;
                summary = true;
            }
        }
    }
    summary.then_some(result)
}

/// The settings `vipd check-config` prints, one `key = "value"  # source`
/// line each: key -> (value, where it came from).
pub fn check_config_settings(
    stdout: &[u8],
) -> std::collections::BTreeMap<String, (String, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| {
            let (kv, source) = l.split_once("  # ")?;
            let (k, v) = kv.split_once(" = ")?;
            Some((
                k.to_string(),
                (v.trim_matches('"').to_string(), source.to_string()),
            ))
        })
        .collect()
}

/// The standard output of a command that succeeded; panics with both of its
/// outputs, naming it `what`, when it did not.
pub fn succeeded(out: &Output, what: &str) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs `ip <args>` (split on white space) in the calling thread's network
/// namespace and returns its stdout; panics unless it succeeds.
pub fn ip_here(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("running `ip` (iproute2 must be installed)");
    assert!(
        out.status.success(),
        "`ip {args}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 from ip")
}

/// Runs `f` on a thread of its own moved into a fresh network namespace;
/// a panic in `f` fails the caller. The namespace, and every interface and
/// socket made in it, goes away when the thread ends. Needs root.
pub fn in_new_netns<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            // SAFETY: unshare affects only this thread's namespaces.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET) failed (these tests need root): {}",
                std::io::Error::last_os_error()
            );
            f()
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The ifindex of interface `name` in the calling thread's namespace;
/// panics if there is none.
pub fn ifindex_here(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("interface name without NUL");
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(index, 0, "no interface {name} in this namespace");
    index
}

/// A lab thread that runs until its `stop` flag is set: [`Self::halt`], or
/// dropping it, sets the flag and waits for the thread to end.
pub(crate) struct StoppableThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StoppableThread {
    /// `thread`, which polls `stop`.
    pub(crate) fn new(stop: Arc<AtomicBool>, thread: JoinHandle<()>) -> Self {
        StoppableThread {
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StoppableThread {
    fn drop(&mut self) {
        self.halt();
    }
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

/// A gratuitous ARP or an unsolicited Neighbor Advertisement: how a node
/// announces that an address (a VIP) is now at its MAC.
pub fn is_announcement(frame: &[u8]) -> bool {
    ArpFrame::parse(frame).is_some_and(|a| a.is_gratuitous())
        || NdpFrame::parse(frame).is_some_and(|n| n.is_unsolicited_na())
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

/// Ethernet + ARP (IPv4 over Ethernet) fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpFrame {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    /// 1 request, 2 reply.
    pub op: u16,
    pub sha: [u8; 6],
    pub spa: Ipv4Addr,
    pub tha: [u8; 6],
    pub tpa: Ipv4Addr,
}

impl ArpFrame {
    pub const REQUEST: u16 = 1;
    pub const REPLY: u16 = 2;

    pub fn parse(b: &[u8]) -> Option<ArpFrame> {
        if b.len() < 42 || b[12..14] != [0x08, 0x06] || b[14..20] != [0, 1, 8, 0, 6, 4] {
            return None;
        }
        let mac = |at: usize| -> [u8; 6] { b[at..at + 6].try_into().expect("6 bytes") };
        let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
        Some(ArpFrame {
            eth_dst: mac(0),
            eth_src: mac(6),
            op: u16::from_be_bytes([b[20], b[21]]),
            sha: mac(22),
            spa: ip(28),
            tha: mac(32),
            tpa: ip(38),
        })
    }

    /// Sender and target protocol address are equal (gratuitous ARP, either form).
    pub fn is_gratuitous(&self) -> bool {
        self.spa == self.tpa
    }
}

/// Ethernet + IPv6 + a Neighbor Solicitation (135) or Advertisement (136),
/// with no extension headers (what NDP senders use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NdpFrame {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    /// 135 solicitation, 136 advertisement.
    pub icmp_type: u8,
    pub code: u8,
    /// NA flags (all false in a solicitation).
    pub router: bool,
    pub solicited: bool,
    pub override_flag: bool,
    pub target: Ipv6Addr,
    /// The link-layer address option: target's in an NA (type 2), source's
    /// in an NS (type 1).
    pub lladdr: Option<[u8; 6]>,
    /// The ICMPv6 checksum over the pseudo-header verifies.
    pub checksum_ok: bool,
}

impl NdpFrame {
    pub const SOLICITATION: u8 = 135;
    pub const ADVERTISEMENT: u8 = 136;

    pub fn parse(b: &[u8]) -> Option<NdpFrame> {
        if b.len() < 14 + 40 + 24 || b[12..14] != [0x86, 0xdd] || b[14] >> 4 != 6 || b[20] != 58 {
            return None;
        }
        let payload_len = usize::from(u16::from_be_bytes([b[18], b[19]]));
        let icmp = b.get(54..54 + payload_len)?;
        let icmp_type = icmp[0];
        if icmp.len() < 24 || !matches!(icmp_type, Self::SOLICITATION | Self::ADVERTISEMENT) {
            return None;
        }
        let mac = |at: usize| -> [u8; 6] { b[at..at + 6].try_into().expect("6 bytes") };
        let ip6 = |s: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(s).expect("16 bytes"));
        let (src, dst) = (ip6(&b[22..38]), ip6(&b[38..54]));
        let want_option = if icmp_type == Self::ADVERTISEMENT {
            2
        } else {
            1
        };
        let mut lladdr = None;
        let mut off = 24;
        while off + 8 <= icmp.len() {
            let len = usize::from(icmp[off + 1]) * 8;
            if len == 0 || off + len > icmp.len() {
                break;
            }
            if icmp[off] == want_option && len == 8 {
                lladdr = Some(icmp[off + 2..off + 8].try_into().expect("6 bytes"));
            }
            off += len;
        }
        let flags = icmp[4];
        Some(NdpFrame {
            eth_dst: mac(0),
            eth_src: mac(6),
            src,
            dst,
            hop_limit: b[21],
            icmp_type,
            code: icmp[1],
            router: icmp_type == Self::ADVERTISEMENT && flags & 0x80 != 0,
            solicited: icmp_type == Self::ADVERTISEMENT && flags & 0x40 != 0,
            override_flag: icmp_type == Self::ADVERTISEMENT && flags & 0x20 != 0,
            target: ip6(&icmp[8..24]),
            lladdr,
            checksum_ok: icmpv6_checksum(src, dst, icmp) == 0,
        })
    }

    /// An unsolicited advertisement (as vipd announces a VIP).
    pub fn is_unsolicited_na(&self) -> bool {
        self.icmp_type == Self::ADVERTISEMENT && !self.solicited
    }
}

/// RFC 1071 sum over the IPv6 pseudo-header and `icmp` (checksum field
/// included): 0 for a correct message.
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut data = Vec::with_capacity(40 + icmp.len() + 1);
    data.extend_from_slice(&src.octets());
    data.extend_from_slice(&dst.octets());
    data.extend_from_slice(&u32::try_from(icmp.len()).unwrap_or(u32::MAX).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, 58]);
    data.extend_from_slice(icmp);
    if data.len() % 2 == 1 {
        data.push(0);
    }
    let mut sum: u32 = data
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `aa:bb:cc:dd:ee:ff`, the form `ip` prints.
pub fn fmt_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `aa:bb:cc:dd:ee:ff` (as `ip` prints it) as bytes.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| (b.len() == 2).then(|| u8::from_str_radix(b, 16).ok())?)
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

/// A process started in a lab namespace. Dropping the handle leaves it
/// running; the lab kills it at teardown.
#[derive(Clone)]
pub struct LabProcess {
    inner: Arc<ProcInner>,
}

struct ProcInner {
    pid: u32,
    label: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    child: Mutex<Child>,
}

impl ProcInner {
    /// Sends `sig` unless the process was already reaped (its PID may be
    /// reused then). Returns whether it was sent.
    fn signal(&self, sig: i32) -> bool {
        let mut child = self.child.lock().unwrap();
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        // SAFETY: kill has no memory preconditions; the PID is our unreaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, sig) == 0 }
    }

    fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.lock().unwrap().try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl LabProcess {
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// Sends `signal` (`libc::SIGTERM`, ...). False if it had already exited.
    pub fn kill(&self, signal: i32) -> bool {
        self.inner.signal(signal)
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        self.inner.wait_timeout(timeout)
    }

    /// Its exit status if it has exited (reaps it).
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.inner.child.lock().unwrap().try_wait().ok().flatten()
    }

    pub fn is_running(&self) -> bool {
        self.try_status().is_none()
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns the exit status.
    pub fn terminate(&self, grace: Duration) -> ExitStatus {
        self.kill(libc::SIGTERM);
        if let Some(status) = self.wait_timeout(grace) {
            return status;
        }
        self.kill(libc::SIGKILL);
        self.wait_timeout(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{} (pid {}) survived SIGKILL", self.inner.label, self.pid()))
    }

    pub fn stdout_path(&self) -> &Path {
        &self.inner.stdout_path
    }

    pub fn stderr_path(&self) -> &Path {
        &self.inner.stderr_path
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.inner.stdout_path).unwrap_or_default()
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.inner.stderr_path).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_habets_arping_output() {
        let out = "ARPING 192.0.2.12\n\
            42 bytes from 7a:1c:00:11:22:33 (192.0.2.12): index=0 time=31.2 usec\n\
            42 bytes from 7a:1c:00:11:22:33 (192.0.2.12): index=1 time=20.1 usec\n\
            \n\
            --- 192.0.2.12 statistics ---\n\
            3 packets transmitted, 2 packets received,  33% unanswered (0 extra)\n";
        let r = parse_arping(out).expect("parsed");
        assert_eq!((r.sent, r.received), (3, 2));
        assert_eq!(r.reply_macs, vec!["7a:1c:00:11:22:33"; 2]);
        assert!(parse_arping("arping: usage").is_none());
    }

    #[test]
    fn binaries_are_found_beside_deps() {
        let exe = Path::new("/w/target/debug/deps/lab-0123abcd");
        assert_eq!(
            binary_beside(exe, "vipd"),
            Path::new("/w/target/debug/vipd")
        );
        let exe = Path::new("/w/target/debug/examples/demo");
        assert_eq!(
            binary_beside(exe, "vipctl"),
            Path::new("/w/target/debug/examples/vipctl")
        );
    }

    #[test]
    fn parses_arp_frames() {
        let mut f = vec![0xff; 6];
        f.extend([2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend([
            2, 0, 0, 0, 0, 1, 192, 0, 2, 11, 0, 0, 0, 0, 0, 0, 192, 0, 2, 12,
        ]);
        let a = ArpFrame::parse(&f).expect("an ARP frame");
        assert_eq!(a.op, ArpFrame::REQUEST);
        assert_eq!(a.spa, Ipv4Addr::new(192, 0, 2, 11));
        assert_eq!(a.tpa, Ipv4Addr::new(192, 0, 2, 12));
        assert_eq!(fmt_mac(a.sha), "02:00:00:00:00:01");
        assert!(!a.is_gratuitous());
        assert!(ArpFrame::parse(&f[..41]).is_none());
    }

    #[test]
    fn macs_parse_as_ip_prints_them() {
        let m = [2, 0, 0x5e, 0x10, 0x20, 0xff];
        assert_eq!(parse_mac(&fmt_mac(m)), Some(m));
        assert_eq!(parse_mac("02:00:5E:10:20:FF"), Some(m));
        assert_eq!(parse_mac("02:00:5e:10:20"), None);
        assert_eq!(parse_mac("02:00:5e:10:20:ff:01"), None);
        assert_eq!(parse_mac("02:00:5e:10:20:f"), None);
        assert_eq!(parse_mac("02:00:5e:10:20:gg"), None);
        assert_eq!(parse_mac(""), None);
    }

    #[test]
    fn announcements_of_either_family() {
        let frame = |bytes: Vec<u8>| CapturedFrame {
            at: Instant::now(),
            outgoing: false,
            bytes,
        };
        let mac = [2, 0, 0, 0, 0, 1];
        let arp = |spa: [u8; 4], tpa: [u8; 4]| {
            let mut f = vec![0xff; 6];
            f.extend(mac);
            f.extend([0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
            f.extend(mac);
            f.extend(spa);
            f.extend([0; 6]);
            f.extend(tpa);
            f
        };
        let v4: IpAddr = "192.0.2.100".parse().unwrap();
        let garp = frame(arp([192, 0, 2, 100], [192, 0, 2, 100]));
        assert_eq!(garp.announces(v4), Some(mac));
        assert!(is_announcement(&garp.bytes));
        assert_eq!(garp.announces("192.0.2.101".parse().unwrap()), None);
        assert_eq!(garp.announces("2001:db8::100".parse().unwrap()), None);
        let request = frame(arp([192, 0, 2, 50], [192, 0, 2, 100]));
        assert_eq!(request.announces(v4), None);
        assert!(!is_announcement(&request.bytes));

        let mut na = unsolicited_na();
        let v6: IpAddr = "2001:db8::100".parse().unwrap();
        assert_eq!(
            frame(na.clone()).announces(v6),
            Some([2, 0, 0x5e, 0x10, 0x20, 0x30])
        );
        assert!(is_announcement(&na));
        assert_eq!(
            frame(na.clone()).announces("2001:db8::101".parse().unwrap()),
            None
        );
        assert_eq!(frame(na.clone()).announces(v4), None);
        // Solicited (an answer to an NS): not an announcement.
        na[58] |= 0x40;
        assert_eq!(frame(na.clone()).announces(v6), None);
        assert!(!is_announcement(&na));
    }

    #[rustfmt::skip]
    fn unsolicited_na() -> Vec<u8> {
        vec![
            0x33, 0x33, 0, 0, 0, 1, 2, 0, 0x5e, 0x10, 0x20, 0x30, 0x86, 0xdd,
            0x60, 0, 0, 0, 0, 0x20, 58, 255,
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
            0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
            0x88, 0, 0x78, 0xed, 0x20, 0, 0, 0,
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
            2, 1, 2, 0, 0x5e, 0x10, 0x20, 0x30,
        ]
    }

    #[test]
    fn parses_an_unsolicited_na() {
        let mut f = unsolicited_na();
        let n = NdpFrame::parse(&f).expect("an NA");
        let vip: Ipv6Addr = "2001:db8::100".parse().unwrap();
        assert_eq!(
            (n.src, n.target, n.dst),
            (vip, vip, "ff02::1".parse().unwrap())
        );
        assert_eq!(n.hop_limit, 255);
        assert!(n.is_unsolicited_na() && n.override_flag && !n.router);
        assert_eq!(n.lladdr, Some([2, 0, 0x5e, 0x10, 0x20, 0x30]));
        assert!(n.checksum_ok);
        f[57] ^= 1;
        assert!(!NdpFrame::parse(&f).unwrap().checksum_ok);
        assert!(NdpFrame::parse(&f[..60]).is_none());
        f[20] = 17;
        assert!(NdpFrame::parse(&f).is_none(), "UDP is not NDP");
    }
}
