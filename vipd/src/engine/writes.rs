//! Address writes of a pass (adds) or of a lease renewal (lifetime renewals),
//! several in flight at a time. One write at a time spends most of a pass
//! waiting for the netlink task and the kernel's acknowledgement in turn: at
//! a thousand VIPs that is longer than the short window after a renewal in
//! which a lifetime may still be written, and the VIPs at the end of the
//! list would lapse. Every write is still checked against the lease just
//! before it is sent, and fenced around it as a single one would be.

use std::time::Instant;

use futures::{StreamExt, stream};

use super::Engine;
use crate::{
    net::{Placement, netlink::NetError},
    vip::Vip,
};

/// How many address writes are in flight on the netlink socket at once:
/// enough to keep the kernel busy, few enough that the lease check made
/// before each send is not stale by the time the kernel receives it.
const IN_FLIGHT: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WriteKind {
    /// A new address (the kernel's EEXIST counts as done).
    Add,
    /// A held address's lifetime restarted.
    Renew,
}

/// What became of one write.
#[derive(Debug)]
pub(super) enum Written {
    /// Sent, with the lifetime it carried (none: a permanent address) and
    /// the kernel's answer.
    Sent(Option<u32>, Result<(), NetError>),
    /// Not sent: too little of the lease was left when its turn came.
    Late,
}

impl Engine {
    /// Writes each of `writes`, in order, [`IN_FLIGHT`] at a time. Each
    /// one's entry is fenced until cleared before anything is sent and
    /// lowered after its answer (restored when it was not written), so a
    /// freeze anywhere in between cannot outrun the fence.
    pub(super) async fn write_addresses(
        &mut self,
        kind: WriteKind,
        writes: &[(Vip, Placement)],
    ) -> Vec<Written> {
        let before: Vec<Option<u64>> = writes
            .iter()
            .map(|(vip, placement)| self.fence_before_write(*vip, *placement))
            .collect();
        let lease = self.applied.lease;
        let netlink = &self.netlink;
        let outcomes: Vec<Written> = stream::iter(writes.iter().copied())
            .map(|(vip, placement)| async move {
                // Checked as late as possible: never a write after the
                // lease, nor a lifetime that would outlive a successor's
                // takeover.
                let lifetime = match lease {
                    None => None,
                    Some(l) => {
                        let now = Instant::now();
                        match l.lifetime_at(now) {
                            Some(secs) if now < l.until => Some(secs),
                            _ => return Written::Late,
                        }
                    }
                };
                let answer = match (kind, lifetime) {
                    (WriteKind::Renew, Some(secs)) => netlink.renew_vip(vip, placement, secs).await,
                    // A permanent address has no lifetime to renew.
                    (WriteKind::Renew, None) => Ok(()),
                    (WriteKind::Add, _) => netlink.add_vip_for(vip, placement, lifetime).await,
                };
                Written::Sent(lifetime, answer)
            })
            .buffered(IN_FLIGHT)
            .collect()
            .await;
        for (((vip, _), before), outcome) in writes.iter().zip(before).zip(&outcomes) {
            let acked = match outcome {
                Written::Sent(lifetime, Ok(())) => Some(*lifetime),
                Written::Sent(_, Err(_)) | Written::Late => None,
            };
            self.fence_after_write(*vip, before, acked);
        }
        outcomes
    }
}
