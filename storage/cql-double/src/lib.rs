//! **A test fixture, never a product backend.** A small in-memory server that speaks the CQL
//! native protocol (v4) well enough for the real `scylla` driver to connect, prepare, execute,
//! batch and page through shardchat's own schema. No ScyllaDB or Cassandra server can be
//! installed on the machines shardchat's CI runs on, so without this the ScyllaDB backend's
//! statements, types and paging would never run for real; with it the backend passes the same
//! store conformance suite as the embedded one, and the cluster tests share one store.
//!
//! What it understands is exactly what shardchat's schema and statements use, checked loudly:
//! - `CREATE KEYSPACE` (accepted, replication ignored) and `CREATE TABLE` with text, bigint, int,
//!   boolean and blob columns, a composite partition key, clustering columns and
//!   `CLUSTERING ORDER BY`;
//! - `INSERT ... [IF NOT EXISTS]` (the `[applied]` row of a lightweight transaction);
//! - `SELECT cols FROM t WHERE pk = ? [AND ck = ?]* [AND ck <|<=|>|>= ?]* [ORDER BY ck ASC|DESC]
//!   [LIMIT ?]`, with the partition key fully given (no scans, no `ALLOW FILTERING`);
//! - `DELETE FROM t WHERE ...` with the same restrictions;
//! - logged batches of the above (applied under one lock: atomic);
//! - the driver's own topology queries on `system.local` and `system.peers`.
//!
//! Anything else is answered with a CQL `Invalid` or `Syntax` error naming what was not
//! understood. It keeps no data on disk; one process, one node, no tokens but one.
//!
//! [`CqlDouble::set_unavailable`] makes every request fail with `Unavailable`, as a cluster that
//! lost its quorum would, so tests can check what the engine does then.

use cassandra_protocol::compression::Compression;
use cassandra_protocol::consistency::Consistency;
use cassandra_protocol::frame::message_error::{ErrorBody, ErrorType, UnavailableError, UnpreparedError};
use cassandra_protocol::frame::message_request::RequestBody;
use cassandra_protocol::frame::message_result::{BodyResResultPrepared, ResResultBody};
use cassandra_protocol::frame::message_supported::BodyResSupported;
use cassandra_protocol::frame::{Direction, Envelope, Flags, Opcode, Serialize};
use cassandra_protocol::query::QueryValues;
use cassandra_protocol::types::value::Value;
use cassandra_protocol::types::CBytesShort;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod db;
mod parse;
mod types;

use db::*;
use parse::*;
use types::*;

/// A running double. Dropping it stops nothing (its thread lives as long as the test process);
/// each test starts its own, so tests never share data.
pub struct CqlDouble {
    addr: SocketAddr,
    state: Arc<Shared>,
}

struct Shared {
    db: Mutex<Db>,
    unavailable: AtomicBool,
    requests: AtomicU64,
}

impl CqlDouble {
    /// Starts a double on a free loopback port, on a thread of its own.
    pub fn start() -> std::io::Result<CqlDouble> {
        CqlDouble::start_on("127.0.0.1:0".parse().expect("valid literal"))
    }

