//! vipd as the responder of the ARP rigs: started per case with its XDP
//! program in the mode asked for, its status read back through vipctl (the
//! mode it attached in, whether it fell back during a flood) and the
//! program's counters per VIP.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use vipd_tests::lab::{LabProcess, Netns, wait_until};

/// Starts a pass-through vipd in `ns`: no VIPs, its XDP program attached in
/// native mode to `ifname`, where it passes every frame (what native XDP_TX
/// on the veth's other end needs).
pub(super) fn start_pass(
    ns: &Netns,
    bin: &Path,
    vipctl: &Path,
    ifname: &str,
    sock: &Path,
) -> Result<LabProcess> {
    let args: Vec<String> = [
        "--config",
        "/dev/null",
        "--static-vips",
        "",
        "--xdp-interface",
        ifname,
        "--xdp-mode",
        "native",
        "--api-socket",
        &sock.display().to_string(),
        "--garp-rounds",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    start_vipd(ns, bin, vipctl, sock, &args, ifname, None, Some("native"))
        .context("the pass-through vipd")
}

/// The vipd binary: `VIPD_BIN`, else the release build (`cargo xtask build
/// --release`, which `bench` runs first).
pub(super) fn vipd_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("VIPD_BIN") {
        Some(p) => PathBuf::from(p),
        None => crate::build::target_dir().join("release").join("vipd"),
    };
    if !path.is_file() {
        bail!(
            "vipd binary not found at {}: run `cargo xtask build --release` or set VIPD_BIN",
            path.display()
        );
    }
    Ok(path)
}

/// Starts vipd in `ns` with `args` (which name `sock` as its API socket)
/// and waits until it holds `vip` on `ifname` (when given) and its status
/// reports the XDP attachment `want` there (None: not attached).
#[expect(
    clippy::too_many_arguments,
    reason = "one call per rig; a struct would only rename them"
)]
pub(super) fn start_vipd(
    ns: &Netns,
    bin: &Path,
    vipctl: &Path,
    sock: &Path,
    args: &[String],
    ifname: &str,
    vip: Option<IpAddr>,
    want: Option<&str>,
) -> Result<LabProcess> {
    let mut argv = vec![bin.display().to_string()];
    argv.extend(args.iter().cloned());
    let proc = ns.spawn(&argv);
    let holds = |vip: IpAddr| match vip {
        IpAddr::V4(v4) => ns.ipv4_addrs(ifname).iter().any(|(a, _)| *a == v4),
        IpAddr::V6(v6) => ns.ipv6_addrs(ifname).iter().any(|a| a.addr == v6),
    };
    let ready = wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
        proc.is_running()
            && vip.is_none_or(holds)
            && xdp_attachment(vipctl, sock, ifname)
                .is_ok_and(|a| a.as_ref().map(|a| a.mode.as_str()) == want)
    });
    if let Err(e) = ready {
        bail!(
            "vipd {} did not come up{} with XDP {} on {ifname}: {e}; status: {}\n{}",
            args.join(" "),
            vip.map(|v| format!(" holding {v}")).unwrap_or_default(),
            want.unwrap_or("off"),
            status(vipctl, sock).map_or_else(|e| e.to_string(), |v| v.to_string()),
            proc.stderr()
        );
    }
    Ok(proc)
}

/// `vipctl status --json`.
fn status(vipctl: &Path, sock: &Path) -> Result<serde_json::Value> {
    vipctl_json(vipctl, sock, &["status"])
}

