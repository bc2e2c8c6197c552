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
use cassandra_protocol::frame::message_batch::{BatchQuerySubj, BodyReqBatch};
use cassandra_protocol::frame::message_error::{ErrorBody, ErrorType, UnavailableError, UnpreparedError};
use cassandra_protocol::frame::message_request::RequestBody;
use cassandra_protocol::frame::message_result::{
    BodyResResultPrepared, BodyResResultRows, ColSpec, ColType, ColTypeOption, ColTypeOptionValue, PreparedMetadata, ResResultBody,
    RowsMetadata, RowsMetadataFlags, TableSpec,
};
use cassandra_protocol::frame::message_supported::BodyResSupported;
use cassandra_protocol::frame::{Direction, Envelope, Flags, Opcode, Serialize, Version};
use cassandra_protocol::query::QueryValues;
use cassandra_protocol::types::value::Value;
use cassandra_protocol::types::{CBytes, CBytesShort};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

// ---------------------------------------------------------------------------------------------
// Types and values.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    Text,
    BigInt,
    Int,
    Bool,
    Blob,
    Uuid,
    Inet,
    SetText,
}

impl Ty {
    fn parse(name: &str) -> Res<Ty> {
        Ok(match name {
            "text" | "varchar" => Ty::Text,
            "bigint" => Ty::BigInt,
            "int" => Ty::Int,
            "boolean" => Ty::Bool,
            "blob" => Ty::Blob,
            other => return invalid(format!("column type {other} is not supported by the CQL double")),
        })
    }

    fn col_type(self) -> ColTypeOption {
        let (id, value) = match self {
            Ty::Text => (ColType::Varchar, None),
            Ty::BigInt => (ColType::Bigint, None),
            Ty::Int => (ColType::Int, None),
            Ty::Bool => (ColType::Boolean, None),
            Ty::Blob => (ColType::Blob, None),
            Ty::Uuid => (ColType::Uuid, None),
            Ty::Inet => (ColType::Inet, None),
            Ty::SetText => (ColType::Set, Some(ColTypeOptionValue::CSet(Box::new(ColTypeOption { id: ColType::Varchar, value: None })))),
        };
        ColTypeOption { id, value }
    }

    /// Checks a bound value's encoding, so a driver-side type mistake fails here as it would
    /// on a real server instead of storing garbage.
    fn check(self, bytes: &[u8], col: &str) -> Res<()> {
        let ok = match self {
            Ty::Text => std::str::from_utf8(bytes).is_ok(),
            Ty::BigInt => bytes.len() == 8,
            Ty::Int => bytes.len() == 4,
            Ty::Bool => bytes.len() == 1,
            Ty::Blob => true,
            Ty::Uuid => bytes.len() == 16,
            Ty::Inet => bytes.len() == 4 || bytes.len() == 16,
            Ty::SetText => true,
        };
        if ok {
            Ok(())
        } else {
            invalid(format!("value for column {col} is not a valid {self:?} ({} bytes)", bytes.len()))
        }
    }

