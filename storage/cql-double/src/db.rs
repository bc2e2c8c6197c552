//! The data: tables of partitions of rows, and statements executed against them (batches
//! applied under one lock), with the driver's topology queries on `system.local` and
//! `system.peers`.

use crate::*;
use cassandra_protocol::frame::message_batch::{BatchQuerySubj, BodyReqBatch};
use cassandra_protocol::frame::message_result::{
    BodyResResultPrepared, BodyResResultRows, ColSpec, PreparedMetadata, ResResultBody, RowsMetadata, RowsMetadataFlags, TableSpec,
};
use cassandra_protocol::frame::Version;
use cassandra_protocol::types::{CBytes, CBytesShort};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

pub(crate) type Cell = Option<Vec<u8>>;

#[derive(Default)]
pub(crate) struct Db {
    pub(crate) tables: HashMap<String, Table>,
    pub(crate) prepared: HashMap<Vec<u8>, Stmt>,
}

/// A key's column values, serialized as CQL encodes them.
pub(crate) type Key = Vec<Vec<u8>>;

pub(crate) struct Table {
    pub(crate) def: TableDef,
    /// Partition key values → (clustering key values → the row's cells, one per column).
    pub(crate) parts: HashMap<Key, BTreeMap<Key, Vec<Cell>>>,
}

/// A bound statement: its values resolved, literals encoded.
pub(crate) struct Bound<'a> {
    pub(crate) values: &'a [Cell],
    pub(crate) next: usize,
}

impl Bound<'_> {
    pub(crate) fn take(&mut self, e: &Expr, ty: Ty, col: &str) -> Res<Cell> {
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

pub(crate) fn col_spec(table: &str, name: &str, ty: Ty) -> ColSpec {
    let (ks, t) = table.split_once('.').unwrap_or(("", table));
    ColSpec { table_spec: Some(TableSpec { ks_name: ks.into(), table_name: t.into() }), name: name.into(), col_type: ty.col_type() }
}

pub(crate) fn rows_metadata(specs: Vec<ColSpec>) -> RowsMetadata {
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

pub(crate) fn rows(specs: Vec<ColSpec>, content: Vec<Vec<Cell>>) -> ResResultBody {
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
pub(crate) fn system_local(col: &str) -> Res<(Ty, Cell)> {
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

pub(crate) fn system_peer_type(col: &str) -> Res<Ty> {
    Ok(match col {
        "peer" | "rpc_address" | "preferred_ip" => Ty::Inet,
        "host_id" | "schema_version" => Ty::Uuid,
        "data_center" | "rack" | "release_version" => Ty::Text,
        "tokens" => Ty::SetText,
        other => return invalid(format!("system.peers column {other} is not known to the CQL double")),
    })
}

impl Db {
    pub(crate) fn table(&self, name: &str) -> Res<&Table> {
        self.tables.get(name).ok_or_else(|| CqlError::Invalid(format!("unconfigured table {name}")))
    }

    pub(crate) fn col(def: &TableDef, name: &str) -> Res<(usize, Ty)> {
        def.cols
            .iter()
            .position(|(c, _)| c == name)
            .map(|i| (i, def.cols[i].1))
            .ok_or_else(|| CqlError::Invalid(format!("undefined column name {name} in table {}", def.name)))
    }

    /// The PREPARED answer: bind markers' types (and which are partition key parts), result
    /// columns.
    pub(crate) fn prepared_body(&self, stmt: &Stmt) -> Res<BodyResResultPrepared> {
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
            Stmt::Noop | Stmt::CreateTable(_) | Stmt::AlterAdd { .. } => {}
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

    pub(crate) fn batch(&mut self, b: &BodyReqBatch) -> Res<ResResultBody> {
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

    pub(crate) fn execute(&mut self, stmt: &Stmt, values: &[Cell]) -> Res<ResResultBody> {
        match stmt {
            Stmt::Noop => Ok(ResResultBody::Void),
            Stmt::CreateTable(def) => {
                self.tables.entry(def.name.clone()).or_insert_with(|| Table { def: def.clone(), parts: HashMap::new() });
                Ok(ResResultBody::Void)
            }
            Stmt::AlterAdd { table, col, ty } => {
                let t = self.tables.get_mut(table).ok_or_else(|| CqlError::Invalid(format!("unconfigured table {table}")))?;
                if t.def.cols.iter().any(|(c, _)| c == col) {
                    // Scylla's words, which `shardchat migrate` recognizes.
                    return invalid(format!("Invalid column name {col} because it conflicts with an existing column"));
                }
                t.def.cols.push((col.clone(), *ty));
                t.parts.values_mut().flat_map(|p| p.values_mut()).for_each(|row| row.push(None));
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

    pub(crate) fn select(
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

    pub(crate) fn plan_write(&self, stmt: &Stmt, values: &[Cell]) -> Res<Write> {
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

    pub(crate) fn apply(&mut self, w: Write) {
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

pub(crate) enum Write {
    Upsert { table: String, part: Key, key: Key, cells: Vec<Option<Cell>> },
    Delete { table: String, part: Key, filters: Vec<KeyFilter> },
}

/// A restriction on one clustering column (by its position in the clustering key).
pub(crate) struct KeyFilter {
    pub(crate) pos: usize,
    pub(crate) op: Op,
    pub(crate) value: Vec<u8>,
}

impl KeyFilter {
    pub(crate) fn matches(&self, def: &TableDef, key: &[Vec<u8>]) -> bool {
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

pub(crate) fn select_cols(def: &TableDef, cols: &[String]) -> Vec<String> {
    if cols.is_empty() {
        def.cols.iter().map(|(c, _)| c.clone()).collect()
    } else {
        cols.to_vec()
    }
}

/// Splits WHERE into the partition key (every part by equality, as CQL requires without
/// ALLOW FILTERING) and clustering restrictions (equalities on a prefix, then ranges).
pub(crate) fn key_conds(def: &TableDef, conds: &[Cond], b: &mut Bound) -> Res<(Key, Vec<KeyFilter>)> {
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

pub(crate) fn cmp_clustering(def: &TableDef, a: &[Vec<u8>], b: &[Vec<u8>]) -> Ordering {
    for (pos, (col, desc)) in def.clustering.iter().enumerate() {
        let o = def.cols[*col].1.cmp(&a[pos], &b[pos]);
        let o = if *desc { o.reverse() } else { o };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}
