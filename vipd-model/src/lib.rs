//! vipd's lease protocol as a model, checked exhaustively with stateright:
//! two nodes (A leads at the start, B is next in line), a ZooKeeper
//! ensemble of three servers, each node's kernel, clocks that drift, and
//! the faults. The timing rules are vipd-lease's, the very code vipd runs,
//! on the model's ticks. docs/DESIGN.md "The model" says what is modelled,
//! what is abstracted, and how to run it.

pub mod placement;
mod trace;
mod zk;

use std::time::Duration;

use stateright::{Expectation, Model, Property};
use vipd_lease::{FenceStated, KERNEL_LIFETIME_SLACK, LeaseTimes, Observer, StatedLease, Time};

pub use trace::format_trace;
use zk::{Txn, Zk};

/// A node's clock in the model: milliseconds since the start, on that
/// node's clock (each drifts on its own; ZooKeeper's is the model's `now`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(pub u64);

impl Time for Tick {
    fn plus(self, d: Duration) -> Self {
        Tick(self.0.saturating_add(ceil_ms(d)))
    }
    fn since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// Durations round up to whole milliseconds: the model's clocks move in
/// ticks of many milliseconds, so a timer due at 12.5 ms fires at 13 ms or
/// later, as a real timer fires at or after its deadline.
fn ceil_ms(d: Duration) -> u64 {
    let ms = d.as_millis();
    let ms = if d.subsec_nanos().is_multiple_of(1_000_000) {
        ms
    } else {
        ms + 1
    };
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// A protocol change known to be wrong, to show the checker finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bug {
    /// The successor deletes the leader's znode whatever its version.
    TakeoverWithoutVersion,
    /// The engine renews an address's lifetime without checking that the
    /// lease still runs.
    LifetimeRenewedAfterLease,
    /// The leader counts its lease from the renewal's answer, not its send.
    LeaseFromAnswer,
    /// The engine writes a whole address lifetime however late the
    /// renewal's answer came (vipd before the model found it).
    FullLifetimeAtLateAnswer,
    /// A leader states that its fence outlives its agent although it does
    /// not (`Config::pinned` false): its successor times it by the fenced
    /// rule.
    FenceClaimedWithoutPinning,
}

/// Which faults the checker may inject, and how many in one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Faults {
    /// At most this many faults in one run.
    pub budget: u8,
    pub kill: bool,
    pub pause: bool,
    pub zk_partition: bool,
    pub lose: bool,
    pub delay: bool,
    pub server_lost: bool,
    /// ZooKeeper servers other than the writer's apply the log late.
    pub lagging: bool,
    /// How many ticks a node's clock may run ahead of or behind the
    /// model's time over a run (a rate: once slow, a clock stays slow).
    pub drift_ticks: u8,
    /// The nodes faults may hit (A, B).
    pub targets: [bool; 2],
}

impl Faults {
    /// Every kind, `budget` of them per run.
    pub fn all(budget: u8) -> Faults {
        Faults {
            budget,
            kill: true,
            pause: true,
            zk_partition: true,
            lose: true,
            delay: true,
            server_lost: true,
            lagging: true,
            drift_ticks: 1,
            targets: [true, true],
        }
    }

    /// None of them: the protocol on its own, with only the clocks drifting.
    pub fn none() -> Faults {
        Faults {
            budget: 0,
            kill: false,
            pause: false,
            zk_partition: false,
            lose: false,
            delay: false,
            server_lost: false,
            lagging: false,
            drift_ticks: 0,
            targets: [true, true],
        }
    }
}

/// The model's settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub lease: LeaseTimes,
    pub session: Duration,
    /// The model's clock step.
    pub tick: Duration,
    /// How long a run lasts at most.
    pub horizon: Duration,
    /// The in-kernel fence: XDP stops answering for an address this long
    /// after its lease's end, whatever the address's kernel lifetime.
    /// `None` is XDP without the fence, which passes an expired entry's ARP
    /// to the kernel (so the kernel answers while the address lives).
    pub fence: Option<Duration>,
    /// Per node (A, B), with `fence`: the fence outlives the agent (its
    /// programs and maps are pinned), and the node says so in its znode
    /// when it leads, so its successor times it by the fenced rule
    /// (`LeaseTimes::fenced_takeover_after`). False: the fence dies with a
    /// killed agent (a paused one keeps it), and the leader is timed by the
    /// rule that waits for its own fencing.
    pub pinned: [bool; 2],
    pub bug: Option<Bug>,
    pub faults: Faults,
    /// The engine checks the lease and writes the lifetime in one step
    /// (no pause can fall between them). Off is the code: an await lies
    /// between the check and the netlink write.
    pub engine_atomic: bool,
}

impl Config {
    /// vipd's defaults: a 6 s session, the lease a third of it (2 s),
    /// a 100 ms margin; ticks of 100 ms.
    pub fn default_rule(faults: Faults) -> Config {
        let session = Duration::from_secs(6);
        let lease = LeaseTimes::new(session, None, Duration::from_millis(100))
            .expect("the default lease rule is valid");
        Config {
            lease,
            session,
            tick: Duration::from_millis(100),
            horizon: Duration::from_millis(4000),
            fence: None,
            pinned: [true, true],
            bug: None,
            faults,
            engine_atomic: false,
        }
    }