    /// Orders two encoded values of this type the way CQL does.
    fn cmp(self, a: &[u8], b: &[u8]) -> Ordering {
        match self {
            Ty::BigInt | Ty::Int => {
                let n = |x: &[u8]| {
                    x.iter().fold(if x.first().is_some_and(|b| b & 0x80 != 0) { -1i64 } else { 0 }, |acc, b| (acc << 8) | *b as i64)
                };
                n(a).cmp(&n(b))
            }
            _ => a.cmp(b),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Statements.

#[derive(Clone, Debug)]
enum Expr {
    Bind,
    Lit(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug)]
struct Cond {
    col: String,
    op: Op,
    value: Expr,
}

#[derive(Clone, Debug)]
struct TableDef {
    name: String,
    cols: Vec<(String, Ty)>,
    partition: Vec<usize>,
    /// Clustering columns and whether each is stored descending.
    clustering: Vec<(usize, bool)>,
}

#[derive(Clone, Debug)]
enum Stmt {
    Noop,
    CreateTable(TableDef),
    Insert { table: String, cols: Vec<String>, values: Vec<Expr>, if_not_exists: bool },
    Select { table: String, cols: Vec<String>, conds: Vec<Cond>, order_desc: Option<bool>, limit: Option<Expr> },
    Delete { table: String, conds: Vec<Cond> },
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(String),
    Sym(&'static str),
}

fn lex(text: &str) -> Res<Vec<Tok>> {
    let mut out = vec![];
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if c.is_whitespace() || c == ';' {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let s = i;
            while i < b.len() && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Word(text[s..i].to_ascii_lowercase()));
        } else if c == '"' {
            let s = i + 1;
            i = s;
            while i < b.len() && b[i] != b'"' {
                i += 1;
            }
            out.push(Tok::Word(text[s..i.min(b.len())].to_string()));
            i += 1;
        } else if c.is_ascii_digit() || (c == '-' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            let s = i;
            i += 1;
            while i < b.len() && (b[i] as char).is_ascii_digit() {
                i += 1;
            }
            out.push(Tok::Num(text[s..i].to_string()));
        } else if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(CqlError::Syntax("unterminated string literal".into())),
                    Some(b'\'') if b.get(i + 1) == Some(&b'\'') => {
                        s.push('\'');
                        i += 2;
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(_) => {
                        let ch = text[i..].chars().next().unwrap();
                        s.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            out.push(Tok::Str(s));
        } else {
            let two = text.get(i..i + 2).unwrap_or("");
            let sym = match two {
                "<=" => Some("<="),
                ">=" => Some(">="),
                _ => None,
            };
            if let Some(s) = sym {
                out.push(Tok::Sym(s));
                i += 2;
                continue;
            }
            let sym = match c {
                '(' => "(",
                ')' => ")",
                ',' => ",",
                '.' => ".",
                '=' => "=",
                '<' => "<",
                '>' => ">",
                '?' => "?",
                '*' => "*",
                '{' => "{",
                '}' => "}",
                ':' => ":",
                '[' => "[",
                ']' => "]",
                _ => return Err(CqlError::Syntax(format!("unexpected character {c:?}"))),
            };
            out.push(Tok::Sym(sym));
            i += 1;
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }
    fn next(&mut self) -> Res<Tok> {
        let t = self.toks.get(self.at).cloned().ok_or_else(|| CqlError::Syntax("unexpected end of statement".into()))?;
        self.at += 1;
        Ok(t)
    }
    fn word(&mut self) -> Res<String> {
        match self.next()? {
            Tok::Word(w) => Ok(w),
            t => Err(CqlError::Syntax(format!("expected a name, found {t:?}"))),
        }
    }
    fn kw(&mut self, k: &str) -> Res<()> {
        match self.next()? {
            Tok::Word(w) if w == k => Ok(()),
            t => Err(CqlError::Syntax(format!("expected {k}, found {t:?}"))),
        }
    }
    fn is_kw(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w == k)
    }
    fn eat_kw(&mut self, k: &str) -> bool {
        let yes = self.is_kw(k);
        if yes {
            self.at += 1;
        }
        yes
    }
    fn sym(&mut self, s: &str) -> Res<()> {
        match self.next()? {
            Tok::Sym(x) if x == s => Ok(()),
            t => Err(CqlError::Syntax(format!("expected {s}, found {t:?}"))),
        }
    }
    fn eat_sym(&mut self, s: &str) -> bool {
        let yes = matches!(self.peek(), Some(Tok::Sym(x)) if *x == s);
        if yes {
            self.at += 1;
        }
        yes
    }
    /// `ks.table` (a keyspace is required: the double has no `USE`).
    fn table(&mut self) -> Res<String> {
        let ks = self.word()?;
        self.sym(".")?;
        Ok(format!("{ks}.{}", self.word()?))
    }
    fn expr(&mut self) -> Res<Expr> {
        match self.next()? {
            Tok::Sym("?") => Ok(Expr::Bind),
            Tok::Str(s) | Tok::Num(s) => Ok(Expr::Lit(s)),
            t => Err(CqlError::Syntax(format!("expected a value or ?, found {t:?}"))),
        }
    }
    fn conds(&mut self) -> Res<Vec<Cond>> {
        let mut out = vec![];
        loop {
            let col = self.word()?;
            let op = match self.next()? {
                Tok::Sym("=") => Op::Eq,
                Tok::Sym("<") => Op::Lt,
                Tok::Sym("<=") => Op::Le,
                Tok::Sym(">") => Op::Gt,
                Tok::Sym(">=") => Op::Ge,
                t => return Err(CqlError::Syntax(format!("unsupported operator {t:?}"))),
            };
            out.push(Cond { col, op, value: self.expr()? });
            if !self.eat_kw("and") {
                return Ok(out);
            }
        }
    }
    fn done(&self) -> Res<()> {
        match self.peek() {
            None => Ok(()),
            Some(t) => Err(CqlError::Syntax(format!("unexpected {t:?} (not supported by the CQL double)"))),
        }
    }
}

fn parse(text: &str) -> Res<Stmt> {
    let mut p = Parser { toks: lex(text)?, at: 0 };
    let stmt = match p.word()?.as_str() {
        "create" if p.eat_kw("keyspace") => {
            // Replication options are the real cluster's business.
            p.at = p.toks.len();
            Stmt::Noop
        }
        "create" => {
            p.kw("table")?;
            if p.eat_kw("if") {
                p.kw("not")?;
                p.kw("exists")?;
            }
            Stmt::CreateTable(create_table(&mut p)?)
        }
        "insert" => {
            p.kw("into")?;
            let table = p.table()?;
            p.sym("(")?;
            let mut cols = vec![p.word()?];
            while p.eat_sym(",") {
                cols.push(p.word()?);
            }
            p.sym(")")?;
            p.kw("values")?;
            p.sym("(")?;
            let mut values = vec![p.expr()?];
            while p.eat_sym(",") {
                values.push(p.expr()?);
            }
            p.sym(")")?;
            let if_not_exists = p.eat_kw("if");
            if if_not_exists {
                p.kw("not")?;
                p.kw("exists")?;
            }
            if cols.len() != values.len() {
                return invalid("INSERT lists a different number of columns and values");
            }
            Stmt::Insert { table, cols, values, if_not_exists }
        }
        "select" => {
            let mut cols = vec![];
            if !p.eat_sym("*") {
                cols.push(p.word()?);
                while p.eat_sym(",") {
                    cols.push(p.word()?);
                }
            }
            p.kw("from")?;
            let table = p.table()?;
            let conds = if p.eat_kw("where") { p.conds()? } else { vec![] };
            let mut order_desc = None;
            if p.eat_kw("order") {
                p.kw("by")?;
                p.word()?;
                order_desc = Some(if p.eat_kw("desc") {
                    true
                } else {
                    p.eat_kw("asc");
                    false
                });
            }
            let limit = if p.eat_kw("limit") { Some(p.expr()?) } else { None };
            Stmt::Select { table, cols, conds, order_desc, limit }
        }
        "delete" => {
            p.kw("from")?;
            let table = p.table()?;
            p.kw("where")?;
            Stmt::Delete { table, conds: p.conds()? }
        }
        w => return invalid(format!("statement {w} is not supported by the CQL double")),
    };
    p.done()?;
    Ok(stmt)
}

fn create_table(p: &mut Parser) -> Res<TableDef> {
    let name = p.table()?;
    p.sym("(")?;
    let mut cols: Vec<(String, Ty)> = vec![];
    let mut partition = vec![];
    let mut clustering_names = vec![];
    loop {
        if p.eat_kw("primary") {
            p.kw("key")?;
            p.sym("(")?;
            if p.eat_sym("(") {
                partition.push(p.word()?);
                while p.eat_sym(",") {
                    partition.push(p.word()?);
                }
                p.sym(")")?;
            } else {
                partition.push(p.word()?);
            }
            while p.eat_sym(",") {
                clustering_names.push(p.word()?);
            }
            p.sym(")")?;
        } else {
            let col = p.word()?;
            let ty = p.word()?;
            cols.push((col, Ty::parse(&ty)?));
        }
        if !p.eat_sym(",") {
            break;
        }
    }
    p.sym(")")?;
    let index = |n: &str| cols.iter().position(|(c, _)| c == n).ok_or_else(|| CqlError::Invalid(format!("unknown key column {n}")));
    let partition = partition.iter().map(|n| index(n)).collect::<Res<Vec<_>>>()?;
    let mut clustering = clustering_names.iter().map(|n| index(n).map(|i| (i, false))).collect::<Res<Vec<_>>>()?;
    if p.eat_kw("with") {
        p.kw("clustering")?;
        p.kw("order")?;
        p.kw("by")?;
        p.sym("(")?;
        loop {
            let col = index(&p.word()?)?;
            let desc = p.eat_kw("desc");
            if !desc {
                p.eat_kw("asc");
            }
            match clustering.iter_mut().find(|(c, _)| *c == col) {
                Some(c) => c.1 = desc,
                None => return invalid("CLUSTERING ORDER BY names a column that is not a clustering column"),
            }
            if !p.eat_sym(",") {
                break;
            }
        }
        p.sym(")")?;
    }
    if partition.is_empty() {
        return invalid("a table needs a PRIMARY KEY");
    }
    Ok(TableDef { name, cols, partition, clustering })
}

// ---------------------------------------------------------------------------------------------
// The data.

type Cell = Option<Vec<u8>>;

#[derive(Default)]
struct Db {
    tables: HashMap<String, Table>,
    prepared: HashMap<Vec<u8>, Stmt>,
}

/// A key's column values, serialized as CQL encodes them.
type Key = Vec<Vec<u8>>;

struct Table {
    def: TableDef,
    /// Partition key values → (clustering key values → the row's cells, one per column).
    parts: HashMap<Key, BTreeMap<Key, Vec<Cell>>>,
}

/// A bound statement: its values resolved, literals encoded.
struct Bound<'a> {
    values: &'a [Cell],
    next: usize,
}

impl Bound<'_> {
    fn take(&mut self, e: &Expr, ty: Ty, col: &str) -> Res<Cell> {
        let v = match e {
            Expr::Bind => {
                let v = self.values.get(self.next).cloned().ok_or_else(|| CqlError::Invalid("fewer values than bind markers".into()))?;
                self.next += 1;
                v
            }
            Expr::Lit(s) => Some(match ty {
                Ty::Text => s.as_bytes().to_vec(),
                Ty::BigInt => s.parse::<i64>().map_err(|_| CqlError::Invalid(format!("bad bigint {s}")))?.to_be_bytes().to_vec(),
                Ty::Int => s.parse::<i32>().map_err(|_| CqlError::Invalid(format!("bad int {s}")))?.to_be_bytes().to_vec(),
                _ => return invalid(format!("literal for column {col} not supported")),
            }),
        };
        if let Some(b) = &v {
            ty.check(b, col)?;
        }
        Ok(v)
    }
}

fn col_spec(table: &str, name: &str, ty: Ty) -> ColSpec {
    let (ks, t) = table.split_once('.').unwrap_or(("", table));
    ColSpec { table_spec: Some(TableSpec { ks_name: ks.into(), table_name: t.into() }), name: name.into(), col_type: ty.col_type() }
}

fn rows_metadata(specs: Vec<ColSpec>) -> RowsMetadata {
    // A statement without result columns (INSERT, DELETE) says so with NO_METADATA.
    let flags = if specs.is_empty() { RowsMetadataFlags::NO_METADATA } else { RowsMetadataFlags::empty() };
    RowsMetadata {
        flags,
        columns_count: specs.len() as i32,
        paging_state: None,
        new_metadata_id: None,
        global_table_spec: None,
        col_specs: specs,
    }
}

fn rows(specs: Vec<ColSpec>, content: Vec<Vec<Cell>>) -> ResResultBody {
    ResResultBody::Rows(BodyResResultRows {
        rows_count: content.len() as i32,
        rows_content: content
            .into_iter()
            .map(|r| r.into_iter().map(|c| c.map(CBytes::new).unwrap_or_else(CBytes::new_null)).collect())
            .collect(),
        metadata: rows_metadata(specs),
        protocol_version: Version::V4,
    })
}

/// The one row `system.local` has: this node, owning the whole token ring.
fn system_local(col: &str) -> Res<(Ty, Cell)> {
    Ok(match col {
        "key" => (Ty::Text, Some(b"local".to_vec())),
        "host_id" => (Ty::Uuid, Some(vec![0x5c, 0x4a, 0x7d, 0x10, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 1])),
        "schema_version" => (Ty::Uuid, Some(vec![0x5c, 0x4a, 0x7d, 0x10, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 2])),
        "rpc_address" | "broadcast_address" | "listen_address" => (Ty::Inet, Some(vec![127, 0, 0, 1])),
        "data_center" => (Ty::Text, Some(b"datacenter1".to_vec())),
        "rack" => (Ty::Text, Some(b"rack1".to_vec())),
        "cluster_name" => (Ty::Text, Some(b"shardchat CQL test double".to_vec())),
        "partitioner" => (Ty::Text, Some(b"org.apache.cassandra.dht.Murmur3Partitioner".to_vec())),
        "release_version" => (Ty::Text, Some(b"3.11.0".to_vec())),
        "tokens" => {
            let token = b"0";
            let mut set = 1i32.to_be_bytes().to_vec();
            set.extend_from_slice(&(token.len() as i32).to_be_bytes());
            set.extend_from_slice(token);
            (Ty::SetText, Some(set))
        }
        other => return invalid(format!("system.local column {other} is not known to the CQL double")),
    })
}

fn system_peer_type(col: &str) -> Res<Ty> {
    Ok(match col {
        "peer" | "rpc_address" | "preferred_ip" => Ty::Inet,
        "host_id" | "schema_version" => Ty::Uuid,
        "data_center" | "rack" | "release_version" => Ty::Text,
        "tokens" => Ty::SetText,
        other => return invalid(format!("system.peers column {other} is not known to the CQL double")),
    })
}

impl Db {
    fn table(&self, name: &str) -> Res<&Table> {
        self.tables.get(name).ok_or_else(|| CqlError::Invalid(format!("unconfigured table {name}")))
    }

