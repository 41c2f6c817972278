//! The chaos checker's observer on a real lab: node namespaces on one
//! bridge, a client probing them with raw ARP/NDP and TCP SYN frames to
//! each node's MAC, the nodes' address events, and the client's own
//! connections. VIPs are added and removed by hand (`ip addr`) so the test
//! knows the truth; the last case runs a real vipd cluster so the answers
//! of its XDP program are seen too.
//!
//! Timings are drawn from a seed printed with every run
//! (`PROBE_SEED=<n>` replays it).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use vipd_tests::{
    cluster::{Cluster, ZkKind, ms, vip_set},
    draw::Draw,
    lab::{Host, HostIf, Lab, LabProcess, wait_until},
    probe::{
        Evidence, Observations, Observer, Options, Overlap, ProbeKind, Service, Target,
        address_overlaps, client_failures, serving_overlaps, unserved, unserved_by,
    },
};

/// The port the nodes' banner servers listen on (the client's connections).
const PORT: u16 = 8080;
/// The port of the nodes' web servers.
const HTTP_PORT: u16 = 8081;
/// Probe round interval of these tests.
const EVERY: Duration = Duration::from_millis(20);
/// Slack on top of the probe resolution for the address monitors' and the
/// `ip` commands' own delays on a loaded machine.
const SLACK: Duration = Duration::from_millis(60);
/// How long one of the client's connections may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// One lab at a time: these tests time stretches of a few hundred ms.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Three nodes n1..n3 and a client on br0, both families (no DAD).
fn lab(hint: &str) -> (Lab, Vec<Host>, Host) {
    let lab = Lab::new(hint);
    let nodes: Vec<Host> = (1..=3)
        .map(|i| {
            let h = lab.add_host(
                &format!("n{i}"),
                &[HostIf::on(0, &format!("192.0.2.{}/24", 10 + i))],
            );
            h.add_addr6("eth0", &format!("2001:db8:0:1::{}/64", 10 + i));
            h
        })
        .collect();
    let client = lab.add_host("client", &[HostIf::on(0, "192.0.2.50/24")]);
    client.add_addr6("eth0", "2001:db8:0:1::50/64");
    (lab, nodes, client)
}

/// A web server on `host`'s every address whose page names the host (as
/// the lab's console does), up before this returns.
fn console(lab: &Lab, host: &Host) -> LabProcess {
    let root = lab.dir().join(format!("www-{}", host.name()));
    std::fs::create_dir_all(&root).expect("creating the web root");
    std::fs::write(
        root.join("index.html"),
        format!("served-by {}\n", host.name()),
    )
    .expect("writing the page");
    let root = root.display().to_string();
    let port = HTTP_PORT.to_string();
    let p = host.spawn(["busybox", "httpd", "-f", "-p", &port, "-h", &root]);
    let up = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        host.in_netns(|| {
            std::net::TcpStream::connect_timeout(
                &(Ipv4Addr::LOCALHOST, HTTP_PORT).into(),
                Duration::from_millis(200),
            )
            .is_ok()
        })
    });
    assert!(
        up.is_ok() && p.is_running(),
        "busybox httpd on {}: {}",
        host.name(),
        p.stderr()
    );
    p
}

fn targets(nodes: &[Host]) -> Vec<Target> {
    nodes.iter().map(|h| Target::new(h, "eth0")).collect()
}

fn host_prefix(vip: IpAddr) -> String {
    match vip {
        IpAddr::V4(v) => format!("{v}/32"),
        IpAddr::V6(v) => format!("{v}/128"),
    }
}

fn add_vip(h: &Host, vip: IpAddr) {
    match vip {
        IpAddr::V4(_) => h.add_addr("eth0", &host_prefix(vip)),
        IpAddr::V6(_) => h.add_addr6("eth0", &host_prefix(vip)),
    }
}

fn del_vip(h: &Host, vip: IpAddr) {
    h.del_addr("eth0", &host_prefix(vip));
}

