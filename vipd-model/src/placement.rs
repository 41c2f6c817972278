//! Placement as a model: services placed on nodes that each hold a lease of
//! their own, by an assigner elected among them, checked exhaustively with
//! stateright. Three nodes, two services, a ZooKeeper of two servers whose
//! replicas lag; nodes crash and restart, sessions expire, assigners are
//! deposed and go on writing from stale views.
//!
//! The lease's timing is not modelled again here: the lease model
//! ([`crate::Lease`]) checks that a conditional delete of a lease znode at
//! the version its observer timed succeeds only once the holder's lease
//! from that version has ended, with the holder fenced (the kernel fence:
//! whether its agent is alive or not), and that a session expiry comes
//! after the lease too. This model takes that as its premise: a lease
//! "runs out" as one step ([`Step::RunOut`]), which fences everything the
//! holder served under it at once, and only a lease that ran out can be
//! deleted. What this model checks is the placement logic on top: that no
//! two nodes ever serve one service, however the assigner's and the nodes'
//! views lag.
//!
//! The protocol (docs/DESIGN.md "Placement"):
//! - Each node's lease is a znode `leases/<node>` created by each run of the
//!   agent (an *incarnation*: its creation's zxid) and renewed by versioned
//!   writes.
//! - An assignment names a node's **incarnation**, not the node: a restarted
//!   agent serves nothing of its previous run's assignments until the
//!   assigner names its new lease.
//! - The assigner writes only in a multi that checks its own election znode,
//!   the named lease's existence, and the assignment's version.
//! - A planned move is a request on the assignment (`to`); the holder stops
//!   serving first, then writes the assignment over to the target (checking
//!   the version it read). A service held under a lease that no longer
//!   exists is placed anew.

use stateright::{Expectation, Model, Property};

pub const NODES: usize = 3;
pub const SERVICES: usize = 2;
const SERVERS: usize = 2;

/// A protocol change known to be wrong, to show the checker finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlacementBug {
    /// Assignments name the node, not its incarnation: a restarted agent
    /// serves what its previous run was assigned.
    ByNodeName,
    /// The holder of a moving service writes it over to the target before
    /// it stops serving it.
    HandOverBeforeStopping,
    /// The assigner's and the holder's writes check nothing (neither the
    /// assigner's election nor the assignment's version).
    UncheckedWrites,
}

#[derive(Clone, Debug)]
pub struct PlacementConfig {
    pub bug: Option<PlacementBug>,
    /// Crashes (each followed by a restart when the node comes back) in one
    /// run, over all nodes.
    pub crashes: u8,
    /// Assigner elections in one run (the first included).
    pub elections: u8,
    /// Planned moves the assigner may request in one run.
    pub moves: u8,
    /// Runs-out of leases in one run (a lease ends without renewal:
    /// partition, freeze, slow ZooKeeper, or a dead agent).
    pub run_outs: u8,
    /// Reconnects to another ZooKeeper server in one run.
    pub reconnects: u8,
}

impl PlacementConfig {
    pub fn new(bug: Option<PlacementBug>) -> PlacementConfig {
        PlacementConfig {
            bug,
            crashes: 1,
            elections: 2,
            moves: 1,
            run_outs: 2,
            reconnects: 1,
        }
    }
}

/// A lease incarnation: the node and the agent run (1, 2, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Inc {
    pub node: u8,
    pub run: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Assignment {
    pub holder: Inc,
    /// A planned move to this lease is requested.
    pub to: Option<Inc>,
}

