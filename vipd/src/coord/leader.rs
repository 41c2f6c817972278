//! The leader's term: the first renewal, lease renewals (versioned writes
//! of our own election znode), fencing at the lease's end, and the reasons
//! a term ends (handover, placement, unfit, a stalled engine).

use std::time::Duration;

use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, instrument, trace, warn};
use zookeeper_client::{Client, SessionState, Stat, StateWatcher};

use super::{
    ctx::{Campaign, Ctx, changed_opt, pause},
    election::{CandidateData, sequence},
    lease::LeaseTimes,
    nodes,
    session::{ZkCallError, call},
};
use crate::role::{EngineReport, engine_stall_bound};

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
    /// This node cannot serve (a VIP interface down, unhealthy, drained):
    /// hand over.
    Withdraw(String),
    /// An operator asked for a handover (`vipctl handover`).
    Handover(Option<String>),
    /// The engine finished no pass and applied no lease grant for this
    /// long: renewing would keep a lease for VIPs nobody serves.
    EngineStalled(Duration),
}

/// One leader term's znode and what its renewals write there.
struct Term<'c> {
    client: &'c Client,
    /// Our candidacy's znode name.
    me: &'c str,
    path: String,
    term: u64,
    host: String,
    node: &'c str,
    lease: LeaseTimes,
}

