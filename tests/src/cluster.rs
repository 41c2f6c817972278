//! A vipd cluster in the lab: real vipd processes in node namespaces, a real
//! ZooKeeper (one server or three) on the management bridge, and netlink
//! address readers and recorders inside the namespaces to see, with one
//! monotonic clock, which node holds which VIP and when that changed.
//!
//! Layout: nodes `n1..` have eth0 on br0 (192.0.2.1x/24, the data segment
//! where VIPs live) and eth1 on br2 (203.0.113.1x/24, the path to ZooKeeper),
//! so cutting eth1 cuts only a node's ZooKeeper path. [`Cluster::enable_ipv6`]
//! adds 2001:db8:0:1::1x/64 on the nodes' eth0 and 2001:db8:0:1::50/64 on
//! the client.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    process::Output,
    time::{Duration, Instant},
};

use crate::{
    lab::{
        AddrMonitor, AddrReader, Host, HostIf, Lab, LabProcess, NlAddr6, vipctl_bin, vipd_bin,
        wait_until,
    },
    vipd::as_status,
    zk::{ZkMemberSpec, ZkOptions, ZkServer},
};
use vipd_api::{Role, Status};

/// The ZooKeeper session timeout every vipd of the bench uses. 2 s, not
/// 1 s: a cold-machine CI run saw the lab's ZooKeeper stall for over 250 ms
/// twice in a row, which at 1 s fenced every leader in turn (correctly, but
/// the scenario under test never settled). The limits scale with it.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(2);
/// A client host on the data segment.
pub const CLIENT_ADDR: &str = "192.0.2.50/24";
/// The client's IPv6 address on the data segment ([`Cluster::enable_ipv6`]).
pub const CLIENT_ADDR6: &str = "2001:db8:0:1::50/64";
/// Where `vipctl vip ...` runs: its own host on br2, never cut by a test.
const ADMIN_ADDR: &str = "203.0.113.5/24";

/// Which ZooKeeper the bench runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZkKind {
    /// One server at 203.0.113.2:2181 in namespace `zk`.
    Standalone,
    /// Three servers `zk1..zk3`. Each has eth0 on br1 (198.51.100.2-4, the
    /// quorum path and the server's own address) and eth1 on br2
    /// (203.0.113.2-4, the client path): nodes reach server `i` through a
    /// /32 route via its br2 address. Cutting a server's eth0 cuts it off
    /// from its peers while its clients still reach it.
    Ensemble,
}

/// One vipd node.
pub struct Node {
    pub id: String,
    pub host: Host,
    pub socket: PathBuf,
    pub vipd: Option<LabProcess>,
}

/// The bench. Field order matters: ZooKeeper dies before the lab's
/// namespaces go (its java processes are not lab processes).
pub struct Cluster {
    pub zk: ZkServer,
    pub zk_hosts: Vec<Host>,
    pub nodes: Vec<Node>,
    pub admin: Host,
    pub client: Host,
    pub cluster: String,
    pub hosts: String,
    readers: Vec<AddrReader>,
    pub lab: Lab,
}

impl Cluster {
    /// Builds the lab, starts ZooKeeper, and adds `n` nodes (vipd not started).
    pub fn new(hint: &str, kind: ZkKind, n: usize) -> Cluster {
        Self::with_zk_options(hint, kind, n, &ZkOptions::default())
    }

