//! Group rules: who may create, add, remove, rename and leave, the member bound, the system
//! message that records each change, and admin handed to the oldest member when the last admin
//! goes. Pure: a change to the conversation's state and to the write batch, or the refusal.

use crate::commit::OpOutcome;
use crate::conv::{check_member, ConvState};
use crate::ops::{GroupChange, GroupOp};
use shardchat_codec::{ErrorCode, FrameError, MsgKind, MsgRecord, Role, GROUP_MEMBERS_MAX};
use shardchat_storage::{Joined, Left, Membership, Named, WriteBatch};

/// Applies a group change to `st` and `batch`: checks roles and limits, records the system
/// message, hands admin over when the last admin goes.
pub(crate) fn group_change(st: &mut ConvState, g: &GroupOp, batch: &mut WriteBatch) -> Result<OpOutcome, FrameError> {
    let is_admin = |st: &ConvState, u: &str| st.members.iter().any(|m| m.user == u && m.role == Role::Admin);
    let mut removed: Vec<String> = Vec::new();
    let (event, users): (GroupEvent, Vec<String>) = match &g.change {
        GroupChange::Create { name, members } => {
            if !st.members.is_empty() || st.last_seq > 0 {
                return Err(FrameError::bad_request("conversation exists"));
            }
            let mut users = vec![g.user.clone()];
            for u in members {
                if !users.contains(u) {
                    users.push(u.clone());
                }
            }
            if users.len() > GROUP_MEMBERS_MAX {
                return Err(FrameError::new(ErrorCode::GroupFull, format!("a group has at most {GROUP_MEMBERS_MAX} members")));
            }
            st.name = name.clone();
            batch.names.push(Named { conv: g.conv.clone(), name: name.clone() });
            (GroupEvent::Create, users)
        }
        GroupChange::Add { users } => {
            check_group(st, &g.conv, &g.user)?;
            if !is_admin(st, &g.user) {
                return Err(FrameError::new(ErrorCode::Forbidden, "only admins add members"));
            }
            let mut new: Vec<String> = Vec::new();
            for u in users {
                if !st.is_member(u) && !new.contains(u) {
                    new.push(u.clone());
                }
            }
            if st.members.len() + new.len() > GROUP_MEMBERS_MAX {
                return Err(FrameError::new(ErrorCode::GroupFull, format!("a group has at most {GROUP_MEMBERS_MAX} members")));
            }
            (GroupEvent::Add, new)
        }
        GroupChange::Remove { users } => {
            check_group(st, &g.conv, &g.user)?;
            if !is_admin(st, &g.user) {
                return Err(FrameError::new(ErrorCode::Forbidden, "only admins remove members"));
            }
            let gone: Vec<String> = users.iter().filter(|u| st.is_member(u)).cloned().collect();
            (GroupEvent::Remove, gone)
        }
        GroupChange::Leave => {
            check_group(st, &g.conv, &g.user)?;
            (GroupEvent::Leave, vec![g.user.clone()])
        }
        GroupChange::Rename { name } => {
            check_group(st, &g.conv, &g.user)?;
            if !is_admin(st, &g.user) {
                return Err(FrameError::new(ErrorCode::Forbidden, "only admins rename the group"));
            }
            if *name == st.name {
                (GroupEvent::Rename, Vec::new())
            } else {
                st.name = name.clone();
                batch.names.push(Named { conv: g.conv.clone(), name: name.clone() });
                (GroupEvent::Rename, vec![g.user.clone()])
            }
        }
    };
    if users.is_empty() {
        // Nothing changes (adding members who are in, removing who is not): answer with the state.
        return Ok(OpOutcome::Grouped {
            reply_to: g.reply_to,
            r#ref: g.r#ref.clone(),
            conv: g.conv.clone(),
            name: st.name.clone(),
            members: st.members.clone(),
            notify: Vec::new(),
            system: None,
        });
    }
    st.last_seq += 1;
    let seq = st.last_seq;
    match event {
        GroupEvent::Rename => {}
        GroupEvent::Create | GroupEvent::Add => {
            for (i, u) in users.iter().enumerate() {
                let role = if event == GroupEvent::Create && i == 0 { Role::Admin } else { Role::Member };
                let m = Membership { user: u.clone(), role, joined: seq };
                batch.members.push(Joined { conv: g.conv.clone(), member: m.clone() });
                st.members.push(m);
            }
        }
        GroupEvent::Remove | GroupEvent::Leave => {
            st.members.retain(|m| !users.contains(&m.user));
            for u in &users {
                batch.removed.push(Left { conv: g.conv.clone(), user: u.clone(), seq });
                st.marks.retain(|(mu, _), _| mu != u);
            }
            removed = users.clone();
        }
    }
    // The last admin gone: the oldest member (earliest join, then name) becomes admin.
    let mut handed_to = None;
    if !st.members.is_empty() && !st.members.iter().any(|m| m.role == Role::Admin) {
        let oldest = st.members.iter_mut().min_by(|a, b| (a.joined, &a.user).cmp(&(b.joined, &b.user))).expect("non-empty");
        oldest.role = Role::Admin;
        handed_to = Some(oldest.user.clone());
        batch.members.push(Joined { conv: g.conv.clone(), member: oldest.clone() });
    }
    let body = serde_json_body(event, &g.user, &st.name, &users, handed_to.as_deref());
    let record = MsgRecord {
        conv: g.conv.clone(),
        id: g.id,
        seq,
        from: g.user.clone(),
        cmid: format!("system:{}", g.id),
        body,
        kind: MsgKind::System,
        ts: g.ts,
        ..Default::default()
    };
    batch.messages.push(record.clone());
    Ok(OpOutcome::Grouped {
        reply_to: g.reply_to,
        r#ref: g.r#ref.clone(),
        conv: g.conv.clone(),
        name: st.name.clone(),
        members: st.members.clone(),
        notify: removed,
        system: Some(record),
    })
}

fn check_group(st: &ConvState, conv: &str, user: &str) -> Result<(), FrameError> {
    if !ConvState::is_group(conv) {
        return Err(FrameError::bad_request("not a group"));
    }
    check_member(st, user)
}

/// The body of a system message: a JSON object clients can render, e.g.
/// `{"event":"add","by":"alice","users":["bob"]}` (`admin` names who was handed admin).
fn serde_json_body(event: GroupEvent, by: &str, name: &str, users: &[String], admin: Option<&str>) -> String {
    let mut o = serde_json::json!({ "event": event.name(), "by": by, "users": users });
    if matches!(event, GroupEvent::Create | GroupEvent::Rename) {
        o["name"] = name.into();
    }
    if event == GroupEvent::Rename {
        o["users"] = serde_json::json!([]);
    }
    if let Some(a) = admin {
        o["admin"] = a.into();
    }
    o.to_string()
}

/// What a group's system message records; its `event` field in the message body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GroupEvent {
    Create,
    Add,
    Remove,
    Leave,
    Rename,
}

impl GroupEvent {
    /// The name clients read in the system message's body (`docs/protocol.md`).
    fn name(self) -> &'static str {
        match self {
            GroupEvent::Create => "create",
            GroupEvent::Add => "add",
            GroupEvent::Remove => "remove",
            GroupEvent::Leave => "leave",
            GroupEvent::Rename => "rename",
        }
    }
}