fn vipctl_json(vipctl: &Path, sock: &Path, cmd: &[&str]) -> Result<serde_json::Value> {
    let out = std::process::Command::new(vipctl)
        .args(cmd)
        .args(["--json", "--api-socket"])
        .arg(sock)
        .output()
        .with_context(|| format!("running {}", vipctl.display()))?;
    if !out.status.success() {
        bail!(
            "vipctl {}: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// How vipd's XDP program is attached to one interface
/// (`xdp.attached[]` in its status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Attachment {
    pub mode: String,
    pub reason_code: String,
    pub reason: String,
}

/// The attachment vipd reports on `ifname`; None when not attached there.
pub(super) fn xdp_attachment(
    vipctl: &Path,
    sock: &Path,
    ifname: &str,
) -> Result<Option<Attachment>> {
    let v = status(vipctl, sock)?;
    let text = |a: &serde_json::Value, key: &str| a[key].as_str().unwrap_or("?").to_string();
    Ok(v["xdp"]["attached"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["interface"] == ifname)
        .map(|a| Attachment {
            mode: text(a, "mode"),
            reason_code: text(a, "reason_code"),
            reason: text(a, "reason"),
        }))
}

/// Fails unless vipd still runs its program on `ifname` in `mode`, as
/// configured (for generic mode, which has no fallback; native cases use
/// [`native_throughout`]).
pub(super) fn stayed_attached(
    vipctl: &Path,
    sock: &Path,
    ifname: &str,
    mode: &str,
    case: &str,
) -> Result<()> {
    match xdp_attachment(vipctl, sock, ifname)? {
        Some(a) if a.mode == mode && a.reason_code == "configured" => Ok(()),
        Some(a) => bail!(
            "{case}: vipd's XDP program on {ifname} is now {} ({}: {}), not {mode} as \
             configured: it changed during the flood, so this row would measure a mix; \
             the bench stops here",
            a.mode,
            a.reason_code,
            a.reason
        ),
        None => bail!("{case}: vipd's XDP program is no longer attached to {ifname}"),
    }
}

/// Frames the veth driver sent with native XDP_TX on `ifname`, into the
/// peer's ring or not (`ethtool -S`: every `rx_queue_N_xdp_tx` and
/// `rx_queue_N_xdp_tx_errors`).
pub(super) fn native_tx(ns: &Netns, ifname: &str) -> Result<u64> {
    let out = ns.exec(&["ethtool", "-S", ifname]);
    if !out.status.success() {
        bail!(
            "ethtool -S {ifname}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(native_tx_of(&String::from_utf8_lossy(&out.stdout)))
}

fn native_tx_of(ethtool: &str) -> u64 {
    ethtool
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .filter(|(k, _)| {
            k.starts_with("rx_queue_") && (k.ends_with("_xdp_tx") || k.ends_with("_xdp_tx_errors"))
        })
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// After a native case's flood: whether vipd's program answered the whole
/// flood natively. `Ok(None)`: it is still attached natively as
/// configured. `Ok(Some(note))`: vipd fell back to generic, but only once
/// the flood's answers had left: the driver sent as many native XDP_TX
/// frames during the flood as the program answered. Anything else fails
/// the case: a fallback during the flood makes its row a mix of modes.
pub(super) fn native_throughout(
    vipctl: &Path,
    sock: &Path,
    ifname: &str,
    case: &str,
    native_tx: u64,
    answers: u64,
) -> Result<Option<String>> {
    let Some(a) = xdp_attachment(vipctl, sock, ifname)? else {
        bail!("{case}: vipd's XDP program is no longer attached to {ifname}");
    };
    if a.mode == "native" && a.reason_code == "configured" {
        return Ok(None);
    }
    if a.reason_code == "fallback" && native_tx == answers {
        return Ok(Some(format!(
            "{case}: vipd moved {ifname} to {} after the flood's last answer ({}); all {answers} \
             answers of the flood had left as native XDP_TX (the driver's xdp_tx + \
             xdp_tx_errors), so the row stands",
            a.mode, a.reason
        )));
    }
    bail!(
        "{case}: vipd's XDP program on {ifname} is now {} ({}: {}), not native as configured, \
         and the driver sent {native_tx} native XDP_TX frames for the program's {answers} \
         answers: the mode changed during the flood, so this row would measure a mix; the \
         bench stops here",
        a.mode,
        a.reason_code,
        a.reason
    )
}

/// The XDP program's counters for one VIP (`vipctl arp stats --json`;
/// NDP counters for an IPv6 VIP, in the same fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct VipCounters {
    pub requests: u64,
    pub xdp_replies: u64,
}

pub(super) fn vip_counters(vipctl: &Path, sock: &Path, vip: IpAddr) -> Result<VipCounters> {
    let v = vipctl_json(vipctl, sock, &["arp", "stats"])?;
    let row = v["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["vip"] == vip.to_string())
        .with_context(|| format!("no counters for {vip} in {v}"))?;
    let field = |key: &str| {
        row[key]
            .as_u64()
            .with_context(|| format!("no {key} for {vip} in {row}"))
    };
    Ok(VipCounters {
        requests: field("requests")?,
        xdp_replies: field("xdp_replies")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_tx_sums_the_queues_xdp_tx_and_its_errors() {
        let ethtool = "NIC statistics:\n     peer_ifindex: 2\n     rx_queue_0_xdp_packets: 9\n     \
                       rx_queue_0_xdp_tx: 5\n     rx_queue_0_xdp_tx_errors: 2\n     \
                       rx_queue_1_xdp_tx: 1\n     tx_queue_0_xdp_xmit: 7\n";
        assert_eq!(native_tx_of(ethtool), 8);
    }
}
