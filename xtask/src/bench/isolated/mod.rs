//! The responder on a CPU of its own (the second half of `bench arp`): a
//! veth pair straight between client c1 and node n1, no bridge. n1's end
//! gets a NAPI context and a threaded NAPI kthread pinned to CPU 1; the
//! sender, the counting socket, c1's NAPI thread and every vipd run on
//! CPU 0. Then that one kthread does n1's work for a request (the XDP
//! program or the kernel's ARP/NDP code, and handing the reply to c1's
//! ring; what the kernel defers to softirq there runs in ksoftirqd and is
//! reported apart), and its scheduler run time, against a baseline where
//! nobody answers, shows what answering costs.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv6Addr},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use vipd_tests::lab::{Host, Lab, LabProcess, icmpv6_checksum};

use super::flood::{
    self, Ask, CLIENT_IP, Flood, Pace, VIP, kernel_threads, median, pin_process, pin_thread,
};
use super::responder;

mod kernel;
mod report;

use kernel::{
    cpus_allowed, delta, enable_bpf_stats, last_cpu, link_stats, parse_counters, prog_stats,
    renice, threaded_napi, timeslices, xdp_prog_id,
};
use report::report;

/// The sender, the counting socket, c1's NAPI thread and vipd run here.
const SENDER_CPU: usize = 0;
/// n1's NAPI thread, alone of this rig's threads, runs here.
const RESPONDER_CPU: usize = 1;
/// At most this many runs, whatever `--runs` says.
const MAX_RUNS: usize = 5;
/// How long one flood lasts.
const FLOOD_FOR: Duration = Duration::from_secs(1);
/// The load: from the sender's CPU, at a fixed rate every case can
/// answer, in bursts well below a veth ring's 256 frames. A thread's cost
/// per frame depends on its load (how often it sleeps and wakes, how full
/// the rings it shares with the other CPU are): a flood, which a cheaper
/// case answers at a higher rate while c1's thread takes CPU 0 from the
/// sender, compares different loads. At one rate every case handles the
/// same load, and no answer waits in a full ring, where vipd would take
/// it for lost and fall back to generic.
const PACE: Pace = Pace {
    duration: FLOOD_FOR,
    cpu: Some(SENDER_CPU),
    batch: 64,
    rate: Some(150_000),
};
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x50);
const ETH_P_IPV6: u16 = 0x86dd;
const NS_TYPE: u8 = 135;
const NA_TYPE: u8 = 136;

/// Which neighbour protocol a flood asks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Arp,
    Ndp,
}

impl Family {
    const ALL: [Family; 2] = [Family::Arp, Family::Ndp];

    fn name(self) -> &'static str {
        match self {
            Family::Arp => "ARP requests",
            Family::Ndp => "Neighbor Solicitations",
        }
    }

    fn vip(self) -> IpAddr {
        match self {
            Family::Arp => VIP.into(),
            Family::Ndp => VIP6.into(),
        }
    }

    fn ask(self, mac: [u8; 6]) -> Ask {
        match self {
            Family::Arp => flood::arp_ask(mac),
            Family::Ndp => Ask {
                frame: solicitation(mac, CLIENT6, VIP6),
                reply_proto: ETH_P_IPV6,
                is_reply: is_advert_of_vip,
            },
        }
    }
}

/// One configuration of n1 during a flood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// vipd holding no VIP, its program attached natively: every request
    /// passes to the kernel, which answers none (not its address).
    Baseline,
    /// vipd holding the VIP, native mode: the program answers (XDP_TX).
    Native,
    /// vipd holding the VIP with `--xdp-responder false`: the same program
    /// attached natively passes every request, the kernel answers.
    Kernel,
    /// As `Baseline`, the program attached in generic mode.
    GenericBaseline,
    /// vipd holding the VIP, generic mode: the program answers on the skb.
    Generic,
}

/// Who answers in a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answerer {
    Nobody,
    Program,
    Kernel,
}

