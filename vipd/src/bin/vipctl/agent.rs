//! The commands that talk to the agent on this host: `status` and
//! `arp stats` over its control socket, and `cleanup`, which removes the
//! instance's addresses after the agent stopped, aborts the TCP sockets
//! left on them, and removes its pinned fence.

use std::{collections::BTreeSet, net::IpAddr, process::ExitCode};

use vipd::{
    api::{self, ArpStats, Request, Status},
    instance::Instance,
    net::{Address, netlink::Netlink},
    xdp::{default_bpf_dir, error_chain, remove_pinned},
};

use crate::{
    cli::{OutputArg, SocketArg},
    fail, print_each,
    tables::{arp_table, status_table},
    usage_failure,
};

/// `vipctl status`.
pub(crate) async fn status(socket: &SocketArg, output: &OutputArg) -> ExitCode {
    let path = match socket.path() {
        Ok(p) => p,
        Err(e) => return usage_failure(&e),
    };
    let path = &path;
    let (json, watch) = (output.json, output.watch);
    let status = move || async move {
        let status: Status = api::request(path, Request::Status)
            .await
            .map_err(|e| e.to_string())?;
        // Through `Value`, which sorts the keys, as the agent's answer.
        let v = serde_json::to_value(&status).unwrap_or_default();
        Ok(if json && watch {
            format!("{}\n", serde_json::to_string(&v).unwrap_or_default())
        } else if json {
            format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default())
        } else {
            status_table(&status)
        })
    };
    print_each(output, watch, status, |e: String| fail(&e)).await
}

/// `vipctl arp stats`.
pub(crate) async fn arp_stats(socket: &SocketArg, output: &OutputArg) -> ExitCode {
    let path = match socket.path() {
        Ok(p) => p,
        Err(e) => return usage_failure(&e),
    };
    let path = &path;
    let json = output.json;
    let stats = move || async move {
        let stats: ArpStats = api::request(path, Request::ArpStats)
            .await
            .map_err(|e| e.to_string())?;
        Ok(if json {
            format!("{}\n", serde_json::to_string(&stats).unwrap_or_default())
        } else {
            arp_table(&stats)
        })
    };
    print_each(output, output.watch, stats, |e: String| fail(&e)).await
}

/// `vipctl cleanup`: only the instance's own addresses, by its mark, and
/// its pinned fence.
pub(crate) async fn cleanup(socket: &SocketArg) -> ExitCode {
    let instance = match socket.instance() {
        Ok(i) => i,
        Err(e) => return usage_failure(&e),
    };

    let nl = match Netlink::new() {
        Ok(n) => n.with_mark(instance.mark()),
        Err(e) => return fail(&e.to_string()),
    };
    match nl.remove_all_marked().await {
        Ok(removed) => {
            for a in &removed {
                println!(
                    "removed {}/{} (ifindex {})",
                    a.addr, a.prefix_len, a.ifindex
                );
            }
            abort_sockets_on(&removed);
            if removed.is_empty() {
                println!(
                    "no addresses of vipd instance {:?} (mark {}) on this node",
                    instance.name(),
                    instance.mark()
                );
            }
            // The fence last: it keeps the addresses unserved until they
            // are gone (and a removed IPv6 address's sockets silent).
            match remove_pinned_fence(socket, &instance) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        // The fence stays: the addresses are still there.
        Err(e) => fail(&e.to_string()),
    }
}

/// After `cleanup` removed the instance's addresses: the TCP sockets still
/// bound to them (the sessions a stopped or killed vipd's services kept)
/// are aborted, so those services stop retransmitting to clients that have
/// moved on. Only these addresses, which carried the instance's mark. IPv4
/// only: an IPv6 abort sends a reset that leaves the node with the VIP as
/// source, and cleanup does not know whether the pinned fence's window for
/// that VIP (if a fence was pinned) is still open to drop it.
fn abort_sockets_on(removed: &[Address]) {
    let ips: BTreeSet<IpAddr> = removed.iter().map(|a| a.addr).collect();
    for ip in ips {
        if ip.is_ipv6() {
            println!(
                "left the TCP sockets on {ip} alone (IPv6: an abort's reset would leave the node)"
            );
            continue;
        }
        match vipd::net::tickle::abort_sockets(ip) {
            Ok(0) => {}
            Ok(n) => println!("aborted {n} TCP socket(s) on {ip}"),
            Err(e) => eprintln!("vipctl: cannot abort the TCP sockets on {ip}: {e}"),
        }
    }
}

/// Removes the instance's pinned fence (`--bpf-dir`, or the default
/// place), printing each pin removed.
fn remove_pinned_fence(socket: &SocketArg, instance: &Instance) -> Result<(), String> {
    let dir = match &socket.bpf_dir {
        Some(d) => d.clone(),
        None => match default_bpf_dir(instance.name()) {
            Some(d) => d,
            None => return Ok(()),
        },
    };
    let removed = remove_pinned(&dir).map_err(|e| error_chain(&e))?;
    for pin in &removed {
        println!("unpinned {}", pin.display());
    }
    if removed.is_empty() {
        println!("no pinned fence in {}", dir.display());
    }
    Ok(())
}
