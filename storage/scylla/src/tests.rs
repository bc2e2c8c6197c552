//! The ScyllaDB backend: the store contract through the CQL test double (and, when asked for,
//! against a real cluster), outages as store errors, the schema check, URI parsing.

use super::*;
use shardchat_storage::conformance::{conformance, rec};

fn scylla_over_double(double: &shardchat_cql_double::CqlDouble) -> ScyllaStore {
    let cfg = ScyllaConfig::from_uri(&format!("scylla://{}/shardchat?schema_metadata=off", double.addr())).unwrap();
    assert_eq!(ScyllaStore::migrate(&cfg, 1).unwrap(), schema_statements("shardchat", 1).len());
    ScyllaStore::open(&cfg).unwrap()
}

/// The backend's prepared statements, types, batches and paging, through the real `scylla`
/// driver, against the CQL test double (no ScyllaDB can be installed where CI runs).
#[test]
fn scylla_store_passes_the_conformance_suite_through_the_cql_double() {
    let double = shardchat_cql_double::CqlDouble::start().unwrap();
    conformance(&scylla_over_double(&double));
    assert!(double.row_count("shardchat.messages") >= 6);
}

/// The same suite against a real cluster named by `SHARDCHAT_SCYLLA_URI`, in a keyspace of its
/// own (replication factor 1). Ignored unless asked for (no ScyllaDB can run where CI does);
/// asked for without the variable, it fails rather than pass having run nothing.
#[test]
#[ignore = "needs a real ScyllaDB: SHARDCHAT_SCYLLA_URI=scylla://HOST:9042 cargo test -p shardchat-storage-scylla -- --ignored real_cluster"]
fn scylla_store_passes_the_conformance_suite_on_a_real_cluster() {
    let uri =
        std::env::var("SHARDCHAT_SCYLLA_URI").expect("set SHARDCHAT_SCYLLA_URI=scylla://HOST:9042 to run this against a real cluster");
    let mut cfg = ScyllaConfig::from_uri(&uri).unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    cfg.keyspace = format!("shardchat_test_{}_{nanos}", std::process::id());
    ScyllaStore::migrate(&cfg, 1).unwrap();
    conformance(&ScyllaStore::open(&cfg).unwrap());
}

#[test]
fn scylla_store_turns_an_unavailable_cluster_into_store_errors_and_recovers() {
    let double = shardchat_cql_double::CqlDouble::start().unwrap();
    let store = scylla_over_double(&double);
    let batch = WriteBatch { messages: vec![rec("d:a:b", 1, "a", "x")], ..Default::default() };
    double.set_unavailable(true);
    assert!(matches!(store.commit(&batch), Err(StoreError::Io(m)) if m.contains("scylla")));
    assert!(store.last_seq("d:a:b").is_err());
    double.set_unavailable(false);
    assert_eq!(store.last_seq("d:a:b").unwrap(), 0, "the failed commit left nothing behind");
    store.commit(&batch).unwrap();
    assert_eq!(store.last_seq("d:a:b").unwrap(), 1);
}

/// A keyspace made by the first release (no `meta` column) is upgraded by migrate: its rows read
/// back with no edits, replies or reactions, and new ones keep theirs. Migrating again changes
/// nothing.
#[test]
fn migrate_upgrades_a_keyspace_from_before_meta() {
    let double = shardchat_cql_double::CqlDouble::start().unwrap();
    let cfg = ScyllaConfig::from_uri(&format!("scylla://{}/shardchat?schema_metadata=off", double.addr())).unwrap();
    let old: Vec<String> = schema_statements("shardchat", 1)
        .into_iter()
        .filter(|s| !s.starts_with("ALTER TABLE"))
        .map(|s| s.replace(", meta text", ""))
        .collect();
    assert!(old.iter().all(|s| !s.contains("meta")));
    runtime().unwrap().block_on(async {
        let session = connect(&cfg).await.unwrap();
        for s in &old {
            session.query_unpaged(s.as_str(), ()).await.unwrap();
        }
        let insert = "INSERT INTO shardchat.messages (conv, seq, id, sender, cmid, body, kind, ts) VALUES ('d:a:b', 1, 7, 'a', 'c1', 'old', 'text', 5)";
        session.query_unpaged(insert, ()).await.unwrap();
    });
    assert_eq!(ScyllaStore::migrate(&cfg, 1).unwrap(), schema_statements("shardchat", 1).len());
    assert_eq!(ScyllaStore::migrate(&cfg, 1).unwrap(), schema_statements("shardchat", 1).len(), "again: nothing to do");
    let store = ScyllaStore::open(&cfg).unwrap();
    let old_row = MsgRecord {
        conv: "d:a:b".into(),
        id: 7,
        seq: 1,
        from: "a".into(),
        cmid: "c1".into(),
        body: "old".into(),
        ts: 5,
        ..Default::default()
    };
    assert_eq!(store.messages_after("d:a:b", 0, 10).unwrap(), vec![old_row]);
    let reply = MsgRecord { reply_to: Some(1), edited_at: Some(9), edits: vec![3], ..rec("d:a:b", 2, "b", "c2") };
    store.commit(&WriteBatch { messages: vec![reply.clone()], ..Default::default() }).unwrap();
    assert_eq!(store.messages_after("d:a:b", 1, 10).unwrap(), vec![reply]);
}

#[test]
fn scylla_store_refuses_to_open_without_the_schema() {
    let double = shardchat_cql_double::CqlDouble::start().unwrap();
    let cfg = ScyllaConfig::from_uri(&format!("scylla://{}?schema_metadata=off", double.addr())).unwrap();
    let err = ScyllaStore::open(&cfg).err().expect("no tables yet");
    assert!(err.to_string().contains("shardchat migrate"), "{err}");
}

#[test]
fn scylla_uris_parse_and_bad_ones_are_refused() {
    let c = ScyllaConfig::from_uri("scylla://a:1,b/ks?consistency=local_quorum").unwrap();
    assert_eq!(c.nodes, vec!["a:1".to_string(), "b:9042".to_string()]);
    assert_eq!(c.keyspace, "ks");
    assert_eq!(c.consistency, scylla::statement::Consistency::LocalQuorum);
    assert_eq!(ScyllaConfig::from_uri("scylla://h").unwrap().keyspace, "shardchat");
    assert!(ScyllaConfig::from_uri("scylla://h").unwrap().fetch_schema);
    assert!(!ScyllaConfig::from_uri("scylla://h?consistency=one&schema_metadata=off").unwrap().fetch_schema);
    assert_eq!(ScyllaConfig::from_uri("scylla://h").unwrap().consistency, scylla::statement::Consistency::Quorum);
    for bad in [
        "redis://h",
        "scylla://",
        "scylla://h/bad-name",
        "scylla://h?consistency=most",
        "scylla://h?x=1",
        "scylla://h?schema_metadata=maybe",
    ] {
        assert!(ScyllaConfig::from_uri(bad).is_err(), "{bad}");
    }
}
