//! What the isolated rig reads from and sets in the kernel: the threaded
//! NAPI kthread and its placement, scheduler counters, the BPF run-time
//! statistics, and the links' counters.

use std::{
    fs,
    os::fd::{FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, bail};
use vipd_tests::lab::Host;

use super::Counters;
use crate::bench::flood::kernel_threads;

/// Turns on threaded NAPI for `host`'s eth0 and returns its kthread: the
/// one `napi/eth0-<id>` thread that appeared.
pub(super) fn threaded_napi(host: &Host) -> Result<(u32, String)> {
    let before = kernel_threads("napi/");
    // Inside the namespace: `ip netns exec` mounts the namespace's /sys.
    let out = host.sh("echo 1 > /sys/class/net/eth0/threaded");
    if !out.status.success() {
        bail!(
            "threaded NAPI on {}'s eth0: {}",
            host.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let new: Vec<(u32, String)> = kernel_threads("napi/")
        .into_iter()
        .filter(|t| !before.contains(t) && t.1.starts_with("napi/eth0-"))
        .collect();
    match new.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "threaded NAPI on {}'s eth0: expected one new napi/eth0-* thread, found {new:?}",
            host.name()
        ),
    }
}

/// Sets the nice value of thread `tid` (0: the calling thread).
pub(super) fn renice(tid: u32, nice: i32) -> Result<()> {
    // SAFETY: a plain syscall on a thread id.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setting thread {tid}'s nice value to {nice}"));
    }
    Ok(())
}

/// How many times a thread was put on a CPU (`schedstat`, third field).
pub(super) fn timeslices(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|t| t.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(0)
}

/// `Cpus_allowed_list` of a thread.
pub(super) fn cpus_allowed(pid: u32) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
}

/// The CPU a thread last ran on (`/proc/<pid>/stat`, field 39).
pub(super) fn last_cpu(pid: u32) -> Option<usize> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which sits in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(36)?.parse().ok()
}

/// Turns on the kernel's BPF run-time statistics (what
/// `kernel.bpf_stats_enabled` does) for as long as the returned fd is open:
/// BPF_ENABLE_STATS, so a bench that dies leaves the machine as it was.
pub(super) fn enable_bpf_stats() -> Result<OwnedFd> {
    const BPF_ENABLE_STATS: libc::c_long = 32;
    // union bpf_attr { struct { __u32 type; } enable_stats; }: BPF_STATS_RUN_TIME = 0.
    let attr: [u32; 1] = [0];
    // SAFETY: the bpf syscall reads `size` bytes of attr, which it has.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .context("BPF_ENABLE_STATS (bpf run-time statistics)");
    }
    // SAFETY: a new fd the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd)?) })
}

/// The id of the XDP program attached to n1's eth0 (`ip -d link`).
pub(super) fn xdp_prog_id(n1: &Host) -> Result<u32> {
    let text = n1.ip(&["-j", "-d", "link", "show", "dev", "eth0"]);
    let json: serde_json::Value = serde_json::from_str(&text)?;
    prog_id_of(&json).with_context(|| format!("no XDP program on n1's eth0: {text}"))
}

pub(super) fn prog_id_of(link: &serde_json::Value) -> Option<u32> {
    let xdp = &link[0]["xdp"];
    xdp["prog"]["id"]
        .as_u64()
        .or_else(|| xdp["attached"][0]["prog"]["id"].as_u64())
        .and_then(|id| u32::try_from(id).ok())
}

/// (run count, run time in ns) of program `id` (`bpftool prog show`);
/// bpftool leaves both out while they are 0.
pub(super) fn prog_stats(id: u32) -> Result<(u64, u64)> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "--json"])
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool prog show id {id}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok((
        v["run_cnt"].as_u64().unwrap_or(0),
        v["run_time_ns"].as_u64().unwrap_or(0),
    ))
}

/// rx/tx packets and drops of `host`'s eth0 (`ip -s link`).
pub(super) fn link_stats(host: &Host) -> Result<Vec<(String, u64)>> {
    let text = host.ip(&["-j", "-s", "link", "show", "dev", "eth0"]);
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let stats = &json[0]["stats64"];
    let mut out = Vec::new();
    for dir in ["rx", "tx"] {
        for key in ["packets", "dropped"] {
            let v = stats[dir][key]
                .as_u64()
                .with_context(|| format!("no {dir}.{key} in {text}"))?;
            out.push((format!("{dir}_{key}"), v));
        }
    }
    Ok(out)
}

/// `name: value` (ethtool -S) or `name value` (/proc/net/snmp6) lines.
pub(super) fn parse_counters(text: &str) -> Counters {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?.trim_end_matches(':');
            let value = words.next()?.parse().ok()?;
            words.next().is_none().then(|| (name.to_string(), value))
        })
        .collect()
}

/// How much each counter grew from `before` to `after` (0 for one that
/// went back, e.g. reset).
pub(super) fn delta(before: &Counters, after: &Counters) -> Counters {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .collect()
}