/// The longest time between two consecutive probe rounds: the resolution
/// every interval measured from probes has at each end.
fn resolution(o: &Observations) -> Duration {
    o.rounds
        .windows(2)
        .map(|w| w[1].sent - w[0].sent)
        .max()
        .unwrap_or(o.every)
}

/// `a` and `b` within `tol` of each other.
fn near(a: Instant, b: Instant, tol: Duration) -> bool {
    a.max(b) - a.min(b) <= tol
}

/// When node `node` added (`added`) or removed `vip`, from its address events.
fn change_at(o: &Observations, node: usize, vip: IpAddr, added: bool, after: Instant) -> Instant {
    o.addr_changes
        .iter()
        .find(|c| c.node == node && c.vip == vip && c.added == added && c.at >= after)
        .unwrap_or_else(|| {
            panic!(
                "no address event {} {vip} on {} after the step: {:?}",
                if added { "adding" } else { "removing" },
                o.targets[node],
                o.addr_changes
            )
        })
        .at
}

fn show(what: &str, overlaps: &[Overlap], since: Instant) -> String {
    let rows: Vec<String> = overlaps
        .iter()
        .map(|v| {
            format!(
                "{} {}+{} {:?} +{:.0}..+{:.0} ms ({:.0} ms, {} rounds)",
                v.vip,
                v.nodes.0,
                v.nodes.1,
                v.how,
                ms(v.from - since),
                ms(v.to - since),
                ms(v.duration()),
                v.rounds
            )
        })
        .collect();
    format!("{what}: [{}]", rows.join("; "))
}

