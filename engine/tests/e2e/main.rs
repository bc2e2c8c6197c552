//! The engine end to end: the real `shardchat` binary on loopback ports, real clients. One test
//! binary for all of it (sixteen used to link the engine and its dependencies sixteen times);
//! each module is one area, and `cargo test -p shardchat --test e2e cluster::` runs one.

mod common;

mod authz;
mod bad_input;
mod browser;
mod chaos;
mod cluster;
mod crash;
mod groups;
mod js_client;
mod liveness;
mod logs;
mod media;
mod messaging;
mod parking;
mod placement;
mod poll;
mod push;
mod rest;
mod revisions;
mod scylla;
mod search;
mod wire;
