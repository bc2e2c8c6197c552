//! Several nodes of shards in one thread, joined by a simulated cluster link: what the real link
//! (`engine/src/cluster/`) does over Redis — forward `Action::Remote` to the named node, send a
//! `RemoteFanout` once to each other node the directory lists for its users, tell every shard the live nodes — done here inline, every cross-node message
//! through its JSON encoding, interleavings from a seed.

use crate::machine::owner::HANDOVER_MS;
use crate::*;
use crate::{run_commit, run_read};
use shardchat_codec::*;
use shardchat_storage::MessageStore;
use shardchat_storage_mem::MemStore;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

const SHARDS: usize = 2;

/// A client device: node, home shard there, connection id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Dev(usize, ShardId, u64);

struct Node {
    shards: Vec<Shard>,
    inbox: Vec<VecDeque<Event>>,
    alive: bool,
}

struct Cluster {
    nodes: Vec<Node>,
    store: Arc<dyn MessageStore>,
    received: HashMap<Dev, Vec<ServerFrame>>,
    /// The directory the home shards reported: user → nodes holding a connection.
    directory: HashMap<String, BTreeSet<usize>>,
    /// Presence watches the link holds: user → nodes watching.
    watchers: HashMap<String, BTreeSet<usize>>,
    seed: u64,
    now: Now,
    next_conn: u64,
    remote_msgs: usize,
}

