//! A host of the lab: a namespace with its interfaces, each plugged into
//! one of the lab's bridges.

use std::net::Ipv6Addr;
use std::ops::Deref;
use std::sync::Arc;

use super::netns::Netns;

/// A host of the lab: its namespace plus its interfaces. Cheap to clone.
/// Derefs to [`Netns`] for `exec`, `spawn`, `in_netns`, captures, probes.
#[derive(Clone)]
pub struct Host {
    pub(super) inner: Arc<HostInner>,
}

pub(super) struct HostInner {
    pub(super) netns: Netns,
    pub(super) ifaces: Vec<HostIface>,
}

pub(super) struct HostIface {
    pub(super) ifname: String,
    pub(super) bridge: usize,
    pub(super) peer: String,
}

impl Deref for Host {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.inner.netns
    }
}

impl Host {
    /// The host name given to `add_host` (`n1`).
    pub fn name(&self) -> &str {
        &self.inner.netns.label
    }

    /// The `ip netns` name (`<prefix>-n1`), e.g. to run vipd in.
    pub fn netns(&self) -> &str {
        &self.inner.netns.ns
    }

    /// Name of the bridge-side veth end of `ifname` (in the bridge namespace).
    pub fn peer_name(&self, ifname: &str) -> &str {
        &self.iface(ifname).peer
    }

    /// Which bridge (index into [`BRIDGES`](super::BRIDGES)) `ifname` plugs into.
    pub fn bridge_of(&self, ifname: &str) -> usize {
        self.iface(ifname).bridge
    }

    pub(super) fn iface(&self, ifname: &str) -> &HostIface {
        self.inner
            .ifaces
            .iter()
            .find(|i| i.ifname == ifname)
            .unwrap_or_else(|| panic!("host {} has no lab interface {ifname}", self.name()))
    }

    /// Sets the host's own end admin up or down. Down removes its routes, keeps
    /// its addresses, and the bridge-side peer then loses carrier.
    pub fn set_link(&self, ifname: &str, up: bool) {
        self.ip(&["link", "set", ifname, if up { "up" } else { "down" }]);
    }

    /// `set_link(ifname, false)`.
    pub fn link_down(&self, ifname: &str) {
        self.set_link(ifname, false);
    }

    /// `set_link(ifname, true)`.
    pub fn link_up(&self, ifname: &str) {
        self.set_link(ifname, true);
    }

    /// `ip route add default via <gateway>`.
    pub fn add_default_route(&self, gateway: &str) {
        self.ip(&["route", "add", "default", "via", gateway]);
    }

    /// `ip -6 route add default via <gateway> dev <ifname>`.
    pub fn add_default_route6(&self, gateway: &str, ifname: &str) {
        self.ip(&[
            "-6", "route", "add", "default", "via", gateway, "dev", ifname,
        ]);
    }

    /// `ip -6 addr add <cidr> dev <ifname> nodad`: the lab's own IPv6
    /// addresses skip DAD, so a test never waits for them to leave
    /// `tentative`. Only 2001:db8::/32 (the lab's range) is accepted.
    pub fn add_addr6(&self, ifname: &str, cidr: &str) {
        let addr: Ipv6Addr = cidr
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{cidr}: not an IPv6 address/prefix"));
        assert!(
            addr.segments()[..2] == [0x2001, 0x0db8],
            "{cidr}: lab IPv6 addresses come from 2001:db8::/32 only"
        );
        self.ip(&["-6", "addr", "add", cidr, "dev", ifname, "nodad"]);
    }

    /// `ip addr add <cidr> dev <ifname>`.
    pub fn add_addr(&self, ifname: &str, cidr: &str) {
        self.ip(&["addr", "add", cidr, "dev", ifname]);
    }

    /// `ip addr del <cidr> dev <ifname>`.
    pub fn del_addr(&self, ifname: &str, cidr: &str) {
        self.ip(&["addr", "del", cidr, "dev", ifname]);
    }
}
