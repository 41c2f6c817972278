//! The chaos run: a lab of 3 to 5 vipd nodes at their default lease
//! settings, a three-server ZooKeeper ensemble and a client; a nemesis that
//! injects faults drawn from a seed ([`schedule`]); the observer of
//! [`crate::probe`] watching every VIP from the client and every node's
//! addresses; and a checker ([`report`]) that turns what was seen into
//! verdicts: serving overlap, unserved time after each fault's heal,
//! configuration lost.

pub(crate) mod nemesis;
pub mod proxy;
pub(crate) mod replicas;
pub mod report;
pub mod schedule;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::{IpAddr, SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cluster::{Cluster, ZkKind},
    lab::{Host, StoppableThread},
    probe::{self, Observer},
    zk,
};
use nemesis::{Active, AdminQueue, Nemesis};
use proxy::ZkProxy;
use report::{Applied, Report};
use schedule::{Fault, FaultKind, Shape, Target};

/// The services the run configures, with the pool of VIPs each draws from
/// (both families). All start fully configured; config writes set a drawn
/// non-empty subset of the pool.
pub const SERVICES: [(&str, &[&str]); 3] = [
    ("web", &["192.0.2.100", "192.0.2.101", "2001:db8:0:1::100"]),
    ("db", &["192.0.2.110", "2001:db8:0:1::110"]),
    ("api", &["2001:db8:0:1::120", "192.0.2.120"]),
];

/// The port every node serves the client's connections on (a banner
/// naming the node).
pub const SERVICE_PORT: u16 = 8080;

/// What one run does.
#[derive(Clone, Debug)]
pub struct Options {
    /// Lab name hint (namespaces are unique per process anyway).
    pub hint: String,
    pub seed: u64,
    /// vipd nodes, 3 to 5.
    pub nodes: usize,
    /// How long faults are drawn for; every fault heals inside it.
    pub window: Duration,
    /// How long after the window the cluster may take to settle on the
    /// final configuration.
    pub settle: Duration,
    /// ZooKeeper's data on the disk (fsyncs and all, and throttleable)
    /// rather than in /dev/shm.
    pub zk_on_disk: bool,
    /// A checker self-test: this long into the window, one configured VIP
    /// is added by hand to a node that does not hold it, for 3 s.
    pub overlap_by_hand: Option<Duration>,
    /// Inject the drawn faults (false: a quiet run, for the self-test).
    pub faults: bool,
}

impl Options {
    pub fn new(seed: u64, nodes: usize, window: Duration) -> Options {
        Options {
            hint: "chaos".into(),
            seed,
            nodes,
            window,
            settle: Duration::from_secs(60),
            zk_on_disk: false,
            overlap_by_hand: None,
            faults: true,
        }
    }
}

/// Each service's pool, parsed.
pub fn pools() -> Vec<Vec<IpAddr>> {
    SERVICES
        .iter()
        .map(|(_, v)| v.iter().map(|a| a.parse().expect("a pool VIP")).collect())
        .collect()
}

