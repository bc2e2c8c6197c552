//! Shards driven without sockets or threads: several shards and clients in one thread, the
//! interleaving chosen from a seed, the store in memory (`storage/mem`, the same contract as the
//! real backends, with faults on demand) and run inline.
//! The unit tests and the state-machine fuzzer (`fuzzing`) both drive shards through this.

use crate::ops::ConnId;
use crate::*;
use crate::{run_commit, run_read};
use shardchat_codec::*;
use shardchat_storage::MessageStore;
use shardchat_storage_mem::MemStore;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Deterministic interleaving source (xorshift64*).
pub struct Rng(pub u64);
impl Rng {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

/// A client device: which shard holds it, and what it received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dev(pub ShardId, pub ConnId);

pub struct Sim {
    pub shards: Vec<Shard>,
    pub inbox: Vec<VecDeque<Event>>,
    pub store: Arc<dyn MessageStore>,
    pub received: HashMap<Dev, Vec<Payload>>,
    pub closed: Vec<(Dev, u16, &'static str)>,
    /// What the shards sent to peer `shards` (the control plane's bridge).
    pub bridge: Vec<PeerMsg>,
    /// Cluster directory changes the shards reported: (user, here).
    pub directory: Vec<(String, bool)>,
    pub rng: Rng,
    pub now: Now,
    pub next_conn: u64,
    /// Per shard, the wake-up it asked for ([`Action::WakeAt`]), delivered by the tick that
    /// reaches it.
    pub wakes: Vec<Option<u64>>,
    /// When Some, every action every shard took, in order (shard, then the action as `Debug`):
    /// what a replay of the same seed must reproduce exactly.
    pub trace: Option<Vec<String>>,
}

impl Sim {
    pub fn new(shards: usize, seed: u64, store: Arc<dyn MessageStore>) -> Sim {
        Sim::with(shards, seed, store, |_| {})
    }

    pub fn with(shards: usize, seed: u64, store: Arc<dyn MessageStore>, tweak: impl Fn(&mut ShardConfig)) -> Sim {
        let now = Now { unix_ms: 1_800_000_000_000, mono_us: 1_000_000 };
        let config = |i| {
            let mut c = ShardConfig::new(i, shards);
            tweak(&mut c);
            c
        };
        Sim {
            shards: (0..shards).map(|i| Shard::new(config(i), now)).collect(),
            inbox: (0..shards).map(|_| VecDeque::new()).collect(),
            store,
            received: HashMap::new(),
            closed: Vec::new(),
            bridge: Vec::new(),
            directory: Vec::new(),
            rng: Rng(seed | 1),
            now,
            next_conn: 1,
            wakes: vec![None; shards],
            trace: None,
        }
    }

    pub fn connect(&mut self, user: &str) -> Dev {
        let shard = home_shard(user, self.shards.len());
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.inbox[shard].push_back(Event::Connected { conn, user: user.into(), device: format!("dev{conn}"), expires_unix_ms: None });
        self.run();
        Dev(shard, conn)
    }

    pub fn disconnect(&mut self, d: Dev) {
        self.inbox[d.0].push_back(Event::Disconnected { conn: d.1 });
        self.run();
    }

    /// Queues a frame without running: lets tests build concurrency.
    pub fn push(&mut self, d: Dev, text: &str) {
        let frame = decode_text(text, &Limits::default()).unwrap_or_else(|e| panic!("{text}: {e}"));
        self.push_frame(d, frame);
    }

    /// Queues a decoded frame without running.
    pub fn push_frame(&mut self, d: Dev, frame: ClientFrame) {
        self.inbox[d.0].push_back(Event::Frame { conn: d.1, frame });
    }

    pub fn send(&mut self, d: Dev, text: &str) {
        self.push(d, text);
        self.run();
    }

    pub fn tick(&mut self, advance_ms: u64) {
        self.now.mono_us += advance_ms * 1000;
        self.now.unix_ms += advance_ms;
        let now = self.now.mono_us;
        for (s, q) in self.inbox.iter_mut().enumerate() {
            // Wake-ups that came due in the advance, then the tick.
            if self.wakes[s].is_some_and(|due| due <= now) {
                self.wakes[s] = None;
                q.push_back(Event::Wake);
            }
            q.push_back(Event::Tick);
        }
        self.run();
    }

    /// Runs until every inbox is empty, one event at a time from a shard picked by the seed.
    pub fn run(&mut self) {
        loop {
            let ready: Vec<usize> = (0..self.inbox.len()).filter(|&i| !self.inbox[i].is_empty()).collect();
            if ready.is_empty() {
                return;
            }
            let s = ready[self.rng.below(ready.len())];
            let ev = self.inbox[s].pop_front().expect("non-empty");
            self.shards[s].handle(self.now, ev);
            let mut actions = self.shards[s].take_actions();
            for a in actions.drain(..) {
                if let Some(t) = &mut self.trace {
                    t.push(format!("{s} {a:?}"));
                }
                match a {
                    Action::Send { conn, payload, .. } => self.received.entry(Dev(s, conn)).or_default().push(payload),
                    Action::Close { conn, code, reason } => self.closed.push((Dev(s, conn), code, reason)),
                    Action::Peer { to, msg } => {
                        assert_ne!(to, s, "a shard handles its own messages inline");
                        if to == self.shards.len() {
                            self.bridge.push(*msg);
                        } else {
                            self.inbox[to].push_back(Event::Peer(*msg));
                        }
                    }
                    Action::Commit(job) => {
                        let mono_ms = self.now.mono_ms();
                        let out = run_commit(&*self.store, *job, &|| mono_ms);
                        self.inbox[s].push_back(Event::CommitDone(out));
                    }
                    Action::Read { conn, job } => {
                        let outcome = run_read(&*self.store, *job);
                        self.inbox[s].push_back(Event::ReadDone { conn, outcome });
                    }
                    Action::Lookup(job) => {
                        let outcome = run_read(&*self.store, *job);
                        self.inbox[s].push_back(Event::LookupDone(outcome));
                    }
                    Action::WakeAt { mono_us } => {
                        assert!(self.wakes[s].is_none(), "one wake-up outstanding at most");
                        self.wakes[s] = Some(mono_us);
                    }
                    Action::Directory { user, here } => self.directory.push((user, here)),
                    Action::Remote { .. } | Action::RemoteFanout { .. } | Action::PresenceWatch { .. } => {
                        panic!("one node: nothing leaves it")
                    }
                }
            }
            // As the runtime's driver does: the next event's actions go into this allocation.
            self.shards[s].recycle_actions(actions);
        }
    }

    pub fn frames(&self, d: Dev) -> Vec<ServerFrame> {
        self.received.get(&d).map(|v| v.iter().map(|p| p.frame().clone()).collect()).unwrap_or_default()
    }

    pub fn take(&mut self, d: Dev) -> Vec<ServerFrame> {
        self.received.remove(&d).map(|v| v.iter().map(|p| p.frame().clone()).collect()).unwrap_or_default()
    }

    pub fn msgs(&self, d: Dev) -> Vec<MsgRecord> {
        self.frames(d).into_iter().filter_map(|f| if let ServerFrame::Msg(m) = f { Some(m) } else { None }).collect()
    }
}

/// A fresh store in memory.
pub fn store() -> Arc<MemStore> {
    Arc::new(MemStore::new())
}
