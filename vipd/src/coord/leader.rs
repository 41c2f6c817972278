//! The leader's term: the first renewal, lease renewals (versioned writes
//! of our own election znode), fencing at the lease's end, and the reasons
//! a term ends (handover, placement, unfit, a stalled engine).

use std::time::Duration;

use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, instrument, trace, warn};
use zookeeper_client::{Client, SessionState, StateWatcher};

use super::{
    ctx::{Campaign, Ctx, changed_opt, pause},
    election::{CandidateData, sequence},
    nodes,
    session::{ZkCallError, call},
};

/// How a leader term ended.
pub(super) enum LeadEnd {
    Cancelled,
    /// Not sure of the session any more: re-check before leading again.
    Fenced,
    /// Our znode is gone: stand again.
    Lost,
    /// The session ended.
    Terminal(SessionState),
    /// A member can serve more of the configured VIPs: the handover
    /// request naming it is written, withdraw.
    Place(String),
    /// This node cannot serve (R18): hand over.
    Withdraw(String),
    /// An operator asked for a handover (`vipctl handover`).
    Handover(Option<String>),
    /// The engine finished no pass and applied no lease grant for this
    /// long: renewing would keep a lease for VIPs nobody serves.
    EngineStalled(Duration),
}

impl Ctx<'_> {
    /// One leader term: lease renewals (versioned writes of our own znode),
    /// fencing at the lease's end, the engine's report (R15).
    #[instrument(skip_all, fields(node = %self.settings.node_id, znode = %me))]
    pub(super) async fn lead(
        &self,
        client: &Client,
        st: &mut Campaign,
        me: &str,
        first: Option<FirstRenewal>,
        state: &mut StateWatcher,
        cancel: &CancellationToken,
    ) -> LeadEnd {
        let lease = self.lease();
        let retry = (lease.renew_every() / 2).max(Duration::from_millis(20));
        let path = format!("{}/{me}", self.paths.election);
        let term = sequence(me)
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0);
        let host = crate::names::hostname();
        let data = |renewal: u64| self.renewal_data(&host, term, renewal);
        // A renewal: write our znode at the version we last wrote; the
        // answer's time does not matter, only when it was sent.
        let renew = |version: Option<i32>, renewal: u64| {
            let data = data(renewal);
            let path = path.clone();
            async move {
                let sent = Instant::now();
                let r = call(
                    "renew lease",
                    &path,
                    lease.length,
                    client.set_data(&path, &data, version),
                )
                .await;
                (sent, r)
            }
        };
        let mut renewal = 1;
        // The term starts with an acknowledged renewal, never before: a
        // node that fenced adds no VIP until it knows its lease is valid.
        // The first is written at any version (only this session writes
        // its znode; others may only delete it, which fails the write with
        // NoNode): no read of the version first, one round trip less
        // between a takeover and the VIPs. After a takeover it went in the
        // same transaction as the delete.
        let (sent, r) = match first {
            Some(f) => (f.sent, Ok(f.version)),
            None => {
                let (sent, r) = renew(None, renewal).await;
                (sent, r.map(|stat| stat.version))
            }
        };
        let mut version = match r {
            Ok(v) => v,
            Err(e) if lost_znode(&e) => {
                warn!(error = %e, "our election znode was taken from us; standing again");
                return LeadEnd::Lost;
            }
            Err(e) => {
                debug!(error = %e, "first lease renewal failed; retrying");
                pause(retry, state, cancel).await;
                return LeadEnd::Fenced;
            }
        };
        if Instant::now() >= sent + lease.length {
            debug!("first lease renewal answered after the lease; retrying");
            return LeadEnd::Fenced;
        }
        st.term = term;
        info!(term, lease = ?lease.length, renew_every = ?lease.renew_every(), "elected leader; lease held");
        self.leader(st, term, self.grant(sent));
        nodes::clear_handover(client, &self.paths.handover, me, lease.poll_deadline()).await;
        let handover =
            nodes::handover_requested(client, &self.paths.handover, me, lease.poll_deadline());
        tokio::pin!(handover);
        let better = self.seek_better_leader(client, me, term, st.report.clone());
        tokio::pin!(better);
        let (ack_tx, mut ack_rx) = watch::channel(sent);
        // One renewal at a time, each waited for up to the lease (an answer
        // later than that extends nothing): a renewal that timed out and
        // landed late shows as BadVersion on the next, ending the term.
        let renewals = async {
            let every = lease.renew_every();
            let mut tick = tokio::time::interval_at(sent + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Renewals whose answer was lost (the connection dropped while
            // one was in flight) may still have been applied, and the next
            // would then fail with BadVersion against our own write. Before
            // the next, read our znode: if it holds one of those writes,
            // renew from its version (the lease still counts only from
            // acknowledged sends).
            let mut unsure_from: Option<u64> = None;
            loop {
                tick.tick().await;
                if let Some(first) = unsure_from {
                    match call("get data", &path, lease.length, client.get_data(&path)).await {
                        Ok((data, stat)) => {
                            unsure_from = None;
                            if own_write(&data, &self.settings.node_id, term, first..=renewal) {
                                debug!(
                                    version = stat.version,
                                    "a renewal whose answer was lost was applied; renewing from its version"
                                );
                                version = stat.version;
                            }
                        }
                        Err(e) if e.is(&zookeeper_client::Error::NoNode) => return e,
                        Err(e) => {
                            debug!(error = %e, "cannot read our election znode after a lost renewal answer");
                            continue;
                        }
                    }
                }
                renewal += 1;
                let (sent, r) = renew(Some(version), renewal).await;
                match r {
                    Ok(stat) => {
                        version = stat.version;
                        trace!(
                            version,
                            answered_after_us = sent.elapsed().as_micros(),
                            "lease renewed"
                        );
                        ack_tx.send_replace(sent);
                    }
                    Err(e) if lost_znode(&e) => return e,
                    Err(e) => {
                        debug!(error = %e, "lease renewal failed");
                        unsure_from.get_or_insert(renewal);
                    }
                }
            }
        };
        tokio::pin!(renewals);
        let mut published = sent;
        // The engine's heartbeat: a leader whose engine neither finishes a
        // pass nor applies the newest grant within the bound stops renewing.
        let stall_bound = crate::role::engine_stall_bound(lease.length);
        let mut newest = self.grant(sent).until;
        let mut behind_since = Some(Instant::now());
        let mut beat_seen = None;
        let mut beat_at = Instant::now();
        loop {
            let acked = *ack_rx.borrow_and_update();
            if acked != published {
                published = acked;
                let grant = self.grant(acked);
                self.renewed(grant);
                newest = grant.until;
                behind_since.get_or_insert_with(Instant::now);
            }
            let beat = {
                let r = st.report.borrow();
                (r.passes, r.lease_applied)
            };
            if beat_seen != Some(beat) {
                beat_seen = Some(beat);
                beat_at = Instant::now();
            }
            if beat.1.is_some_and(|a| a >= newest) {
                behind_since = None;
            }
            let stalled_at = behind_since.map(|b| b.max(beat_at) + stall_bound);
            let fence_at = acked + lease.length;
            tokio::select! {
                _ = cancel.cancelled() => break LeadEnd::Cancelled,
                () = sleep_opt(stalled_at) => {
                    error!(bound = ?stall_bound, passes = beat.0,
                        "the engine has not applied a lease grant or finished a pass within the bound: it is stuck; no more renewals, the next node takes over at the lease's end");
                    self.follower(st, true);
                    break LeadEnd::EngineStalled(stall_bound);
                }
                to = &mut handover => break LeadEnd::Handover(to),
                to = &mut better => break LeadEnd::Place(to),
                _ = st.drained.changed() => {
                    if let Some(why) = st.unfit() {
                        break LeadEnd::Withdraw(why);
                    }
                }
                e = &mut renewals => {
                    warn!(error = %e, "lease renewal refused: another node took over, or our znode is gone; the term ends");
                    self.follower(st, false);
                    break LeadEnd::Lost;
                }
                _ = ack_rx.changed() => {}
                _ = tokio::time::sleep_until(fence_at) => {
                    warn!(lease = ?lease.length, "no lease renewal acknowledged in time; fencing (VIPs go until a renewal is acknowledged)");
                    self.follower(st, true);
                    break LeadEnd::Fenced;
                }
                s = state.changed() => match s {
                    // The lease, not the connection, decides: a client that
                    // reconnects to another ensemble member within
                    // milliseconds keeps its session and its lease.
                    SessionState::Disconnected => {
                        warn!(fence_in = ?fence_at.saturating_duration_since(Instant::now()),
                            "ZooKeeper connection lost; fencing unless a renewal is acknowledged before the lease ends");
                        self.set_session("disconnected");
                    }
                    SessionState::SyncConnected => {
                        info!("ZooKeeper connection back within the lease; still leading");
                        self.set_session("connected");
                    }
                    s if s.is_terminated() => {
                        self.follower(st, false);
                        break LeadEnd::Terminal(s);
                    }
                    _ => {}
                },
                r = st.report.changed(), if st.report_open => {
                    if r.is_err() {
                        st.report_open = false;
                        continue;
                    }
                    st.report.borrow_and_update();
                    if let Some(why) = st.unfit() {
                        break LeadEnd::Withdraw(why);
                    }
                }
                r = changed_opt(&mut st.health) => {
                    if r.is_err() {
                        st.health = None;
                    }
                    if let Some(why) = st.unfit() {
                        break LeadEnd::Withdraw(why);
                    }
                }
            }
        }
    }
}

