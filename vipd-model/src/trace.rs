//! A counterexample as an operator reads it: one line per step, with the
//! model's clock (ZooKeeper's), the node's own clock, who did what, and
//! who serves the VIP after it.

use stateright::{Model, Path};

use crate::{Action, Fault, Lease, NAMES, ReqKind, RespKind, Role, State, Step};

fn req(k: ReqKind) -> String {
    match k {
        ReqKind::Renew {
            seq,
            version: Some(v),
        } => format!("renewal: set_data(znode {seq}, version {v})"),
        ReqKind::Renew { seq, version: None } => {
            format!("first renewal: set_data(znode {seq}, any version)")
        }
        ReqKind::GetOwn { seq } => format!("get_data(own znode {seq})"),
        ReqKind::Read { seq } => format!("sync + get_data with watch(leader's znode {seq})"),
        ReqKind::Takeover {
            leader,
            version,
            own,
        } => format!(
            "takeover multi: delete(znode {leader}, version {version}) + set_data(znode {own})"
        ),
        ReqKind::List { .. } => "sync + list the election".to_string(),
        ReqKind::Stand => "create an ephemeral sequential candidate znode".to_string(),
    }
}

fn resp(k: RespKind) -> String {
    match k {
        RespKind::Version(v) => format!("ok, version {v}"),
        RespKind::NoNode => "NoNode".to_string(),
        RespKind::BadVersion => "BadVersion".to_string(),
        RespKind::Children { first, pred, mine } => {
            format!("children: first {first:?}, predecessor {pred:?}, ours there: {mine}")
        }
        RespKind::Created(s) => format!("created znode {s}"),
        RespKind::Expired => "session expired".to_string(),
        RespKind::Fired => "watch fired".to_string(),
    }
}