    fn col(def: &TableDef, name: &str) -> Res<(usize, Ty)> {
        def.cols
            .iter()
            .position(|(c, _)| c == name)
            .map(|i| (i, def.cols[i].1))
            .ok_or_else(|| CqlError::Invalid(format!("undefined column name {name} in table {}", def.name)))
    }

    /// The PREPARED answer: bind markers' types (and which are partition key parts), result
    /// columns.
    fn prepared_body(&self, stmt: &Stmt) -> Res<BodyResResultPrepared> {
        let mut binds: Vec<ColSpec> = vec![];
        let mut pk_indexes = vec![];
        let mut result = vec![];
        let mut add = |table: &str, def: Option<&TableDef>, col: &str, e: &Expr, binds: &mut Vec<ColSpec>| -> Res<()> {
            if let Expr::Bind = e {
                let ty = match def {
                    Some(d) => {
                        let (i, ty) = Self::col(d, col)?;
                        if let Some(pos) = d.partition.iter().position(|p| *p == i) {
                            pk_indexes.push((pos, binds.len() as i16));
                        }
                        ty
                    }
                    None => Ty::Int,
                };
                binds.push(col_spec(table, col, ty));
            }
            Ok(())
        };
        match stmt {
            Stmt::Noop | Stmt::CreateTable(_) => {}
            Stmt::Insert { table, cols, values, .. } => {
                let def = &self.table(table)?.def;
                for (c, v) in cols.iter().zip(values) {
                    add(table, Some(def), c, v, &mut binds)?;
                }
            }
            Stmt::Select { table, cols, conds, limit, .. } if table.starts_with("system.") => {
                for c in conds {
                    add(table, None, &c.col, &c.value, &mut binds)?;
                }
                if let Some(l) = limit {
                    add(table, None, "[limit]", l, &mut binds)?;
                }
                for c in cols {
                    let ty = if table == "system.local" { system_local(c)?.0 } else { system_peer_type(c)? };
                    result.push(col_spec(table, c, ty));
                }
            }
            Stmt::Select { table, cols, conds, limit, .. } => {
                let def = &self.table(table)?.def;
                for c in conds {
                    add(table, Some(def), &c.col, &c.value, &mut binds)?;
                }
                if let Some(l) = limit {
                    add(table, None, "[limit]", l, &mut binds)?;
                }
                for c in select_cols(def, cols) {
                    let (_, ty) = Self::col(def, &c)?;
                    result.push(col_spec(table, &c, ty));
                }
            }
            Stmt::Delete { table, conds } => {
                let def = &self.table(table)?.def;
                for c in conds {
                    add(table, Some(def), &c.col, &c.value, &mut binds)?;
                }
            }
        }
        pk_indexes.sort();
        Ok(BodyResResultPrepared {
            id: CBytesShort::new(vec![]),
            result_metadata_id: None,
            metadata: PreparedMetadata {
                pk_indexes: pk_indexes.into_iter().map(|(_, i)| i).collect(),
                global_table_spec: None,
                col_specs: binds,
            },
            result_metadata: rows_metadata(result),
        })
    }

