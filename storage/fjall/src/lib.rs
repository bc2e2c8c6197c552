//! The embedded backend: one fjall database (an LSM tree per keyspace, one shared journal) in the
//! data directory. Batches are written with the journal's automatic persistence turned off and
//! made durable by one `persist(SyncData)` (an `fdatasync` of the journal) per group commit.

pub mod group;
mod keys;
pub mod nice;
mod queue_floor;
pub mod record;
mod undurable;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use group::GroupCommit;
use shardchat_codec::{MsgRecord, ReceiptKind, Role};
use shardchat_storage::{Joined, LastSeen, Left, Membership, MessageStore, Named, PushEntry, StoreError, Watermark, WriteBatch};
use std::path::PathBuf;
use std::time::Duration;

/// How to open the embedded store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub dir: PathBuf,
    /// How long a group-commit leader waits for more writers before its fsync (0: none; the
    /// fsync itself is the batching window).
    pub commit_interval: Duration,
    /// Niceness added to fjall's background threads (flushes, compactions), so that their bursts
    /// take idle CPU before the shards' (0: the engine's own; see [`nice`]).
    pub maintenance_nice: u8,
}

impl StoreConfig {
    /// The store in `dir`: no commit interval, background threads at the caller's niceness (the
    /// engine's configuration raises it; see `store_maintenance_nice`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StoreConfig { dir: dir.into(), commit_interval: Duration::ZERO, maintenance_nice: 0 }
    }
}

pub struct FjallStore {
    db: Database,
    messages: Keyspace,
    dedup: Keyspace,
    members: Keyspace,
    user_convs: Keyspace,
    watermarks: Keyspace,
    former: Keyspace,
    names: Keyspace,
    presence: Keyspace,
    push: Keyspace,
    index_queue: Keyspace,
    /// Cluster fences: node (u16 BE) incarnation (u64 BE) → empty.
    fences: Keyspace,
    pub group: GroupCommit,
    /// Messages written but not yet fsynced: reads stop short of them (see `undurable`).
    undurable: undurable::Undurable,
    /// Where a scan of the index queue starts (see `queue_floor`).
    index_floor: queue_floor::QueueFloor,
}

fn io(e: fjall::Error) -> StoreError {
    match e {
        // fjall after a failed journal write or fsync: "let the application crash and recover".
        fjall::Error::Poisoned => StoreError::Fatal("a journal write or fsync failed earlier (disk full or failing)".into()),
        e => StoreError::Io(e.to_string()),
    }
}

fn kind_byte(k: ReceiptKind) -> u8 {
    match k {
        ReceiptKind::Delivered => 1,
        ReceiptKind::Read => 2,
    }
}

fn kind_of(b: u8) -> Result<ReceiptKind, StoreError> {
    match b {
        1 => Ok(ReceiptKind::Delivered),
        2 => Ok(ReceiptKind::Read),
        _ => Err(StoreError::Corrupt(format!("watermark kind {b}"))),
    }
}

/// `members` values: role byte, then the joined seq (u64 BE).
fn membership_value(m: &Membership) -> Vec<u8> {
    let mut v = vec![role_byte(m.role)];
    v.extend_from_slice(&m.joined.to_be_bytes());
    v
}

/// `push`: id (u64 BE) 0x00 user, so a scan is oldest first; value: conv 0x00 from 0x00 ts (BE).
fn push_key(e: &PushEntry) -> Vec<u8> {
    let mut k = e.id.to_be_bytes().to_vec();
    k.push(keys::SEP);
    k.extend_from_slice(e.user.as_bytes());
    k
}

fn push_value(e: &PushEntry) -> Vec<u8> {
    let mut v = keys::pair(&e.conv, &e.from);
    v.push(keys::SEP);
    v.extend_from_slice(&e.ts.to_be_bytes());
    v
}

