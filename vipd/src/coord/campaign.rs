//! The campaign: stand for election while fit to serve, find our place
//! in line, lead at the head of it, follow the predecessor otherwise, and
//! withdraw when unfit or asked to hand over.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use zookeeper_client::{Client, SessionState, StateWatcher};

use super::{
    ctx::{Campaign, Ctx, pause},
    election::{CandidateData, ensure_candidacy, node_of, sequence, sort_candidates},
    leader::{FirstRenewal, LeadEnd},
    nodes,
    session::{ZkCallError, call},
};
use crate::role::Role;

/// The campaign's timings on one session.
#[derive(Clone, Copy)]
struct Timings {
    /// For one ZooKeeper call.
    deadline: Duration,
    /// Before a failed step is tried again.
    retry: Duration,
    /// How often a follower looks at the election anyway.
    refresh: Duration,
}

impl Timings {
    fn of(client: &Client) -> Timings {
        let t = client.session_timeout();
        Timings {
            deadline: t / 3,
            retry: (t / 10).max(Duration::from_millis(20)),
            refresh: (t * 2).max(Duration::from_secs(1)),
        }
    }
}

/// The candidates after we deleted a silent leader's znode: we are first
/// now (sequence numbers only grow), no need to list again.
type TookOver = (Vec<String>, FirstRenewal);

