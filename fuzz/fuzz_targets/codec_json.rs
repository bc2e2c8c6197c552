#![no_main]
//! See `shardchat_codec::fuzzing::json` for what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| shardchat_codec::fuzzing::json(data));
