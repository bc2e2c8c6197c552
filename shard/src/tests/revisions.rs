//! Edits, deletes, reactions and replies: events in the conversation's order that change the
//! record of an earlier message, over several shards and seeds, in one batch and across batches.
use super::*;

fn event(conv: &str, cmid: &str, kind: &str, target: u64, body: &str) -> String {
    format!(r#"{{"t":"send","cmid":"{cmid}","conv":"{conv}","kind":"{kind}","target":{target},"body":"{body}"}}"#)
}

fn error_of(frames: &[ServerFrame], cmid: &str) -> Option<ErrorCode> {
    frames.iter().find_map(|f| match f {
        ServerFrame::Error { code, cmid: Some(c), .. } if c == cmid => Some(*code),
        _ => None,
    })
}

#[test]
fn an_edit_takes_the_next_seq_reaches_the_members_and_history_shows_the_new_text() {
    for seed in 1..10 {
        let st = store();
        let mut sim = Sim::new(3, seed, st.clone());
        let (a, b) = (sim.connect("alice"), sim.connect("bob"));
        sim.send(a, &send("bob", "c1", "helo"));
        let c = "d:alice:bob";
        sim.send(a, &event(c, "e1", "edit", 1, "hello"));
        assert!(matches!(sim.frames(a).last(), Some(ServerFrame::Ack { seq: 2, cmid, .. }) if cmid == "e1"), "{:?}", sim.frames(a));
        let got = sim.msgs(b);
        assert_eq!(got.len(), 2);
        assert_eq!((got[1].kind, got[1].target, got[1].body.as_str()), (MsgKind::Edit, Some(1), "hello"));
        let stored = st.messages_after(c, 0, 10).unwrap();
        assert_eq!((stored[0].body.as_str(), stored[0].edited_at.is_some(), stored[0].edits.clone()), ("hello", true, vec![2]));
        // A retried edit is the same edit: acked again, stored once, delivered once.
        sim.send(a, &event(c, "e1", "edit", 1, "hello"));
        assert_eq!(st.last_seq(c).unwrap(), 2);
        assert_eq!(sim.msgs(b).len(), 2, "seed {seed}");
    }
}

#[test]
fn only_the_author_edits_and_unknown_or_deleted_targets_are_not_found() {
    let st = store();
    let mut sim = Sim::new(2, 3, st.clone());
    let (a, b) = (sim.connect("alice"), sim.connect("bob"));
    sim.send(a, &send("bob", "c1", "mine"));
    let c = "d:alice:bob";
    sim.send(b, &event(c, "x1", "edit", 1, "theirs"));
    assert_eq!(error_of(&sim.frames(b), "x1"), Some(ErrorCode::Forbidden));
    sim.send(b, &event(c, "x2", "delete", 1, ""));
    assert_eq!(error_of(&sim.frames(b), "x2"), Some(ErrorCode::Forbidden), "in a direct conversation only the author deletes");
    sim.send(a, &event(c, "x3", "edit", 9, "later"));
    assert_eq!(error_of(&sim.frames(a), "x3"), Some(ErrorCode::NotFound));
    sim.send(a, &event(c, "d1", "delete", 1, ""));
    sim.send(a, &event(c, "x4", "edit", 1, "back"));
    assert_eq!(error_of(&sim.frames(a), "x4"), Some(ErrorCode::NotFound), "a deleted message stays deleted");
    sim.send(a, &event(c, "x5", "reaction", 2, "👍"));
    assert_eq!(error_of(&sim.frames(a), "x5"), Some(ErrorCode::Forbidden), "an event is not a target");
    // Refusals took no seq: the message and its delete are all there is.
    assert_eq!(st.last_seq(c).unwrap(), 2);
    // An event cannot open a conversation.
    let z = sim.connect("zed");
    sim.send(z, &event("d:alice:zed", "x6", "reaction", 1, "👍"));
    assert_eq!(error_of(&sim.frames(z), "x6"), Some(ErrorCode::NotFound));
    assert!(st.members("d:alice:zed").unwrap().is_empty(), "no conversation was made");
}

#[test]
fn a_delete_erases_the_body_of_the_message_and_of_its_edits_in_one_batch_or_across_batches() {
    for (seed, same_batch) in [(1, true), (2, false), (3, true), (4, false)] {
        let st = store();
        let mut sim = Sim::new(2, seed, st.clone());
        let (a, b) = (sim.connect("alice"), sim.connect("bob"));
        let c = "d:alice:bob";
        sim.push(a, &send("bob", "c1", "secret"));
        if !same_batch {
            sim.run();
        }
        sim.push(a, &event(c, "e1", "edit", 1, "secret two"));
        sim.push(b, &event(c, "r1", "reaction", 1, "😮"));
        if !same_batch {
            sim.run();
        }
        sim.push(a, &event(c, "d1", "delete", 1, ""));
        sim.run();
        let stored = st.messages_after(c, 0, 10).unwrap();
        assert_eq!(stored.len(), 4, "seed {seed}: {stored:?}");
        assert!(stored[0].deleted && stored[0].body.is_empty() && stored[0].reactions.is_empty(), "{:?}", stored[0]);
        let edit = stored.iter().find(|m| m.kind == MsgKind::Edit).unwrap();
        assert!(edit.deleted && edit.body.is_empty(), "the edit's copy of the text goes too: {edit:?}");
        assert!(stored.iter().all(|m| !m.body.contains("secret")), "seed {seed}: {stored:?}");
    }
}

#[test]
fn a_group_admin_deletes_any_message_a_member_only_their_own() {
    let st = store();
    let mut sim = Sim::new(3, 8, st.clone());
    let (admin, m1) = (sim.connect("ann"), sim.connect("ben"));
    let _m2 = sim.connect("cat");
    let g = create_group(&mut sim, admin, &["ben", "cat"]);
    sim.send(m1, &format!(r#"{{"t":"send","cmid":"b1","conv":"{g}","body":"ben's"}}"#));
    let seq = st.last_seq(&g).unwrap();
    let c = sim.connect("cat");
    sim.send(c, &event(&g, "x1", "delete", seq, ""));
    assert_eq!(error_of(&sim.frames(c), "x1"), Some(ErrorCode::Forbidden));
    sim.send(admin, &event(&g, "d1", "delete", seq, ""));
    assert!(error_of(&sim.frames(admin), "d1").is_none(), "{:?}", sim.frames(admin));
    assert!(st.messages_after(&g, seq - 1, 1).unwrap()[0].deleted);
}

#[test]
fn reactions_are_one_per_user_and_owe_no_push() {
    let st = store();
    let mut sim = Sim::with(2, 4, st.clone(), |c| c.push_enabled = true);
    let (a, b) = (sim.connect("alice"), sim.connect("bob"));
    sim.send(a, &send("bob", "c1", "hi"));
    let c = "d:alice:bob";
    // Bob goes offline: his reactions owe alice nothing, and alice's owes him nothing either.
    sim.disconnect(b);
    sim.send(a, &send("bob", "c2", "are you there?"));
    assert_eq!(st.push_pending(10).unwrap().len(), 1, "a message proper owes the offline user a push");
    let b = sim.connect("bob");
    for (cmid, body) in [("r1", "👍"), ("r2", "🎉"), ("r3", "")] {
        sim.send(b, &event(c, cmid, "reaction", 1, body));
    }
    sim.send(a, &event(c, "r4", "reaction", 1, "❤"));
    let m = &st.messages_after(c, 0, 1).unwrap()[0];
    let who: Vec<(&str, &str)> = m.reactions.iter().map(|r| (r.user.as_str(), r.emoji.as_str())).collect();
    assert_eq!(who, [("alice", "❤️")], "bob took his back; alice's is stored fully qualified");
    assert_eq!(st.last_seq(c).unwrap(), 6, "every reaction is an event with its seq");
    sim.disconnect(b);
    sim.send(a, &event(c, "r5", "reaction", 2, "👍"));
    assert_eq!(st.push_pending(10).unwrap().len(), 1, "a reaction owes no push");
}

#[test]
fn a_reply_names_an_earlier_message_of_its_conversation() {
    let st = store();
    let mut sim = Sim::new(2, 6, st.clone());
    let (a, b) = (sim.connect("alice"), sim.connect("bob"));
    sim.send(a, &send("bob", "c1", "question"));
    sim.send(b, r#"{"t":"send","cmid":"c2","to":"alice","body":"answer","reply_to":1}"#);
    let got = sim.msgs(a);
    assert_eq!((got[0].body.as_str(), got[0].reply_to), ("answer", Some(1)));
    sim.send(b, r#"{"t":"send","cmid":"c3","to":"alice","body":"?","reply_to":3}"#);
    assert_eq!(error_of(&sim.frames(b), "c3"), Some(ErrorCode::NotFound), "a reply to a message that does not exist yet");
    assert_eq!(st.messages_after("d:alice:bob", 1, 5).unwrap()[0].reply_to, Some(1));
}
