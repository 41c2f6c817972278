//! The writes: adding and renewing a VIP with vipd's mark, and removing
//! one under the ownership policy (only what carries this instance's mark,
//! checked against a fresh dump, with the secondaries guarded).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtnetlink::{
    AddressMessageBuilder,
    packet_route::address::{AddressAttribute, AddressMessage, AddressProtocol, CacheInfo},
};
use tracing::{debug, instrument, warn};

use super::{
    NetError, Netlink,
    parse::{address_of, guards_secondaries_now, is_marked, is_secondary, vip6_flags},
    transport::{bounded, errno},
};
use crate::{
    net::{Address, Placement, sysctl::enable_promote_secondaries},
    vip::Vip,
};

impl Netlink {
    /// Adds the VIP with vipd's mark (IFA_PROTO) and no broadcast address,
    /// as plain `ip addr add X/len dev if` would; already there = Ok. The
    /// address is permanent. An IPv6 VIP is added with IFA_F_NODAD (usable
    /// at once, never `tentative`) and IFA_F_NOPREFIXROUTE (the route that
    /// placed it is already there; a VIP adds none of its own).
    pub async fn add_vip(&self, vip: Vip, placement: Placement) -> Result<(), NetError> {
        self.add_vip_for(vip, placement, None).await
    }

    /// [`Netlink::add_vip`] with a valid and preferred lifetime of
    /// `lifetime` seconds: the address carries the lease, so the kernel
    /// removes it by itself (from a killed or frozen agent too) unless
    /// [`Netlink::renew_vip`] comes first. `None`: permanent.
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
        let current = self.dump_to_check(std::slice::from_ref(address)).await?;
        self.remove_checked(address, &current).await
    }

    /// Removes several addresses vipd added, with the checks of
    /// [`Netlink::remove_vip`] made against one fresh dump instead of one
    /// per address (stepping down from 1000 VIPs stays linear). Returns each
    /// address with its outcome, in the order given.
    #[instrument(skip_all, fields(count = addresses.len()))]
    pub(crate) async fn remove_vips(
        &self,
        addresses: &[Address],
    ) -> Vec<(Address, Result<(), NetError>)> {
        if let [one] = addresses {
            return vec![(one.clone(), self.remove_vip(one).await)];
        }
        let shared = self.dump_to_check(addresses).await;
        let mut out = Vec::with_capacity(addresses.len());
        for address in addresses {
            let result = match &shared {
                Ok(current) => self.remove_checked(address, current).await,
                // One at a time then: each names its own failure.
                Err(_) => self.remove_vip(address).await,
            };
            out.push((address.clone(), result));
        }
        out
    }

    /// The fresh dump the ownership checks of `addresses` are made against;
    /// none is asked for when no address is claimed as vipd's, since those
    /// are refused unseen.
    async fn dump_to_check(&self, addresses: &[Address]) -> Result<Vec<AddressMessage>, NetError> {
        if addresses.iter().any(|a| a.owned) {
            self.address_messages().await
        } else {
            Ok(Vec::new())
        }
    }

    /// The ownership policy, the one place it is decided: `address` is
    /// removed only if it is claimed as vipd's and the kernel's copy in
    /// `current` (a fresh dump) carries this instance's mark; removing a
    /// subnet's primary turns on `promote_secondaries` first.
    async fn remove_checked(
        &self,
        address: &Address,
        current: &[AddressMessage],
    ) -> Result<(), NetError> {
        let not_owned = || NetError::NotOwned {
            addr: address.addr,
            prefix_len: address.prefix_len,
            ifindex: address.ifindex,
        };
        if !address.owned {
            return Err(not_owned());
        }
        let Some(kernel) = current.iter().find(|m| {
            address_of(m, self.mark).is_some_and(|a| {
                a.ifindex == address.ifindex
                    && a.addr == address.addr
                    && a.prefix_len == address.prefix_len
            })
        }) else {
            debug!(addr = %address.addr, "address already gone");
            return Ok(());
        };
        if !is_marked(kernel, self.mark) {
            warn!(addr = %address.addr, "address equal to a VIP is not vipd's; leaving it");
            return Err(not_owned());
        }
        if guards_secondaries_now(kernel, current) {
            let ifname = self.link_name(address.ifindex).await?;
            enable_promote_secondaries(&ifname)?;
        }
        self.delete(address).await
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
}