/// The ZooKeeper tree, as far as placement reads it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Tree {
    /// Each node's lease znode (its version does not matter here: the
    /// lease model times it).
    pub leases: [Option<Inc>; NODES],
    /// The assigner's election: its node and term.
    pub assigner: Option<(u8, u8)>,
    /// Each service's assignment and the znode's version.
    pub assign: [(Option<Assignment>, u8); SERVICES],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Txn {
    CreateLease(Inc),
    Renew(Inc),
    /// The lease's session expired, or the assigner deleted it at the
    /// version it timed.
    DeleteLease(Inc),
    Elect {
        node: u8,
        term: u8,
    },
    Depose,
    /// An assignment's new value, written at `version` (checked unless a
    /// bug says otherwise), by the assigner `by` (its election checked) or
    /// by the holder handing it over.
    SetAssign {
        service: u8,
        value: Assignment,
        version: u8,
        by: Option<(u8, u8)>,
    },
}

impl Tree {
    fn lease_of(&self, node: u8) -> Option<Inc> {
        self.leases[node as usize]
    }

    fn has_lease(&self, inc: Inc) -> bool {
        self.lease_of(inc.node) == Some(inc)
    }

    /// Applies `txn` if its checks hold here; returns whether it did.
    fn apply(&mut self, txn: Txn, bug: Option<PlacementBug>) -> bool {
        let unchecked = bug == Some(PlacementBug::UncheckedWrites);
        match txn {
            Txn::CreateLease(inc) => {
                if self.leases[inc.node as usize].is_some() {
                    return false;
                }
                self.leases[inc.node as usize] = Some(inc);
            }
            Txn::Renew(inc) => {
                if !self.has_lease(inc) {
                    return false;
                }
            }
            Txn::DeleteLease(inc) => {
                if !self.has_lease(inc) {
                    return false;
                }
                self.leases[inc.node as usize] = None;
            }
            Txn::Elect { node, term } => {
                if self.assigner.is_some() {
                    return false;
                }
                self.assigner = Some((node, term));
            }
            Txn::Depose => self.assigner = None,
            Txn::SetAssign {
                service,
                value,
                version,
                by,
            } => {
                let (cur, ver) = self.assign[service as usize];
                if !unchecked {
                    if ver != version {
                        return false;
                    }
                    if by.is_some() && self.assigner != by {
                        return false;
                    }
                    // The named lease must exist (a multi's check).
                    if !self.has_lease(value.holder) {
                        return false;
                    }
                    // A holder hands over only what it holds.
                    if by.is_none() && cur.is_none() {
                        return false;
                    }
                }
                self.assign[service as usize] = (Some(value), ver.wrapping_add(1));
            }
        }
        true
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    pub alive: bool,
    /// This agent run's lease, once created.
    pub inc: Option<Inc>,
    /// The lease that runs by time (renewed, not run out), whichever run
    /// of the agent renewed it: a crashed agent's runs on until it runs
    /// out, and the kernel fences at its end.
    pub running: Option<Inc>,
    /// The services served and under which incarnation (the kernel's
    /// state: it outlives the agent until that lease runs out).
    pub serving: [Option<Inc>; SERVICES],
    /// The ZooKeeper server this node reads from.
    pub server: u8,
    /// The assigner term this node believes it holds (stale after a
    /// deposition it has not seen).
    pub assigner_term: Option<u8>,
    pub runs: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// Committed transactions after `base`, in order.
    pub log: Vec<Txn>,
    pub base: Tree,
    /// How much of `log` each server has applied.
    pub applied: [usize; SERVERS],
    pub nodes: [Node; NODES],
    pub crashes: u8,
    pub elections: u8,
    pub moves: u8,
    pub run_outs: u8,
    pub reconnects: u8,
    /// The first node that served each service.
    pub first_server: [Option<u8>; SERVICES],
    /// Some service was served by a node other than its first (the model is
    /// not vacuous).
    pub moved: bool,
}

impl State {
    fn head(&self, bug: Option<PlacementBug>) -> Tree {
        self.prefix(self.log.len(), bug)
    }

    fn view(&self, srv: u8, bug: Option<PlacementBug>) -> Tree {
        self.prefix(self.applied[srv as usize], bug)
    }

