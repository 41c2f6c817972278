//! Talks to the kernel over rtnetlink: dumps links, the main IPv4 routes and
//! every IPv4 address; adds and removes VIPs with vipd's mark; and streams
//! address, route and link events on a connection of their own.

use std::{io, net::Ipv4Addr, path::PathBuf, sync::Arc};

use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    AddressMessageBuilder, Handle, MulticastGroup, RouteMessageBuilder,
    packet_core::NetlinkPayload,
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        address::{
            AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressProtocol,
            CacheInfo,
        },
        link::{LinkAttribute, LinkFlags, LinkMessage},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType},
    },
    sys::AsyncSocket,
};
use tokio::sync::mpsc;
use tracing::{debug, instrument, warn};

use super::{Address, Link, Placement, RT_TABLE_MAIN, Route, RouteTable, VIPD_ADDR_PROTO};
use crate::vip::Vip;

/// How many events may wait for the consumer before the monitor waits too;
/// the consumer re-dumps on any event, so a deep queue buys nothing.
const EVENT_QUEUE: usize = 1024;

/// Receive buffer asked for the event socket (the kernel caps it at
/// `rmem_max`): a burst of thousands of VIP changes should not overrun it.
const EVENT_RCVBUF: usize = 4 << 20;

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
        addr: Ipv4Addr,
        prefix_len: u8,
        ifindex: u32,
        #[source]
        source: rtnetlink::Error,
    },
    #[error(
        "refusing to remove address {addr}/{prefix_len} on ifindex {ifindex}: it does not carry vipd's mark"
    )]
    NotOwned {
        addr: Ipv4Addr,
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

/// The kernel's errno in a netlink error reply, positive, if that is what
/// `e` is.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// Links, the main IPv4 routing table and the IPv4 addresses, read together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSnapshot {
    pub links: Vec<Link>,
    pub routes: RouteTable,
    pub addresses: Vec<Address>,
}

impl NetSnapshot {
    pub fn link(&self, ifindex: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.ifindex == ifindex)
    }
}

/// What changed, as far as the consumer needs to know: it re-dumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetEvent {
    Address,
    /// An address appeared or changed carrying vipd's mark: vipd's own add
    /// or lifetime renewal, the state it just wrote. No reason to re-check.
    OwnAddress,
    Route,
    Link,
    /// Events were lost (ENOBUFS): re-dump everything.
    Overrun,
}

/// A request connection to the kernel's routing subsystem.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
    /// The kernel runs one dump at a time per socket and answers EBUSY to
    /// a second: dumps through this connection (and its clones) take turns.
    dump_turn: Arc<tokio::sync::Mutex<()>>,
}

