//! The decisions of a cluster node's link to the others, as pure code: what Redis and the store
//! answered goes in, what to write, fence, repair and tell the shards comes out. The I/O around
//! it (Redis commands, store calls, the clock) is `engine/cluster/`; the simulator in this
//! crate's tests runs several nodes of shards with these same decisions over an in-memory model
//! of Redis and the in-memory store.
//!
//! - [`liveness`]: this node's incarnation, rejoining when it was taken for dead, the live and
//!   dead nodes of each refresh, the fences owed before a dead node's conversations move, the
//!   view the shards get, and the one repairer (the lowest live id).
//! - [`directory`]: this node's part of the user → nodes directory: who is here, what is not
//!   yet written, when the whole must be rewritten.
//! - [`inbox`]: what the shards hand the link until its next turn, within named bounds:
//!   directory changes and watches coalesced per user, messages for other nodes refused (given
//!   back to be answered `unavailable`) past a count and a byte bound.
//! - [`routing`]: what the shards send to other nodes, grouped into one message list per
//!   destination node; the `unavailable` answers owed when a node cannot be reached.

pub mod directory;
pub mod inbox;
pub mod liveness;
pub mod routing;
