//! Several nodes of shards in one thread, joined by the cluster link's own decisions: each node's
//! [`Liveness`] (incarnations, rejoin, fences before a dead node's conversations move, the view,
//! the repairer) and [`routing`] (one message list per destination node, `unavailable` for what
//! cannot reach its node), over an in-memory model of what the link keeps in Redis (liveness
//! keys with their TTL, the directory, presence watches, who is subscribed) and the in-memory
//! store. Every cross-node message goes through its JSON encoding; interleavings come from a
//! seed. What is left to `engine/cluster/` is the Redis commands themselves, tested end to
//! end in `engine/tests/e2e/cluster.rs`.

use shardchat_codec::*;
use shardchat_link::liveness::{self, Liveness, Refreshed};
use shardchat_link::routing::{self, Outgoing};
use shardchat_shard::ops::ConnId;
use shardchat_shard::*;
use shardchat_storage::MessageStore;
use shardchat_storage_mem::MemStore;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

const SHARDS: usize = 2;
/// As the engine's link: the liveness key's life, and how often it is refreshed.
const NODE_TTL_MS: u64 = 3_000;
const NODE_REFRESH_MS: u64 = 1_000;

/// A client device: node, home shard there, connection id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Dev(usize, ShardId, ConnId);

struct Node {
    shards: Vec<Shard>,
    inbox: Vec<VecDeque<Event>>,
    /// Running (its shards handle events, its link refreshes and is subscribed).
    alive: bool,
    link: Liveness,
}

struct Cluster {
    nodes: Vec<Node>,
    store: Arc<dyn MessageStore>,
    received: HashMap<Dev, Vec<ServerFrame>>,
    /// Redis, as the link uses it: liveness keys (value, expiry in unix ms) ...
    keys: BTreeMap<usize, (String, u64)>,
    /// ... the set of nodes ever seen ...
    known: BTreeSet<usize>,
    /// ... the directory: user → nodes holding a connection ...
    directory: HashMap<String, BTreeSet<usize>>,
    /// ... and presence watches: user → nodes watching.
    watchers: HashMap<String, BTreeSet<usize>>,
    seed: u64,
    now: Now,
    next_conn: u64,
    remote_msgs: usize,
}

fn base(n: usize) -> String {
    format!("{{\"listen\":\"node{n}\"")
}

impl Cluster {
    fn new(nodes: usize, seed: u64, store: Arc<dyn MessageStore>, push: bool) -> Cluster {
        let now = Now { unix_ms: 1_800_000_000_000, mono_us: 1_000_000 };
        let node = |n: usize| Node {
            shards: (0..SHARDS)
                .map(|i| {
                    let mut c = ShardConfig::new(i, SHARDS);
                    c.node = n;
                    c.cluster = true;
                    c.push_enabled = push;
                    Shard::new(c, now)
                })
                .collect(),
            inbox: (0..SHARDS).map(|_| VecDeque::new()).collect(),
            alive: true,
            link: Liveness::new(n, store.node_fence(n as NodeId).unwrap(), now.unix_ms),
        };
        let mut c = Cluster {
            nodes: (0..nodes).map(node).collect(),
            store,
            received: HashMap::new(),
            keys: BTreeMap::new(),
            known: BTreeSet::new(),
            directory: HashMap::new(),
            watchers: HashMap::new(),
            seed: seed | 1,
            now,
            next_conn: 1,
            remote_msgs: 0,
        };
        // Refreshed until the handover after the first view is over (in the first refresh,
        // nodes that refresh before another has written its key do not see it yet).
        c.refresh();
        c.pass(HANDOVER_MS + NODE_REFRESH_MS);
        c
    }

