//! The request connection: opening it, and the bound every request to the
//! kernel is held to.

use std::{future::Future, sync::Arc, time::Duration};

use rtnetlink::Handle;

use super::NetError;
use crate::net::VIPD_ADDR_PROTO;

/// How long one request (an add, a delete, a renewal, or a whole dump)
/// may wait for the kernel's answer. The kernel answers under the RTNL lock
/// in microseconds, a dump of tens of thousands of addresses in tens of
/// milliseconds; no answer within a second means the kernel (or whoever
/// holds that lock) is stuck. The engine then fails the pass, reports the
/// request, and retries, instead of hanging until its leader hands over.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// `request` bounded by [`REQUEST_TIMEOUT`]; on a timeout the error names
/// the request with `what` (only built then). Dropping the request is safe:
/// a late answer is discarded, and the next pass's dump sees whatever the
/// kernel did meanwhile.
pub(super) async fn bounded<T>(
    what: impl FnOnce() -> String,
    request: impl Future<Output = Result<T, NetError>>,
) -> Result<T, NetError> {
    bounded_by(REQUEST_TIMEOUT, what, request).await
}

async fn bounded_by<T>(
    after: Duration,
    what: impl FnOnce() -> String,
    request: impl Future<Output = Result<T, NetError>>,
) -> Result<T, NetError> {
    match tokio::time::timeout(after, request).await {
        Ok(result) => result,
        Err(_) => Err(NetError::Timeout {
            request: what(),
            after,
        }),
    }
}

/// The kernel's errno in a netlink error reply, positive, if that is what
/// `e` is.
pub(super) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// A request connection to the kernel's routing subsystem.
#[derive(Clone, Debug)]
pub struct Netlink {
    pub(super) handle: Handle,
    /// The ownership mark (IFA_PROTO) this instance's addresses carry:
    /// the only addresses it ever removes.
    pub(super) mark: u8,
    /// The kernel runs one dump at a time per socket and answers EBUSY to
    /// a second: dumps through this connection (and its clones) take turns.
    pub(super) dump_turn: Arc<tokio::sync::Mutex<()>>,
}

impl Netlink {
    /// Opens a request connection; spawns its driver on the current tokio runtime.
    pub fn new() -> Result<Self, NetError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetError::NoRuntime)?;
        // Strict checking makes the kernel filter route dumps by table and
        // refuse malformed dump requests instead of silently dumping all.
        let (conn, handle, _unsolicited) =
            rtnetlink::new_connection_with_strict_check().map_err(NetError::Connect)?;
        runtime.spawn(conn);
        Ok(Netlink {
            handle,
            mark: VIPD_ADDR_PROTO,
            dump_turn: Arc::default(),
        })
    }

    /// The same connection, adding and removing addresses with ownership
    /// mark `mark` (a named instance's) instead of the default one.
    #[must_use]
    pub fn with_mark(mut self, mark: u8) -> Self {
        self.mark = mark;
        self
    }

    /// The ownership mark of the addresses this connection adds.
    pub fn mark(&self) -> u8 {
        self.mark
    }
}

#[cfg(test)]
mod tests {
    //! Pure: no kernel needed (the privileged tests are in tests/tests/netlink.rs).

    use super::*;
    use crate::vip::Vip;

    #[test]
    fn needs_a_runtime() {
        assert!(matches!(Netlink::new(), Err(NetError::NoRuntime)));
    }

    /// Each kind of request, as the engine makes them, named in its timeout.
    fn requests() -> Vec<(String, &'static str)> {
        let v4 = Vip::new("192.0.2.100".parse().unwrap()).unwrap();
        let v6 = Vip::new_v6("2001:db8::100".parse().unwrap()).unwrap();
        let mut out = Vec::new();
        for (vip, len) in [(v4, 24u8), (v6, 64)] {
            for ifindex in [1u32, 3, 4096] {
                out.push((
                    format!("adding VIP {vip}/{len} on ifindex {ifindex}"),
                    "adding VIP",
                ));
                out.push((
                    format!("renewing VIP {vip}/{len} on ifindex {ifindex}"),
                    "renewing VIP",
                ));
                out.push((
                    format!("removing address {vip}/{len} from ifindex {ifindex}"),
                    "removing address",
                ));
            }
        }
        for what in ["links", "IPv4 routes", "IPv6 routes", "IPv4 addresses"] {
            out.push((format!("dumping {what}"), "dumping"));
        }
        out
    }

    #[tokio::test]
    async fn a_request_the_kernel_never_answers_times_out_naming_it() {
        let after = Duration::from_millis(20);
        for (request, kind) in requests() {
            let named = request.clone();
            let never = std::future::pending::<Result<(), NetError>>();
            let e = bounded_by(after, move || named, never).await.unwrap_err();
            assert!(
                matches!(&e, NetError::Timeout { request: r, after: a } if *r == request && *a == after),
                "{e:?}"
            );
            let text = e.to_string();
            assert!(
                text.starts_with(&request) && text.contains(kind) && text.contains("20ms"),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn an_answer_within_the_bound_passes_through() {
        let ok = bounded(|| unreachable!("named only on a timeout"), async {
            Ok::<_, NetError>(7)
        })
        .await;
        assert!(matches!(ok, Ok(7)));
        let refused = bounded(|| unreachable!("named only on a timeout"), async {
            Err::<(), _>(NetError::NoSuchInterface { ifindex: 9 })
        })
        .await;
        assert!(matches!(
            refused,
            Err(NetError::NoSuchInterface { ifindex: 9 })
        ));
    }
}