/// One step of a trace.
pub(crate) fn step_line(m: &Lease, last: &State, action: Action) -> String {
    let node = |i: u8| {
        let n = &last.nodes[usize::from(i)];
        format!("{} (its clock {} ms)", NAMES[usize::from(i)], n.clock)
    };
    let what = match action {
        Action::Tick { slow, fast } => {
            let mut s = format!("time passes {} ms", m.0.tick_ms());
            if let Some(i) = slow {
                s += &format!("; {}'s clock stands still (drift)", NAMES[usize::from(i)]);
            }
            if let Some(i) = fast {
                s += &format!("; {}'s clock runs two ticks (drift)", NAMES[usize::from(i)]);
            }
            s
        }
        Action::Node(i, step) => {
            let n = &last.nodes[usize::from(i)];
            let did = match step {
                Step::Receive => match n.from_zk.first() {
                    Some(r) => {
                        let reading = n
                            .wait
                            .is_some_and(|w| matches!(w.kind, ReqKind::Read { .. }));
                        let starts = reading
                            && m.next_state(last, action).is_some_and(|a| {
                                matches!(
                                    a.nodes[usize::from(i)].wait,
                                    Some(w) if matches!(w.kind, ReqKind::Takeover { .. })
                                )
                            });
                        let then = if starts {
                            "; the takeover wait is over: sends the takeover"
                        } else {
                            ""
                        };
                        format!("receives: {}{then}", resp(r.kind))
                    }
                    None => "receives nothing".to_string(),
                },
                Step::Timeout => match n.wait {
                    Some(w) => format!("gives up waiting for: {}", req(w.kind)),
                    None => "times out".to_string(),
                },
                Step::Renew => match n.role {
                    Role::Leader { unsure: true, .. } => {
                        "reads its own znode (a renewal's answer was lost)".to_string()
                    }
                    Role::Leader { version, .. } => {
                        format!("sends a lease renewal at version {version}")
                    }
                    _ => "renews".to_string(),
                },
                Step::Fence => "fences: no renewal acknowledged within the lease".to_string(),
                Step::Poll => "polls the leader's znode".to_string(),
                Step::TakeoverDue => "the takeover wait is over: sends the takeover".to_string(),
                Step::List => match n.role {
                    Role::Listing { seq: None, .. } => "stands for election".to_string(),
                    _ => "lists the election".to_string(),
                },
                Step::EngineCheck => {
                    let check = if m.0.bug == Some(crate::Bug::LifetimeRenewedAfterLease) {
                        "without checking that it still runs"
                    } else {
                        "checks it still runs"
                    };
                    // With the check and the write as one step, say so.
                    let next = m.next_state(last, action);
                    let after = next.as_ref().map(|a| &a.nodes[usize::from(i)]);
                    let kept = after
                        .filter(|a| a.engine.last_renewed != n.engine.last_renewed)
                        .and_then(|a| a.engine.addr.as_ref().map(|x| x.expires - a.clock));
                    let write = match kept {
                        Some(ms) => format!(
                            " and sets the VIP's kernel lifetime (kept {ms} ms with the slack)"
                        ),
                        None => String::new(),
                    };
                    format!(
                        "engine: applies the lease until {} ms ({check}){write}",
                        n.engine.pending.unwrap_or_default()
                    )
                }
                Step::EngineWrite => {
                    let (until, keeps) = n.engine.checked.unwrap_or_default();
                    format!(
                        "engine: sets the VIP's kernel lifetime (kept {keeps} ms with the slack; lease until {until} ms)"
                    )
                }
                Step::EngineRemove => "engine: steps down, removes the VIP".to_string(),
                Step::Reconnect(s) => format!("reconnects to ZooKeeper server {s}"),
            };
            format!("{}: {did}", node(i))
        }
        Action::Zk(i) => {
            let r = last.nodes[usize::from(i)].to_zk[0].kind;
            format!("ZooKeeper handles {}'s {}", NAMES[usize::from(i)], req(r))
        }
        Action::Replicate(s) => {
            format!("ZooKeeper server {s} applies the next committed transaction")
        }
        Action::Resume(i) => format!("{}: resumed (SIGCONT)", node(i)),
        Action::HealZk(i) => format!("{}: the partition from ZooKeeper heals", node(i)),
        Action::Fault(f) => match f {
            Fault::Kill(i) => format!(
                "FAULT {}: killed (SIGKILL; the kernel keeps its addresses{})",
                node(i),
                match (m.0.fence, m.0.pinned[usize::from(i)]) {
                    (None, _) => "",
                    (Some(_), true) => " and its pinned fence",
                    (Some(_), false) => "; its fence goes with it",
                }
            ),
            Fault::Pause(i) => format!("FAULT {}: paused (SIGSTOP)", node(i)),
            Fault::CutFromZk(i) => format!("FAULT {}: partitioned from ZooKeeper", node(i)),
            Fault::LoseRequest(i) => format!(
                "FAULT {}'s request to ZooKeeper is lost",
                NAMES[usize::from(i)]
            ),
            Fault::LoseAnswer(i) => format!(
                "FAULT ZooKeeper's answer to {} is lost",
                NAMES[usize::from(i)]
            ),
            Fault::DelayRequest(i) => format!(
                "FAULT {}'s request to ZooKeeper is delayed",
                NAMES[usize::from(i)]
            ),
            Fault::DelayAnswer(i) => format!(
                "FAULT ZooKeeper's answer to {} is delayed",
                NAMES[usize::from(i)]
            ),
            Fault::ServerLost(s) => format!("FAULT ZooKeeper server {s} is lost"),
        },
    };
    let after = m.next_state(last, action).unwrap_or_else(|| last.clone());
    let serving: Vec<&str> = after
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| m.serves(&after, *i))
        .map(|(i, _)| NAMES[i])
        .collect();
    let serving = if serving.is_empty() {
        "nobody".to_string()
    } else {
        serving.join("+")
    };
    format!("{:>6} ms  {what}  [serves: {serving}]", last.now)
}