/// Runs the chaos run and checks it. `Err` when the run could not be done
/// (bad options, a lab that never came up), not for a violation: that is
/// in the [`Report`].
pub fn run(o: &Options) -> Result<Report> {
    if !(3..=5).contains(&o.nodes) {
        bail!("--nodes {}: the chaos lab has 3 to 5 vipd nodes", o.nodes);
    }
    if o.window < Duration::from_secs(10) {
        bail!(
            "a chaos window of {:?} is too short: at least 10 s",
            o.window
        );
    }
    crate::lab::require_root();
    if o.zk_on_disk {
        zk::keep_data_on_disk();
    }
    let pools = pools();
    let all: BTreeSet<IpAddr> = pools.iter().flatten().copied().collect();
    let mut c = Cluster::new(&o.hint, ZkKind::Ensemble, o.nodes);
    c.enable_ipv6();
    for (name, vips) in SERVICES {
        let mut args = vec!["set", name];
        args.extend_from_slice(vips);
        c.vip_ok(&args);
    }
    let servers: Vec<SocketAddr> = (0..c.zk_hosts.len()).map(|i| c.zk.addr(i)).collect();
    let proxies: Vec<ZkProxy> = c
        .nodes
        .iter()
        .map(|n| ZkProxy::start(&n.host, &servers))
        .collect();
    let _banners: Vec<StoppableThread> = c.nodes.iter().map(|n| banner(&n.host)).collect();
    let (mut replica_watch, divergences) = replicas::watch(
        c.admin.clone(),
        servers.clone(),
        format!("/vipd/{}/election", c.cluster),
        c.admin.zk_credential(),
    );
    let disk = nemesis::throttle_device(c.zk.data_root());
    let admin = AdminQueue::start(c.admin.clone(), c.hosts.clone(), c.cluster.clone());
    let mut nem = Nemesis::new(proxies, admin, disk.clone());
    for i in 0..o.nodes {
        nem.start_vipd(&mut c, i);
    }
    for i in 0..o.nodes {
        c.wait_api(i);
    }
    let (first, took) = c
        .wait_sole_holder_ips(&all, None, Duration::from_secs(60))
        .map_err(|e| anyhow::anyhow!("the cluster never settled before the faults: {e}"))?;
    eprintln!(
        "[chaos] {} holds all {} VIPs {:.1} s after the vipds answered",
        c.nodes[first].id,
        all.len(),
        took.as_secs_f64()
    );
    let targets: Vec<probe::Target> = c
        .nodes
        .iter()
        .map(|n| probe::Target::new(&n.host, "eth0"))
        .collect();
    let observer = Observer::start(
        &c.client,
        "eth0",
        targets,
        all.iter().copied().collect(),
        probe::Options {
            service: Some(probe::Service::Connect(SERVICE_PORT)),
            ..probe::Options::default()
        },
    );
    std::thread::sleep(Duration::from_secs(1));

    // The schedule is drawn alike everywhere (a seed names one schedule);
    // a fault this machine cannot inject is skipped when its turn comes.
    let mut without = Vec::new();
    if let Err(why) = &disk {
        eprintln!("[chaos] slow-disk faults will be skipped: {why}");
        without.push((FaultKind::SlowDisk, why.clone()));
    }
    let shape = Shape {
        nodes: o.nodes,
        zk_servers: c.zk_hosts.len(),
        pools: pools.iter().map(Vec::len).collect(),
        window: o.window,
        without: Vec::new(),
    };
    let schedule = if o.faults {
        schedule::draw(o.seed, &shape)
    } else {
        Vec::new()
    };
    eprintln!(
        "[chaos] seed {}: {} faults over {:.0} s on {} nodes (vipd at its default lease settings)",
        o.seed,
        schedule.len(),
        o.window.as_secs_f64(),
        o.nodes
    );

    let t0 = Instant::now();
    let mut applied: Vec<Applied> = Vec::new();
    let mut active: Vec<Active> = Vec::new();
    let mut hand: Option<HandOverlap> = None;
    let mut next = 0;
    loop {
        let now = Instant::now();
        // Heals first: a fault due to end makes room for the next one.
        let mut i = 0;
        while i < active.len() {
            if active[i].heal_at <= now {
                let a = active.remove(i);
                heal(&mut nem, &mut c, &a, &mut applied);
            } else {
                i += 1;
            }
        }
        if let Some(at) = o.overlap_by_hand {
            hand_overlap(&c, &all, t0, at, &mut hand);
        }
        if next < schedule.len() && t0 + schedule[next].at <= now {
            let f = schedule[next].clone();
            next += 1;
            start(&mut nem, &mut c, &f, &pools, &mut active, &mut applied);
            continue;
        }
        let window_over = now >= t0 + o.window;
        if window_over && next >= schedule.len() {
            break;
        }
        let mut wake = t0 + o.window;
        if next < schedule.len() {
            wake = wake.min(t0 + schedule[next].at);
        }
        for a in &active {
            wake = wake.min(a.heal_at);
        }
        let sleep = wake
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(200));
        std::thread::sleep(sleep);
    }
    // Everything heals by the end of the window.
    for a in std::mem::take(&mut active) {
        heal(&mut nem, &mut c, &a, &mut applied);
    }
    if let Some(h) = hand.take() {
        h.remove(&c);
    }
    let admin_done = nem.admin.finish();
    let healed_at = Instant::now();
    let writes = report::settle_admin(&mut applied, &admin_done);

    // The configuration that must survive: the last acknowledged write of
    // each service, else its initial pool.
    let mut expected: BTreeMap<String, BTreeSet<IpAddr>> = SERVICES
        .iter()
        .zip(&pools)
        .map(|((n, _), p)| (n.to_string(), p.iter().copied().collect()))
        .collect();
    for w in &writes {
        if w.acked.is_some() {
            expected.insert(w.service.clone(), w.vips.clone());
        }
    }
    let want: BTreeSet<IpAddr> = expected.values().flatten().copied().collect();
    let settled = c
        .wait_sole_holder_ips(&want, None, o.settle)
        .map(|(i, d)| (c.nodes[i].id.clone(), d));
    // A little more observation of the settled cluster.
    std::thread::sleep(Duration::from_secs(3));
    let obs = observer.stop();
    let end = Instant::now();
    replica_watch.halt();
    let (zk_divergences, zk_compared) = {
        let f = divergences.lock().unwrap();
        let mut v: Vec<String> = f.divergences.iter().map(|d| d.describe(t0)).collect();
        if f.compared == 0 {
            v.push("the ZooKeeper replicas were never read side by side: the replica check saw nothing".into());
        }
        (v, f.compared)
    };
    eprintln!("[chaos] ZooKeeper replicas compared {zk_compared} times");

    let mut config_lost = Vec::new();
    match list_config(&c) {
        Ok(stored) => {
            for (service, vips) in &expected {
                let got = stored.get(service).cloned().unwrap_or_default();
                if &got != vips {
                    config_lost.push(format!(
                        "ZooKeeper holds {service} = {got:?}, vipctl last wrote {vips:?}"
                    ));
                }
            }
        }
        Err(e) => config_lost.push(format!("vipctl vip list failed: {e}")),
    }
    match &settled {
        Ok((node, d)) => eprintln!(
            "[chaos] settled: {node} alone holds the {} configured VIPs, {:.1} s after the last heal",
            want.len(),
            d.as_secs_f64()
        ),
        Err(e) => config_lost.push(format!(
            "the nodes never served exactly the configuration: {e}"
        )),
    }
    for (i, n) in c.nodes.iter().enumerate() {
        let stray: BTreeSet<IpAddr> = c.held_ips(i, &all).difference(&want).copied().collect();
        if !stray.is_empty() {
            config_lost.push(format!("{} holds unconfigured VIPs {stray:?}", n.id));
        }
    }
    let mut crashed = Vec::new();
    for n in &c.nodes {
        if let Some(p) = &n.vipd
            && let Some(status) = p.try_status()
        {
            crashed.push(format!(
                "vipd on {} exited ({status}) outside any fault: {}",
                n.id,
                tail(&p.stderr())
            ));
        }
    }
    let rep = Report::check(report::Inputs {
        seed: o.seed,
        nodes: o.nodes,
        window: o.window,
        t0,
        healed_at,
        end,
        schedule,
        applied,
        writes,
        pools,
        observations: obs,
        config_lost,
        zk_divergences,
        crashed,
        without,
        hand_overlap: o.overlap_by_hand.is_some(),
        zk_on_disk: o.zk_on_disk,
    });
    if !rep.passed() {
        c.lab.dump_logs();
        // A self-test's overlap was put there on purpose: nothing to study.
        if o.overlap_by_hand.is_none() {
            keep_evidence(&c, o.seed);
        }
    }
    drop(nem);
    Ok(rep)
}

