//! Full-text search over messages (tantivy), fed asynchronously from the store's index queue.
//!
//! Every committed message enters the store's index queue in the same batch as the message. An
//! indexer thread drains the queue into the tantivy index (upsert by message id, so indexing twice
//! is harmless), commits, then removes what it indexed: after a crash the queue still holds what
//! the index lacks, and the index catches up. Seconds of lag are fine. Queries are always limited
//! to conversations the asking user may read.

use shardchat_codec::MsgRecord;
use shardchat_storage::MessageStore;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tantivy::collector::TopDocs;
use tantivy::query::{Bm25StatisticsProvider, BooleanQuery, Occur, Query, QueryParser, TermSetQuery};
use tantivy::schema::{Field, Schema, Value, FAST, INDEXED, STORED, STRING, TEXT};
use tantivy::{doc, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

/// Messages indexed per commit of the index.
const INDEX_BATCH_MAX: usize = 5_000;
/// How often the indexer looks at the queue when it is empty.
const INDEX_IDLE_MS: u64 = 200;
/// Least time between two commits of the index, unless a full batch waits. Each commit makes a
/// segment (and merges follow), so committing whatever had arrived as fast as it could cost
/// half the engine's CPU at 1,000 messages a second (two thirds of it in tantivy's threads);
/// paced, a message is still searchable within about a second, as the contract says.
const INDEX_COMMIT_INTERVAL_MS: u64 = 500;
/// The indexer's memory budget (tantivy's minimum is 15 MB per thread).
const INDEX_WRITER_BYTES: usize = 32 * 1024 * 1024;

struct Fields {
    id: Field,
    conv: Field,
    seq: Field,
    from: Field,
    body: Field,
    ts: Field,
}

pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    f: Fields,
}

/// One search result.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Hit {
    pub score: f32,
    pub conv: String,
    #[serde(serialize_with = "as_string", deserialize_with = "from_string")]
    pub id: u64,
    pub seq: u64,
    pub from: String,
    pub body: String,
    pub ts: u64,
}

fn as_string<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn from_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

impl SearchIndex {
    pub fn open(dir: &Path) -> Result<SearchIndex, String> {
        let mut b = Schema::builder();
        let f = Fields {
            id: b.add_u64_field("id", INDEXED | STORED | FAST),
            conv: b.add_text_field("conv", STRING | STORED),
            seq: b.add_u64_field("seq", STORED),
            from: b.add_text_field("from", STRING | STORED),
            body: b.add_text_field("body", TEXT | STORED),
            ts: b.add_u64_field("ts", STORED),
        };
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mmap = tantivy::directory::MmapDirectory::open(dir).map_err(|e| format!("search index: {e}"))?;
        let index = Index::open_or_create(mmap, b.build()).map_err(|e| format!("search index: {e}"))?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(|e| format!("search index: {e}"))?;
        Ok(SearchIndex { index, reader, f })
    }