    /// A short lease, as an operator chooses for a fast takeover.
    pub fn short_lease(lease_ms: u64, faults: Faults) -> Config {
        let session = Duration::from_secs(1);
        let lease = LeaseTimes::new(
            session,
            Some(Duration::from_millis(lease_ms)),
            Duration::from_millis(100),
        )
        .expect("a short lease fits a 1 s session");
        Config {
            lease,
            session,
            tick: Duration::from_millis(25),
            horizon: Duration::from_millis(1500),
            fence: None,
            pinned: [true, true],
            bug: None,
            faults,
            engine_atomic: false,
        }
    }

    fn has(&self, bug: Bug) -> bool {
        self.bug == Some(bug)
    }

    fn tick_ms(&self) -> u64 {
        ceil_ms(self.tick)
    }

    /// How long the kernel keeps an address after its lifetime was set:
    /// the lifetime and, at worst, the check's slack.
    fn kernel_keeps(&self) -> u64 {
        u64::from(self.lease.address_lifetime()) * 1000 + ceil_ms(KERNEL_LIFETIME_SLACK)
    }

    /// How long the kernel keeps an address whose lifetime the engine
    /// writes at `now` for a lease ending at `until` (the agent's rule,
    /// `LeaseTimes::lifetime_at`); `None`: the engine writes none.
    fn kernel_keeps_at(&self, until: u64, now: u64) -> Option<u64> {
        let secs = if self.has(Bug::FullLifetimeAtLateAnswer)
            || self.has(Bug::LifetimeRenewedAfterLease)
        {
            Some(self.lease.address_lifetime())
        } else {
            self.lease
                .lifetime_at(Tick(until), Tick(now), KERNEL_LIFETIME_SLACK)
        };
        secs.map(|s| u64::from(s) * 1000 + ceil_ms(KERNEL_LIFETIME_SLACK))
    }

    /// Node `i`'s fence (if any) outlives its agent.
    fn fence_survives(&self, i: usize) -> bool {
        self.fence.is_some() && self.pinned[i]
    }

    /// What node `i`'s znode states when it leads (all nodes run these
    /// settings): the margin for the unfenced rule, and whether its fence
    /// outlives it.
    fn stated(&self, i: usize) -> StatedLease {
        let claims = self.fence_survives(i)
            || (self.fence.is_some() && self.has(Bug::FenceClaimedWithoutPinning));
        StatedLease::Stated {
            length: self.lease.length,
            renew_every: Some(self.lease.renew_every()),
            margin: Some(self.lease.unfenced_margin()),
            fence: claims.then_some(FenceStated {
                margin: Some(self.lease.margin),
            }),
        }
    }

    /// The longest a VIP may go unserved while a healthy node is up and
    /// connected: the takeover wait, plus the poll that first sees the
    /// silent leader's last version and the reads' deadline, plus one tick
    /// for each of the model's steps that round up to a tick.
    pub fn unserved_bound(&self) -> u64 {
        let l = self.lease;
        let wait = l.takeover_after().max(l.fenced_takeover_after());
        ceil_ms(wait + l.poll_every() + l.poll_deadline())
            + 3 * self.tick_ms()
            + 2 * u64::from(self.faults.drift_ticks) * self.tick_ms()
    }
}

/// The nodes, by index.
pub const NAMES: [&str; 2] = ["A", "B"];
const SERVERS: usize = 3;

/// A request a node sent to ZooKeeper, in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Req {
    id: u8,
    kind: ReqKind,
    delayed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReqKind {
    /// set_data on our own znode at a version (any when `None`).
    Renew { seq: u8, version: Option<i32> },
    /// get_data on our own znode (no sync: the code reads it plainly).
    GetOwn { seq: u8 },
    /// sync, then get_data with a watch, of the predecessor's znode.
    Read { seq: u8 },
    /// multi: delete the leader's znode at `version`, set our own.
    Takeover { leader: u8, version: i32, own: u8 },
    /// sync, then list the election.
    List { own: u8 },
    /// create an ephemeral sequential candidate znode.
    Stand,
}

/// ZooKeeper's answer, or a watch firing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Resp {
    id: u8,
    kind: RespKind,
    delayed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RespKind {
    Version(i32),
    NoNode,
    BadVersion,
    /// The first candidate's sequence number, our predecessor's, and
    /// whether our own znode is there.
    Children {
        first: Option<u8>,
        pred: Option<u8>,
        mine: bool,
    },
    Created(u8),
    Expired,
    /// The watch on the predecessor's znode fired.
    Fired,
}

/// What a node's coordination task is doing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Leader {
        seq: u8,
        version: i32,
        /// The send time of the newest acknowledged renewal (local).
        acked: u64,
        next_renew: u64,
        /// A renewal's answer was lost: read our znode before the next.
        unsure: bool,
    },
    /// The first renewal of a term is in flight.
    Starting { seq: u8 },
    Next {
        seq: u8,
        pred: u8,
        observer: Observer<Tick>,
        next_poll: u64,
    },
    /// Must list the election (or stand again when `seq` is `None`).
    Listing { seq: Option<u8>, retry_at: u64 },
    /// The session expired: out of this run.
    Out,
}

/// The request a node waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Wait {
    id: u8,
    kind: ReqKind,
    sent: u64,
    deadline: u64,
}

