//! `bench keepalived`: vipd against keepalived (VRRP) in the same lab with
//! the same failure and the same client: failover time, reaction time,
//! announcements per takeover and memory, with detection budgets matched at
//! about one second; then what a SIGKILL of the holder's daemon leaves.

use std::{
    fmt::Write as _,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    failover::{self, LeaseRule, System, summary},
    timeline::{
        self, Agent, FailoverLab, KeepalivedSettings, PlotRow, Takeover, VIP, VipdSettings,
        between, binaries, install_sigint_handler, preflight, progress, sleep, spread, spread_ms,
    },
};

/// vipd at a session timeout of 1 s and its default lease (a third of it):
/// the next in line takes over when the leader's renewals stop.
const VIPD: VipdSettings = VipdSettings {
    session_timeout: Duration::from_secs(1),
    garp_interval: Duration::from_secs(1),
    garp_rounds: 3,
};
/// keepalived's detection is the master-down interval, 3 x advert_int +
/// skew ((256 - priority) / 256 x advert_int): 0.9 s + 0.18 s ≈ 1.1 s here.
const KEEPALIVED: KeepalivedSettings = KeepalivedSettings {
    advert_int: Duration::from_millis(300),
};
/// Observation window after the VIP is configured on the new holder: it
/// covers keepalived's second gratuitous ARP burst (garp_master_delay 5 s)
/// and vipd's three 1 s sync rounds.
const LINGER: Duration = Duration::from_secs(7);

fn keepalived_version() -> Result<String> {
    let out = Command::new("keepalived")
        .arg("--version")
        .output()
        .context(
            "keepalived is not installed: run `cargo xtask setup` (Debian package keepalived)",
        )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let first = text.lines().next().unwrap_or_default().trim().to_string();
    if !first.starts_with("Keepalived v") {
        bail!("`keepalived --version` says {first:?}: expected Keepalived v2.2.x");
    }
    Ok(first)
}

struct KillResult {
    what: String,
    holders: Vec<String>,
    served_by: Option<String>,
}

impl KillResult {
    /// Who holds the VIP now and who served the probe over the next 200 ms.
    fn observe(c: &FailoverLab, what: String) -> Result<KillResult> {
        let since = Instant::now();
        sleep(Duration::from_millis(200))?;
        Ok(KillResult {
            what,
            holders: c
                .holders()
                .into_iter()
                .map(|i| c.nodes[i].name.clone())
                .collect(),
            served_by: c.prober.last_served(since),
        })
    }
}

/// Waits until the VIP is on a node other than `killed` (or `timeout`),
/// then a little longer so late changes show.
fn settle_after_kill(c: &FailoverLab, killed: usize, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout && !c.holders().iter().any(|&h| h != killed) {
        sleep(Duration::from_millis(50))?;
    }
    sleep(Duration::from_secs(2))
}

fn kill_pid(pid: u32) {
    // SAFETY: kill(2) on a PID of a daemon this benchmark started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

fn vipd_kill(c: &FailoverLab) -> Result<Vec<KillResult>> {
    let h = *c.holders().first().context("no holder before the kill")?;
    let name = c.nodes[h].name.clone();
    c.nodes[h].agent.kill(libc::SIGKILL);
    settle_after_kill(c, h, Duration::from_secs(10))?;
    let mut out = vec![KillResult::observe(
        c,
        format!("vipd: SIGKILL of the holder's vipd ({name})"),
    )?];
    // What the systemd unit's ExecStopPost does after any exit of the agent.
    let vipctl = c.bins.join("vipctl");
    c.nodes[h]
        .host
        .exec(&[vipctl.as_os_str(), "cleanup".as_ref()]);
    sleep(Duration::from_millis(500))?;
    out.push(KillResult::observe(
        c,
        format!("vipd: then `vipctl cleanup` on {name} (the unit's ExecStopPost)"),
    )?);
    Ok(out)
}

fn keepalived_kill(c: &FailoverLab) -> Result<Vec<KillResult>> {
    let mut out = Vec::new();
    let h = *c.holders().first().context("no holder before the kill")?;
    let name = c.nodes[h].name.clone();
    c.nodes[h].agent.kill(libc::SIGKILL);
    settle_after_kill(c, h, Duration::from_secs(10))?;
    out.push(KillResult::observe(
        c,
        format!("keepalived: SIGKILL of the holder's main process ({name})"),
    )?);
    let Some(&h2) = c.holders().iter().find(|&&i| i != h) else {
        return Ok(out);
    };
    let name = c.nodes[h2].name.clone();
    let child = c.vrrp_child(h2);
    c.nodes[h2].agent.kill(libc::SIGKILL);
    if let Some(pid) = child {
        kill_pid(pid);
    }
    settle_after_kill(c, h2, Duration::from_secs(10))?;
    out.push(KillResult::observe(
        c,
        format!("keepalived: SIGKILL of main and VRRP child on the new holder ({name})"),
    )?);
    Ok(out)
}

fn spread_count(v: Vec<u64>) -> String {
    let mut v = v;
    v.sort_unstable();
    if v.is_empty() {
        return "n/a".to_string();
    }
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0
    };
    format!("{median} ({}–{})", v[0], v[n - 1])
}