/// Copies every process log of the lab and the ZooKeeper servers' logs
/// and data (their transaction logs say who wrote what, when) where they
/// outlive the run: the tails printed above rarely reach back to the
/// violation.
fn keep_evidence(c: &Cluster, seed: u64) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let to = std::path::PathBuf::from(format!("/tmp/vipd-chaos-{seed}-{secs}"));
    let mut from = vec![c.lab.dir(), c.zk.dir()];
    if c.zk.data_root() != c.zk.dir() {
        from.push(c.zk.data_root());
    }
    let copied = from.iter().try_for_each(|dir| {
        let name = dir.file_name().unwrap_or(dir.as_os_str());
        copy_tree(dir, &to.join(name))
    });
    match copied {
        Ok(()) => eprintln!(
            "chaos: the lab's logs and ZooKeeper's logs and data are kept in {}",
            to.display()
        ),
        Err(e) => eprintln!("chaos: could not keep the logs in {}: {e}", to.display()),
    }
}

/// Copies the files and folders under `from` to `to` (sockets and other
/// special files are left out).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// The node holding the most of the pool VIPs now, if any holds one.
fn holder(c: &Cluster, all: &BTreeSet<IpAddr>) -> Option<usize> {
    (0..c.nodes.len())
        .map(|i| (c.held_ips(i, all).len(), i))
        .filter(|(n, _)| *n > 0)
        .max()
        .map(|(_, i)| i)
}