    fn batch(&mut self, b: &BodyReqBatch) -> Res<ResResultBody> {
        // Resolve everything first, then apply: a bad statement leaves the batch unapplied.
        let mut stmts = vec![];
        for q in &b.queries {
            let stmt = match &q.subject {
                BatchQuerySubj::PreparedId(id) => {
                    let id = id.clone().into_bytes().unwrap_or_default();
                    self.prepared.get(&id).cloned().ok_or_else(|| CqlError::Invalid("unknown prepared statement in batch".into()))?
                }
                BatchQuerySubj::QueryString(s) => parse(s)?,
            };
            if !matches!(stmt, Stmt::Insert { if_not_exists: false, .. } | Stmt::Delete { .. }) {
                return invalid("the CQL double batches plain INSERTs and DELETEs only");
            }
            stmts.push((stmt, values_of(Some(&q.values))?));
        }
        let mut writes = vec![];
        for (stmt, values) in &stmts {
            writes.push(self.plan_write(stmt, values)?);
        }
        for w in writes {
            self.apply(w);
        }
        Ok(ResResultBody::Void)
    }

    fn execute(&mut self, stmt: &Stmt, values: &[Cell]) -> Res<ResResultBody> {
        match stmt {
            Stmt::Noop => Ok(ResResultBody::Void),
            Stmt::CreateTable(def) => {
                self.tables.entry(def.name.clone()).or_insert_with(|| Table { def: def.clone(), parts: HashMap::new() });
                Ok(ResResultBody::Void)
            }
            Stmt::Insert { table, if_not_exists: true, .. } => {
                let w = self.plan_write(stmt, values)?;
                let Write::Upsert { part, key, cells, .. } = &w else { unreachable!() };
                let t = self.table(table)?;
                let existing = t.parts.get(part).and_then(|p| p.get(key)).cloned();
                let applied = vec![col_spec(table, "[applied]", Ty::Bool)];
                match existing {
                    Some(row) => {
                        let mut specs = applied;
                        specs.extend(t.def.cols.iter().map(|(c, ty)| col_spec(table, c, *ty)));
                        let mut out = vec![Some(vec![0u8])];
                        out.extend(row);
                        let _ = cells;
                        Ok(rows(specs, vec![out]))
                    }
                    None => {
                        self.apply(w);
                        Ok(rows(applied, vec![vec![Some(vec![1u8])]]))
                    }
                }
            }
            Stmt::Insert { .. } | Stmt::Delete { .. } => {
                let w = self.plan_write(stmt, values)?;
                self.apply(w);
                Ok(ResResultBody::Void)
            }
            Stmt::Select { table, cols, conds, limit, .. } if table.starts_with("system.") => {
                let mut b = Bound { values, next: 0 };
                for c in conds {
                    b.take(&c.value, Ty::Text, &c.col)?;
                }
                if let Some(l) = limit {
                    b.take(l, Ty::Int, "[limit]")?;
                }
                match table.as_str() {
                    "system.local" => {
                        let cells = cols.iter().map(|c| system_local(c)).collect::<Res<Vec<_>>>()?;
                        let specs = cols.iter().zip(&cells).map(|(c, (ty, _))| col_spec(table, c, *ty)).collect();
                        Ok(rows(specs, vec![cells.into_iter().map(|(_, v)| v).collect()]))
                    }
                    "system.peers" | "system.peers_v2" => {
                        let specs = cols.iter().map(|c| system_peer_type(c).map(|ty| col_spec(table, c, ty))).collect::<Res<Vec<_>>>()?;
                        Ok(rows(specs, vec![]))
                    }
                    other => invalid(format!("system table {other} is not known to the CQL double")),
                }
            }
            Stmt::Select { table, cols, conds, order_desc, limit } => self.select(table, cols, conds, *order_desc, limit.as_ref(), values),
        }
    }

