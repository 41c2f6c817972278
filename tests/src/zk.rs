//! A real ZooKeeper for tests: the Debian package's server, started with a
//! fresh data dir and a short tickTime (so session timeouts down to 200 ms
//! are allowed), standalone or as a three-server ensemble, each server on
//! loopback or inside a named network namespace. Dropping it kills the
//! java processes (by PID) and removes the data dirs.
//!
//! The servers' data (snapshots and the transaction log, which ZooKeeper
//! fsyncs on every write) live in /dev/shm for the tests and the demo: on
//! this machine's shared disk, a build writing beside the tests made those
//! fsyncs take 200-800 ms, longer than a 666 ms lease, so a leader fenced
//! for a moment in a test about something else. The benchmarks keep them on
//! disk, fsyncs and all, as a deployment has it ([`keep_data_on_disk`]).

use std::{
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// ZooKeeper tick: session timeouts may range from 2 to 600 ticks
/// (minSessionTimeout/maxSessionTimeout below).
pub const TICK_MS: u64 = 100;
/// syncLimit in ticks: syncLimit x tickTime must stay below the
/// session timeout (here 0.5 s) so a server cut off from its quorum stops
/// serving before sessions can expire elsewhere.
pub const SYNC_LIMIT: u32 = 5;
const START_LIMIT: Duration = Duration::from_secs(90);

/// Server settings a test changes from the lab's defaults (each `None`
/// keeps the default above: tickTime 100 ms, sessions 200 ms to 60 s).
/// The lines go after the defaults in zoo.cfg; ZooKeeper reads it as Java
/// properties, where the last value of a key wins.
#[derive(Clone, Debug, Default)]
pub struct ZkOptions {
    pub tick_time: Option<Duration>,
    pub min_session_timeout: Option<Duration>,
    pub max_session_timeout: Option<Duration>,
}

impl ZkOptions {
    fn lines(&self) -> String {
        [
            ("tickTime", self.tick_time),
            ("minSessionTimeout", self.min_session_timeout),
            ("maxSessionTimeout", self.max_session_timeout),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}\n", v.as_millis())))
        .collect()
    }
}

/// One server process.
struct Member {
    child: Child,
    addr: SocketAddr,
    netns: Option<String>,
    log: PathBuf,
    stopped: bool,
    /// Its zoo.cfg and how often it was started ([`ZkServer::restart`]).
    cfg: PathBuf,
    starts: u32,
}

/// A running ZooKeeper (one server or an ensemble).
pub struct ZkServer {
    members: Vec<Member>,
    /// Configuration and logs.
    dir: PathBuf,
    /// The servers' data dirs (in /dev/shm unless [`keep_data_on_disk`]).
    data_root: PathBuf,
}

static DATA_ON_DISK: AtomicBool = AtomicBool::new(false);

/// From now on, servers started by this process keep their data (and
/// fsync their transaction log) on the disk beside their logs, as a
/// deployment does: what the benchmarks measure.
pub fn keep_data_on_disk() {
    DATA_ON_DISK.store(true, Ordering::Relaxed);
}

/// Where the servers under `dir` keep their data.
fn data_root(dir: &Path) -> PathBuf {
    let shm = Path::new("/dev/shm");
    if DATA_ON_DISK.load(Ordering::Relaxed) {
        dir.to_path_buf()
    } else {
        assert!(
            shm.is_dir(),
            "/dev/shm is missing: the lab's ZooKeeper keeps its data there"
        );
        shm.join(dir.file_name().expect("unique_dir has a name"))
    }
}

/// Where one ensemble member runs: its address and, if any, the network
/// namespace (`ip netns` name) it runs in.
#[derive(Clone, Debug)]
pub struct ZkMemberSpec<'a> {
    pub ip: Ipv4Addr,
    pub netns: Option<&'a str>,
}

fn unique_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!(
        "vipd-zk-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A free TCP port on `ip` in this (root) namespace. A small race with
/// other processes remains; the start check catches it.
fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free port on {ip}: {e}"))
}

const LOG4J: &str = "log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} [myid:%X{myid}] %-5p [%t] %c{1}: %m%n
";