impl Netlink {
    /// Opens a request connection; spawns its driver on the current tokio runtime.
    pub fn new() -> Result<Self, NetError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetError::NoRuntime)?;
        // Strict checking makes the kernel filter route dumps by table and
        // refuse malformed dump requests instead of silently dumping all.
        let (conn, handle, _unsolicited) =
            rtnetlink::new_connection_with_strict_check().map_err(NetError::Connect)?;
        runtime.spawn(conn);
        Ok(Netlink {
            handle,
            dump_turn: Arc::default(),
        })
    }

    /// All links: ifindex, name, MAC (zero if none) and whether usable.
    #[instrument(level = "debug", skip(self), err)]
    pub async fn links(&self) -> Result<Vec<Link>, NetError> {
        let dump = |source| NetError::Dump {
            what: "links",
            source,
        };
        let _turn = self.dump_turn.lock().await;
        let messages: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(dump)?;
        Ok(messages.iter().map(link_of).collect())
    }

    /// The main table's IPv4 unicast routes.
    #[instrument(level = "debug", skip(self), err)]
    pub async fn routes(&self) -> Result<RouteTable, NetError> {
        // The builder's defaults (protocol static, kind unicast) are dump
        // filters under strict checking: clear them to get every route of
        // the main table (FACTS.md).
        let request = RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(RT_TABLE_MAIN)
            .protocol(RouteProtocol::Unspec)
            .kind(RouteType::Unspec)
            .build();
        let _turn = self.dump_turn.lock().await;
        let messages: Vec<RouteMessage> = self
            .handle
            .route()
            .get(request)
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetError::Dump {
                what: "IPv4 routes",
                source,
            })?;
        Ok(RouteTable::new(
            messages.iter().filter_map(main_unicast_route).collect(),
        ))
    }

    /// Every IPv4 address, primary and secondary, in the kernel's order.
    #[instrument(level = "debug", skip(self), err)]
    pub async fn addresses(&self) -> Result<Vec<Address>, NetError> {
        Ok(self
            .address_messages()
            .await?
            .iter()
            .filter_map(address_of)
            .collect())
    }

    async fn address_messages(&self) -> Result<Vec<AddressMessage>, NetError> {
        let mut request = self.handle.address().get();
        request.message_mut().header.family = AddressFamily::Inet;
        let _turn = self.dump_turn.lock().await;
        request
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetError::Dump {
                what: "IPv4 addresses",
                source,
            })
    }

    /// Links, routes and addresses, dumped one after the other (the kernel
    /// refuses concurrent dumps on one socket).
    pub async fn snapshot(&self) -> Result<NetSnapshot, NetError> {
        Ok(NetSnapshot {
            links: self.links().await?,
            routes: self.routes().await?,
            addresses: self.addresses().await?,
        })
    }

    /// Adds the VIP with vipd's mark (IFA_PROTO) and no broadcast address,
    /// as plain `ip addr add X/len dev if` would; already there = Ok. The
    /// address is permanent.
    pub async fn add_vip(&self, vip: Vip, placement: Placement) -> Result<(), NetError> {
        self.add_vip_for(vip, placement, None).await
    }

    /// [`Netlink::add_vip`] with a valid and preferred lifetime of
    /// `lifetime` seconds (R16): the kernel removes the address by itself
    /// unless [`Netlink::renew_vip`] comes first. `None`: permanent.
    #[instrument(skip_all, fields(vip = %vip, ifindex = placement.ifindex, prefix_len = placement.prefix_len), err)]
    pub async fn add_vip_for(
        &self,
        vip: Vip,
        placement: Placement,
        lifetime: Option<u32>,
    ) -> Result<(), NetError> {
        match self.write_vip(vip, placement, lifetime, false).await {
            Ok(()) => {
                debug!(vip = %vip, ifindex = placement.ifindex, prefix_len = placement.prefix_len, "VIP added");
                Ok(())
            }
            // The kernel answers EEXIST only for the same address and
            // prefix on the same interface: the VIP is where it belongs.
            Err(e) if errno(&e) == Some(libc::EEXIST) => {
                debug!(vip = %vip, "VIP already present");
                Ok(())
            }
            Err(source) => Err(NetError::AddVip {
                vip,
                ifindex: placement.ifindex,
                prefix_len: placement.prefix_len,
                source,
            }),
        }
    }

    /// Restarts the VIP address's lifetime (`lifetime` seconds from now).
    /// The request replaces the address's attributes, IFA_PROTO included,
    /// so it carries vipd's mark again. (The kernel creates the address if
    /// it is gone; callers renew only what they hold.)
    pub async fn renew_vip(
        &self,
        vip: Vip,
        placement: Placement,
        lifetime: u32,
    ) -> Result<(), NetError> {
        self.write_vip(vip, placement, Some(lifetime), true)
            .await
            .map_err(|source| NetError::AddVip {
                vip,
                ifindex: placement.ifindex,
                prefix_len: placement.prefix_len,
                source,
            })
    }

    async fn write_vip(
        &self,
        vip: Vip,
        placement: Placement,
        lifetime: Option<u32>,
        replace: bool,
    ) -> Result<(), rtnetlink::Error> {
        let mut request =
            self.handle
                .address()
                .add(placement.ifindex, vip.addr().into(), placement.prefix_len);
        if replace {
            request = request.replace();
        }
        let message = request.message_mut();
        // The builder derives a broadcast address; `ip addr add` sets none,
        // and a VIP must not change what the subnet's broadcast looks like.
        message
            .attributes
            .retain(|a| !matches!(a, AddressAttribute::Broadcast(_)));
        message
            .attributes
            .push(AddressAttribute::Protocol(AddressProtocol::Other(
                VIPD_ADDR_PROTO,
            )));
        if let Some(secs) = lifetime {
            let mut info = CacheInfo::default();
            info.ifa_valid = secs;
            info.ifa_preferred = secs;
            message.attributes.push(AddressAttribute::CacheInfo(info));
        }
        request.execute().await
    }

    /// Removes an address vipd added. Refuses ([`NetError::NotOwned`]) when
    /// `address.owned` is false, and re-checks against a fresh dump that the
    /// kernel's address still carries the mark before deleting. Already gone
    /// = Ok.
    ///
    /// When the address is its subnet's primary and the interface has other
    /// addresses in that subnet, it first turns on `promote_secondaries` for
    /// the interface: otherwise the kernel would delete those (possibly the
    /// operator's) along with it (FACTS.md). If that fails, nothing is removed.
    #[instrument(skip_all, fields(addr = %address.addr, prefix_len = address.prefix_len, ifindex = address.ifindex), err)]
    pub async fn remove_vip(&self, address: &Address) -> Result<(), NetError> {
        let not_owned = || NetError::NotOwned {
            addr: address.addr,
            prefix_len: address.prefix_len,
            ifindex: address.ifindex,
        };
        if !address.owned {
            return Err(not_owned());
        }
        let current = self.address_messages().await?;
        let Some(kernel) = current.iter().find(|m| {
            address_of(m).is_some_and(|a| {
                a.ifindex == address.ifindex
                    && a.addr == address.addr
                    && a.prefix_len == address.prefix_len
            })
        }) else {
            debug!("address already gone");
            return Ok(());
        };
        if !is_marked(kernel) {
            warn!("address equal to a VIP is not vipd's; leaving it");
            return Err(not_owned());
        }
        if is_primary_with_company(kernel, &current) {
            let ifname = self.link_name(address.ifindex).await?;
            enable_promote_secondaries(&ifname)?;
        }
        self.delete(address).await
    }

    /// Removes several addresses vipd added, with the checks of
    /// [`Netlink::remove_vip`] made against one fresh dump instead of one
    /// per address (stepping down from 1000 VIPs stays linear). Returns each
    /// address with its outcome, in the order given.
    #[instrument(skip_all, fields(count = addresses.len()))]
    pub async fn remove_vips(&self, addresses: &[Address]) -> Vec<(Address, Result<(), NetError>)> {
        let mut out = Vec::with_capacity(addresses.len());
        if addresses.len() <= 1 {
            for a in addresses {
                out.push((a.clone(), self.remove_vip(a).await));
            }
            return out;
        }
        let Ok(current) = self.address_messages().await else {
            // One at a time then: each names its own failure.
            for a in addresses {
                out.push((a.clone(), self.remove_vip(a).await));
            }
            return out;
        };
        for address in addresses {
            let not_owned = || NetError::NotOwned {
                addr: address.addr,
                prefix_len: address.prefix_len,
                ifindex: address.ifindex,
            };
            if !address.owned {
                out.push((address.clone(), Err(not_owned())));
                continue;
            }
            let kernel = current.iter().find(|m| {
                address_of(m).is_some_and(|a| {
                    a.ifindex == address.ifindex
                        && a.addr == address.addr
                        && a.prefix_len == address.prefix_len
                })
            });
            let result = match kernel {
                None => Ok(()),
                Some(k) if !is_marked(k) => {
                    warn!(addr = %address.addr, "address equal to a VIP is not vipd's; leaving it");
                    Err(not_owned())
                }
                Some(k) => {
                    let guard = if is_primary_with_company(k, &current) {
                        match self.link_name(address.ifindex).await {
                            Ok(ifname) => enable_promote_secondaries(&ifname),
                            Err(e) => Err(e),
                        }
                    } else {
                        Ok(())
                    };
                    match guard {
                        Ok(()) => self.delete(address).await,
                        Err(e) => Err(e),
                    }
                }
            };
            out.push((address.clone(), result));
        }
        out
    }

    /// Removes every marked IPv4 address on every interface; returns what
    /// it removed. Keeps going past a failure and reports all of them.
    #[instrument(skip(self), err)]
    pub async fn remove_all_marked(&self) -> Result<Vec<Address>, NetError> {
        let mut marked: Vec<(Address, bool)> = self
            .address_messages()
            .await?
            .iter()
            .filter_map(|m| {
                let a = address_of(m)?;
                a.owned.then(|| (a, is_secondary(m)))
            })
            .collect();
        // Secondaries first: removing a primary first would promote (or
        // delete) them only to be removed next anyway.
        marked.sort_by_key(|(_, secondary)| !secondary);
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        let marked: Vec<Address> = marked.into_iter().map(|(a, _)| a).collect();
        for (address, result) in self.remove_vips(&marked).await {
            match result {
                Ok(()) => removed.push(address),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(removed)
        } else {
            Err(NetError::Cleanup {
                removed: removed.len(),
                errors,
            })
        }
    }

    async fn delete(&self, address: &Address) -> Result<(), NetError> {
        let mut message = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(address.ifindex)
            .address(address.addr, address.prefix_len)
            .build();
        // The kernel matches a delete on local address, prefix and peer; a
        // broadcast attribute is not needed to name the address.
        message
            .attributes
            .retain(|a| !matches!(a, AddressAttribute::Broadcast(_)));
        match self.handle.address().del(message).execute().await {
            Ok(()) => {
                debug!(addr = %address.addr, prefix_len = address.prefix_len, ifindex = address.ifindex, "VIP removed");
                Ok(())
            }
            Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL | libc::ENOENT)) => {
                debug!(addr = %address.addr, "address went away before the delete");
                Ok(())
            }
            Err(source) => Err(NetError::RemoveAddress {
                addr: address.addr,
                prefix_len: address.prefix_len,
                ifindex: address.ifindex,
                source,
            }),
        }
    }

    async fn link_name(&self, ifindex: u32) -> Result<String, NetError> {
        let mut links = self.handle.link().get().match_index(ifindex).execute();
        match links.next().await {
            Some(Ok(message)) => Ok(link_of(&message).name),
            Some(Err(e)) if errno(&e) == Some(libc::ENODEV) => {
                Err(NetError::NoSuchInterface { ifindex })
            }
            Some(Err(source)) => Err(NetError::Dump {
                what: "one link",
                source,
            }),
            None => Err(NetError::NoSuchInterface { ifindex }),
        }
    }
}