/// A successor's read that changes nothing: its poll, ZooKeeper's answer,
/// and the same version as before (the takeover count goes on).
fn routine_read(m: &Lease, steps: &[(State, Option<Action>)], j: usize) -> bool {
    let (
        Some((s0, Some(Action::Node(i, Step::Poll)))),
        Some((_, Some(Action::Zk(k)))),
        Some((s2, Some(Action::Node(r, Step::Receive)))),
    ) = (steps.get(j), steps.get(j + 1), steps.get(j + 2))
    else {
        return false;
    };
    if k != i || r != i {
        return false;
    }
    let count = |s: &State| match &s.nodes[usize::from(*i)].role {
        Role::Next { observer, .. } => observer.takeover_at(),
        _ => None,
    };
    let before = count(s0);
    let after = m.next_state(s2, Action::Node(*r, Step::Receive));
    // An answer that starts the takeover is not routine.
    before.is_some()
        && after.is_some_and(|a| count(&a) == before && a.nodes[usize::from(*i)].wait.is_none())
}

/// A counterexample, one line per step. The steady state before the run's
/// last renewal ahead of its first fault is one line, and so are a
/// successor's reads that change nothing (they fold into the time that
/// passes). With `holds`, the trace ends at the first step after which it
/// no longer holds (the checker's path may run on past the violation).
pub fn format_trace(
    m: &Lease,
    path: &Path<State, Action>,
    holds: Option<fn(&Lease, &State) -> bool>,
) -> String {
    let steps = path.clone().into_vec();
    let mut out = String::new();
    let first_fault = steps
        .iter()
        .position(|(_, a)| matches!(a, Some(Action::Fault(_))))
        .unwrap_or(steps.len());
    let start = steps[..first_fault]
        .iter()
        .rposition(|(_, a)| matches!(a, Some(Action::Node(_, Step::Renew))))
        .unwrap_or(0);
    if start > 0 {
        let l = m.0.lease;
        out += &format!(
            "{:>6} ms  ... to {} ms: {} steps of the steady state folded (the leader renews every {} ms, each renewal acknowledged and applied; the successor reads each version)\n",
            steps[0].0.now,
            steps[start].0.now,
            start,
            crate::ceil_ms(l.renew_every()).max(m.0.tick_ms())
        );
    }
    // Plain ticks and routine reads in a row make one line.
    let mut quiet: Option<(u64, u64)> = None;
    let mut reads = false;
    let mut j = start;
    while j < steps.len() {
        let (state, action) = &steps[j];
        let Some(a) = *action else { break };
        if routine_read(m, &steps, j) {
            j += 3;
            reads = true;
            let (from, _) = quiet.unwrap_or((state.now, state.now));
            quiet = Some((from, state.now));
            continue;
        }
        j += 1;
        if let Action::Tick {
            slow: None,
            fast: None,
        } = a
        {
            let (from, _) = quiet.unwrap_or((state.now, state.now));
            quiet = Some((from, state.now + m.0.tick_ms()));
            continue;
        }
        if let Some((from, to)) = quiet.take() {
            let note = if std::mem::take(&mut reads) {
                " (the successor's reads answered: the same version)"
            } else {
                ""
            };
            out += &format!("{from:>6} ms  time passes to {to} ms{note}\n");
        }
        out += &step_line(m, state, a);
        out.push('\n');
        if let Some(holds) = holds
            && let Some(after) = m.next_state(state, a)
            && !holds(m, &after)
        {
            for (k, n) in after.nodes.iter().enumerate() {
                if let Some(a) = n.engine.addr.filter(|_| m.serves(&after, k)) {
                    out += &format!(
                        "        {}'s address: in its kernel until {} ms, its lease ends {} ms (its clock, now {} ms)\n",
                        NAMES[k], a.expires, a.xdp_until, n.clock
                    );
                }
            }
            return out;
        }
    }
    if let Some((from, to)) = quiet {
        out += &format!("{from:>6} ms  time passes to {to} ms\n");
    }
    out
}
