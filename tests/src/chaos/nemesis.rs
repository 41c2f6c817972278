//! The nemesis: starts and heals each fault of the schedule on the real
//! lab (bridges, nftables, signals, cgroups, vipctl). Administrative
//! operations go through one queue on the admin host, in order, each
//! retried until ZooKeeper takes it (an operator retries a failed write).

use std::{
    collections::BTreeSet,
    fs,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    SERVICES,
    proxy::ZkProxy,
    schedule::{Detail, Fault, FaultKind, Target},
};
use crate::{
    cluster::Cluster,
    lab::{Host, vipctl_bin},
};

/// The nftables table the nemesis adds in a node's namespace.
const NFT_TABLE: &str = "vipd_chaos";
/// How long an administrative command is retried before the run gives up
/// on it (and reports it).
const ADMIN_PATIENCE: Duration = Duration::from_secs(90);

/// A command of the admin queue.
pub(crate) struct AdminOp {
    /// Index of the applied fault it belongs to.
    pub fault: usize,
    /// True for the heal (undrain).
    pub heal: bool,
    pub args: Vec<String>,
}

/// What the admin queue did: per op, when it was acknowledged (None: given
/// up after [`ADMIN_PATIENCE`]) and vipctl's last error.
#[derive(Clone, Debug)]
pub(crate) struct AdminDone {
    pub fault: usize,
    pub heal: bool,
    pub started: Instant,
    pub acked: Option<Instant>,
    pub error: String,
}

pub(crate) struct AdminQueue {
    tx: Option<mpsc::Sender<AdminOp>>,
    pub done: Arc<Mutex<Vec<AdminDone>>>,
    thread: Option<JoinHandle<()>>,
}

impl AdminQueue {
    pub fn start(admin: Host, zk: String, cluster: String) -> AdminQueue {
        let (tx, rx) = mpsc::channel::<AdminOp>();
        let done = Arc::new(Mutex::new(Vec::new()));
        let log = done.clone();
        let thread = std::thread::spawn(move || {
            let bin = vipctl_bin().display().to_string();
            for op in rx {
                let started = Instant::now();
                let mut argv: Vec<String> = vec![bin.clone()];
                argv.extend(op.args.iter().cloned());
                argv.extend([
                    "--zk".into(),
                    zk.clone(),
                    "--cluster".into(),
                    cluster.clone(),
                ]);
                let mut error = String::new();
                let mut acked = None;
                while started.elapsed() < ADMIN_PATIENCE {
                    let out = admin.exec(&argv);
                    if out.status.success() {
                        acked = Some(Instant::now());
                        break;
                    }
                    error = String::from_utf8_lossy(&out.stderr).trim().to_string();
                    std::thread::sleep(Duration::from_millis(500));
                }
                if acked.is_none() {
                    eprintln!(
                        "[chaos] vipctl {} not acknowledged in {ADMIN_PATIENCE:?}: {error}",
                        op.args.join(" ")
                    );
                }
                log.lock().unwrap().push(AdminDone {
                    fault: op.fault,
                    heal: op.heal,
                    started,
                    acked,
                    error,
                });
            }
        });
        AdminQueue {
            tx: Some(tx),
            done,
            thread: Some(thread),
        }
    }

    pub fn send(&self, op: AdminOp) {
        self.tx
            .as_ref()
            .expect("admin queue open")
            .send(op)
            .expect("admin queue thread alive");
    }

    /// Waits for every queued command to finish.
    pub fn finish(&mut self) -> Vec<AdminDone> {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            t.join().expect("admin queue thread panicked");
        }
        self.done.lock().unwrap().clone()
    }
}

/// A started fault, with what its heal needs.
pub(crate) struct Active {
    /// Index in the applied list.
    pub index: usize,
    pub kind: FaultKind,
    pub node: Option<usize>,
    pub zk: Option<usize>,
    pub detail: Detail,
    pub heal_at: Instant,
}

/// A cgroup v1 blkio group that throttles one ZooKeeper server's writes.
struct Throttle {
    dir: PathBuf,
    pid: u32,
}

pub(crate) struct Nemesis {
    pub proxies: Vec<ZkProxy>,
    pub admin: AdminQueue,
    /// `major:minor` of the disk ZooKeeper's data sits on, if throttling it
    /// is possible (else why not).
    pub disk: Result<String, String>,
    throttles: Vec<Option<Throttle>>,
}