    fn select(
        &self,
        table: &str,
        cols: &[String],
        conds: &[Cond],
        order_desc: Option<bool>,
        limit: Option<&Expr>,
        values: &[Cell],
    ) -> Res<ResResultBody> {
        let t = self.table(table)?;
        let def = &t.def;
        let mut b = Bound { values, next: 0 };
        let (part, filters) = key_conds(def, conds, &mut b)?;
        let limit = match limit {
            None => usize::MAX,
            Some(e) => match b.take(e, Ty::Int, "[limit]")? {
                Some(v) => i32::from_be_bytes(v.try_into().map_err(|_| CqlError::Invalid("bad LIMIT".into()))?).max(0) as usize,
                None => return invalid("LIMIT must not be null"),
            },
        };
        let out_cols = select_cols(def, cols).into_iter().map(|c| Self::col(def, &c)).collect::<Res<Vec<_>>>()?;
        let mut found: Vec<(&Key, &Vec<Cell>)> = match t.parts.get(&part) {
            None => vec![],
            Some(p) => p.iter().filter(|(k, _)| filters.iter().all(|f| f.matches(def, k))).collect(),
        };
        // Clustering order as declared; ORDER BY on the first clustering column may reverse it.
        found.sort_by(|(a, _), (b, _)| cmp_clustering(def, a, b));
        let first_desc = def.clustering.first().map(|c| c.1).unwrap_or(false);
        if order_desc.is_some_and(|d| d != first_desc) {
            found.reverse();
        }
        let content = found.into_iter().take(limit).map(|(_, row)| out_cols.iter().map(|(i, _)| row[*i].clone()).collect()).collect();
        let specs = out_cols.iter().map(|(i, ty)| col_spec(table, &def.cols[*i].0, *ty)).collect();
        Ok(rows(specs, content))
    }

