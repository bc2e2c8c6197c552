//! Shard behaviour, driven through [`crate::sim`]: several shards and clients in one thread, the
//! interleaving chosen from a seed, the store in memory and run inline.

use crate::ops::ConnId;
use crate::sim::*;
use crate::*;
use shardchat_codec::*;
use shardchat_storage::MessageStore;
use std::collections::HashMap;
pub(super) fn send(to: &str, cmid: &str, body: &str) -> String {
    format!(r#"{{"t":"send","cmid":"{cmid}","to":"{to}","body":"{body}"}}"#)
}

/// The cmids the acks among `frames` name, in order.
pub(super) fn acked(frames: &[ServerFrame]) -> Vec<String> {
    frames.iter().filter_map(|f| if let ServerFrame::Ack { cmid, .. } = f { Some(cmid.clone()) } else { None }).collect()
}

pub(super) fn err_code(frames: &[ServerFrame]) -> Vec<ErrorCode> {
    frames.iter().filter_map(|f| if let ServerFrame::Error { code, .. } = f { Some(*code) } else { None }).collect()
}

mod direct;
mod groups;
mod limits;
mod presence;
mod properties;
mod revisions;

pub(super) fn group_of(frames: &[ServerFrame]) -> Option<(String, Vec<(String, Role)>)> {
    frames.iter().find_map(|f| match f {
        ServerFrame::Group { conv, members, .. } => Some((conv.clone(), members.iter().map(|m| (m.user.clone(), m.role)).collect())),
        _ => None,
    })
}

pub(super) fn create_group(sim: &mut Sim, admin: Dev, members: &[&str]) -> String {
    let list: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
    sim.send(admin, &format!(r#"{{"t":"group_create","name":"team","members":[{}],"ref":"c"}}"#, list.join(",")));
    let frames = sim.take(admin);
    let (conv, _) = group_of(&frames).unwrap_or_else(|| panic!("no group frame: {frames:?}"));
    conv
}

pub(super) fn presence(frames: &[ServerFrame]) -> Vec<(String, String, Option<u64>)> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Presence { user, status, last_seen } => Some((user.clone(), status.to_string(), *last_seen)),
            _ => None,
        })
        .collect()
}

/// Frames the bridge got for one of its sessions, in order.
pub(super) fn bridge_frames(sim: &mut Sim, session: ConnId) -> Vec<ServerFrame> {
    let mut out = Vec::new();
    for m in std::mem::take(&mut sim.bridge) {
        match m {
            PeerMsg::Deliver { conns, payload, .. } if conns.contains(&session) => out.push(payload.frame().clone()),
            PeerMsg::Detach { remote } if remote.conn == session => {
                out.push(ServerFrame::Pong { r#ref: Some(Ref::Str("detached".into())) })
            }
            _ => {}
        }
    }
    out
}
