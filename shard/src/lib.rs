//! The logic of one shard, without sockets, threads or clocks.
//!
//! Every shard plays two roles. As the **home** of a user it holds that user's connections (all
//! devices), relays their requests and writes what is addressed to them. As the **owner** of a
//! conversation it orders the conversation's messages: it assigns `seq` and the Snowflake id,
//! checks membership and dedup, persists (group commit) and only then acks and fans out.
//!
//! [`Shard`] is a state machine: [`Event`]s in, [`Action`]s out, the time passed in with each
//! event. The runtime (`engine/`) does the I/O the actions ask for and feeds back what happened;
//! tests drive several shards in one thread from a seed (see `tests.rs`).

pub mod commit;
pub mod conv;
mod machine;
pub mod ops;
pub mod payload;
pub mod peer;
pub mod rate;
pub mod read;
pub mod remote;
pub mod route;
pub mod snowflake;
pub mod wheel;

pub use commit::{run_commit, CommitJob, CommitOutcome};
pub use machine::owner::HANDOVER_MS;
pub use machine::{Action, Counters, Event, Now, RemoteFanout, Shard, ShardConfig, ACTIONS_KEPT_MAX, ACTION_BYTES_MAX};
pub use ops::{ConnMap, ConnRef, Op, RemoteOp};
pub use payload::{Class, Payload};
pub use peer::PeerMsg;
pub use read::{run_read, ReadJob, ReadOutcome};
pub use remote::RemoteMsg;
pub use route::{home_shard, owner_node, owner_shard, NodeId, ShardId};

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(any(test, feature = "fuzzing"))]
pub mod sim;
#[cfg(test)]
mod tests;
