//! The OpenAPI document served at `/v1/openapi.json`: the handlers' annotations (paths,
//! parameters with their limits), the shapes of the answers below, and, added by [`Complete`],
//! every error answer each operation can give. `.ci/schemathesis` checks the running server
//! against it (every check, zero failures), so a field, a limit or a status that drifts from what
//! the server does fails CI.
//!
//! The answer shapes are declared here for the document only: the handlers build their JSON
//! from the codec's types, and schemathesis's response checks are what keeps the two the same.
#![allow(dead_code)] // fields read by the schema derive only

use serde::Serialize;
use utoipa::openapi::{self, RefOr};
use utoipa::ToSchema;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "shardchat control plane",
        description = "REST API beside the WebSocket engine; see docs/protocol.md. Every error answer is `{code, msg}`."
    ),
    paths(
        super::rest::healthz,
        super::rest::page,
        super::rest::library,
        super::rest::client_config,
        super::rest::openapi_json,
        super::rest::readyz,
        super::rest::metrics,
        super::rest::conversations,
        super::rest::conversation,
        super::rest::messages,
        super::rest::send,
        super::rest::edit_message,
        super::rest::delete_message,
        super::rest::react,
        super::rest::send_file,
        super::media::new_upload,
        super::media::put_upload,
        super::media::complete_upload,
        super::media::links,
        super::media::download,
        super::rest::receipts,
        super::rest::create_group,
        super::rest::add_members,
        super::rest::remove_member,
        super::rest::leave,
        super::rest::rename,
        super::rest::presence,
        super::rest::search,
        super::poll::get_poll,
        super::poll::post_poll
    ),
    components(schemas(
        super::rest::NewMessage,
        super::rest::EditMessage,
        super::rest::React,
        super::media::NewUpload,
        super::rest::NewFileMessage,
        super::rest::MediaIn,
        UploadGrant,
        MediaLinks,
        MessageKind,
        super::rest::NewGroup,
        super::rest::Users,
        super::rest::Rename,
        ErrorBody,
        SendKind,
        SendFields,
        ClientFrame,
        ConvId,
        GroupId,
        RefDoc,
        Mark,
        GroupUsers,
        UserId,
        Message,
        Reaction,
        Media,
        ConversationSummary,
        ConversationList,
        Member,
        Conversation,
        MessagePage,
        Ack,
        ReceiptDetail,
        Group,
        Presence,
        PresenceList,
        SearchHit,
        SearchResults,
        PollEvents,
        Accepted,
        ClientConfig
    )),
    modifiers(&BearerAuth, &Complete)
)]
pub struct ApiDoc;

/// The conversation in a path, as the document gives it (the handlers take it as a `String`).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ConvPath {
    /// A conversation id: `g:<id>`, or `d:<user>:<user>` in byte-wise order (the order is not a
    /// pattern's to say: a reversed pair is 404, it names no conversation).
    #[param(pattern = r"^(g:[0-9]{1,19}|d:[A-Za-z0-9_.:@-]{1,64}:[A-Za-z0-9_.:@-]{1,64})$")]
    conv: String,
}

/// A group in a path: what the group operations take (a direct id is `bad_request` there).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct GroupPath {
    /// A group id, `g:<id>`.
    #[param(pattern = r"^g:[0-9]{1,19}$")]
    conv: String,
}

/// Every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    #[schema(example = "forbidden")]
    code: ErrorCodeDoc,
    msg: String,
    /// The `cmid` of the send it answers, when it answers one.
    #[serde(skip_serializing_if = "Option::is_none")]
    cmid: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCodeDoc {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    TooLarge,
    RateLimited,
    GroupFull,
    Unavailable,
    Internal,
}

/// What `POST /v1/conversations/{conv}/messages` sends: a message proper.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Text,
    Image,
    File,
}

/// What a client may send (`system` is the server's): a message, or an event about the message
/// `target` names (docs/protocol.md, "Edits, deletes, replies, reactions").
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SendKind {
    Text,
    Image,
    File,
    Edit,
    Delete,
    Reaction,
}

/// A conversation id in a body: `g:<id>`, or `d:<user>:<user>` in byte-wise order.
#[derive(Serialize, ToSchema)]
#[schema(pattern = r"^(g:[0-9]{1,19}|d:[A-Za-z0-9_.:@-]{1,64}:[A-Za-z0-9_.:@-]{1,64})$")]
pub struct ConvId(String);

/// A group id in a body: what the group frames take (a direct id is `bad_request` there).
#[derive(Serialize, ToSchema)]
#[schema(pattern = r"^g:[0-9]{1,19}$")]
pub struct GroupId(String);

