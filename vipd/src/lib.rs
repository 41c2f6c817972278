//! vipd: keeps virtual IPs on exactly one node of a cluster.
//!
//! Facts come in (ZooKeeper in `coord`, netlink in `net`, XDP counters in
//! `xdp`), a pure planner decides (`reconcile::plan`), executors act
//! (netlink writes, `announce`, XDP map updates); `engine` owns the VIP
//! state and runs the passes.

pub mod announce;
pub mod api;
pub mod config;
pub mod connections;
pub mod coord;
pub mod daemon;
pub(crate) mod engine;
pub(crate) mod health;
pub(crate) mod hooks;
pub mod instance;
pub mod metrics;
pub(crate) mod names;
pub mod net;
pub(crate) mod reconcile;
pub mod role;
pub mod sandbox;
pub mod shell;
pub mod vip;
pub mod xdp;
