//! The ScyllaDB backend: the same [`MessageStore`] contract as the embedded store, over the
//! `scylla` driver, for deployments of several nodes that share one message store.
//!
//! - Schema: `storage/scylla/schema.cql`, applied by [`ScyllaStore::migrate`] (`shardchat migrate`);
//!   the engine never creates tables itself.
//! - Every statement is prepared once at start; every read is a single partition.
//! - [`MessageStore::commit`] is one logged batch, which Scylla applies atomically. Rows written
//!   and deleted in the same batch would share a timestamp (where a tombstone wins), so the
//!   batch is first reduced to the last write per row, in the embedded store's order.
//! - Consistency is QUORUM unless the URI says otherwise: an acknowledged message is on a
//!   majority of replicas.
//! - The driver is async (tokio); the store owns a small runtime and blocks on it. Callers are
//!   the shards' blocking pools and the control plane's `spawn_blocking`, never a reactor.

use futures::TryStreamExt;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use scylla::value::CqlValue;
use shardchat_codec::{MsgKind, MsgRecord, Reaction, ReceiptKind, Role};
use shardchat_storage::{Joined, LastSeen, Left, Membership, MessageStore, Named, PushEntry, StoreError, Watermark, WriteBatch};
use std::collections::BTreeMap;
use std::time::Duration;

/// The schema, with `{keyspace}` and `{replication}` to fill in.
pub const SCHEMA_CQL: &str = include_str!("../schema.cql");

/// Where the cluster is and how to talk to it, from a URI:
/// `scylla://HOST:PORT[,HOST:PORT...][/KEYSPACE][?consistency=quorum|local_quorum|one|all]`,
/// and `&schema_metadata=off` for servers without `system_schema` (the CQL test double).
#[derive(Clone, Debug, PartialEq)]
pub struct ScyllaConfig {
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub consistency: Consistency,
    /// This node's partition of the push outbox and search queue (`--node-id`).
    pub node: i32,
    /// Whether the driver reads schema metadata (token-aware routing needs it). The CQL test
    /// double has no `system_schema`, so tests turn it off.
    pub fetch_schema: bool,
}

impl ScyllaConfig {
    pub fn from_uri(uri: &str) -> Result<ScyllaConfig, String> {
        let rest = uri.strip_prefix("scylla://").ok_or_else(|| format!("a ScyllaDB URI starts with scylla:// (got {uri})"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (hosts, keyspace) = rest.split_once('/').unwrap_or((rest, ""));
        let nodes: Vec<String> =
            hosts.split(',').filter(|h| !h.is_empty()).map(|h| if h.contains(':') { h.to_string() } else { format!("{h}:9042") }).collect();
        if nodes.is_empty() {
            return Err(format!("no hosts in {uri}"));
        }
        let keyspace = if keyspace.is_empty() { "shardchat".to_string() } else { keyspace.to_string() };
        if !keyspace.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || keyspace.len() > 48 {
            return Err(format!("keyspace name {keyspace:?}: letters, digits and _ only, at most 48"));
        }
        let mut consistency = Consistency::Quorum;
        let mut fetch_schema = true;
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            match k {
                "consistency" => {
                    consistency = match v.to_ascii_lowercase().as_str() {
                        "one" => Consistency::One,
                        "quorum" => Consistency::Quorum,
                        "local_quorum" => Consistency::LocalQuorum,
                        "each_quorum" => Consistency::EachQuorum,
                        "all" => Consistency::All,
                        other => return Err(format!("unknown consistency {other}")),
                    }
                }
                "schema_metadata" => {
                    fetch_schema = match v {
                        "on" => true,
                        "off" => false,
                        other => return Err(format!("schema_metadata is on or off, not {other}")),
                    }
                }
                other => return Err(format!("unknown ScyllaDB URI option {other}")),
            }
        }
        Ok(ScyllaConfig { nodes, keyspace, consistency, node: 0, fetch_schema })
    }
}

struct Statements {
    insert_message: PreparedStatement,
    insert_cmid: PreparedStatement,
    insert_index: PreparedStatement,
    insert_member: PreparedStatement,
    delete_member: PreparedStatement,
    insert_user_conv: PreparedStatement,
    insert_former: PreparedStatement,
    delete_former: PreparedStatement,
    insert_name: PreparedStatement,
    insert_watermark: PreparedStatement,
    insert_last_seen: PreparedStatement,
    insert_push: PreparedStatement,
    delete_push: PreparedStatement,
    delete_index: PreparedStatement,
    last_seq: PreparedStatement,
    cmid_seq: PreparedStatement,
    message_at: PreparedStatement,
    messages_after: PreparedStatement,
    messages_latest: PreparedStatement,
    messages_before: PreparedStatement,
    members: PreparedStatement,
    left_at: PreparedStatement,
    conv_name: PreparedStatement,
    watermarks: PreparedStatement,
    watermark: PreparedStatement,
    last_seen: PreparedStatement,
    push_pending: PreparedStatement,
    index_pending: PreparedStatement,
    user_convs: PreparedStatement,
    insert_fence: PreparedStatement,
    node_fence: PreparedStatement,
}

const MSG_COLS: &str = "id, seq, sender, cmid, body, kind, ts, conv, meta";
type MsgRow = (i64, i64, String, String, String, String, i64, String, Option<String>);

/// The `meta` column: what edits, deletes, replies and reactions add to a record.
#[derive(serde::Serialize, serde::Deserialize, Default, PartialEq)]
struct Meta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply_to: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    edited_at: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    reactions: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    edits: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media: Option<shardchat_codec::Media>,
}

