use super::*;
use proptest::prelude::*;

fn limits() -> Limits {
    Limits::default()
}

#[track_caller]
fn check_err(text: &str, code: ErrorCode, cmid: Option<&str>) {
    let e = decode_text(text, &limits()).expect_err(text);
    assert_eq!(e.code, code, "{text}: {e}");
    assert_eq!(e.cmid.as_deref(), cmid, "{text}");
}

#[test]
fn decodes_every_client_frame_of_the_contract() {
    let cases = [
        r#"{"t":"send","cmid":"c1","to":"bob","body":"hi"}"#,
        r#"{"t":"send","cmid":"c1","conv":"d:alice:bob","body":"hi","kind":"image"}"#,
        r#"{"t":"delivered","conv":"d:a:b","seq":3}"#,
        r#"{"t":"read","conv":"d:a:b","seq":3}"#,
        r#"{"t":"sync","cursors":{"d:a:b":4}}"#,
        r#"{"t":"sync","cursors":{},"limit":10}"#,
        r#"{"t":"sync"}"#,
        r#"{"t":"history","conv":"d:a:b","before":10,"limit":20,"ref":"h1"}"#,
        r#"{"t":"group_create","name":"team","members":["a","b"],"ref":7}"#,
        r#"{"t":"group_add","conv":"g:1","users":["c"]}"#,
        r#"{"t":"group_remove","conv":"g:1","users":["c"]}"#,
        r#"{"t":"group_leave","conv":"g:1"}"#,
        r#"{"t":"group_rename","conv":"g:1","name":"new","ref":"r"}"#,
        r#"{"t":"presence_sub","users":["a"]}"#,
        r#"{"t":"presence_unsub","users":["a"]}"#,
        r#"{"t":"typing","conv":"d:a:b"}"#,
        r#"{"t":"ping","ref":1}"#,
        r#"{"t":"receipt_query","conv":"g:1","seq":4,"ref":"q"}"#,
        r#"{"t":"ping","extra":"unknown fields are ignored"}"#,
    ];
    for text in cases {
        let f = decode_text(text, &limits()).unwrap_or_else(|e| panic!("{text}: {e}"));
        // The same frame survives the binary path, at an odd offset (unaligned input).
        let bin = encode_client_binary(&f);
        let mut shifted = vec![0u8; 1];
        shifted.extend_from_slice(&bin);
        assert_eq!(decode_binary(&shifted[1..], &limits()).unwrap(), f);
        // And the JSON path round-trips.
        assert_eq!(decode_text(&encode_client_text(&f), &limits()).unwrap(), f);
    }
}