fn link_of(message: &LinkMessage) -> Link {
    let mut name = String::new();
    let mut mac = [0u8; 6];
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name.clone_from(n),
            LinkAttribute::Address(bytes) if bytes.len() == 6 => mac.copy_from_slice(bytes),
            _ => {}
        }
    }
    let flags = message.header.flags;
    Link {
        ifindex: message.header.index,
        name,
        mac,
        up: flags.contains(LinkFlags::Up)
            && flags.intersects(LinkFlags::Running | LinkFlags::LowerUp),
    }
}

fn main_unicast_route(message: &RouteMessage) -> Option<Route> {
    if message.header.address_family != AddressFamily::Inet
        || message.header.kind != RouteType::Unicast
    {
        return None;
    }
    let mut table = u32::from(message.header.table);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut ifindex = 0;
    let mut gateway = None;
    let mut metric = 0;
    for attribute in &message.attributes {
        match attribute {
            // The header holds only 8 bits of the table id.
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
            RouteAttribute::Oif(i) => ifindex = *i,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    (table == RT_TABLE_MAIN).then_some(Route {
        dst,
        prefix_len: message.header.destination_prefix_length,
        ifindex,
        gateway,
        metric,
    })
}

fn address_of(message: &AddressMessage) -> Option<Address> {
    if message.header.family != AddressFamily::Inet {
        return None;
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
    // point-to-point links and equal to it elsewhere.
    let mut local = None;
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(std::net::IpAddr::V4(a)) => local = Some(*a),
            AddressAttribute::Address(std::net::IpAddr::V4(a)) => address = Some(*a),
            _ => {}
        }
    }
    Some(Address {
        ifindex: message.header.index,
        addr: local.or(address)?,
        prefix_len: message.header.prefix_len,
        owned: is_marked(message),
    })
}

fn is_marked(message: &AddressMessage) -> bool {
    message
        .attributes
        .iter()
        .any(|a| matches!(a, AddressAttribute::Protocol(p) if u8::from(*p) == VIPD_ADDR_PROTO))
}

fn is_secondary(message: &AddressMessage) -> bool {
    // IFA_FLAGS (32 bits) supersedes the header's 8-bit copy when present.
    message
        .attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Flags(f) => Some(f.contains(AddressFlags::Secondary)),
            _ => None,
        })
        .unwrap_or(message.header.flags.contains(AddressHeaderFlags::Secondary))
}

