//! Events about earlier messages: `edit`, `delete` and `reaction`, and what a reply may name. Pure
//! functions over the target's record; [`sequence`](super::sequence) decides which record that is
//! (one sequenced earlier in the same batch, or one [`prefetch`](super::prefetch) read) and writes
//! the changed record back.
//!
//! The rules (docs/protocol.md, "Edits, deletes, replies, reactions"):
//! - only a message proper (`text`, `image`, `file`) is a target; a deleted one is not;
//! - only its author edits it, at most [`EDITS_PER_MESSAGE_MAX`] times;
//! - its author deletes it, and so does any admin of its group; the body goes, and with it the
//!   bodies of its edits and its reactions;
//! - a reaction is one emoji per user per message: a new one replaces the user's last, an empty
//!   one takes it back.

use shardchat_codec::{reaction_emoji, ErrorCode, FrameError, MsgKind, MsgRecord, Reaction};

/// Edits one message may have. Each edit's seq is kept in the message's record so that a delete
/// can erase the edited bodies too; the bound keeps that list, and the delete's work, small.
pub const EDITS_PER_MESSAGE_MAX: usize = 100;

/// What an event did to its target, beyond the target's own record.
#[derive(Debug, PartialEq, Eq)]
pub enum Revised {
    /// The target changed; nothing else did.
    Target,
    /// The target was deleted: these edit events of it lose their bodies too.
    Deleted { edits: Vec<u64> },
}

/// Applies event `kind` by `user` (a group admin when `admin`) at `ts`, with `body` and the
/// event's own `seq`, to `target`. On error, `target` is unchanged.
pub fn apply(target: &mut MsgRecord, kind: MsgKind, user: &str, admin: bool, body: &str, seq: u64, ts: u64) -> Result<Revised, FrameError> {
    debug_assert!(kind.is_event(), "only events revise a message");
    if !target.kind.is_content() {
        // The target exists and the request is well formed: what it asks is not allowed.
        return Err(FrameError::new(ErrorCode::Forbidden, "only a message (text, image or file) can be edited, deleted or reacted to"));
    }
    if target.deleted {
        return Err(FrameError::new(ErrorCode::NotFound, "the message was deleted"));
    }
    match kind {
        MsgKind::Edit => {
            if target.from != user {
                return Err(FrameError::new(ErrorCode::Forbidden, "only the author edits a message"));
            }
            if target.edits.len() >= EDITS_PER_MESSAGE_MAX {
                return Err(FrameError::bad_request(format!("a message is edited at most {EDITS_PER_MESSAGE_MAX} times")));
            }
            target.body = body.to_string();
            target.edited_at = Some(ts);
            target.edits.push(seq);
            Ok(Revised::Target)
        }
        MsgKind::Delete => {
            if target.from != user && !admin {
                return Err(FrameError::new(ErrorCode::Forbidden, "only the author or a group admin deletes a message"));
            }
            target.body.clear();
            target.deleted = true;
            target.reactions.clear();
            // Its file is no longer shared through it: no download link is given for it.
            target.media = None;
            Ok(Revised::Deleted { edits: std::mem::take(&mut target.edits) })
        }
        MsgKind::Reaction => {
            target.reactions.retain(|r| r.user != user);
            if !body.is_empty() {
                let emoji = reaction_emoji(body).ok_or_else(|| FrameError::bad_request("a reaction is one emoji"))?;
                let at = target.reactions.partition_point(|r| r.user.as_str() < user);
                target.reactions.insert(at, Reaction { user: user.to_string(), emoji: emoji.to_string() });
            }
            Ok(Revised::Target)
        }
        _ => unreachable!("checked above"),
    }
}

/// An edit event of a deleted message: its body goes with the message's.
pub fn erase(edit: &mut MsgRecord) {
    edit.body.clear();
    edit.deleted = true;
}

