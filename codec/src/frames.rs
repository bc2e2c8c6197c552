//! Frame types of the wire contract (`docs/protocol.md`), with their serde (JSON) and rkyv
//! (binary) shapes and the field checks that serde cannot express.

use crate::{error::FrameError, ids::*, ErrorCode, Limits, GROUP_MEMBERS_MAX, HISTORY_LIMIT_MAX, SYNC_LIMIT_MAX};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

macro_rules! wire {
    ($($item:item)*) => {$(
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
        $item
    )*};
}

impl std::fmt::Display for PresenceStatus {
    /// As on the wire: `online` or `offline`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PresenceStatus::Online => "online",
            PresenceStatus::Offline => "offline",
        })
    }
}

/// Whether `t` names a client frame type (to tell "unknown type" from "malformed"). Asked of
/// `ClientFrame`'s own deserializer, so the answer follows the enum: a frame of type `t` with no
/// fields fails as "unknown variant" only when no variant is named `t`.
pub(crate) fn is_client_frame_type(t: &str) -> bool {
    match serde_json::from_value::<ClientFrame>(serde_json::json!({ "t": t })) {
        Ok(_) => true,
        Err(e) => !e.to_string().starts_with("unknown variant"),
    }
}

wire! {
    /// A request id chosen by the client, echoed in the answer: a string or an integer, kept as given.
    #[serde(untagged)]
    #[derive(Eq, Hash)]
    pub enum Ref {
        Str(String),
        Num(i64),
    }

    /// What a message is. `system` is reserved to the server. `edit`, `delete` and `reaction`
    /// are events about an earlier message of the conversation (its `target` seq): they take a
    /// seq of their own, and the target's stored record changes with them.
    #[serde(rename_all = "snake_case")]
    #[derive(Copy, Eq, Default)]
    pub enum MsgKind {
        #[default]
        Text,
        Image,
        File,
        System,
        Edit,
        Delete,
        Reaction,
    }

    /// The file an `image` or `file` message shares (uploaded first: docs/protocol.md, "Media").
    /// Its bytes are fetched through a signed URL that members are given.
    #[derive(Eq)]
    pub struct Media {
        /// The SHA-256 of the bytes, 64 lowercase hex digits.
        pub id: String,
        pub content_type: String,
        /// In bytes.
        pub size: u64,
        /// The file's name, as the uploader gave it.
        pub name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub width: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub height: Option<u32>,
        /// The thumbnail's media id (images).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub thumbnail: Option<String>,
    }

    /// One user's reaction to a message, as the message's current state lists it.
    #[derive(Eq)]
    pub struct Reaction {
        pub user: String,
        pub emoji: String,
    }

    /// Which watermark a receipt moves.
    #[serde(rename_all = "snake_case")]
    #[derive(Copy, Eq, Hash, PartialOrd, Ord)]
    pub enum ReceiptKind {
        Delivered,
        Read,
    }

    /// Whether a user has a connection open anywhere (`online`), or none (`offline`).
    #[serde(rename_all = "snake_case")]
    #[derive(Copy, Eq)]
    pub enum PresenceStatus {
        Online,
        Offline,
    }

    /// A member's role in a group.
    #[serde(rename_all = "snake_case")]
    #[derive(Copy, Eq)]
    pub enum Role {
        Admin,
        Member,
    }

    /// A frame from a client.
    #[serde(tag = "t", rename_all = "snake_case")]
    pub enum ClientFrame {
        Send {
            cmid: String,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            to: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            conv: Option<String>,
            body: String,
            #[serde(default)]
            kind: MsgKind,
            /// For `edit`, `delete` and `reaction`: the seq of the message they are about.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            target: Option<u64>,
            /// For a message: the seq of the earlier message it answers.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            reply_to: Option<u64>,
            /// For `image` and `file`: what was uploaded.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            media: Option<Media>,
        },
        Delivered { conv: String, seq: u64 },
        Read { conv: String, seq: u64 },
        Sync {
            #[serde(default)]
            cursors: BTreeMap<String, u64>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            limit: Option<u32>,
        },
        History {
            conv: String,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            before: Option<u64>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            limit: Option<u32>,
            #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
            r#ref: Option<Ref>,
        },
        GroupCreate {
            name: String,
            members: Vec<String>,
            #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
            r#ref: Option<Ref>,
        },
        GroupAdd {
            conv: String,
            users: Vec<String>,
            #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
            r#ref: Option<Ref>,
        },
        GroupRemove {
            conv: String,
            users: Vec<String>,
            #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
            r#ref: Option<Ref>,
        },
        GroupLeave {
            conv: String,
            #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
            r#ref: Option<Ref>,
        },
        /// Extension: an admin renames a group.
        GroupRename {
            conv: String,
            name: String,
            #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
            r#ref: Option<Ref>,
        },
        PresenceSub { users: Vec<String> },
        PresenceUnsub { users: Vec<String> },
        Typing { conv: String },
        Ping {
            #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
            r#ref: Option<Ref>,
        },
        /// Who has message `seq` of `conv` delivered and read (answered with `receipt_detail`).
        ReceiptQuery {
            conv: String,
            seq: u64,
            #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
            r#ref: Option<Ref>,
        },
    }

    /// Delivered/read counts of one message, among the members other than its sender.
    pub struct SeqCounts {
        pub seq: u64,
        pub delivered: u32,
        pub read: u32,
    }

    /// A stored message, as it appears in `msg`, `sync.messages` and `history.messages`. A
    /// message read back from the store is in its current state: edited (`body` and
    /// `edited_at`), deleted (a tombstone: `deleted`, no body), with its `reactions`.
    #[derive(Default)]
    pub struct MsgRecord {
        pub conv: String,
        #[serde(with = "id_string")]
        pub id: u64,
        pub seq: u64,
        pub from: String,
        pub cmid: String,
        pub body: String,
        pub kind: MsgKind,
        pub ts: u64,
        /// Events (`edit`, `delete`, `reaction`): the seq of the message they are about.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub target: Option<u64>,
        /// The seq of the message this one answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reply_to: Option<u64>,
        /// When the body was last edited (unix ms).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub edited_at: Option<u64>,
        /// A tombstone: the message (or an edit of a message) was deleted and its body is gone.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub deleted: bool,
        /// One per user who reacted, ordered by user.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub reactions: Vec<Reaction>,
        /// The file an `image` or `file` message shares (gone with a delete). Boxed: most
        /// messages share none, and the record stays small on the message path.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub media: Option<Box<Media>>,
        /// The store's own bookkeeping, never on the wire: the seqs of this message's `edit`
        /// events, whose bodies a delete erases too.
        #[serde(skip)]
        pub edits: Vec<u64>,
    }

    /// One member of a group as the `group` frame lists it.
    pub struct Member {
        pub user: String,
        pub role: Role,
    }

    /// A frame from the server.
    #[serde(tag = "t", rename_all = "snake_case")]
    pub enum ServerFrame {
        Ack {
            cmid: String,
            conv: String,
            #[serde(with = "id_string")]
            id: u64,
            seq: u64,
            ts: u64,
        },
        Msg(MsgRecord),
        Receipt { conv: String, user: String, kind: ReceiptKind, seq: u64 },
        Sync { conv: String, messages: Vec<MsgRecord>, more: bool },
        Synced { convs: BTreeMap<String, u64> },
        History {
            conv: String,
            messages: Vec<MsgRecord>,
            #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
            r#ref: Option<Ref>,
        },
        Group {
            conv: String,
            name: String,
            members: Vec<Member>,
            #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
            r#ref: Option<Ref>,
        },
        Presence {
            user: String,
            status: PresenceStatus,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            last_seen: Option<u64>,
        },
        Typing { conv: String, user: String },
        Pong {
            #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
            r#ref: Option<Ref>,
        },
        /// Group receipts, coalesced: for the recipient's own recent messages in `conv`, how many
        /// of the `of` other members have each delivered and read.
        ReceiptCounts { conv: String, of: u32, counts: Vec<SeqCounts> },
        /// The answer to `receipt_query`: who (other than the sender) has message `seq`
        /// delivered and read; `read` users are also in `delivered`.
        ReceiptDetail {
            conv: String,
            seq: u64,
            of: u32,
            delivered: Vec<String>,
            read: Vec<String>,
            #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
            r#ref: Option<Ref>,
        },
        Error {
            code: ErrorCode,
            msg: String,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            cmid: Option<String>,
            #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
            r#ref: Option<Ref>,
        },
    }
}