    /// [`Cluster::new`] with ZooKeeper server settings `opts` (a capped
    /// session timeout, another tickTime).
    pub fn with_zk_options(hint: &str, kind: ZkKind, n: usize, opts: &ZkOptions) -> Cluster {
        let lab = Lab::new(hint);
        let (zk_hosts, zk) = match kind {
            ZkKind::Standalone => {
                let h = lab.add_host("zk", &[HostIf::on(2, "203.0.113.2/24")]);
                let zk = ZkServer::start_standalone_with(
                    Ipv4Addr::new(203, 0, 113, 2),
                    Some(h.netns()),
                    opts,
                );
                (vec![h], zk)
            }
            ZkKind::Ensemble => {
                let hosts: Vec<Host> = (0..3)
                    .map(|i| {
                        let quorum = format!("198.51.100.{}/24", 2 + i);
                        let client = format!("203.0.113.{}/24", 2 + i);
                        lab.add_host(
                            &format!("zk{}", i + 1),
                            &[HostIf::on(1, &quorum), HostIf::on(2, &client)],
                        )
                    })
                    .collect();
                let specs: Vec<ZkMemberSpec<'_>> = hosts
                    .iter()
                    .enumerate()
                    .map(|(i, h)| ZkMemberSpec {
                        ip: Ipv4Addr::new(198, 51, 100, 2 + i as u8),
                        netns: Some(h.netns()),
                    })
                    .collect();
                let zk = ZkServer::start_ensemble_with(&specs, opts);
                (hosts, zk)
            }
        };
        let admin = lab.add_host("admin", &[HostIf::on(2, ADMIN_ADDR)]);
        let client = lab.add_host("client", &[HostIf::on(0, CLIENT_ADDR)]);
        if kind == ZkKind::Ensemble {
            add_server_routes(&admin);
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let cluster = format!("c{}-{nanos}", std::process::id());
        let hosts = zk.connect_string();
        let mut bench = Cluster {
            zk,
            zk_hosts,
            nodes: Vec::new(),
            admin,
            client,
            cluster,
            hosts,
            readers: Vec::new(),
            lab,
        };
        for i in 1..=n {
            let id = format!("n{i}");
            let data = format!("192.0.2.{}/24", 10 + i);
            let mgmt = format!("203.0.113.{}/24", 10 + i);
            let host = bench
                .lab
                .add_host(&id, &[HostIf::on(0, &data), HostIf::on(2, &mgmt)]);
            if kind == ZkKind::Ensemble {
                add_server_routes(&host);
            }
            bench.readers.push(AddrReader::new(&host));
            let socket = bench.lab.dir().join(format!("{id}.sock"));
            bench.nodes.push(Node {
                id,
                host,
                socket,
                vipd: None,
            });
        }
        bench
    }

    /// Gives the data segment IPv6 too: node `i` gets 2001:db8:0:1::1<i>/64
    /// on eth0 and the client 2001:db8:0:1::50/64, all without DAD (on-link
    /// routes come with them; no IPv6 default route).
    pub fn enable_ipv6(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            n.host
                .add_addr6("eth0", &format!("2001:db8:0:1::{}/64", 11 + i));
        }
        self.client.add_addr6("eth0", CLIENT_ADDR6);
    }

    /// Starts vipd on node `i` (0-based) with the bench's settings.
    pub fn start_vipd(&mut self, i: usize) {
        self.start_vipd_with(i, SESSION_TIMEOUT, &[]);
    }

    /// Starts vipd on node `i` with session timeout `t` and `extra` flags.
    pub fn start_vipd_with(&mut self, i: usize, t: Duration, extra: &[&str]) {
        self.start_vipd_env(i, t, extra, &[]);
    }

    /// [`Cluster::start_vipd_with`] with more environment.
    pub fn start_vipd_env(&mut self, i: usize, t: Duration, extra: &[&str], env: &[(&str, &str)]) {
        let timeout = format!("{}ms", t.as_millis());
        let mut flags = vec!["--session-timeout", timeout.as_str()];
        flags.extend_from_slice(extra);
        self.start_vipd_flags_env(i, &flags, env);
    }

    /// Starts vipd on node `i` with the bench's fixed flags and `extra`
    /// only: no `--session-timeout`, so vipd's default session and lease
    /// apply unless `extra` names them.
    pub fn start_vipd_flags(&mut self, i: usize, extra: &[&str]) {
        self.start_vipd_flags_env(i, extra, &[]);
    }

    /// [`Cluster::start_vipd_flags`] with another ZooKeeper connect string
    /// than the ensemble's own (e.g. a proxy in the node's namespace).
    pub fn start_vipd_via(&mut self, i: usize, zk: &str, extra: &[&str]) {
        self.start_vipd_argv(i, zk.to_string(), extra, &[]);
    }

    /// [`Cluster::start_vipd_flags`] with more environment.
    fn start_vipd_flags_env(&mut self, i: usize, extra: &[&str], env: &[(&str, &str)]) {
        self.start_vipd_argv(i, self.hosts.clone(), extra, env);
    }