impl Case {
    const ALL: [Case; 5] = [
        Case::Baseline,
        Case::Native,
        Case::Kernel,
        Case::GenericBaseline,
        Case::Generic,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::Baseline => "no responder, program native, passing (baseline)",
            Case::Native => "XDP (native)",
            Case::Kernel => "kernel, program native, passing",
            Case::GenericBaseline => "no responder, program generic, passing (baseline)",
            Case::Generic => "XDP (generic)",
        }
    }

    fn mode(self) -> &'static str {
        match self {
            Case::Baseline | Case::Native | Case::Kernel => "native",
            Case::GenericBaseline | Case::Generic => "generic",
        }
    }

    fn answerer(self) -> Answerer {
        match self {
            Case::Baseline | Case::GenericBaseline => Answerer::Nobody,
            Case::Native | Case::Generic => Answerer::Program,
            Case::Kernel => Answerer::Kernel,
        }
    }

    /// The case whose per-frame cost this one's marginal cost is above:
    /// the same program in the same mode, passing everything.
    fn baseline(self) -> Case {
        match self.mode() {
            "native" => Case::Baseline,
            _ => Case::GenericBaseline,
        }
    }

    fn vipd_args(self, family: Family, sock: &Path) -> Vec<String> {
        let vips = match self.answerer() {
            Answerer::Nobody => String::new(),
            _ => family.vip().to_string(),
        };
        let mut args: Vec<String> = [
            "--config",
            "/dev/null",
            "--static-vips",
            &vips,
            "--api-socket",
            &sock.display().to_string(),
            // No R8 rounds: their announcements would fall into the floods.
            "--garp-rounds",
            "0",
            // A VIP picks its interface itself; without one, name it.
            "--xdp-interface",
            "eth0",
            "--xdp-mode",
            self.mode(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if self == Case::Kernel {
            args.extend(["--xdp-responder".to_string(), "false".to_string()]);
        }
        args
    }
}

/// Counters of the rig at one moment, by name (`n1.link.tx_dropped`,
/// `n1.veth.rx_queue_0_xdp_tx`, `n1.prog.run_cnt`, ...); subtract two
/// readings with [`delta`].
type Counters = BTreeMap<String, u64>;

/// One flood of one case: what the threads spent, and every counter's change.
struct Sample {
    flood: Flood,
    /// Run time of n1's NAPI thread (ns).
    responder_ns: u64,
    /// Run time of c1's NAPI thread (ns).
    client_napi_ns: u64,
    /// Run time of ksoftirqd on the sender's and the responder's CPU (ns).
    softirqd_ns: [u64; 2],
    /// The CPU n1's NAPI thread last ran on, after the flood.
    responder_last_cpu: Option<usize>,
    d: Counters,
    /// vipd fell back to generic after the flood's last answer.
    note: Option<String>,
}

impl Sample {
    fn get(&self, key: &str) -> u64 {
        self.d.get(key).copied().unwrap_or(0)
    }

    /// Frames n1's program ran on (its run count; bpf stats are on).
    fn seen(&self) -> u64 {
        self.get("n1.prog.run_cnt")
    }

    /// Sends that n1's full receive ring refused: veth drops the frame,
    /// counts it as c1's transmit drop and the sender sees ENOBUFS and
    /// sends again, so these are not lost requests (the flood's `refused`
    /// must equal this).
    fn refused_at_n1(&self) -> u64 {
        self.get("c1.link.tx_dropped")
    }

    /// Answers n1 built: the program's own count, or the kernel's replies,
    /// every frame n1's eth0 transmitted or dropped on transmit (nothing
    /// else is sent during a flood; the kernel's NDP counter
    /// Icmp6OutNeighborAdvertisements counts only the delivered ones).
    fn answers(&self, case: Case) -> u64 {
        match case.answerer() {
            Answerer::Nobody => 0,
            Answerer::Program => self.get("n1.vip.xdp_replies"),
            Answerer::Kernel => self.get("n1.link.tx_packets") + self.get("n1.link.tx_dropped"),
        }
    }

    /// The share of the flood n1's thread was running.
    fn responder_busy(&self) -> f64 {
        self.responder_ns as f64 / self.flood.elapsed.as_nanos().max(1) as f64
    }

    /// Answers lost on the way to c1: c1's receive ring was full (native
    /// XDP_TX: n1's `xdp_tx_errors`; an skb: n1's transmit drops).
    fn lost_before_c1(&self, case: Case) -> u64 {
        match (case.answerer(), case.mode()) {
            (Answerer::Program, "native") => self.get("n1.veth.rx_queue_0_xdp_tx_errors"),
            _ => self.get("n1.link.tx_dropped"),
        }
    }
}

/// The rig: two hosts of a lab joined by one veth pair, threads pinned.
struct Rig<'a> {
    lab: Lab,
    c1: Host,
    n1: Host,
    c1_mac: [u8; 6],
    vipd: &'a Path,
    vipctl: &'a Path,
    sock: PathBuf,
    /// n1's and c1's NAPI threads: (pid, name).
    responder_napi: (u32, String),
    client_napi: (u32, String),
    /// ksoftirqd on SENDER_CPU and RESPONDER_CPU.
    softirqd: [u32; 2],
    peer_pass: LabProcess,
    /// Keeps the kernel's BPF run-time statistics on while the rig lives.
    _bpf_stats: OwnedFd,
}