/// A request's `ref`, echoed in its answer: a string of at most 64 bytes, or an integer.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum RefDoc {
    /// At most 64 bytes (UTF-8): a bound in bytes, which JSON Schema cannot state.
    Text(String),
    Number(i64),
}

/// What both shapes of `send` carry besides their cmid and destination.
#[derive(Serialize, ToSchema)]
pub struct SendFields {
    /// At most the server's body limit in bytes (`maxLength`: set per server).
    body: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    kind: Option<SendKind>,
    /// For `edit`, `delete` and `reaction`: the seq of the message they are about.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, minimum = 1)]
    target: Option<u64>,
    /// For a message: the seq of the earlier message it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, minimum = 1)]
    reply_to: Option<u64>,
    /// For `image` and `file`: the upload it shares.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    media: Option<Media>,
}

/// One client frame, as the WebSocket takes it (docs/protocol.md, "Client to server"): the body
/// of `POST /v1/poll`. Declared for the document; the server parses it with the codec's
/// `ClientFrame`, and an invalid one is 400 like on the WebSocket.
#[derive(Serialize, ToSchema)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ClientFrame {
    /// A send to a user (the direct conversation is made on first use). One of the two shapes of
    /// `send`: an object with both `to` and `conv` matches both, which `oneOf` refuses, as the
    /// server does.
    #[serde(rename = "send")]
    SendTo {
        #[schema(min_length = 1, max_length = 64)]
        cmid: String,
        to: UserId,
        #[serde(flatten)]
        fields: SendFields,
    },
    /// A send to a conversation.
    #[serde(rename = "send")]
    SendConv {
        #[schema(min_length = 1, max_length = 64)]
        cmid: String,
        conv: ConvId,
        #[serde(flatten)]
        fields: SendFields,
    },
    Delivered(Mark),
    Read(Mark),
    /// `cursors`: conversation → the last seq held (at most 10,000).
    Sync {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        cursors: Option<std::collections::BTreeMap<String, u64>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false, minimum = 1, maximum = 5000)]
        limit: Option<u32>,
    },
    History {
        conv: ConvId,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false, minimum = 1)]
        before: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false, minimum = 1, maximum = 200)]
        limit: Option<u32>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        reference: Option<RefDoc>,
    },
    Ping {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        reference: Option<RefDoc>,
    },
    GroupCreate {
        #[schema(min_length = 1, max_length = 128)]
        name: String,
        members: Vec<UserId>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        reference: Option<RefDoc>,
    },
    GroupAdd(GroupUsers),
    GroupRemove(GroupUsers),
    GroupLeave {
        conv: GroupId,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        reference: Option<RefDoc>,
    },
    GroupRename {
        conv: GroupId,
        #[schema(min_length = 1, max_length = 128)]
        name: String,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        reference: Option<RefDoc>,
    },
    PresenceSub {
        #[schema(max_items = 1024)]
        users: Vec<UserId>,
    },
    PresenceUnsub {
        #[schema(max_items = 1024)]
        users: Vec<UserId>,
    },
    Typing {
        conv: ConvId,
    },
    ReceiptQuery {
        conv: ConvId,
        #[schema(minimum = 1)]
        seq: i64,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        reference: Option<RefDoc>,
    },
}

/// A `delivered` or `read` watermark.
#[derive(Serialize, ToSchema)]
pub struct Mark {
    conv: ConvId,
    #[schema(minimum = 1)]
    seq: i64,
}

/// A `group_add` or `group_remove`: the users added or removed.
#[derive(Serialize, ToSchema)]
pub struct GroupUsers {
    conv: GroupId,
    #[schema(min_items = 1)]
    users: Vec<UserId>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    reference: Option<RefDoc>,
}

/// A user id.
#[derive(Serialize, ToSchema)]
#[schema(pattern = r"^[A-Za-z0-9_.:@-]{1,64}$")]
pub struct UserId(String);

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Text,
    Image,
    File,
    System,
    Edit,
    Delete,
    Reaction,
}

/// The file an `image` or `file` message shares: what the upload's PUT answered.
#[derive(Serialize, ToSchema)]
pub struct Media {
    /// The SHA-256 of the bytes.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    id: String,
    #[schema(pattern = "^[a-z0-9+.-]+/[a-z0-9+.-]+$", max_length = 127)]
    content_type: String,
    #[schema(minimum = 1)]
    size: u64,
    #[schema(max_length = 255)]
    name: String,
    #[schema(nullable = false, minimum = 1, maximum = 100000)]
    width: Option<u32>,
    #[schema(nullable = false, minimum = 1, maximum = 100000)]
    height: Option<u32>,
    /// The thumbnail's media id.
    #[schema(nullable = false, pattern = "^[0-9a-f]{64}$")]
    thumbnail: Option<String>,
}