/// A sole holder serves alone; a second holder added by hand is an overlap
/// with both names and about the time both had it (by both probe kinds and
/// by the address events); the VIP gone from both is an unserved stretch
/// of about the time nobody had it, which the client's connections feel.
fn holder_overlap_and_gap(vip: IpAddr, hint: &str) {
    let _serial = serial();
    let mut d = Draw::from_env(hint, "PROBE_SEED");
    let (_lab, nodes, client) = lab(hint);
    let a = 0;
    let b = 1 + d.index(2);
    let other = 3 - b;
    let _servers: Vec<_> = nodes.iter().map(|h| h.tcp_echo_server(vip, PORT)).collect();
    add_vip(&nodes[a], vip);

    let opts = Options {
        every: EVERY,
        service: Some(Service::Connect(PORT)),
        connect_every: Duration::from_millis(50),
        connect_timeout: CONNECT_TIMEOUT,
        ..Options::default()
    };
    let observer = Observer::start(&client, "eth0", targets(&nodes), vec![vip], opts);
    let (alone, both, again, nobody) = (
        d.millis(300, 700),
        d.millis(200, 800),
        d.millis(200, 400),
        d.millis(400, 900),
    );
    eprintln!(
        "[{hint}] {vip}: n{} alone {alone:?}, with n{} {both:?}, alone {again:?}, nobody {nobody:?}",
        a + 1,
        b + 1
    );
    let t0 = Instant::now();
    std::thread::sleep(alone);
    add_vip(&nodes[b], vip);
    std::thread::sleep(both);
    del_vip(&nodes[b], vip);
    std::thread::sleep(again);
    del_vip(&nodes[a], vip);
    std::thread::sleep(nobody);
    add_vip(&nodes[a], vip);
    std::thread::sleep(Duration::from_millis(500));
    let o = observer.stop();

    let res = resolution(&o);
    let tol = res + SLACK;
    let b_add = change_at(&o, b, vip, true, t0);
    let b_del = change_at(&o, b, vip, false, b_add);
    let a_del = change_at(&o, a, vip, false, b_del);
    let a_add = change_at(&o, a, vip, true, a_del);
    let since = o.started;
    let addr = address_overlaps(&o);
    let serving = serving_overlaps(&o);
    eprintln!(
        "[{hint}] {} rounds, {} answers, {} stray, resolution {:.1} ms; b +{:.0}..+{:.0} ms, \
         nobody +{:.0}..+{:.0} ms",
        o.rounds.len(),
        o.answers.len(),
        o.stray,
        ms(res),
        ms(b_add - since),
        ms(b_del - since),
        ms(a_del - since),
        ms(a_add - since)
    );
    eprintln!("[{hint}] {}", show("address overlaps", &addr, since));
    eprintln!("[{hint}] {}", show("serving overlaps", &serving, since));

    assert_eq!(o.initial, vec![(a, vip)], "[{hint}] present at the start");
    let pair = (o.targets[a].clone(), o.targets[b].clone());
    // The address events: one overlap, exactly while both had it.
    assert_eq!(
        addr.len(),
        1,
        "[{hint}] {}",
        show("address overlaps", &addr, since)
    );
    assert_eq!(addr[0].nodes, pair, "[{hint}] address overlap names");
    assert_eq!(addr[0].how, Evidence::Address);
    assert_eq!((addr[0].from, addr[0].to), (b_add, b_del));

    // The probes: both kinds saw both nodes answer, from about when b
    // added it to about when b removed it, and nowhere else.
    for kind in [ProbeKind::Neighbour, ProbeKind::Tcp] {
        let seen: Vec<&Overlap> = serving
            .iter()
            .filter(|v| v.how == Evidence::Probe(kind))
            .collect();
        assert!(
            !seen.is_empty(),
            "[{hint}] no {kind:?} overlap reported; {}",
            show("serving overlaps", &serving, since)
        );
        for v in &seen {
            assert_eq!(v.vip, vip);
            assert_eq!(v.nodes, pair, "[{hint}] {kind:?} overlap names");
        }
        let from = seen.iter().map(|v| v.from).min().unwrap();
        let to = seen.iter().map(|v| v.to).max().unwrap();
        assert!(
            near(from, b_add, tol) && near(to, b_del, tol),
            "[{hint}] {kind:?} overlap +{:.0}..+{:.0} ms, both had it +{:.0}..+{:.0} ms \
             (tolerance {:.0} ms)",
            ms(from - since),
            ms(to - since),
            ms(b_add - since),
            ms(b_del - since),
            ms(tol)
        );
    }
    assert!(
        o.answers.iter().all(|x| x.node != other),
        "[{hint}] {} answered for {vip}, which it never had",
        o.targets[other]
    );

    // Nobody: one unserved stretch by each kind, about when nobody had it.
    for kind in [ProbeKind::Neighbour, ProbeKind::Tcp] {
        let gaps = unserved_by(&o, vip, kind, o.started, o.stopped);
        let shown: Vec<(f64, f64)> = gaps
            .iter()
            .map(|&(f, t)| (ms(f - since), ms(t - since)))
            .collect();
        assert!(
            gaps.len() == 1 && near(gaps[0].0, a_del, tol) && near(gaps[0].1, a_add, tol),
            "[{hint}] {kind:?} unserved {shown:?} ms; nobody had it +{:.0}..+{:.0} ms \
             (tolerance {:.0} ms)",
            ms(a_del - since),
            ms(a_add - since),
            ms(tol)
        );
    }
    assert_eq!(
        unserved(&o, vip, o.started, o.stopped),
        unserved_by(&o, vip, ProbeKind::Tcp, o.started, o.stopped)
    );

    // The client: served by a before the gap, failing in it, and only there.
    let ok_before: Vec<_> = o
        .connections
        .iter()
        .filter(|c| c.at < b_add)
        .map(|c| c.outcome.clone())
        .collect();
    assert!(
        !ok_before.is_empty()
            && ok_before.iter().all(|r| r
                .as_ref()
                .is_ok_and(|n| n.as_deref() == Some(o.targets[a].as_str()))),
        "[{hint}] the client's connections while {} alone held it: {ok_before:?}",
        o.targets[a]
    );
    // While both had it, a SYN probe to b made b resolve the client from
    // the VIP, which moves the client's own entry to b: from then on the
    // client may fail wherever b is not serving. Before b, it never fails;
    // while nobody has the VIP, it does.
    let failures = client_failures(&o, vip, o.started, o.stopped);
    let shown: Vec<(f64, f64)> = failures
        .iter()
        .map(|&(f, t)| (ms(f - since), ms(t - since)))
        .collect();
    eprintln!("[{hint}] client failures {shown:?} ms");
    assert!(
        failures.iter().all(|&(f, _)| f >= b_add)
            && failures.iter().any(|&(f, t)| f < a_add && t > a_del),
        "[{hint}] client failures {shown:?} ms; b had it from +{:.0} ms, nobody +{:.0}..+{:.0} ms",
        ms(b_add - since),
        ms(a_del - since),
        ms(a_add - since)
    );
}