fn start(
    nem: &mut Nemesis,
    c: &mut Cluster,
    f: &Fault,
    pools: &[Vec<IpAddr>],
    active: &mut Vec<Active>,
    applied: &mut Vec<Applied>,
) {
    let all: BTreeSet<IpAddr> = pools.iter().flatten().copied().collect();
    let node = match f.target {
        Target::Node(i) => Some(i),
        // Nobody holds the VIPs (a fault is under way): the first node.
        Target::Leader => Some(holder(c, &all).unwrap_or(0)),
        _ => None,
    };
    // A late heal may still hold the target: heal it now, so one target
    // carries one fault at a time as the schedule has it.
    let zk = match f.target {
        Target::Zk(z) => Some(z),
        _ => None,
    };
    let mut k = 0;
    while k < active.len() {
        let a = &active[k];
        let same_node = f.kind.on_node() && a.kind.on_node() && node.is_some() && a.node == node;
        let same_zk = f.kind.on_zk() && a.kind.on_zk();
        let both_drain = f.kind == FaultKind::Drain && a.kind == FaultKind::Drain;
        if same_node || same_zk || both_drain {
            let a = active.remove(k);
            heal(nem, c, &a, applied);
        } else {
            k += 1;
        }
    }
    let index = applied.len();
    let started = Instant::now();
    if let (FaultKind::SlowDisk, Err(why)) = (f.kind, &nem.disk) {
        eprintln!("[chaos] {f}  (skipped: {why})");
        applied.push(Applied {
            fault: f.clone(),
            node,
            target: f.target.to_string(),
            started,
            ended: Some(started),
            error: None,
            skipped: Some(why.clone()),
        });
        return;
    }
    let result = nem.start(c, index, f, node, pools);
    let target = match node {
        Some(n) if f.target == Target::Leader => format!("leader={}", c.nodes[n].id),
        _ => f.target.to_string(),
    };
    let line = format!(
        "[chaos] {}{}",
        f,
        if f.target == Target::Leader {
            format!(" -> {target}")
        } else {
            String::new()
        }
    );
    eprintln!("{line}");
    let _ = std::io::stderr().flush();
    let error = result.as_ref().err().cloned();
    if let Some(e) = &error {
        eprintln!("[chaos]   could not start: {e}");
    }
    applied.push(Applied {
        fault: f.clone(),
        node,
        target,
        started,
        ended: if f.kind.instant() || error.is_some() {
            Some(Instant::now())
        } else {
            None
        },
        error,
        skipped: None,
    });
    if result.is_ok() && !f.kind.instant() {
        active.push(Active {
            index,
            kind: f.kind,
            node,
            zk,
            detail: f.detail.clone(),
            heal_at: started + f.duration,
        });
    }
}

