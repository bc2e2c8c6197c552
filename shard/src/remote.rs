//! What crosses between nodes in cluster mode, and where it lands on the node that receives it.
//!
//! A node's owner shard forwards an op for a conversation another node owns
//! ([`RemoteMsg::Op`]); that node's owner shard answers the connection on the first node
//! ([`RemoteMsg::Reply`]) and fans out what it stored to every node that holds a recipient
//! ([`RemoteMsg::Fanout`], one per destination node, whatever the member count). The cluster link
//! (`engine/cluster/`) carries them over Redis pub/sub in batches, one channel per node, so
//! what one node sends another arrives in the order it was sent.

use crate::ops::{ConnRef, Op, RemoteOp};
use crate::payload::{Class, Payload};
use crate::peer::PeerMsg;
use crate::route::{home_shard, owner_shard, ShardId};
use shardchat_codec::{ErrorCode, FrameError, ServerFrame};
use std::collections::BTreeMap;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum RemoteMsg {
    /// To the conversation's owner node: an op for its owner shard to sequence or answer.
    Op(RemoteOp),
    /// To the node of `to`: the answer to one connection's request (an ack or an error).
    Reply { to: ConnRef, frame: ServerFrame },
    /// To a node holding connections of some of `users`: a frame for all of them there.
    Fanout { users: Vec<String>, frame: ServerFrame, except: Option<ConnRef>, msg: Option<(String, u64)>, class: Class },
    /// To the nodes watching `user`: its first connection on `node` arrived (`here`), or its
    /// last one there left at `at_ms`.
    Presence { user: String, node: crate::route::NodeId, here: bool, at_ms: u64 },
}

impl RemoteMsg {
    /// The shards of the receiving node that get it, as the messages they handle.
    pub fn into_local(self, shards: usize) -> Vec<(ShardId, PeerMsg)> {
        match self {
            RemoteMsg::Op(op) => {
                let op = Op::from(op);
                let owner = owner_shard(op.conv().expect("every remote op is about a conversation"), shards);
                vec![(owner, PeerMsg::Forwarded(op))]
            }
            RemoteMsg::Reply { to, frame } => vec![(to.shard, PeerMsg::Reply { conn: to.conn, payload: frame.into() })],
            RemoteMsg::Fanout { users, frame, except, msg, class } => {
                let payload = Payload::new(frame);
                by_home(users, shards)
                    .map(|(shard, users)| (shard, PeerMsg::Fanout { users, payload: payload.clone(), except, msg: msg.clone(), class }))
                    .collect()
            }
            RemoteMsg::Presence { user, node, here, at_ms } => {
                vec![(home_shard(&user, shards), PeerMsg::PresenceElsewhere { user, node, here, at_ms })]
            }
        }
    }

    /// The answer owed to the requester when this could not reach its node (Redis down, or no
    /// node listening): `unavailable`, carrying the send's cmid or the request's ref so the
    /// client retries exactly that request. None for what answers no one.
    pub fn unreachable(&self, why: &str) -> Option<(ConnRef, ServerFrame)> {
        match self {
            RemoteMsg::Op(op) => Op::from(op.clone()).refusal(FrameError::new(ErrorCode::Unavailable, why)),
            _ => None,
        }
    }
}

fn by_home(users: Vec<String>, shards: usize) -> impl Iterator<Item = (ShardId, Vec<String>)> {
    let mut by: BTreeMap<ShardId, Vec<String>> = BTreeMap::new();
    for u in users {
        by.entry(home_shard(&u, shards)).or_default().push(u);
    }
    by.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{SendOp, Target};
    use shardchat_codec::{MsgKind, MsgRecord};

    fn send() -> RemoteOp {
        let from = ConnRef { node: 2, shard: 1, conn: crate::ops::ConnId(9) };
        RemoteOp::Send(SendOp::new(from, "a".into(), "c1".into(), Target::Conv("g:7".into()), "hi".into(), MsgKind::Text))
    }

    #[test]
    fn messages_survive_the_wire_and_land_on_the_right_shards() {
        let shards = 4;
        let wire = serde_json::to_vec(&vec![send()].into_iter().map(RemoteMsg::Op).collect::<Vec<_>>()).unwrap();
        let back: Vec<RemoteMsg> = serde_json::from_slice(&wire).unwrap();
        let local = back.into_iter().next().unwrap().into_local(shards);
        assert_eq!(local.len(), 1);
        assert_eq!(local[0].0, owner_shard("g:7", shards));
        assert!(matches!(&local[0].1, PeerMsg::Forwarded(Op::Send(s)) if s.cmid == "c1" && s.reply_to.node == 2));

        let users: Vec<String> = (0..40).map(|i| format!("u{i}")).collect();
        let record = MsgRecord {
            conv: "g:7".into(),
            seq: 3,
            id: 1,
            from: "a".into(),
            cmid: "c1".into(),
            ts: 5,
            kind: MsgKind::Text,
            body: "hi".into(),
            ..Default::default()
        };
        let m = RemoteMsg::Fanout {
            users: users.clone(),
            frame: ServerFrame::Msg(record),
            except: None,
            msg: Some(("g:7".into(), 3)),
            class: Class::Durable,
        };
        let m: RemoteMsg = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        let local = m.into_local(shards);
        assert_eq!(local.len(), shards, "one message per home shard");
        let mut seen = Vec::new();
        let mut first: Option<Payload> = None;
        for (shard, msg) in local {
            let PeerMsg::Fanout { users, payload, .. } = msg else { panic!("{msg:?}") };
            assert!(users.iter().all(|u| home_shard(u, shards) == shard));
            // One decode on arrival, shared by every shard's copy.
            assert!(first.get_or_insert_with(|| payload.clone()).ptr_eq(&payload));
            seen.extend(users);
        }
        seen.sort();
        let mut want = users;
        want.sort();
        assert_eq!(seen, want);
    }

    #[test]
    fn an_unreachable_op_is_answered_unavailable_with_its_cmid() {
        let (to, frame) = RemoteMsg::Op(send()).unreachable("no route").unwrap();
        assert_eq!(to, ConnRef { node: 2, shard: 1, conn: crate::ops::ConnId(9) });
        let text = shardchat_codec::encode_text(&frame);
        assert!(text.contains("\"unavailable\"") && text.contains("\"c1\""), "{text}");
        let reply = RemoteMsg::Reply { to, frame };
        assert!(reply.unreachable("x").is_none());
    }
}