impl Ctx<'_> {
    /// Stands for election and leads while this session lasts. Returns
    /// `Closed` on cancel, else the session's terminal state.
    pub(super) async fn campaign(
        &self,
        client: &Client,
        st: &mut Campaign,
        own: &mut Option<String>,
        cancel: &CancellationToken,
    ) -> SessionState {
        let Timings {
            deadline, retry, ..
        } = Timings::of(client);
        let dir = &self.paths.election;
        let mut state = client.state_watcher();
        let mut took_over: Option<TookOver> = None;
        loop {
            if cancel.is_cancelled() {
                return SessionState::Closed;
            }
            match state.peek_state() {
                s if s.is_terminated() => return s,
                SessionState::Disconnected => {
                    self.set_session("disconnected");
                    let fenced = st.fenced;
                    self.follower(st, fenced);
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = state.changed() => {}
                    }
                    continue;
                }
                _ => self.set_session("connected"),
            }
            if !self.stand(client, st, own, &mut state, cancel).await {
                continue;
            }
            let me = own.clone().expect("set above");
            let (sorted, first, listed) = match self.line_up(client, &me, took_over.take()).await {
                Ok(line) => line,
                Err(e) => {
                    debug!(error = %e, "election check failed; retrying");
                    pause(retry, &mut state, cancel).await;
                    continue;
                }
            };
            let Some(pos) = sorted.iter().position(|c| *c == me) else {
                warn!(znode = %format!("{dir}/{me}"), "our candidacy znode is gone; standing again");
                self.follower(st, false);
                *own = None;
                continue;
            };
            if listed {
                self.note_leader(client, dir, &sorted[0], deadline).await;
            }
            if pos == 0 && self.yield_to_target(client, &me, &sorted, deadline).await {
                self.release(st, Some(client), own.take()).await;
                continue;
            }
            if pos == 0 {
                let end = self.lead(client, st, &me, first, &mut state, cancel).await;
                if let Some(s) = self
                    .after_term(end, client, st, own, &mut state, cancel)
                    .await
                {
                    return s;
                }
                continue;
            }
            self.follower(st, false);
            let pred = format!("{dir}/{}", sorted[pos - 1]);
            if pos == 1 {
                if let Some(first) = self
                    .watch_leader(client, &pred, &me, &mut state, st, cancel)
                    .await
                {
                    took_over = Some((sorted[1..].to_vec(), first));
                }
                continue;
            }
            self.follow(client, &pred, st, &mut state, cancel).await;
        }
    }

    /// Withdraws while this node is unfit to serve, and stands (creates
    /// our candidacy) when it is fit and has none. True when we stand.
    async fn stand(
        &self,
        client: &Client,
        st: &mut Campaign,
        own: &mut Option<String>,
        state: &mut StateWatcher,
        cancel: &CancellationToken,
    ) -> bool {
        let Timings {
            deadline, retry, ..
        } = Timings::of(client);
        if let Some(why) = st.unfit() {
            if own.is_some() {
                info!(reason = %why, "withdrawing from the election");
                self.release(st, Some(client), own.take()).await;
            }
            self.set_withdrawn(Some(why));
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = state.changed() => {}
                () = st.unfit_changed(true) => {}
            }
            return false;
        }
        if self.set_withdrawn(None) {
            info!("fit to serve again; standing for election");
        }
        if own.is_none() {
            match ensure_candidacy(
                client,
                &self.paths.election,
                &self.settings.node_id,
                &self.data,
                &self.acl,
                deadline,
            )
            .await
            {
                Ok(name) => *own = Some(name),
                Err(e) => {
                    warn!(error = %e, "cannot stand for election; retrying");
                    self.error(e.to_string());
                    pause(retry, state, cancel).await;
                    return false;
                }
            }
        }
        true
    }

    /// The candidates in order: those our takeover left when we are first
    /// among them, else listed now. With our term's first renewal (written
    /// with the takeover, or still to write) and whether they were listed.
    async fn line_up(
        &self,
        client: &Client,
        me: &str,
        took_over: Option<TookOver>,
    ) -> Result<(Vec<String>, FirstRenewal, bool), ZkCallError> {
        let deadline = Timings::of(client).deadline;
        match took_over {
            Some((c, first)) if c.first().map(String::as_str) == Some(me) => Ok((c, first, false)),
            _ => {
                let c = list_election(client, &self.paths.election, deadline).await?;
                Ok((sort_candidates(c), FirstRenewal::ToWrite, true))
            }
        }
    }

    /// After a term: releases our candidacy or waits as the end asks.
    /// `Some` when the campaign ends with the session (or on cancel).
    async fn after_term(
        &self,
        end: LeadEnd,
        client: &Client,
        st: &mut Campaign,
        own: &mut Option<String>,
        state: &mut StateWatcher,
        cancel: &CancellationToken,
    ) -> Option<SessionState> {
        match end {
            LeadEnd::Cancelled => return Some(SessionState::Closed),
            LeadEnd::Fenced => {}
            LeadEnd::Lost => *own = None,
            LeadEnd::Terminal(s) => return Some(s),
            LeadEnd::Place(to) => {
                self.error(format!(
                    "handed over to {to}: it can serve more of the configured VIPs"
                ));
                self.release(st, Some(client), own.take()).await;
            }
            LeadEnd::Handover(to) => {
                info!(to = ?to, "handing over on an operator's request");
                self.release(st, Some(client), own.take()).await;
            }
            LeadEnd::EngineStalled(bound) => {
                self.error(format!(
                    "stopped leading: the engine applied nothing for {bound:?}"
                ));
                self.wait_engine(st, state, cancel).await;
            }
            LeadEnd::Withdraw(why) => {
                error!(reason = %why, "this node cannot serve its VIPs; handing over");
                self.error(format!("handed over: {why}"));
                self.release(st, Some(client), own.take()).await;
            }
        }
        None
    }

    /// Further down the line: waits until the predecessor's znode goes,
    /// the session or our fitness changes, or the refresh is due.
    async fn follow(
        &self,
        client: &Client,
        pred: &str,
        st: &mut Campaign,
        state: &mut StateWatcher,
        cancel: &CancellationToken,
    ) {
        let Timings {
            deadline,
            retry,
            refresh,
        } = Timings::of(client);
        match call("watch", pred, deadline, client.check_and_watch_stat(pred)).await {
            Ok((None, _)) => {}
            Ok((Some(_), w)) => {
                debug!(predecessor = %pred, "following; watching the predecessor");
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = w.changed() => {}
                    _ = state.changed() => {}
                    () = st.unfit_changed(false) => {}
                    // Only to keep `leader` in the status current: a
                    // leader change upstream does not wake us.
                    _ = tokio::time::sleep(refresh) => {}
                }
            }
            Err(e) => {
                debug!(error = %e, "cannot watch the predecessor; retrying");
                pause(retry, state, cancel).await;
            }
        }
    }

    /// Records the current leader's node id (from its znode data, else its name).
    pub(super) async fn note_leader(
        &self,
        client: &Client,
        dir: &str,
        lowest: &str,
        deadline: Duration,
    ) {
        let path = format!("{dir}/{lowest}");
        let id = match call("get data", &path, deadline, client.get_data(&path)).await {
            Ok((data, _)) => serde_json::from_slice::<CandidateData>(&data)
                .map(|d| d.node)
                .unwrap_or_else(|_| node_of(lowest).to_string()),
            Err(_) => node_of(lowest).to_string(),
        };
        let term = sequence(lowest).and_then(|s| u64::try_from(s).ok());
        self.status.send_if_modified(|x| {
            let changed = x.leader.as_deref() != Some(id.as_str()) || x.term != term;
            x.leader = Some(id);
            x.term = term;
            changed
        });
    }

    /// At the head of the line: true when a handover request names another
    /// node that stands, so we step aside (we hold nothing yet) until it
    /// leads.
    pub(super) async fn yield_to_target(
        &self,
        client: &Client,
        me: &str,
        sorted: &[String],
        deadline: Duration,
    ) -> bool {
        let Ok(Some((r, _))) = nodes::read_handover(client, &self.paths.handover, deadline).await
        else {
            return false;
        };
        let Some(target) =
            r.to.as_deref()
                .filter(|t| r.from != me && *t != self.settings.node_id)
        else {
            return false;
        };
        // `sorted` may be the list from before our takeover: a target that
        // stood since is only in a fresh one.
        let mut stands = sorted.iter().any(|c| node_of(c) == target);
        if !stands {
            stands = list_election(client, &self.paths.election, deadline)
                .await
                .is_ok_and(|c| c.iter().any(|c| node_of(c) == target));
        }
        if stands {
            info!(to = ?r.to, "a handover names another node; stepping aside");
        }
        stands
    }

    /// After a stuck engine ended our term: stand no more until the engine
    /// shows it is alive again (a pass finished as a follower), so a node
    /// whose engine stays stuck never leads again and the cluster settles.
    /// Our candidacy stays: the next in line deletes it when it takes over
    /// at the lease's end, the first moment the stuck engine's addresses
    /// are sure to be gone from the kernel.
    pub(super) async fn wait_engine(
        &self,
        st: &mut Campaign,
        state: &mut StateWatcher,
        cancel: &CancellationToken,
    ) {
        let stalled_at = st.report.borrow().passes;
        self.set_withdrawn(Some("the engine is not responding".to_string()));
        loop {
            {
                let r = st.report.borrow_and_update();
                if r.passes > stalled_at && r.role == Role::Follower {
                    info!("the engine is responding again");
                    return;
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                s = state.changed() => if s.is_terminated() {
                    return;
                },
                r = st.report.changed(), if st.report_open => if r.is_err() {
                    st.report_open = false;
                },
            }
        }
    }

    /// Records why we do not stand; true when that changed.
    pub(super) fn set_withdrawn(&self, why: Option<String>) -> bool {
        self.status.send_if_modified(|x| {
            let changed = x.withdrawn != why;
            x.withdrawn = why;
            changed
        })
    }
}

/// The election's candidates, after a sync: a server cut off from its
/// quorum still answers reads from its stale tree for a few seconds after
/// the quorum expired its sessions.
pub(super) async fn list_election(
    client: &Client,
    dir: &str,
    deadline: Duration,
) -> Result<Vec<String>, ZkCallError> {
    call("sync", dir, deadline, client.sync(dir)).await?;
    call("list children", dir, deadline, client.list_children(dir)).await
}
