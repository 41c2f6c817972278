//! Foreign claims of held VIPs, as the XDP program reports them: one
//! reader over the ARP and the NDP ring buffers.

use std::{marker::PhantomData, mem::size_of};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracing::warn;

use super::{
    XdpError,
    maps::{Family, V4, V6},
};
use crate::vip::Vip;

/// Another host claims a VIP we hold: it announced it, probed for it, or
/// sent from it, from `mac` on the interface `ifindex`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub vip: Vip,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// The claims of both families, from [`super::XdpProgram::take_conflicts`].
pub struct ConflictReader {
    /// `None` once its ring can no longer be polled.
    v4: Option<Ring<V4>>,
    v6: Option<Ring<V6>>,
}

impl ConflictReader {
    pub(super) fn new(v4: Ring<V4>, v6: Ring<V6>) -> Self {
        ConflictReader {
            v4: Some(v4),
            v6: Some(v6),
        }
    }

    /// Waits for the next claim of either family. Returns `None` only when
    /// neither ring buffer can be polled any more (the runtime is shutting
    /// down).
    pub async fn next(&mut self) -> Option<Conflict> {
        loop {
            if self.v4.is_none() && self.v6.is_none() {
                return None;
            }
            // Both branches are cancel-safe: an event leaves its ring only
            // in the poll that returns it.
            let polled = tokio::select! {
                event = next_of(&mut self.v4) => event.map(|e| V4::claim(&e)).ok_or(Closed::V4),
                event = next_of(&mut self.v6) => event.map(|e| V6::claim(&e)).ok_or(Closed::V6),
            };
            match polled {
                Ok(Some(conflict)) => return Some(conflict),
                // Not a VIP: nothing anyone holds.
                Ok(None) => {}
                Err(Closed::V4) => self.v4 = None,
                Err(Closed::V6) => self.v6 = None,
            }
        }
    }
}

impl std::fmt::Debug for ConflictReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConflictReader")
            .field("v4", &self.v4.is_some())
            .field("v6", &self.v6.is_some())
            .finish()
    }
}

/// Which ring can no longer be polled.
enum Closed {
    V4,
    V6,
}

/// The next event of `ring`; never, once it is closed.
async fn next_of<F: Family>(ring: &mut Option<Ring<F>>) -> Option<F::Event> {
    match ring {
        Some(r) => r.next().await,
        None => std::future::pending().await,
    }
}

/// One family's conflict ring buffer, registered with the async runtime.
pub(super) struct Ring<F: Family> {
    fd: AsyncFd<RingBuf<MapData>>,
    family: PhantomData<F>,
}

impl<F: Family> Ring<F> {
    /// Registers `ring` with the async runtime: call it inside a tokio
    /// runtime with IO enabled (it panics otherwise).
    pub(super) fn new(ring: RingBuf<MapData>) -> Result<Self, XdpError> {
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged,
        // for as long as it lives, and the AsyncFd owns the RingBuf.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| XdpError::ConflictsFd {
                map: F::CONFLICTS,
                source: e.into(),
            })?;
        Ok(Ring {
            fd,
            family: PhantomData,
        })
    }

    /// Waits for the next event. Returns `None` only when the ring buffer
    /// can no longer be polled.
    async fn next(&mut self) -> Option<F::Event> {
        loop {
            let mut guard = match self.fd.readable_mut().await {
                Ok(guard) => guard,
                Err(error) => {
                    warn!(%error, map = F::CONFLICTS, "polling the conflict ring buffer failed");
                    return None;
                }
            };
            if let Some(item) = guard.get_inner_mut().next() {
                if item.len() < size_of::<F::Event>() {
                    warn!(
                        len = item.len(),
                        map = F::CONFLICTS,
                        "short conflict event dropped"
                    );
                    continue;
                }
                // SAFETY: the item holds at least one event, a plain
                // repr(C) type valid for every bit pattern (aya::Pod);
                // read_unaligned makes no alignment assumption.
                let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<F::Event>()) };
                return Some(event);
            }
            // Drained: wait for the kernel's next wake-up.
            guard.clear_ready();
        }
    }
}
