//! What the netlink tests of tests/tests/netlink.rs (IPv4) and
//! tests/tests/ipv6.rs (IPv6) share: a namespace of the test's own and the
//! kernel's answers about its links and routes. A module of the test
//! targets, not of the lab (tests/src): the lab does not depend on vipd,
//! and xtask, which uses the lab, would build vipd's eBPF program with it.

use std::future::Future;

use vipd::{
    net::{Placement, netlink::Netlink},
    vip::Vip,
};
use vipd_tests::lab::in_new_netns;

/// Runs `test` on a current-thread runtime in a fresh network namespace.
pub fn in_netns<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = ()>,
{
    in_new_netns(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(test())
    })
}

/// The ifindex of link `name`, from the kernel's dump.
pub async fn ifindex(nl: &Netlink, name: &str) -> u32 {
    nl.links()
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("link {name} not in the dump"))
        .ifindex
}

pub fn vip(s: &str) -> Vip {
    s.parse().unwrap()
}

/// Where the main table puts `v`.
pub async fn place(nl: &Netlink, v: Vip) -> Placement {
    nl.routes()
        .await
        .unwrap()
        .placement(v)
        .unwrap_or_else(|| panic!("no route for {v}"))
}