impl Term<'_> {
    /// A renewal: write our znode at the version we last wrote; the
    /// answer's time does not matter, only when it was sent.
    async fn renew(
        &self,
        ctx: &Ctx<'_>,
        version: Option<i32>,
        renewal: u64,
    ) -> (Instant, Result<Stat, ZkCallError>) {
        let data = ctx.renewal_data(&self.host, self.term, renewal);
        let sent = Instant::now();
        let r = call(
            "renew lease",
            &self.path,
            self.lease.length,
            self.client.set_data(&self.path, &data, version),
        )
        .await;
        (sent, r)
    }

    /// One renewal at a time, each waited for up to the lease (an answer
    /// later than that extends nothing): a renewal that timed out and
    /// landed late shows as BadVersion on the next, ending the term.
    /// Publishes when each acknowledged renewal was sent on `ack_tx`;
    /// returns the error that ended the term.
    async fn renewals(
        &self,
        ctx: &Ctx<'_>,
        sent: Instant,
        mut version: i32,
        ack_tx: watch::Sender<Instant>,
    ) -> ZkCallError {
        let (lease, path, client, term) = (self.lease, self.path.as_str(), self.client, self.term);
        let mut renewal = 1;
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
                match call("get data", path, lease.length, client.get_data(path)).await {
                    Ok((data, stat)) => {
                        unsure_from = None;
                        if own_write(&data, self.node, term, first..=renewal) {
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
            let (sent, r) = self.renew(ctx, Some(version), renewal).await;
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
    }
}

/// The engine's heartbeat as a leader watches it: a leader whose engine
/// neither finishes a pass nor applies the newest grant within the bound
/// stops renewing.
struct Heartbeat {
    bound: Duration,
    /// The end of the newest lease granted to the engine.
    newest: std::time::Instant,
    /// Since when the engine has not applied `newest`.
    behind_since: Option<Instant>,
    /// The engine's passes and applied grant, as last seen, and when they
    /// last changed.
    seen: Option<(u64, Option<std::time::Instant>)>,
    at: Instant,
}

impl Heartbeat {
    fn new(bound: Duration, newest: std::time::Instant) -> Heartbeat {
        Heartbeat {
            bound,
            newest,
            behind_since: Some(Instant::now()),
            seen: None,
            at: Instant::now(),
        }
    }

    /// A newer lease was granted to the engine.
    fn granted(&mut self, until: std::time::Instant) {
        self.newest = until;
        self.behind_since.get_or_insert_with(Instant::now);
    }

    /// Takes in the engine's report; returns its passes and when the
    /// engine counts as stalled, if it is behind.
    fn beat(&mut self, report: &watch::Receiver<EngineReport>) -> (u64, Option<Instant>) {
        let beat = {
            let r = report.borrow();
            (r.passes, r.lease_applied)
        };
        if self.seen != Some(beat) {
            self.seen = Some(beat);
            self.at = Instant::now();
        }
        if beat.1.is_some_and(|a| a >= self.newest) {
            self.behind_since = None;
        }
        let stalled_at = self.behind_since.map(|b| b.max(self.at) + self.bound);
        (beat.0, stalled_at)
    }
}

impl Ctx<'_> {
    /// One leader term: lease renewals (versioned writes of our own znode),
    /// fencing at the lease's end, the engine's report.
    #[instrument(skip_all, fields(node = %self.settings.node_id, znode = %me))]
    pub(super) async fn lead(
        &self,
        client: &Client,
        st: &mut Campaign,
        me: &str,
        first: FirstRenewal,
        state: &mut StateWatcher,
        cancel: &CancellationToken,
    ) -> LeadEnd {
        let lease = self.lease();
        let t = Term {
            client,
            me,
            path: format!("{}/{me}", self.paths.election),
            term: sequence(me)
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0),
            host: crate::names::hostname(),
            node: &self.settings.node_id,
            lease,
        };
        let (sent, version) = match self.start_term(&t, st, first, state, cancel).await {
            Ok(started) => started,
            Err(end) => return end,
        };
        self.hold(&t, st, sent, version, state, cancel).await
    }

    /// The term starts with an acknowledged renewal, never before: a
    /// node that fenced adds no VIP until it knows its lease is valid.
    /// Returns when the first renewal was sent and the version it wrote,
    /// with this node published as leader, or how the term ended before
    /// it began.
    async fn start_term(
        &self,
        t: &Term<'_>,
        st: &mut Campaign,
        first: FirstRenewal,
        state: &mut StateWatcher,
        cancel: &CancellationToken,
    ) -> Result<(Instant, i32), LeadEnd> {
        let (lease, term) = (t.lease, t.term);
        let retry = (lease.renew_every() / 2).max(Duration::from_millis(20));
        // The first is written at any version (only this session writes
        // its znode; others may only delete it, which fails the write with
        // NoNode): no read of the version first, one round trip less
        // between a takeover and the VIPs. After a takeover it went in the
        // same transaction as the delete.
        let (sent, r) = match first {
            FirstRenewal::Written { sent, version } => (sent, Ok(version)),
            FirstRenewal::ToWrite => {
                let (sent, r) = t.renew(self, None, 1).await;
                (sent, r.map(|stat| stat.version))
            }
        };
        let version = match r {
            Ok(v) => v,
            Err(e) if lost_znode(&e) => {
                warn!(error = %e, "our election znode was taken from us; standing again");
                return Err(LeadEnd::Lost);
            }
            Err(e) => {
                debug!(error = %e, "first lease renewal failed; retrying");
                pause(retry, state, cancel).await;
                return Err(LeadEnd::Fenced);
            }
        };
        if Instant::now() >= sent + lease.length {
            debug!("first lease renewal answered after the lease; retrying");
            return Err(LeadEnd::Fenced);
        }
        st.term = term;
        info!(term, lease = ?lease.length, renew_every = ?lease.renew_every(), "elected leader; lease held");
        self.leader(st, term, self.grant(sent));
        nodes::clear_handover(t.client, &self.paths.handover, t.me, lease.poll_deadline()).await;
        Ok((sent, version))
    }

    /// Holds the term: renews the lease, publishes each acknowledged
    /// renewal to the engine, and ends the term on a handover, a better
    /// leader, unfitness, a refused renewal, an unrenewed lease (fenced),
    /// the session's end or a stalled engine.
    async fn hold(
        &self,
        t: &Term<'_>,
        st: &mut Campaign,
        sent: Instant,
        version: i32,
        state: &mut StateWatcher,
        cancel: &CancellationToken,
    ) -> LeadEnd {
        let (client, me, lease) = (t.client, t.me, t.lease);
        let handover =
            nodes::handover_requested(client, &self.paths.handover, me, lease.poll_deadline());
        tokio::pin!(handover);
        let better = self.seek_better_leader(client, me, t.term, st.report.clone());
        tokio::pin!(better);
        let (ack_tx, mut ack_rx) = watch::channel(sent);
        let renewals = t.renewals(self, sent, version, ack_tx);
        tokio::pin!(renewals);
        let mut published = sent;
        let mut heart = Heartbeat::new(engine_stall_bound(lease.length), self.grant(sent).until);
        loop {
            let acked = *ack_rx.borrow_and_update();
            if acked != published {
                published = acked;
                let grant = self.grant(acked);
                self.renewed(grant);
                heart.granted(grant.until);
            }
            let (passes, stalled_at) = heart.beat(&st.report);
            let fence_at = acked + lease.length;
            tokio::select! {
                _ = cancel.cancelled() => break LeadEnd::Cancelled,
                () = sleep_opt(stalled_at) => {
                    error!(bound = ?heart.bound, passes,
                        "the engine has not applied a lease grant or finished a pass within the bound: it is stuck; no more renewals, the next node takes over at the lease's end");
                    self.follower(st, true);
                    break LeadEnd::EngineStalled(heart.bound);
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
                s = state.changed() => if let Some(end) = self.leader_session_state(s, st, fence_at) {
                    break end;
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

    /// A change of the session's state while leading: the lease, not the
    /// connection, decides (a client that reconnects to another ensemble
    /// member within milliseconds keeps its session and its lease). `Some`
    /// when the session ended.
    fn leader_session_state(
        &self,
        s: SessionState,
        st: &mut Campaign,
        fence_at: Instant,
    ) -> Option<LeadEnd> {
        match s {
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
                return Some(LeadEnd::Terminal(s));
            }
            _ => {}
        }
        None
    }
}

/// How a term's first lease renewal stands when the term starts.
#[derive(Clone, Copy, Debug)]
pub(super) enum FirstRenewal {
    /// Still to write: the term starts with it.
    ToWrite,
    /// Written in the same transaction as our takeover's delete: when it
    /// was sent (the lease counts from then) and the version it wrote.
    Written { sent: Instant, version: i32 },
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

pub(super) async fn sleep_opt(at: Option<Instant>) {
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
            ..CandidateData::default()
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

    fn report(passes: u64, applied: Option<std::time::Instant>) -> watch::Receiver<EngineReport> {
        let (_, rx) = watch::channel(EngineReport {
            passes,
            lease_applied: applied,
            ..EngineReport::default()
        });
        rx
    }

    #[test]
    fn the_engine_counts_as_stalled_only_while_behind_the_newest_grant() {
        let bound = Duration::from_secs(2);
        let start = Instant::now();
        let first = std::time::Instant::now() + Duration::from_secs(10);
        let mut heart = Heartbeat::new(bound, first);
        let (_, stalled) = heart.beat(&report(0, None));
        let at = stalled.expect("behind until the first grant is applied");
        assert!(
            at >= start + bound,
            "a stall is judged a bound after the start"
        );

        let (passes, stalled) = heart.beat(&report(3, Some(first)));
        assert_eq!(passes, 3);
        assert_eq!(stalled, None, "the newest grant is applied");

        let later = first + Duration::from_secs(1);
        heart.granted(later);
        let (_, stalled) = heart.beat(&report(3, Some(first)));
        assert!(stalled.is_some(), "a newer grant not yet applied");

        let before = stalled.unwrap();
        let (_, stalled) = heart.beat(&report(4, Some(first)));
        assert!(
            stalled.unwrap() >= before,
            "a finished pass moves the stall no earlier"
        );

        let (_, stalled) = heart.beat(&report(4, Some(later)));
        assert_eq!(stalled, None, "caught up again");
    }
}