#[test]
fn holder_overlap_and_gap_ipv4() {
    holder_overlap_and_gap(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100)), "probe-v4");
}

#[test]
fn holder_overlap_and_gap_ipv6() {
    holder_overlap_and_gap("2001:db8:0:1::100".parse().unwrap(), "probe-v6");
}

/// Several VIPs of both families on drawn holders (or on none): each
/// answered in every round by its holder alone, by both kinds; a VIP
/// nobody has is unserved throughout; no overlap.
#[test]
fn each_vip_is_answered_by_its_holder_alone() {
    let _serial = serial();
    let hint = "probe-many";
    let mut d = Draw::from_env(hint, "PROBE_SEED");
    let (lab, nodes, client) = lab(hint);
    let vips: Vec<IpAddr> = [
        "192.0.2.100",
        "192.0.2.101",
        "2001:db8:0:1::100",
        "2001:db8:0:1::101",
    ]
    .iter()
    .map(|v| v.parse().unwrap())
    .collect();
    // Index 3: nobody.
    let holder: Vec<usize> = vips.iter().map(|_| d.index(4)).collect();
    eprintln!("[{hint}] holders (3 = nobody): {holder:?}");
    for (vip, &h) in vips.iter().zip(&holder) {
        if h < 3 {
            add_vip(&nodes[h], *vip);
        }
    }
    let _consoles: Vec<LabProcess> = nodes.iter().map(|h| console(&lab, h)).collect();
    let opts = Options {
        every: EVERY,
        service: Some(Service::HttpGet(HTTP_PORT)),
        connect_every: Duration::from_millis(100),
        connect_timeout: CONNECT_TIMEOUT,
        ..Options::default()
    };
    let observer = Observer::start(&client, "eth0", targets(&nodes), vips.clone(), opts);
    std::thread::sleep(d.millis(500, 1000));
    let o = observer.stop();
    let since = o.started;
    eprintln!(
        "[{hint}] {} rounds, {} answers, {} stray",
        o.rounds.len(),
        o.answers.len(),
        o.stray
    );
    assert!(
        o.rounds.len() >= 10,
        "[{hint}] only {} rounds",
        o.rounds.len()
    );
    assert!(
        o.rounds.iter().all(|r| r.unsent == 0),
        "[{hint}] unsent probes"
    );
    let want: BTreeSet<(usize, IpAddr)> = vips
        .iter()
        .zip(&holder)
        .filter(|(_, h)| **h < 3)
        .map(|(v, h)| (*h, *v))
        .collect();
    assert_eq!(
        o.initial.iter().copied().collect::<BTreeSet<_>>(),
        want,
        "[{hint}] present at the start"
    );
    assert!(serving_overlaps(&o).is_empty(), "[{hint}] serving overlaps");
    assert!(address_overlaps(&o).is_empty(), "[{hint}] address overlaps");
    for (vip, &h) in vips.iter().zip(&holder) {
        // The client's page loads: each from the holder, none where nobody is.
        let outcomes: Vec<_> = o
            .connections
            .iter()
            .filter(|c| c.vip == *vip)
            .map(|c| c.outcome.clone())
            .collect();
        let fine = if h < 3 {
            let name = o.targets[h].as_str();
            outcomes
                .iter()
                .all(|r| r.as_ref().is_ok_and(|n| n.as_deref() == Some(name)))
        } else {
            outcomes.iter().all(Result::is_err)
        };
        assert!(
            !outcomes.is_empty() && fine,
            "[{hint}] {vip} (holder {h}): the client's page loads {outcomes:?}"
        );
        for kind in [ProbeKind::Neighbour, ProbeKind::Tcp] {
            let wrong: Vec<_> = o
                .answers
                .iter()
                .filter(|x| x.vip == *vip && x.kind == kind && x.node != h)
                .collect();
            assert!(wrong.is_empty(), "[{hint}] {vip} {kind:?}: {wrong:?}");
            let gaps = unserved_by(&o, *vip, kind, o.started, o.stopped);
            let shown: Vec<(f64, f64)> = gaps
                .iter()
                .map(|&(f, t)| (ms(f - since), ms(t - since)))
                .collect();
            if h < 3 {
                assert!(
                    gaps.is_empty(),
                    "[{hint}] {vip} {kind:?} on {}: unserved {shown:?} ms",
                    o.targets[h]
                );
            } else {
                assert!(
                    gaps.len() == 1
                        && gaps[0].0 == o.rounds[0].sent
                        && gaps[0].1 >= o.rounds.last().unwrap().sent,
                    "[{hint}] {vip} {kind:?} on nobody: unserved {shown:?} ms of \
                     +0..+{:.0}",
                    ms(o.stopped - since)
                );
            }
        }
    }
}

