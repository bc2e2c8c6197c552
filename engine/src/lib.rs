//! The shardchat engine: configuration, authentication, the upgrade request head, and the
//! glommio runtime that runs the shards (`runtime/`, the only module that knows glommio).

pub mod auth;
pub mod cluster;
pub mod config;
pub mod control;
pub mod health;
pub use shardchat_wire::http;
pub mod metrics;
pub mod runtime;
pub mod search;
pub use shardchat_wire::ws;