    /// Drains the store's index queue until `shutdown`.
    pub fn run_indexer(self: Arc<Self>, store: Arc<dyn MessageStore>, shutdown: Arc<AtomicBool>) {
        let mut writer: IndexWriter = match self.index.writer_with_num_threads(1, INDEX_WRITER_BYTES) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "search indexer could not start; search stays empty");
                return;
            }
        };
        let mut last_commit: Option<std::time::Instant> = None;
        // Whether what the queue holds may be in the index already, so each message must replace
        // its earlier copy (a delete by id before the add, which costs a term lookup in every
        // segment at commit: a third of the indexer's time at 10,000 messages a second). True for
        // what the queue held at start (indexed before a crash, never cleared) and after a batch
        // failed to index or to clear; false once the queue was seen empty, since then every
        // message in it entered after the last one indexed.
        let mut upsert = true;
        while !shutdown.load(Ordering::Relaxed) {
            // Paced: a batch that is not full waits for the interval since the last commit.
            if let Some(wait) = last_commit.and_then(|t| Duration::from_millis(INDEX_COMMIT_INTERVAL_MS).checked_sub(t.elapsed())) {
                std::thread::sleep(wait);
            }
            let batch = match store.index_pending(INDEX_BATCH_MAX) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the index queue");
                    Vec::new()
                }
            };
            if batch.is_empty() {
                upsert = false;
                std::thread::sleep(Duration::from_millis(INDEX_IDLE_MS));
                continue;
            }
            // A full batch means more waits: the next one goes at once.
            last_commit = (batch.len() < INDEX_BATCH_MAX).then(std::time::Instant::now);
            if let Err(e) = self.index_batch(&mut writer, &batch, upsert) {
                // Some of it may be in the writer (and in its next commit): retry as upserts.
                upsert = true;
                tracing::warn!(error = %e, "indexing failed; will retry");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            let ids: Vec<u64> = batch.iter().map(|m| m.id).collect();
            if let Err(e) = store.index_done(&ids) {
                // Indexed but still queued: it comes again, and must replace itself.
                upsert = true;
                tracing::warn!(error = %e, "clearing the index queue");
            }
        }
    }

    /// Indexes `batch` and commits. With `upsert`, each message replaces any earlier copy of
    /// itself (indexed before a crash, or by a batch whose clearing failed), so none is found twice.
    /// An edited message always replaces its earlier text, and a deleted one only leaves.
    /// Only messages proper are indexed: not system messages, not the events about messages
    /// (an edit's new text is found through the message it edits).
    fn index_batch(&self, writer: &mut IndexWriter, batch: &[MsgRecord], upsert: bool) -> tantivy::Result<()> {
        for m in batch {
            if upsert || shardchat_storage::reindexed(m) {
                writer.delete_term(Term::from_field_u64(self.f.id, m.id));
            }
            if !m.kind.is_content() || m.deleted {
                continue;
            }
            writer.add_document(doc!(
                self.f.id => m.id,
                self.f.conv => m.conv.as_str(),
                self.f.seq => m.seq,
                self.f.from => m.from.as_str(),
                self.f.body => m.body.as_str(),
                self.f.ts => m.ts,
            ))?;
        }
        writer.commit()?;
        self.reader.reload()
    }

    /// Ranked hits for `q` within `convs` (conversation, highest seq the user may read), skipping
    /// `offset`. What a former member may not read (past where they left) is left out before the
    /// page is cut, so a page is short only at the end of the results.
    pub fn search(&self, q: &str, convs: &[(String, u64)], limit: usize, offset: usize) -> Result<Vec<Hit>, String> {
        Ok(self.ranked(q, convs, offset + limit, None)?.into_iter().skip(offset).take(limit).collect())
    }

    /// The query `q` parses to (the text, lenient: a syntax error searches what it can).
    fn parse(&self, q: &str) -> Box<dyn Query> {
        QueryParser::for_index(&self.index, vec![self.f.body]).parse_query_lenient(q).0
    }

    /// What BM25 ranks `q` by, in this index: the documents, the tokens of each field the query
    /// names, and how many documents hold each of its terms. Summed over the nodes of a cluster
    /// ([`Stats::add`]), they rank every node's hits as one index holding them all would.
    pub fn stats(&self, q: &str) -> Result<Stats, String> {
        let query = self.parse(q);
        let searcher = self.reader.searcher();
        let mut stats = Stats { docs: searcher.total_num_docs().map_err(|e| e.to_string())?, ..Default::default() };
        let mut terms = Vec::new();
        query.query_terms(&mut |t, _| terms.push(t.clone()));
        for t in terms {
            let field = self.index.schema().get_field_name(t.field()).to_string();
            if let std::collections::btree_map::Entry::Vacant(e) = stats.tokens.entry(field) {
                e.insert(searcher.total_num_tokens(t.field()).map_err(|e| e.to_string())?);
            }
            stats.terms.insert(term_key(&t), searcher.doc_freq(&t).map_err(|e| e.to_string())?);
        }
        Ok(stats)
    }

    /// The best `want` hits for `q` that the caller may read, best first, ranked by `global`
    /// statistics when given (a cluster's, see [`SearchIndex::stats`]) or this index's own.
    pub fn ranked(&self, q: &str, convs: &[(String, u64)], want: usize, global: Option<&Stats>) -> Result<Vec<Hit>, String> {
        if convs.is_empty() || want == 0 {
            return Ok(Vec::new());
        }
        let text = self.parse(q);
        let within: Box<dyn Query> = Box::new(TermSetQuery::new(convs.iter().map(|(c, _)| Term::from_field_text(self.f.conv, c))));
        let query = BooleanQuery::new(vec![(Occur::Must, text), (Occur::Must, within)]);
        let searcher = self.reader.searcher();
        let ranking = global.map(|g| GlobalStats { stats: g, schema: self.index.schema() });
        let top = |fetch: usize| {
            let collector = TopDocs::with_limit(fetch).order_by_score();
            match &ranking {
                Some(r) => searcher.search_with_statistics_provider(&query, &collector, r),
                None => searcher.search(&query, &collector),
            }
            .map_err(|e| e.to_string())
        };
        let upto: std::collections::HashMap<&str, u64> = convs.iter().map(|(c, u)| (c.as_str(), *u)).collect();
        let bounded = convs.iter().any(|(_, u)| *u != u64::MAX);
        // Ranked candidates, then the readable ones among them. With no former membership every
        // candidate is readable; otherwise more are fetched, twice as many each round, until
        // `want` are readable or the candidates run out.
        let mut fetch = want;
        loop {
            let candidates = top(fetch)?;
            let exhausted = candidates.len() < fetch || fetch >= SEARCH_CANDIDATES_MAX;
            let mut readable = Vec::with_capacity(want.min(candidates.len()));
            for (score, addr) in candidates {
                let d: TantivyDocument = searcher.doc(addr).map_err(|e| e.to_string())?;
                let hit = self.hit(score, &d);
                if upto.get(hit.conv.as_str()).is_some_and(|u| hit.seq <= *u) {
                    readable.push(hit);
                }
            }
            if !bounded || readable.len() >= want || exhausted {
                readable.truncate(want);
                return Ok(readable);
            }
            fetch = (fetch * 2).min(SEARCH_CANDIDATES_MAX);
        }
    }

    fn hit(&self, score: f32, d: &TantivyDocument) -> Hit {
        let u = |f: Field| d.get_first(f).and_then(|v| v.as_u64()).unwrap_or(0);
        let s = |f: Field| d.get_first(f).and_then(|v| v.as_str()).unwrap_or("").to_string();
        Hit {
            score,
            conv: s(self.f.conv),
            id: u(self.f.id),
            seq: u(self.f.seq),
            from: s(self.f.from),
            body: s(self.f.body),
            ts: u(self.f.ts),
        }
    }
}