/// An address in a node's kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Addr {
    /// The kernel removes it at this local time (at the latest).
    expires: u64,
    /// The XDP entry's lease end (local).
    xdp_until: u64,
    /// Its lifetime was last set after the lease it was set for.
    late: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Engine {
    /// The lease applied (local end).
    grant: Option<u64>,
    /// A renewed lease waiting to be applied.
    pending: Option<u64>,
    /// Checked valid (the lease's end, how long the kernel will keep the
    /// address from the write); the lifetime write comes next.
    checked: Option<(u64, u64)>,
    /// Told to step down.
    stop: bool,
    addr: Option<Addr>,
    last_renewed: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    alive: bool,
    paused: bool,
    /// Local clock, ms.
    clock: u64,
    /// Ticks this clock ran behind (negative: ahead of) the model's time.
    drift: i8,
    server: Option<u8>,
    zk_cut: bool,
    role: Role,
    wait: Option<Wait>,
    next_id: u8,
    /// Our predecessor's watch fired: read at once.
    fired: bool,
    to_zk: Vec<Req>,
    from_zk: Vec<Resp>,
    engine: Engine,
    /// A fault touched this node (the liveness bound is promised only
    /// for the others).
    faulted: bool,
}

impl Node {
    fn up(&self) -> bool {
        self.alive && !self.paused
    }

    /// The node answers for the VIP: the address is in its kernel and, with
    /// the in-kernel fence, its lease has not ended longer ago than the
    /// fence window. A fence that is not pinned dies with a killed agent.
    fn serving(&self, fence: Option<Duration>, pinned: bool) -> bool {
        let fence = fence.filter(|_| self.alive || pinned);
        self.engine.addr.is_some_and(|a| {
            self.clock < a.expires && fence.is_none_or(|w| self.clock < a.xdp_until + ceil_ms(w))
        })
    }

