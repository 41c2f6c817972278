//! The next in line: watch the leader's lease and, when it has gone
//! unrenewed for longer than it may while ZooKeeper answered us, delete
//! the leader's znode and write our first renewal in one transaction.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};
use zookeeper_client::{Client, StateWatcher};

use zookeeper_client::{OneshotWatcher, Stat};

use super::{
    ctx::{Campaign, Ctx},
    election::{CandidateData, sequence},
    leader::{FirstRenewal, sleep_opt},
    lease::{LeaseTimes, Observer, StatedLease},
    session::{ZkCallError, call},
};

impl Ctx<'_> {
    /// The next in line (and only it): reads the leader's znode (sync,
    /// then stat with a watch) twice per renewal interval, on every change
    /// and when the wait is up, and when it has seen no new version for
    /// lease + renewal + margin while ZooKeeper answered every one of these
    /// reads, deletes the leader's znode conditionally on that version.
    /// Returns when the election should be looked at again: `Some` when our
    /// takeover deleted the leader's znode, with our term's first renewal;
    /// `None` when the election must be listed again.
    pub(super) async fn watch_leader(
        &self,
        client: &Client,
        leader: &str,
        me: &str,
        state: &mut StateWatcher,
        st: &mut Campaign,
        cancel: &CancellationToken,
    ) -> Option<FirstRenewal> {
        let lease = self.lease();
        let deadline = lease.poll_deadline();
        let mut timing = LeaderTiming::new(lease);
        let mut tick = tokio::time::interval(lease.poll_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        debug!(leader = %leader, takeover_after = ?lease.takeover_after(), "next in line; watching the leader's lease");
        loop {
            let sent = std::time::Instant::now();
            let read = read_leader(client, leader, deadline).await;
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
                    if let Some(version) =
                        timing.answered(leader, sent, answered, &data, stat.version)
                    {
                        if let Some(first) = self
                            .take_over(client, leader, me, version, timing.wait_logged, deadline)
                            .await
                        {
                            return Some(first);
                        }
                        timing.observer.missed();
                    }
                    Some(w)
                }
                Err(e) => {
                    debug!(error = %e, "cannot read the leader's znode; its silence does not count meanwhile");
                    timing.observer.missed();
                    None
                }
            };
            let changed = changed_or_never(watcher);
            // Read again at the poll or on a change; the moment the silence
            // reaches the takeover wait, delete at once (not a poll later):
            // the delete is conditional on the version we timed, and our
            // last read was answered within one poll.
            let due = sleep_opt(timing.observer.takeover_at().map(Instant::from));
            let due = tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = state.changed() => return None,
                () = st.unfit_changed(false) => return None,
                _ = tick.tick() => false,
                () = changed => false,
                () = due => true,
            };
            if due && let Some(version) = timing.observer.due(std::time::Instant::now()) {
                let waited = timing.observer.wait().unwrap_or(timing.wait_logged);
                if let Some(first) = self
                    .take_over(client, leader, me, version, waited, deadline)
                    .await
                {
                    return Some(first);
                }
                timing.observer.missed();
            }
        }
    }

    /// Deletes the silent leader's znode if it is still at `version`, and
    /// in the same transaction writes our own znode: the first renewal of
    /// our term, whose lease counts from this send, one round trip (and
    /// one log fsync) sooner than a renewal after the delete. `Some` when
    /// the leader's znode is gone (by us or otherwise), with our renewal
    /// written when the transaction went through.
    pub(super) async fn take_over(
        &self,
        client: &Client,
        leader: &str,
        me: &str,
        version: i32,
        waited: Duration,
        deadline: Duration,
    ) -> Option<FirstRenewal> {
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
                    Some(MultiWriteResult::SetData { stat }) => Some(FirstRenewal::Written {
                        sent,
                        version: stat.version,
                    }),
                    _ => Some(FirstRenewal::ToWrite),
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

/// The leader's znode, after a sync so that a server cut off from its
/// quorum cannot answer from its stale tree.
async fn read_leader(
    client: &Client,
    leader: &str,
    deadline: Duration,
) -> Result<(Vec<u8>, Stat, OneshotWatcher), ZkCallError> {
    call("sync", leader, deadline, client.sync(leader)).await?;
    // The data, not only the stat: the leader states its lease there, and
    // its rule may be longer than ours.
    call("watch", leader, deadline, client.get_and_watch_data(leader)).await
}

/// How the next in line times the leader: the observer of its renewals,
/// and what the leader's data said last, to say once when it cannot be
/// read or changes the wait.
struct LeaderTiming {
    observer: Observer,
    own: Duration,
    unparseable_logged: bool,
    wait_logged: Duration,
}

impl LeaderTiming {
    fn new(lease: LeaseTimes) -> LeaderTiming {
        LeaderTiming {
            observer: Observer::new(lease),
            own: lease.takeover_after(),
            unparseable_logged: false,
            wait_logged: lease.takeover_after(),
        }
    }

    /// An answered read of the leader's znode; the version to delete when
    /// the leader's silence has reached the takeover wait.
    fn answered(
        &mut self,
        leader: &str,
        sent: std::time::Instant,
        answered: std::time::Instant,
        data: &[u8],
        version: i32,
    ) -> Option<i32> {
        let stated = match serde_json::from_slice::<CandidateData>(data) {
            Ok(d) => d.stated_lease(),
            Err(e) => {
                if !std::mem::replace(&mut self.unparseable_logged, true) {
                    warn!(leader = %leader, error = %e,
                        "cannot parse the leader's znode data; timing it by our own lease");
                }
                StatedLease::Unknown
            }
        };
        let taken = self.observer.answered(sent, answered, version, stated);
        if let Some(wait) = self.observer.wait()
            && wait != self.wait_logged
        {
            self.wait_logged = wait;
            let fence_outlives_leader =
                matches!(stated, StatedLease::Stated { fence: Some(_), .. });
            info!(leader = %leader, takeover_after = ?wait, own = ?self.own,
                fence_outlives_leader,
                "timing the leader by the longer of its stated lease and ours");
        }
        taken
    }
}

/// Until the watch fires; never without one.
async fn changed_or_never(watcher: Option<OneshotWatcher>) {
    match watcher {
        Some(w) => drop(w.changed().await),
        None => std::future::pending().await,
    }
}