/// What BM25 needs to rank a query's hits (see [`SearchIndex::stats`]): summed over a cluster's
/// indexes, it ranks as one index would.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub docs: u64,
    /// Field name → tokens in it, over every document.
    pub tokens: std::collections::BTreeMap<String, u64>,
    /// A term (its serialized bytes, hex) → documents holding it.
    pub terms: std::collections::BTreeMap<String, u64>,
}

impl Stats {
    /// Adds another index's statistics of the same query.
    pub fn add(&mut self, other: &Stats) {
        self.docs += other.docs;
        for (f, n) in &other.tokens {
            *self.tokens.entry(f.clone()).or_default() += n;
        }
        for (t, n) in &other.terms {
            *self.terms.entry(t.clone()).or_default() += n;
        }
    }
}

/// A term as the statistics name it: its field's number, then its value's type and bytes in hex
/// (the same on every node: they share the schema).
fn term_key(t: &Term) -> String {
    let value: String = t.serialized_value_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("{}:{:?}:{value}", t.field().field_id(), t.typ())
}

/// A cluster's statistics as tantivy's BM25 asks for them.
struct GlobalStats<'a> {
    stats: &'a Stats,
    schema: tantivy::schema::Schema,
}

impl Bm25StatisticsProvider for GlobalStats<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        Ok(self.stats.tokens.get(self.schema.get_field_name(field)).copied().unwrap_or(0))
    }
    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self.stats.docs)
    }
    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        Ok(self.stats.terms.get(&term_key(term)).copied().unwrap_or(0))
    }
}

/// Most ranked candidates one search looks through for a former member's readable ones (a page
/// past them is short: the bound of one search's work).
const SEARCH_CANDIDATES_MAX: usize = 100_000;

#[cfg(test)]
mod tests {
    use super::*;
    use shardchat_storage::conformance::rec;
    use shardchat_storage::WriteBatch;
    use shardchat_storage_mem::MemStore;

