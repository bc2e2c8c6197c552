#![no_main]
//! See `shardchat_shard::fuzzing::events` for the input's shape and what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shardchat_shard::fuzzing::events(data);
});