    fn below(&mut self, n: usize) -> usize {
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        (self.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }

    /// One refresh of every running node's link, in a seeded order, as the engine's link does
    /// it: the own fence read from the store, the liveness key written (`SET … GET`), every
    /// known node's key read, then the plan carried out (fences in the store, the view to every
    /// shard, the repair of the directory).
    fn refresh(&mut self) {
        let mut order: Vec<usize> = (0..self.nodes.len()).filter(|&n| self.nodes[n].alive).collect();
        for i in (1..order.len()).rev() {
            let j = self.below(i + 1);
            order.swap(i, j);
        }
        let now = self.now.unix_ms;
        self.keys.retain(|_, (_, expires)| *expires > now);
        for n in order {
            let fence = self.store.node_fence(n as NodeId).unwrap();
            let link = &mut self.nodes[n].link;
            link.own_fence(fence, now);
            let value = liveness::value(&base(n), link.incarnation());
            let previous = self.keys.insert(n, (value, now + NODE_TTL_MS)).map(|(v, _)| v);
            self.known.insert(n);
            let written = link.wrote_key(previous.as_deref(), now);
            if written.rewrite {
                // The link rewrites its part of the directory: here, the directory the home
                // shards reported is already whole (it is the model's truth).
            }
            let nodes = self.known.iter().map(|&k| (k, self.keys.get(&k).map(|(v, _)| v.clone()))).collect();
            let plan = link.refreshed(Refreshed { nodes });
            for &(d, inc) in &plan.fence {
                // A failed write (the store down) leaves the fence owed: the link tries again
                // next refresh.
                if self.store.fence_node(d as NodeId, inc).is_ok() {
                    self.nodes[n].link.fence_written(d, inc);
                }
            }
            if let Some(view) = self.nodes[n].link.view_after(&plan) {
                let live: Vec<NodeId> = view.iter().map(|&v| v as NodeId).collect();
                let incarnation = self.nodes[n].link.incarnation();
                for q in &mut self.nodes[n].inbox {
                    q.push_back(Event::Peer(PeerMsg::View { live: live.clone(), incarnation }));
                }
                self.nodes[n].link.view_told(view);
            }
            for d in plan.repair {
                // The repair script: only while the dead node's key is still absent.
                if !self.keys.contains_key(&d) {
                    for nodes in self.directory.values_mut() {
                        nodes.remove(&d);
                    }
                    self.known.remove(&d);
                }
            }
        }
        self.run();
    }

    /// Lets `ms` pass, refreshing every running link each `NODE_REFRESH_MS`.
    fn pass(&mut self, ms: u64) {
        let mut left = ms;
        while left > 0 {
            let step = left.min(NODE_REFRESH_MS);
            self.tick(step);
            self.refresh();
            left -= step;
        }
    }

    /// The node stops (a crash): its shards and its link stop; its liveness key lives on until
    /// its TTL runs out, and its users stay in the directory until a repairer removes them.
    fn kill(&mut self, n: usize) {
        self.nodes[n].alive = false;
        for q in &mut self.nodes[n].inbox {
            q.clear();
        }
        self.received.retain(|d, _| d.0 != n);
    }

    fn connect(&mut self, node: usize, user: &str) -> Dev {
        let shard = home_shard(user, SHARDS);
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let ev = Event::Connected { conn, user: user.into(), device: format!("dev{conn}"), expires_unix_ms: None };
        self.nodes[node].inbox[shard].push_back(ev);
        self.run();
        Dev(node, shard, conn)
    }

    fn push(&mut self, d: Dev, text: &str) {
        let frame = decode_text(text, &Limits::default()).unwrap_or_else(|e| panic!("{text}: {e}"));
        self.nodes[d.0].inbox[d.1].push_back(Event::Frame { conn: d.2, frame });
    }

    fn send(&mut self, d: Dev, text: &str) {
        self.push(d, text);
        self.run();
    }

    fn tick(&mut self, advance_ms: u64) {
        self.now.mono_us += advance_ms * 1000;
        self.now.unix_ms += advance_ms;
        for node in self.nodes.iter_mut().filter(|n| n.alive) {
            for q in &mut node.inbox {
                q.push_back(Event::Tick);
            }
        }
        self.run();
    }

    /// What a node's link does with what its shards send elsewhere: one list per destination
    /// node ([`routing::per_node`], the directory telling where fanned-out users are), each
    /// through its wire encoding to a node that is subscribed (running), and the `unavailable`
    /// answers ([`routing::unreachable`]) for the lists whose node is not.
    fn route(&mut self, from: usize, out: Outgoing) {
        let nodes_of: HashMap<String, Vec<usize>> = routing::fanout_users(std::slice::from_ref(&out))
            .into_iter()
            .map(|u| {
                let nodes = self.directory.get(&u).into_iter().flatten().copied().collect();
                (u, nodes)
            })
            .collect();
        for (node, msgs) in routing::per_node(vec![out], &nodes_of, from) {
            let msgs: Vec<RemoteMsg> = serde_json::from_slice(&serde_json::to_vec(&msgs).unwrap()).unwrap();
            if node >= self.nodes.len() || !self.nodes[node].alive {
                for (shard, m) in routing::unreachable(&msgs, SHARDS) {
                    self.nodes[from].inbox[shard].push_back(Event::Peer(m));
                }
                continue;
            }
            self.remote_msgs += msgs.len();
            for msg in msgs {
                for (shard, m) in msg.into_local(SHARDS) {
                    self.nodes[node].inbox[shard].push_back(Event::Peer(m));
                }
            }
        }
    }

    fn run(&mut self) {
        loop {
            let ready: Vec<(usize, usize)> = (0..self.nodes.len())
                .flat_map(|n| (0..SHARDS).map(move |s| (n, s)))
                .filter(|&(n, s)| self.nodes[n].alive && !self.nodes[n].inbox[s].is_empty())
                .collect();
            if ready.is_empty() {
                return;
            }
            let (n, s) = ready[self.below(ready.len())];
            let ev = self.nodes[n].inbox[s].pop_front().expect("non-empty");
            self.nodes[n].shards[s].handle(self.now, ev);
            for a in self.nodes[n].shards[s].take_actions() {
                match a {
                    Action::Send { conn, payload, .. } => self.received.entry(Dev(n, s, conn)).or_default().push(payload.frame().clone()),
                    Action::Close { .. } => {}
                    Action::Peer { to, msg } => self.nodes[n].inbox[to].push_back(Event::Peer(*msg)),
                    Action::Commit(job) => {
                        let mono_ms = self.now.mono_ms();
                        let out = run_commit(&*self.store, *job, &|| mono_ms);
                        self.nodes[n].inbox[s].push_back(Event::CommitDone(out));
                    }
                    Action::Read { conn, job } => {
                        let outcome = run_read(&*self.store, *job);
                        self.nodes[n].inbox[s].push_back(Event::ReadDone { conn, outcome });
                    }
                    Action::Lookup(job) => {
                        let outcome = run_read(&*self.store, *job);
                        self.nodes[n].inbox[s].push_back(Event::LookupDone(outcome));
                    }
                    Action::WakeAt { .. } => panic!("these shards do not pace their commits"),
                    Action::Directory { user, here } => {
                        let nodes = self.directory.entry(user.clone()).or_default();
                        if here {
                            assert!(nodes.insert(n), "arrival reported twice");
                        } else {
                            assert!(nodes.remove(&n), "departure of a user not here");
                        }
                        // Published to the nodes watching the user, only.
                        let watching: Vec<usize> = self.watchers.get(&user).into_iter().flatten().copied().collect();
                        for out in routing::presence(vec![(user, here)], vec![watching], n, self.now.unix_ms) {
                            self.route(n, out);
                        }
                    }
                    Action::PresenceWatch { user, watch } => {
                        let w = self.watchers.entry(user.clone()).or_default();
                        if watch {
                            assert!(w.insert(n), "watched twice from one node");
                            let live = self.nodes[n].link.view().map(<[usize]>::to_vec).unwrap_or_default();
                            let nodes: Vec<NodeId> = self
                                .directory
                                .get(&user)
                                .into_iter()
                                .flatten()
                                .filter(|&&o| o != n && live.contains(&o))
                                .map(|&o| o as NodeId)
                                .collect();
                            let home = home_shard(&user, SHARDS);
                            self.nodes[n].inbox[home].push_back(Event::Peer(PeerMsg::PresenceNodes { user, nodes }));
                        } else {
                            assert!(w.remove(&n), "unwatched without a watch");
                        }
                    }
                    Action::Remote { node, msg } => self.route(n, Outgoing::Remote(node, *msg)),
                    Action::RemoteFanout(f) => {
                        let shardchat_shard::RemoteFanout { users, payload, except, msg, class } = *f;
                        let frame = payload.frame().clone();
                        self.route(n, Outgoing::Fanout { users, frame, except, msg, class });
                    }
                }
            }
        }
    }

    fn take(&mut self, d: Dev) -> Vec<ServerFrame> {
        self.received.remove(&d).unwrap_or_default()
    }
}

fn store() -> Arc<MemStore> {
    Arc::new(MemStore::new())
}

fn dm(to: &str, cmid: &str) -> String {
    format!(r#"{{"t":"send","cmid":"{cmid}","to":"{to}","body":"{cmid}"}}"#)
}

fn msgs(frames: &[ServerFrame]) -> Vec<(String, u64, String)> {
    frames.iter().filter_map(|f| if let ServerFrame::Msg(m) = f { Some((m.conv.clone(), m.seq, m.cmid.clone())) } else { None }).collect()
}

fn acks(frames: &[ServerFrame]) -> Vec<(String, u64)> {
    frames.iter().filter_map(|f| if let ServerFrame::Ack { cmid, seq, .. } = f { Some((cmid.clone(), *seq)) } else { None }).collect()
}

fn unavailable(frames: &[ServerFrame]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Error { code: ErrorCode::Unavailable, cmid, .. } => Some(cmid.clone().unwrap_or_default()),
            _ => None,
        })
        .collect()
}

