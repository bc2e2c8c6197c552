//! shardchat's benchmarks live in `benches/` (criterion): run `cargo bench -p shardchat-benches`.
//! Each states what it measures and the target; the load generator (`loadgen/`) measures the
//! whole engine.

use shardchat_codec::{MsgKind, MsgRecord, ServerFrame};

/// The `msg` frame the benchmarks encode and fan out: a 64-byte text message in `conv`.
pub fn msg_frame(conv: &str) -> ServerFrame {
    ServerFrame::Msg(MsgRecord {
        conv: conv.into(),
        id: 123_456_789_012_345,
        seq: 42,
        from: "alice".into(),
        cmid: "c-0001".into(),
        body: "x".repeat(64),
        kind: MsgKind::Text,
        ts: 1_800_000_000_000,
        ..Default::default()
    })
}
