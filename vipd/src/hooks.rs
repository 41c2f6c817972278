//! The transition hook (`--on-change`): an operator's program run on
//! every role change of this node (leader, follower, fenced) and every change
//! of the VIPs it holds. It watches what the engine reports, so it never
//! delays the engine; runs go one at a time, in order, each under a timeout.

use std::{
    collections::{BTreeSet, VecDeque},
    path::PathBuf,
    time::Duration,
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    coord::CoordStatus,
    role::{EngineReport, Role},
    vip::Vip,
};

/// Runs queued while the hook is slow, at most; the oldest are dropped
/// (and logged) beyond it, the latest state is always run.
const QUEUE_LIMIT: usize = 64;

/// This node's state as the hook sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    /// `leader`, `follower` or `fenced`.
    pub role: &'static str,
    pub term: u64,
    pub vips: BTreeSet<Vip>,
}

impl Transition {
    /// From the engine's report and, in cluster mode, coordination's view.
    pub(crate) fn of(report: &EngineReport, coord: Option<&CoordStatus>) -> Transition {
        let role = match report.role {
            Role::Leader => "leader",
            Role::Follower if coord.is_some_and(|c| c.fenced) => "fenced",
            Role::Follower => "follower",
        };
        Transition {
            role,
            term: report.term,
            vips: report.held.clone(),
        }
    }

    /// The hook's environment.
    pub(crate) fn env(&self, node: &str) -> Vec<(&'static str, String)> {
        vec![
            ("VIPD_ROLE", self.role.to_string()),
            ("VIPD_NODE", node.to_string()),
            ("VIPD_TERM", self.term.to_string()),
            (
                "VIPD_VIPS",
                self.vips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ]
    }
}

/// The hook's settings.
#[derive(Clone, Debug)]
pub(crate) struct Hook {
    pub program: PathBuf,
    pub timeout: Duration,
    pub node: String,
}

impl Hook {
    /// Runs until `cancel`: one run per change of [`Transition`], in order;
    /// on `cancel`, the runs still due are made before it returns.
    pub async fn run(
        self,
        mut report: watch::Receiver<EngineReport>,
        mut coord: Option<watch::Receiver<CoordStatus>>,
        cancel: CancellationToken,
    ) {
        let mut last: Option<Transition> = None;
        let mut queue: VecDeque<Transition> = VecDeque::new();
        loop {
            let now = Transition::of(
                &report.borrow_and_update(),
                coord
                    .as_mut()
                    .map(|c| c.borrow_and_update().clone())
                    .as_ref(),
            );
            // Before the engine's first pass there is nothing to tell, and
            // a starting follower has nothing to tell either: what else its
            // report carries (heartbeat, servable VIPs, MACs) is no change
            // of role or VIPs.
            let first_pass_pending = last.is_none() && {
                let r = report.borrow();
                r.role == Role::Follower && r.term == 0 && r.held.is_empty()
            };
            if last.as_ref() != Some(&now) && !first_pass_pending {
                last = Some(now.clone());
                if queue.len() >= QUEUE_LIMIT {
                    let dropped = queue.pop_front();
                    warn!(dropped = ?dropped.map(|t| t.role), "the on-change hook is too slow; dropping the oldest queued run");
                }
                queue.push_back(now);
            }
            let next = queue.pop_front();
            let running = async {
                match &next {
                    Some(t) => self.run_one(t).await,
                    None => std::future::pending().await,
                }
            };
            // While a run goes on, changes are queued (each one seen); the
            // run itself is never cut short by a change, only by cancel.
            tokio::pin!(running);
            loop {
                tokio::select! {
                    // Shutdown: the run under way, then every state not yet
                    // told (the last one is this node stepping down).
                    () = cancel.cancelled() => {
                        if next.is_some() {
                            (&mut running).await;
                        }
                        self.queue_change(&mut last, &mut queue, &report, coord.as_ref());
                        for t in queue.drain(..) {
                            self.run_one(&t).await;
                        }
                        return;
                    }
                    () = &mut running => break,
                    r = report.changed() => {
                        if r.is_err() { return; }
                        if next.is_none() { break; }
                        self.queue_change(&mut last, &mut queue, &report, coord.as_ref());
                    }
                    r = changed_opt(&mut coord) => {
                        if r.is_err() { coord = None; }
                        if next.is_none() { break; }
                        self.queue_change(&mut last, &mut queue, &report, coord.as_ref());
                    }
                }
            }
        }
    }

