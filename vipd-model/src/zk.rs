//! ZooKeeper as the model sees it: a log of transactions ordered by the
//! quorum, and three servers that each apply a prefix of it (a client reads
//! from its own server's replica; `sync` brings that replica up to the
//! log). The election's znodes are ephemeral and sequential; sessions are
//! expired by the quorum's clock; watches fire when the watcher's server
//! applies a change.

use crate::{Node, Resp, RespKind, SERVERS};

/// A candidate's znode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Zn {
    pub seq: u8,
    pub owner: u8,
    pub version: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Txn {
    Create {
        seq: u8,
        owner: u8,
    },
    Set {
        seq: u8,
        version: i32,
    },
    Delete {
        seq: u8,
    },
    /// The takeover: delete `del`, write `set` at `version`.
    Multi {
        del: u8,
        set: u8,
        version: i32,
    },
}

impl Txn {
    fn apply(self, tree: &mut Vec<Zn>) {
        match self {
            Txn::Create { seq, owner } => tree.push(Zn {
                seq,
                owner,
                version: 0,
            }),
            Txn::Set { seq, version } => {
                if let Some(z) = tree.iter_mut().find(|z| z.seq == seq) {
                    z.version = version;
                }
            }
            Txn::Delete { seq } => tree.retain(|z| z.seq != seq),
            Txn::Multi { del, set, version } => {
                Txn::Delete { seq: del }.apply(tree);
                Txn::Set { seq: set, version }.apply(tree);
            }
        }
    }

    fn touches(self, seq: u8) -> bool {
        match self {
            Txn::Create { seq: s, .. } | Txn::Set { seq: s, .. } | Txn::Delete { seq: s } => {
                s == seq
            }
            Txn::Multi { del, set, .. } => del == seq || set == seq,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Session {
    pub alive: bool,
    /// The quorum's time of the client's last ping.
    pub heard: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Zk {
    /// The tree every live server has applied.
    base: Vec<Zn>,
    /// Committed after `base`, in the quorum's order.
    log: Vec<Txn>,
    /// How much of `log` each server has applied.
    applied: [usize; SERVERS],
    pub up: [bool; SERVERS],
    /// Whether servers apply late (else each commit reaches every server).
    lags: bool,
    pub next_seq: u8,
    pub session: [Session; 2],
    /// The znode each node watches, if any.
    pub watch: [Option<u8>; 2],
}

impl Zk {
    /// A's candidate znode (renewed once, version 1) and B's after it.
    pub fn new(lags: bool) -> Zk {
        let session = Session {
            alive: true,
            heard: 0,
        };
        Zk {
            base: vec![
                Zn {
                    seq: 0,
                    owner: 0,
                    version: 1,
                },
                Zn {
                    seq: 1,
                    owner: 1,
                    version: 0,
                },
            ],
            log: Vec::new(),
            applied: [0; SERVERS],
            up: [true; SERVERS],
            lags,
            next_seq: 2,
            session: [session; 2],
            watch: [None; 2],
        }
    }

    /// The quorum's tree: every committed transaction applied.
    pub fn head(&self) -> Vec<Zn> {
        self.prefix(self.log.len())
    }

    /// What server `srv` answers reads from.
    pub fn view(&self, srv: usize) -> Vec<Zn> {
        self.prefix(self.applied[srv])
    }

    fn prefix(&self, k: usize) -> Vec<Zn> {
        let mut t = self.base.clone();
        for x in &self.log[..k] {
            x.apply(&mut t);
        }
        t
    }

    pub fn lagging(&self, srv: usize) -> bool {
        self.up[srv] && self.applied[srv] < self.log.len()
    }

    /// Commits `txn`; the server that took the request (if any) applies it
    /// before it answers.
    pub fn commit(&mut self, txn: Txn, via: Option<usize>, nodes: &mut [Node; 2]) {
        self.log.push(txn);
        let end = self.log.len();
        for srv in 0..SERVERS {
            if self.up[srv] && (!self.lags || via == Some(srv)) {
                self.advance(srv, end, nodes);
            }
        }
        self.compact();
    }

    pub fn sync(&mut self, srv: usize, nodes: &mut [Node; 2]) {
        self.advance(srv, self.log.len(), nodes);
        self.compact();
    }

    pub fn replicate(&mut self, srv: usize, nodes: &mut [Node; 2]) {
        self.advance(srv, self.applied[srv] + 1, nodes);
        self.compact();
    }

    pub fn server_lost(&mut self, srv: usize) {
        self.up[srv] = false;
        self.applied[srv] = self.log.len();
        self.compact();
    }

    /// Server `srv` applies the log up to `to`, firing the watches of the
    /// clients connected to it.
    fn advance(&mut self, srv: usize, to: usize, nodes: &mut [Node; 2]) {
        for k in self.applied[srv]..to {
            let txn = self.log[k];
            for (i, n) in nodes.iter_mut().enumerate() {
                let Some(w) = self.watch[i] else { continue };
                if n.server == Some(srv as u8) && txn.touches(w) {
                    self.watch[i] = None;
                    n.from_zk.push(Resp {
                        id: u8::MAX,
                        kind: RespKind::Fired,
                        delayed: false,
                    });
                }
            }
        }
        self.applied[srv] = self.applied[srv].max(to);
    }

    /// Folds the prefix every live server has applied into `base`.
    fn compact(&mut self) {
        let m = (0..SERVERS)
            .filter(|s| self.up[*s])
            .map(|s| self.applied[s])
            .min()
            .unwrap_or(self.log.len());
        if m == 0 {
            return;
        }
        for x in self.log.drain(..m) {
            x.apply(&mut self.base);
        }
        for a in &mut self.applied {
            *a = a.saturating_sub(m);
        }
    }
}
