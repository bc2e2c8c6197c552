//! What shards send each other ([`PeerMsg`]): ops to owners, answers and fan-outs to homes,
//! presence between homes, and what the bridge and the cluster link hand the shards. The only
//! thing that crosses cores; payloads are shared, not copied.

use crate::ops::{ConnId, ConnRef, Op};
use crate::payload::{Class, Payload};
use crate::route::NodeId;

/// Messages between shards: the only thing that crosses cores. Payloads are shared, not copied.
#[derive(Debug)]
pub enum PeerMsg {
    /// Home → owner: something to sequence, check or answer.
    Op(Op),
    /// Owner → home: the answer to one connection's request (an ack or an error).
    Reply {
        conn: ConnId,
        payload: Payload,
    },
    /// Owner → home: a frame for every connection of these users (that live on the target shard).
    /// `msg` names the conversation and seq when the frame is a message (for sync dedup);
    /// `except` skips the connection that sent it.
    Fanout {
        users: Vec<String>,
        payload: Payload,
        except: Option<ConnRef>,
        msg: Option<(String, u64)>,
        class: Class,
    },
    /// A frame for these connections of the target shard.
    Deliver {
        conns: Vec<ConnId>,
        payload: Payload,
        class: Class,
    },
    /// Subscriber's home → target's home: `sub` wants `target`'s presence (now and on change).
    PresenceSub {
        target: String,
        sub: ConnRef,
    },
    PresenceUnsub {
        target: String,
        sub: ConnRef,
    },
    /// Bridge → home: a long-poll session of `user` held by `remote` is a connection here.
    Attach {
        user: String,
        device: String,
        remote: ConnRef,
    },
    /// Bridge → home: a client frame posted to a session.
    RemoteFrame {
        remote: ConnRef,
        frame: shardchat_codec::ClientFrame,
    },
    /// Bridge → home: the session was polled (it is alive).
    RemoteTouch {
        remote: ConnRef,
    },
    /// Bridge → home: the session ended. Home → bridge: the session expired here.
    Detach {
        remote: ConnRef,
    },
    /// Anyone → target's home: the current presence of `target`, once (no subscription).
    PresenceQuery {
        target: String,
        reply_to: ConnRef,
    },
    /// Cluster link → owner shard: an op another node's owner shard forwarded here. Never
    /// forwarded again (two nodes whose views differ for a moment would bounce it): when this
    /// node does not own the conversation either, it is answered `unavailable`.
    Forwarded(Op),
    /// Cluster link → every shard, after each refresh: the live nodes (conversation ownership
    /// follows them) and this node's incarnation (a new one after it was taken for dead).
    View {
        live: Vec<NodeId>,
        incarnation: u64,
    },
    /// Cluster link → home: the other nodes holding `user` now (the answer to a watch).
    PresenceNodes {
        user: String,
        nodes: Vec<NodeId>,
    },
    /// Cluster link → home: `user`'s first connection on `node` arrived (`here`) or its last one
    /// left at `at_ms`.
    PresenceElsewhere {
        user: String,
        node: NodeId,
        here: bool,
        at_ms: u64,
    },
}