fn ratio_ms(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        // A ratio of two times of a few ms says nothing.
        (Some(a), Some(b)) if a < 5.0 && b < 5.0 => "both < 5 ms".to_string(),
        _ => ratio(a, b),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".to_string(),
    }
}

fn median_ms(ts: &[Takeover], f: &dyn Fn(&Takeover) -> Option<Duration>) -> Option<f64> {
    spread(ts.iter().filter_map(f).collect()).map(|(m, _, _)| m.as_secs_f64() * 1000.0)
}

pub fn run(runs: usize) -> Result<String> {
    preflight()?;
    install_sigint_handler();
    let version = keepalived_version()?;
    let bins = binaries()?;
    let rule = failover::vipd_lease_check(
        &bins,
        &System::Vipd {
            session_timeout: VIPD.session_timeout,
            lease: None,
            ipv6: false,
        },
    )?;
    let start = Instant::now();
    let p = |s: &str| progress(start, &format!("keepalived bench: {s}"));
    p(&format!(
        "{version}; vipd session timeout {} ms, keepalived advert_int {} ms",
        VIPD.session_timeout.as_millis(),
        KEEPALIVED.advert_int.as_millis()
    ));
    let vipd = FailoverLab::start("kavipd", Agent::Vipd(VIPD), &bins, &p)
        .context("starting the vipd lab")?;
    let ka = FailoverLab::start("kaka", Agent::Keepalived(KEEPALIVED), &bins, &p)
        .context("starting the keepalived lab")?;
    let mut done: [Vec<Takeover>; 2] = [Vec::new(), Vec::new()];
    for r in 0..runs {
        // Alternating, so both systems see the same machine load over time.
        for (i, c) in [&vipd, &ka].into_iter().enumerate() {
            let tk = c.takeover(LINGER, Duration::from_secs(20))?;
            p(&format!(
                "{} run {}/{runs}: {}, {} GARP frames, RSS {} KiB",
                c.agent.name(),
                r + 1,
                summary(c, &tk),
                tk.garp_frames,
                tk.rss_kib.unwrap_or(0)
            ));
            let holder = match tk.new {
                Some(n) => n,
                None => c.wait_settled(Duration::from_secs(30))?,
            };
            c.restore(tk.old, holder)?;
            done[i].push(tk);
        }
    }
    p("SIGKILL of the holder's daemon");
    let mut kills = vipd_kill(&vipd)?;
    kills.extend(keepalived_kill(&ka)?);
    for k in &kills {
        p(&format!(
            "{}: VIP on {:?}, client served by {:?}",
            k.what, k.holders, k.served_by
        ));
    }
    p("tearing the labs down");
    drop(ka);
    drop(vipd);

    let mut rows = Vec::new();
    for (name, ts) in [("vipd", &done[0]), ("keepalived", &done[1])] {
        for (i, t) in ts.iter().enumerate() {
            rows.push(PlotRow {
                label: format!("{name} #{}", i + 1),
                takeover: t.clone(),
            });
        }
    }
    let svg = timeline::timeline_svg(
        "Failover timelines: vipd (session timeout 1 s) and keepalived (advert_int 0.3 s)",
        &rows,
    );
    let docs = crate::workspace_root().join("docs");
    std::fs::create_dir_all(&docs)?;
    let svg_path = docs.join("keepalived.svg");
    std::fs::write(&svg_path, svg).with_context(|| format!("writing {}", svg_path.display()))?;
    p(&format!("wrote {}", svg_path.display()));
    Ok(report(runs, &version, rule.as_ref(), &done, &kills))
}

