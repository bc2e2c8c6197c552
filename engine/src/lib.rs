//! The shardchat engine binary's library: the glommio runtime that runs the shards
//! (`runtime/`, the only code that knows glommio), which starts everything else. The rest are
//! crates of their own beneath it, so none can reach into the runtime: `engine/config` (the
//! settings), `engine/auth` (client identities), `engine/control` (the control plane: REST,
//! long-poll, push, metrics, the browser client), `engine/search` (the full-text index),
//! `engine/bridge` (what the planes share to reach the shards: the bridge's handle, health,
//! metrics, the clock), `engine/cluster` (the Redis link) over `engine/link` (its decisions),
//! `engine/wire` (the upgrade head and WebSocket framing). Re-exported here under their old
//! module names, so `shardchat::config::Config` and the like keep working.

pub use shardchat_auth as auth;
pub use shardchat_bridge::health;
pub use shardchat_bridge::metrics;
pub use shardchat_cluster as cluster;
pub use shardchat_config as config;
pub use shardchat_control as control;
pub use shardchat_search as search;
pub use shardchat_wire::http;
pub use shardchat_wire::ws;
pub mod runtime;