    /// Starts a double on `addr` (port 0: a free one), on a thread of its own.
    pub fn start_on(addr: SocketAddr) -> std::io::Result<CqlDouble> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Shared { db: Mutex::new(Db::default()), unavailable: AtomicBool::new(false), requests: AtomicU64::new(0) });
        let st = state.clone();
        std::thread::Builder::new().name("cql-double".into()).spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("cql-double runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("cql-double listener");
                loop {
                    let Ok((sock, _)) = listener.accept().await else { continue };
                    let _ = sock.set_nodelay(true);
                    tokio::spawn(serve_conn(sock, st.clone()));
                }
            });
        })?;
        Ok(CqlDouble { addr, state })
    }

    /// `host:port`, as the driver's known node.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// While set, every query fails with `Unavailable` (consistency cannot be met).
    pub fn set_unavailable(&self, on: bool) {
        self.state.unavailable.store(on, AtomicOrdering::SeqCst);
    }

    /// Queries, executions and batches answered so far (handshakes not counted).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(AtomicOrdering::Relaxed)
    }

    /// Rows currently in `keyspace.table` (for tests that check what reached the store).
    pub fn row_count(&self, table: &str) -> usize {
        let db = self.state.db.lock().unwrap();
        db.tables.get(table).map(|t| t.parts.values().map(|p| p.len()).sum()).unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Connections: envelopes in, envelopes out, in order per connection.

/// The largest request envelope accepted, in bytes (the protocol's own limit is 256 MiB).
const MAX_ENVELOPE_BYTES: usize = 16 << 20;

async fn serve_conn(mut sock: tokio::net::TcpStream, st: Arc<Shared>) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        loop {
            match Envelope::from_buffer(&buf, Compression::None) {
                Ok(parsed) => {
                    buf.drain(..parsed.envelope_len);
                    let reply = answer(&st, &parsed.envelope);
                    if sock.write_all(&reply).await.is_err() {
                        return;
                    }
                }
                Err(cassandra_protocol::frame::ParseEnvelopeError::NotEnoughBytes) => break,
                Err(_) => return,
            }
        }
        if buf.len() > MAX_ENVELOPE_BYTES {
            return;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn envelope(req: &Envelope, opcode: Opcode, body: Vec<u8>) -> Vec<u8> {
    Envelope::new(req.version, Direction::Response, Flags::empty(), opcode, req.stream_id, body, None, vec![])
        .encode_with(Compression::None)
        .expect("encode response")
}

fn error(req: &Envelope, ty: ErrorType, message: String) -> Vec<u8> {
    envelope(req, Opcode::Error, ErrorBody { message, ty }.serialize_to_vec(req.version))
}

fn answer(st: &Shared, req: &Envelope) -> Vec<u8> {
    let version = req.version;
    let body = match req.request_body() {
        Ok(b) => b,
        Err(e) => return error(req, ErrorType::Protocol, format!("cannot decode request: {e}")),
    };
    let result = match body {
        RequestBody::Options(_) => {
            let data = HashMap::from([("CQL_VERSION".to_string(), vec!["3.4.5".to_string()]), ("COMPRESSION".to_string(), vec![])]);
            return envelope(req, Opcode::Supported, BodyResSupported { data }.serialize_to_vec(version));
        }
        RequestBody::Startup(_) | RequestBody::Register(_) => return envelope(req, Opcode::Ready, vec![]),
        RequestBody::AuthResponse(_) => return error(req, ErrorType::Authentication, "the CQL double has no authentication".into()),
        _ if st.unavailable.load(AtomicOrdering::SeqCst) => {
            let ty = ErrorType::Unavailable(UnavailableError { cl: Consistency::Quorum, required: 2, alive: 0 });
            return error(req, ty, "Cannot achieve consistency level QUORUM (the CQL double was told to be unavailable)".into());
        }
        RequestBody::Query(q) => {
            st.requests.fetch_add(1, AtomicOrdering::Relaxed);
            parse(&q.query).and_then(|stmt| {
                let values = values_of(q.query_params.values.as_ref())?;
                st.db.lock().unwrap().execute(&stmt, &values)
            })
        }
        RequestBody::Prepare(p) => parse(&p.query).and_then(|stmt| {
            let mut db = st.db.lock().unwrap();
            let prepared = db.prepared_body(&stmt)?;
            let id = format!("{:016x}", fnv(p.query.as_bytes())).into_bytes();
            db.prepared.insert(id.clone(), stmt);
            Ok(ResResultBody::Prepared(BodyResResultPrepared { id: CBytesShort::new(id), result_metadata_id: None, ..prepared }))
        }),
        RequestBody::Execute(e) => {
            st.requests.fetch_add(1, AtomicOrdering::Relaxed);
            let id = e.id.clone().into_bytes().unwrap_or_default();
            let mut db = st.db.lock().unwrap();
            match db.prepared.get(&id).cloned() {
                None => return error(req, ErrorType::Unprepared(UnpreparedError { id: e.id }), "unknown prepared statement".into()),
                Some(stmt) => values_of(e.query_parameters.values.as_ref()).and_then(|v| db.execute(&stmt, &v)),
            }
        }
        RequestBody::Batch(b) => {
            st.requests.fetch_add(1, AtomicOrdering::Relaxed);
            st.db.lock().unwrap().batch(&b)
        }
        _ => Err(CqlError::Invalid("request not supported by the CQL double".into())),
    };
    match result {
        Ok(body) => envelope(req, Opcode::Result, body.serialize_to_vec(version)),
        Err(CqlError::Syntax(m)) => error(req, ErrorType::Syntax, m),
        Err(CqlError::Invalid(m)) => error(req, ErrorType::Invalid, m),
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
}

#[derive(Debug)]
enum CqlError {
    Syntax(String),
    Invalid(String),
}
type Res<T> = Result<T, CqlError>;

fn invalid<T>(m: impl Into<String>) -> Res<T> {
    Err(CqlError::Invalid(m.into()))
}

fn values_of(v: Option<&QueryValues>) -> Res<Vec<Option<Vec<u8>>>> {
    match v {
        None => Ok(vec![]),
        Some(QueryValues::NamedValues(_)) => invalid("named values are not supported by the CQL double"),
        Some(QueryValues::SimpleValues(vs)) => Ok(vs
            .iter()
            .map(|v| match v {
                Value::Some(b) => Some(b.clone()),
                Value::Null | Value::NotSet => None,
            })
            .collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Cell {
        Some(s.as_bytes().to_vec())
    }
    fn big(n: i64) -> Cell {
        Some(n.to_be_bytes().to_vec())
    }

    fn db() -> Db {
        let mut db = Db::default();
        let ddl = "CREATE TABLE IF NOT EXISTS ks.m (conv text, seq bigint, body text, PRIMARY KEY ((conv), seq)) WITH CLUSTERING ORDER BY (seq DESC)";
        db.execute(&parse(ddl).unwrap(), &[]).unwrap();
        let ins = parse("INSERT INTO ks.m (conv, seq, body) VALUES (?, ?, ?)").unwrap();
        for s in [-3i64, 1, 2, 10] {
            db.execute(&ins, &[text("c"), big(s), text(&format!("b{s}"))]).unwrap();
        }
        db.execute(&ins, &[text("other"), big(5), text("x")]).unwrap();
        db
    }

    fn seqs(r: ResResultBody) -> Vec<i64> {
        let ResResultBody::Rows(r) = r else { panic!("not rows") };
        r.rows_content.iter().map(|row| i64::from_be_bytes(row[0].as_slice().unwrap().try_into().unwrap())).collect()
    }

    #[test]
    fn selects_follow_clustering_order_ranges_and_limits() {
        let mut db = db();
        let q = |db: &mut Db, text_: &str, v: &[Cell]| seqs(db.execute(&parse(text_).unwrap(), v).unwrap());
        assert_eq!(q(&mut db, "SELECT seq FROM ks.m WHERE conv = ?", &[text("c")]), vec![10, 2, 1, -3], "DESC as declared; signed order");
        assert_eq!(q(&mut db, "SELECT seq FROM ks.m WHERE conv = ? LIMIT ?", &[text("c"), Some(1i32.to_be_bytes().to_vec())]), vec![10]);
        assert_eq!(q(&mut db, "SELECT seq FROM ks.m WHERE conv = ? AND seq > ? ORDER BY seq ASC", &[text("c"), big(1)]), vec![2, 10]);
        assert_eq!(q(&mut db, "SELECT seq FROM ks.m WHERE conv = ? AND seq < ?", &[text("c"), big(10)]), vec![2, 1, -3]);
        assert_eq!(q(&mut db, "SELECT seq FROM ks.m WHERE conv = 'other'", &[]), vec![5]);
        db.execute(&parse("DELETE FROM ks.m WHERE conv = ? AND seq = ?").unwrap(), &[text("c"), big(2)]).unwrap();
        assert_eq!(q(&mut db, "SELECT seq FROM ks.m WHERE conv = ?", &[text("c")]), vec![10, 1, -3]);
    }

    #[test]
    fn refuses_what_a_real_server_would() {
        let mut db = db();
        let err = |db: &mut Db, t: &str, v: &[Cell]| parse(t).and_then(|s| db.execute(&s, v)).unwrap_err();
        assert!(matches!(err(&mut db, "SELECT seq FROM ks.m", &[]), CqlError::Invalid(m) if m.contains("must be restricted")));
        assert!(matches!(err(&mut db, "SELECT seq FROM ks.m WHERE body = ?", &[text("x")]), CqlError::Invalid(_)));
        assert!(matches!(err(&mut db, "SELECT nope FROM ks.m WHERE conv = ?", &[text("c")]), CqlError::Invalid(_)));
        assert!(matches!(
            err(&mut db, "INSERT INTO ks.m (conv, seq) VALUES (?, ?)", &[text("c"), text("not a bigint")]),
            CqlError::Invalid(_)
        ));
        assert!(matches!(err(&mut db, "SELECT seq FROM ks.nope WHERE conv = ?", &[text("c")]), CqlError::Invalid(_)));
        assert!(matches!(err(&mut db, "UPDATE ks.m SET body = ?", &[]), CqlError::Invalid(_)));
        assert!(matches!(err(&mut db, "SELECT seq FROM ks.m WHERE conv = ? junk", &[text("c")]), CqlError::Syntax(_)));
    }

    #[test]
    fn insert_if_not_exists_applies_once() {
        let mut db = db();
        let ins = parse("INSERT INTO ks.m (conv, seq, body) VALUES (?, ?, ?) IF NOT EXISTS").unwrap();
        let applied = |r: ResResultBody| match r {
            ResResultBody::Rows(r) => r.rows_content[0][0].as_slice() == Some(&[1u8][..]),
            _ => panic!(),
        };
        assert!(applied(db.execute(&ins, &[text("n"), big(1), text("first")]).unwrap()));
        assert!(!applied(db.execute(&ins, &[text("n"), big(1), text("second")]).unwrap()));
    }
}