pub(super) fn run(vipd: &Path, vipctl: &Path, runs: usize) -> Result<String> {
    // Exact counters over 150,000 frames a flood: more runs than this only
    // lengthen `bench arp` (ten cases a run).
    let runs = runs.clamp(1, MAX_RUNS);
    let rig = Rig::build(vipd, vipctl)?;
    // Warm up the path (neighbour entries) once.
    let warm = Pace {
        duration: Duration::from_millis(200),
        ..PACE
    };
    flood::flood(&rig.c1, "eth0", &Family::Arp.ask(rig.c1_mac), warm, &[])?;
    let mut samples: Vec<(Family, Case, Vec<Sample>)> = Family::ALL
        .iter()
        .flat_map(|f| Case::ALL.iter().map(|c| (*f, *c, Vec::new())))
        .collect();
    // Cases take turns run by run, so load from other jobs spreads over all.
    for run in 1..=runs {
        for (family, case, list) in &mut samples {
            eprintln!(
                "arp bench (isolated): run {run}/{runs}: {}: {}",
                family.name(),
                case.name()
            );
            list.push(rig.measure(*family, *case)?);
        }
    }
    let (responder, client) = (rig.responder_napi.clone(), rig.client_napi.clone());
    rig.finish()?;
    Ok(report(runs, &samples, &responder, &client))
}