#[test]
fn ref_is_echoed_as_given() {
    let f = decode_text(r#"{"t":"ping","ref":42}"#, &limits()).unwrap();
    assert_eq!(f, ClientFrame::Ping { r#ref: Some(Ref::Num(42)) });
    let out = encode_text(&ServerFrame::Pong { r#ref: Some(Ref::Num(42)) });
    assert_eq!(out, r#"{"t":"pong","ref":42}"#);
    let out = encode_text(&ServerFrame::Pong { r#ref: Some(Ref::Str("x".into())) });
    assert_eq!(out, r#"{"t":"pong","ref":"x"}"#);
}

#[test]
fn malformed_frames_are_bad_requests_with_correlation() {
    check_err("", ErrorCode::BadRequest, None);
    check_err("not json", ErrorCode::BadRequest, None);
    check_err("[1,2]", ErrorCode::BadRequest, None);
    check_err(r#"{"cmid":"c1"}"#, ErrorCode::BadRequest, Some("c1"));
    check_err(r#"{"t":"nope","cmid":"c2"}"#, ErrorCode::BadRequest, Some("c2"));
    check_err(r#"{"t":"send","cmid":"c3","to":"bob"}"#, ErrorCode::BadRequest, Some("c3"));
    check_err(r#"{"t":"send","cmid":"c4","body":"x"}"#, ErrorCode::BadRequest, Some("c4"));
    // Events about messages: a target, the body their kind takes, no reply.
    for (i, bad) in [
        r#""kind":"edit","body":"x""#,
        r#""kind":"edit","target":1,"body":"""#,
        r#""kind":"delete","target":1,"body":"x""#,
        r#""kind":"reaction","target":1,"body":"not an emoji""#,
        r#""kind":"reaction","target":1,"body":"👍👍""#,
        r#""kind":"reaction","target":0,"body":"👍""#,
        r#""kind":"reaction","target":1,"reply_to":1,"body":"👍""#,
        r#""target":1,"body":"x""#,
        r#""reply_to":0,"body":"x""#,
    ]
    .into_iter()
    .enumerate()
    {
        check_err(&format!(r#"{{"t":"send","cmid":"e{i}","to":"b",{bad}}}"#), ErrorCode::BadRequest, Some(&format!("e{i}")));
    }
    for good in [
        r#""kind":"edit","target":1,"body":"x""#,
        r#""kind":"delete","target":1,"body":"""#,
        r#""kind":"reaction","target":1,"body":"👍🏽""#,
        r#""kind":"reaction","target":1,"body":"""#,
        r#""reply_to":3,"body":"x""#,
    ] {
        let text = format!(r#"{{"t":"send","cmid":"g","to":"b",{good}}}"#);
        decode_text(&text, &limits()).expect(&text);
    }
    check_err(r#"{"t":"send","cmid":"c5","to":"b","conv":"d:a:b","body":"x"}"#, ErrorCode::BadRequest, Some("c5"));
    check_err(r#"{"t":"send","cmid":"c6","to":"bad user","body":"x"}"#, ErrorCode::BadRequest, Some("c6"));
    check_err(r#"{"t":"send","cmid":"c7","conv":"x:1","body":"x"}"#, ErrorCode::BadRequest, Some("c7"));
    check_err(r#"{"t":"send","cmid":"","to":"b","body":"x"}"#, ErrorCode::BadRequest, Some(""));
    check_err(r#"{"t":"send","cmid":"c8","to":"b","body":"x","kind":"system"}"#, ErrorCode::BadRequest, Some("c8"));
    check_err(r#"{"t":"read","conv":"d:a:b","seq":-1}"#, ErrorCode::BadRequest, None);
    check_err(r#"{"t":"read","conv":"d:a:b","seq":0}"#, ErrorCode::BadRequest, None);
    check_err(r#"{"t":"history","conv":"d:a:b","limit":201}"#, ErrorCode::BadRequest, None);
    let e = decode_text(r#"{"t":"history","conv":"nope","ref":"r9"}"#, &limits()).unwrap_err();
    assert_eq!(e.r#ref, Some(Ref::Str("r9".into())));
    let e = decode_text(r#"{"t":"unknown","ref":"r1"}"#, &limits()).unwrap_err();
    assert!(e.msg.contains("unknown frame type"), "{e}");
    assert_eq!(e.r#ref, Some(Ref::Str("r1".into())));
}

#[test]
fn oversized_body_is_too_large() {
    let body = "x".repeat(BODY_BYTES_MAX_DEFAULT + 1);
    let text = format!(r#"{{"t":"send","cmid":"big","to":"b","body":"{body}"}}"#);
    check_err(&text, ErrorCode::TooLarge, Some("big"));
    let ok = format!(r#"{{"t":"send","cmid":"ok","to":"b","body":"{}"}}"#, &body[1..]);
    decode_text(&ok, &limits()).unwrap();
}

#[test]
fn group_of_501_is_group_full() {
    let users: Vec<String> = (0..501).map(|i| format!("\"u{i}\"")).collect();
    let text = format!(r#"{{"t":"group_create","name":"n","members":[{}]}}"#, users.join(","));
    check_err(&text, ErrorCode::GroupFull, None);
}

#[test]
fn ids_are_strings_in_json_and_numbers_in_binary() {
    let rec = MsgRecord {
        conv: "d:a:b".into(),
        id: u64::MAX - 1,
        seq: 1,
        from: "a".into(),
        cmid: "c".into(),
        body: "hi".into(),
        kind: MsgKind::Text,
        ts: 5,
        ..Default::default()
    };
    let text = encode_text(&ServerFrame::Msg(rec.clone()));
    assert!(text.contains(&format!(r#""id":"{}""#, u64::MAX - 1)), "{text}");
    assert!(text.starts_with(r#"{"t":"msg""#), "{text}");
    assert_eq!(decode_server_text(&text).unwrap(), ServerFrame::Msg(rec.clone()));
    let bin = encode_binary(&ServerFrame::Msg(rec.clone()));
    assert_eq!(decode_server_binary(&bin).unwrap(), ServerFrame::Msg(rec.clone()));
    // Messages inside sync batches carry no `t`.
    let text = encode_text(&ServerFrame::Sync { conv: "d:a:b".into(), messages: vec![rec], more: false });
    assert_eq!(text.matches(r#""t""#).count(), 1, "{text}");
}

#[test]
fn error_frames_serialize_with_their_code() {
    let e = FrameError::new(ErrorCode::Forbidden, "not a member").with_cmid(Some("c".into()));
    assert_eq!(encode_text(&e.into()), r#"{"t":"error","code":"forbidden","msg":"not a member","cmid":"c"}"#);
}

#[test]
fn direct_ids() {
    assert_eq!(direct_conv_id("bob", "alice"), "d:alice:bob");
    assert_eq!(direct_conv_id("alice", "bob"), "d:alice:bob");
    assert_eq!(direct_members("d:alice:bob"), Some(("alice", "bob")));
    assert_eq!(direct_members("d:bob:alice"), None, "not in byte order");
    // User ids may hold `:`, so two pairs can share one direct id: the contract's id scheme is
    // ambiguous there. `direct_members` gives the leftmost split; the engine treats the members
    // stored when the conversation was created as the truth and refuses the colliding pair.
    assert_eq!(direct_conv_id("a:x", "a:y"), direct_conv_id("a", "x:a:y"));
    assert_eq!(direct_members(&direct_conv_id("a:x", "a:y")), Some(("a", "x:a:y")));
    assert_eq!(direct_members("g:1"), None);
    assert_eq!(direct_members("d:a"), None);
    assert!(valid_user_id(&"u".repeat(64)));
    assert!(!valid_user_id(&"u".repeat(65)));
    assert!(!valid_user_id(""));
    assert!(!valid_user_id("a b"));
}

#[test]
fn truncated_and_corrupted_binary_frames_are_errors() {
    let f = ClientFrame::Send {
        cmid: "c".into(),
        to: Some("b".into()),
        conv: None,
        body: "hello".into(),
        kind: MsgKind::Text,
        target: None,
        reply_to: None,
        media: None,
    };
    let bin = encode_client_binary(&f);
    for cut in 0..bin.len() {
        assert!(decode_binary(&bin[..cut], &limits()).is_err(), "prefix of {cut} bytes decoded");
    }
    for i in 0..bin.len() {
        let mut bad = bin.clone();
        bad[i] ^= 0xff;
        // Corruption is either caught by validation or yields some other valid frame; never a panic.
        let _ = decode_binary(&bad, &limits());
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_binary(&bytes, &limits());
        if let Ok(s) = std::str::from_utf8(&bytes) {
            let _ = decode_text(s, &limits());
        }
    }

    #[test]
    fn arbitrary_json_objects_never_panic(t in "[a-z_]{0,12}", cmid in ".{0,80}", seq in any::<i64>()) {
        let text = serde_json::json!({"t": t, "cmid": cmid, "seq": seq, "conv": "d:a:b", "body": "x", "to": "b"}).to_string();
        let _ = decode_text(&text, &limits());
    }
}

#[test]
fn refs_over_64_bytes_are_refused_and_not_echoed() {
    let ok = format!(r#"{{"t":"ping","ref":"{}"}}"#, "r".repeat(REF_BYTES_MAX));
    decode_text(&ok, &limits()).unwrap();
    let long = "r".repeat(9_970);
    let e = decode_text(&format!(r#"{{"t":"ping","ref":"{long}"}}"#), &limits()).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert_eq!(e.r#ref, None, "the oversized ref is not sent back");
    let e = decode_text(&format!(r#"{{"t":"history","conv":"d:a:b","ref":"{long}"}}"#), &limits()).unwrap_err();
    assert_eq!((e.code, e.r#ref), (ErrorCode::BadRequest, None));
}

#[test]
fn limits_answer_their_documented_codes() {
    // presence_sub past its bound: rate_limited, as the per-connection subscription bound.
    let users: Vec<String> = (0..PRESENCE_USERS_PER_FRAME_MAX + 1).map(|i| format!("\"u{i}\"")).collect();
    check_err(&format!(r#"{{"t":"presence_sub","users":[{}]}}"#, users.join(",")), ErrorCode::RateLimited, None);
    let users: Vec<String> = (0..600).map(|i| format!("\"u{i}\"")).collect();
    decode_text(&format!(r#"{{"t":"presence_sub","users":[{}]}}"#, users.join(",")), &limits()).expect("600 users fit one frame");
    // sync naming more conversations than allowed: bad_request (a limit out of range).
    let cursors: Vec<String> = (0..SYNC_CURSORS_MAX + 1).map(|i| format!("\"g:{i}\":0")).collect();
    check_err(&format!(r#"{{"t":"sync","cursors":{{{}}}}}"#, cursors.join(",")), ErrorCode::BadRequest, None);
}

#[test]
fn malformed_conversation_ids_are_bad_requests() {
    for conv in ["g:abc", "g:", "g:-1", "g:99999999999999999999999", "d:bob:alice", "d:alice", "x:1", "d:b:a:"] {
        check_err(&format!(r#"{{"t":"history","conv":"{conv}"}}"#), ErrorCode::BadRequest, None);
        assert!(!valid_conv_id(conv), "{conv}");
    }
    for conv in ["g:1", "g:7349285123456789", "d:alice:bob", "d:a:x:a:y"] {
        assert!(valid_conv_id(conv), "{conv}");
    }
}

#[test]
fn every_frame_type_missing_a_field_is_malformed_not_unknown() {
    // Every type the enum knows (as serde lists them), sent with no fields: where fields are
    // required the error names the field, never "unknown frame type" (a hand-kept list of types
    // once lacked two).
    let listed = serde_json::from_str::<ClientFrame>(r#"{"t":"?"}"#).unwrap_err().to_string();
    let types: Vec<&str> = listed.split("expected one of").nth(1).expect(&listed).split('`').skip(1).step_by(2).collect();
    assert!(types.contains(&"receipt_query") && types.contains(&"group_rename") && types.len() >= 15, "{types:?}");
    for t in types {
        match decode_text(&format!(r#"{{"t":"{t}"}}"#), &limits()) {
            Ok(_) => assert!(["sync", "ping"].contains(&t), "{t} needs no field"),
            Err(e) => assert!(e.msg.contains("missing field"), "{t}: {}", e.msg),
        }
    }
    let e = decode_text(r#"{"t":"no_such_type"}"#, &limits()).unwrap_err();
    assert_eq!(e.msg, "unknown frame type `no_such_type`");
}

/// Lengths of cmids and group names are counted in characters, as the contract words them and
/// as the OpenAPI document's `maxLength` counts: 64 four-byte characters are one cmid.
#[test]
fn cmid_and_group_name_lengths_are_characters() {
    let wide = "😀".repeat(64);
    let ok = format!(r#"{{"t":"send","cmid":"{wide}","to":"bob","body":"x"}}"#);
    assert!(decode_text(&ok, &limits()).is_ok(), "64 characters (256 bytes) is a valid cmid");
    let long = format!(r#"{{"t":"send","cmid":"{wide}a","to":"bob","body":"x"}}"#);
    assert_eq!(decode_text(&long, &limits()).unwrap_err().code, ErrorCode::BadRequest);
    let name = "é".repeat(128);
    let ok = format!(r#"{{"t":"group_create","name":"{name}","members":["a"]}}"#);
    assert!(decode_text(&ok, &limits()).is_ok(), "128 characters (256 bytes) is a valid name");
    let long = format!(r#"{{"t":"group_create","name":"{name}é","members":["a"]}}"#);
    assert_eq!(decode_text(&long, &limits()).unwrap_err().code, ErrorCode::BadRequest);
}

#[test]
fn adding_or_removing_nobody_is_refused() {
    check_err(r#"{"t":"group_add","conv":"g:1","users":[]}"#, ErrorCode::BadRequest, None);
    check_err(r#"{"t":"group_remove","conv":"g:1","users":[]}"#, ErrorCode::BadRequest, None);
}