fn push_decode(k: &[u8], v: &[u8]) -> Result<PushEntry, StoreError> {
    let bad = || StoreError::Corrupt("push entry".into());
    let id = u64::from_be_bytes(k.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let user = utf8(k.get(9..).ok_or_else(bad)?)?;
    let mut parts = v.splitn(3, |b| *b == keys::SEP);
    let conv = utf8(parts.next().ok_or_else(bad)?)?;
    let from = utf8(parts.next().ok_or_else(bad)?)?;
    let ts = be_u64(parts.next().ok_or_else(bad)?)?;
    Ok(PushEntry { user, conv, from, id, ts })
}

fn utf8(b: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(b.to_vec()).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn role_byte(r: Role) -> u8 {
    match r {
        Role::Admin => 1,
        Role::Member => 2,
    }
}

fn decode_record(bytes: &[u8]) -> Result<MsgRecord, StoreError> {
    record::decode(bytes)
}

fn encode_record(r: &MsgRecord) -> Vec<u8> {
    record::encode(r)
}

fn be_u64(v: &[u8]) -> Result<u64, StoreError> {
    v.try_into().map(u64::from_be_bytes).map_err(|_| StoreError::Corrupt("bad u64 value".into()))
}

impl FjallStore {
    pub fn open(cfg: &StoreConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| StoreError::Io(format!("{}: {e}", cfg.dir.display())))?;
        // Durability is ours to decide: batches reach the journal buffer and one persist per
        // group commit fsyncs them.
        // fjall's worker pool starts inside `open` and inherits the opening thread's niceness.
        let open = || Database::builder(&cfg.dir).manual_journal_persist(true).open();
        let db = nice::open_at_nice(cfg.maintenance_nice, open)
            .map_err(|e| StoreError::Io(format!("lowering the store's background threads' priority: {e}")))?
            .map_err(io)?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default).map_err(io);
        Ok(FjallStore {
            messages: ks("messages")?,
            dedup: ks("dedup")?,
            members: ks("members")?,
            user_convs: ks("user_convs")?,
            watermarks: ks("watermarks")?,
            former: ks("former")?,
            names: ks("names")?,
            presence: ks("presence")?,
            push: ks("push")?,
            index_queue: ks("index_queue")?,
            fences: ks("fences")?,
            group: GroupCommit::new(cfg.commit_interval),
            undurable: Default::default(),
            index_floor: Default::default(),
            db,
        })
    }

    /// Makes everything written so far durable (used at shutdown; commits already are).
    pub fn persist(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncAll).map_err(io)
    }

    /// A group commit's sync: the journal's data, by `fdatasync`. `fsync` would also write the
    /// inode for its modification time on every commit (an extra write, and on a journaled ext4
    /// a journal commit), which `fdatasync` writes only when reading the data back needs it: when
    /// an append allocated blocks (fjall's `set_len` preallocation leaves the first 64 MiB of a
    /// journal a hole) or moved the end of the file (past those 64 MiB, until the journal rotates
    /// at the next memtable flush). See ARCHITECTURE.md, group commit. The shutdown flush
    /// ([`FjallStore::persist`]) keeps `fsync`.
    fn sync_journal(&self) -> Result<(), String> {
        self.db.persist(PersistMode::SyncData).map_err(|e| e.to_string())
    }

    /// The record an index queue entry stands for: the message it points at, as stored now (the
    /// latest edit or delete, which re-queues the same id anyway), or, in a data directory from
    /// before entries were pointers, the copy the entry holds.
    fn queued_record(&self, entry: &[u8]) -> Result<MsgRecord, StoreError> {
        let Some(key) = keys::pointed_message(entry) else { return decode_record(entry) };
        match self.messages.get(key).map_err(io)? {
            Some(v) => decode_record(&v),
            // Messages are never removed, and an entry is written in its message's batch.
            None => Err(StoreError::Corrupt("an index queue entry names a message that is not stored".into())),
        }
    }

    fn message(&self, conv: &str, seq: u64) -> Result<Option<MsgRecord>, StoreError> {
        match self.messages.get(keys::message(conv, seq)).map_err(io)? {
            Some(v) => decode_record(&v).map(Some),
            None => Ok(None),
        }
    }
}