    fn start_vipd_argv(&mut self, i: usize, zk: String, extra: &[&str], env: &[(&str, &str)]) {
        let node = &self.nodes[i];
        let socket = node.socket.display().to_string();
        let bin = vipd_bin().display().to_string();
        let argv = [
            bin.as_str(),
            "--zk",
            &zk,
            "--cluster",
            &self.cluster,
            "--node-id",
            &node.id,
            "--api-socket",
            &socket,
            // No --xdp-mode: the default must deliver on veth, the lab's links.
            "--garp-interval",
            "1s",
            "--garp-rounds",
            "2",
        ];
        let argv: Vec<&str> = argv.iter().chain(extra).copied().collect();
        let mut envs = vec![("RUST_LOG", "info,vipd=debug")];
        envs.extend_from_slice(env);
        let p = node.host.spawn_env(argv, &envs);
        self.nodes[i].vipd = Some(p);
    }

    /// Waits until node `i`'s vipd answers on its socket.
    pub fn wait_api(&self, i: usize) {
        let r = wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
            self.try_status(i).is_some()
        });
        if let Err(e) = r {
            panic!(
                "vipd on {} never answered on its socket: {e}",
                self.nodes[i].id
            );
        }
    }

    /// Starts every node's vipd and waits until each answers on its socket.
    pub fn start_all(&mut self) {
        self.start_all_with(SESSION_TIMEOUT, &[]);
    }

    /// [`Cluster::start_all`] with session timeout `t` and `extra` flags.
    pub fn start_all_with(&mut self, t: Duration, extra: &[&str]) {
        for i in 0..self.nodes.len() {
            self.start_vipd_with(i, t, extra);
        }
        self.wait_all_answer();
    }

    /// [`Cluster::start_all`] with vipd's own default session timeout and
    /// lease (no `--session-timeout`) and `extra` flags.
    pub fn start_all_flags(&mut self, extra: &[&str]) {
        for i in 0..self.nodes.len() {
            self.start_vipd_flags(i, extra);
        }
        self.wait_all_answer();
    }

    /// Waits until every node's vipd answers on its socket.
    fn wait_all_answer(&self) {
        for i in 0..self.nodes.len() {
            let r = wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
                self.try_status(i).is_some()
            });
            if let Err(e) = r {
                panic!(
                    "vipd on {} never answered on its socket: {e}",
                    self.nodes[i].id
                );
            }
        }
    }

    /// SIGKILLs node `i`'s vipd and waits for it to be gone.
    pub fn kill_vipd(&mut self, i: usize) {
        let p = self.nodes[i].vipd.take().expect("vipd running");
        assert!(
            p.kill(libc::SIGKILL),
            "vipd on {} already gone",
            self.nodes[i].id
        );
        p.wait_timeout(Duration::from_secs(5))
            .expect("vipd survived SIGKILL");
    }

    /// Sends `signal` to node `i`'s vipd (SIGSTOP, SIGCONT, ...).
    pub fn signal_vipd(&self, i: usize, signal: i32) {
        let p = self.nodes[i].vipd.as_ref().expect("vipd running");
        assert!(
            p.kill(signal),
            "signal {signal} to vipd on {}",
            self.nodes[i].id
        );
    }

    /// `vipctl <args>` in node `i`'s namespace.
    pub fn vipctl_on(&self, i: usize, args: &[&str]) -> Output {
        let bin = vipctl_bin().display().to_string();
        let argv: Vec<&str> = std::iter::once(bin.as_str())
            .chain(args.iter().copied())
            .collect();
        self.nodes[i].host.exec(&argv)
    }

    /// `vipctl vip --zk .. --cluster .. <args>` on the admin host.
    pub fn vip(&self, args: &[&str]) -> Output {
        let bin = vipctl_bin().display().to_string();
        let mut argv = vec![
            bin.as_str(),
            "vip",
            "--zk",
            &self.hosts,
            "--cluster",
            &self.cluster,
        ];
        argv.extend_from_slice(args);
        self.admin.exec(&argv)
    }

    /// Like [`Cluster::vip`], panicking unless it succeeds.
    pub fn vip_ok(&self, args: &[&str]) -> String {
        let out = self.vip(args);
        assert!(
            out.status.success(),
            "vipctl vip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `vipctl status --json` of node `i`, if its vipd answers.
    pub fn try_status(&self, i: usize) -> Option<serde_json::Value> {
        let socket = self.nodes[i].socket.display().to_string();
        let out = self.vipctl_on(i, &["status", "--json", "--api-socket", &socket]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Like [`Cluster::try_status`], panicking with vipctl's stderr.
    pub fn status(&self, i: usize) -> serde_json::Value {
        let socket = self.nodes[i].socket.display().to_string();
        let out = self.vipctl_on(i, &["status", "--json", "--api-socket", &socket]);
        assert!(
            out.status.success(),
            "vipctl status on {}: {}",
            self.nodes[i].id,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "vipctl status --json on {}: {e}: {}",
                self.nodes[i].id,
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Node `i`'s status read as the API's type, if its vipd answers (and
    /// the answer reads as one: a field missing or retyped fails here).
    pub fn try_api_status(&self, i: usize) -> Option<Status> {
        self.try_status(i).map(|v| as_status(&v))
    }

    /// Like [`Cluster::status`], read as the API's type.
    pub fn api_status(&self, i: usize) -> Status {
        as_status(&self.status(i))
    }

    /// The IPv4 addresses of node `i` that are in `vips` (any interface),
    /// read through netlink in-process (cheap enough to poll every 20 ms).
    pub fn held(&self, i: usize, vips: &BTreeSet<Ipv4Addr>) -> BTreeSet<Ipv4Addr> {
        self.readers[i]
            .addrs()
            .into_iter()
            .map(|a| a.addr)
            .filter(|a| vips.contains(a))
            .collect()
    }

    /// What each node holds of `vips`, by node index.
    pub fn holdings(&self, vips: &BTreeSet<Ipv4Addr>) -> Vec<BTreeSet<Ipv4Addr>> {
        (0..self.nodes.len()).map(|i| self.held(i, vips)).collect()
    }

    /// The node that holds all of `vips` while no other node holds any.
    pub fn sole_holder(&self, vips: &BTreeSet<Ipv4Addr>) -> Option<usize> {
        let h = self.holdings(vips);
        let full: Vec<usize> = (0..h.len()).filter(|&i| h[i] == *vips).collect();
        let any = h.iter().filter(|s| !s.is_empty()).count();
        (full.len() == 1 && any == 1).then(|| full[0])
    }

    /// Waits until one node alone holds all of `vips` (optionally not one of
    /// `not`); returns it and how long it took.
    pub fn wait_sole_holder(
        &self,
        vips: &BTreeSet<Ipv4Addr>,
        not: Option<usize>,
        timeout: Duration,
    ) -> Result<(usize, Duration), String> {
        let start = Instant::now();
        loop {
            if let Some(i) = self.sole_holder(vips)
                && Some(i) != not
            {
                return Ok((i, start.elapsed()));
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "no single holder of {vips:?} (excluding {not:?}) after {timeout:?}; holdings {:?}",
                    self.holdings(vips)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The addresses of node `i` (both families) that are in `vips`.
    pub fn held_ips(&self, i: usize, vips: &BTreeSet<IpAddr>) -> BTreeSet<IpAddr> {
        let v4 = self.readers[i]
            .addrs()
            .into_iter()
            .map(|a| IpAddr::V4(a.addr));
        let v6 = self.readers[i]
            .addrs6()
            .into_iter()
            .map(|a| IpAddr::V6(a.addr));
        v4.chain(v6).filter(|a| vips.contains(a)).collect()
    }

    /// The node that holds all of `vips` (both families) while no other
    /// node holds any.
    pub fn sole_holder_ips(&self, vips: &BTreeSet<IpAddr>) -> Option<usize> {
        let h: Vec<BTreeSet<IpAddr>> = (0..self.nodes.len())
            .map(|i| self.held_ips(i, vips))
            .collect();
        let full: Vec<usize> = (0..h.len()).filter(|&i| h[i] == *vips).collect();
        let any = h.iter().filter(|s| !s.is_empty()).count();
        (full.len() == 1 && any == 1).then(|| full[0])
    }

    /// [`Cluster::wait_sole_holder`] for VIPs of both families.
    pub fn wait_sole_holder_ips(
        &self,
        vips: &BTreeSet<IpAddr>,
        not: Option<usize>,
        timeout: Duration,
    ) -> Result<(usize, Duration), String> {
        self.wait_sole_holder_ips_every(vips, not, timeout, Duration::from_millis(10))
    }

    /// [`Cluster::wait_sole_holder_ips`] looking every `every`: a dump of
    /// thousands of addresses on every node costs the shared CPUs the
    /// nodes under test need, so large sets are looked at less often.
    pub fn wait_sole_holder_ips_every(
        &self,
        vips: &BTreeSet<IpAddr>,
        not: Option<usize>,
        timeout: Duration,
        every: Duration,
    ) -> Result<(usize, Duration), String> {
        let start = Instant::now();
        loop {
            if let Some(i) = self.sole_holder_ips(vips)
                && Some(i) != not
            {
                return Ok((i, start.elapsed()));
            }
            if start.elapsed() > timeout {
                let h: Vec<_> = (0..self.nodes.len())
                    .map(|i| self.held_ips(i, vips))
                    .collect();
                return Err(format!(
                    "no single holder of {vips:?} (excluding {not:?}) after {timeout:?}; holdings {h:?}"
                ));
            }
            std::thread::sleep(every);
        }
    }

    /// Node `i`'s IPv6 addresses as netlink reports them (flags, mark).
    pub fn addrs6(&self, i: usize) -> Vec<NlAddr6> {
        self.readers[i].addrs6()
    }

    /// Index of the ZooKeeper server (ensemble member) that has a client
    /// connection from `ip`, found with the `cons` four-letter command.
    pub fn zk_server_of(&self, ip: Ipv4Addr) -> Option<usize> {
        let needle = format!("/{ip}:");
        (0..self.zk_hosts.len()).find(|&i| {
            let addr = self.zk.addr(i);
            self.admin
                .in_netns(|| four_letter(addr, "cons"))
                .is_some_and(|text| text.contains(&needle))
        })
    }
}

impl Cluster {
    /// Samples every `every` for `span` which nodes hold `vip` (IPv4):
    /// one list of node indices per sample.
    pub fn sample_holders(
        &self,
        vip: Ipv4Addr,
        span: Duration,
        every: Duration,
    ) -> Vec<Vec<usize>> {
        let one = BTreeSet::from([vip]);
        let start = Instant::now();
        let mut samples = Vec::new();
        while start.elapsed() < span {
            samples.push(
                (0..self.nodes.len())
                    .filter(|&i| !self.held(i, &one).is_empty())
                    .collect(),
            );
            std::thread::sleep(every);
        }
        samples
    }

    /// Leader terms started so far, by node (`leader_terms` of each
    /// running vipd's status; 0 for one that does not answer).
    pub fn leader_terms(&self) -> Vec<u64> {
        (0..self.nodes.len())
            .map(|i| self.try_api_status(i).map_or(0, |s| s.leader_terms))
            .collect()
    }

    /// The index of the node whose status says it leads, if exactly one.
    pub fn leading_node(&self) -> Option<usize> {
        let leaders: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                self.try_api_status(i)
                    .is_some_and(|s| s.role == Role::Leader)
            })
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }
}

impl Cluster {
    /// Index of the ensemble member in `Mode: leader` (the `srvr` command).
    pub fn zk_quorum_leader(&self) -> Option<usize> {
        (0..self.zk_hosts.len()).find(|&i| {
            let addr = self.zk.addr(i);
            self.admin
                .in_netns(|| four_letter(addr, "srvr"))
                .is_some_and(|text| text.contains("Mode: leader"))
        })
    }

    /// The first election of a cluster serving `vips`: waits up to 15 s
    /// for one holder, then half a second more so the followers settle
    /// into watching (the next in line reads the leader's lease) before a
    /// fault, and checks the holder did not change. Its index.
    pub fn first_leader(&self, hint: &str, vips: &BTreeSet<Ipv4Addr>) -> usize {
        let (leader, took) = self
            .wait_sole_holder(vips, None, Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("[{hint}] first election: {e}"));
        eprintln!(
            "[{hint}] {} holds {vips:?} {:.0} ms after the vipds answered",
            self.nodes[leader].id,
            ms(took)
        );
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            self.sole_holder(vips),
            Some(leader),
            "[{hint}] the first leader changed: {:?}",
            self.holdings(vips)
        );
        leader
    }

    /// Makes ensemble member `server` unreachable from every node (a
    /// blackhole route in each node namespace), so their sessions live on
    /// the other members.
    pub fn hide_server_from_nodes(&self, server: usize) {
        let dst = format!("{}/32", self.zk.addr(server).ip());
        for n in &self.nodes {
            n.host.ip(&["route", "replace", "blackhole", &dst]);
        }
    }
}

/// /32 routes to the ensemble's server addresses (198.51.100.2-4) via their
/// client-side addresses on br2.
fn add_server_routes(host: &Host) {
    let dev = if host.name() == "admin" {
        "eth0"
    } else {
        "eth1"
    };
    for i in 0..3u8 {
        host.ip(&[
            "route",
            "add",
            &format!("198.51.100.{}/32", 2 + i),
            "via",
            &format!("203.0.113.{}", 2 + i),
            "dev",
            dev,
        ]);
    }
}

/// Sends a ZooKeeper four-letter command and reads the answer.
pub fn four_letter(addr: SocketAddr, cmd: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(cmd.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// VIPs of both families as a set.
pub fn ip_set(vips: &[&str]) -> BTreeSet<IpAddr> {
    vips.iter()
        .map(|v| v.parse().unwrap_or_else(|e| panic!("VIP {v}: {e}")))
        .collect()
}

/// The set of VIPs as a set.
pub fn vip_set(vips: &[&str]) -> BTreeSet<Ipv4Addr> {
    vips.iter()
        .map(|v| v.parse().unwrap_or_else(|e| panic!("VIP {v}: {e}")))
        .collect()
}

/// The node id of the leader in a `vipctl status --json` answer.
pub fn leader_of(status: &serde_json::Value) -> Option<String> {
    as_status(status).zookeeper?.leader
}

/// Milliseconds, for reports.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Signed milliseconds from `a` to `b`.
pub fn gap_ms(a: Instant, b: Instant) -> f64 {
    if b >= a { ms(b - a) } else { -ms(a - b) }
}

/// Who held each VIP when, replayed from every node's address events.
pub struct Timeline {
    /// Every stretch during which two nodes held a VIP at once (ms).
    pub overlaps: Vec<(Ipv4Addr, f64)>,
    /// (VIP, from node, to node, ms between the old holder's removal and
    /// the new holder's add).
    pub handovers: Vec<(Ipv4Addr, usize, usize, f64)>,
    /// Longest time with no holder, per VIP (ms), between `since` and `until`.
    pub longest_unheld: BTreeMap<Ipv4Addr, f64>,
}

/// Replays the address events of every node between `since` and `until`,
/// starting from the `initial` holdings (by node index).
pub fn timeline(
    monitors: &[AddrMonitor],
    vips: &BTreeSet<Ipv4Addr>,
    initial: &[BTreeSet<Ipv4Addr>],
    since: Instant,
    until: Instant,
) -> Timeline {
    let mut events: Vec<(Instant, usize, bool, Ipv4Addr)> = Vec::new();
    for (i, m) in monitors.iter().enumerate() {
        for e in m.events() {
            if e.at >= since && e.at <= until && vips.contains(&e.addr.addr) {
                events.push((e.at, i, e.new, e.addr.addr));
            }
        }
    }
    events.sort_by_key(|e| e.0);
    let mut t = Timeline {
        overlaps: Vec::new(),
        handovers: Vec::new(),
        longest_unheld: BTreeMap::new(),
    };
    for &vip in vips {
        let mut holders: BTreeSet<usize> = (0..initial.len())
            .filter(|&i| initial[i].contains(&vip))
            .collect();
        let mut overlap_from: Option<Instant> = None;
        let mut unheld_from: Option<(Instant, Option<usize>)> =
            holders.is_empty().then_some((since, None));
        let mut longest = 0.0f64;
        for &(at, node, new, _) in events.iter().filter(|e| e.3 == vip) {
            if new {
                holders.insert(node);
            } else {
                holders.remove(&node);
            }
            match (holders.len(), overlap_from) {
                (n, None) if n > 1 => overlap_from = Some(at),
                (n, Some(from)) if n <= 1 => {
                    t.overlaps.push((vip, ms(at - from)));
                    overlap_from = None;
                }
                _ => {}
            }
            if holders.is_empty() {
                if unheld_from.is_none() {
                    unheld_from = Some((at, Some(node)));
                }
            } else if let Some((from, last)) = unheld_from.take() {
                longest = longest.max(ms(at - from));
                if let Some(last) = last
                    && last != node
                {
                    t.handovers.push((vip, last, node, ms(at - from)));
                }
            }
        }
        if let Some(from) = overlap_from {
            t.overlaps.push((vip, ms(until - from)));
        }
        if let Some((from, _)) = unheld_from {
            longest = longest.max(ms(until - from));
        }
        t.longest_unheld.insert(vip, longest);
    }
    t
}

/// Replays the events since `since` (from the `initial` holdings) and
/// fails on any overlap, printing the handovers; returns the timeline.
pub fn assert_no_overlap(
    c: &Cluster,
    mons: &[AddrMonitor],
    vips: &BTreeSet<Ipv4Addr>,
    initial: &[BTreeSet<Ipv4Addr>],
    since: Instant,
    what: &str,
) -> Timeline {
    let t = timeline(mons, vips, initial, since, Instant::now());
    eprintln!(
        "[{what}] handovers (vip, from, to, gap ms) {:?}; overlaps {:?}; longest unheld {:?} ms",
        t.handovers, t.overlaps, t.longest_unheld
    );
    assert!(
        t.overlaps.is_empty(),
        "{what}: two holders at once: {:?}; holdings now {:?}",
        t.overlaps,
        c.holdings(vips)
    );
    t
}

/// For each VIP: when `old` removed it and `new` added it (ms after
/// `since`, from the nodes' netlink events), printing the gap and asserting
/// the removal came first.
pub fn handover_times(
    c: &Cluster,
    mons: &[AddrMonitor],
    vips: &BTreeSet<Ipv4Addr>,
    old: usize,
    new: usize,
    since: Instant,
    what: &str,
) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for &vip in vips {
        let del = mons[old]
            .first(false, vip, since)
            .unwrap_or_else(|| panic!("{what}: no RTM_DELADDR of {vip} on {}", c.nodes[old].id));
        let add = mons[new]
            .first(true, vip, since)
            .unwrap_or_else(|| panic!("{what}: no RTM_NEWADDR of {vip} on {}", c.nodes[new].id));
        eprintln!(
            "[{what}] {vip}: {} removed it at +{:.1} ms, {} added it at +{:.1} ms (gap {:.1} ms)",
            c.nodes[old].id,
            ms(del - since),
            c.nodes[new].id,
            ms(add - since),
            gap_ms(del, add)
        );
        assert!(
            del < add,
            "{what} {vip}: added {:.1} ms before it was removed",
            -gap_ms(del, add)
        );
        out.push((ms(del - since), ms(add - since)));
    }
    out
}

pub fn monitors(c: &Cluster) -> Vec<AddrMonitor> {
    c.nodes
        .iter()
        .map(|n| AddrMonitor::start(&n.host))
        .collect()
}

/// Probes the client's TCP service at `vip:port` (each attempt waits at most
/// `attempt`) until a node other than `not` answers (the lab's echo servers
/// send `served-by <host>`); returns that node and when it answered.
pub fn first_served(
    c: &Cluster,
    vip: Ipv4Addr,
    port: u16,
    not: Option<usize>,
    attempt: Duration,
    timeout: Duration,
) -> Result<(usize, Instant), String> {
    let banners: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("served-by {}", n.host.name()))
        .collect();
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        last = c.client.tcp_probe(vip, port, attempt);
        let at = Instant::now();
        if let Some(b) = &last
            && let Some(i) = banners.iter().position(|w| b.contains(w.as_str()))
            && Some(i) != not
        {
            return Ok((i, at));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(format!(
        "no node but {not:?} served {vip}:{port} within {timeout:?}; last answer {last:?}"
    ))
}

/// Runs `f` until it returns true or `timeout`; the elapsed time or an error.
pub fn within(timeout: Duration, f: impl FnMut() -> bool) -> Result<Duration, String> {
    wait_until(timeout, Duration::from_millis(10), f)
}
