//! Talks to the kernel over rtnetlink: dumps links, the main IPv4 and IPv6
//! routes and every address of both families; adds and removes VIPs with
//! vipd's mark; and streams address, route and link events on a connection
//! of their own.

use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    AddressMessageBuilder, Handle, MulticastGroup, RouteMessageBuilder,
    packet_core::NetlinkPayload,
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        address::{AddressAttribute, AddressFlags, AddressMessage, AddressProtocol, CacheInfo},
        link::{LinkAttribute, LinkFlags, LinkMessage},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType},
    },
    sys::AsyncSocket,
};
use tokio::sync::mpsc;
use tracing::{debug, instrument, warn};

use super::{
    AddrState, Address, Link, Placement, RT_TABLE_MAIN, Route, RouteTable, VIPD_ADDR_PROTO,
};
use crate::vip::Vip;

/// How many events may wait for the consumer before the monitor waits too;
/// the consumer re-dumps on any event, so a deep queue buys nothing.
const EVENT_QUEUE: usize = 1024;

/// Receive buffer asked for the event socket (the kernel caps it at
/// `rmem_max`): a burst of thousands of VIP changes should not overrun it.
const EVENT_RCVBUF: usize = 4 << 20;

/// How long one request (an add, a delete, a renewal, or a whole dump)
/// may wait for the kernel's answer. The kernel answers under the RTNL lock
/// in microseconds, a dump of tens of thousands of addresses in tens of
/// milliseconds; no answer within a second means the kernel (or whoever
/// holds that lock) is stuck. The engine then fails the pass, reports the
/// request, and retries, instead of hanging until its leader hands over.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

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

/// `request` bounded by [`REQUEST_TIMEOUT`]; on a timeout the error names
/// the request with `what` (only built then). Dropping the request is safe:
/// a late answer is discarded, and the next pass's dump sees whatever the
/// kernel did meanwhile.
async fn bounded<T>(
    what: impl FnOnce() -> String,
    request: impl Future<Output = Result<T, NetError>>,
) -> Result<T, NetError> {
    bounded_by(REQUEST_TIMEOUT, what, request).await
}

async fn bounded_by<T>(
    after: Duration,
    what: impl FnOnce() -> String,
    request: impl Future<Output = Result<T, NetError>>,
) -> Result<T, NetError> {
    match tokio::time::timeout(after, request).await {
        Ok(result) => result,
        Err(_) => Err(NetError::Timeout {
            request: what(),
            after,
        }),
    }
}