pub struct ScyllaStore {
    rt: tokio::runtime::Runtime,
    session: Session,
    st: Statements,
    node: i32,
}

fn db(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("scylla: {e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime, StoreError> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("scylla").enable_all().build().map_err(db)
}

async fn connect(cfg: &ScyllaConfig) -> Result<Session, StoreError> {
    let profile = ExecutionProfile::builder().consistency(cfg.consistency).request_timeout(Some(Duration::from_secs(10))).build();
    SessionBuilder::new()
        .known_nodes(&cfg.nodes)
        .default_execution_profile_handle(profile.into_handle())
        .fetch_schema_metadata(cfg.fetch_schema)
        .connection_timeout(Duration::from_secs(5))
        .build()
        .await
        .map_err(db)
}

impl ScyllaStore {
    /// Applies `schema.cql` to the cluster (idempotent): the number of statements in effect.
    pub fn migrate(cfg: &ScyllaConfig, replication_factor: u32) -> Result<usize, StoreError> {
        let rt = runtime()?;
        rt.block_on(async {
            let session = connect(cfg).await?;
            let mut applied = 0;
            for stmt in schema_statements(&cfg.keyspace, replication_factor) {
                match session.query_unpaged(stmt.as_str(), ()).await {
                    Ok(_) => applied += 1,
                    Err(e) if already_added(&stmt, &e.to_string()) => applied += 1,
                    Err(e) => return Err(db(format!("{e} in: {stmt}"))),
                }
            }
            Ok(applied)
        })
    }

    /// Connects and prepares every statement; fails if the schema is missing (run migrate).
    pub fn open(cfg: &ScyllaConfig) -> Result<ScyllaStore, StoreError> {
        let rt = runtime()?;
        let (session, st) = rt.block_on(async {
            let session = connect(cfg).await?;
            let ks = &cfg.keyspace;
            let p = |q: String| {
                let s = &session;
                async move { s.prepare(q.as_str()).await.map_err(|e| db(format!("{e} preparing {q} (has `shardchat migrate` run?)"))) }
            };
            let st = Statements {
                insert_message: p(format!("INSERT INTO {ks}.messages ({MSG_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")).await?,
                insert_cmid: p(format!("INSERT INTO {ks}.messages_by_cmid (conv, sender, cmid, seq) VALUES (?, ?, ?, ?)")).await?,
                insert_index: p(format!("INSERT INTO {ks}.index_queue (node, {MSG_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")).await?,
                insert_member: p(format!("INSERT INTO {ks}.members (conv, uid, member_role, joined) VALUES (?, ?, ?, ?)")).await?,
                delete_member: p(format!("DELETE FROM {ks}.members WHERE conv = ? AND uid = ?")).await?,
                insert_user_conv: p(format!("INSERT INTO {ks}.user_convs (uid, conv) VALUES (?, ?)")).await?,
                insert_former: p(format!("INSERT INTO {ks}.former_members (conv, uid, left_at) VALUES (?, ?, ?)")).await?,
                delete_former: p(format!("DELETE FROM {ks}.former_members WHERE conv = ? AND uid = ?")).await?,
                insert_name: p(format!("INSERT INTO {ks}.conv_names (conv, name) VALUES (?, ?)")).await?,
                insert_watermark: p(format!("INSERT INTO {ks}.watermarks (conv, uid, kind, seq) VALUES (?, ?, ?, ?)")).await?,
                insert_last_seen: p(format!("INSERT INTO {ks}.last_seen (uid, ts) VALUES (?, ?)")).await?,
                insert_push: p(format!("INSERT INTO {ks}.push_outbox (node, id, uid, conv, sender, ts) VALUES (?, ?, ?, ?, ?, ?)")).await?,
                delete_push: p(format!("DELETE FROM {ks}.push_outbox WHERE node = ? AND id = ? AND uid = ?")).await?,
                delete_index: p(format!("DELETE FROM {ks}.index_queue WHERE node = ? AND id = ?")).await?,
                last_seq: p(format!("SELECT seq FROM {ks}.messages WHERE conv = ? LIMIT 1")).await?,
                cmid_seq: p(format!("SELECT seq FROM {ks}.messages_by_cmid WHERE conv = ? AND sender = ? AND cmid = ?")).await?,
                message_at: p(format!("SELECT {MSG_COLS} FROM {ks}.messages WHERE conv = ? AND seq = ?")).await?,
                messages_after: p(format!("SELECT {MSG_COLS} FROM {ks}.messages WHERE conv = ? AND seq > ? ORDER BY seq ASC LIMIT ?"))
                    .await?,
                messages_latest: p(format!("SELECT {MSG_COLS} FROM {ks}.messages WHERE conv = ? LIMIT ?")).await?,
                messages_before: p(format!("SELECT {MSG_COLS} FROM {ks}.messages WHERE conv = ? AND seq < ? LIMIT ?")).await?,
                members: p(format!("SELECT uid, member_role, joined FROM {ks}.members WHERE conv = ?")).await?,
                left_at: p(format!("SELECT left_at FROM {ks}.former_members WHERE conv = ? AND uid = ?")).await?,
                conv_name: p(format!("SELECT name FROM {ks}.conv_names WHERE conv = ?")).await?,
                watermarks: p(format!("SELECT uid, kind, seq FROM {ks}.watermarks WHERE conv = ?")).await?,
                watermark: p(format!("SELECT seq FROM {ks}.watermarks WHERE conv = ? AND uid = ? AND kind = ?")).await?,
                last_seen: p(format!("SELECT ts FROM {ks}.last_seen WHERE uid = ?")).await?,
                push_pending: p(format!("SELECT id, uid, conv, sender, ts FROM {ks}.push_outbox WHERE node = ? LIMIT ?")).await?,
                index_pending: p(format!("SELECT {MSG_COLS} FROM {ks}.index_queue WHERE node = ? LIMIT ?")).await?,
                user_convs: p(format!("SELECT conv FROM {ks}.user_convs WHERE uid = ?")).await?,
                insert_fence: p(format!("INSERT INTO {ks}.node_fences (node, incarnation) VALUES (?, ?)")).await?,
                node_fence: p(format!("SELECT incarnation FROM {ks}.node_fences WHERE node = ? LIMIT 1")).await?,
            };
            Ok::<_, StoreError>((session, st))
        })?;
        Ok(ScyllaStore { rt, session, st, node: cfg.node })
    }

    /// Every row a multi-row read returns, through the driver's pager (page by page).
    fn all<R>(&self, stmt: &PreparedStatement, values: Vec<CqlValue>) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
    {
        self.rt.block_on(async {
            let pager = self.session.execute_iter(stmt.clone(), values).await.map_err(db)?;
            pager.rows_stream::<R>().map_err(db)?.try_collect::<Vec<R>>().await.map_err(db)
        })
    }

    /// At most one row.
    fn one<R>(&self, stmt: &PreparedStatement, values: Vec<CqlValue>) -> Result<Option<R>, StoreError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
    {
        Ok(self.all(stmt, values)?.into_iter().next())
    }

    fn batch(&self, writes: Vec<(&PreparedStatement, Vec<CqlValue>)>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new(BatchType::Logged);
        let mut values = Vec::with_capacity(writes.len());
        for (stmt, v) in writes {
            batch.append_statement(stmt.clone());
            values.push(v);
        }
        self.rt.block_on(self.session.batch(&batch, values)).map(|_| ()).map_err(db)
    }
}

/// Whether `error` says that `stmt`, an `ALTER TABLE … ADD`, was applied before: Scylla says the
/// column "conflicts with an existing column", Cassandra that it "already exists".
fn already_added(stmt: &str, error: &str) -> bool {
    stmt.starts_with("ALTER TABLE") && (error.contains("conflicts with an existing column") || error.contains("already exists"))
}

/// The statements of `schema.cql` with the placeholders filled in, comments dropped.
pub fn schema_statements(keyspace: &str, replication_factor: u32) -> Vec<String> {
    let text: String = SCHEMA_CQL.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
    text.split(';')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| s.replace("{keyspace}", keyspace).replace("{replication}", &replication_factor.to_string()))
        .collect()
}