    fn queue_change(
        &self,
        last: &mut Option<Transition>,
        queue: &mut VecDeque<Transition>,
        report: &watch::Receiver<EngineReport>,
        coord: Option<&watch::Receiver<CoordStatus>>,
    ) {
        let now = Transition::of(&report.borrow(), coord.map(|c| c.borrow().clone()).as_ref());
        if last.as_ref() != Some(&now) {
            *last = Some(now.clone());
            if queue.len() >= QUEUE_LIMIT {
                queue.pop_front();
                warn!("the on-change hook is too slow; dropping the oldest queued run");
            }
            queue.push_back(now);
        }
    }

    /// One run: logged, killed at the timeout, failure logged.
    async fn run_one(&self, t: &Transition) {
        let mut cmd = crate::sandbox::command(&self.program, t.env(&self.node));
        debug!(program = %self.program.display(), role = t.role, term = t.term, vips = t.vips.len(), "running the on-change hook");
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                warn!(program = %self.program.display(), error = %e, "cannot run the on-change hook");
                return;
            }
        };
        match crate::sandbox::wait_or_kill(child, self.timeout).await {
            Some(Ok(s)) if s.success() => {
                info!(program = %self.program.display(), role = t.role, term = t.term, "on-change hook done");
            }
            Some(Ok(s)) => {
                warn!(program = %self.program.display(), role = t.role, status = %s, "on-change hook failed");
            }
            Some(Err(e)) => {
                warn!(program = %self.program.display(), error = %e, "on-change hook: wait failed")
            }
            None => {
                warn!(program = %self.program.display(), timeout = ?self.timeout, role = t.role, "on-change hook killed at its timeout (its whole process group)");
            }
        }
    }
}

async fn changed_opt(
    c: &mut Option<watch::Receiver<CoordStatus>>,
) -> Result<(), watch::error::RecvError> {
    match c {
        Some(c) => c.changed().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(s: &str) -> Vip {
        s.parse().unwrap()
    }

    #[test]
    fn environment_and_roles() {
        let mut r = EngineReport {
            role: Role::Leader,
            term: 7,
            held: [vip("192.0.2.101"), vip("192.0.2.100")].into(),
            ..EngineReport::default()
        };
        let t = Transition::of(&r, None);
        assert_eq!(
            t.env("n1"),
            vec![
                ("VIPD_ROLE", "leader".to_string()),
                ("VIPD_NODE", "n1".to_string()),
                ("VIPD_TERM", "7".to_string()),
                ("VIPD_VIPS", "192.0.2.100,192.0.2.101".to_string()),
            ]
        );
        r.role = Role::Follower;
        r.held.clear();
        let fenced = CoordStatus {
            fenced: true,
            ..CoordStatus::default()
        };
        assert_eq!(Transition::of(&r, Some(&fenced)).role, "fenced");
        assert_eq!(Transition::of(&r, None).role, "follower");
        assert_eq!(
            Transition::of(&r, None).env("n1")[3],
            ("VIPD_VIPS", String::new())
        );
    }

    /// Runs go in order, one at a time: a slow first run delays the second,
    /// which still sees its own state.
    #[tokio::test]
    async fn runs_in_order_one_at_a_time() {
        let dir = std::env::temp_dir().join(format!("vipd-hook-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let script = dir.join("hook.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n[ \"$VIPD_ROLE\" = leader ] && sleep 0.3\necho \"$VIPD_ROLE $VIPD_TERM $VIPD_VIPS\" >> {}\n",
                log.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (tx, rx) = watch::channel(EngineReport::default());
        let cancel = CancellationToken::new();
        let hook = Hook {
            program: script.clone(),
            timeout: Duration::from_secs(5),
            node: "n1".into(),
        };
        let task = tokio::spawn(hook.run(rx, None, cancel.clone()));
        // A starting follower's heartbeat alone is no transition.
        for passes in 1..=3 {
            tx.send_replace(EngineReport {
                passes,
                ..EngineReport::default()
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tx.send_replace(EngineReport {
            role: Role::Leader,
            term: 3,
            held: [vip("192.0.2.100")].into(),
            ..EngineReport::default()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send_replace(EngineReport {
            role: Role::Follower,
            term: 3,
            ..EngineReport::default()
        });
        let want = "leader 3 192.0.2.100\nfollower 3 \n";
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let got = std::fs::read_to_string(&log).unwrap_or_default();
            if got == want {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "hook log {got:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
        task.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