/// Whether `message` is a primary address whose removal would take other
/// addresses of the same subnet and interface with it.
fn is_primary_with_company(message: &AddressMessage, all: &[AddressMessage]) -> bool {
    let Some(this) = address_of(message) else {
        return false;
    };
    if is_secondary(message) {
        return false;
    }
    let mask = super::prefix_mask(this.prefix_len);
    all.iter().filter(|m| is_secondary(m)).any(|m| {
        address_of(m).is_some_and(|o| {
            o.ifindex == this.ifindex
                && o.prefix_len == this.prefix_len
                && u32::from(o.addr) & mask == u32::from(this.addr) & mask
        })
    })
}

fn event_of(payload: &NetlinkPayload<RouteNetlinkMessage>) -> Option<NetEvent> {
    match payload {
        NetlinkPayload::Overrun(_) => Some(NetEvent::Overrun),
        NetlinkPayload::InnerMessage(message) => match message {
            RouteNetlinkMessage::NewAddress(m) if is_marked(m) => Some(NetEvent::OwnAddress),
            RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_) => {
                Some(NetEvent::Address)
            }
            RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_) => {
                Some(NetEvent::Route)
            }
            RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_) => {
                Some(NetEvent::Link)
            }
            _ => None,
        },
        _ => None,
    }
}