#[test]
fn direct_and_group_messages_and_receipts_cross_nodes_in_order() {
    for seed in 1..12 {
        let mut c = Cluster::new(3, seed, store(), false);
        let a = c.connect(0, "alice");
        let a2 = c.connect(2, "alice");
        let b = c.connect(1, "bob");
        let k = c.connect(2, "carol");
        for i in 0..30 {
            c.push(a, &dm("bob", &format!("a{i}")));
            c.push(b, &dm("alice", &format!("b{i}")));
            if i % 4 == 0 {
                c.run();
            }
        }
        c.run();
        // Each side acked all 30, with seqs dense over the 60 in the conversation.
        let mut seqs: Vec<u64> = Vec::new();
        for d in [a, b] {
            let got = acks(&c.received[&d]);
            assert_eq!(got.len(), 30, "seed {seed}: {:?}", c.received[&d]);
            seqs.extend(got.iter().map(|(_, s)| s));
        }
        seqs.sort();
        assert_eq!(seqs, (1..=60).collect::<Vec<_>>(), "seed {seed}");
        // Every other device saw the messages it should, in seq order, once.
        let conv = direct_conv_id("alice", "bob");
        for (d, want) in [(a, 30), (b, 30), (a2, 60)] {
            let m = msgs(&c.received[&d]);
            assert_eq!(m.len(), want, "seed {seed} {d:?}");
            assert!(m.windows(2).all(|w| w[0].1 < w[1].1), "out of order on {d:?}: {m:?}");
            assert!(m.iter().all(|(cv, _, _)| *cv == conv));
        }
        // A group spanning the three nodes.
        c.take(a);
        c.take(a2);
        c.take(b);
        c.send(a, r#"{"t":"group_create","name":"g","members":["bob","carol"],"ref":"r1"}"#);
        let ServerFrame::Group { conv: g, .. } = c.take(a).into_iter().find(|f| matches!(f, ServerFrame::Group { .. })).unwrap() else {
            unreachable!()
        };
        for i in 0..10 {
            c.push(k, &format!(r#"{{"t":"send","cmid":"k{i}","conv":"{g}","body":"x"}}"#));
        }
        c.run();
        assert_eq!(acks(&c.take(k)).len(), 10, "seed {seed}");
        for d in [a, a2, b] {
            let m: Vec<u64> =
                msgs(&c.take(d)).into_iter().filter(|(cv, _, id)| *cv == g && id.starts_with('k')).map(|(_, s, _)| s).collect();
            assert_eq!(m, (2..=11).collect::<Vec<_>>(), "seed {seed} {d:?}: the system message is seq 1");
        }
        // Bob reads on node 1: the receipt reaches alice's devices on nodes 0 and 2.
        c.send(b, &format!(r#"{{"t":"read","conv":"{conv}","seq":60}}"#));
        for d in [a, a2] {
            let r: Vec<_> = c.take(d).into_iter().filter(|f| matches!(f, ServerFrame::Receipt { .. })).collect();
            assert!(matches!(&r[..], [ServerFrame::Receipt { seq: 60, user, .. }] if user == "bob"), "seed {seed} {d:?}: {r:?}");
        }
        // A fan-out sends each frame once per destination node, not once per user.
        let before = c.remote_msgs;
        c.send(a, &format!(r#"{{"t":"send","cmid":"last","conv":"{g}","body":"x"}}"#));
        assert!(c.remote_msgs - before <= 4, "seed {seed}: {} remote messages for one group send", c.remote_msgs - before);
    }
}

#[test]
fn when_a_node_dies_its_conversations_move_and_seq_resumes_from_the_store() {
    for seed in 1..8 {
        let mut c = Cluster::new(3, seed, store(), false);
        // Conversations of every owner: alice talks to many users, from node 0.
        let a = c.connect(0, "alice");
        let peers: Vec<String> = (0..12).map(|i| format!("u{i}")).collect();
        for (i, p) in peers.iter().enumerate() {
            c.connect(1, p);
            c.push(a, &dm(p, &format!("x{i}")));
        }
        c.run();
        let owners: BTreeSet<NodeId> = peers.iter().map(|p| owner_node(&direct_conv_id("alice", p), &[0, 1, 2]).unwrap()).collect();
        assert_eq!(owners.len(), 3, "the test needs conversations owned by every node");
        assert_eq!(acks(&c.take(a)).len(), 12);

        // Node 2 dies. Until the links see its key expire, its conversations cannot be
        // sequenced: what is sent for them finds no one subscribed.
        c.kill(2);
        for (i, p) in peers.iter().enumerate() {
            c.push(a, &dm(p, &format!("y{i}")));
        }
        c.run();
        let lost: Vec<String> = unavailable(&c.take(a));
        let on2: Vec<&String> = peers.iter().filter(|p| owner_node(&direct_conv_id("alice", p), &[0, 1, 2]) == Some(2)).collect();
        assert_eq!(lost.len(), on2.len(), "seed {seed}: every send to the dead owner is answered unavailable");

        // Its key expires: the links fence its incarnation, then tell the shards; its
        // conversations move, refused during the handover, then accepted.
        // (Its key was last written at the end of the last refresh: it expires one TTL later.)
        c.pass(NODE_TTL_MS);
        assert!(c.store.node_fence(2).unwrap() > 0, "seed {seed}: fenced before its conversations moved");
        for (i, p) in on2.iter().enumerate() {
            c.push(a, &dm(p, &format!("z{i}")));
        }
        c.run();
        assert_eq!(unavailable(&c.take(a)).len(), on2.len(), "seed {seed}: refused during the handover");
        c.tick(HANDOVER_MS + 1);
        for (i, p) in on2.iter().enumerate() {
            c.push(a, &dm(p, &format!("z{i}")));
        }
        c.run();
        let got = acks(&c.take(a));
        assert_eq!(got.len(), on2.len(), "seed {seed}");
        assert!(got.iter().all(|(_, seq)| *seq == 2), "seed {seed}: seq resumed from the store: {got:?}");
        // Nobody else ever assigned those seqs: every conversation is dense in the store.
        for p in &peers {
            let conv = direct_conv_id("alice", p);
            let stored: Vec<u64> = c.store.messages_after(&conv, 0, 100).unwrap().iter().map(|m| m.seq).collect();
            assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<_>>(), "seed {seed} {conv}");
        }
    }
}

/// The order that keeps seqs unique: no shard takes a dead node's conversations before that
/// node's incarnation is fenced in the store. While the fence cannot be written, they stay with
/// the dead node (sends are answered `unavailable`); once it is, they move.
#[test]
fn a_dead_nodes_conversations_stay_put_until_its_fence_is_written() {
    for seed in 1..6 {
        let st = store();
        let mut c = Cluster::new(3, seed, st.clone(), false);
        let peer = (0..200).map(|i| format!("p{i}")).find(|p| owner_node(&direct_conv_id("alice", p), &[0, 1, 2]) == Some(2)).unwrap();
        let a = c.connect(0, "alice");
        c.connect(1, &peer);
        c.send(a, &dm(&peer, "m0"));
        assert_eq!(acks(&c.take(a)), vec![("m0".to_string(), 1)], "seed {seed}");
        c.kill(2);
        st.faults.commits_down.store(true, std::sync::atomic::Ordering::Relaxed);
        c.pass(NODE_TTL_MS + HANDOVER_MS + NODE_REFRESH_MS);
        assert_eq!(st.node_fence(2).unwrap(), 0, "seed {seed}: the store took no fence");
        c.send(a, &dm(&peer, "m1"));
        let why: Vec<String> = c
            .take(a)
            .into_iter()
            .filter_map(|f| match f {
                ServerFrame::Error { code: ErrorCode::Unavailable, msg, .. } => Some(msg),
                _ => None,
            })
            .collect();
        assert!(
            matches!(&why[..], [m] if m.contains("unreachable")),
            "seed {seed}: still the dead node's, so unreachable (not refused by a new owner): {why:?}"
        );
        st.faults.commits_down.store(false, std::sync::atomic::Ordering::Relaxed);
        c.pass(NODE_REFRESH_MS);
        assert!(st.node_fence(2).unwrap() > 0, "seed {seed}: fenced at the next refresh");
        c.pass(HANDOVER_MS + NODE_REFRESH_MS);
        c.send(a, &dm(&peer, "m1"));
        assert_eq!(acks(&c.take(a)), vec![("m1".to_string(), 2)], "seed {seed}: moved, seq resumed from the store");
    }
}

#[test]
fn an_op_bounced_between_nodes_that_disagree_is_refused_not_forwarded_again() {
    let mut c = Cluster::new(2, 5, store(), false);
    let a = c.connect(0, "alice");
    // Find a conversation node 1 owns, then let node 1 believe it is alone with node 0 gone and
    // node 0 believe node 1 owns it: node 0 forwards, node 1 (owner by its own view? no: by
    // neither) must answer, not bounce.
    let peer = (0..100).map(|i| format!("p{i}")).find(|p| owner_node(&direct_conv_id("alice", p), &[0, 1]) == Some(1)).unwrap();
    let other_owner = (0..50u16).map(|n| n + 2).find(|&n| owner_node(&direct_conv_id("alice", &peer), &[0, 1, n]) == Some(n)).unwrap();
    for q in &mut c.nodes[1].inbox {
        q.push_back(Event::Peer(PeerMsg::View { live: vec![0, 1, other_owner], incarnation: 1 }));
    }
    c.run();
    c.tick(HANDOVER_MS + 1);
    c.send(a, &dm(&peer, "c1"));
    assert_eq!(unavailable(&c.take(a)), vec!["c1".to_string()]);
    assert!(c.remote_msgs <= 2, "forwarded once and answered once: {}", c.remote_msgs);
}

#[test]
fn a_user_connected_nowhere_is_owed_one_push_and_a_user_on_another_node_none() {
    let st = store();
    let mut c = Cluster::new(3, 9, st.clone(), true);
    let a = c.connect(0, "alice");
    c.connect(2, "bob");
    c.send(a, r#"{"t":"group_create","name":"g","members":["bob","dave"],"ref":"r"}"#);
    let g = c.take(a).into_iter().find_map(|f| if let ServerFrame::Group { conv, .. } = f { Some(conv) } else { None }).unwrap();
    c.send(a, &format!(r#"{{"t":"send","cmid":"m1","conv":"{g}","body":"hello"}}"#));
    c.tick(10);
    let owed: Vec<(String, String)> = st.push_pending(100).unwrap().into_iter().map(|e| (e.user, e.conv)).collect();
    assert_eq!(owed, vec![("dave".to_string(), g)], "dave is offline everywhere; bob is on node 2");
}

#[test]
fn a_node_taken_for_dead_while_still_running_is_fenced_and_never_reuses_a_seq() {
    for seed in 1..13 {
        let st = store();
        let mut c = Cluster::new(2, seed, st.clone(), false);
        // alice (node 0) and bob (node 1) share a conversation node 1 sequences.
        let peer = (0..200).map(|i| format!("b{i}")).find(|p| owner_node(&direct_conv_id("alice", p), &[0, 1]) == Some(1)).unwrap();
        let a = c.connect(0, "alice");
        let b = c.connect(1, &peer);
        c.send(a, &dm(&peer, "a0"));
        assert_eq!(acks(&c.take(a)), vec![("a0".to_string(), 1)]);

        // Node 1 stops answering Redis but keeps running on its old view. Node 0 fences its
        // incarnation, then takes the conversation over after the handover.
        let (inc0, inc1) = (c.nodes[0].link.incarnation(), c.nodes[1].link.incarnation());
        st.fence_node(1, inc1).unwrap();
        for q in &mut c.nodes[0].inbox {
            q.push_back(Event::Peer(PeerMsg::View { live: vec![0], incarnation: inc0 }));
        }
        c.run();
        c.tick(HANDOVER_MS + 1);
        for i in 1..=5 {
            c.push(a, &dm(&peer, &format!("a{i}")));
            c.push(b, &dm("alice", &format!("b{i}")));
        }
        // Node 1's link may rejoin (new incarnation) while a commit job of the old one is still
        // out: the job's fence applies to its own incarnation only.
        if seed % 2 == 0 {
            for q in &mut c.nodes[1].inbox {
                q.push_back(Event::Peer(PeerMsg::View { live: vec![0, 1], incarnation: inc1 + 1 }));
            }
        }
        c.run();
        let mut seqs: Vec<u64> = acks(&c.take(a)).into_iter().map(|(_, s)| s).collect();
        let from_b = c.take(b);
        assert!(acks(&from_b).is_empty(), "seed {seed}: the fenced node acked {:?}", acks(&from_b));
        assert_eq!(unavailable(&from_b).len(), 5, "seed {seed}: refused, to be retried");
        // Its link, too late, repeats the old incarnation: ignored. Then it rejoins with a new one.
        for q in &mut c.nodes[1].inbox {
            q.push_back(Event::Peer(PeerMsg::View { live: vec![0, 1], incarnation: inc1 }));
        }
        c.run();
        c.send(b, &dm("alice", "b1"));
        assert_eq!(unavailable(&c.take(b)), vec!["b1".to_string()], "seed {seed}");
        for (n, node) in c.nodes.iter_mut().enumerate() {
            let incarnation = if n == 0 { inc0 } else { inc1 + 1 };
            for q in &mut node.inbox {
                q.push_back(Event::Peer(PeerMsg::View { live: vec![0, 1], incarnation }));
            }
        }
        c.run();
        c.tick(HANDOVER_MS + 1);
        for i in 1..=5 {
            c.push(b, &dm("alice", &format!("b{i}")));
        }
        c.run();
        seqs.extend(acks(&c.take(b)).into_iter().map(|(_, s)| s));
        seqs.sort();
        assert_eq!(seqs, (2..=11).collect::<Vec<_>>(), "seed {seed}: every seq assigned once");
        let stored: Vec<u64> = st.messages_after(&direct_conv_id("alice", &peer), 0, 100).unwrap().iter().map(|m| m.seq).collect();
        assert_eq!(stored, (1..=11).collect::<Vec<_>>());
    }
}

fn presence(frames: &[ServerFrame], who: &str) -> Vec<String> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Presence { user, status, .. } if user == who => Some(status.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn presence_crosses_nodes_and_only_watching_nodes_hear_of_changes() {
    for seed in 1..8 {
        let mut c = Cluster::new(3, seed, store(), false);
        let b = c.connect(1, "bob");
        let k = c.connect(2, "carol");
        c.send(k, r#"{"t":"presence_sub","users":["bob"]}"#);
        assert_eq!(presence(&c.take(k), "bob"), vec!["online"], "seed {seed}: bob is on node 1");
        assert_eq!(c.watchers["bob"], BTreeSet::from([2]), "only node 2 watches bob");
        // The first answer counts as told: no second "online" follows it.
        c.tick(1_100);
        assert_eq!(presence(&c.take(k), "bob"), Vec::<String>::new(), "seed {seed}: nothing changed");
        // Bob leaves node 1: carol hears it once the coalescing interval passes.
        c.nodes[1].inbox[b.1].push_back(Event::Disconnected { conn: b.2 });
        c.run();
        c.tick(1_100);
        let got = c.take(k);
        assert_eq!(presence(&got, "bob"), vec!["offline"], "seed {seed}");
        assert!(got.iter().any(|f| matches!(f, ServerFrame::Presence { last_seen: Some(_), .. })), "offline carries last seen");
        // He comes back on node 0, then a second device on node 2 (carol's node) goes and comes.
        c.connect(0, "bob");
        c.tick(1_100);
        assert_eq!(presence(&c.take(k), "bob"), vec!["online"], "seed {seed}");
        // Node 0 dies with bob on it: once the view drops it, bob is offline.
        c.kill(0);
        c.pass(NODE_TTL_MS);
        c.tick(1_100);
        assert_eq!(presence(&c.take(k), "bob"), vec!["offline"], "seed {seed}");
        // Carol unsubscribes: node 2 stops watching.
        c.send(k, r#"{"t":"presence_unsub","users":["bob"]}"#);
        assert!(c.watchers["bob"].is_empty());
    }
}

/// One seed, one run: the same frames on every device, in the same order, and the same store,
/// however the hash maps of each run are keyed. A node dies and its conversations move on the
/// way, so the link's decisions (fences, views, handover) are in what is compared.
#[test]
fn a_seed_replays_exactly_across_nodes() {
    fn once(seed: u64) -> (Vec<(Dev, Vec<ServerFrame>)>, Arc<MemStore>) {
        let st = store();
        let mut c = Cluster::new(3, seed, st.clone(), true);
        let devs: Vec<Dev> = (0..9).map(|i| c.connect(i % 3, &format!("u{}", i % 5))).collect();
        for round in 0..4 {
            for (i, &d) in devs.iter().enumerate() {
                if c.nodes[d.0].alive {
                    c.push(d, &dm(&format!("u{}", (i + round + 1) % 5), &format!("m{round}-{i}")));
                }
            }
            if round == 1 {
                c.kill(2);
                c.pass(NODE_TTL_MS + HANDOVER_MS + NODE_REFRESH_MS);
            }
            c.run();
        }
        let mut got: Vec<(Dev, Vec<ServerFrame>)> = c.received.drain().collect();
        got.sort_by_key(|(d, _)| (d.0, d.1, d.2));
        (got, st)
    }
    for seed in [3, 17, 40] {
        let (first, store) = once(seed);
        assert!(first.iter().map(|(_, f)| f.len()).sum::<usize>() > 50, "the run did something");
        for _ in 0..2 {
            let (again, store_again) = once(seed);
            assert!(first == again, "seed {seed}: the replay delivered otherwise");
            assert!(store.same_as(&store_again), "seed {seed}: the replay stored otherwise");
        }
    }
}