impl<'a> Rig<'a> {
    fn build(vipd: &'a Path, vipctl: &'a Path) -> Result<Rig<'a>> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus < 2 {
            bail!(
                "the isolated ARP rig needs 2 CPUs (one for the responder), this machine has {cpus}"
            );
        }
        let bpf_stats = enable_bpf_stats()?;
        let lab = Lab::new("bench_arp_iso");
        let c1 = lab.add_host("c1", &[]);
        let n1 = lab.add_host("n1", &[]);
        // One veth pair straight between the two hosts: no bridge, so n1's
        // end is the only receive path of a request.
        c1.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            n1.netns(),
        ]);
        for (host, v4, v6) in [
            (&c1, format!("{CLIENT_IP}/24"), format!("{CLIENT6}/64")),
            (
                &n1,
                "192.0.2.11/24".to_string(),
                "2001:db8::11/64".to_string(),
            ),
        ] {
            host.add_addr("eth0", &v4);
            host.add_addr6("eth0", &v6);
            // TSO and GSO off: with them on, veth hands these frames to
            // the peer's backlog on the sender's CPU, not to its NAPI.
            // GRO on gives the veth a NAPI context also without a native
            // XDP program (the kernel and generic cases).
            host.exec_ok(&[
                "ethtool", "-K", "eth0", "tso", "off", "gso", "off", "gro", "on",
            ]);
            host.ip(&["link", "set", "eth0", "up"]);
        }
        let responder_napi = threaded_napi(&n1)?;
        let client_napi = threaded_napi(&c1)?;
        pin_thread(responder_napi.0, RESPONDER_CPU)?;
        pin_thread(client_napi.0, SENDER_CPU)?;
        // Ahead of other jobs on the machine (their run time is exact
        // either way): requests never wait for n1's thread, answers never
        // for c1's.
        renice(responder_napi.0, -20)?;
        renice(client_napi.0, -20)?;

        for (pid, name, cpu) in [
            (responder_napi.0, &responder_napi.1, RESPONDER_CPU),
            (client_napi.0, &client_napi.1, SENDER_CPU),
        ] {
            let allowed = cpus_allowed(pid);
            if allowed.as_deref() != Some(cpu.to_string().as_str()) {
                bail!("{name} (pid {pid}) was pinned to CPU {cpu}, yet may run on {allowed:?}");
            }
        }
        let softirqd = |cpu: usize| -> Result<u32> {
            kernel_threads(&format!("ksoftirqd/{cpu}"))
                .into_iter()
                .find(|(_, n)| *n == format!("ksoftirqd/{cpu}"))
                .map(|(p, _)| p)
                .with_context(|| format!("no ksoftirqd/{cpu}"))
        };
        let softirqd = [softirqd(SENDER_CPU)?, softirqd(RESPONDER_CPU)?];

        // Native XDP_TX on a veth reaches the other end only when that end
        // runs an XDP program (docs/DESIGN.md, facts): a vipd holding no
        // VIP passes every frame on c1's end, in every case alike.
        let peer_sock = lab.dir().join("c1.sock");
        let peer_pass = responder::start_pass(&c1, vipd, vipctl, "eth0", &peer_sock)?;
        pin_process(peer_pass.pid(), SENDER_CPU)?;
        let c1_mac = c1.mac_bytes("eth0");
        let sock = lab.dir().join("n1.sock");
        Ok(Rig {
            lab,
            c1,
            n1,
            c1_mac,
            vipd,
            vipctl,
            sock,
            responder_napi,
            client_napi,
            softirqd,
            peer_pass,
            _bpf_stats: bpf_stats,
        })
    }

    /// One flood of `family` with n1 set up as `case`.
    fn measure(&self, family: Family, case: Case) -> Result<Sample> {
        let label = format!("{} ({})", case.name(), family.name());
        let vip = (case.answerer() != Answerer::Nobody).then(|| family.vip());
        let proc = responder::start_vipd(
            &self.n1,
            self.vipd,
            self.vipctl,
            &self.sock,
            &case.vipd_args(family, &self.sock),
            "eth0",
            vip,
            Some(case.mode()),
        )?;
        // vipd's own threads stay off the responder's CPU.
        pin_process(proc.pid(), SENDER_CPU)?;
        let prog = xdp_prog_id(&self.n1)?;
        for (pid, name) in [&self.responder_napi, &self.client_napi] {
            let now = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if now.trim_end() != name {
                bail!(
                    "{label}: NAPI thread {name} (pid {pid}) is gone: the veth's NAPI was rebuilt"
                );
            }
        }
        let before = self.counters(prog, vip)?;
        let watch = [
            self.responder_napi.0,
            self.client_napi.0,
            self.softirqd[0],
            self.softirqd[1],
        ];
        let flood = flood::flood(&self.c1, "eth0", &family.ask(self.c1_mac), PACE, &watch)?;
        let after = self.counters(prog, vip)?;
        let d = delta(&before, &after);
        let mut note = None;
        if case.mode() == "native" {
            let get = |k: &str| d.get(k).copied().unwrap_or(0);
            let tx = get("n1.veth.rx_queue_0_xdp_tx") + get("n1.veth.rx_queue_0_xdp_tx_errors");
            let answered = if case.answerer() == Answerer::Program {
                get("n1.vip.xdp_replies")
            } else {
                0
            };
            note = responder::native_throughout(
                self.vipctl,
                &self.sock,
                "eth0",
                &label,
                tx,
                answered,
            )?;
            if let Some(n) = &note {
                eprintln!("  {n}");
            }
        } else {
            responder::stayed_attached(self.vipctl, &self.sock, "eth0", case.mode(), &label)?;
        }
        if !proc.is_running() {
            bail!("{label}: vipd died during the flood:\n{}", proc.stderr());
        }
        proc.terminate(Duration::from_secs(10));
        let sample = Sample {
            responder_ns: flood.watched_ns[0],
            client_napi_ns: flood.watched_ns[1],
            softirqd_ns: [flood.watched_ns[2], flood.watched_ns[3]],
            responder_last_cpu: last_cpu(self.responder_napi.0),
            d,
            note,
            flood,
        };
        let f = &sample.flood;
        eprintln!(
            "  sent {} ({} ENOBUFS, n1's ring refused {}), n1 saw {}, answered {}, lost before c1 {}, \
             c1 got {} (socket drops {}); n1 NAPI {} ns/frame on CPU {:?}, busy {:.0}%, runs n1 {} c1 {}, c1 NAPI {} ms, \
             sender {} ns/frame, ksoftirqd {}/{} ms",
            f.sent,
            f.refused,
            sample.refused_at_n1(),
            sample.seen(),
            sample.answers(case),
            sample.lost_before_c1(case),
            f.replies,
            f.socket_drops,
            sample.responder_ns / sample.seen().max(1),
            sample.responder_last_cpu,
            sample.responder_busy() * 100.0,
            sample.get("n1.napi.runs"),
            sample.get("c1.napi.runs"),
            sample.client_napi_ns / 1_000_000,
            f.sender_ns / f.sent.max(1),
            sample.softirqd_ns[0] / 1_000_000,
            sample.softirqd_ns[1] / 1_000_000,
        );
        Ok(sample)
    }

    /// Every counter the rig reads, at this moment.
    fn counters(&self, prog: u32, vip: Option<IpAddr>) -> Result<Counters> {
        let mut c = Counters::new();
        for (name, host) in [("c1", &self.c1), ("n1", &self.n1)] {
            for (k, v) in link_stats(host)? {
                c.insert(format!("{name}.link.{k}"), v);
            }
            let ethtool = host.exec_ok(&["ethtool", "-S", "eth0"]);
            for (k, v) in parse_counters(&ethtool) {
                c.insert(format!("{name}.veth.{k}"), v);
            }
        }
        let snmp6 = self.n1.exec_ok(&["cat", "/proc/net/snmp6"]);
        for (k, v) in parse_counters(&snmp6) {
            if k.starts_with("Icmp6") && k.contains("Neighbor") {
                c.insert(format!("n1.snmp6.{k}"), v);
            }
        }
        for (name, pid) in [("n1", self.responder_napi.0), ("c1", self.client_napi.0)] {
            c.insert(format!("{name}.napi.runs"), timeslices(pid));
        }
        let (run_cnt, run_time_ns) = prog_stats(prog)?;
        c.insert("n1.prog.run_cnt".into(), run_cnt);
        c.insert("n1.prog.run_time_ns".into(), run_time_ns);
        if let Some(vip) = vip {
            let v = responder::vip_counters(self.vipctl, &self.sock, vip)?;
            c.insert("n1.vip.requests".into(), v.requests);
            c.insert("n1.vip.xdp_replies".into(), v.xdp_replies);
        }
        Ok(c)
    }

    fn finish(self) -> Result<()> {
        if !self.peer_pass.is_running() {
            bail!(
                "the pass-through vipd on c1's eth0 died:\n{}",
                self.peer_pass.stderr()
            );
        }
        self.peer_pass.terminate(Duration::from_secs(10));
        self.lab
            .teardown()
            .map_err(|e| anyhow::anyhow!("lab teardown: {}", e.join("; ")))
    }
}

