//! Talks to the kernel over rtnetlink: dumps links, the main IPv4 and IPv6
//! routes and every address of both families; adds and removes VIPs with
//! vipd's mark; and streams address, route and link events on a connection
//! of their own.
//!
//! `transport` holds the connection and the bound on every request,
//! `dump` the reads, `address` the writes with the ownership policy,
//! `parse` the messages turned into vipd's types, `monitor` the events.

mod address;
mod dump;
mod monitor;
mod parse;
mod transport;

use std::{io, net::IpAddr, path::PathBuf, time::Duration};

pub(crate) use self::dump::NetSnapshot;
pub use self::{
    monitor::{NetEvent, monitor},
    transport::Netlink,
};
use crate::vip::Vip;

/// A failed netlink or sysctl operation, naming what and on which value.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("opening a netlink route socket: {0}")]
    Connect(#[source] io::Error),
    #[error("netlink needs a running tokio runtime to drive its socket")]
    NoRuntime,
    #[error("dumping {what} over netlink: {source}")]
    Dump {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("adding VIP {vip}/{prefix_len} on ifindex {ifindex}: {source}")]
    AddVip {
        vip: Vip,
        ifindex: u32,
        prefix_len: u8,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("removing address {addr}/{prefix_len} from ifindex {ifindex}: {source}")]
    RemoveAddress {
        addr: IpAddr,
        prefix_len: u8,
        ifindex: u32,
        #[source]
        source: rtnetlink::Error,
    },
    #[error(
        "refusing to remove address {addr}/{prefix_len} on ifindex {ifindex}: it does not carry vipd's mark"
    )]
    NotOwned {
        addr: IpAddr,
        prefix_len: u8,
        ifindex: u32,
    },
    #[error("interface with ifindex {ifindex} not found")]
    NoSuchInterface { ifindex: u32 },
    #[error("not a valid interface name for a sysctl path: {ifname:?}")]
    InvalidInterfaceName { ifname: String },
    #[error("writing sysctl {path}: {source}", path = path.display())]
    Sysctl {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading sysctl {path}: {source}", path = path.display())]
    SysctlRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{request}: the kernel did not answer within {after:?}")]
    Timeout { request: String, after: Duration },
    #[error("subscribing to netlink events: {0}")]
    Monitor(#[source] io::Error),
    #[error("removing marked addresses: removed {removed}, {} failed: {}", errors.len(), join_errors(errors))]
    Cleanup {
        removed: usize,
        errors: Vec<NetError>,
    },
}

fn join_errors(errors: &[NetError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}
