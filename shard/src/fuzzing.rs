//! The shard state machine under random event sequences (`fuzz/fuzz_targets/shard_machine.rs`),
//! as a plain function so that the committed corpus also runs as an ordinary test
//! (`replay_corpus` in this module's tests). It panics exactly when an invariant breaks.
//!
//! An input is read as: the number of shards, a seed for the interleaving, a settings byte (1: a
//! tiny commit queue, 2: a tight send rate, 4: commit pacing, 8: a clean stop at the end), then
//! steps, each an opcode byte and its arguments. Three users with two devices each send direct and
//! group messages, retry them, edit, delete, react to and answer earlier seqs, mark receipts,
//! create and change groups, read history, reconnect,
//! let time pass, and send arbitrary frames (the input's own bytes, when they decode). Shards run
//! some of the time only, so frames pile up and interleave across shards and commits.
//!
//! Checked, after the whole sequence: every conversation's seqs are dense from 1; a (sender,
//! cmid) is stored at most once per conversation, and every ack names exactly what is stored
//! (a retry gets its first ack again); what was stored was sent; live `msg` frames on one
//! connection come in strictly increasing seq per conversation and match the store; watermarks
//! never pass the last seq; an edit, delete, reaction or reply names an earlier message proper; a
//! deleted message keeps no text, reactions or file, nor do its edits; reactions are one per user.
//! And nothing panics on the way.

use crate::sim::{store, Dev, Sim};
use shardchat_codec::{decode_text, ClientFrame, Limits, ReceiptKind, ServerFrame};
use shardchat_storage::MessageStore;
use std::collections::{BTreeSet, HashMap};

const USERS: [&str; 3] = ["ann", "ben", "cat"];
/// Two devices per user: device `i` belongs to `USERS[i / 2]`.
const DEVICES: usize = 6;
/// Steps read from one input at most: bounds the time one input takes.
const STEPS_MAX: usize = 256;
/// Bytes of one arbitrary frame at most.
const RAW_FRAME_BYTES_MAX: usize = 96;
/// The commit interval of a paced run (settings 4), in µs: short beside a tick of op 10.
const PACED_COMMIT_INTERVAL_US: u64 = 2_000;
/// Ticks of 1 ms after the final one that the wake-ups get to take every held op out.
const SETTLE_TICKS_MAX: usize = 100;

/// Reads an input's bytes, 0 once they run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn below(&mut self, n: usize) -> usize {
        self.byte() as usize % n
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

/// What the clients saw, for the checks.
#[derive(Default)]
struct Seen {
    /// (sender, conv, cmid) → the seq its first ack named.
    acks: HashMap<(String, String, String), u64>,
    /// (sender, cmid) of every send the clients made, the input's own frames included.
    sent: BTreeSet<(String, String)>,
    /// Every conversation a client heard of (direct ones are added at the end).
    convs: BTreeSet<String>,
    /// Group conversations, in the order the clients learned of them.
    groups: Vec<String>,
    /// (device's connection, conv) → the last live seq it got.
    live: HashMap<(Dev, String), u64>,
    /// Live messages as delivered: (conv, seq, from, cmid).
    delivered: Vec<(String, u64, String, String)>,
}

impl Seen {
    fn observe(&mut self, sim: &mut Sim, devs: &[Dev]) {
        for (i, d) in devs.iter().enumerate() {
            let user = USERS[i / 2];
            for f in sim.take(*d) {
                match f {
                    ServerFrame::Ack { cmid, conv, seq, .. } => {
                        let first = *self.acks.entry((user.to_string(), conv.clone(), cmid.clone())).or_insert(seq);
                        assert_eq!(first, seq, "{user} got a second ack for {cmid} in {conv} that differs");
                        self.convs.insert(conv);
                    }
                    ServerFrame::Msg(m) => {
                        let last = self.live.entry((*d, m.conv.clone())).or_insert(0);
                        assert!(m.seq > *last, "device {i} got seq {} of {} after seq {last}", m.seq, m.conv);
                        *last = m.seq;
                        self.delivered.push((m.conv.clone(), m.seq, m.from, m.cmid));
                        self.convs.insert(m.conv);
                    }
                    ServerFrame::Group { conv, .. } => {
                        if !self.groups.contains(&conv) {
                            self.groups.push(conv.clone());
                        }
                        self.convs.insert(conv);
                    }
                    _ => {}
                }
            }
        }
    }