/// The disk device (`major:minor`, the whole disk) `dir` sits on, if blkio
/// can throttle it: a block device with a blkio hierarchy mounted.
pub fn throttle_device(dir: &Path) -> Result<String, String> {
    if !Path::new(BLKIO)
        .join("blkio.throttle.write_iops_device")
        .exists()
    {
        return Err(format!("no cgroup v1 blkio hierarchy at {BLKIO}"));
    }
    let dev = fs::metadata(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if !sys.exists() {
        return Err(format!(
            "{} sits on device {major}:{minor}, which is no block device (tmpfs?)",
            dir.display()
        ));
    }
    // A partition is throttled through its disk.
    if sys.join("partition").exists() {
        let parent = fs::canonicalize(sys.join(".."))
            .and_then(|p| fs::read_to_string(p.join("dev")))
            .map_err(|e| format!("the disk of partition {major}:{minor}: {e}"))?;
        return Ok(parent.trim().to_string());
    }
    Ok(format!("{major}:{minor}"))
}

const BLKIO: &str = "/sys/fs/cgroup/blkio";

impl Nemesis {
    pub fn new(proxies: Vec<ZkProxy>, admin: AdminQueue, disk: Result<String, String>) -> Nemesis {
        Nemesis {
            proxies,
            admin,
            disk,
            throttles: (0..3).map(|_| None).collect(),
        }
    }

    /// Starts `f` (its leader already resolved to `node`). Instant faults
    /// are done when this returns (or queued, for vipctl).
    pub fn start(
        &mut self,
        c: &mut Cluster,
        index: usize,
        f: &Fault,
        node: Option<usize>,
        pools: &[Vec<IpAddr>],
    ) -> Result<(), String> {
        let zk = match f.target {
            Target::Zk(i) => Some(i),
            _ => None,
        };
        match (f.kind, node, zk) {
            (FaultKind::LinkCut, Some(n), _) => {
                let links = links(&f.detail);
                c.lab.cut_peers(&c.nodes[n].host, links);
            }
            (FaultKind::Partition, Some(n), _) => {
                let links = links(&f.detail);
                c.lab.isolate_all(&c.nodes[n].host, links);
            }
            (FaultKind::ZkPartition, Some(n), _) => {
                // The quorum addresses are what the node's proxy dials.
                nft(
                    &c.nodes[n].host,
                    "ip daddr 198.51.100.0/24 drop",
                    "ip saddr 198.51.100.0/24 drop",
                )?;
            }
            (FaultKind::Loss, Some(n), _) => {
                let Detail::LossPercent(p) = f.detail else {
                    return Err("loss without a percentage".into());
                };
                nft(
                    &c.nodes[n].host,
                    &format!("oifname != \"lo\" numgen random mod 100 < {p} drop"),
                    &format!("iifname != \"lo\" numgen random mod 100 < {p} drop"),
                )?;
            }
            (FaultKind::Delay, Some(n), _) => {
                let Detail::Delay(d) = f.detail else {
                    return Err("delay without a duration".into());
                };
                self.proxies[n].set_delay(d);
            }
            (FaultKind::Kill, Some(n), _) => {
                let p = c.nodes[n].vipd.take().ok_or("vipd not running")?;
                p.kill(libc::SIGKILL);
                p.wait_timeout(Duration::from_secs(10))
                    .ok_or("vipd survived SIGKILL")?;
            }
            (FaultKind::Stop, Some(n), _) => {
                let p = c.nodes[n].vipd.as_ref().ok_or("vipd not running")?;
                if !p.kill(libc::SIGSTOP) {
                    return Err("vipd had exited".into());
                }
            }
            (FaultKind::Restart, Some(n), _) => {
                if let Some(p) = c.nodes[n].vipd.take() {
                    p.terminate(Duration::from_secs(15));
                }
                self.start_vipd(c, n);
            }
            (FaultKind::ZkKill, _, Some(z)) => c.zk.kill(z),
            (FaultKind::ZkFreeze, _, Some(z)) => c.zk.freeze(z),
            (FaultKind::SlowDisk, _, Some(z)) => {
                let Detail::Iops(iops) = f.detail else {
                    return Err("slow disk without a rate".into());
                };
                let dev = self.disk.clone()?;
                let dir =
                    PathBuf::from(BLKIO).join(format!("vipd-chaos-{}-zk{z}", std::process::id()));
                let pid = c.zk.pid(z);
                let w = |file: &str, v: &str| {
                    fs::write(dir.join(file), v)
                        .map_err(|e| format!("{}/{file} <- {v}: {e}", dir.display()))
                };
                fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                w("blkio.throttle.write_iops_device", &format!("{dev} {iops}"))?;
                w(
                    "blkio.throttle.write_bps_device",
                    &format!("{dev} {}", iops * 64 * 1024),
                )?;
                w("cgroup.procs", &pid.to_string())?;
                self.throttles[z] = Some(Throttle { dir, pid });
            }
            (FaultKind::ConfigWrite, _, _) => {
                let Target::Service(s) = f.target else {
                    return Err("config write without a service".into());
                };
                let Detail::Vips(ref picks) = f.detail else {
                    return Err("config write without VIPs".into());
                };
                let mut args = vec!["vip".to_string(), "set".into(), SERVICES[s].0.into()];
                args.extend(picks.iter().map(|&k| pools[s][k].to_string()));
                self.admin.send(AdminOp {
                    fault: index,
                    heal: false,
                    args,
                });
            }
            (FaultKind::Drain, Some(n), _) => self.admin.send(AdminOp {
                fault: index,
                heal: false,
                args: vec!["node".into(), "drain".into(), c.nodes[n].id.clone()],
            }),
            (FaultKind::Handover, _, _) => self.admin.send(AdminOp {
                fault: index,
                heal: false,
                args: vec!["handover".into()],
            }),
            (kind, node, zk) => {
                return Err(format!(
                    "{kind} cannot apply to node {node:?} / server {zk:?}"
                ));
            }
        }
        Ok(())
    }

    /// Undoes what [`Nemesis::start`] did. Errors are collected, not fatal:
    /// every other fault must still heal.
    pub fn heal(&mut self, c: &mut Cluster, a: &Active) -> Result<(), String> {
        match (a.kind, a.node, a.zk) {
            (FaultKind::LinkCut, Some(n), _) => {
                for l in links(&a.detail) {
                    c.lab.restore_peer(&c.nodes[n].host, l);
                }
            }
            (FaultKind::Partition, Some(n), _) => {
                for l in links(&a.detail) {
                    c.lab.rejoin(&c.nodes[n].host, l);
                }
            }
            (FaultKind::ZkPartition | FaultKind::Loss, Some(n), _) => {
                let out = c.nodes[n]
                    .host
                    .exec(&["nft", "delete", "table", "inet", NFT_TABLE]);
                if !out.status.success() {
                    return Err(format!(
                        "nft delete table: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
            }
            (FaultKind::Delay, Some(n), _) => self.proxies[n].set_delay(Duration::ZERO),
            (FaultKind::Kill, Some(n), _) => self.start_vipd(c, n),
            (FaultKind::Stop, Some(n), _) => {
                let p = c.nodes[n].vipd.as_ref().ok_or("vipd gone")?;
                p.kill(libc::SIGCONT);
            }
            (FaultKind::ZkKill, _, Some(z)) => c.zk.restart(z),
            (FaultKind::ZkFreeze, _, Some(z)) => c.zk.thaw(z),
            (FaultKind::SlowDisk, _, Some(z)) => {
                if let Some(t) = self.throttles[z].take() {
                    unthrottle(&t, self.disk.as_deref().unwrap_or(""))?;
                }
            }
            (FaultKind::Drain, Some(n), _) => self.admin.send(AdminOp {
                fault: a.index,
                heal: true,
                args: vec!["node".into(), "undrain".into(), c.nodes[n].id.clone()],
            }),
            _ => {}
        }
        Ok(())
    }

    /// Starts node `n`'s vipd at its defaults, through its proxy.
    pub fn start_vipd(&self, c: &mut Cluster, n: usize) {
        let zk = self.proxies[n].connect_string();
        c.start_vipd_via(n, &zk, &[]);
    }
}

impl Drop for Nemesis {
    fn drop(&mut self) {
        // A run that panicked mid-fault must not leave a cgroup behind.
        let dev = self.disk.clone().unwrap_or_default();
        for t in self.throttles.iter_mut().filter_map(Option::take) {
            let _ = unthrottle(&t, &dev);
        }
    }
}

fn unthrottle(t: &Throttle, dev: &str) -> Result<(), String> {
    let _ = fs::write(
        t.dir.join("blkio.throttle.write_iops_device"),
        format!("{dev} 0"),
    );
    let _ = fs::write(
        t.dir.join("blkio.throttle.write_bps_device"),
        format!("{dev} 0"),
    );
    // Back to the root group (the process may have died: a killed server).
    let _ = fs::write(Path::new(BLKIO).join("cgroup.procs"), t.pid.to_string());
    fs::remove_dir(&t.dir).map_err(|e| format!("rmdir {}: {e}", t.dir.display()))
}

fn links(d: &Detail) -> &'static [&'static str] {
    match d {
        Detail::Links(l) => l,
        _ => &["eth0", "eth1"],
    }
}

/// Adds the nemesis's nftables table in `host`'s namespace with one rule
/// on output and one on input.
fn nft(host: &Host, out_rule: &str, in_rule: &str) -> Result<(), String> {
    let script = format!(
        "table inet {NFT_TABLE} {{\n\
         chain out {{ type filter hook output priority -10; {out_rule}; }}\n\
         chain in {{ type filter hook input priority -10; {in_rule}; }}\n}}\n"
    );
    // The ruleset goes through a file: every namespace shares the mount
    // namespace, and nft reads it whole (one transaction).
    let path = std::env::temp_dir().join(format!(
        "vipd-chaos-{}-{}.nft",
        std::process::id(),
        host.name()
    ));
    std::fs::write(&path, &script).map_err(|e| format!("{}: {e}", path.display()))?;
    let out = host.exec(&["nft", "-f", &path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft in {}: {} (is nftables installed? `cargo xtask setup`)",
            host.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The VIPs a fault touches: a config write those of its service (before
/// and after), every other fault all of them (they move the leader, which
/// holds them all).
pub(crate) fn touched(f: &Fault, pools: &[Vec<IpAddr>]) -> BTreeSet<IpAddr> {
    match f.target {
        Target::Service(s) => pools[s].iter().copied().collect(),
        _ => pools.iter().flatten().copied().collect(),
    }
}