    fn hits(index: &SearchIndex, q: &str) -> usize {
        index.search(q, &[("g:1".to_string(), u64::MAX)], 100, 0).unwrap().len()
    }

    /// The indexer over `store` on a thread of its own, and what stops it.
    fn indexer(index: &Arc<SearchIndex>, store: &Arc<MemStore>) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
        let shutdown = Arc::new(AtomicBool::new(false));
        let (index, store, stop) = (index.clone(), store.clone(), shutdown.clone());
        (shutdown, std::thread::spawn(move || index.run_indexer(store, stop)))
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("{what}");
    }

    /// A message the indexer indexed but could not clear from the queue comes again and replaces
    /// itself: found once, never twice. (Once the queue was seen empty the indexer adds without
    /// the delete by id; it must go back to upserts when clearing fails.)
    #[test]
    fn a_batch_whose_clearing_failed_is_indexed_again_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(SearchIndex::open(dir.path()).unwrap());
        let store = Arc::new(MemStore::new());
        let (shutdown, indexer) = indexer(&index, &store);
        // The indexer finds the queue empty first (its first read is at once), then plain adds.
        std::thread::sleep(Duration::from_millis(100));
        store.faults.reads_held.store(true, Ordering::Release);
        let msgs: Vec<MsgRecord> = (1..=3).map(|seq| rec("g:1", seq, "a", &format!("c{seq}"))).collect();
        store.commit(&WriteBatch { messages: msgs, ..Default::default() }).unwrap();
        // Its next clearing fails, after the batch is indexed and committed.
        store.faults.fail_next_commits.store(1, Ordering::Release);
        store.faults.reads_held.store(false, Ordering::Release);
        wait_for("the queue is never cleared", || store.index_pending(10).unwrap().is_empty());
        assert_eq!(store.faults.fail_next_commits.load(Ordering::Acquire), 0, "the clearing failed once");
        for seq in 1..=3 {
            assert_eq!(hits(&index, &format!("\"body {seq}\"")), 1, "message {seq} is found once");
        }
        shutdown.store(true, Ordering::Release);
        indexer.join().unwrap();
    }

    /// A former member's hits past where they left are left out before the page is cut: every
    /// page but the last is full, and pages neither overlap nor skip.
    #[test]
    fn pages_are_full_whatever_a_former_member_may_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(SearchIndex::open(dir.path()).unwrap());
        let store = Arc::new(MemStore::new());
        // 30 matching messages; the caller left at seq 10, and the best-ranked ones (shortest
        // bodies) come after it.
        let msgs: Vec<MsgRecord> = (1..=30)
            .map(|seq| {
                let pad = if seq <= 10 { " and more words to rank it lower".repeat(3) } else { String::new() };
                MsgRecord { body: format!("needle {seq}{pad}"), ..rec("g:1", seq, "a", &format!("c{seq}")) }
            })
            .collect();
        store.commit(&WriteBatch { messages: msgs, ..Default::default() }).unwrap();
        let (shutdown, indexer) = indexer(&index, &store);
        wait_for("never indexed", || hits(&index, "needle") == 30);
        let former = [("g:1".to_string(), 10)];
        let mut seen = Vec::new();
        for page in 0..4 {
            let got = index.search("needle", &former, 3, page * 3).unwrap();
            let want = if page < 3 { 3 } else { 1 };
            assert_eq!(got.len(), want.min(10 - page * 3), "page {page}: {got:?}");
            assert!(got.iter().all(|h| h.seq <= 10), "page {page}: {got:?}");
            seen.extend(got.iter().map(|h| h.seq));
        }
        seen.sort();
        assert_eq!(seen, (1..=10).collect::<Vec<_>>(), "every readable hit once, on some page");
        // A member sees them all, paged the same way.
        assert_eq!(index.search("needle", &[("g:1".to_string(), u64::MAX)], 25, 20).unwrap().len(), 10);
        shutdown.store(true, Ordering::Release);
        indexer.join().unwrap();
    }

    /// Two indexes holding halves of the messages, ranked by their summed statistics and merged,
    /// give the order and the scores of one index holding them all: a cluster's search ranks as
    /// one node's would.
    #[test]
    fn split_indexes_ranked_by_summed_statistics_rank_as_one() {
        let words = ["apple", "banana", "cherry", "apple banana", "apple apple cherry", "date", "banana date apple"];
        let msgs: Vec<MsgRecord> = (1..=60)
            .map(|seq| {
                let w = words[(seq as usize * 7 + seq as usize / 3) % words.len()];
                MsgRecord { body: format!("{w} {}", "filler ".repeat(seq as usize % 5)), ..rec("g:1", seq, "a", &format!("c{seq}")) }
            })
            .collect();
        let index_of = |msgs: Vec<MsgRecord>| {
            let dir = tempfile::tempdir().unwrap();
            let index = SearchIndex::open(dir.path()).unwrap();
            let mut writer = index.index.writer_with_num_threads(1, INDEX_WRITER_BYTES).unwrap();
            index.index_batch(&mut writer, &msgs, false).unwrap();
            (dir, index)
        };
        let (_d1, whole) = index_of(msgs.clone());
        let (_d2, odd) = index_of(msgs.iter().filter(|m| m.seq % 2 == 1).cloned().collect());
        let (_d3, even) = index_of(msgs.iter().filter(|m| m.seq % 2 == 0).cloned().collect());
        let convs = [("g:1".to_string(), u64::MAX)];
        for q in ["apple", "banana cherry", "apple AND date", "\"apple banana\"", "filler"] {
            let mut global = odd.stats(q).unwrap();
            global.add(&even.stats(q).unwrap());
            assert_eq!(global, whole.stats(q).unwrap(), "{q}: the sum is the whole index's");
            let mut merged = odd.ranked(q, &convs, 20, Some(&global)).unwrap();
            merged.extend(even.ranked(q, &convs, 20, Some(&global)).unwrap());
            merged.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
            merged.truncate(20);
            let mut one = whole.ranked(q, &convs, 20, None).unwrap();
            one.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
            let key = |h: &Hit| (h.id, (h.score * 1e4).round() as i64);
            assert_eq!(merged.iter().map(key).collect::<Vec<_>>(), one.iter().map(key).collect::<Vec<_>>(), "{q}");
            assert!(!one.is_empty(), "{q} finds something");
        }
    }

    /// An edited message is found by its new text only, a deleted one not at all, and the events
    /// themselves (an edit's copy of the text, a reaction) are never hits.
    #[test]
    fn edits_replace_the_indexed_text_and_deletes_remove_it() {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(SearchIndex::open(dir.path()).unwrap());
        let store = Arc::new(MemStore::new());
        let (shutdown, indexer) = indexer(&index, &store);
        // Indexed first, and the queue seen empty, so the indexer is past its start-up upserts.
        let first = MsgRecord { body: "apple pie".into(), ..rec("g:1", 1, "a", "c1") };
        let second = MsgRecord { body: "banana bread".into(), ..rec("g:1", 2, "a", "c2") };
        store.commit(&WriteBatch { messages: vec![first.clone(), second.clone()], ..Default::default() }).unwrap();
        wait_for("the first messages are never indexed", || hits(&index, "apple") == 1 && hits(&index, "banana") == 1);
        std::thread::sleep(Duration::from_millis(INDEX_COMMIT_INTERVAL_MS + INDEX_IDLE_MS * 2));
        let edit =
            MsgRecord { kind: shardchat_codec::MsgKind::Edit, target: Some(1), body: "cherry tart".into(), ..rec("g:1", 3, "a", "c3") };
        let edited = MsgRecord { body: "cherry tart".into(), edited_at: Some(9), edits: vec![3], ..first };
        let delete = MsgRecord { kind: shardchat_codec::MsgKind::Delete, target: Some(2), body: String::new(), ..rec("g:1", 4, "a", "c4") };
        let deleted = MsgRecord { body: String::new(), deleted: true, ..second };
        let batch = WriteBatch { messages: vec![edit, delete], updates: vec![edited, deleted], ..Default::default() };
        store.commit(&batch).unwrap();
        wait_for("the edit and the delete never reach the index", || {
            store.index_pending(10).unwrap().is_empty() && hits(&index, "banana") == 0
        });
        assert_eq!((hits(&index, "apple"), hits(&index, "cherry"), hits(&index, "banana")), (0, 1, 0));
        shutdown.store(true, Ordering::Release);
        indexer.join().unwrap();
    }
}