/// Subscribes (own socket) to link, IPv4 address and IPv4 route events and
/// forwards one [`NetEvent`] per message; [`NetEvent::Overrun`] on ENOBUFS.
/// Spawns on the current runtime; ends when the receiver is dropped.
///
/// A link going down removes its routes without route events (FACTS.md):
/// consumers re-dump routes on `Link` events too.
pub fn monitor() -> Result<mpsc::Receiver<NetEvent>, NetError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetError::NoRuntime)?;
    // Its own socket: the kernel does not echo events caused by requests
    // to the socket that sent them.
    let (mut conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv4Route,
    ])
    .map_err(NetError::Monitor)?;
    if let Err(e) = conn.socket_mut().socket_mut().set_rx_buf_sz(EVENT_RCVBUF) {
        warn!(error = %e, "could not enlarge the netlink event buffer; overruns more likely");
    }
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    runtime.spawn(async move {
        let forward = async {
            loop {
                let message = tokio::select! {
                    message = messages.next() => message,
                    () = tx.closed() => return,
                };
                let Some((message, _)) = message else {
                    warn!("netlink event socket closed");
                    return;
                };
                if let Some(event) = event_of(&message.payload) {
                    if event == NetEvent::Overrun {
                        warn!("netlink events lost (ENOBUFS); consumers must re-dump");
                    }
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
        };
        // Dropping the connection closes the socket once forwarding ends.
        tokio::select! {
            () = conn => warn!("netlink event connection ended"),
            () = forward => debug!("netlink monitor stopped"),
        }
    });
    Ok(rx)
}

/// Writes `/proc/sys/net/ipv4/conf/<ifname>/promote_secondaries = 1`, so that
/// removing a subnet's primary address promotes a secondary instead of
/// deleting all of them (FACTS.md). Affects the caller's network namespace.
#[instrument(err)]
pub fn enable_promote_secondaries(ifname: &str) -> Result<(), NetError> {
    if ifname.is_empty()
        || ifname.len() > 15
        || ifname == "."
        || ifname == ".."
        || ifname.contains(['/', '\0'])
    {
        return Err(NetError::InvalidInterfaceName {
            ifname: ifname.to_string(),
        });
    }
    let path = PathBuf::from(format!(
        "/proc/sys/net/ipv4/conf/{ifname}/promote_secondaries"
    ));
    std::fs::write(&path, b"1").map_err(|source| NetError::Sysctl { path, source })?;
    debug!(ifname, "promote_secondaries enabled");
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Privileged: each test runs in a network namespace of its own,
    //! unshared by a dedicated thread, which vanishes with that thread.

    use std::{future::Future, process::Command, time::Duration};

    use rtnetlink::packet_route::address::AddressMessage;

    use super::*;

    /// Runs `test` on a current-thread runtime in a fresh network namespace.
    fn in_netns<F, Fut>(test: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let thread = std::thread::spawn(move || {
            // SAFETY: unshare only changes this thread's namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET) failed (these tests need root): {}",
                io::Error::last_os_error()
            );
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(test());
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }

    /// Runs `ip <args>` in this thread's namespace and returns its stdout.
    fn ip(args: &str) -> String {
        let out = Command::new("ip")
            .args(args.split_whitespace())
            .output()
            .expect("running `ip` (iproute2 must be installed)");
        assert!(
            out.status.success(),
            "`ip {args}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 from ip")
    }

    /// An up interface with carrier: one end of a veth pair (this kernel
    /// has no dummy driver), the peer `<name>p` up too.
    fn iface(name: &str) {
        ip(&format!("link add {name} type veth peer name {name}p"));
        ip(&format!("link set {name}p up"));
        ip(&format!("link set {name} up"));
    }

    async fn ifindex(nl: &Netlink, name: &str) -> u32 {
        nl.links()
            .await
            .unwrap()
            .into_iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("link {name} not in the dump"))
            .ifindex
    }

    fn vip(s: &str) -> Vip {
        s.parse().unwrap()
    }

    fn addr(ifindex: u32, a: &str, prefix_len: u8, owned: bool) -> Address {
        Address {
            ifindex,
            addr: a.parse().unwrap(),
            prefix_len,
            owned,
        }
    }

    /// Addresses on the given interfaces, in dump order.
    async fn addresses_on(nl: &Netlink, ifindexes: &[u32]) -> Vec<Address> {
        nl.addresses()
            .await
            .unwrap()
            .into_iter()
            .filter(|a| ifindexes.contains(&a.ifindex))
            .collect()
    }

    async fn place(nl: &Netlink, v: Vip) -> Placement {
        nl.routes()
            .await
            .unwrap()
            .placement(v)
            .unwrap_or_else(|| panic!("no route for {v}"))
    }

    /// Waits up to `within` for `want`, skipping other events.
    async fn expect_event(rx: &mut mpsc::Receiver<NetEvent>, want: NetEvent, within: Duration) {
        let found = tokio::time::timeout(within, async {
            while let Some(event) = rx.recv().await {
                if event == want {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "no {want:?} event within {within:?}");
    }

    fn read_promote(ifname: &str) -> String {
        std::fs::read_to_string(format!(
            "/proc/sys/net/ipv4/conf/{ifname}/promote_secondaries"
        ))
        .unwrap()
        .trim()
        .to_string()
    }

    /// Turns promotion off for `ifname` and "all" (the kernel ORs them), as
    /// a namespace may inherit systemd's `promote_secondaries = 1`.
    fn disable_promote(ifname: &str) {
        for name in ["all", ifname] {
            std::fs::write(
                format!("/proc/sys/net/ipv4/conf/{name}/promote_secondaries"),
                "0",
            )
            .unwrap();
        }
    }

    #[test]
    fn dumps_report_what_ip_set_up() {
        in_netns(|| async {
            iface("d0");
            ip("link set d0 address 02:00:00:00:00:01");
            ip("addr add 192.0.2.1/24 dev d0");
            ip("addr add 192.0.2.2/24 dev d0"); // secondary
            iface("d1");
            ip("addr add 198.51.100.1/24 dev d1");
            ip("route add default dev d1");
            ip("route add 203.0.113.128/25 dev d0 metric 50");
            ip("route add blackhole 203.0.113.64/26");
            ip("route add 203.0.113.0/24 dev d0 table 100");
            ip("link add d2 type veth peer name d2p"); // stays down

            let nl = Netlink::new().unwrap();
            let snap = nl.snapshot().await.unwrap();
            let by_name = |n: &str| snap.links.iter().find(|l| l.name == n).unwrap().clone();
            let (d0, d1, d2) = (by_name("d0"), by_name("d1"), by_name("d2"));
            assert!(d0.up && d1.up && !d2.up, "{:?}", snap.links);
            assert_eq!(d0.mac, [2, 0, 0, 0, 0, 1]);
            assert_eq!(snap.link(d0.ifindex), Some(&d0));
            assert_eq!(by_name("lo").mac, [0; 6]);

            let route = |dst: &str, prefix_len, ifindex, metric| Route {
                dst: dst.parse().unwrap(),
                prefix_len,
                ifindex,
                gateway: None,
                metric,
            };
            let mut routes = snap.routes.routes.clone();
            routes.sort_by_key(|r| (r.dst, r.prefix_len));
            assert_eq!(
                routes,
                vec![
                    route("0.0.0.0", 0, d1.ifindex, 0),
                    route("192.0.2.0", 24, d0.ifindex, 0),
                    route("198.51.100.0", 24, d1.ifindex, 0),
                    route("203.0.113.128", 25, d0.ifindex, 50),
                ],
                "main-table unicast routes only (no table 100, no blackhole, no local)"
            );

            assert_eq!(
                addresses_on(&nl, &[d0.ifindex, d1.ifindex]).await,
                vec![
                    addr(d0.ifindex, "192.0.2.1", 24, false),
                    addr(d0.ifindex, "192.0.2.2", 24, false),
                    addr(d1.ifindex, "198.51.100.1", 24, false),
                ]
            );
            assert_eq!(snap.addresses, nl.addresses().await.unwrap());

            // Concurrent callers (clones share the socket) take turns
            // instead of getting EBUSY.
            let other = nl.clone();
            let (a, b, c) = futures::join!(nl.routes(), other.links(), nl.addresses());
            assert_eq!(a.unwrap(), snap.routes);
            assert_eq!(b.unwrap(), snap.links);
            assert_eq!(c.unwrap(), snap.addresses);
        });
    }

    #[test]
    fn add_vip_marks_it_and_is_idempotent() {
        in_netns(|| async {
            iface("d0");
            ip("addr add 192.0.2.1/24 dev d0");
            let nl = Netlink::new().unwrap();
            let d0 = ifindex(&nl, "d0").await;
            let v = vip("192.0.2.100");
            let placement = place(&nl, v).await;
            assert_eq!(
                placement,
                Placement {
                    ifindex: d0,
                    prefix_len: 24
                }
            );

            nl.add_vip(v, placement).await.unwrap();
            nl.add_vip(v, placement).await.unwrap();

            assert_eq!(
                addresses_on(&nl, &[d0]).await,
                vec![
                    addr(d0, "192.0.2.1", 24, false),
                    addr(d0, "192.0.2.100", 24, true)
                ]
            );
            let shown = ip("-4 addr show dev d0");
            let line = shown
                .lines()
                .find(|l| l.contains("192.0.2.100/24"))
                .unwrap_or_else(|| panic!("ip addr does not show the VIP:\n{shown}"));
            assert!(!line.contains("brd"), "VIP added with a broadcast: {line}");
        });
    }

    #[test]
    fn remove_vip_only_removes_marked_addresses() {
        in_netns(|| async {
            iface("d0");
            ip("addr add 192.0.2.1/24 dev d0");
            ip("addr add 192.0.2.50/24 dev d0"); // the operator's, equal to a VIP
            let nl = Netlink::new().unwrap();
            let d0 = ifindex(&nl, "d0").await;

            let operator = addr(d0, "192.0.2.50", 24, false);
            assert!(matches!(
                nl.remove_vip(&operator).await,
                Err(NetError::NotOwned { .. })
            ));
            // A caller with a stale or wrong idea of ownership is stopped
            // by the fresh dump.
            let forged = Address {
                owned: true,
                ..operator.clone()
            };
            assert!(matches!(
                nl.remove_vip(&forged).await,
                Err(NetError::NotOwned { .. })
            ));
            assert!(addresses_on(&nl, &[d0]).await.contains(&operator));
            assert!(ip("-4 addr show dev d0").contains("192.0.2.50/24"));

            let v = vip("192.0.2.100");
            nl.add_vip(v, place(&nl, v).await).await.unwrap();
            let marked = addr(d0, "192.0.2.100", 24, true);
            assert!(addresses_on(&nl, &[d0]).await.contains(&marked));
            nl.remove_vip(&marked).await.unwrap();
            assert_eq!(
                addresses_on(&nl, &[d0]).await,
                vec![addr(d0, "192.0.2.1", 24, false), operator]
            );
            assert!(!ip("-4 addr show dev d0").contains("192.0.2.100"));

            nl.remove_vip(&marked).await.unwrap(); // already gone
        });
    }

    #[test]
    fn remove_all_marked_leaves_operator_addresses() {
        in_netns(|| async {
            iface("d0");
            ip("addr add 192.0.2.1/24 dev d0");
            ip("addr add 192.0.2.50/24 dev d0");
            iface("d1");
            ip("route add 198.51.100.0/24 dev d1");
            let nl = Netlink::new().unwrap();
            let (d0, d1) = (ifindex(&nl, "d0").await, ifindex(&nl, "d1").await);
            for v in ["192.0.2.100", "192.0.2.101", "198.51.100.100"] {
                let v = vip(v);
                nl.add_vip(v, place(&nl, v).await).await.unwrap();
            }
            // Added after the VIP, so the VIP is its subnet's primary: the
            // cleanup must not take this one down with it.
            ip("addr add 198.51.100.1/24 dev d1");
            disable_promote("d1");

            let mut removed = nl.remove_all_marked().await.unwrap();
            removed.sort_by_key(|a| a.addr);
            assert_eq!(
                removed,
                vec![
                    addr(d0, "192.0.2.100", 24, true),
                    addr(d0, "192.0.2.101", 24, true),
                    addr(d1, "198.51.100.100", 24, true),
                ]
            );
            assert_eq!(
                addresses_on(&nl, &[d0, d1]).await,
                vec![
                    addr(d0, "192.0.2.1", 24, false),
                    addr(d0, "192.0.2.50", 24, false),
                    addr(d1, "198.51.100.1", 24, false),
                ]
            );
            assert_eq!(nl.remove_all_marked().await.unwrap(), vec![]);
        });
    }

    #[test]
    fn monitor_reports_address_and_link_changes() {
        in_netns(|| async {
            iface("d0");
            ip("addr add 192.0.2.1/24 dev d0");
            iface("d1");
            let nl = Netlink::new().unwrap();
            let v = vip("192.0.2.100");
            nl.add_vip(v, place(&nl, v).await).await.unwrap();

            let mut events = monitor().unwrap();
            // veth carrier changes reach netlink late (linkwatch): let
            // them pass; no address changed after the subscription.
            let mut late = Vec::new();
            while let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_millis(300), events.recv()).await
            {
                late.push(event);
                assert!(late.len() < 1000, "events keep coming: {late:?}");
            }
            assert!(!late.contains(&NetEvent::Address), "{late:?}");

            ip("addr del 192.0.2.100/24 dev d0");
            expect_event(&mut events, NetEvent::Address, Duration::from_secs(1)).await;
            ip("link set d0 down");
            expect_event(&mut events, NetEvent::Link, Duration::from_secs(1)).await;
            ip("route add 198.51.100.0/24 dev d1");
            expect_event(&mut events, NetEvent::Route, Duration::from_secs(1)).await;
        });
    }

    /// The lines `ip` prints for one address (the address line and the
    /// lifetime line after it).
    fn addr_lines(ifname: &str, cidr: &str) -> Option<String> {
        let shown = ip(&format!("-4 addr show dev {ifname}"));
        let lines: Vec<&str> = shown.lines().collect();
        let i = lines
            .iter()
            .position(|l| l.contains(&format!("inet {cidr} ")))?;
        Some(lines[i..(i + 2).min(lines.len())].join("\n"))
    }

    #[test]
    fn lifetimes_are_set_renewed_with_the_mark_and_expire() {
        in_netns(|| async {
            iface("d0");
            ip("addr add 192.0.2.1/24 dev d0");
            let nl = Netlink::new().unwrap();
            let d0 = ifindex(&nl, "d0").await;
            let v = vip("192.0.2.100");
            let p = place(&nl, v).await;
            let mut events = monitor().unwrap();
            nl.add_vip_for(v, p, Some(3)).await.unwrap();
            let shown = addr_lines("d0", "192.0.2.100/24").expect("VIP shown");
            assert!(
                shown.contains("dynamic") && shown.contains("valid_lft 3sec preferred_lft 3sec"),
                "{shown}"
            );
            expect_event(&mut events, NetEvent::OwnAddress, Duration::from_secs(1)).await;
            tokio::time::sleep(Duration::from_millis(1100)).await;
            nl.renew_vip(v, p, 3).await.unwrap();
            let shown = addr_lines("d0", "192.0.2.100/24").expect("VIP shown");
            assert!(shown.contains("valid_lft 3sec"), "renewed: {shown}");
            assert!(
                addresses_on(&nl, &[d0])
                    .await
                    .contains(&addr(d0, "192.0.2.100", 24, true)),
                "the renewal kept vipd's mark"
            );
            // A renewal is vipd's own event, never a plain Address one.
            let mut seen = Vec::new();
            while let Ok(Some(e)) =
                tokio::time::timeout(Duration::from_millis(200), events.recv()).await
            {
                seen.push(e);
            }
            assert!(seen.contains(&NetEvent::OwnAddress), "{seen:?}");
            assert!(!seen.contains(&NetEvent::Address), "{seen:?}");
            // Left alone, it leaves by itself.
            nl.renew_vip(v, p, 1).await.unwrap();
            let renewed = std::time::Instant::now();
            expect_event(&mut events, NetEvent::Address, Duration::from_secs(3)).await;
            let gone = renewed.elapsed();
            assert!(addr_lines("d0", "192.0.2.100/24").is_none());
            assert!(gone >= Duration::from_millis(900), "gone after {gone:?}");
            eprintln!("a VIP with valid_lft 1 was gone {gone:?} after its last renewal");
        });
    }

    #[test]
    fn promote_secondaries_keeps_the_operators_address() {
        in_netns(|| async {
            // The hazard first: with the default, deleting the primary VIP
            // takes the operator's secondary with it.
            iface("d1");
            ip("route add 198.51.100.0/24 dev d1");
            disable_promote("d1");
            let nl = Netlink::new().unwrap();
            let d1 = ifindex(&nl, "d1").await;
            let v = vip("198.51.100.100");
            nl.add_vip(v, place(&nl, v).await).await.unwrap();
            ip("addr add 198.51.100.1/24 dev d1");
            ip("addr del 198.51.100.100/24 dev d1");
            assert_eq!(addresses_on(&nl, &[d1]).await, vec![]);

            iface("d0");
            ip("route add 192.0.2.0/24 dev d0");
            let d0 = ifindex(&nl, "d0").await;
            let v = vip("192.0.2.100");
            nl.add_vip(v, place(&nl, v).await).await.unwrap();
            ip("addr add 192.0.2.1/24 dev d0");
            disable_promote("d0");
            enable_promote_secondaries("d0").unwrap();
            assert_eq!(read_promote("d0"), "1");
            nl.remove_vip(&addr(d0, "192.0.2.100", 24, true))
                .await
                .unwrap();
            assert_eq!(
                addresses_on(&nl, &[d0]).await,
                vec![addr(d0, "192.0.2.1", 24, false)]
            );
        });
    }

    #[test]
    fn remove_vip_enables_promotion_itself_when_needed() {
        in_netns(|| async {
            iface("d0");
            ip("route add 192.0.2.0/24 dev d0");
            let nl = Netlink::new().unwrap();
            let d0 = ifindex(&nl, "d0").await;
            let v = vip("192.0.2.100");
            nl.add_vip(v, place(&nl, v).await).await.unwrap();
            ip("addr add 192.0.2.1/24 dev d0");
            disable_promote("d0");
            nl.remove_vip(&addr(d0, "192.0.2.100", 24, true))
                .await
                .unwrap();
            assert_eq!(read_promote("d0"), "1");
            assert_eq!(
                addresses_on(&nl, &[d0]).await,
                vec![addr(d0, "192.0.2.1", 24, false)]
            );
        });
    }

    #[test]
    fn bad_interface_names_never_reach_the_filesystem() {
        for name in ["", ".", "..", "../all", "a/b", "sixteen-chars-xx"] {
            assert!(
                matches!(
                    enable_promote_secondaries(name),
                    Err(NetError::InvalidInterfaceName { .. })
                ),
                "{name:?}"
            );
        }
    }

    #[test]
    fn needs_a_runtime() {
        assert!(matches!(Netlink::new(), Err(NetError::NoRuntime)));
        assert!(matches!(monitor(), Err(NetError::NoRuntime)));
    }

    #[test]
    fn events_map_from_messages() {
        let address = NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(
            AddressMessage::default(),
        ));
        assert_eq!(event_of(&address), Some(NetEvent::Address));
        assert_eq!(
            event_of(&NetlinkPayload::Overrun(Vec::new())),
            Some(NetEvent::Overrun)
        );
        let link =
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(LinkMessage::default()));
        assert_eq!(event_of(&link), Some(NetEvent::Link));
        let route =
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(RouteMessage::default()));
        assert_eq!(event_of(&route), Some(NetEvent::Route));
        assert_eq!(event_of(&NetlinkPayload::Noop), None);
    }
}
