//! The fuzz targets' corpora (`fuzz/corpus/`) and a short, seeded mutation run over them, on the
//! stable toolchain: `cargo test` checks what `cargo fuzz run codec_json` / `codec_binary` check.

use shardchat_codec::fuzzing::{binary, json, replay_corpus};

#[test]
fn json_frames_from_the_corpus_and_their_mutations_keep_the_codec_invariants() {
    assert!(replay_corpus("codec_json", 20_000, json) > 20_000);
}

#[test]
fn binary_frames_from_the_corpus_and_their_mutations_keep_the_codec_invariants() {
    assert!(replay_corpus("codec_binary", 20_000, binary) > 20_000);
}

/// Regenerates the binary seeds from the JSON ones: `cargo test -p shardchat-codec --test
/// fuzz_corpus -- --ignored`.
#[test]
#[ignore]
fn write_binary_seeds() {
    use shardchat_codec::{decode_text, encode_client_binary, Limits};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for e in std::fs::read_dir(root.join("codec_json")).unwrap() {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        if let Ok(frame) = decode_text(&text, &Limits::default()) {
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            std::fs::write(root.join("codec_binary").join(format!("{name}.rkyv")), encode_client_binary(&frame)).unwrap();
        }
    }
}
