//! The next in line: watch the leader's lease and, when it has gone
//! unrenewed for longer than it may while ZooKeeper answered us, delete
//! the leader's znode and write our first renewal in one transaction.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};
use zookeeper_client::{Client, StateWatcher};

use super::{
    ctx::{Campaign, Ctx},
    election::{CandidateData, sequence},
    leader::FirstRenewal,
    lease::{Observer, StatedLease},
    session::call,
};

impl Ctx<'_> {
    /// The next in line (R15, and R1: only it): reads the leader's znode
    /// (sync, then stat with a watch) twice per renewal interval, on every
    /// change and when the wait is up, and when
    /// it has seen no new version for lease + renewal + margin while
    /// ZooKeeper answered every one of these reads, deletes the leader's
    /// znode conditionally on that version. Returns when the election should
    /// be looked at again: `Some` when our takeover deleted the leader's
    /// znode, with our first renewal if it went with the delete; `None`
    /// when the election must be listed again.
    pub(super) async fn watch_leader(
        &self,
        client: &Client,
        leader: &str,
        me: &str,
        state: &mut StateWatcher,
        st: &mut Campaign,
        cancel: &CancellationToken,
    ) -> Option<Option<FirstRenewal>> {
        let lease = self.lease();
        let deadline = lease.poll_deadline();
        let mut observer = Observer::new(lease);
        // What the leader's data said last, to say once when it cannot be
        // read or changes the wait.
        let mut unparseable_logged = false;
        let mut wait_logged = lease.takeover_after();
        let mut tick = tokio::time::interval(lease.poll_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        debug!(leader = %leader, takeover_after = ?lease.takeover_after(), "next in line; watching the leader's lease");
        loop {
            let sent = std::time::Instant::now();
            let read = async {
                call("sync", leader, deadline, client.sync(leader)).await?;
                // The data, not only the stat: the leader states its lease
                // there, and its rule may be longer than ours.
                call("watch", leader, deadline, client.get_and_watch_data(leader)).await
            }
            .await;
            let answered = std::time::Instant::now();
            let watcher = match read {
                // Gone by the leader's own hand (a handover, a withdrawal,
                // a shutdown): list the election again. Only our own
                // delete may take the shortcut, since a list from before
                // the leader left misses the candidates that stood since
                // (a handover's target among them).
                Err(e) if e.is(&zookeeper_client::Error::NoNode) => return None,
                Ok((data, stat, w)) => {
                    trace!(
                        version = stat.version,
                        read_us = answered.duration_since(sent).as_micros(),
                        "leader's znode read"
                    );
                    let stated = match serde_json::from_slice::<CandidateData>(&data) {
                        Ok(d) => d.stated_lease(),
                        Err(e) => {
                            if !std::mem::replace(&mut unparseable_logged, true) {
                                warn!(leader = %leader, error = %e,
                                    "cannot parse the leader's znode data; timing it by our own lease");
                            }
                            StatedLease::Unknown
                        }
                    };
                    let taken = observer.answered(sent, answered, stat.version, stated);
                    if let Some(wait) = observer.wait()
                        && wait != wait_logged
                    {
                        wait_logged = wait;
                        info!(leader = %leader, takeover_after = ?wait, own = ?lease.takeover_after(),
                            "timing the leader by the longer of its stated lease and ours");
                    }
                    if let Some(version) = taken {
                        if let Some(first) = self
                            .take_over(client, leader, me, version, wait_logged, deadline)
                            .await
                        {
                            return Some(first);
                        }
                        observer.missed();
                    }
                    Some(w)
                }
                Err(e) => {
                    debug!(error = %e, "cannot read the leader's znode; its silence does not count meanwhile");
                    observer.missed();
                    None
                }
            };
            let changed = async {
                match watcher {
                    Some(w) => drop(w.changed().await),
                    None => std::future::pending().await,
                }
            };
            // Read again at the poll or on a change; the moment the silence
            // reaches the takeover wait, delete at once (not a poll later):
            // the delete is conditional on the version we timed, and our
            // last read was answered within one poll.
            let due = async {
                match observer.takeover_at() {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let due = tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = state.changed() => return None,
                () = st.unfit_changed(false) => return None,
                _ = tick.tick() => false,
                () = changed => false,
                () = due => true,
            };
            if due && let Some(version) = observer.due(std::time::Instant::now()) {
                let waited = observer.wait().unwrap_or(wait_logged);
                if let Some(first) = self
                    .take_over(client, leader, me, version, waited, deadline)
                    .await
                {
                    return Some(first);
                }
                observer.missed();
            }
        }
    }

    /// Deletes the silent leader's znode if it is still at `version`, and
    /// in the same transaction writes our own znode: the first renewal of
    /// our term, whose lease counts from this send, one round trip (and
    /// one log fsync) sooner than a renewal after the delete. `Some` when
    /// the leader's znode is gone (by us or otherwise), with our renewal
    /// when the transaction went through.
    pub(super) async fn take_over(
        &self,
        client: &Client,
        leader: &str,
        me: &str,
        version: i32,
        waited: Duration,
        deadline: Duration,
    ) -> Option<Option<FirstRenewal>> {
        use zookeeper_client::{Error as ZkError, MultiWriteError, MultiWriteResult};
        warn!(leader = %leader, version, silent_for = ?waited,
            "the leader has not renewed its lease while ZooKeeper answered us; taking over");
        let own = format!("{}/{me}", self.paths.election);
        let term = sequence(me)
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0);
        let data = self.renewal_data(&crate::names::hostname(), term, 1);
        let mut writer = client.new_multi_writer();
        let built = writer
            .add_delete(leader, Some(version))
            .and_then(|()| writer.add_set_data(&own, &data, None));
        if let Err(e) = built {
            warn!(error = %e, "cannot build the takeover transaction");
            return None;
        }
        let sent = Instant::now();
        let r = match tokio::time::timeout(deadline, writer.commit()).await {
            Ok(Ok(results)) => Ok(results),
            Ok(Err(MultiWriteError::OperationFailed { index, source })) => {
                Err(Some((index, source)))
            }
            Ok(Err(MultiWriteError::RequestFailed { source })) => {
                warn!(error = %source, "takeover transaction failed; counting the leader's silence again");
                Err(None)
            }
            Err(_) => {
                warn!(after = ?deadline, "takeover transaction unanswered; counting the leader's silence again");
                Err(None)
            }
        };
        match r {
            Ok(results) => {
                info!(leader = %leader, version, "deleted the silent leader's znode; standing as leader");
                match results.get(1) {
                    Some(MultiWriteResult::SetData { stat }) => Some(Some(FirstRenewal {
                        sent,
                        version: stat.version,
                    })),
                    _ => Some(None),
                }
            }
            // Gone a moment before our delete (its own withdrawal): list
            // the election again, as when the watch sees it go.
            Err(Some((0, ZkError::NoNode))) => None,
            Err(Some((0, ZkError::BadVersion))) => {
                info!(leader = %leader, "the leader renewed its lease at the last moment; still following");
                None
            }
            Err(Some((index, e))) => {
                // Index 1: our own znode is gone (the election listing will
                // show it); nothing was deleted either way.
                warn!(error = %e, index, "takeover transaction refused; counting the leader's silence again");
                None
            }
            Err(None) => None,
        }
    }
}