    fn plan_write(&self, stmt: &Stmt, values: &[Cell]) -> Res<Write> {
        let mut b = Bound { values, next: 0 };
        match stmt {
            Stmt::Insert { table, cols, values: exprs, .. } => {
                let def = &self.table(table)?.def;
                let mut cells: Vec<Option<Cell>> = vec![None; def.cols.len()];
                for (c, e) in cols.iter().zip(exprs) {
                    let (i, ty) = Self::col(def, c)?;
                    cells[i] = Some(b.take(e, ty, c)?);
                }
                let key_of = |idx: &[usize]| -> Res<Key> {
                    idx.iter()
                        .map(|i| match &cells[*i] {
                            Some(Some(v)) => Ok(v.clone()),
                            _ => invalid(format!("missing value for key column {}", def.cols[*i].0)),
                        })
                        .collect()
                };
                let part = key_of(&def.partition)?;
                let key = key_of(&def.clustering.iter().map(|c| c.0).collect::<Vec<_>>())?;
                Ok(Write::Upsert { table: table.clone(), part, key, cells })
            }
            Stmt::Delete { table, conds } => {
                let def = &self.table(table)?.def;
                let (part, filters) = key_conds(def, conds, &mut b)?;
                Ok(Write::Delete { table: table.clone(), part, filters })
            }
            _ => invalid("not a write"),
        }
    }

