//! Routing between nodes: what the shards hand the link for other nodes, in their order, made
//! into one message list per destination node (one `PUBLISH` each, whatever the member count),
//! and the answers owed when a destination cannot be reached.

use shardchat_codec::ServerFrame;
use shardchat_shard::{Class, ConnRef, NodeId, PeerMsg, RemoteMsg, RemoteOp};
use std::collections::{BTreeMap, HashMap, HashSet};

/// What a shard sends to other nodes.
#[derive(Clone, Debug)]
pub enum Outgoing {
    /// For one node: an op for a conversation it owns, or an answer to a connection there.
    Remote(NodeId, RemoteMsg),
    /// For `users` wherever else they are connected (the directory says where).
    Fanout { users: Vec<String>, frame: ServerFrame, except: Option<ConnRef>, msg: Option<(String, u64)>, class: Class },
}

impl Outgoing {
    /// Bytes this message holds while it waits for the link, roughly: its body (or the frame's,
    /// for a fan-out) and its users, plus [`OUTGOING_OVERHEAD_BYTES`] for the rest. What the
    /// link's inbox bounds ([`crate::inbox::OUT_BYTES_MAX`]).
    pub fn approx_bytes(&self) -> usize {
        let body = match self {
            Outgoing::Remote(_, RemoteMsg::Op(RemoteOp::Send(s))) => s.body.len(),
            Outgoing::Remote(_, RemoteMsg::Reply { frame, .. }) => frame_body_bytes(frame),
            Outgoing::Remote(_, RemoteMsg::Fanout { users, frame, .. }) | Outgoing::Fanout { users, frame, .. } => {
                frame_body_bytes(frame) + users.iter().map(String::len).sum::<usize>()
            }
            Outgoing::Remote(..) => 0,
        };
        OUTGOING_OVERHEAD_BYTES + body
    }
}

/// What [`Outgoing::approx_bytes`] adds to a message's body for its ids, names and envelope.
pub const OUTGOING_OVERHEAD_BYTES: usize = 256;

fn frame_body_bytes(frame: &ServerFrame) -> usize {
    match frame {
        ServerFrame::Msg(r) => r.body.len(),
        _ => 0,
    }
}

/// The users of every fan-out in `out`, each once, in order: whose nodes the directory must
/// tell before [`per_node`] can place them.
pub fn fanout_users(out: &[Outgoing]) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut users = Vec::new();
    for m in out {
        if let Outgoing::Fanout { users: us, .. } = m {
            users.extend(us.iter().filter(|u| seen.insert(u.as_str())).cloned());
        }
    }
    users
}

/// `out` as one list per destination node, in the order the shards produced it. `nodes_of`
/// gives the nodes holding each fanned-out user (a user it lacks is on no other node); `me` is
/// never a destination.
pub fn per_node(out: Vec<Outgoing>, nodes_of: &HashMap<String, Vec<usize>>, me: usize) -> BTreeMap<usize, Vec<RemoteMsg>> {
    let mut per_node: BTreeMap<usize, Vec<RemoteMsg>> = BTreeMap::new();
    for m in out {
        match m {
            Outgoing::Remote(node, msg) => {
                assert_ne!(usize::from(node), me, "a node never sends itself a remote message");
                per_node.entry(usize::from(node)).or_default().push(msg);
            }
            Outgoing::Fanout { users, frame, except, msg, class } => {
                let mut by_node: BTreeMap<usize, Vec<String>> = BTreeMap::new();
                for u in users {
                    let elsewhere = nodes_of.get(&u).map(Vec::as_slice).unwrap_or_default();
                    for &n in elsewhere.iter().filter(|&&n| n != me) {
                        by_node.entry(n).or_default().push(u.clone());
                    }
                }
                for (n, users) in by_node {
                    let m = RemoteMsg::Fanout { users, frame: frame.clone(), except, msg: msg.clone(), class };
                    per_node.entry(n).or_default().push(m);
                }
            }
        }
    }
    per_node
}

/// What to hand this node's shards for messages that could not reach their node (Redis down, or
/// nobody subscribed to its channel): every op among them is answered `unavailable` with its
/// cmid or ref, so its client retries exactly that; the rest (answers, fan-outs of stored
/// messages, presence) is dropped, as their receivers sync or ask again.
pub fn unreachable(failed: &[RemoteMsg], shards: usize) -> Vec<(usize, PeerMsg)> {
    failed
        .iter()
        .filter_map(|m| m.unreachable("the node that owns this conversation is unreachable; retry shortly"))
        .flat_map(|(to, frame)| RemoteMsg::Reply { to, frame }.into_local(shards))
        .collect()
}