fn base_config(data_dir: &Path, addr: SocketAddr) -> String {
    format!(
        "tickTime={TICK_MS}\ninitLimit=100\nsyncLimit={SYNC_LIMIT}\ndataDir={}\n\
         clientPort={}\nclientPortAddress={}\nmaxSessionTimeout=60000\nminSessionTimeout=200\n\
         admin.enableServer=false\n4lw.commands.whitelist=*\nmaxClientCnxns=0\nfsync.warningthresholdms=100\n",
        data_dir.display(),
        addr.port(),
        addr.ip()
    )
}

/// Fails loudly when `addr` is taken in `netns`: the start check would
/// otherwise talk to whatever server already listens there.
fn assert_port_free(addr: SocketAddr, netns: Option<&str>) {
    if let Err(e) = in_netns(netns, || TcpListener::bind(addr).map(drop)) {
        panic!(
            "ZooKeeper client address {addr} in namespace {} is taken: {e}",
            netns.unwrap_or("(root)")
        );
    }
}

fn spawn_java(cfg: &Path, netns: Option<&str>, log: &Path, log4j: &Path) -> Child {
    let out = fs::File::create(log).expect("create ZooKeeper log file");
    let err = out.try_clone().expect("clone log file handle");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "java"]);
            c
        }
        None => Command::new("java"),
    };
    // zookeeper.jar's manifest names its own dependencies; adding
    // log4j 1.2 and its slf4j binding gives a log. (`/usr/share/java/*`
    // pulls in log4j-over-slf4j too, and slf4j then refuses to start.)
    cmd.args([
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Djava.net.preferIPv4Stack=true",
        // ZooKeeper 3.8.0 (Debian's) can lose a committed transaction on a
        // follower killed while it syncs with its leader by DIFF
        // (ZOOKEEPER-4785, fixed in 3.8.4): that follower then serves a
        // tree without it, and a client reading there misses a candidate
        // that exists. A snapshot sync writes the whole tree before the
        // follower acknowledges it. docs/OPERATIONS.md says the same to
        // operators.
        "-Dzookeeper.forceSnapshotSync=true",
        &format!("-Dlog4j.configuration=file:{}", log4j.display()),
        "-cp",
        "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar",
        "org.apache.zookeeper.server.quorum.QuorumPeerMain",
    ])
    .arg(cfg)
    .stdin(Stdio::null())
    .stdout(out)
    .stderr(err);
    // `ip netns exec` execs java, so this PID is java's own.
    cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot start ZooKeeper (java, Debian package `zookeeper`): {e}")
    })
}

/// Opens a real session with the raw protocol (ConnectRequest/Response):
/// a server only answers it once it serves (standalone, or in a quorum).
fn handshake(addr: SocketAddr) -> std::io::Result<i64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_millis(1500)))?;
    let mut body = Vec::new();
    body.extend(0i32.to_be_bytes()); // protocol version
    body.extend(0i64.to_be_bytes()); // last zxid seen
    body.extend(2000i32.to_be_bytes()); // session timeout
    body.extend(0i64.to_be_bytes()); // session id (new)
    body.extend(16i32.to_be_bytes()); // password
    body.extend([0u8; 16]);
    body.push(0); // read-only: no
    let mut msg = (body.len() as i32).to_be_bytes().to_vec();
    msg.extend(body);
    s.write_all(&msg)?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut resp = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
    s.read_exact(&mut resp)?;
    if resp.len() < 16 {
        return Err(std::io::Error::other("short ConnectResponse"));
    }
    let timeout = i32::from_be_bytes(resp[4..8].try_into().expect("4 bytes"));
    let session = i64::from_be_bytes(resp[8..16].try_into().expect("8 bytes"));
    if timeout <= 0 || session == 0 {
        return Err(std::io::Error::other("server refused the session"));
    }
    // Closing the socket leaves a 2 s session behind; harmless.
    Ok(session)
}