    fn prefix(&self, k: usize, bug: Option<PlacementBug>) -> Tree {
        let mut t = self.base.clone();
        for x in &self.log[..k] {
            t.apply(*x, bug);
        }
        t
    }

    /// Commits `txn` through `srv` if its checks hold at the head; `srv`
    /// then answers from a replica that includes it.
    fn commit(&mut self, txn: Txn, srv: u8, bug: Option<PlacementBug>) -> bool {
        let ok = self.head(bug).apply(txn, bug);
        if ok {
            self.log.push(txn);
        }
        self.applied[srv as usize] = self.log.len();
        self.compact(bug);
        ok
    }

    fn compact(&mut self, bug: Option<PlacementBug>) {
        let m = *self.applied.iter().min().unwrap_or(&0);
        for x in self.log.drain(..m) {
            self.base.apply(x, bug);
        }
        for a in &mut self.applied {
            *a -= m;
        }
    }

    /// Which nodes serve `service` now.
    pub fn servers_of(&self, service: usize) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.serving[service].is_some())
            .count()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Create this run's lease (a new incarnation).
    CreateLease,
    /// Renew the lease (NoNode: it was deleted; the agent fences all and
    /// starts a new incarnation).
    Renew,
    /// The lease ends without renewal: everything served under it is
    /// fenced, agent alive or not.
    RunOut,
    Crash,
    Restart,
    /// Serve `service`, assigned to this incarnation in this node's view.
    Serve(u8),
    /// Stop serving `service`, no longer assigned to us in our view.
    Stop(u8),
    /// Hand `service` over to the move's target: stop serving, then write.
    HandOver(u8),
    /// Stand for assigner.
    Stand,
    /// As assigner: place `service` (unassigned, or held under a lease
    /// that no longer exists) on `node`'s lease.
    Place(u8, u8),
    /// As assigner: request the move of `service` to `node`.
    Move(u8, u8),
    /// As assigner: delete `node`'s lease, which has run out (the lease
    /// model's premise: the conditional delete succeeds only then).
    TakeOver(u8),
    /// Switch to another ZooKeeper server (a reconnect).
    Reconnect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Node(u8, Step),
    /// A lagging server applies the next committed transaction.
    Replicate(u8),
    /// The assigner's election znode goes (its session expired, or the next
    /// in line deleted it): the assigner does not know yet.
    Depose,
    /// A lease's session expires (only after its lease ran out).
    SessionExpires(u8),
}

pub struct Placement(pub PlacementConfig);

pub const ONE_SERVES_EACH: &str = "one node serves each service";
pub const SOMETIMES_MOVED: &str = "a service moved";

impl Model for Placement {
    type State = State;
    type Action = Action;