fn t(s: &str) -> CqlValue {
    CqlValue::Text(s.to_string())
}
/// CQL's bigint is signed: bounds past i64::MAX (callers pass u64::MAX for "no bound") clamp,
/// which no stored seq, id or time reaches.
fn big(n: u64) -> CqlValue {
    CqlValue::BigInt(n.min(i64::MAX as u64) as i64)
}
fn limit(n: usize) -> CqlValue {
    CqlValue::Int(n.min(i32::MAX as usize) as i32)
}

fn kind_name(k: MsgKind) -> &'static str {
    match k {
        MsgKind::Text => "text",
        MsgKind::Image => "image",
        MsgKind::File => "file",
        MsgKind::System => "system",
        MsgKind::Edit => "edit",
        MsgKind::Delete => "delete",
        MsgKind::Reaction => "reaction",
    }
}

fn kind_of(s: &str) -> Result<MsgKind, StoreError> {
    Ok(match s {
        "text" => MsgKind::Text,
        "image" => MsgKind::Image,
        "file" => MsgKind::File,
        "system" => MsgKind::System,
        "edit" => MsgKind::Edit,
        "delete" => MsgKind::Delete,
        "reaction" => MsgKind::Reaction,
        other => return Err(StoreError::Corrupt(format!("unknown message kind {other:?}"))),
    })
}