/// `ns` over `count` things; None for none.
fn per(ns: u64, count: u64) -> Option<f64> {
    (count > 0).then(|| ns as f64 / count as f64)
}

/// What answering cost beyond what every frame costs anyway: the thread's
/// run time above the baseline's per-frame cost for the frames it handled,
/// divided by the answers.
fn marginal_per_answer(
    thread_ns: u64,
    frames: u64,
    base_ns_per_frame: f64,
    answers: u64,
) -> Option<f64> {
    (answers > 0).then(|| (thread_ns as f64 - base_ns_per_frame * frames as f64) / answers as f64)
}

/// A Neighbor Solicitation for `target` from `src` at `mac`, to the
/// target's solicited-node address, with a Source Link-Layer Address option.
fn solicitation(mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let t = target.octets();
    let dst = Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, t[13], t[14], t[15],
    ]);
    let mut icmp = vec![NS_TYPE, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&t);
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&mac);
    let sum = icmpv6_checksum(src, dst, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let d = dst.octets();
    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    f.extend_from_slice(&[0x33, 0x33, d[12], d[13], d[14], d[15]]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&u16::try_from(icmp.len()).expect("short").to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&d);
    f.extend_from_slice(&icmp);
    f
}

/// A Neighbor Advertisement of the VIP.
fn is_advert_of_vip(b: &[u8]) -> bool {
    b.len() >= 78
        && b[12..14] == ETH_P_IPV6.to_be_bytes()
        && b[20] == 58
        && b[54] == NA_TYPE
        && b[62..78] == VIP6.octets()
}