impl Ref {
    pub(crate) fn from_json(v: &serde_json::Value) -> Option<Ref> {
        match v {
            serde_json::Value::String(s) if s.len() <= REF_BYTES_MAX => Some(Ref::Str(s.clone())),
            serde_json::Value::Number(n) => n.as_i64().map(Ref::Num),
            _ => None,
        }
    }
}

impl From<FrameError> for ServerFrame {
    fn from(e: FrameError) -> Self {
        ServerFrame::Error { code: e.code, msg: e.msg, cmid: e.cmid, r#ref: e.r#ref }
    }
}

/// Message ids are decimal strings in JSON (JavaScript loses integers above 2^53), u64 in binary.
mod id_string {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum StrOrNum<'a> {
            Str(&'a str),
            Num(u64),
        }
        match StrOrNum::deserialize(d)? {
            StrOrNum::Str(s) => s.parse().map_err(D::Error::custom),
            StrOrNum::Num(n) => Ok(n),
        }
    }
}

impl ClientFrame {
    /// The `cmid` or `ref` an error about this frame should carry.
    pub fn correlation(&self) -> (Option<String>, Option<Ref>) {
        match self {
            ClientFrame::Send { cmid, .. } => (Some(cmid.clone()), None),
            ClientFrame::History { r#ref, .. }
            | ClientFrame::GroupCreate { r#ref, .. }
            | ClientFrame::GroupAdd { r#ref, .. }
            | ClientFrame::GroupRemove { r#ref, .. }
            | ClientFrame::GroupLeave { r#ref, .. }
            | ClientFrame::GroupRename { r#ref, .. }
            | ClientFrame::ReceiptQuery { r#ref, .. }
            | ClientFrame::Ping { r#ref } => (None, r#ref.clone()),
            _ => (None, None),
        }
    }

    /// Checks what serde cannot: id syntax, sizes, field combinations.
    pub fn validate(&self, limits: &Limits) -> Result<(), FrameError> {
        let (cmid, r#ref) = self.correlation();
        if let Some(Ref::Str(r)) = &r#ref {
            if r.len() > REF_BYTES_MAX {
                // Not echoed: the answer would carry what the bound is there to refuse.
                return Err(FrameError::bad_request(format!("ref must be an integer or a string of at most {REF_BYTES_MAX} bytes")));
            }
        }
        self.check(limits).map_err(|e| e.with_cmid(cmid).with_ref(r#ref))
    }

    fn check(&self, limits: &Limits) -> Result<(), FrameError> {
        fn conv_ok(conv: &str) -> Result<(), FrameError> {
            if valid_conv_id(conv) {
                Ok(())
            } else {
                Err(FrameError::bad_request("invalid conversation id"))
            }
        }
        fn name_ok(name: &str) -> Result<(), FrameError> {
            // Characters, as the contract and the OpenAPI document count (at most 512 bytes).
            if name.is_empty() || name.chars().count() > GROUP_NAME_CHARS_MAX {
                return Err(FrameError::bad_request("group name must be 1 to 128 characters"));
            }
            Ok(())
        }
        fn users_ok(users: &[String]) -> Result<(), FrameError> {
            if users.len() > GROUP_MEMBERS_MAX {
                return Err(FrameError::new(ErrorCode::GroupFull, format!("at most {GROUP_MEMBERS_MAX} users")));
            }
            match users.iter().find(|u| !valid_user_id(u)) {
                Some(_) => Err(FrameError::bad_request("invalid user id")),
                None => Ok(()),
            }
        }
        match self {
            ClientFrame::Send { cmid, to, conv, body, kind, target, reply_to, media } => {
                if cmid.is_empty() || cmid.chars().count() > CMID_CHARS_MAX {
                    return Err(FrameError::bad_request("cmid must be 1 to 64 characters"));
                }
                check_event(*kind, body, *target, *reply_to)?;
                if let Some(m) = media {
                    check_media(*kind, m)?;
                }
                if body.len() > limits.body_bytes_max {
                    return Err(FrameError::new(
                        ErrorCode::TooLarge,
                        format!("body is {} bytes, the limit is {}", body.len(), limits.body_bytes_max),
                    ));
                }
                if *kind == MsgKind::System {
                    return Err(FrameError::bad_request("kind `system` is reserved to the server"));
                }
                match (to, conv) {
                    (Some(to), None) if valid_user_id(to) => Ok(()),
                    (Some(_), None) => Err(FrameError::bad_request("invalid user id in `to`")),
                    (None, Some(conv)) => conv_ok(conv),
                    _ => Err(FrameError::bad_request("exactly one of `to` and `conv` is required")),
                }
            }
            ClientFrame::Delivered { conv, seq } | ClientFrame::Read { conv, seq } | ClientFrame::ReceiptQuery { conv, seq, .. } => {
                conv_ok(conv)?;
                if *seq == 0 {
                    return Err(FrameError::bad_request("seq starts at 1"));
                }
                Ok(())
            }
            ClientFrame::Sync { cursors, limit } => {
                if cursors.len() > crate::SYNC_CURSORS_MAX {
                    return Err(FrameError::bad_request(format!("at most {} cursors", crate::SYNC_CURSORS_MAX)));
                }
                if let Some(l) = limit {
                    if *l == 0 || *l > SYNC_LIMIT_MAX {
                        return Err(FrameError::bad_request(format!("limit must be 1 to {SYNC_LIMIT_MAX}")));
                    }
                }
                cursors.keys().try_for_each(|c| conv_ok(c))
            }
            ClientFrame::History { conv, limit, .. } => {
                conv_ok(conv)?;
                match limit {
                    Some(l) if *l == 0 || *l > HISTORY_LIMIT_MAX => {
                        Err(FrameError::bad_request(format!("limit must be 1 to {HISTORY_LIMIT_MAX}")))
                    }
                    _ => Ok(()),
                }
            }
            ClientFrame::GroupCreate { name, members, .. } => {
                name_ok(name)?;
                users_ok(members)
            }
            ClientFrame::GroupRename { conv, name, .. } => {
                conv_ok(conv)?;
                name_ok(name)
            }
            ClientFrame::GroupAdd { conv, users, .. } | ClientFrame::GroupRemove { conv, users, .. } => {
                conv_ok(conv)?;
                if users.is_empty() {
                    return Err(FrameError::bad_request("users: at least one"));
                }
                users_ok(users)
            }
            ClientFrame::GroupLeave { conv, .. } | ClientFrame::Typing { conv } => conv_ok(conv),
            ClientFrame::PresenceSub { users } | ClientFrame::PresenceUnsub { users } => {
                // The contract's code for presence beyond its bounds, like the per-connection
                // subscription bound the home shard applies (`group_full` is for groups).
                if users.len() > PRESENCE_USERS_PER_FRAME_MAX {
                    return Err(FrameError::new(ErrorCode::RateLimited, format!("at most {PRESENCE_USERS_PER_FRAME_MAX} users per frame")));
                }
                match users.iter().find(|u| !valid_user_id(u)) {
                    Some(_) => Err(FrameError::bad_request("invalid user id")),
                    None => Ok(()),
                }
            }
            ClientFrame::Ping { .. } => Ok(()),
        }
    }
}

impl MsgKind {
    /// A message proper (`text`, `image`, `file`): what counts as unread, owes a push, is
    /// searched, and may be edited, deleted, reacted to and replied to.
    pub fn is_content(self) -> bool {
        matches!(self, MsgKind::Text | MsgKind::Image | MsgKind::File)
    }

    /// An event about an earlier message (`edit`, `delete`, `reaction`): it names a `target`.
    pub fn is_event(self) -> bool {
        matches!(self, MsgKind::Edit | MsgKind::Delete | MsgKind::Reaction)
    }
}

/// The rules of `target`, `reply_to` and `body` by kind, before any state is looked at.
fn check_event(kind: MsgKind, body: &str, target: Option<u64>, reply_to: Option<u64>) -> Result<(), FrameError> {
    if target == Some(0) || reply_to == Some(0) {
        return Err(FrameError::bad_request("seq starts at 1"));
    }
    if kind.is_event() && reply_to.is_some() {
        return Err(FrameError::bad_request("only a message can be a reply; an edit, delete or reaction cannot"));
    }
    match (kind.is_event(), target) {
        (true, None) => return Err(FrameError::bad_request("an edit, delete or reaction needs `target`, the seq of its message")),
        (false, Some(_)) => return Err(FrameError::bad_request("`target` is for edit, delete and reaction")),
        _ => {}
    }
    match kind {
        MsgKind::Edit if body.is_empty() => Err(FrameError::bad_request("an edit needs the new body (delete the message instead)")),
        MsgKind::Delete if !body.is_empty() => Err(FrameError::bad_request("a delete carries an empty body")),
        MsgKind::Reaction if !body.is_empty() && reaction_emoji(body).is_none() => {
            Err(FrameError::bad_request("a reaction's body is one emoji (or empty, to take the reaction back)"))
        }
        _ => Ok(()),
    }
}

/// A `media` object's rules: on `image` and `file` messages only, its fields well formed.
fn check_media(kind: MsgKind, m: &Media) -> Result<(), FrameError> {
    if !matches!(kind, MsgKind::Image | MsgKind::File) {
        return Err(FrameError::bad_request("`media` goes with kind `image` or `file`"));
    }
    let side_ok = |s: Option<u32>| s.is_none_or(|s| (1..=MEDIA_SIDE_MAX).contains(&s));
    if !valid_media_id(&m.id) || m.thumbnail.as_deref().is_some_and(|t| !valid_media_id(t)) {
        return Err(FrameError::bad_request("media ids are 64 lowercase hex digits (the SHA-256 an upload answered)"));
    }
    if !valid_content_type(&m.content_type)
        || m.size == 0
        || m.name.chars().count() > MEDIA_NAME_CHARS_MAX
        || !side_ok(m.width)
        || !side_ok(m.height)
    {
        return Err(FrameError::bad_request(
            "media: a content type type/subtype, a size of at least 1, a name of at most 255 characters, sides of 1 to 100000",
        ));
    }
    Ok(())
}

/// A media id: the SHA-256 of the bytes, 64 lowercase hex digits.
pub fn valid_media_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A content type as uploads and downloads carry it: `type/subtype`, lowercase, at most
/// [`CONTENT_TYPE_BYTES_MAX`] bytes, no parameters.
pub fn valid_content_type(ct: &str) -> bool {
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    ct.len() <= CONTENT_TYPE_BYTES_MAX && ct.split_once('/').is_some_and(|(t, s)| ok(t) && ok(s))
}

/// Longest content type, in bytes.
pub const CONTENT_TYPE_BYTES_MAX: usize = 127;

/// Longest media file name, in characters.
pub const MEDIA_NAME_CHARS_MAX: usize = 255;
/// Widest or tallest image a `media` object may declare, in pixels.
pub const MEDIA_SIDE_MAX: u32 = 100_000;

/// The emoji `body` names, in its fully qualified form (what is stored), or None when `body` is
/// not exactly one emoji of Unicode's list (skin tones included).
pub fn reaction_emoji(body: &str) -> Option<&'static str> {
    if body.len() > REACTION_BYTES_MAX {
        return None;
    }
    emojis::get(body).map(|e| e.as_str())
}

/// Longest reaction, in bytes of UTF-8 (the longest emoji sequences, families with skin tones,
/// are 35 bytes).
pub const REACTION_BYTES_MAX: usize = 64;

/// Longest group name, in bytes.
pub const GROUP_NAME_CHARS_MAX: usize = 128;
/// Longest string `ref`, in bytes (an integer `ref` is any i64).
pub const REF_BYTES_MAX: usize = 64;
/// Users one `presence_sub` or `presence_unsub` may name (the per-connection subscription bound's
/// default: one frame can fill it, none can pass it alone).
pub const PRESENCE_USERS_PER_FRAME_MAX: usize = 1024;