/// Runs `f` in network namespace `ns` (a thread that joins it), or here.
fn in_netns<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> T {
    let Some(ns) = ns else { return f() };
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = fs::File::open(format!("/run/netns/{ns}"))
                .unwrap_or_else(|e| panic!("network namespace {ns} (/run/netns/{ns}): {e}"));
            // SAFETY: setns on a valid fd changes only this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns into {ns}: {}",
                std::io::Error::last_os_error()
            );
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl ZkServer {
    /// One standalone server. In the root namespace (`netns` None) it
    /// listens on `bind_ip` (use 127.0.0.1) with a free port; in a namespace
    /// on `bind_ip:2181`.
    pub fn start_standalone(bind_ip: Ipv4Addr, netns: Option<&str>) -> ZkServer {
        Self::start_standalone_with(bind_ip, netns, &ZkOptions::default())
    }

    /// [`ZkServer::start_standalone`] with server settings `opts`.
    pub fn start_standalone_with(
        bind_ip: Ipv4Addr,
        netns: Option<&str>,
        opts: &ZkOptions,
    ) -> ZkServer {
        let dir = unique_dir();
        let data_root = data_root(&dir);
        let data = data_root.join("data");
        fs::create_dir_all(&dir).expect("create ZooKeeper dir");
        fs::create_dir_all(&data).expect("create ZooKeeper data dir");
        let port = if netns.is_some() {
            2181
        } else {
            free_port(bind_ip)
        };
        let addr = SocketAddr::from((bind_ip, port));
        let cfg = dir.join("zoo.cfg");
        let log4j = dir.join("log4j.properties");
        fs::write(&log4j, LOG4J).expect("write log4j.properties");
        fs::write(&cfg, base_config(&data, addr) + &opts.lines()).expect("write zoo.cfg");
        let log = dir.join("zk.log");
        assert_port_free(addr, netns);
        let child = spawn_java(&cfg, netns, &log, &log4j);
        let mut zk = ZkServer {
            members: vec![Member {
                child,
                addr,
                netns: netns.map(str::to_string),
                log,
                stopped: false,
                cfg,
                starts: 1,
            }],
            dir,
            data_root,
        };
        zk.wait_ready();
        zk
    }

    /// Three (or more) servers forming one ensemble; member `i` has
    /// `myid` i+1 and runs at `members[i].ip` inside `members[i].netns`.
    /// Ports: client 2281+i, quorum 2888+i, election 3888+i in a namespace
    /// (so members, and a standalone server on 2181, may share one), free
    /// ports in the root namespace.
    /// Every member must be able to reach every other member's ip.
    pub fn start_ensemble(members: &[ZkMemberSpec<'_>]) -> ZkServer {
        Self::start_ensemble_with(members, &ZkOptions::default())
    }

    /// [`ZkServer::start_ensemble`] with server settings `opts` on every member.
    pub fn start_ensemble_with(members: &[ZkMemberSpec<'_>], opts: &ZkOptions) -> ZkServer {
        assert!(members.len() >= 3, "an ensemble needs at least 3 servers");
        let dir = unique_dir();
        let data_root = data_root(&dir);
        let ports: Vec<(u16, u16, u16)> = members
            .iter()
            .enumerate()
            .map(|(i, m)| match m.netns {
                Some(_) => (2281 + i as u16, 2888 + i as u16, 3888 + i as u16),
                None => (free_port(m.ip), free_port(m.ip), free_port(m.ip)),
            })
            .collect();
        let servers: String = members
            .iter()
            .zip(&ports)
            .enumerate()
            .map(|(i, (m, (_, q, e)))| format!("server.{}={}:{q}:{e}\n", i + 1, m.ip))
            .collect();
        let log4j = dir.join("log4j.properties");
        fs::create_dir_all(&dir).expect("create ZooKeeper dir");
        fs::write(&log4j, LOG4J).expect("write log4j.properties");
        let mut zk = ZkServer {
            members: Vec::new(),
            dir: dir.clone(),
            data_root: data_root.clone(),
        };
        for (i, (m, (c, _, _))) in members.iter().zip(&ports).enumerate() {
            let data = data_root.join(format!("data{}", i + 1));
            fs::create_dir_all(&data).expect("create ZooKeeper data dir");
            fs::write(data.join("myid"), format!("{}\n", i + 1)).expect("write myid");
            let addr = SocketAddr::from((m.ip, *c));
            let cfg = dir.join(format!("zoo{}.cfg", i + 1));
            fs::write(
                &cfg,
                format!("{}{}{servers}", base_config(&data, addr), opts.lines()),
            )
            .expect("write zoo.cfg");
            let log = dir.join(format!("zk{}.log", i + 1));
            assert_port_free(addr, m.netns);
            let child = spawn_java(&cfg, m.netns, &log, &log4j);
            zk.members.push(Member {
                child,
                addr,
                netns: m.netns.map(str::to_string),
                log,
                stopped: false,
                cfg,
                starts: 1,
            });
        }
        zk.wait_ready();
        zk
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        for i in 0..self.members.len() {
            loop {
                let m = &mut self.members[i];
                if let Ok(Some(status)) = m.child.try_wait() {
                    panic!(
                        "ZooKeeper server {} exited ({status}) before serving; log {}:\n{}",
                        m.addr,
                        m.log.display(),
                        tail(&m.log)
                    );
                }
                let addr = m.addr;
                if in_netns(m.netns.as_deref(), || handshake(addr)).is_ok() {
                    break;
                }
                if start.elapsed() > START_LIMIT {
                    panic!(
                        "ZooKeeper server {addr} did not serve within {START_LIMIT:?}; log {}:\n{}",
                        m.log.display(),
                        tail(&m.log)
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// `host:port,...` for clients.
    pub fn connect_string(&self) -> String {
        self.members
            .iter()
            .map(|m| m.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client address of member `i` (0 for a standalone server).
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.members[i].addr
    }

    /// The java PID of member `i`.
    pub fn pid(&self, i: usize) -> u32 {
        self.members[i].child.id()
    }

    /// Freezes member `i` (SIGSTOP): its sockets stay open but nothing answers.
    pub fn freeze(&mut self, i: usize) {
        self.signal(i, libc::SIGSTOP);
        self.members[i].stopped = true;
    }

    /// Lets a frozen member run again (SIGCONT).
    pub fn thaw(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        self.members[i].stopped = false;
    }

    fn signal(&self, i: usize, sig: libc::c_int) {
        let pid = self.members[i].child.id() as libc::pid_t;
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// SIGKILLs member `i` and waits for it to be gone (its data stays).
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        if m.stopped {
            // SAFETY: as in `signal`; a stopped process must run to die of SIGKILL cleanly.
            unsafe { libc::kill(m.child.id() as libc::pid_t, libc::SIGCONT) };
            m.stopped = false;
        }
        let _ = m.child.kill();
        let _ = m.child.wait();
    }

    /// Starts member `i` again after [`ZkServer::kill`], with its own
    /// configuration and data, logging to a new file (`zk<N>.<k>.log`). It
    /// rejoins the ensemble in the background: this does not wait.
    pub fn restart(&mut self, i: usize) {
        let log4j = self.dir.join("log4j.properties");
        let m = &mut self.members[i];
        m.starts += 1;
        let log = self.dir.join(format!("zk{}.{}.log", i + 1, m.starts));
        m.child = spawn_java(&m.cfg, m.netns.as_deref(), &log, &log4j);
        m.log = log;
    }

    /// Where the servers keep their data (snapshots, transaction logs).
    pub fn data_root(&self) -> &Path {
        &self.data_root
    }

    /// The data/log directory (logs are zk.log or zk<N>.log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        for m in &mut self.members {
            if m.stopped {
                // SAFETY: as in `signal`; a stopped process must run to die of SIGKILL cleanly.
                unsafe { libc::kill(m.child.id() as libc::pid_t, libc::SIGCONT) };
            }
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
        // VIPD_LAB_KEEP keeps the servers' logs and data (the transaction
        // logs say who wrote what when), as it keeps a lab's process logs.
        let keep = std::env::var_os("VIPD_LAB_KEEP").is_some();
        if std::thread::panicking() || keep {
            eprintln!("ZooKeeper logs kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
        if keep {
            eprintln!("ZooKeeper data kept in {}", self.data_root.display());
        } else if self.data_root != self.dir {
            let _ = fs::remove_dir_all(&self.data_root);
        }
    }
}