/// The body an event stores: a reaction's emoji in its fully qualified form (so that the same
/// emoji typed two ways is one reaction), everything else as sent.
pub fn stored_body(kind: MsgKind, body: &str) -> String {
    match kind {
        MsgKind::Reaction => reaction_emoji(body).map_or_else(|| body.to_string(), str::to_string),
        _ => body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(from: &str) -> MsgRecord {
        MsgRecord { conv: "g:1".into(), id: 9, seq: 3, from: from.into(), cmid: "c".into(), body: "hello".into(), ..Default::default() }
    }

    #[test]
    fn only_the_author_edits_and_each_edit_is_remembered() {
        let mut m = msg("ann");
        assert_eq!(apply(&mut m, MsgKind::Edit, "bob", true, "x", 4, 10).unwrap_err().code, ErrorCode::Forbidden);
        assert_eq!(m, msg("ann"), "a refused edit changes nothing");
        assert_eq!(apply(&mut m, MsgKind::Edit, "ann", false, "hello!", 4, 10), Ok(Revised::Target));
        assert_eq!((m.body.as_str(), m.edited_at, m.edits.as_slice()), ("hello!", Some(10), &[4][..]));
        for seq in 5..(4 + EDITS_PER_MESSAGE_MAX as u64) {
            apply(&mut m, MsgKind::Edit, "ann", false, "again", seq, 11).unwrap();
        }
        assert_eq!(apply(&mut m, MsgKind::Edit, "ann", false, "once more", 999, 12).unwrap_err().code, ErrorCode::BadRequest);
    }

    #[test]
    fn the_author_or_an_admin_deletes_and_the_body_edits_and_reactions_go() {
        let mut m = msg("ann");
        apply(&mut m, MsgKind::Edit, "ann", false, "secret", 4, 10).unwrap();
        apply(&mut m, MsgKind::Reaction, "bob", false, "👍", 5, 10).unwrap();
        assert_eq!(apply(&mut m.clone(), MsgKind::Delete, "bob", false, "", 6, 11).unwrap_err().code, ErrorCode::Forbidden);
        assert_eq!(apply(&mut m.clone(), MsgKind::Delete, "bob", true, "", 6, 11), Ok(Revised::Deleted { edits: vec![4] }));
        assert_eq!(apply(&mut m, MsgKind::Delete, "ann", false, "", 6, 11), Ok(Revised::Deleted { edits: vec![4] }));
        assert!(m.deleted && m.body.is_empty() && m.reactions.is_empty() && m.edits.is_empty());
        for kind in [MsgKind::Edit, MsgKind::Delete, MsgKind::Reaction] {
            let body = if kind == MsgKind::Delete { "" } else { "👍" };
            assert_eq!(
                apply(&mut m, kind, "ann", true, body, 7, 12).unwrap_err().code,
                ErrorCode::NotFound,
                "{kind:?} of a deleted message"
            );
        }
    }

    #[test]
    fn a_reaction_is_one_per_user_replaced_or_taken_back() {
        let mut m = msg("ann");
        apply(&mut m, MsgKind::Reaction, "zed", false, "👍", 4, 1).unwrap();
        apply(&mut m, MsgKind::Reaction, "bob", false, "🎉", 5, 1).unwrap();
        apply(&mut m, MsgKind::Reaction, "zed", false, "❤️", 6, 1).unwrap();
        let who: Vec<(&str, &str)> = m.reactions.iter().map(|r| (r.user.as_str(), r.emoji.as_str())).collect();
        assert_eq!(who, [("bob", "🎉"), ("zed", "❤️")], "ordered by user, one each");
        apply(&mut m, MsgKind::Reaction, "bob", false, "", 7, 1).unwrap();
        assert_eq!(m.reactions.len(), 1);
        assert_eq!(m.edited_at, None, "a reaction is not an edit");
    }

    #[test]
    fn system_messages_and_events_are_not_targets() {
        for kind in [MsgKind::System, MsgKind::Edit, MsgKind::Reaction, MsgKind::Delete] {
            let mut m = MsgRecord { kind, ..msg("ann") };
            assert_eq!(apply(&mut m, MsgKind::Edit, "ann", true, "x", 4, 1).unwrap_err().code, ErrorCode::Forbidden);
        }
    }

    #[test]
    fn the_same_emoji_typed_two_ways_is_stored_one_way() {
        // U+2764 alone and with the emoji presentation selector are one emoji.
        assert_eq!(stored_body(MsgKind::Reaction, "\u{2764}"), stored_body(MsgKind::Reaction, "\u{2764}\u{fe0f}"));
        assert_eq!(stored_body(MsgKind::Edit, "\u{2764}"), "\u{2764}");
    }
}