/// A real vipd cluster: the holder answers every neighbour probe (its XDP
/// program does: its reply counter grows by at least the probes sent) and
/// every SYN, the other node none; no overlap of any kind.
#[test]
fn a_vipd_holder_answers_through_xdp() {
    let _serial = serial();
    let hint = "probe-vipd";
    let mut c = Cluster::new(hint, ZkKind::Standalone, 2);
    c.vip_ok(&["set", "web", "192.0.2.100"]);
    c.start_all();
    let vips = vip_set(&["192.0.2.100"]);
    let holder = c.first_leader(hint, &vips);
    let vip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100));
    let replies = |i: usize| -> u64 {
        let socket = c.nodes[i].socket.display().to_string();
        let out = c.vipctl_on(i, &["arp", "stats", "--json", "--api-socket", &socket]);
        assert!(out.status.success(), "arp stats: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("arp stats JSON");
        v["vips"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["vip"] == "192.0.2.100")
            .and_then(|r| r["xdp_replies"].as_u64())
            .unwrap_or_else(|| panic!("no xdp_replies for {vip}: {v}"))
    };
    let before = replies(holder);
    let tg: Vec<Target> = c
        .nodes
        .iter()
        .map(|n| Target::new(&n.host, "eth0"))
        .collect();
    let opts = Options {
        every: EVERY,
        ..Options::default()
    };
    let observer = Observer::start(&c.client, "eth0", tg, vec![vip], opts);
    std::thread::sleep(Duration::from_millis(800));
    let o = observer.stop();
    let after = replies(holder);
    let probes = o.rounds.len() as u64;
    eprintln!(
        "[{hint}] {} holds {vip}; {probes} rounds, {} answers, {} stray; XDP replies +{}",
        c.nodes[holder].id,
        o.answers.len(),
        o.stray,
        after - before
    );
    assert_eq!(
        o.initial,
        vec![(holder, vip)],
        "[{hint}] present at the start"
    );
    assert!(serving_overlaps(&o).is_empty(), "[{hint}] serving overlaps");
    assert!(address_overlaps(&o).is_empty(), "[{hint}] address overlaps");
    for kind in [ProbeKind::Neighbour, ProbeKind::Tcp] {
        let gaps = unserved_by(&o, vip, kind, o.started, o.stopped);
        assert!(gaps.is_empty(), "[{hint}] {kind:?} unserved: {gaps:?}");
    }
    assert!(
        o.answers.iter().all(|x| x.node == holder),
        "[{hint}] answers from a node that does not hold {vip}"
    );
    assert!(
        after - before >= probes,
        "[{hint}] the holder's XDP answered {} of {probes} ARP probes",
        after - before
    );
}