    /// A settled cluster: every node's first run holds its lease, node 0
    /// is the assigner, service 0 is served by node 0 and service 1 by
    /// node 1, and every server has applied all of it.
    fn init_states(&self) -> Vec<State> {
        let inc = |node: u8| Inc { node, run: 1 };
        let node = |i: u8| Node {
            alive: true,
            inc: Some(inc(i)),
            running: Some(inc(i)),
            serving: [0, 1].map(|sv| (sv == i).then_some(inc(i))),
            // Node 0, the assigner, on a server of its own.
            server: u8::from(i > 0),
            assigner_term: (i == 0).then_some(1),
            runs: 1,
        };
        let placed = |i: u8| {
            (
                Some(Assignment {
                    holder: inc(i),
                    to: None,
                }),
                1,
            )
        };
        vec![State {
            log: Vec::new(),
            base: Tree {
                leases: [0, 1, 2].map(|i| Some(inc(i))),
                assigner: Some((0, 1)),
                assign: [placed(0), placed(1)],
            },
            applied: [0; SERVERS],
            nodes: [node(0), node(1), node(2)],
            crashes: 0,
            elections: 1,
            moves: 0,
            run_outs: 0,
            reconnects: 0,
            first_server: [Some(0), Some(1)],
            moved: false,
        }]
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        let c = &self.0;
        let bug = c.bug;
        let head = s.head(bug);
        for srv in 0..SERVERS {
            if s.applied[srv] < s.log.len() {
                out.push(Action::Replicate(srv as u8));
            }
        }
        // A deposition matters only if someone may stand again.
        if head.assigner.is_some() && s.elections < c.elections {
            out.push(Action::Depose);
        }
        for (i, n) in s.nodes.iter().enumerate() {
            let i8 = i as u8;
            if let Some(inc) = head.leases[i]
                && n.running != Some(inc)
            {
                out.push(Action::SessionExpires(i8));
            }
            let a = |st| Action::Node(i8, st);
            if !n.alive {
                out.push(a(Step::Restart));
                if n.running.is_some() && s.run_outs < c.run_outs {
                    out.push(a(Step::RunOut));
                }
                continue;
            }
            if s.crashes < c.crashes {
                out.push(a(Step::Crash));
            }
            if s.reconnects < c.reconnects {
                out.push(a(Step::Reconnect));
            }
            let view = s.view(n.server, bug);
            match n.inc {
                None => out.push(a(Step::CreateLease)),
                Some(inc) => {
                    // A renewal changes something only after a run-out,
                    // or when it finds the lease gone.
                    if n.running != Some(inc) || !head.has_lease(inc) {
                        out.push(a(Step::Renew));
                    }
                    if n.running.is_some() && s.run_outs < c.run_outs {
                        out.push(a(Step::RunOut));
                    }
                }
            }
            for sv in 0..SERVICES {
                let (asg, _) = view.assign[sv];
                let mine = asg.is_some_and(|x| self.names(x.holder, n));
                match (n.serving[sv], asg) {
                    (None, Some(x)) if mine && x.to.is_none() && n.running == n.inc => {
                        out.push(a(Step::Serve(sv as u8)));
                    }
                    (Some(_), Some(x)) if mine && x.to.is_some() => {
                        out.push(a(Step::HandOver(sv as u8)));
                    }
                    (Some(_), _) if !mine => out.push(a(Step::Stop(sv as u8))),
                    _ => {}
                }
            }
            if n.assigner_term.is_none() && view.assigner.is_none() && s.elections < c.elections {
                out.push(a(Step::Stand));
            }
            if n.assigner_term.is_some() {
                self.assigner_actions(&view, i8, s, out);
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let bug = self.0.bug;
        let mut s = last.clone();
        match action {
            Action::Replicate(srv) => {
                s.applied[srv as usize] += 1;
                s.compact(bug);
            }
            Action::Depose => {
                s.log.push(Txn::Depose);
                s.compact(bug);
            }
            Action::SessionExpires(i) => {
                let inc = s.head(bug).lease_of(i)?;
                s.log.push(Txn::DeleteLease(inc));
                s.compact(bug);
            }
            Action::Node(i, step) => self.node_step(&mut s, i, step),
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(ONE_SERVES_EACH, |_: &Placement, s: &State| {
                (0..SERVICES).all(|sv| s.servers_of(sv) <= 1)
            }),
            Property::sometimes(SOMETIMES_MOVED, |_: &Placement, s: &State| s.moved),
        ]
    }
}

impl Placement {
    /// Whether an assignment to `holder` names node `n`'s current run.
    fn names(&self, holder: Inc, n: &Node) -> bool {
        if self.0.bug == Some(PlacementBug::ByNodeName) {
            n.inc.is_some_and(|inc| inc.node == holder.node)
        } else {
            n.inc == Some(holder)
        }
    }

    /// Whether the lease an assignment names is gone, in `view`.
    fn holder_gone(&self, view: &Tree, holder: Inc) -> bool {
        if self.0.bug == Some(PlacementBug::ByNodeName) {
            view.leases[holder.node as usize].is_none()
        } else {
            !view.has_lease(holder)
        }
    }

    fn assigner_actions(&self, view: &Tree, i: u8, s: &State, out: &mut Vec<Action>) {
        let a = |st| Action::Node(i, st);
        for sv in 0..SERVICES {
            let (asg, _) = view.assign[sv];
            let free = asg.is_none_or(|x| self.holder_gone(view, x.holder));
            for m in 0..NODES {
                let Some(target) = view.lease_of(m as u8) else {
                    continue;
                };
                if free {
                    out.push(a(Step::Place(sv as u8, m as u8)));
                } else if let Some(x) = asg
                    && x.to.is_none()
                    && x.holder != target
                    && s.moves < self.0.moves
                {
                    out.push(a(Step::Move(sv as u8, m as u8)));
                }
            }
        }
        for m in 0..NODES {
            // Premise of the lease model: the wait is over only once that
            // lease ran out (its holder fenced).
            if let Some(inc) = view.lease_of(m as u8) {
                let holder = &s.nodes[m];
                if holder.running != Some(inc) {
                    out.push(a(Step::TakeOver(m as u8)));
                }
            }
        }
    }

    fn node_step(&self, s: &mut State, i: u8, step: Step) {
        let bug = self.0.bug;
        let iu = i as usize;
        let srv = s.nodes[iu].server;
        let fence = |n: &mut Node, inc: Inc| {
            for x in &mut n.serving {
                if *x == Some(inc) {
                    *x = None;
                }
            }
        };
        match step {
            Step::CreateLease => {
                let inc = Inc {
                    node: i,
                    run: s.nodes[iu].runs,
                };
                if s.commit(Txn::CreateLease(inc), srv, bug) {
                    let n = &mut s.nodes[iu];
                    n.inc = Some(inc);
                    n.running = Some(inc);
                }
            }
            Step::Renew => {
                let Some(inc) = s.nodes[iu].inc else { return };
                if s.commit(Txn::Renew(inc), srv, bug) {
                    s.nodes[iu].running = Some(inc);
                } else {
                    // NoNode: the lease is gone; fence all, start anew.
                    let n = &mut s.nodes[iu];
                    fence(n, inc);
                    n.running = None;
                    n.inc = None;
                    n.runs += 1;
                }
            }
            Step::RunOut => {
                s.run_outs += 1;
                let n = &mut s.nodes[iu];
                // The kernel fences what was served under it.
                if let Some(inc) = n.running.take() {
                    fence(n, inc);
                }
            }
            Step::Crash => {
                s.crashes += 1;
                let n = &mut s.nodes[iu];
                // The kernel keeps serving (the pinned fence ends it at the
                // lease's end, a RunOut); the agent's beliefs are gone.
                n.alive = false;
                n.assigner_term = None;
            }
            Step::Restart => {
                let n = &mut s.nodes[iu];
                n.alive = true;
                if n.inc.is_some() {
                    n.runs += 1;
                }
                n.inc = None;
                // The old run's lease runs on in the kernel until it runs
                // out (`running` stays until then); the new run renews
                // nothing of it and waits for its znode to go.
            }
            Step::Reconnect => {
                // ZooKeeper lets a client reconnect only to a server that
                // has seen everything the client saw.
                s.reconnects += 1;
                let old = srv as usize;
                let new = (old + 1) % SERVERS;
                s.applied[new] = s.applied[new].max(s.applied[old]);
                s.nodes[iu].server = new as u8;
            }
            Step::Serve(sv) => {
                let n = &mut s.nodes[iu];
                n.serving[sv as usize] = n.inc;
                match s.first_server[sv as usize] {
                    None => s.first_server[sv as usize] = Some(i),
                    Some(f) if f != i => s.moved = true,
                    Some(_) => {}
                }
            }
            Step::Stop(sv) => s.nodes[iu].serving[sv as usize] = None,
            Step::HandOver(sv) => {
                let view = s.view(srv, bug);
                let (Some(x), version) = view.assign[sv as usize] else {
                    return;
                };
                let Some(to) = x.to else { return };
                let txn = Txn::SetAssign {
                    service: sv,
                    value: Assignment {
                        holder: to,
                        to: None,
                    },
                    version,
                    by: None,
                };
                if bug == Some(PlacementBug::HandOverBeforeStopping) {
                    s.commit(txn, srv, bug);
                    // Stops on a later Stop step, once its view moved.
                } else {
                    s.nodes[iu].serving[sv as usize] = None;
                    s.commit(txn, srv, bug);
                }
            }
            Step::Stand => {
                s.elections += 1;
                let term = s.elections;
                if s.commit(Txn::Elect { node: i, term }, srv, bug) {
                    s.nodes[iu].assigner_term = Some(term);
                }
            }
            Step::Place(sv, m) | Step::Move(sv, m) => {
                let view = s.view(srv, bug);
                let Some(term) = s.nodes[iu].assigner_term else {
                    return;
                };
                let Some(target) = view.lease_of(m) else {
                    return;
                };
                let (cur, version) = view.assign[sv as usize];
                let value = match (step, cur) {
                    (Step::Move(..), Some(x)) => {
                        s.moves += 1;
                        Assignment {
                            holder: x.holder,
                            to: Some(target),
                        }
                    }
                    _ => Assignment {
                        holder: target,
                        to: None,
                    },
                };
                s.commit(
                    Txn::SetAssign {
                        service: sv,
                        value,
                        version,
                        by: Some((i, term)),
                    },
                    srv,
                    bug,
                );
            }
            Step::TakeOver(m) => {
                let view = s.view(srv, bug);
                if let Some(inc) = view.lease_of(m) {
                    s.commit(Txn::DeleteLease(inc), srv, bug);
                }
            }
        }
    }
}

/// What one exhaustive check of placement found.
#[derive(Debug)]
pub struct PlacementOutcome {
    /// Every state up to the depth was explored (the cap was not reached).
    pub complete: bool,
    pub states: usize,
    pub depth: usize,
    pub elapsed: std::time::Duration,
    /// Each property, with the actions of its discovery if there is one.
    pub found: Vec<(&'static str, Option<String>)>,
}

impl PlacementOutcome {
    pub fn violations(&self) -> Vec<&'static str> {
        self.found
            .iter()
            .filter(|(p, t)| t.is_some() && *p != SOMETIMES_MOVED)
            .map(|(p, _)| *p)
            .collect()
    }

    pub fn trace(&self, property: &str) -> Option<&str> {
        self.found
            .iter()
            .find(|(p, _)| *p == property)
            .and_then(|(_, t)| t.as_deref())
    }
}

/// Explores every state of `config` up to `depth` steps, breadth first.
/// `max_states` caps the states generated (memory grows with them).
pub fn check_placement(
    config: &PlacementConfig,
    depth: usize,
    max_states: usize,
) -> PlacementOutcome {
    use stateright::Checker as _;
    let started = std::time::Instant::now();
    let model = Placement(config.clone());
    let checker = Placement(config.clone())
        .checker()
        .target_max_depth(depth)
        .target_state_count(max_states)
        .spawn_bfs()
        .join();
    let found = model
        .properties()
        .iter()
        .map(|p| {
            let trace = checker.discovery(p.name).map(|path| {
                let always = matches!(p.expectation, Expectation::Always);
                let steps: Vec<String> = path
                    .into_actions()
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect();
                format!(
                    "{}{}",
                    if always {
                        "counterexample: "
                    } else {
                        "example: "
                    },
                    steps.join(" -> ")
                )
            });
            (p.name, trace)
        })
        .collect();
    PlacementOutcome {
        complete: checker.state_count() < max_states,
        states: checker.unique_state_count(),
        depth: checker.max_depth(),
        elapsed: started.elapsed(),
        found,
    }
}