impl Cluster {
    fn new(nodes: usize, seed: u64, store: Arc<dyn MessageStore>, push: bool) -> Cluster {
        let now = Now { unix_ms: 1_800_000_000_000, mono_ms: 1_000 };
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
        };
        let mut c = Cluster {
            nodes: (0..nodes).map(node).collect(),
            store,
            received: HashMap::new(),
            directory: HashMap::new(),
            watchers: HashMap::new(),
            seed: seed | 1,
            now,
            next_conn: 1,
            remote_msgs: 0,
        };
        c.view();
        c.tick(HANDOVER_MS + 1);
        c
    }

    fn below(&mut self, n: usize) -> usize {
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        (self.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }

    /// Tells every live node's shards the live nodes (what the link does after each refresh).
    fn view(&mut self) {
        let live: Vec<NodeId> = (0..self.nodes.len()).filter(|&n| self.nodes[n].alive).map(|n| n as NodeId).collect();
        for node in self.nodes.iter_mut().filter(|n| n.alive) {
            for q in &mut node.inbox {
                q.push_back(Event::Peer(PeerMsg::View { live: live.clone(), incarnation: 1 }));
            }
        }
        self.run();
    }

    fn kill(&mut self, n: usize) {
        self.nodes[n].alive = false;
        for q in &mut self.nodes[n].inbox {
            q.clear();
        }
        for nodes in self.directory.values_mut() {
            nodes.remove(&n);
        }
        self.received.retain(|d, _| d.0 != n);
    }

    fn connect(&mut self, node: usize, user: &str) -> Dev {
        let shard = home_shard(user, SHARDS);
        let conn = self.next_conn;
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
        self.now.mono_ms += advance_ms;
        self.now.unix_ms += advance_ms;
        for node in self.nodes.iter_mut().filter(|n| n.alive) {
            for q in &mut node.inbox {
                q.push_back(Event::Tick);
            }
        }
        self.run();
    }

    /// Hands a message to its node as the link would: through its wire encoding, or, when the
    /// node is gone, answers the requester `unavailable`.
    fn remote(&mut self, from: usize, node: usize, msg: RemoteMsg) {
        self.remote_msgs += 1;
        let msg: RemoteMsg = serde_json::from_slice(&serde_json::to_vec(&msg).unwrap()).unwrap();
        if !self.nodes[node].alive {
            if let Some((to, frame)) = msg.unreachable("no route") {
                self.remote(from, from, RemoteMsg::Reply { to, frame });
            }
            return;
        }
        for (shard, m) in msg.into_local(SHARDS) {
            self.nodes[node].inbox[shard].push_back(Event::Peer(m));
        }
    }

    fn run(&mut self) {
        loop {
            let ready: Vec<(usize, usize)> = (0..self.nodes.len())
                .flat_map(|n| (0..SHARDS).map(move |s| (n, s)))
                .filter(|&(n, s)| !self.nodes[n].inbox[s].is_empty())
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
                    Action::Peer { to, msg } => self.nodes[n].inbox[to].push_back(Event::Peer(msg)),
                    Action::Commit(job) => {
                        let mono_ms = self.now.mono_ms;
                        let out = run_commit(&*self.store, job, &|| mono_ms);
                        self.nodes[n].inbox[s].push_back(Event::CommitDone(out));
                    }
                    Action::Read { conn, job } => {
                        let outcome = run_read(&*self.store, job);
                        self.nodes[n].inbox[s].push_back(Event::ReadDone { conn, outcome });
                    }
                    Action::Lookup(job) => {
                        let outcome = run_read(&*self.store, job);
                        self.nodes[n].inbox[s].push_back(Event::LookupDone(outcome));
                    }
                    Action::Directory { user, here } => {
                        let nodes = self.directory.entry(user.clone()).or_default();
                        if here {
                            assert!(nodes.insert(n), "arrival reported twice");
                        } else {
                            assert!(nodes.remove(&n), "departure of a user not here");
                        }
                        // Published to the nodes watching the user, only.
                        let watching: Vec<usize> = self.watchers.get(&user).into_iter().flatten().copied().filter(|&w| w != n).collect();
                        for w in watching {
                            let at_ms = self.now.unix_ms;
                            self.remote(n, w, RemoteMsg::Presence { user: user.clone(), node: n as NodeId, here, at_ms });
                        }
                    }
                    Action::PresenceWatch { user, watch } => {
                        let w = self.watchers.entry(user.clone()).or_default();
                        if watch {
                            assert!(w.insert(n), "watched twice from one node");
                            let nodes: Vec<NodeId> =
                                self.directory.get(&user).into_iter().flatten().filter(|&&o| o != n).map(|&o| o as NodeId).collect();
                            let home = home_shard(&user, SHARDS);
                            self.nodes[n].inbox[home].push_back(Event::Peer(PeerMsg::PresenceNodes { user, nodes }));
                        } else {
                            assert!(w.remove(&n), "unwatched without a watch");
                        }
                    }
                    Action::Remote { node, msg } => {
                        assert_ne!(node as usize, n, "a node never sends itself a remote message");
                        self.remote(n, node as usize, msg);
                    }
                    Action::RemoteFanout { users, payload, except, msg, class } => {
                        let mut by_node: HashMap<usize, Vec<String>> = HashMap::new();
                        for u in users {
                            let nodes = self.directory.get(&u).cloned().unwrap_or_default();
                            for other in nodes.into_iter().filter(|&o| o != n) {
                                by_node.entry(other).or_default().push(u.clone());
                            }
                        }
                        let mut dests: Vec<_> = by_node.into_iter().collect();
                        dests.sort();
                        for (node, users) in dests {
                            let frame = payload.frame().clone();
                            self.remote(n, node, RemoteMsg::Fanout { users, frame, except, msg: msg.clone(), class });
                        }
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

        // Node 2 dies. Until the link says so, its conversations cannot be sequenced.
        c.kill(2);
        for (i, p) in peers.iter().enumerate() {
            c.push(a, &dm(p, &format!("y{i}")));
        }
        c.run();
        let lost: Vec<String> = unavailable(&c.take(a));
        let on2: Vec<&String> = peers.iter().filter(|p| owner_node(&direct_conv_id("alice", p), &[0, 1, 2]) == Some(2)).collect();
        assert_eq!(lost.len(), on2.len(), "seed {seed}: every send to the dead owner is answered unavailable");

        // The view changes: they move; during the handover they are refused, then accepted.
        c.view();
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
        st.fence_node(1, 1).unwrap();
        for q in &mut c.nodes[0].inbox {
            q.push_back(Event::Peer(PeerMsg::View { live: vec![0], incarnation: 1 }));
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
                q.push_back(Event::Peer(PeerMsg::View { live: vec![0, 1], incarnation: 2 }));
            }
        }
        c.run();
        let mut seqs: Vec<u64> = acks(&c.take(a)).into_iter().map(|(_, s)| s).collect();
        let from_b = c.take(b);
        assert!(acks(&from_b).is_empty(), "seed {seed}: the fenced node acked {:?}", acks(&from_b));
        assert_eq!(unavailable(&from_b).len(), 5, "seed {seed}: refused, to be retried");
        // Its link, too late, repeats the old incarnation: ignored. Then it rejoins with a new one.
        for q in &mut c.nodes[1].inbox {
            q.push_back(Event::Peer(PeerMsg::View { live: vec![0, 1], incarnation: 1 }));
        }
        c.run();
        c.send(b, &dm("alice", "b1"));
        assert_eq!(unavailable(&c.take(b)), vec!["b1".to_string()], "seed {seed}");
        for node in &mut c.nodes {
            for q in &mut node.inbox {
                q.push_back(Event::Peer(PeerMsg::View { live: vec![0, 1], incarnation: 2 }));
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
        c.view();
        c.tick(1_100);
        assert_eq!(presence(&c.take(k), "bob"), vec!["offline"], "seed {seed}");
        // Carol unsubscribes: node 2 stops watching.
        c.send(k, r#"{"t":"presence_unsub","users":["bob"]}"#);
        assert!(c.watchers["bob"].is_empty());
    }
}