fn heal(nem: &mut Nemesis, c: &mut Cluster, a: &Active, applied: &mut [Applied]) {
    if let Err(e) = nem.heal(c, a) {
        eprintln!("[chaos]   heal of {} failed: {e}", applied[a.index].fault);
        applied[a.index].error = Some(format!("heal failed: {e}"));
    }
    applied[a.index].ended = Some(Instant::now());
}

/// The checker self-test's address, added by hand.
struct HandOverlap {
    node: usize,
    cidr: String,
    until: Instant,
    removed: bool,
}

impl HandOverlap {
    fn remove(mut self, c: &Cluster) {
        self.remove_now(c);
    }

    fn remove_now(&mut self, c: &Cluster) {
        if !self.removed {
            c.nodes[self.node]
                .host
                .ip(&["addr", "del", &self.cidr, "dev", "eth0"]);
            self.removed = true;
            eprintln!(
                "[chaos] self-test: removed {} from {}",
                self.cidr, c.nodes[self.node].id
            );
        }
    }
}

/// At `at` into the window, adds a VIP the holder serves to another node's
/// data interface by hand (a second server the checker must see), and
/// removes it 3 s later.
fn hand_overlap(
    c: &Cluster,
    all: &BTreeSet<IpAddr>,
    t0: Instant,
    at: Duration,
    hand: &mut Option<HandOverlap>,
) {
    if let Some(h) = hand {
        if Instant::now() >= h.until {
            h.remove_now(c);
        }
        return;
    }
    if Instant::now() < t0 + at {
        return;
    }
    let Some(holder) = holder(c, all) else { return };
    let Some(vip) = c.held_ips(holder, all).into_iter().find(IpAddr::is_ipv4) else {
        return;
    };
    let node = (holder + 1) % c.nodes.len();
    let cidr = format!("{vip}/24");
    c.nodes[node]
        .host
        .ip(&["addr", "add", &cidr, "dev", "eth0"]);
    eprintln!(
        "[chaos] self-test: added {cidr} by hand to {} while {} serves it",
        c.nodes[node].id, c.nodes[holder].id
    );
    *hand = Some(HandOverlap {
        node,
        cidr,
        until: Instant::now() + Duration::from_secs(3),
        removed: false,
    });
}

/// `vipctl vip list --json`: each service's VIPs as ZooKeeper holds them.
fn list_config(c: &Cluster) -> Result<BTreeMap<String, BTreeSet<IpAddr>>> {
    let text = c.vip_ok(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text).context("vipctl vip list --json")?;
    let services = v["services"]
        .as_object()
        .with_context(|| format!("no services in {text}"))?;
    let mut out = BTreeMap::new();
    for (name, vips) in services {
        let mut set = BTreeSet::new();
        for vip in vips.as_array().into_iter().flatten() {
            let s = vip.as_str().map(str::to_string).unwrap_or(vip.to_string());
            set.insert(
                s.parse()
                    .with_context(|| format!("VIP {s:?} of {name} in {text}"))?,
            );
        }
        out.insert(name.clone(), set);
    }
    Ok(out)
}

/// A server on [`SERVICE_PORT`] in `host`'s namespace that greets every
/// connection with `served-by <host>`: the client's own connections name
/// the node that answered.
fn banner(host: &Host) -> StoppableThread {
    let listener = host
        .in_netns(|| TcpListener::bind(("::", SERVICE_PORT)))
        .unwrap_or_else(|e| panic!("banner server in {}: {e}", host.name()));
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let name = host.name().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.write_all(format!("served-by {name}\n").as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    StoppableThread::new(stop, thread)
}
