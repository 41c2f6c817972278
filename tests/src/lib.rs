//! The lab for vipd's integration tests: network namespaces, processes, and
//! a real ZooKeeper server.

pub mod chaos;
pub mod cluster;
pub mod draw;
pub mod iscsi;
pub mod lab;
pub mod probe;
pub mod services;
pub mod tickle;
pub mod vipd;
pub mod zk;