#[cfg(test)]
mod tests {
    use super::kernel::prog_id_of;
    use super::report::ratio;
    use super::*;
    use vipd_tests::lab::NdpFrame;

    #[test]
    fn marginal_cost_is_what_answering_adds_above_the_baseline() {
        // Baseline 1000 ns per frame; 1000 frames cost 1_500_000 ns with
        // 1000 answers: 500 ns per answer beyond the frame's own cost.
        assert_eq!(
            marginal_per_answer(1_500_000, 1000, 1000.0, 1000),
            Some(500.0)
        );
        // Half of the frames answered: the extra is spread over fewer answers.
        assert_eq!(
            marginal_per_answer(1_500_000, 1000, 1000.0, 500),
            Some(1000.0)
        );
        // Cheaper than the baseline (no skb built for an XDP_TX answer).
        assert_eq!(
            marginal_per_answer(900_000, 1000, 1000.0, 1000),
            Some(-100.0)
        );
        assert_eq!(marginal_per_answer(900_000, 1000, 1000.0, 0), None);
        assert_eq!(per(3000, 2), Some(1500.0));
        assert_eq!(per(3000, 0), None);
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(None, Some(4.0)), None);
    }

    #[test]
    fn counters_parse_and_subtract() {
        let ethtool = "NIC statistics:\n     peer_ifindex: 2\n     rx_queue_0_xdp_tx: 17\n";
        let c = parse_counters(ethtool);
        assert_eq!(c.get("rx_queue_0_xdp_tx"), Some(&17));
        assert_eq!(c.get("peer_ifindex"), Some(&2));
        assert!(!c.contains_key("NIC"));
        let snmp6 = "Icmp6InNeighborSolicits         \t5\nIp6InReceives 9\n";
        assert_eq!(
            parse_counters(snmp6).get("Icmp6InNeighborSolicits"),
            Some(&5)
        );
        let before: Counters = [("a".into(), 5), ("b".into(), 9)].into();
        let after: Counters = [("a".into(), 8), ("b".into(), 2), ("c".into(), 4)].into();
        let d = delta(&before, &after);
        assert_eq!((d["a"], d["b"], d["c"]), (3, 0, 4));
    }

    #[test]
    fn solicitation_is_a_valid_ns_for_the_vip() {
        let mac = [2, 0, 0, 0, 0, 0x50];
        let f = solicitation(mac, CLIENT6, VIP6);
        assert_eq!(f.len(), 14 + 40 + 32);
        // Read back by the lab's own parser, which checks the checksum.
        let ns = NdpFrame::parse(&f).expect("an NDP frame");
        assert_eq!(ns.icmp_type, NdpFrame::SOLICITATION);
        assert!(ns.checksum_ok);
        assert_eq!((ns.target, ns.src, ns.lladdr), (VIP6, CLIENT6, Some(mac)));
        assert_eq!(ns.dst, "ff02::1:ff00:100".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ns.eth_dst, [0x33, 0x33, 0xff, 0, 0x01, 0]);
        assert_eq!(ns.hop_limit, 255);
        assert!(!is_advert_of_vip(&f));
    }

    #[test]
    fn reads_the_program_id_and_thread_fields() {
        let native: serde_json::Value =
            serde_json::from_str(r#"[{"xdp":{"mode":1,"prog":{"id":42}}}]"#).unwrap();
        assert_eq!(prog_id_of(&native), Some(42));
        let none: serde_json::Value = serde_json::from_str(r#"[{"ifname":"eth0"}]"#).unwrap();
        assert_eq!(prog_id_of(&none), None);
        // This very thread: it runs somewhere, and may run somewhere.
        let me = std::process::id();
        assert!(last_cpu(me).is_some());
        assert!(cpus_allowed(me).is_some());
    }
}