/// Where to upload: PUT exactly `size` bytes with `content_type` to `url` before `expires_at`.
#[derive(Serialize, ToSchema)]
pub struct UploadGrant {
    /// Where to PUT the bytes: a path on this server (the embedded store; its signed token is
    /// the grant), or the object store's own signed URL (`--media-s3`).
    url: String,
    /// Always `PUT`.
    method: String,
    /// Headers the PUT must carry, exactly (some are signed): `content-type`, and with S3
    /// `x-amz-checksum-sha256`.
    headers: std::collections::BTreeMap<String, String>,
    content_type: String,
    size: u64,
    /// Unix seconds.
    expires_at: u64,
    /// Where to POST once the PUT is done, for the `media` object; null when no sha256 was
    /// named (the PUT to this server answers it).
    complete_url: Option<String>,
}

/// Signed download links for a message's file.
#[derive(Serialize, ToSchema)]
pub struct MediaLinks {
    /// A path on this server serving the file.
    url: String,
    /// The thumbnail's (images), or null.
    thumbnail_url: Option<String>,
    /// Unix seconds.
    expires_at: u64,
    media: Media,
}

/// One user's reaction to a message.
#[derive(Serialize, ToSchema)]
pub struct Reaction {
    user: String,
    emoji: String,
}

/// A stored message.
#[derive(Serialize, ToSchema)]
pub struct Message {
    conv: String,
    /// The message's global id (a decimal u64, as a string).
    #[schema(pattern = "^[0-9]+$")]
    id: String,
    #[schema(minimum = 1)]
    seq: u64,
    from: String,
    cmid: String,
    body: String,
    kind: Kind,
    /// Unix ms.
    ts: u64,
    /// Events (`edit`, `delete`, `reaction`): the seq of the message they are about.
    #[schema(nullable = false, minimum = 1)]
    target: Option<u64>,
    /// The seq of the message this one answers.
    #[schema(nullable = false, minimum = 1)]
    reply_to: Option<u64>,
    /// When the body was last edited (unix ms).
    #[schema(nullable = false)]
    edited_at: Option<u64>,
    /// A tombstone: the message was deleted and its body is gone.
    #[schema(nullable = false)]
    deleted: Option<bool>,
    /// One per user who reacted, ordered by user.
    #[schema(nullable = false)]
    reactions: Option<Vec<Reaction>>,
    /// The file an `image` or `file` message shares.
    #[schema(nullable = false)]
    media: Option<Media>,
}

#[derive(Serialize, ToSchema)]
pub struct ConversationSummary {
    conv: String,
    name: Option<String>,
    last_seq: u64,
    /// Messages others sent after the caller's read mark (counted up to 1,000).
    unread: u64,
    /// false: a former member, who sees the conversation up to where they left.
    member: bool,
    /// The newest message proper, as it is now (an edit or reaction after it is not the preview).
    last: Option<Message>,
}

#[derive(Serialize, ToSchema)]
pub struct ConversationList {
    /// Newest first.
    conversations: Vec<ConversationSummary>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Member,
    Admin,
}

#[derive(Serialize, ToSchema)]
pub struct Member {
    user: String,
    role: Role,
}

#[derive(Serialize, ToSchema)]
pub struct Conversation {
    conv: String,
    name: Option<String>,
    members: Vec<Member>,
    last_seq: u64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    Asc,
    Desc,
}

#[derive(Serialize, ToSchema)]
pub struct MessagePage {
    conv: String,
    /// `asc` when paging forwards (`after`), else `desc`.
    order: Order,
    messages: Vec<Message>,
}

