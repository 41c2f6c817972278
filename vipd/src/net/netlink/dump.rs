//! The reads: links, the main routing tables and every address, each one
//! dump bounded by the request timeout, one dump at a time per connection.

use std::net::{Ipv4Addr, Ipv6Addr};

use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::AddressMessage,
        link::LinkMessage,
        route::{RouteMessage, RouteProtocol, RouteType},
    },
};
use tracing::instrument;

use super::{
    NetError, Netlink,
    parse::{address_of, link_of, main_unicast_route},
    transport::{bounded, errno},
};
use crate::net::{Address, Link, RT_TABLE_MAIN, RouteTable};

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

impl Netlink {
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

    pub(super) async fn address_messages(&self) -> Result<Vec<AddressMessage>, NetError> {
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

    /// The name of the interface with `ifindex`, asked of the kernel now.
    pub(super) async fn link_name(&self, ifindex: u32) -> Result<String, NetError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