fn receipt_name(k: ReceiptKind) -> &'static str {
    match k {
        ReceiptKind::Delivered => "delivered",
        ReceiptKind::Read => "read",
    }
}

fn receipt_of(s: &str) -> Result<ReceiptKind, StoreError> {
    match s {
        "delivered" => Ok(ReceiptKind::Delivered),
        "read" => Ok(ReceiptKind::Read),
        other => Err(StoreError::Corrupt(format!("unknown receipt kind {other:?}"))),
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

fn role_of(s: &str) -> Result<Role, StoreError> {
    match s {
        "admin" => Ok(Role::Admin),
        "member" => Ok(Role::Member),
        other => Err(StoreError::Corrupt(format!("unknown role {other:?}"))),
    }
}

fn msg_values(m: &MsgRecord) -> Vec<CqlValue> {
    let meta = Meta {
        target: m.target,
        reply_to: m.reply_to,
        edited_at: m.edited_at,
        deleted: m.deleted,
        reactions: m.reactions.iter().map(|r| (r.user.clone(), r.emoji.clone())).collect(),
        edits: m.edits.clone(),
        media: m.media.as_deref().cloned(),
    };
    // Most messages have none: an empty string, not `{}`, costs the row the least.
    let meta = if meta == Meta::default() { String::new() } else { serde_json::to_string(&meta).expect("meta always serializes") };
    vec![big(m.id), big(m.seq), t(&m.from), t(&m.cmid), t(&m.body), t(kind_name(m.kind)), big(m.ts), t(&m.conv), t(&meta)]
}

fn msg_of(r: MsgRow) -> Result<MsgRecord, StoreError> {
    let (id, seq, from, cmid, body, kind, ts, conv, meta) = r;
    let meta: Meta = match meta.as_deref() {
        None | Some("") => Meta::default(),
        Some(m) => serde_json::from_str(m).map_err(|e| StoreError::Corrupt(format!("message meta: {e}")))?,
    };
    Ok(MsgRecord {
        conv,
        id: id as u64,
        seq: seq as u64,
        from,
        cmid,
        body,
        kind: kind_of(&kind)?,
        ts: ts as u64,
        target: meta.target,
        reply_to: meta.reply_to,
        edited_at: meta.edited_at,
        deleted: meta.deleted,
        reactions: meta.reactions.into_iter().map(|(user, emoji)| Reaction { user, emoji }).collect(),
        edits: meta.edits,
        media: meta.media.map(Box::new),
    })
}

/// Rows a batch touches, so only the last write to each is sent (see the module comment).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum RowKey {
    Member(String, String),
    Former(String, String),
    Push(u64, String),
    Other(usize),
}

/// The last write to each row, remembered with when it was made so the batch keeps fjall's order.
#[derive(Default)]
struct Writes<'a> {
    rows: BTreeMap<RowKey, (usize, &'a PreparedStatement, Vec<CqlValue>)>,
    made: usize,
}

impl<'a> Writes<'a> {
    fn put(&mut self, key: RowKey, stmt: &'a PreparedStatement, values: Vec<CqlValue>) {
        self.made += 1;
        self.rows.insert(key, (self.made, stmt, values));
    }

    fn in_order(self) -> Vec<(&'a PreparedStatement, Vec<CqlValue>)> {
        let mut list: Vec<_> = self.rows.into_values().collect();
        list.sort_by_key(|w| w.0);
        list.into_iter().map(|(_, s, v)| (s, v)).collect()
    }
}

impl MessageStore for ScyllaStore {
    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        let st = &self.st;
        let node = CqlValue::Int(self.node);
        let mut unique = 0;
        let mut other = || {
            unique += 1;
            RowKey::Other(unique)
        };
        let mut w = Writes::default();
        for m in &batch.messages {
            w.put(other(), &st.insert_message, msg_values(m));
            w.put(other(), &st.insert_cmid, vec![t(&m.conv), t(&m.from), t(&m.cmid), big(m.seq)]);
            let mut v = vec![node.clone()];
            v.extend(msg_values(m));
            w.put(other(), &st.insert_index, v);
        }
        for m in &batch.updates {
            w.put(other(), &st.insert_message, msg_values(m));
            if shardchat_storage::reindexed(m) {
                let mut v = vec![node.clone()];
                v.extend(msg_values(m));
                w.put(other(), &st.insert_index, v);
            }
        }
        for Joined { conv, member: m } in &batch.members {
            let v = vec![t(conv), t(&m.user), t(role_name(m.role)), big(m.joined)];
            w.put(RowKey::Member(conv.clone(), m.user.clone()), &st.insert_member, v);
            w.put(other(), &st.insert_user_conv, vec![t(&m.user), t(conv)]);
            w.put(RowKey::Former(conv.clone(), m.user.clone()), &st.delete_former, vec![t(conv), t(&m.user)]);
        }
        for Left { conv, user, seq: left } in &batch.removed {
            w.put(RowKey::Member(conv.clone(), user.clone()), &st.delete_member, vec![t(conv), t(user)]);
            w.put(RowKey::Former(conv.clone(), user.clone()), &st.insert_former, vec![t(conv), t(user), big(*left)]);
        }
        for Named { conv, name } in &batch.names {
            w.put(other(), &st.insert_name, vec![t(conv), t(name)]);
        }
        for LastSeen { user, unix_ms: ms } in &batch.last_seen {
            w.put(other(), &st.insert_last_seen, vec![t(user), big(*ms)]);
        }
        for e in &batch.push {
            let v = vec![node.clone(), big(e.id), t(&e.user), t(&e.conv), t(&e.from), big(e.ts)];
            w.put(RowKey::Push(e.id, e.user.clone()), &st.insert_push, v);
        }
        for e in &batch.push_done {
            // The entry is in the partition of the node that wrote it, the message's owner node
            // (it made the id); the recipient's home may be another node.
            let owner = CqlValue::Int(i32::from(shardchat_codec::id_node(e.id)));
            w.put(RowKey::Push(e.id, e.user.clone()), &st.delete_push, vec![owner, big(e.id), t(&e.user)]);
        }
        for Watermark { conv, user, kind, seq } in &batch.watermarks {
            w.put(other(), &st.insert_watermark, vec![t(conv), t(user), t(receipt_name(*kind)), big(*seq)]);
        }
        self.batch(w.in_order())
    }

    fn last_seq(&self, conv: &str) -> Result<u64, StoreError> {
        Ok(self.one::<(i64,)>(&self.st.last_seq, vec![t(conv)])?.map(|r| r.0 as u64).unwrap_or(0))
    }

    fn find_cmid(&self, conv: &str, from: &str, cmid: &str) -> Result<Option<MsgRecord>, StoreError> {
        let Some((seq,)) = self.one::<(i64,)>(&self.st.cmid_seq, vec![t(conv), t(from), t(cmid)])? else { return Ok(None) };
        match self.one::<MsgRow>(&self.st.message_at, vec![t(conv), CqlValue::BigInt(seq)])? {
            Some(r) => msg_of(r).map(Some),
            None => Err(StoreError::Corrupt(format!("a dedup entry names seq {seq}, which holds no message"))),
        }
    }

    fn messages_after(&self, conv: &str, after: u64, n: usize) -> Result<Vec<MsgRecord>, StoreError> {
        self.all::<MsgRow>(&self.st.messages_after, vec![t(conv), big(after), limit(n)])?.into_iter().map(msg_of).collect()
    }

    fn messages_before(&self, conv: &str, before: Option<u64>, n: usize) -> Result<Vec<MsgRecord>, StoreError> {
        let rows = match before {
            None => self.all::<MsgRow>(&self.st.messages_latest, vec![t(conv), limit(n)])?,
            Some(b) => self.all::<MsgRow>(&self.st.messages_before, vec![t(conv), big(b), limit(n)])?,
        };
        rows.into_iter().map(msg_of).collect()
    }

    fn members(&self, conv: &str) -> Result<Vec<Membership>, StoreError> {
        self.all::<(String, String, i64)>(&self.st.members, vec![t(conv)])?
            .into_iter()
            .map(|(user, role, joined)| Ok(Membership { user, role: role_of(&role)?, joined: joined as u64 }))
            .collect()
    }

    fn left_at(&self, conv: &str, user: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.one::<(i64,)>(&self.st.left_at, vec![t(conv), t(user)])?.map(|r| r.0 as u64))
    }

    fn conv_name(&self, conv: &str) -> Result<Option<String>, StoreError> {
        Ok(self.one::<(String,)>(&self.st.conv_name, vec![t(conv)])?.map(|r| r.0))
    }

    fn watermarks(&self, conv: &str) -> Result<Vec<(String, ReceiptKind, u64)>, StoreError> {
        self.all::<(String, String, i64)>(&self.st.watermarks, vec![t(conv)])?
            .into_iter()
            .map(|(user, kind, seq)| Ok((user, receipt_of(&kind)?, seq as u64)))
            .collect()
    }

    fn last_seen(&self, user: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.one::<(i64,)>(&self.st.last_seen, vec![t(user)])?.map(|r| r.0 as u64))
    }

    fn push_pending(&self, n: usize) -> Result<Vec<PushEntry>, StoreError> {
        Ok(self
            .all::<(i64, String, String, String, i64)>(&self.st.push_pending, vec![CqlValue::Int(self.node), limit(n)])?
            .into_iter()
            .map(|(id, user, conv, from, ts)| PushEntry { user, conv, from, id: id as u64, ts: ts as u64 })
            .collect())
    }

    fn push_done(&self, entries: &[PushEntry]) -> Result<(), StoreError> {
        let node = CqlValue::Int(self.node);
        self.batch(entries.iter().map(|e| (&self.st.delete_push, vec![node.clone(), big(e.id), t(&e.user)])).collect())
    }

    fn index_pending(&self, n: usize) -> Result<Vec<MsgRecord>, StoreError> {
        self.all::<MsgRow>(&self.st.index_pending, vec![CqlValue::Int(self.node), limit(n)])?.into_iter().map(msg_of).collect()
    }

    fn index_done(&self, ids: &[u64]) -> Result<(), StoreError> {
        let node = CqlValue::Int(self.node);
        self.batch(ids.iter().map(|id| (&self.st.delete_index, vec![node.clone(), big(*id)])).collect())
    }

    fn user_convs(&self, user: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.all::<(String,)>(&self.st.user_convs, vec![t(user)])?.into_iter().map(|r| r.0).collect())
    }

    fn watermark(&self, conv: &str, user: &str, kind: ReceiptKind) -> Result<u64, StoreError> {
        Ok(self.one::<(i64,)>(&self.st.watermark, vec![t(conv), t(user), t(receipt_name(kind))])?.map(|r| r.0 as u64).unwrap_or(0))
    }

    fn fence_node(&self, node: u16, incarnation: u64) -> Result<(), StoreError> {
        self.batch(vec![(&self.st.insert_fence, vec![CqlValue::Int(i32::from(node)), big(incarnation)])])
    }

    fn node_fence(&self, node: u16) -> Result<u64, StoreError> {
        Ok(self.one::<(i64,)>(&self.st.node_fence, vec![CqlValue::Int(i32::from(node))])?.map_or(0, |r| r.0 as u64))
    }
}

#[cfg(test)]
mod tests;