    fn apply(&mut self, w: Write) {
        match w {
            Write::Upsert { table, part, key, cells } => {
                let t = self.tables.get_mut(&table).expect("planned against an existing table");
                let width = t.def.cols.len();
                let row = t.parts.entry(part).or_default().entry(key).or_insert_with(|| vec![None; width]);
                for (i, c) in cells.into_iter().enumerate() {
                    if let Some(c) = c {
                        row[i] = c;
                    }
                }
            }
            Write::Delete { table, part, filters } => {
                let t = self.tables.get_mut(&table).expect("planned against an existing table");
                let def = t.def.clone();
                if let Some(p) = t.parts.get_mut(&part) {
                    p.retain(|k, _| !filters.iter().all(|f| f.matches(&def, k)));
                    if p.is_empty() {
                        t.parts.remove(&part);
                    }
                }
            }
        }
    }
}

enum Write {
    Upsert { table: String, part: Key, key: Key, cells: Vec<Option<Cell>> },
    Delete { table: String, part: Key, filters: Vec<KeyFilter> },
}

/// A restriction on one clustering column (by its position in the clustering key).
struct KeyFilter {
    pos: usize,
    op: Op,
    value: Vec<u8>,
}

impl KeyFilter {
    fn matches(&self, def: &TableDef, key: &[Vec<u8>]) -> bool {
        let ty = def.cols[def.clustering[self.pos].0].1;
        let o = ty.cmp(&key[self.pos], &self.value);
        match self.op {
            Op::Eq => o == Ordering::Equal,
            Op::Lt => o == Ordering::Less,
            Op::Le => o != Ordering::Greater,
            Op::Gt => o == Ordering::Greater,
            Op::Ge => o != Ordering::Less,
        }
    }
}

fn select_cols(def: &TableDef, cols: &[String]) -> Vec<String> {
    if cols.is_empty() {
        def.cols.iter().map(|(c, _)| c.clone()).collect()
    } else {
        cols.to_vec()
    }
}

/// Splits WHERE into the partition key (every part by equality, as CQL requires without
/// ALLOW FILTERING) and clustering restrictions (equalities on a prefix, then ranges).
fn key_conds(def: &TableDef, conds: &[Cond], b: &mut Bound) -> Res<(Key, Vec<KeyFilter>)> {
    let mut part: Vec<Option<Vec<u8>>> = vec![None; def.partition.len()];
    let mut filters = vec![];
    for c in conds {
        let (i, ty) = Db::col(def, &c.col)?;
        let v = b.take(&c.value, ty, &c.col)?.ok_or_else(|| CqlError::Invalid(format!("null value for key column {}", c.col)))?;
        if let Some(pos) = def.partition.iter().position(|p| *p == i) {
            if c.op != Op::Eq {
                return invalid(format!("only equality on partition key column {}", c.col));
            }
            part[pos] = Some(v);
        } else if let Some(pos) = def.clustering.iter().position(|k| k.0 == i) {
            filters.push(KeyFilter { pos, op: c.op, value: v });
        } else {
            return invalid(format!("cannot restrict non-key column {} (ALLOW FILTERING is not supported)", c.col));
        }
    }
    // Clustering restrictions: an equality prefix, then at most one column with ranges.
    let mut sorted: Vec<(usize, Op)> = filters.iter().map(|f| (f.pos, f.op)).collect();
    sorted.sort_by_key(|f| f.0);
    let mut expect = 0;
    let mut ranged = None;
    for (pos, op) in sorted {
        match ranged {
            Some(r) if pos == r && op != Op::Eq => {}
            Some(_) => return invalid("clustering columns after a range restriction cannot be restricted"),
            None if pos == expect && op == Op::Eq => expect += 1,
            None if pos == expect => ranged = Some(pos),
            None => return invalid("clustering columns must be restricted in order"),
        }
    }
    let part = part
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            v.ok_or_else(|| CqlError::Invalid(format!("partition key column {} must be restricted", def.cols[def.partition[i]].0)))
        })
        .collect::<Res<Vec<_>>>()?;
    Ok((part, filters))
}

fn cmp_clustering(def: &TableDef, a: &[Vec<u8>], b: &[Vec<u8>]) -> Ordering {
    for (pos, (col, desc)) in def.clustering.iter().enumerate() {
        let o = def.cols[*col].1.cmp(&a[pos], &b[pos]);
        let o = if *desc { o.reverse() } else { o };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
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