/// How vipd's detection was matched with keepalived's, from the settings.
fn vipd_detection(rule: Option<&LeaseRule>) -> String {
    match rule {
        Some(r) => format!(
            "vipd's detection is its lease: at `--session-timeout 1s` the lease is a third of it \
             ({} ms), renewed every {} ms, and the next in line takes over once it has seen no \
             renewal for lease + renewal interval + margin = {} ms (session expiry, 1 s, is only \
             the backstop)",
            r.lease.as_millis(),
            r.renew_every.as_millis(),
            r.takeover_after.as_millis()
        ),
        None => "vipd's detection is the ZooKeeper session timeout: the new leader is elected \
                 when the server expires the old leader's session, about one timeout after the \
                 cut, so `--session-timeout 1s`"
            .to_string(),
    }
}

fn report(
    runs: usize,
    version: &str,
    rule: Option<&LeaseRule>,
    done: &[Vec<Takeover>; 2],
    kills: &[KillResult],
) -> String {
    let (v, k) = (&done[0], &done[1]);
    let mut md = String::new();
    let _ = writeln!(md, "## vipd and keepalived\n");
    let _ = writeln!(
        md,
        "The same lab for both (three nodes and a client on one bridge, {VIP}/24 as the VIP, a TCP \
         service on it on every node), the same failure (the holder's links lose carrier) and the \
         same client probe (a TCP connection every 10 ms, its neighbour entry and the gratuitous ARP \
         it receives timestamped). {runs} takeovers each, alternating between the systems. \
         {version} (Debian), one instance per namespace: `keepalived -n -l -D -G -P -f <conf> -p <pid> \
         -r <vrrp pid>`, `vrrp_instance` on eth0, multicast adverts, VRRPv3, `state BACKUP` with \
         `nopreempt` and priorities 100/99/98 (a restored node stays a backup, as a vipd follower \
         does), gratuitous ARP at the defaults (`garp_master_delay 5`, `garp_master_repeat 5`).\n"
    );
    let _ = writeln!(
        md,
        "**How the detection budgets were matched (about 1 s each).** The configured budgets \
         are matched: vipd's session timeout of 1 s against keepalived's master-down interval, \
         3 × advert_int + skew, skew = (256 − priority)/256 × advert_int: `advert_int 0.3` gives \
         {} ms for the priority-99 backup (sub-second intervals need VRRPv3). {}. Both timers run \
         from the last message heard before the cut, so detection measured from the cut is \
         somewhat shorter than the budget. vipd runs with `--garp-interval 1s --garp-rounds 3`, \
         `--xdp-mode generic` ({}).\n",
        failover::master_down(KEEPALIVED.advert_int, 99).as_millis(),
        vipd_detection(rule),
        timeline::binaries_note()
    );
    let _ = writeln!(
        md,
        "| median (min–max) | vipd | keepalived | vipd / keepalived |\n|---|---|---|---|"
    );
    type Metric<'a> = (&'a str, Box<dyn Fn(&Takeover) -> Option<Duration>>);
    let metrics: Vec<Metric> = vec![
        (
            "**failover: cut → client served (ms)**",
            Box::new(|t| t.served),
        ),
        (
            "detection: cut → VIP configured on the new holder (ms)",
            Box::new(|t| t.configured),
        ),
        (
            "reaction: VIP configured → client's neighbour entry switched (ms)",
            Box::new(|t| between(t.configured, t.neigh_switched)),
        ),
        (
            "old holder removed the VIP (ms after the cut)",
            Box::new(|t| t.old_removed),
        ),
    ];
    for (label, f) in &metrics {
        let fv = |ts: &[Takeover]| spread_ms(ts.iter().filter_map(f).collect());
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} |",
            fv(v),
            fv(k),
            ratio_ms(median_ms(v, f.as_ref()), median_ms(k, f.as_ref()))
        );
    }
    let garps = |ts: &[Takeover]| ts.iter().map(|t| t.garp_frames as u64).collect::<Vec<_>>();
    let med = |x: Vec<u64>| -> Option<f64> {
        let mut x = x;
        x.sort_unstable();
        x.get(x.len() / 2).map(|m| *m as f64)
    };
    let _ = writeln!(
        md,
        "| gratuitous ARP frames per takeover (at the client, within 7 s of the VIP's add) | {} | {} | {} |",
        spread_count(garps(v)),
        spread_count(garps(k)),
        ratio(med(garps(v)), med(garps(k)))
    );
    let rss = |ts: &[Takeover]| ts.iter().filter_map(|t| t.rss_kib).collect::<Vec<_>>();
    let _ = writeln!(
        md,
        "| agent RSS on the new holder (KiB; keepalived: main + VRRP child) | {} | {} | {} |",
        spread_count(rss(v)),
        spread_count(rss(k)),
        ratio(med(rss(v)), med(rss(k)))
    );
    let overlap = |ts: &[Takeover]| {
        let worst = ts.iter().map(|t| t.overlap).max().unwrap_or_default();
        format!(
            "{} ms ({} of {} runs)",
            worst.as_millis(),
            ts.iter().filter(|t| !t.overlap.is_zero()).count(),
            ts.len()
        )
    };
    let _ = writeln!(
        md,
        "| VIP on two nodes at once (longest) | {} | {} | |",
        overlap(v),
        overlap(k)
    );
    let complete = |ts: &[Takeover]| {
        format!(
            "{} of {}",
            ts.iter().filter(|t| t.complete()).count(),
            ts.len()
        )
    };
    let _ = writeln!(
        md,
        "| takeovers completed | {} | {} | |\n",
        complete(v),
        complete(k)
    );
    let _ = writeln!(
        md,
        "vipd sends each announcement in both forms (request and reply, `--garp-mode both`): one \
         at the add and one per sync round, so 2 × (1 + 3) frames; keepalived sends \
         `garp_master_repeat` requests at the transition and again `garp_master_delay` later. \
         The timelines of every run are plotted in [keepalived.svg](keepalived.svg).\n"
    );
    let _ = writeln!(
        md,
        "**SIGKILL of the holder's daemon** (VIP holders about 2 s after the takeover settled):\n"
    );
    let _ = writeln!(
        md,
        "| what was killed | nodes with the VIP | client served by |\n|---|---|---|"
    );
    for kr in kills {
        let _ = writeln!(
            md,
            "| {} | {} ({}) | {} |",
            kr.what,
            kr.holders.len(),
            kr.holders.join(", "),
            kr.served_by.as_deref().unwrap_or("nobody")
        );
    }
    let vipd_left = kills
        .first()
        .is_some_and(|k| k.what.starts_with("vipd") && k.holders.len() > 1);
    let _ = writeln!(
        md,
        "\n{} keepalived 2.2.7's VRRP child notices its parent's death and shuts down cleanly \
         (priority-0 advert, VIPs removed); only when the VRRP child dies too (an OOM kill, \
         `kill -9` of the whole group) is the VIP left behind, and nothing removes it. The \
         failover section above measures every such fault for both systems, run by run.\n",
        if vipd_left {
            "A SIGKILLed vipd could not remove its address here: the XDP program goes with the \
             process, but the kernel kept the VIP and answered ARP for it until the service \
             manager's `ExecStopPost=vipctl cleanup` (packaging/vipd.service) removed every \
             address carrying vipd's mark."
                .to_string()
        } else {
            format!(
                "A SIGKILLed vipd's VIP left the kernel by itself: the address carries the \
                 lease's kernel lifetime ({}), renewed only after an acknowledged lease renewal, \
                 so `vipctl cleanup` found nothing left to remove.",
                rule.map_or("a lifetime".to_string(), |r| format!(
                    "{} s",
                    r.lifetime.as_secs()
                ))
            )
        }
    );
    md
}
