//! The fuzz targets' corpora (`fuzz/corpus/`) and a short, seeded mutation run over them, on the
//! stable toolchain: `cargo test` checks what `cargo fuzz run ws_stream` / `upgrade_head` check.

use shardchat_codec::fuzzing::replay_corpus;
use shardchat_wire::fuzzing::{upgrade_head, ws_stream};

#[test]
fn websocket_streams_from_the_corpus_and_their_mutations_read_the_same_however_cut() {
    assert!(replay_corpus("ws_stream", 20_000, ws_stream) > 20_000);
}

#[test]
fn upgrade_heads_from_the_corpus_and_their_mutations_never_panic() {
    assert!(replay_corpus("upgrade_head", 20_000, upgrade_head) > 20_000);
}
