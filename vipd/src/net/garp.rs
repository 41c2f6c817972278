//! Gratuitous ARP (R9): the frames that tell a segment where a VIP lives,
//! and an AF_PACKET sender for them.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// Which form of gratuitous ARP to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GarpMode {
    /// Request form, as `arping -U` and keepalived: tha ff:ff:ff:ff:ff:ff.
    Request,
    /// Reply form, as `arping -A`: tha = our MAC.
    Reply,
    /// Both, request first.
    Both,
}

// HELPER-B: frame building (pnet_packet) and the AF_PACKET sender go here.