/// The first lease renewal of a term when it went with the takeover delete:
/// when it was sent (the lease counts from then) and the version written.
#[derive(Clone, Copy, Debug)]
pub(super) struct FirstRenewal {
    pub(super) sent: Instant,
    pub(super) version: i32,
}

/// Whether our election znode's data is one of our own renewals numbered
/// in `renewals` this term (the only writer of its data is its leader;
/// others only delete it).
fn own_write(data: &[u8], node: &str, term: u64, renewals: std::ops::RangeInclusive<u64>) -> bool {
    serde_json::from_slice::<CandidateData>(data)
        .is_ok_and(|d| d.node == node && d.term == term && renewals.contains(&d.renewal))
}

/// A renewal error that ends the term: our znode was deleted (a successor
/// took over) or written by someone else (BadVersion).
fn lost_znode(e: &ZkCallError) -> bool {
    e.is(&zookeeper_client::Error::NoNode) || e.is(&zookeeper_client::Error::BadVersion)
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(node: &str, term: u64, renewal: u64) -> Vec<u8> {
        serde_json::to_vec(&CandidateData {
            node: node.into(),
            host: "h".into(),
            term,
            lease_ms: 200,
            renew_ms: 13,
            margin_ms: 100,
            renewal,
        })
        .unwrap()
    }

    #[test]
    fn only_our_own_lost_renewals_are_taken_for_ours() {
        assert!(own_write(&data("n1", 7, 12), "n1", 7, 12..=12));
        assert!(own_write(&data("n1", 7, 12), "n1", 7, 11..=13));
        assert!(
            !own_write(&data("n1", 7, 10), "n1", 7, 11..=13),
            "acknowledged before"
        );
        assert!(
            !own_write(&data("n1", 6, 12), "n1", 7, 12..=12),
            "another term"
        );
        assert!(
            !own_write(&data("n2", 7, 12), "n1", 7, 12..=12),
            "another node"
        );
        assert!(!own_write(b"{not json", "n1", 7, 12..=12));
        assert!(!own_write(b"", "n1", 7, 12..=12));
    }
}
