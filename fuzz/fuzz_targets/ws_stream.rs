#![no_main]
//! See `shardchat_wire::fuzzing::ws_stream` for what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| shardchat_wire::fuzzing::ws_stream(data));
