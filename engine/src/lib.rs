//! The shardchat engine: configuration, authentication, the upgrade request head, the glommio
//! runtime that runs the shards (`runtime/`, the only module that knows glommio) and the control
//! plane (`control/`). Beneath them, crates of their own: `engine/bridge` (what the planes share
//! to reach the shards), `engine/cluster` (the Redis link) over `engine/link` (its decisions),
//! `engine/wire` (the upgrade head and WebSocket framing).

pub mod auth;
pub mod config;
pub mod control;
pub use shardchat_wire::http;
pub mod metrics;
pub mod runtime;
pub mod search;
pub use shardchat_bridge::health;
pub use shardchat_cluster as cluster;
pub use shardchat_wire::ws;