    /// A known group, picked by `n`, or a conversation that does not exist.
    fn group(&self, n: usize) -> String {
        if self.groups.is_empty() {
            "g:1".to_string()
        } else {
            self.groups[n % self.groups.len()].clone()
        }
    }
}

fn direct(a: &str, b: &str) -> String {
    shardchat_codec::direct_conv_id(a, b)
}

/// How deep one input went: what the checks had to look at.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    pub acks: usize,
    pub delivered: usize,
    pub groups: usize,
    pub stored: usize,
    /// Edits, deletes and reactions stored.
    pub revisions: usize,
}

/// Runs one input; panics when an invariant breaks.
pub fn events(data: &[u8]) -> Reached {
    run(data, false).0
}

/// Runs one input, keeping the trace of every action when `trace` is set; returns the store
/// the run left too.
pub fn run(data: &[u8], trace: bool) -> (Reached, Option<Vec<String>>, std::sync::Arc<shardchat_storage_mem::MemStore>) {
    let mut input = Input(data);
    let shards = 1 + input.below(3);
    let seed = u64::from_le_bytes(std::array::from_fn(|_| input.byte()));
    let settings = input.byte();
    let store = store();
    let mut sim = Sim::with(shards, seed, store.clone(), |c| {
        if settings & 1 != 0 {
            c.owner_pending_ops_max = 3;
        }
        if settings & 2 != 0 {
            c.send_rate = crate::rate::Rate { per_sec: 5, burst: 3 };
        }
        if settings & 4 != 0 {
            // Commit pacing: ops wait in the owner for a wake-up at the interval's end (the
            // ticks of op 10 pass it; frames between ticks pile up behind it).
            c.commit_interval_us = PACED_COMMIT_INTERVAL_US;
        }
        c.presence_subs_per_conn_max = 2;
    });
    if trace {
        sim.trace = Some(Vec::new());
    }
    let mut devs: Vec<Dev> = (0..DEVICES).map(|i| sim.connect(USERS[i / 2])).collect();
    let mut seen = Seen::default();
    let mut mine: Vec<Vec<(String, String)>> = vec![Vec::new(); DEVICES];
    let mut n = 0;
    for _ in 0..STEPS_MAX {
        if input.0.is_empty() {
            break;
        }
        let op = input.below(12);
        let dev = input.below(DEVICES);
        let user = USERS[dev / 2];
        // The steps write frames as a client would; those the codec refuses (a seq of 0, say)
        // never reach a shard, as on a real connection.
        let frame = |text: String| decode_text(&text, &Limits::default()).ok();
        let f = match op {
            0 | 1 => {
                n += 1;
                let to = USERS[input.below(3)];
                let cmid = format!("m{n}");
                mine[dev].push((format!("\"to\":\"{to}\""), cmid.clone()));
                frame(format!(r#"{{"t":"send","cmid":"{cmid}","to":"{to}","body":"x"}}"#))
            }
            2 => {
                n += 1;
                let cmid = format!("m{n}");
                if input.below(3) == 0 {
                    // An edit, delete or reaction of some seq, or a reply to one: the owner
                    // decides whether the target exists and the sender may.
                    let conv = match input.below(2) {
                        0 => direct(user, USERS[input.below(3)]),
                        _ => seen.group(input.byte() as usize),
                    };
                    let at = 1 + input.below(8);
                    let (kind, body) = [("edit", "e"), ("delete", ""), ("reaction", "👍"), ("reaction", "")][input.below(4)];
                    return_frame_or_reply(&frame, input.below(4) == 0, &cmid, &conv, kind, at, body)
                } else {
                    let conv = seen.group(input.byte() as usize);
                    mine[dev].push((format!("\"conv\":\"{conv}\""), cmid.clone()));
                    frame(format!(r#"{{"t":"send","cmid":"{cmid}","conv":"{conv}","body":"y"}}"#))
                }
            }
            3 => {
                // A retry of something this device sent (its ack may not have come yet).
                let nth = input.byte() as usize;
                mine[dev]
                    .get(nth % mine[dev].len().max(1))
                    .cloned()
                    .and_then(|(target, cmid)| frame(format!(r#"{{"t":"send","cmid":"{cmid}",{target},"body":"again"}}"#)))
            }
            4 => {
                let conv = match input.below(2) {
                    0 => direct(user, USERS[input.below(3)]),
                    _ => seen.group(input.byte() as usize),
                };
                let kind = ["read", "delivered"][input.below(2)];
                let seq = input.below(16);
                frame(format!(r#"{{"t":"{kind}","conv":"{conv}","seq":{seq}}}"#))
            }
            5 => {
                let members: Vec<String> = USERS.iter().filter(|_| input.below(2) == 1).map(|u| format!("\"{u}\"")).collect();
                frame(format!(r#"{{"t":"group_create","name":"g","members":[{}],"ref":{n}}}"#, members.join(",")))
            }
            6 => {
                let conv = seen.group(input.byte() as usize);
                let who = USERS[input.below(3)];
                let t = ["group_add", "group_remove"][input.below(2)];
                frame(format!(r#"{{"t":"{t}","conv":"{conv}","users":["{who}"],"ref":1}}"#))
            }
            7 => {
                let conv = seen.group(input.byte() as usize);
                frame(format!(r#"{{"t":"group_leave","conv":"{conv}"}}"#))
            }
            8 => {
                let conv = match input.below(2) {
                    0 => direct(user, USERS[input.below(3)]),
                    _ => seen.group(input.byte() as usize),
                };
                match input.below(3) {
                    0 => frame(format!(r#"{{"t":"history","conv":"{conv}","limit":5}}"#)),
                    1 => frame(format!(r#"{{"t":"sync","cursors":{{"{conv}":{}}}}}"#, input.below(8))),
                    _ => frame(format!(r#"{{"t":"receipt_query","conv":"{conv}","seq":{},"ref":2}}"#, input.below(8))),
                }
            }
            9 => {
                sim.disconnect(devs[dev]);
                devs[dev] = sim.connect(user);
                None
            }
            10 => {
                sim.tick(input.byte() as u64 * 16);
                None
            }
            _ => {
                // The input's own bytes as a frame, when they decode to one.
                let len = input.below(RAW_FRAME_BYTES_MAX);
                let raw = input.take(len);
                std::str::from_utf8(raw).ok().and_then(|text| frame(text.to_string()))
            }
        };
        if let Some(f) = f {
            if let ClientFrame::Send { cmid, .. } = &f {
                seen.sent.insert((user.to_string(), cmid.clone()));
            }
            sim.push_frame(devs[dev], f);
        }
        if sim.rng.below(3) == 0 {
            sim.run();
            held_ops_are_woken(&sim);
        }
        seen.observe(&mut sim, &devs);
    }
    // Let everything finish: commits, coalesced receipts, rate limits. A paced shard either
    // stops cleanly (settings 8: what it holds goes out at once) or is left to its wake-ups.
    sim.run();
    held_ops_are_woken(&sim);
    if settings & 8 != 0 {
        for q in &mut sim.inbox {
            q.push_back(crate::machine::Event::Drain);
        }
        sim.run();
    }
    sim.tick(5_000);
    // The wake-ups, as they come due, take every op out.
    for _ in 0..SETTLE_TICKS_MAX {
        held_ops_are_woken(&sim);
        if sim.wakes.iter().all(Option::is_none) {
            break;
        }
        sim.tick(1);
    }
    for (s, shard) in sim.shards.iter().enumerate() {
        assert_eq!(shard.pending_ops(), 0, "shard {s} still holds ops after {SETTLE_TICKS_MAX} ms of wake-ups");
    }
    seen.observe(&mut sim, &devs);
    let (stored, revisions) = check(&*store, &seen);
    let reached = Reached { acks: seen.acks.len(), delivered: seen.delivered.len(), groups: seen.groups.len(), stored, revisions };
    (reached, sim.trace.take(), store)
}

/// Liveness of commit pacing, whenever the shards have run dry: a shard that holds ops has a
/// wake-up outstanding. (A commit job ends within the run that started it here, so none is out.)
/// Without one it would hold them until something else came: a tick, up to its interval later,
/// or on a shard with no other traffic nothing.
fn held_ops_are_woken(sim: &Sim) {
    for (s, shard) in sim.shards.iter().enumerate() {
        assert!(
            shard.pending_ops() == 0 || sim.wakes[s].is_some(),
            "shard {s} holds {} ops with no wake-up asked for",
            shard.pending_ops()
        );
    }
}

/// An event frame (`kind` about seq `at`), or with `reply` a message answering seq `at`.
fn return_frame_or_reply(
    frame: &dyn Fn(String) -> Option<ClientFrame>,
    reply: bool,
    cmid: &str,
    conv: &str,
    kind: &str,
    at: usize,
    body: &str,
) -> Option<ClientFrame> {
    if reply {
        frame(format!(r#"{{"t":"send","cmid":"{cmid}","conv":"{conv}","body":"r","reply_to":{at}}}"#))
    } else {
        frame(format!(r#"{{"t":"send","cmid":"{cmid}","conv":"{conv}","kind":"{kind}","target":{at},"body":"{body}"}}"#))
    }
}

/// Checks the store against what the clients saw; returns how many messages are stored, and how
/// many of them are edits, deletes and reactions.
fn check(store: &dyn MessageStore, seen: &Seen) -> (usize, usize) {
    let mut convs = seen.convs.clone();
    for (i, a) in USERS.iter().enumerate() {
        for b in &USERS[i..] {
            convs.insert(direct(a, b));
        }
    }
    let (mut acked, mut stored, mut revisions) = (0, 0, 0);
    for conv in &convs {
        let msgs = store.messages_after(conv, 0, 100_000).expect("store read");
        stored += msgs.len();
        let seqs: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=msgs.len() as u64).collect::<Vec<_>>(), "dense seqs in {conv}");
        let mut keys = BTreeSet::new();
        for m in &msgs {
            assert!(keys.insert((m.from.clone(), m.cmid.clone())), "{} from {} stored twice in {conv}", m.cmid, m.from);
            // Group events are the engine's own; everything else a client sent.
            if m.kind != shardchat_codec::MsgKind::System {
                assert!(seen.sent.contains(&(m.from.clone(), m.cmid.clone())), "{} from {} stored but never sent", m.cmid, m.from);
            }
            // Events and replies name an earlier message; a deleted message keeps no text, nor do
            // its edits; reactions are one per user, ordered.
            if let Some(t) = m.target.or(m.reply_to) {
                assert!(t < m.seq, "{} names seq {t}, not before its own {}", m.cmid, m.seq);
            }
            if m.kind.is_event() {
                revisions += 1;
                let target = &msgs[m.target.expect("an event names its target") as usize - 1];
                assert!(target.kind.is_content(), "{} is about {:?}, not a message", m.cmid, target.kind);
                if m.kind == shardchat_codec::MsgKind::Edit && target.deleted {
                    assert!(m.body.is_empty() && m.deleted, "an edit of a deleted message keeps its text: {m:?}");
                }
            }
            if m.deleted {
                assert!(m.body.is_empty() && m.reactions.is_empty() && m.media.is_none(), "a tombstone keeps something: {m:?}");
            }
            assert!(m.reactions.windows(2).all(|w| w[0].user < w[1].user), "reactions not one per user in order: {m:?}");
            if let Some(seq) = seen.acks.get(&(m.from.clone(), conv.clone(), m.cmid.clone())) {
                assert_eq!(*seq, m.seq, "{} acked as seq {seq} but stored as {} in {conv}", m.cmid, m.seq);
                acked += 1;
            }
        }
        let last = msgs.len() as u64;
        for (user, _, w) in store.watermarks(conv).expect("store read") {
            assert!(w <= last, "{user}'s watermark {w} is past the last seq {last} of {conv}");
        }
        for user in USERS {
            for kind in [ReceiptKind::Delivered, ReceiptKind::Read] {
                assert!(store.watermark(conv, user, kind).expect("store read") <= last);
            }
        }
    }
    assert_eq!(acked, seen.acks.len(), "every ack names a stored message");
    for (conv, seq, from, cmid) in &seen.delivered {
        let m = store.messages_after(conv, seq - 1, 1).expect("store read");
        assert!(
            m.first().is_some_and(|m| m.seq == *seq && m.from == *from && m.cmid == *cmid),
            "delivered {cmid} from {from} as seq {seq} of {conv}, stored {m:?}"
        );
    }
    (stored, revisions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed corpus and mutations of it, on the stable toolchain.
    #[test]
    fn shard_machine_corpus_and_mutations_hold_every_invariant() {
        let revisions = std::cell::Cell::new(0);
        assert!(
            shardchat_codec::fuzzing::replay_corpus("shard_machine", 20_000, |d| {
                revisions.set(revisions.get() + events(d).revisions);
            }) > 20_000
        );
        let revisions = revisions.get();
        // The mutations reach edits, deletes and reactions that the owner stored, so the
        // invariants about them were checked on real ones.
        assert!(revisions > 100, "only {revisions} edits, deletes and reactions stored");
    }

    /// A seed replays exactly: the same actions in the same order and the same store, run after
    /// run (each run's hash maps get other random keys, so an order that leaked from one into
    /// what the shards do would differ here).
    #[test]
    fn every_input_replays_exactly() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/shard_machine");
        let mut compared = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            let (_, first, store) = run(&data, true);
            for _ in 0..3 {
                let (_, again, store_again) = run(&data, true);
                let (first, again) = (first.as_ref().unwrap(), again.unwrap());
                let at = first.iter().zip(&again).position(|(a, b)| a != b);
                assert!(at.is_none() && first.len() == again.len(), "the replay differs at action {at:?}");
                assert!(store.same_as(&store_again), "the replay left another store");
                compared += first.len();
            }
        }
        assert!(compared > 1_000, "the corpus drives the shards: {compared} actions compared");
    }

    /// The hand-written seeds get past the surface: the checks above look at acks, live
    /// deliveries, groups and stored messages, not at an empty run.
    #[test]
    fn the_seeds_reach_acks_deliveries_and_groups() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/shard_machine");
        let seed = |name: &str| events(&std::fs::read(dir.join(format!("seed-{name}"))).unwrap());
        let direct = seed("direct");
        assert!(direct.acks >= 10 && direct.delivered >= 10, "{direct:?}");
        let groups = seed("groups");
        assert!(groups.groups == 1 && groups.stored >= 4, "{groups:?}");
        let retries = seed("retries");
        assert!(retries.acks >= 2 && retries.stored == retries.acks, "{retries:?}");
        let raw = seed("raw");
        assert!(raw.acks == 2, "the raw frame is a send too: {raw:?}");
    }

    /// The paced seeds hold ops behind a wake-up (so the liveness check at the end of `run`
    /// looks at held ops), and every send is still answered: one run by its wake-ups, the other
    /// by a clean stop.
    #[test]
    fn the_paced_seeds_hold_ops_and_answer_every_send() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/shard_machine");
        for name in ["paced", "paced-stop"] {
            let (reached, trace, _) = run(&std::fs::read(dir.join(format!("seed-{name}"))).unwrap(), true);
            let wakes = trace.unwrap().iter().filter(|a| a.contains("WakeAt")).count();
            assert!(wakes >= 1, "{name}: no op was held");
            // 18 direct sends and a retry, a group send and two more sends after the tick.
            assert!(reached.acks >= 20 && reached.groups == 1, "{name}: {reached:?}");
        }
    }
}
