//! What the fuzz targets check (`fuzz/fuzz_targets/`), as plain functions so that the committed
//! corpora also run as ordinary tests on the stable toolchain (`codec/tests/fuzz_corpus.rs`).
//! Each panics exactly when an invariant breaks.

use crate::*;

/// A text frame from a client: decoding never panics, an error always says why, and a frame that
/// decodes survives a round trip through its own encoding unchanged.
pub fn json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match decode_text(text, &Limits::default()) {
        Ok(frame) => {
            let again = decode_text(&encode_client_text(&frame), &Limits::default());
            assert_eq!(again.as_ref(), Ok(&frame), "a decoded frame must survive its own encoding: {text:?}");
        }
        Err(e) => assert!(!e.msg.is_empty(), "an error says why: {text:?}"),
    }
}

/// A binary (rkyv) frame from a client: validation rejects what is not a well-formed archive
/// (never undefined behaviour or a panic), and what decodes survives a round trip.
pub fn binary(data: &[u8]) {
    match decode_binary(data, &Limits::default()) {
        Ok(frame) => {
            let again = decode_binary(&encode_client_binary(&frame), &Limits::default());
            assert_eq!(again.as_ref(), Ok(&frame), "a decoded binary frame must survive its own encoding");
            // The same frame as JSON means the same thing.
            let text = decode_text(&encode_client_text(&frame), &Limits::default());
            assert_eq!(text.as_ref(), Ok(&frame), "binary and text encodings of one frame must agree");
        }
        Err(e) => assert!(!e.msg.is_empty()),
    }
}

/// The stable toolchain's short fuzz run (what `cargo test` can do without libFuzzer): every
/// file of `fuzz/corpus/<target>` through `check`, then `rounds` mutations of them (bytes
/// flipped, cut, spliced, inserted), from a fixed seed so a failure replays. Returns how many
/// inputs ran. The inputs that fail are printed by the panic's message.
pub fn replay_corpus(target: &str, rounds: usize, check: impl Fn(&[u8])) -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.expect("corpus entry").path()).expect("corpus file"))
        .collect();
    corpus.sort();
    assert!(!corpus.is_empty(), "{}: empty corpus", dir.display());
    for input in &corpus {
        check(input);
    }
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n.max(1) as u64) as usize
    };
    for _ in 0..rounds {
        let mut input = corpus[next(corpus.len())].clone();
        for _ in 0..=next(4) {
            let len = input.len();
            match next(5) {
                0 if len > 0 => {
                    let at = next(len);
                    input[at] ^= 1 << next(8);
                }
                1 if len > 0 => input.truncate(next(len)),
                2 => {
                    let other = &corpus[next(corpus.len())];
                    let from = next(other.len());
                    input.extend_from_slice(&other[from..]);
                }
                3 => {
                    let at = next(len + 1);
                    let byte = [0u8, 0x7f, 0x80, 0xff, b'"', b'{', b'}'][next(7)];
                    input.insert(at, byte);
                }
                _ if len > 0 => {
                    let at = next(len);
                    input[at] = next(256) as u8;
                }
                _ => {}
            }
        }
        check(&input);
    }
    corpus.len() + rounds
}
