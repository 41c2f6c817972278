//! The event monitor: link, address and route events of both families on
//! a socket of their own, each forwarded as one [`NetEvent`].

use futures::StreamExt;
use rtnetlink::{
    MulticastGroup, packet_core::NetlinkPayload, packet_route::RouteNetlinkMessage,
    sys::AsyncSocket,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{NetError, Netlink, parse::is_marked};
use crate::net::VIPD_ADDR_PROTO;

/// How many events may wait for the consumer before the monitor waits too;
/// the consumer re-dumps on any event, so a deep queue buys nothing.
const EVENT_QUEUE: usize = 1024;

/// Receive buffer asked for the event socket (the kernel caps it at
/// `rmem_max`): a burst of thousands of VIP changes should not overrun it.
const EVENT_RCVBUF: usize = 4 << 20;

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

impl Netlink {
    /// [`monitor`] for this connection's mark: its own addresses' events
    /// come as [`NetEvent::OwnAddress`].
    pub fn monitor(&self) -> Result<mpsc::Receiver<NetEvent>, NetError> {
        monitor_marked(self.mark)
    }
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
pub(crate) fn monitor_marked(mark: u8) -> Result<mpsc::Receiver<NetEvent>, NetError> {
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

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::{
        address::AddressMessage, link::LinkMessage, route::RouteMessage,
    };

    use super::*;

    #[test]
    fn needs_a_runtime() {
        assert!(matches!(monitor(), Err(NetError::NoRuntime)));
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
}
