//! Groups: fan-out, membership rules and the member bound, coalesced receipt counts, typing.
use super::*;

#[test]
fn a_group_message_reaches_every_member_once_in_order_with_one_encode() {
    for seed in [1, 2, 3] {
        let mut sim = Sim::new(4, seed, store());
        let users: Vec<String> = (0..40).map(|i| format!("u{i}")).collect();
        let devs: Vec<Dev> = users.iter().map(|u| sim.connect(u)).collect();
        let names: Vec<&str> = users[1..].iter().map(|s| s.as_str()).collect();
        let conv = create_group(&mut sim, devs[0], &names);
        for d in &devs[1..] {
            let f = sim.take(*d);
            assert!(
                matches!(f.as_slice(), [ServerFrame::Group { .. }, ServerFrame::Msg(m)] if m.kind == MsgKind::System && m.seq == 1),
                "{f:?}"
            );
        }
        for (i, d) in devs.iter().enumerate().take(5) {
            for j in 0..10 {
                sim.push(*d, &format!(r#"{{"t":"send","cmid":"{i}-{j}","conv":"{conv}","body":"x"}}"#));
            }
        }
        sim.run();
        let mut first: Option<Payload> = None;
        for (i, d) in devs.iter().enumerate() {
            let seqs: Vec<u64> = sim.msgs(*d).iter().map(|m| m.seq).collect();
            let expect = if i < 5 { 40 } else { 50 };
            assert_eq!(seqs.len(), expect, "member {i}");
            assert!(seqs.windows(2).all(|w| w[0] < w[1]));
            // Every member got the same encoded frame for seq 2 (or it was their own).
            if let Some(p) = sim.received[d].iter().find(|p| matches!(p.frame(), ServerFrame::Msg(m) if m.seq == 2)) {
                match &first {
                    None => first = Some(p.clone()),
                    Some(f) => assert!(f.ptr_eq(p)),
                }
            }
        }
    }
}

#[test]
fn group_membership_rules() {
    let st = store();
    let mut sim = Sim::new(3, 5, st.clone());
    let (a, b, c, d) = (sim.connect("ann"), sim.connect("bob"), sim.connect("cat"), sim.connect("dan"));
    let conv = create_group(&mut sim, a, &["bob", "cat"]);
    sim.take(b);
    sim.take(c);
    // Only admins add or remove.
    sim.send(b, &format!(r#"{{"t":"group_add","conv":"{conv}","users":["dan"],"ref":1}}"#));
    assert_eq!(err_code(&sim.take(b)), vec![ErrorCode::Forbidden]);
    // Strangers can do nothing with it.
    sim.send(d, &format!(r#"{{"t":"send","cmid":"x","conv":"{conv}","body":"hi"}}"#));
    sim.send(d, &format!(r#"{{"t":"history","conv":"{conv}"}}"#));
    sim.send(d, &format!(r#"{{"t":"read","conv":"{conv}","seq":1}}"#));
    sim.send(d, &format!(r#"{{"t":"typing","conv":"{conv}"}}"#));
    sim.send(d, &format!(r#"{{"t":"group_leave","conv":"{conv}"}}"#));
    sim.send(d, &format!(r#"{{"t":"receipt_query","conv":"{conv}","seq":1}}"#));
    assert_eq!(err_code(&sim.take(d)), vec![ErrorCode::Forbidden; 6]);
    // Removal: the removed member gets the system message that removes them, then nothing.
    sim.send(a, &format!(r#"{{"t":"send","cmid":"m1","conv":"{conv}","body":"before"}}"#));
    sim.send(a, &format!(r#"{{"t":"group_remove","conv":"{conv}","users":["cat"],"ref":2}}"#));
    let cat = sim.take(c);
    assert!(matches!(cat.last(), Some(ServerFrame::Msg(m)) if m.kind == MsgKind::System && m.body.contains("\"remove\"")), "{cat:?}");
    sim.send(a, &format!(r#"{{"t":"send","cmid":"m2","conv":"{conv}","body":"after"}}"#));
    assert!(sim.take(c).is_empty(), "nothing after removal");
    // A former member reads history up to their removal, not beyond, and cannot send.
    sim.send(c, &format!(r#"{{"t":"history","conv":"{conv}"}}"#));
    let ServerFrame::History { messages, .. } = sim.take(c).pop().unwrap() else { panic!() };
    assert_eq!(messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3, 2, 1]);
    sim.send(c, r#"{"t":"sync"}"#);
    let f = sim.take(c);
    let ServerFrame::Synced { convs } = f.last().unwrap() else { panic!("{f:?}") };
    assert_eq!(convs[&conv], 3, "a former member's sync ends where they left");
    sim.send(c, &format!(r#"{{"t":"send","cmid":"z","conv":"{conv}","body":"hi"}}"#));
    assert_eq!(err_code(&sim.take(c)), vec![ErrorCode::Forbidden]);
    // The admin leaves: admin goes to the oldest member.
    sim.take(b);
    sim.send(a, &format!(r#"{{"t":"group_leave","conv":"{conv}","ref":3}}"#));
    let (_, members) = group_of(&sim.take(b)).unwrap();
    assert_eq!(members, vec![("bob".to_string(), Role::Admin)]);
    assert_eq!(st.members(&conv).unwrap().len(), 1);
}

#[test]
fn groups_hold_at_most_500() {
    let mut sim = Sim::new(2, 5, store());
    let a = sim.connect("admin");
    let many: Vec<String> = (0..499).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
    let conv = create_group(&mut sim, a, &refs);
    sim.send(a, &format!(r#"{{"t":"group_add","conv":"{conv}","users":["one-more"]}}"#));
    assert_eq!(err_code(&sim.take(a)), vec![ErrorCode::GroupFull]);
    sim.send(a, &format!(r#"{{"t":"group_add","conv":"{conv}","users":["m1"]}}"#));
    assert!(group_of(&sim.take(a)).is_some(), "adding a member who is in changes nothing");
}

#[test]
fn group_receipts_are_coalesced_counts_for_the_author() {
    let mut sim = Sim::new(3, 7, store());
    let a = sim.connect("ann");
    let readers: Vec<Dev> = (0..10).map(|i| sim.connect(&format!("r{i}"))).collect();
    let names: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    let conv = create_group(&mut sim, a, &names.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    sim.send(a, &format!(r#"{{"t":"send","cmid":"m","conv":"{conv}","body":"hello"}}"#));
    sim.take(a);
    for (i, r) in readers.iter().enumerate() {
        sim.take(*r);
        sim.send(*r, &format!(r#"{{"t":"delivered","conv":"{conv}","seq":2}}"#));
        if i < 4 {
            sim.send(*r, &format!(r#"{{"t":"read","conv":"{conv}","seq":2}}"#));
        }
    }
    // No per-reader receipts to anyone.
    assert!(readers.iter().all(|r| sim.frames(*r).is_empty()));
    assert!(sim.frames(a).is_empty(), "counts wait for the tick");
    sim.tick(600);
    let f = sim.take(a);
    assert_eq!(
        f,
        vec![ServerFrame::ReceiptCounts { conv: conv.clone(), of: 10, counts: vec![SeqCounts { seq: 2, delivered: 10, read: 4 }] }]
    );
    // Coalesced: more reads inside the interval wait; nothing changed → nothing sent.
    sim.send(readers[5], &format!(r#"{{"t":"read","conv":"{conv}","seq":2}}"#));
    sim.tick(100);
    assert!(sim.take(a).is_empty());
    sim.tick(500);
    assert!(matches!(&sim.take(a)[..], [ServerFrame::ReceiptCounts { counts, .. }] if counts[0].read == 5));
    sim.tick(1000);
    assert!(sim.take(a).is_empty());
    // The exact query says who.
    sim.send(a, &format!(r#"{{"t":"receipt_query","conv":"{conv}","seq":2,"ref":"q"}}"#));
    let ServerFrame::ReceiptDetail { of, delivered, read, r#ref, .. } = sim.take(a).pop().unwrap() else { panic!() };
    assert_eq!((of, delivered.len(), r#ref), (10, 10, Some(Ref::Str("q".into()))));
    assert_eq!(read, vec!["r0", "r1", "r2", "r3", "r5"]);
    // An author who left gets no more receipts of the conversation.
    sim.send(readers[0], &format!(r#"{{"t":"send","cmid":"r0m","conv":"{conv}","body":"mine"}}"#));
    sim.send(readers[0], &format!(r#"{{"t":"group_leave","conv":"{conv}"}}"#));
    sim.take(readers[0]);
    sim.send(readers[1], &format!(r#"{{"t":"read","conv":"{conv}","seq":4}}"#));
    sim.tick(1_000);
    assert!(sim.take(readers[0]).is_empty());
}

#[test]
fn typing_reaches_the_other_members_is_rate_limited_and_never_stored() {
    let st = store();
    let mut sim = Sim::new(3, 9, st.clone());
    let (a, b, c) = (sim.connect("ann"), sim.connect("bob"), sim.connect("cat"));
    let conv = create_group(&mut sim, a, &["bob", "cat"]);
    sim.take(b);
    sim.take(c);
    for _ in 0..5 {
        sim.send(a, &format!(r#"{{"t":"typing","conv":"{conv}"}}"#));
    }
    let want = vec![ServerFrame::Typing { conv: conv.clone(), user: "ann".into() }];
    assert_eq!(sim.take(b), want, "one per interval");
    assert_eq!(sim.take(c), want);
    assert!(sim.take(a).is_empty(), "not echoed to the typist");
    let dropped: u64 = sim.shards.iter().map(|s| s.counters().typing_dropped).sum();
    assert_eq!(dropped, 4, "the dropped ones are counted");
    sim.tick(2_500);
    sim.send(a, &format!(r#"{{"t":"typing","conv":"{conv}"}}"#));
    assert_eq!(sim.take(b), want, "allowed again after the interval");
    assert_eq!(st.last_seq(&conv).unwrap(), 1, "only the group's creation is stored");
}

/// Typing before a direct conversation's first message reaches the other member, the first
/// time (the commit job loads the empty conversation) and again (from the owner's cache); a
/// stranger typing there is refused.
#[test]
fn typing_in_a_direct_conversation_before_its_first_message() {
    let mut sim = Sim::new(2, 5, store());
    let (a, b, c) = (sim.connect("ann"), sim.connect("bob"), sim.connect("cat"));
    let want = vec![ServerFrame::Typing { conv: "d:ann:bob".into(), user: "ann".into() }];
    sim.send(a, r#"{"t":"typing","conv":"d:ann:bob"}"#);
    assert_eq!(sim.take(b), want);
    sim.tick(2_500);
    sim.send(a, r#"{"t":"typing","conv":"d:ann:bob"}"#);
    assert_eq!(sim.take(b), want);
    sim.send(c, r#"{"t":"typing","conv":"d:ann:bob"}"#);
    assert_eq!(err_code(&sim.take(c)), [ErrorCode::NotFound]);
    assert!(sim.take(b).is_empty() && sim.take(a).is_empty());
}
