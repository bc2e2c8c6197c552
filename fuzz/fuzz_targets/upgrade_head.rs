#![no_main]
//! See `shardchat_wire::fuzzing::upgrade_head` for what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| shardchat_wire::fuzzing::upgrade_head(data));