    fn late_served(&self, fence: Option<Duration>, pinned: bool) -> bool {
        self.serving(fence, pinned) && self.engine.addr.is_some_and(|a| a.late)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// ZooKeeper's (and the model's) time, ms.
    now: u64,
    nodes: [Node; 2],
    zk: Zk,
    faults_left: u8,
    /// Since when no node serves while a node untouched by faults is up
    /// and connected.
    unserved_since: Option<u64>,
    /// Some node took over from another (the model is not vacuous).
    took_over: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    Kill(u8),
    Pause(u8),
    CutFromZk(u8),
    LoseRequest(u8),
    LoseAnswer(u8),
    DelayRequest(u8),
    DelayAnswer(u8),
    ServerLost(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Time passes one tick on every clock; `slow`'s clock stands still,
    /// `fast`'s moves two ticks.
    Tick {
        slow: Option<u8>,
        fast: Option<u8>,
    },
    /// A node's coordination task or engine takes its next step.
    Node(u8, Step),
    /// ZooKeeper handles the node's oldest request.
    Zk(u8),
    /// A lagging server applies the next committed transaction.
    Replicate(u8),
    Fault(Fault),
    Resume(u8),
    HealZk(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    Receive,
    Timeout,
    Renew,
    Fence,
    Poll,
    TakeoverDue,
    List,
    EngineCheck,
    EngineWrite,
    EngineRemove,
    Reconnect(u8),
}

/// The model: a [`Config`] checked by stateright.
pub struct Lease(pub Config);

impl Lease {
    fn cfg(&self) -> &Config {
        &self.0
    }

    fn node_steps(&self, s: &State, i: usize, urgent: &mut Vec<Action>, lazy: &mut Vec<Action>) {
        let n = &s.nodes[i];
        let c = self.cfg();
        let a = |st| Action::Node(i as u8, st);
        if n.alive && !n.paused {
            if let Some(r) = n.from_zk.first() {
                if r.delayed {
                    lazy.push(a(Step::Receive));
                } else {
                    urgent.push(a(Step::Receive));
                }
            }
        }
        if !n.up() {
            return;
        }
        if n.wait.is_some_and(|w| n.clock >= w.deadline) {
            urgent.push(a(Step::Timeout));
        }
        if n.server.is_none() && !n.zk_cut && n.role != Role::Out {
            for srv in 0..SERVERS {
                if s.zk.up[srv] {
                    urgent.push(a(Step::Reconnect(srv as u8)));
                }
            }
        }
        match &n.role {
            Role::Leader {
                acked, next_renew, ..
            } => {
                let fence_at = c.lease.until(Tick(*acked)).0;
                if n.clock >= fence_at {
                    urgent.push(a(Step::Fence));
                }
                if n.wait.is_none() && n.clock >= *next_renew {
                    urgent.push(a(Step::Renew));
                }
            }
            Role::Next {
                observer,
                next_poll,
                ..
            } => {
                if n.wait.is_none() {
                    if n.clock >= *next_poll || n.fired {
                        urgent.push(a(Step::Poll));
                    }
                    if observer.takeover_at().is_some_and(|t| n.clock >= t.0) {
                        urgent.push(a(Step::TakeoverDue));
                    }
                }
            }
            Role::Listing { retry_at, .. } => {
                if n.wait.is_none() && n.clock >= *retry_at && n.server.is_some() {
                    urgent.push(a(Step::List));
                }
            }
            Role::Starting { .. } | Role::Out => {}
        }
        let e = &n.engine;
        if e.checked.is_some() {
            urgent.push(a(Step::EngineWrite));
        } else if e.pending.is_some() {
            urgent.push(a(Step::EngineCheck));
        } else if (e.stop && (e.addr.is_some() || e.grant.is_some()))
            || e.grant.is_some_and(|u| n.clock >= u)
        {
            urgent.push(a(Step::EngineRemove));
        }
    }

    fn fault_actions(&self, s: &State, out: &mut Vec<Action>) {
        let f = self.cfg().faults;
        if s.faults_left == 0 {
            return;
        }
        for (i, n) in s.nodes.iter().enumerate() {
            if !n.alive || !f.targets[i] {
                continue;
            }
            let i = i as u8;
            if f.kill {
                out.push(Action::Fault(Fault::Kill(i)));
            }
            if f.pause && !n.paused {
                out.push(Action::Fault(Fault::Pause(i)));
            }
            if f.zk_partition && !n.zk_cut {
                out.push(Action::Fault(Fault::CutFromZk(i)));
            }
            if f.lose {
                if !n.to_zk.is_empty() {
                    out.push(Action::Fault(Fault::LoseRequest(i)));
                }
                if !n.from_zk.is_empty() {
                    out.push(Action::Fault(Fault::LoseAnswer(i)));
                }
            }
            if f.delay {
                if n.to_zk.first().is_some_and(|r| !r.delayed) {
                    out.push(Action::Fault(Fault::DelayRequest(i)));
                }
                if n.from_zk.first().is_some_and(|r| !r.delayed) {
                    out.push(Action::Fault(Fault::DelayAnswer(i)));
                }
            }
        }
        if f.server_lost && s.zk.up.iter().all(|u| *u) {
            for srv in 0..SERVERS {
                out.push(Action::Fault(Fault::ServerLost(srv as u8)));
            }
        }
    }

    fn send(&self, n: &mut Node, kind: ReqKind, timeout: Duration) {
        let id = n.next_id;
        n.next_id = n.next_id.wrapping_add(1);
        n.wait = Some(Wait {
            id,
            kind,
            sent: n.clock,
            deadline: Tick(n.clock).plus(timeout).0,
        });
        // Cut off or disconnected: the request goes nowhere and times out.
        if n.server.is_some() && !n.zk_cut {
            n.to_zk.push(Req {
                id,
                kind,
                delayed: false,
            });
        }
    }

    /// The coordination task stops leading: the engine steps down.
    fn step_down(n: &mut Node, role: Role) {
        n.role = role;
        n.engine.stop = true;
        n.engine.pending = None;
    }

    fn lead(&self, n: &mut Node, seq: u8, version: i32, sent: u64) {
        let c = self.cfg();
        let acked = if c.has(Bug::LeaseFromAnswer) {
            n.clock
        } else {
            sent
        };
        if n.clock >= c.lease.until(Tick(sent)).0 {
            // Answered after the lease: not elected; try again.
            n.role = Role::Listing {
                seq: Some(seq),
                retry_at: n.clock,
            };
            return;
        }
        n.role = Role::Leader {
            seq,
            version,
            acked,
            next_renew: Tick(sent).plus(c.lease.renew_every()).0,
            unsure: false,
        };
        n.engine.stop = false;
        n.engine.pending = Some(c.lease.until(Tick(acked)).0);
    }

    fn receive(&self, s: &mut State, i: usize) {
        let c = self.cfg().clone();
        let n = &mut s.nodes[i];
        let r = n.from_zk.remove(0);
        if r.kind == RespKind::Fired {
            n.fired = true;
            return;
        }
        if r.kind == RespKind::Expired {
            n.wait = None;
            Self::step_down(n, Role::Out);
            return;
        }
        let Some(w) = n.wait.filter(|w| w.id == r.id) else {
            // An answer after its deadline: nobody waits for it.
            return;
        };
        n.wait = None;
        let retry = (c.session / 10).max(Duration::from_millis(20));
        let later = Tick(n.clock).plus(retry).0;
        match (n.role.clone(), w.kind, r.kind) {
            (Role::Leader { seq, .. }, ReqKind::Renew { .. }, RespKind::Version(v)) => {
                let acked = if c.has(Bug::LeaseFromAnswer) {
                    n.clock
                } else {
                    w.sent
                };
                if let Role::Leader {
                    version, acked: a, ..
                } = &mut n.role
                {
                    *version = v;
                    *a = acked;
                }
                let _ = seq;
                n.engine.pending = Some(c.lease.until(Tick(acked)).0);
            }
            (Role::Leader { .. }, ReqKind::Renew { .. } | ReqKind::GetOwn { .. }, _)
                if matches!(r.kind, RespKind::NoNode | RespKind::BadVersion) =>
            {
                Self::step_down(
                    n,
                    Role::Listing {
                        seq: None,
                        retry_at: n.clock,
                    },
                );
            }
            (Role::Leader { .. }, ReqKind::GetOwn { seq }, RespKind::Version(v)) => {
                if let Role::Leader {
                    version, unsure, ..
                } = &mut n.role
                {
                    *version = v;
                    *unsure = false;
                }
                self.send(
                    n,
                    ReqKind::Renew {
                        seq,
                        version: Some(v),
                    },
                    c.lease.length,
                );
            }
            (Role::Starting { seq }, ReqKind::Renew { .. }, RespKind::Version(v)) => {
                self.lead(n, seq, v, w.sent);
            }
            (Role::Starting { .. }, ReqKind::Renew { .. }, _) => {
                n.role = Role::Listing {
                    seq: None,
                    retry_at: n.clock,
                };
            }
            (
                Role::Next {
                    seq, mut observer, ..
                },
                ReqKind::Read { .. },
                RespKind::Version(v),
            ) => {
                // Two nodes: the predecessor is the other one.
                let taken = observer.answered(Tick(w.sent), Tick(n.clock), v, c.stated(1 - i));
                if let Role::Next { observer: o, .. } = &mut n.role {
                    *o = observer;
                }
                if let (Some(version), Role::Next { pred, .. }) = (taken, n.role.clone()) {
                    self.send(
                        n,
                        ReqKind::Takeover {
                            leader: pred,
                            version,
                            own: seq,
                        },
                        c.lease.poll_deadline(),
                    );
                }
            }
            (Role::Next { seq, .. }, ReqKind::Read { .. }, RespKind::NoNode) => {
                n.role = Role::Listing {
                    seq: Some(seq),
                    retry_at: n.clock,
                };
            }
            (Role::Next { seq, .. }, ReqKind::Takeover { .. }, RespKind::Version(v)) => {
                s.took_over = true;
                let n = &mut s.nodes[i];
                self.lead(n, seq, v, w.sent);
            }
            (Role::Next { .. }, ReqKind::Takeover { .. } | ReqKind::Read { .. }, _) => {
                if let Role::Next { observer, .. } = &mut n.role {
                    observer.missed();
                }
            }
            (Role::Listing { .. }, ReqKind::Stand, RespKind::Created(seq)) => {
                n.role = Role::Listing {
                    seq: Some(seq),
                    retry_at: n.clock,
                };
            }
            (
                Role::Listing { seq: Some(me), .. },
                ReqKind::List { .. },
                RespKind::Children { first, pred, mine },
            ) => {
                if !mine {
                    n.role = Role::Listing {
                        seq: None,
                        retry_at: n.clock,
                    };
                } else if first == Some(me) {
                    n.role = Role::Starting { seq: me };
                    self.send(
                        n,
                        ReqKind::Renew {
                            seq: me,
                            version: None,
                        },
                        c.lease.length,
                    );
                } else if let Some(pred) = pred {
                    n.role = Role::Next {
                        seq: me,
                        pred,
                        observer: Observer::new(c.lease),
                        next_poll: n.clock,
                    };
                    n.fired = false;
                }
            }
            (Role::Listing { seq, .. }, _, _) => {
                n.role = Role::Listing {
                    seq,
                    retry_at: later,
                };
            }
            _ => {}
        }
    }

    fn timeout(&self, n: &mut Node) {
        let Some(w) = n.wait.take() else { return };
        let retry = (self.cfg().session / 10).max(Duration::from_millis(20));
        match (&mut n.role, w.kind) {
            (Role::Leader { unsure, .. }, ReqKind::Renew { .. }) => *unsure = true,
            (Role::Starting { seq }, _) => {
                n.role = Role::Listing {
                    seq: Some(*seq),
                    retry_at: Tick(n.clock).plus(retry).0,
                };
            }
            (Role::Next { observer, .. }, _) => observer.missed(),
            (Role::Listing { retry_at, .. }, _) => *retry_at = Tick(n.clock).plus(retry).0,
            _ => {}
        }
    }

    fn node_step(&self, s: &mut State, i: usize, step: Step) {
        let c = self.cfg().clone();
        let l = c.lease;
        match step {
            Step::Receive => self.receive(s, i),
            Step::Timeout => self.timeout(&mut s.nodes[i]),
            Step::Reconnect(srv) => {
                let alive = s.zk.session[i].alive;
                let n = &mut s.nodes[i];
                if alive {
                    n.server = Some(srv);
                } else {
                    n.wait = None;
                    Self::step_down(n, Role::Out);
                }
            }
            Step::Fence => {
                let n = &mut s.nodes[i];
                if let Role::Leader { seq, .. } = n.role {
                    n.wait = None;
                    Self::step_down(
                        n,
                        Role::Listing {
                            seq: Some(seq),
                            retry_at: n.clock,
                        },
                    );
                }
            }
            Step::Renew => {
                let n = &mut s.nodes[i];
                if let Role::Leader {
                    seq,
                    version,
                    next_renew,
                    unsure,
                    ..
                } = &mut n.role
                {
                    *next_renew = Tick(n.clock).plus(l.renew_every()).0;
                    let (seq, version, unsure) = (*seq, *version, *unsure);
                    if unsure {
                        self.send(n, ReqKind::GetOwn { seq }, l.length);
                    } else {
                        self.send(
                            n,
                            ReqKind::Renew {
                                seq,
                                version: Some(version),
                            },
                            l.length,
                        );
                    }
                }
            }
            Step::Poll => {
                let n = &mut s.nodes[i];
                n.fired = false;
                if let Role::Next {
                    pred, next_poll, ..
                } = &mut n.role
                {
                    *next_poll = Tick(n.clock).plus(l.poll_every()).0;
                    let pred = *pred;
                    self.send(n, ReqKind::Read { seq: pred }, l.poll_deadline());
                }
            }
            Step::TakeoverDue => {
                let n = &mut s.nodes[i];
                if let Role::Next {
                    seq,
                    pred,
                    observer,
                    ..
                } = &mut n.role
                {
                    if let Some(version) = observer.due(Tick(n.clock)) {
                        let kind = ReqKind::Takeover {
                            leader: *pred,
                            version,
                            own: *seq,
                        };
                        self.send(n, kind, l.poll_deadline());
                    } else {
                        // Not answered recently enough: read again first.
                        observer.missed();
                    }
                }
            }
            Step::List => {
                let n = &mut s.nodes[i];
                if let Role::Listing { seq, .. } = n.role {
                    let kind = match seq {
                        Some(own) => ReqKind::List { own },
                        None => ReqKind::Stand,
                    };
                    self.send(n, kind, c.session / 3);
                }
            }
            Step::EngineCheck => {
                let n = &mut s.nodes[i];
                let Some(until) = n.engine.pending.take() else {
                    return;
                };
                if n.clock >= until && !c.has(Bug::LifetimeRenewedAfterLease) {
                    return;
                }
                n.engine.grant = Some(until);
                // The lifetime is renewed when less than half of it would be
                // left at this lease's end (role.rs, `renews_addresses`).
                let half = u64::from(l.address_lifetime()) * 500;
                let renews = n.engine.addr.is_none()
                    || n.engine.last_renewed.is_none_or(|last| last + half < until);
                // The lifetime is reckoned at the check, as the agent does
                // before its write (`LeaseGrant::lifetime_at`); `None`: the
                // answer came too late for any, the address keeps its own.
                let keeps = c.kernel_keeps_at(until, n.clock);
                if let (true, Some(keeps)) = (renews, keeps) {
                    n.engine.checked = Some((until, keeps));
                    if c.engine_atomic {
                        self.node_step(s, i, Step::EngineWrite);
                    }
                } else if let Some(a) = &mut n.engine.addr {
                    a.xdp_until = until;
                }
            }
            Step::EngineWrite => {
                let n = &mut s.nodes[i];
                let Some((until, keeps)) = n.engine.checked.take() else {
                    return;
                };
                n.engine.addr = Some(Addr {
                    expires: n.clock + keeps,
                    xdp_until: until,
                    late: n.clock >= until,
                });
                n.engine.last_renewed = Some(n.clock);
            }
            Step::EngineRemove => {
                let e = &mut s.nodes[i].engine;
                e.addr = None;
                e.grant = None;
                e.stop = false;
                e.last_renewed = None;
            }
        }
    }

    fn fault(&self, s: &mut State, f: Fault) {
        s.faults_left -= 1;
        match f {
            Fault::Kill(i) => {
                let n = &mut s.nodes[usize::from(i)];
                n.alive = false;
                n.faulted = true;
            }
            Fault::Pause(i) => {
                let n = &mut s.nodes[usize::from(i)];
                n.paused = true;
                n.faulted = true;
            }
            Fault::CutFromZk(i) => {
                let n = &mut s.nodes[usize::from(i)];
                n.zk_cut = true;
                n.faulted = true;
                n.to_zk.clear();
                n.from_zk.clear();
                s.zk.watch[usize::from(i)] = None;
            }
            Fault::LoseRequest(i) => {
                let n = &mut s.nodes[usize::from(i)];
                n.faulted = true;
                n.to_zk.remove(0);
            }
            Fault::LoseAnswer(i) => {
                let n = &mut s.nodes[usize::from(i)];
                n.faulted = true;
                n.from_zk.remove(0);
            }
            Fault::DelayRequest(i) => {
                let n = &mut s.nodes[usize::from(i)];
                n.faulted = true;
                n.to_zk[0].delayed = true;
            }
            Fault::DelayAnswer(i) => {
                let n = &mut s.nodes[usize::from(i)];
                n.faulted = true;
                n.from_zk[0].delayed = true;
            }
            Fault::ServerLost(srv) => {
                s.zk.up[usize::from(srv)] = false;
                for (i, n) in s.nodes.iter_mut().enumerate() {
                    if n.server == Some(srv) {
                        n.faulted = true;
                        n.server = None;
                        n.to_zk.clear();
                        n.from_zk.clear();
                        s.zk.watch[i] = None;
                        // The successor's watch loop ends on a connection
                        // change; it lists the election again.
                        if let Role::Next { seq, .. } = n.role {
                            n.role = Role::Listing {
                                seq: Some(seq),
                                retry_at: n.clock,
                            };
                        }
                    }
                }
                s.zk.server_lost(usize::from(srv));
            }
        }
    }

    /// ZooKeeper handles node `i`'s oldest request.
    fn zk_handle(&self, s: &mut State, i: usize) {
        let c = self.cfg();
        let req = s.nodes[i].to_zk.remove(0);
        let Some(srv) = s.nodes[i].server else { return };
        let srv = usize::from(srv);
        let kind = if !s.zk.session[i].alive {
            RespKind::Expired
        } else {
            match req.kind {
                ReqKind::Renew { seq, version } => {
                    match s.zk.head().iter().find(|z| z.seq == seq) {
                        None => RespKind::NoNode,
                        Some(z) if version.is_some_and(|v| v != z.version) => RespKind::BadVersion,
                        Some(z) => {
                            let v = z.version + 1;
                            s.zk.commit(Txn::Set { seq, version: v }, Some(srv), &mut s.nodes);
                            RespKind::Version(v)
                        }
                    }
                }
                ReqKind::GetOwn { seq } => match s.zk.view(srv).iter().find(|z| z.seq == seq) {
                    Some(z) => RespKind::Version(z.version),
                    None => RespKind::NoNode,
                },
                ReqKind::Read { seq } => {
                    s.zk.sync(srv, &mut s.nodes);
                    s.zk.watch[i] = Some(seq);
                    match s.zk.view(srv).iter().find(|z| z.seq == seq) {
                        Some(z) => RespKind::Version(z.version),
                        None => RespKind::NoNode,
                    }
                }
                ReqKind::Takeover {
                    leader,
                    version,
                    own,
                } => {
                    let head = s.zk.head();
                    let other = head.iter().find(|z| z.seq == leader);
                    let mine = head.iter().find(|z| z.seq == own);
                    match (other, mine) {
                        (None, _) => RespKind::NoNode,
                        (Some(z), _)
                            if z.version != version && !c.has(Bug::TakeoverWithoutVersion) =>
                        {
                            RespKind::BadVersion
                        }
                        (Some(_), None) => RespKind::NoNode,
                        (Some(_), Some(m)) => {
                            let v = m.version + 1;
                            s.zk.commit(
                                Txn::Multi {
                                    del: leader,
                                    set: own,
                                    version: v,
                                },
                                Some(srv),
                                &mut s.nodes,
                            );
                            RespKind::Version(v)
                        }
                    }
                }
                ReqKind::List { own } => {
                    s.zk.sync(srv, &mut s.nodes);
                    let view = s.zk.view(srv);
                    let first = view.first().map(|z| z.seq);
                    let pred = view
                        .iter()
                        .filter(|z| z.seq < own)
                        .map(|z| z.seq)
                        .next_back();
                    let mine = view.iter().any(|z| z.seq == own);
                    RespKind::Children { first, pred, mine }
                }
                ReqKind::Stand => {
                    let seq = s.zk.next_seq;
                    s.zk.next_seq += 1;
                    s.zk.commit(
                        Txn::Create {
                            seq,
                            owner: i as u8,
                        },
                        Some(srv),
                        &mut s.nodes,
                    );
                    RespKind::Created(seq)
                }
            }
        };
        let delayed = req.delayed;
        s.nodes[i].from_zk.push(Resp {
            id: req.id,
            kind,
            delayed,
        });
    }

    fn tick(&self, s: &mut State, slow: Option<u8>, fast: Option<u8>) {
        let t = self.cfg().tick_ms();
        s.now += t;
        for (i, n) in s.nodes.iter_mut().enumerate() {
            if slow == Some(i as u8) {
                n.drift += 1;
            } else if fast == Some(i as u8) {
                n.clock += 2 * t;
                n.drift -= 1;
            } else {
                n.clock += t;
            }
        }
        // Pings: a running client connected to a live server keeps its
        // session; the quorum expires the others after the timeout.
        let session_ms = ceil_ms(self.cfg().session);
        for (i, n) in s.nodes.iter().enumerate() {
            let sess = &mut s.zk.session[i];
            if n.up() && !n.zk_cut && n.server.is_some() && sess.alive {
                sess.heard = s.now;
            }
        }
        for i in 0..s.nodes.len() {
            let sess = s.zk.session[i];
            if sess.alive && s.now.saturating_sub(sess.heard) > session_ms {
                s.zk.session[i].alive = false;
                let owned: Vec<u8> =
                    s.zk.head()
                        .iter()
                        .filter(|z| usize::from(z.owner) == i)
                        .map(|z| z.seq)
                        .collect();
                for seq in owned {
                    s.zk.commit(Txn::Delete { seq }, None, &mut s.nodes);
                }
            }
        }
    }

    /// After each step: track how long nobody has served while a node
    /// untouched by faults is up and connected.
    fn observe(&self, s: &mut State) {
        let served = (0..s.nodes.len()).any(|i| self.serves(s, i));
        let could = s
            .nodes
            .iter()
            .enumerate()
            .any(|(i, n)| n.up() && !n.faulted && n.server.is_some() && s.zk.session[i].alive);
        if served || !could {
            s.unserved_since = None;
        } else if s.unserved_since.is_none() {
            s.unserved_since = Some(s.now);
        }
    }
}

impl Lease {
    /// Node `i` answers for the VIP.
    pub(crate) fn serves(&self, s: &State, i: usize) -> bool {
        s.nodes[i].serving(self.0.fence, self.0.pinned[i])
    }
}

impl Model for Lease {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let c = self.cfg();
        let l = c.lease;
        // A has just written its first renewal (acknowledged, sent at 0)
        // and added the VIP; B stood after it and has not read yet.
        let a = Node {
            alive: true,
            paused: false,
            clock: 0,
            drift: 0,
            server: Some(0),
            zk_cut: false,
            role: Role::Leader {
                seq: 0,
                version: 1,
                acked: 0,
                next_renew: Tick(0).plus(l.renew_every()).0,
                unsure: false,
            },
            wait: None,
            next_id: 0,
            fired: false,
            to_zk: Vec::new(),
            from_zk: Vec::new(),
            engine: Engine {
                grant: Some(l.until(Tick(0)).0),
                pending: None,
                checked: None,
                stop: false,
                addr: Some(Addr {
                    expires: c.kernel_keeps(),
                    xdp_until: l.until(Tick(0)).0,
                    late: false,
                }),
                last_renewed: Some(0),
            },
            faulted: false,
        };
        let b = Node {
            server: Some(1),
            role: Role::Next {
                seq: 1,
                pred: 0,
                observer: Observer::new(l),
                next_poll: 0,
            },
            engine: Engine::default(),
            ..a.clone()
        };
        vec![State {
            now: 0,
            nodes: [a, b],
            zk: Zk::new(c.faults.lagging),
            faults_left: c.faults.budget,
            unserved_since: None,
            took_over: false,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        let mut urgent = Vec::new();
        let mut lazy = Vec::new();
        for i in 0..s.nodes.len() {
            self.node_steps(s, i, &mut urgent, &mut lazy);
            let n = &s.nodes[i];
            if let Some(r) = n.to_zk.first()
                && n.server.is_some()
            {
                if r.delayed {
                    lazy.push(Action::Zk(i as u8));
                } else {
                    urgent.push(Action::Zk(i as u8));
                }
            }
            if n.alive && n.paused {
                lazy.push(Action::Resume(i as u8));
            }
            if n.zk_cut {
                lazy.push(Action::HealZk(i as u8));
            }
        }
        if self.cfg().faults.lagging {
            // A server nobody is connected to catches up only once someone
            // connects: its replica matters only to its clients, and any
            // prefix it could have applied before is still reachable after
            // (the client's next request waits for its turn like any other).
            for srv in 0..SERVERS {
                let connected = s.nodes.iter().any(|n| n.server == Some(srv as u8));
                if connected && s.zk.lagging(srv) {
                    lazy.push(Action::Replicate(srv as u8));
                }
            }
        }
        self.fault_actions(s, &mut lazy);
        // Time passes only when every running process has done what it
        // had to do now: a slow process is a paused one (a fault).
        if urgent.is_empty() {
            lazy.push(Action::Tick {
                slow: None,
                fast: None,
            });
            let d = i8::try_from(self.cfg().faults.drift_ticks).unwrap_or(i8::MAX);
            for (i, n) in s.nodes.iter().enumerate() {
                if n.drift < d && n.drift >= 0 {
                    lazy.push(Action::Tick {
                        slow: Some(i as u8),
                        fast: None,
                    });
                }
                if n.drift > -d && n.drift <= 0 {
                    lazy.push(Action::Tick {
                        slow: None,
                        fast: Some(i as u8),
                    });
                }
            }
        }
        actions.extend(urgent);
        actions.extend(lazy);
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Tick { slow, fast } => self.tick(&mut s, slow, fast),
            Action::Node(i, step) => self.node_step(&mut s, usize::from(i), step),
            Action::Zk(i) => self.zk_handle(&mut s, usize::from(i)),
            Action::Replicate(srv) => s.zk.replicate(usize::from(srv), &mut s.nodes),
            Action::Fault(f) => self.fault(&mut s, f),
            Action::Resume(i) => s.nodes[usize::from(i)].paused = false,
            Action::HealZk(i) => {
                let alive = s.zk.session[usize::from(i)].alive;
                let n = &mut s.nodes[usize::from(i)];
                n.zk_cut = false;
                if !alive {
                    n.wait = None;
                    Self::step_down(n, Role::Out);
                }
            }
        }
        self.observe(&mut s);
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(ONE_SERVES, |m: &Lease, s: &State| {
                (0..s.nodes.len()).filter(|i| m.serves(s, *i)).count() <= 1
            }),
            Property::always(NO_LATE, |m: &Lease, s: &State| {
                !s.nodes
                    .iter()
                    .enumerate()
                    .any(|(i, n)| n.late_served(m.0.fence, m.0.pinned[i]))
            }),
            Property::always(WITHIN_BOUND, |m: &Lease, s: &State| {
                s.unserved_since
                    .is_none_or(|t| s.now - t <= m.0.unserved_bound())
            }),
            Property::sometimes(SOMETIMES_TAKEOVER, |_: &Lease, s: &State| {
                s.took_over && s.nodes[1].serving(None, true)
            }),
        ]
    }

    fn within_boundary(&self, s: &State) -> bool {
        s.now <= ceil_ms(self.cfg().horizon)
    }

    fn format_step(&self, last: &State, action: Action) -> Option<String> {
        Some(trace::step_line(self, last, action))
    }
}

/// What one exhaustive check found.
#[derive(Debug)]
pub struct Outcome {
    /// Every reachable state was explored (no state cap was reached).
    pub complete: bool,
    pub states: usize,
    pub depth: usize,
    pub elapsed: Duration,
    /// Each property, with the trace of its discovery if there is one
    /// (for an `always`, a counterexample; for a `sometimes`, an example).
    pub found: Vec<(&'static str, Option<String>)>,
}

impl Outcome {
    /// The trace of `property`'s discovery, if any.
    pub fn trace(&self, property: &str) -> Option<&str> {
        self.found
            .iter()
            .find(|(p, _)| *p == property)
            .and_then(|(_, t)| t.as_deref())
    }

    /// The safety and liveness properties that failed.
    pub fn violations(&self) -> Vec<&'static str> {
        self.found
            .iter()
            .filter(|(p, t)| t.is_some() && *p != SOMETIMES_TAKEOVER)
            .map(|(p, _)| *p)
            .collect()
    }
}

pub const ONE_SERVES: &str = "one node serves";
pub const NO_LATE: &str = "no address renewed after its lease is served";
pub const WITHIN_BOUND: &str = "served within the bound";
pub const SOMETIMES_TAKEOVER: &str = "a takeover";

/// Explores every state of `config` up to its horizon (breadth first, on
/// `threads` threads).
pub fn check(config: &Config, threads: usize) -> Outcome {
    check_at_most(config, threads, None)
}

/// [`check`], stopping after about `max_states` states generated (repeats
/// included; the memory a check takes grows with them): [`Outcome::complete`] says whether it explored
/// everything.
pub fn check_at_most(config: &Config, threads: usize, max_states: Option<usize>) -> Outcome {
    use stateright::Checker as _;
    let started = std::time::Instant::now();
    let model = Lease(config.clone());
    let mut builder = Lease(config.clone()).checker().threads(threads);
    if let Some(n) = max_states {
        builder = builder.target_state_count(n);
    }
    let checker = builder.spawn_bfs().join();
    let found = model
        .properties()
        .iter()
        .map(|p| {
            (
                p.name,
                checker.discovery(p.name).map(|path| {
                    let holds = matches!(p.expectation, Expectation::Always).then_some(p.condition);
                    format_trace(&model, &path, holds)
                }),
            )
        })
        .collect();
    Outcome {
        // The cap counts states generated, repeats included.
        complete: max_states.is_none_or(|n| checker.state_count() < n),
        states: checker.unique_state_count(),
        depth: checker.max_depth(),
        elapsed: started.elapsed(),
        found,
    }
}