/// The message is durably stored.
#[derive(Serialize, ToSchema)]
pub struct Ack {
    cmid: String,
    conv: String,
    #[schema(pattern = "^[0-9]+$")]
    id: String,
    seq: u64,
    ts: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ReceiptDetail {
    conv: String,
    seq: u64,
    /// Members other than the sender.
    of: u32,
    delivered: Vec<String>,
    /// Also in `delivered`.
    read: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Group {
    conv: String,
    name: String,
    members: Vec<Member>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Online,
    Offline,
}

#[derive(Serialize, ToSchema)]
pub struct Presence {
    user: String,
    status: Status,
    /// Unix ms, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct PresenceList {
    /// In the order asked.
    presence: Vec<Presence>,
}

#[derive(Serialize, ToSchema)]
pub struct SearchHit {
    score: f32,
    conv: String,
    #[schema(pattern = "^[0-9]+$")]
    id: String,
    seq: u64,
    from: String,
    body: String,
    ts: u64,
}

#[derive(Serialize, ToSchema)]
pub struct SearchResults {
    q: String,
    offset: u64,
    hits: Vec<SearchHit>,
}

/// A long poll's answer: server frames, as on the WebSocket, and the cursor to poll next.
#[derive(Serialize, ToSchema)]
pub struct PollEvents {
    cursor: String,
    events: Vec<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub struct Accepted {
    accepted: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ClientConfig {
    ws_port: u16,
    ws_path: String,
}

/// The document for a server whose message bodies are at most `body_bytes_max` bytes.
pub fn document(body_bytes_max: usize, media_bytes_max: u64) -> openapi::OpenApi {
    use utoipa::OpenApi;
    let mut api = ApiDoc::openapi();
    // This server's upload bound.
    match api.components.as_mut().and_then(|c| c.schemas.get_mut("NewUpload")) {
        Some(RefOr::T(openapi::schema::Schema::Object(o))) => match o.properties.get_mut("size") {
            Some(RefOr::T(openapi::schema::Schema::Object(size))) => size.maximum = Some((media_bytes_max as f64).into()),
            _ => unreachable!("NewUpload has a size"),
        },
        _ => unreachable!("NewUpload is an object"),
    }
    // A message's body, an edit's, a file's caption.
    for schema in ["NewMessage", "EditMessage", "NewFileMessage"] {
        let body = api.components.as_mut().and_then(|c| c.schemas.get_mut(schema)).and_then(|s| match s {
            RefOr::T(openapi::schema::Schema::Object(o)) => o.properties.get_mut("body"),
            _ => None,
        });
        match body {
            Some(RefOr::T(openapi::schema::Schema::Object(o))) => o.max_length = Some(body_bytes_max),
            _ => unreachable!("{schema} has a body property"),
        }
    }
    // The two shapes of a `send` frame share their fields, the body's bound with them.
    match api.components.as_mut().and_then(|c| c.schemas.get_mut("SendFields")) {
        Some(RefOr::T(openapi::schema::Schema::Object(o))) => match o.properties.get_mut("body") {
            Some(RefOr::T(openapi::schema::Schema::Object(body))) => body.max_length = Some(body_bytes_max),
            _ => unreachable!("SendFields has a body"),
        },
        _ => unreachable!("SendFields is an object"),
    }
    api
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, api: &mut openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// Adds to every operation the error answers it can give, each an [`ErrorBody`]: what the
/// framework and the shared checks refuse, by what the operation takes. An operation's own
/// (409 `group_full`, 410 for an ended poll session) are in its annotation.
struct Complete;

impl utoipa::Modify for Complete {
    fn modify(&self, api: &mut openapi::OpenApi) {
        for item in api.paths.paths.values_mut() {
            let ops = [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
            for op in ops.into_iter().flatten() {
                for (status, why) in errors_of(op) {
                    let resp = op
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| RefOr::T(openapi::ResponseBuilder::new().description(why).build()));
                    if let RefOr::T(r) = resp {
                        if r.content.is_empty() {
                            r.content.insert(
                                "application/json".into(),
                                openapi::ContentBuilder::new().schema(Some(openapi::Ref::from_schema_name("ErrorBody"))).build(),
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The error statuses an operation can answer with, and why.
fn errors_of(op: &openapi::path::Operation) -> Vec<(u16, &'static str)> {
    let mut out = Vec::new();
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let takes_input = op.parameters.as_ref().is_some_and(|p| !p.is_empty()) || op.request_body.is_some();
    if takes_input {
        out.push((400, "bad_request: a parameter or the body is malformed or out of its limits"));
    }
    if secured {
        out.push((401, "unauthorized: no token, or a token that is invalid or expired"));
        out.push((403, "forbidden: the caller may not do this (not a member, not an admin)"));
        out.push((429, "rate_limited: too many requests from this user"));
        out.push((503, "unavailable: storage or the shards are unavailable; retry"));
    }
    let names_conv = op.parameters.as_ref().is_some_and(|ps| ps.iter().any(|p| p.name == "conv"));
    if names_conv {
        out.push((404, "not_found: no such conversation or message"));
    }
    if op.request_body.is_some() {
        out.push((413, "too_large: the body is over the limit"));
        out.push((415, "bad_request: the body is not `application/json`"));
        out.push((422, "bad_request: the JSON does not have the fields the operation takes"));
    }
    out
}
