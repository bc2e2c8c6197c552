//! Property tests: seqs, dedup and watermarks under random client populations.
use super::*;

/// One step of a client population, for the property test below.
#[derive(Clone, Debug)]
enum Step {
    /// Device `dev` sends a new message to `to`.
    Send { dev: usize, to: usize },
    /// Device `dev` sends again the `nth` message it ever sent (a retry after a lost ack).
    Retry { dev: usize, nth: usize },
    /// Device `dev` marks `seq` of its conversation with `to` read (or delivered).
    Mark { dev: usize, to: usize, seq: u64, read: bool },
    /// Device `dev` drops and connects again.
    Reconnect { dev: usize },
    /// Time passes.
    Tick,
}

const USERS: [&str; 3] = ["ann", "ben", "cat"];

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        5 => (0..6usize, 0..3usize).prop_map(|(dev, to)| Step::Send { dev, to }),
        2 => (0..6usize, 0..20usize).prop_map(|(dev, nth)| Step::Retry { dev, nth }),
        2 => (0..6usize, 0..3usize, 1..12u64, any::<bool>()).prop_map(|(dev, to, seq, read)| Step::Mark { dev, to, seq, read }),
        1 => (0..6usize).prop_map(|dev| Step::Reconnect { dev }),
        1 => Just(Step::Tick),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 96, ..Default::default() })]
    /// Whatever devices do and in whatever interleaving: seqs are dense from 1, each (sender,
    /// cmid) is stored once and a retry gets the first ack again, and watermarks never go back
    /// and never pass the conversation's last seq.
    #[test]
    fn seq_dedup_and_watermarks_hold_under_any_interleaving(seed in 1u64.., shards in 1usize..4, steps in proptest::collection::vec(step(), 1..60)) {
        let store = store();
        let mut sim = Sim::new(shards, seed, store.clone());
        // Devices 0..6: two per user.
        let mut devs: Vec<Dev> = (0..6).map(|i| sim.connect(USERS[i / 2])).collect();
        let mut sent: Vec<Vec<(String, usize)>> = vec![Vec::new(); 6];
        let mut first_ack: HashMap<String, (String, u64)> = HashMap::new();
        let mut marks: HashMap<(String, String, bool), u64> = HashMap::new();
        let mut n = 0;
        for s in steps {
            match s {
                Step::Send { dev, to } if USERS[to] != USERS[dev / 2] => {
                    n += 1;
                    let cmid = format!("m{n}");
                    sent[dev].push((cmid.clone(), to));
                    sim.push(devs[dev], &send(USERS[to], &cmid, "x"));
                }
                Step::Retry { dev, nth } if !sent[dev].is_empty() => {
                    let (cmid, to) = sent[dev][nth % sent[dev].len()].clone();
                    sim.push(devs[dev], &send(USERS[to], &cmid, "x"));
                }
                Step::Mark { dev, to, seq, read } if USERS[to] != USERS[dev / 2] => {
                    let (a, b) = (USERS[dev / 2].min(USERS[to]), USERS[dev / 2].max(USERS[to]));
                    let kind = if read { "read" } else { "delivered" };
                    sim.push(devs[dev], &format!(r#"{{"t":"{kind}","conv":"d:{a}:{b}","seq":{seq}}}"#));
                }
                Step::Reconnect { dev } => {
                    sim.disconnect(devs[dev]);
                    devs[dev] = sim.connect(USERS[dev / 2]);
                }
                Step::Tick => sim.tick(100),
                _ => {}
            }
            // Runs some of the time only, so frames pile up and interleave across shards.
            if sim.rng.below(3) == 0 {
                sim.run();
                // Watermarks are read while the run goes on, not only at its end: each reading
                // must be at least the one before.
                watermarks_never_go_back(&*store, &mut marks)?;
            }
            for (i, d) in devs.iter().enumerate() {
                for f in sim.take(*d) {
                    if let ServerFrame::Ack { cmid, conv, seq, .. } = f {
                        let first = first_ack.entry(cmid.clone()).or_insert((conv.clone(), seq));
                        proptest::prop_assert_eq!(&*first, &(conv, seq), "device {} got a second ack for {} that differs", i, cmid);
                    }
                }
            }
        }
        sim.run();
        for d in &devs {
            for f in sim.take(*d) {
                if let ServerFrame::Ack { cmid, conv, seq, .. } = f {
                    let first = first_ack.entry(cmid.clone()).or_insert((conv.clone(), seq));
                    proptest::prop_assert_eq!(&*first, &(conv, seq));
                }
            }
        }
        let mut stored = 0;
        for (i, a) in USERS.iter().enumerate() {
            for b in &USERS[i + 1..] {
                let conv = format!("d:{a}:{b}");
                let msgs = store.messages_after(&conv, 0, 10_000).unwrap();
                let seqs: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
                proptest::prop_assert_eq!(seqs, (1..=msgs.len() as u64).collect::<Vec<_>>(), "dense seqs in {}", conv);
                let mut cmids: Vec<&str> = msgs.iter().map(|m| m.cmid.as_str()).collect();
                cmids.sort_unstable();
                let len = cmids.len();
                cmids.dedup();
                proptest::prop_assert_eq!(cmids.len(), len, "a cmid stored twice in {}", conv);
                for m in &msgs {
                    // An ack can be lost with its connection (the client retries); one that
                    // arrived names exactly what is stored.
                    if let Some(ack) = first_ack.get(&m.cmid) {
                        proptest::prop_assert_eq!(ack, &(conv.clone(), m.seq), "acked otherwise than stored");
                        stored += 1;
                    }
                    proptest::prop_assert!(sent.iter().flatten().any(|(c, _)| *c == m.cmid), "stored but never sent");
                }
                for user in [a, b] {
                    for kind in [ReceiptKind::Delivered, ReceiptKind::Read] {
                        let w = store.watermark(&conv, user, kind).unwrap();
                        proptest::prop_assert!(w <= msgs.len() as u64, "watermark past the last seq");
                    }
                }
            }
        }
        watermarks_never_go_back(&*store, &mut marks)?;
        proptest::prop_assert_eq!(stored, first_ack.len(), "every ack names a stored message");
    }
}

/// Reads every watermark of the users' direct conversations and checks none is below the last
/// reading in `marks` (which it then updates).
fn watermarks_never_go_back(
    store: &dyn MessageStore,
    marks: &mut HashMap<(String, String, bool), u64>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    for (i, a) in USERS.iter().enumerate() {
        for b in &USERS[i + 1..] {
            let conv = format!("d:{a}:{b}");
            for user in [a, b] {
                for kind in [ReceiptKind::Delivered, ReceiptKind::Read] {
                    let w = store.watermark(&conv, user, kind).unwrap();
                    let key = (conv.clone(), user.to_string(), kind == ReceiptKind::Read);
                    let before = marks.get(&key).copied().unwrap_or(0);
                    proptest::prop_assert!(w >= before, "watermark of {} in {} went back from {} to {}", user, conv, before, w);
                    marks.insert(key, w);
                }
            }
        }
    }
    Ok(())
}