/// The kernel's errno in a netlink error reply, positive, if that is what
/// `e` is.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// Links, the main routing tables and the addresses (both families), read
/// together.
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
    /// The ownership mark (IFA_PROTO) this instance's addresses carry:
    /// the only addresses it ever removes.
    mark: u8,
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
            mark: VIPD_ADDR_PROTO,
            dump_turn: Arc::default(),
        })
    }

    /// The same connection, adding and removing addresses with ownership
    /// mark `mark` (a named instance's) instead of the default one.
    #[must_use]
    pub fn with_mark(mut self, mark: u8) -> Self {
        self.mark = mark;
        self
    }

    /// The ownership mark of the addresses this connection adds.
    pub fn mark(&self) -> u8 {
        self.mark
    }

    /// [`monitor`] for this connection's mark: its own addresses' events
    /// come as [`NetEvent::OwnAddress`].
    pub fn monitor(&self) -> Result<mpsc::Receiver<NetEvent>, NetError> {
        monitor_marked(self.mark)
    }

    /// All links: ifindex, name, MAC (zero if none) and whether usable.
    #[instrument(level = "debug", skip(self), err)]
    pub async fn links(&self) -> Result<Vec<Link>, NetError> {
        let dump = |source| NetError::Dump {
            what: "links",
            source,
        };
        let _turn = self.dump_turn.lock().await;
        let messages: Vec<LinkMessage> = bounded(|| "dumping links".to_string(), async {
            self.handle
                .link()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(dump)
        })
        .await?;
        Ok(messages.iter().map(link_of).collect())
    }

    /// The main table's unicast routes, IPv4 then IPv6.
    #[instrument(level = "debug", skip(self), err)]
    pub async fn routes(&self) -> Result<RouteTable, NetError> {
        // The builder's defaults (protocol static, kind unicast) are dump
        // filters under strict checking: clear them to get every route of
        // the main table (docs/DESIGN.md, facts).
        let v4 = RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(RT_TABLE_MAIN)
            .protocol(RouteProtocol::Unspec)
            .kind(RouteType::Unspec)
            .build();
        let v6 = RouteMessageBuilder::<Ipv6Addr>::new()
            .table_id(RT_TABLE_MAIN)
            .protocol(RouteProtocol::Unspec)
            .kind(RouteType::Unspec)
            .build();
        let mut routes = Vec::new();
        for (what, request) in [("IPv4 routes", v4), ("IPv6 routes", v6)] {
            let _turn = self.dump_turn.lock().await;
            let messages: Vec<RouteMessage> = bounded(|| format!("dumping {what}"), async {
                self.handle
                    .route()
                    .get(request)
                    .execute()
                    .try_collect()
                    .await
                    .map_err(|source| NetError::Dump { what, source })
            })
            .await?;
            routes.extend(messages.iter().filter_map(main_unicast_route));
        }
        Ok(RouteTable::new(routes))
    }

    /// Every address of both families, primary and secondary, in the
    /// kernel's order (IPv4 first).
    #[instrument(level = "debug", skip(self), err)]
    pub async fn addresses(&self) -> Result<Vec<Address>, NetError> {
        Ok(self
            .address_messages()
            .await?
            .iter()
            .filter_map(|m| address_of(m, self.mark))
            .collect())
    }

    async fn address_messages(&self) -> Result<Vec<AddressMessage>, NetError> {
        let mut out = Vec::new();
        for (what, family) in [
            ("IPv4 addresses", AddressFamily::Inet),
            ("IPv6 addresses", AddressFamily::Inet6),
        ] {
            let mut request = self.handle.address().get();
            request.message_mut().header.family = family;
            let _turn = self.dump_turn.lock().await;
            let messages: Vec<AddressMessage> = bounded(|| format!("dumping {what}"), async {
                request
                    .execute()
                    .try_collect()
                    .await
                    .map_err(|source| NetError::Dump { what, source })
            })
            .await?;
            out.extend(messages);
        }
        Ok(out)
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
    /// address is permanent. An IPv6 VIP is added with IFA_F_NODAD (usable
    /// at once, never `tentative`) and IFA_F_NOPREFIXROUTE (the route that
    /// placed it is already there; a VIP adds none of its own).
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
        let request = || {
            format!(
                "adding VIP {vip}/{} on ifindex {}",
                placement.prefix_len, placement.ifindex
            )
        };
        let written = bounded(request, async {
            Ok(self.write_vip(vip, placement, lifetime, false).await)
        })
        .await?;
        match written {
            Ok(()) => {
                debug!(vip = %vip, ifindex = placement.ifindex, prefix_len = placement.prefix_len, "VIP added");
                Ok(())
            }
            // The kernel answers EEXIST for the same address and prefix on
            // the same interface (IPv6: for the same address there, whatever
            // its prefix; the planner removes a copy with another prefix
            // first): the VIP is where it belongs.
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
        let request = || {
            format!(
                "renewing VIP {vip}/{} on ifindex {}",
                placement.prefix_len, placement.ifindex
            )
        };
        bounded(request, async {
            Ok(self.write_vip(vip, placement, Some(lifetime), true).await)
        })
        .await?
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
                .add(placement.ifindex, vip.ip(), placement.prefix_len);
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
                self.mark,
            )));
        if vip.is_ipv6() {
            // Sent on every write: a replace resets these flags to what the
            // request carries (inet6_addr_modify).
            message
                .attributes
                .push(AddressAttribute::Flags(vip6_flags()));
        }
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
    /// operator's) along with it (docs/DESIGN.md, facts). If that fails, nothing is removed.
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
            address_of(m, self.mark).is_some_and(|a| {
                a.ifindex == address.ifindex
                    && a.addr == address.addr
                    && a.prefix_len == address.prefix_len
            })
        }) else {
            debug!("address already gone");
            return Ok(());
        };
        if !is_marked(kernel, self.mark) {
            warn!("address equal to a VIP is not vipd's; leaving it");
            return Err(not_owned());
        }
        if guards_secondaries_now(kernel, &current) {
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
                address_of(m, self.mark).is_some_and(|a| {
                    a.ifindex == address.ifindex
                        && a.addr == address.addr
                        && a.prefix_len == address.prefix_len
                })
            });
            let result = match kernel {
                None => Ok(()),
                Some(k) if !is_marked(k, self.mark) => {
                    warn!(addr = %address.addr, "address equal to a VIP is not vipd's; leaving it");
                    Err(not_owned())
                }
                Some(k) => {
                    let guard = if guards_secondaries_now(k, &current) {
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

    /// Removes every marked address (both families) on every interface; returns what
    /// it removed. Keeps going past a failure and reports all of them.
    #[instrument(skip(self), err)]
    pub async fn remove_all_marked(&self) -> Result<Vec<Address>, NetError> {
        let mut marked: Vec<(Address, bool)> = self
            .address_messages()
            .await?
            .iter()
            .filter_map(|m| {
                let a = address_of(m, self.mark)?;
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
        let mut message = match address.addr {
            IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
                .index(address.ifindex)
                .address(a, address.prefix_len)
                .build(),
            IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
                .index(address.ifindex)
                .address(a, address.prefix_len)
                .build(),
        };
        // The kernel matches a delete on local address, prefix and peer; a
        // broadcast attribute is not needed to name the address.
        message
            .attributes
            .retain(|a| !matches!(a, AddressAttribute::Broadcast(_)));
        let request = || {
            format!(
                "removing address {}/{} from ifindex {}",
                address.addr, address.prefix_len, address.ifindex
            )
        };
        let deleted = bounded(request, async {
            Ok(self.handle.address().del(message).execute().await)
        })
        .await?;
        match deleted {
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
        let first = bounded(
            || format!("looking up the interface with ifindex {ifindex}"),
            async { Ok(links.next().await) },
        )
        .await?;
        match first {
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

/// IFA_FLAGS of every IPv6 VIP: no DAD, no prefix route of its own.
fn vip6_flags() -> AddressFlags {
    AddressFlags::Nodad | AddressFlags::Noprefixroute
}

/// A main-table unicast route of either family. The IPv6 main table also
/// holds the kernel's link-local prefixes (`fe80::/64`, harmless: no VIP
/// is link-local); local, multicast and anycast routes live in the local
/// table or have other types and are skipped.
fn main_unicast_route(message: &RouteMessage) -> Option<Route> {
    let mut dst = match message.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    if message.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(message.header.table);
    let mut ifindex = 0;
    let mut gateway = None;
    let mut metric = 0;
    for attribute in &message.attributes {
        match attribute {
            // The header holds only 8 bits of the table id.
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) if dst.is_ipv4() => {
                dst = IpAddr::V4(*a);
            }
            RouteAttribute::Destination(RouteAddress::Inet6(a)) if dst.is_ipv6() => {
                dst = IpAddr::V6(*a);
            }
            RouteAttribute::Oif(i) => ifindex = *i,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gateway = Some(IpAddr::V6(*g)),
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

fn address_of(message: &AddressMessage, mark: u8) -> Option<Address> {
    let v6 = match message.header.family {
        AddressFamily::Inet => false,
        AddressFamily::Inet6 => true,
        _ => return None,
    };
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
    // point-to-point links and equal to it elsewhere (IPv6 sends IFA_LOCAL
    // only on point-to-point links).
    let mut local = None;
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(a) if a.is_ipv6() == v6 => local = Some(*a),
            AddressAttribute::Address(a) if a.is_ipv6() == v6 => address = Some(*a),
            _ => {}
        }
    }
    let addr = local.or(address)?;
    Some(Address {
        ifindex: message.header.index,
        addr,
        prefix_len: message.header.prefix_len,
        owned: is_marked(message, mark),
        state: state_of(&flags_of(message)),
        // The same bit means a temporary address in IPv6.
        secondary: addr.is_ipv4() && is_secondary(message),
    })
}

/// The address's flags: IFA_FLAGS (32 bits) when present, else the
/// header's 8-bit copy.
fn flags_of(message: &AddressMessage) -> AddressFlags {
    message
        .attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Flags(f) => Some(*f),
            _ => None,
        })
        .unwrap_or_else(|| AddressFlags::from_bits_retain(u32::from(message.header.flags.bits())))
}

fn state_of(flags: &AddressFlags) -> AddrState {
    if flags.contains(AddressFlags::Dadfailed) {
        AddrState::DadFailed
    } else if flags.contains(AddressFlags::Tentative) {
        if flags.contains(AddressFlags::Nodad) {
            AddrState::AwaitingLink
        } else {
            AddrState::Tentative
        }
    } else {
        AddrState::Usable
    }
}

fn is_marked(message: &AddressMessage, mark: u8) -> bool {
    message
        .attributes
        .iter()
        .any(|a| matches!(a, AddressAttribute::Protocol(p) if u8::from(*p) == mark))
}

fn is_secondary(message: &AddressMessage) -> bool {
    flags_of(message).contains(AddressFlags::Secondary)
}

/// [`super::guards_secondaries`] on `all`, a dump fresher than the plan's:
/// the removal is checked again right before it is made, so an address
/// added since the plan is guarded too.
fn guards_secondaries_now(message: &AddressMessage, all: &[AddressMessage]) -> bool {
    // Ownership plays no part here: any mark does.
    let Some(this) = address_of(message, VIPD_ADDR_PROTO) else {
        return false;
    };
    let all: Vec<Address> = all
        .iter()
        .filter_map(|m| address_of(m, VIPD_ADDR_PROTO))
        .collect();
    super::guards_secondaries(&this, &all)
}

fn event_of(payload: &NetlinkPayload<RouteNetlinkMessage>, mark: u8) -> Option<NetEvent> {
    match payload {
        NetlinkPayload::Overrun(_) => Some(NetEvent::Overrun),
        NetlinkPayload::InnerMessage(message) => match message {
            RouteNetlinkMessage::NewAddress(m) if is_marked(m, mark) => Some(NetEvent::OwnAddress),
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

/// Subscribes (own socket) to link, address and route events (both
/// families) and
/// forwards one [`NetEvent`] per message; [`NetEvent::Overrun`] on ENOBUFS.
/// Spawns on the current runtime; ends when the receiver is dropped.
///
/// A link going down removes its routes without route events (docs/DESIGN.md, facts):
/// consumers re-dump routes on `Link` events too.
pub fn monitor() -> Result<mpsc::Receiver<NetEvent>, NetError> {
    monitor_marked(VIPD_ADDR_PROTO)
}

/// [`monitor`], where "own" addresses are those carrying `mark`.
pub fn monitor_marked(mark: u8) -> Result<mpsc::Receiver<NetEvent>, NetError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetError::NoRuntime)?;
    // Its own socket: the kernel does not echo events caused by requests
    // to the socket that sent them.
    let (mut conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv6Route,
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
                if let Some(event) = event_of(&message.payload, mark) {
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
/// deleting all of them (docs/DESIGN.md, facts). Affects the caller's network namespace.
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
    //! Pure: no kernel needed (the privileged tests are in tests/tests/netlink.rs).

    use rtnetlink::packet_route::address::AddressMessage;

    use super::*;

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

    /// Each kind of request, as the engine makes them, named in its timeout.
    fn requests() -> Vec<(String, &'static str)> {
        let v4 = Vip::new("192.0.2.100".parse().unwrap()).unwrap();
        let v6 = Vip::new_v6("2001:db8::100".parse().unwrap()).unwrap();
        let mut out = Vec::new();
        for (vip, len) in [(v4, 24u8), (v6, 64)] {
            for ifindex in [1u32, 3, 4096] {
                out.push((
                    format!("adding VIP {vip}/{len} on ifindex {ifindex}"),
                    "adding VIP",
                ));
                out.push((
                    format!("renewing VIP {vip}/{len} on ifindex {ifindex}"),
                    "renewing VIP",
                ));
                out.push((
                    format!("removing address {vip}/{len} from ifindex {ifindex}"),
                    "removing address",
                ));
            }
        }
        for what in ["links", "IPv4 routes", "IPv6 routes", "IPv4 addresses"] {
            out.push((format!("dumping {what}"), "dumping"));
        }
        out
    }

    #[tokio::test]
    async fn a_request_the_kernel_never_answers_times_out_naming_it() {
        let after = Duration::from_millis(20);
        for (request, kind) in requests() {
            let named = request.clone();
            let never = std::future::pending::<Result<(), NetError>>();
            let e = bounded_by(after, move || named, never).await.unwrap_err();
            assert!(
                matches!(&e, NetError::Timeout { request: r, after: a } if *r == request && *a == after),
                "{e:?}"
            );
            let text = e.to_string();
            assert!(
                text.starts_with(&request) && text.contains(kind) && text.contains("20ms"),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn an_answer_within_the_bound_passes_through() {
        let ok = bounded(|| unreachable!("named only on a timeout"), async {
            Ok::<_, NetError>(7)
        })
        .await;
        assert!(matches!(ok, Ok(7)));
        let refused = bounded(|| unreachable!("named only on a timeout"), async {
            Err::<(), _>(NetError::NoSuchInterface { ifindex: 9 })
        })
        .await;
        assert!(matches!(
            refused,
            Err(NetError::NoSuchInterface { ifindex: 9 })
        ));
    }

    /// Real dumps (no privilege needed) answer well within the bound.
    #[tokio::test]
    async fn real_dumps_answer_within_the_bound() {
        let nl = Netlink::new().unwrap();
        let snap = nl.snapshot().await.unwrap();
        assert!(
            snap.links.iter().any(|l| l.name == "lo"),
            "{:?}",
            snap.links
        );
    }

    #[test]
    fn events_map_from_messages() {
        let address = NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(
            AddressMessage::default(),
        ));
        assert_eq!(event_of(&address, VIPD_ADDR_PROTO), Some(NetEvent::Address));
        assert_eq!(
            event_of(&NetlinkPayload::Overrun(Vec::new()), VIPD_ADDR_PROTO),
            Some(NetEvent::Overrun)
        );
        let link =
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(LinkMessage::default()));
        assert_eq!(event_of(&link, VIPD_ADDR_PROTO), Some(NetEvent::Link));
        let route =
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(RouteMessage::default()));
        assert_eq!(event_of(&route, VIPD_ADDR_PROTO), Some(NetEvent::Route));
        assert_eq!(event_of(&NetlinkPayload::Noop, VIPD_ADDR_PROTO), None);
    }

    #[test]
    fn dad_state_comes_from_the_flags() {
        let f = |flags: AddressFlags| state_of(&flags);
        assert_eq!(f(AddressFlags::Permanent), AddrState::Usable);
        assert_eq!(f(AddressFlags::empty()), AddrState::Usable);
        assert_eq!(f(AddressFlags::Tentative), AddrState::Tentative);
        assert_eq!(
            f(AddressFlags::Tentative | AddressFlags::Nodad),
            AddrState::AwaitingLink
        );
        assert_eq!(
            f(AddressFlags::Tentative | AddressFlags::Dadfailed),
            AddrState::DadFailed
        );
        assert!(vip6_flags().contains(AddressFlags::Nodad | AddressFlags::Noprefixroute));
    }

    #[test]
    fn v6_address_messages_parse_with_their_flags_and_mark() {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet6;
        m.header.index = 3;
        m.header.prefix_len = 64;
        let ip: IpAddr = "2001:db8:1::100".parse().unwrap();
        m.attributes.push(AddressAttribute::Address(ip));
        m.attributes.push(AddressAttribute::Flags(
            AddressFlags::Tentative | AddressFlags::Dadfailed,
        ));
        m.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::Other(
                VIPD_ADDR_PROTO,
            )));
        // Another instance's mark: the same address, not ours.
        assert!(address_of(&m, 130).is_some_and(|a| !a.owned));
        assert_eq!(
            address_of(&m, VIPD_ADDR_PROTO),
            Some(Address {
                ifindex: 3,
                addr: ip,
                prefix_len: 64,
                owned: true,
                state: AddrState::DadFailed,
                secondary: false,
            })
        );
        // An IPv4 attribute in an IPv6 message is no address of it.
        m.attributes[0] = AddressAttribute::Address("192.0.2.1".parse().unwrap());
        assert_eq!(address_of(&m, VIPD_ADDR_PROTO), None);
    }

    #[test]
    fn v6_routes_parse_and_non_unicast_is_skipped() {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet6;
        m.header.kind = RouteType::Unicast;
        m.header.destination_prefix_length = 64;
        m.attributes.push(RouteAttribute::Table(RT_TABLE_MAIN));
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet6(
                "2001:db8:1::".parse().unwrap(),
            )));
        m.attributes.push(RouteAttribute::Oif(2));
        m.attributes.push(RouteAttribute::Priority(256));
        assert_eq!(
            main_unicast_route(&m),
            Some(Route {
                dst: "2001:db8:1::".parse().unwrap(),
                prefix_len: 64,
                ifindex: 2,
                gateway: None,
                metric: 256,
            })
        );
        // The default route has no destination attribute: `::`.
        let mut d = m.clone();
        d.header.destination_prefix_length = 0;
        d.attributes
            .retain(|a| !matches!(a, RouteAttribute::Destination(_)));
        d.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet6(
                "2001:db8:1::1".parse().unwrap(),
            )));
        let r = main_unicast_route(&d).unwrap();
        assert_eq!(r.dst, "::".parse::<IpAddr>().unwrap());
        assert_eq!(r.gateway, Some("2001:db8:1::1".parse().unwrap()));
        for kind in [RouteType::Local, RouteType::Multicast, RouteType::Anycast] {
            let mut x = m.clone();
            x.header.kind = kind;
            assert_eq!(main_unicast_route(&x), None, "{kind:?}");
        }
        let mut other_table = m.clone();
        other_table.attributes[0] = RouteAttribute::Table(255);
        assert_eq!(main_unicast_route(&other_table), None);
    }
}