impl MessageStore for FjallStore {
    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let writer = self.group.begin_write();
        let mut b = self.db.batch();
        for m in &batch.messages {
            let key = keys::message(&m.conv, m.seq);
            b.insert(&self.index_queue, m.id.to_be_bytes(), keys::index_pointer(&key));
            b.insert(&self.messages, key, encode_record(m));
            b.insert(&self.dedup, keys::dedup(&m.conv, &m.from, &m.cmid), m.seq.to_be_bytes());
        }
        for m in &batch.updates {
            let key = keys::message(&m.conv, m.seq);
            if shardchat_storage::reindexed(m) {
                b.insert(&self.index_queue, m.id.to_be_bytes(), keys::index_pointer(&key));
            }
            b.insert(&self.messages, key, encode_record(m));
        }
        for Joined { conv, member: m } in &batch.members {
            b.insert(&self.members, keys::pair(conv, &m.user), membership_value(m));
            b.insert(&self.user_convs, keys::pair(&m.user, conv), []);
            b.remove(&self.former, keys::pair(conv, &m.user));
        }
        for Left { conv, user, seq: left } in &batch.removed {
            b.remove(&self.members, keys::pair(conv, user));
            b.insert(&self.former, keys::pair(conv, user), left.to_be_bytes());
        }
        for Named { conv, name } in &batch.names {
            b.insert(&self.names, conv.as_bytes(), name.as_bytes());
        }
        for LastSeen { user, unix_ms: ms } in &batch.last_seen {
            b.insert(&self.presence, user.as_bytes(), ms.to_be_bytes());
        }
        for e in &batch.push {
            b.insert(&self.push, push_key(e), push_value(e));
        }
        for e in &batch.push_done {
            b.remove(&self.push, push_key(e));
        }
        for Watermark { conv, user, kind, seq } in &batch.watermarks {
            b.insert(&self.watermarks, keys::watermark(conv, user, kind_byte(*kind)), seq.to_be_bytes());
        }
        // Visible from here on, durable only after the fsync: reads must not show it before.
        self.undurable.begin(batch.messages.iter().chain(&batch.updates));
        // After the registration, before the insert: the order `queue_floor` relies on.
        if let Some(lowest) =
            batch.messages.iter().chain(batch.updates.iter().filter(|m| shardchat_storage::reindexed(m))).map(|m| m.id).min()
        {
            self.index_floor.queued(lowest);
        }
        if let Err(e) = b.commit() {
            self.undurable.end(batch.messages.iter().chain(&batch.updates));
            return Err(io(e));
        }
        writer.wait_durable(|| self.sync_journal()).map_err(|e| {
            self.undurable.keep_hidden();
            StoreError::Fatal(e)
        })?;
        self.undurable.end(batch.messages.iter().chain(&batch.updates));
        Ok(())
    }

    fn last_seq(&self, conv: &str) -> Result<u64, StoreError> {
        match self.messages.prefix(keys::prefix(conv)).next_back() {
            Some(g) => {
                let k = g.key().map_err(io)?;
                keys::seq_of(&k).ok_or_else(|| StoreError::Corrupt("short message key".into()))
            }
            None => Ok(0),
        }
    }

    fn find_cmid(&self, conv: &str, from: &str, cmid: &str) -> Result<Option<MsgRecord>, StoreError> {
        match self.dedup.get(keys::dedup(conv, from, cmid)).map_err(io)? {
            Some(v) => {
                let seq = be_u64(&v)?;
                let rec = self.message(conv, seq)?;
                rec.map(Some).ok_or_else(|| StoreError::Corrupt(format!("a dedup entry names seq {seq}, which holds no message")))
            }
            None => Ok(None),
        }
    }

    fn messages_after(&self, conv: &str, after: u64, limit: usize) -> Result<Vec<MsgRecord>, StoreError> {
        let upto = self.undurable.first_seq(conv).saturating_sub(1);
        if upto <= after {
            return Ok(Vec::new());
        }
        let start = keys::message(conv, after.saturating_add(1));
        let end = keys::message(conv, upto);
        self.messages.range(start..=end).take(limit).map(|g| decode_record(&g.value().map_err(io)?)).collect()
    }

    fn messages_before(&self, conv: &str, before: Option<u64>, limit: usize) -> Result<Vec<MsgRecord>, StoreError> {
        let before = before.unwrap_or(u64::MAX).min(self.undurable.first_seq(conv));
        if before <= 1 {
            return Ok(Vec::new());
        }
        let start = keys::message(conv, 1);
        let end = keys::message(conv, before - 1);
        self.messages.range(start..=end).rev().take(limit).map(|g| decode_record(&g.value().map_err(io)?)).collect()
    }

    fn members(&self, conv: &str) -> Result<Vec<Membership>, StoreError> {
        let p = keys::prefix(conv);
        self.members
            .prefix(&p)
            .map(|g| {
                let (k, v) = g.into_inner().map_err(io)?;
                let user = utf8(&k[p.len()..])?;
                let role = if v.first() == Some(&1) { Role::Admin } else { Role::Member };
                let joined = v.get(1..9).map(be_u64).transpose()?.unwrap_or(0);
                Ok(Membership { user, role, joined })
            })
            .collect()
    }

    fn left_at(&self, conv: &str, user: &str) -> Result<Option<u64>, StoreError> {
        self.former.get(keys::pair(conv, user)).map_err(io)?.map(|v| be_u64(&v)).transpose()
    }

    fn conv_name(&self, conv: &str) -> Result<Option<String>, StoreError> {
        self.names.get(conv.as_bytes()).map_err(io)?.map(|v| utf8(&v)).transpose()
    }

    fn watermarks(&self, conv: &str) -> Result<Vec<(String, ReceiptKind, u64)>, StoreError> {
        let p = keys::prefix(conv);
        self.watermarks
            .prefix(&p)
            .map(|g| {
                let (k, v) = g.into_inner().map_err(io)?;
                // conv 0x00 user 0x00 kind
                let rest = &k[p.len()..];
                let (user, kind) =
                    rest.split_at(rest.len().checked_sub(2).ok_or_else(|| StoreError::Corrupt("short watermark key".into()))?);
                Ok((utf8(user)?, kind_of(kind[1])?, be_u64(&v)?))
            })
            .collect()
    }

    fn push_pending(&self, limit: usize) -> Result<Vec<PushEntry>, StoreError> {
        self.push
            .iter()
            .map(|g| {
                let (k, v) = g.into_inner().map_err(io)?;
                push_decode(&k, &v)
            })
            // Not owed until its message is durable.
            .filter(|e| e.as_ref().map_or(true, |e| !self.undurable.hides(e.id)))
            .take(limit)
            .collect()
    }

    fn push_done(&self, entries: &[PushEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let writer = self.group.begin_write();
        let mut b = self.db.batch();
        for e in entries {
            b.remove(&self.push, push_key(e));
        }
        b.commit().map_err(io)?;
        writer.wait_durable(|| self.sync_journal()).map_err(StoreError::Fatal)
    }

    fn index_pending(&self, limit: usize) -> Result<Vec<MsgRecord>, StoreError> {
        // From the floor, past the tombstones of what was indexed and cleared (`queue_floor`).
        let scan = self.index_floor.scan();
        let registered = self.undurable.lowest_id().unwrap_or(u64::MAX);
        let mut first = u64::MAX;
        let mut out = Vec::new();
        for g in self.index_queue.range(scan.from.to_be_bytes()..) {
            let (k, v) = g.into_inner().map_err(io)?;
            let id = be_u64(&k)?;
            if first == u64::MAX {
                first = id;
            }
            // Not searchable until durable.
            if self.undurable.hides(id) {
                continue;
            }
            out.push(self.queued_record(&v)?);
            if out.len() == limit {
                break;
            }
        }
        scan.done(first, registered);
        Ok(out)
    }

    fn index_done(&self, ids: &[u64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut b = self.db.batch();
        for id in ids {
            b.remove(&self.index_queue, id.to_be_bytes());
        }
        // Not fsynced here: a lost removal only re-indexes a message, which is idempotent.
        b.commit().map_err(io)
    }

    fn last_seen(&self, user: &str) -> Result<Option<u64>, StoreError> {
        self.presence.get(user.as_bytes()).map_err(io)?.map(|v| be_u64(&v)).transpose()
    }

    fn user_convs(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let p = keys::prefix(user);
        self.user_convs
            .prefix(&p)
            .map(|g| {
                let k = g.key().map_err(io)?;
                String::from_utf8(k[p.len()..].to_vec()).map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    fn watermark(&self, conv: &str, user: &str, kind: ReceiptKind) -> Result<u64, StoreError> {
        match self.watermarks.get(keys::watermark(conv, user, kind_byte(kind))).map_err(io)? {
            Some(v) => be_u64(&v),
            None => Ok(0),
        }
    }

    fn fence_node(&self, node: u16, incarnation: u64) -> Result<(), StoreError> {
        let mut k = node.to_be_bytes().to_vec();
        k.extend_from_slice(&incarnation.to_be_bytes());
        let writer = self.group.begin_write();
        self.fences.insert(k, []).map_err(io)?;
        writer.wait_durable(|| self.sync_journal()).map_err(StoreError::Fatal)
    }

    fn node_fence(&self, node: u16) -> Result<u64, StoreError> {
        match self.fences.prefix(node.to_be_bytes()).next_back() {
            Some(g) => be_u64(&g.key().map_err(io)?[2..]),
            None => Ok(0),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.persist()
    }
}

#[cfg(test)]
mod tests;