/// Presence changes behind directory changes, for the nodes watching those users: `watchers`
/// holds, for each change, the nodes watching its user.
pub fn presence(changes: Vec<(String, bool)>, watchers: Vec<Vec<usize>>, me: usize, at_ms: u64) -> Vec<Outgoing> {
    let mut out = Vec::new();
    for ((user, here), nodes) in changes.into_iter().zip(watchers) {
        for n in nodes.into_iter().filter(|&n| n != me) {
            let msg = RemoteMsg::Presence { user: user.clone(), node: me as NodeId, here, at_ms };
            out.push(Outgoing::Remote(n as NodeId, msg));
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shardchat_codec::{ErrorCode, MsgKind, MsgRecord};
    use shardchat_shard::ops::{SendOp, Target};

    /// A stored message of `g:7` with `body`, as a fan-out carries it.
    fn msg_frame(body: &str) -> ServerFrame {
        ServerFrame::Msg(MsgRecord {
            conv: "g:7".into(),
            id: 1,
            seq: 1,
            from: "a".into(),
            cmid: "c".into(),
            body: body.into(),
            kind: MsgKind::Text,
            ts: 0,
            ..Default::default()
        })
    }

    /// A fan-out of a message with `body` to two users.
    pub(crate) fn fanout(body: String) -> Outgoing {
        let frame = msg_frame(&body);
        Outgoing::Fanout { users: vec!["u1".into(), "u2".into()], frame, except: None, msg: Some(("g:7".into(), 1)), class: Class::Durable }
    }

    /// A send of "hi" to `g:7`, from connection 9 on shard 1 of `node`.
    pub(crate) fn send(node: NodeId) -> RemoteMsg {
        let from = ConnRef { node, shard: 1, conn: shardchat_shard::ops::ConnId(9) };
        RemoteMsg::Op(RemoteOp::Send(SendOp::new(from, "a".into(), "c1".into(), Target::Conv("g:7".into()), "hi".into(), MsgKind::Text)))
    }

    #[test]
    fn a_fanout_goes_once_to_each_other_node_holding_its_users_in_order() {
        let frame = msg_frame("x");
        let users: Vec<String> = ["u1", "u2", "u3", "u4"].map(String::from).to_vec();
        let out = vec![
            Outgoing::Remote(3, send(1)),
            Outgoing::Fanout { users: users.clone(), frame, except: None, msg: Some(("g:7".into(), 1)), class: Class::Durable },
        ];
        assert_eq!(fanout_users(&out), users);
        let nodes_of: HashMap<String, Vec<usize>> =
            [("u1", vec![1, 2]), ("u2", vec![2]), ("u3", vec![1]), ("u4", vec![3])].map(|(u, n)| (u.to_string(), n)).into();
        let per = per_node(out, &nodes_of, 1);
        assert_eq!(per.keys().copied().collect::<Vec<_>>(), vec![2, 3], "never to this node (1)");
        assert!(matches!(&per[&2][..], [RemoteMsg::Fanout { users, .. }] if users == &["u1", "u2"]));
        assert!(matches!(&per[&3][..], [RemoteMsg::Op(_), RemoteMsg::Fanout { users, .. }] if users == &["u4"]), "in the shards' order");
    }

    #[test]
    fn an_op_that_cannot_reach_its_node_is_answered_unavailable_with_its_cmid_on_its_shard() {
        let failed = vec![send(1), RemoteMsg::Presence { user: "a".into(), node: 1, here: true, at_ms: 0 }];
        let local = unreachable(&failed, 4);
        assert_eq!(local.len(), 1, "only the op is answered");
        let (shard, PeerMsg::Reply { conn, payload }) = &local[0] else { panic!("{local:?}") };
        assert_eq!((*shard, *conn), (1, shardchat_shard::ops::ConnId(9)));
        assert!(matches!(payload.frame(), ServerFrame::Error { code: ErrorCode::Unavailable, cmid: Some(c), .. } if c == "c1"));
    }

    #[test]
    fn presence_goes_to_the_watching_nodes_but_this_one() {
        let out = presence(vec![("a".into(), true), ("b".into(), false)], vec![vec![1, 2], vec![]], 1, 5);
        assert!(matches!(&out[..], [Outgoing::Remote(2, RemoteMsg::Presence { user, here: true, .. })] if user == "a"));
    }
}
