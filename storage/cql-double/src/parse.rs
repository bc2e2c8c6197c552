//! Statements: the lexer and parser for exactly the CQL shardchat's schema and statements use.

use crate::*;

#[derive(Clone, Debug)]
pub(crate) enum Expr {
    Bind,
    Lit(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug)]
pub(crate) struct Cond {
    pub(crate) col: String,
    pub(crate) op: Op,
    pub(crate) value: Expr,
}

#[derive(Clone, Debug)]
pub(crate) struct TableDef {
    pub(crate) name: String,
    pub(crate) cols: Vec<(String, Ty)>,
    pub(crate) partition: Vec<usize>,
    /// Clustering columns and whether each is stored descending.
    pub(crate) clustering: Vec<(usize, bool)>,
}

#[derive(Clone, Debug)]
pub(crate) enum Stmt {
    Noop,
    CreateTable(TableDef),
    /// `ALTER TABLE t ADD col type`: existing rows hold null in it.
    AlterAdd {
        table: String,
        col: String,
        ty: Ty,
    },
    Insert {
        table: String,
        cols: Vec<String>,
        values: Vec<Expr>,
        if_not_exists: bool,
    },
    Select {
        table: String,
        cols: Vec<String>,
        conds: Vec<Cond>,
        order_desc: Option<bool>,
        limit: Option<Expr>,
    },
    Delete {
        table: String,
        conds: Vec<Cond>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok {
    Word(String),
    Str(String),
    Num(String),
    Sym(&'static str),
}

pub(crate) fn lex(text: &str) -> Res<Vec<Tok>> {
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

pub(crate) struct Parser {
    pub(crate) toks: Vec<Tok>,
    pub(crate) at: usize,
}

impl Parser {
    pub(crate) fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }
    pub(crate) fn next(&mut self) -> Res<Tok> {
        let t = self.toks.get(self.at).cloned().ok_or_else(|| CqlError::Syntax("unexpected end of statement".into()))?;
        self.at += 1;
        Ok(t)
    }
    pub(crate) fn word(&mut self) -> Res<String> {
        match self.next()? {
            Tok::Word(w) => Ok(w),
            t => Err(CqlError::Syntax(format!("expected a name, found {t:?}"))),
        }
    }
    pub(crate) fn kw(&mut self, k: &str) -> Res<()> {
        match self.next()? {
            Tok::Word(w) if w == k => Ok(()),
            t => Err(CqlError::Syntax(format!("expected {k}, found {t:?}"))),
        }
    }
    pub(crate) fn is_kw(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w == k)
    }
    pub(crate) fn eat_kw(&mut self, k: &str) -> bool {
        let yes = self.is_kw(k);
        if yes {
            self.at += 1;
        }
        yes
    }
    pub(crate) fn sym(&mut self, s: &str) -> Res<()> {
        match self.next()? {
            Tok::Sym(x) if x == s => Ok(()),
            t => Err(CqlError::Syntax(format!("expected {s}, found {t:?}"))),
        }
    }
    pub(crate) fn eat_sym(&mut self, s: &str) -> bool {
        let yes = matches!(self.peek(), Some(Tok::Sym(x)) if *x == s);
        if yes {
            self.at += 1;
        }
        yes
    }
    /// `ks.table` (a keyspace is required: the double has no `USE`).
    pub(crate) fn table(&mut self) -> Res<String> {
        let ks = self.word()?;
        self.sym(".")?;
        Ok(format!("{ks}.{}", self.word()?))
    }
    pub(crate) fn expr(&mut self) -> Res<Expr> {
        match self.next()? {
            Tok::Sym("?") => Ok(Expr::Bind),
            Tok::Str(s) | Tok::Num(s) => Ok(Expr::Lit(s)),
            t => Err(CqlError::Syntax(format!("expected a value or ?, found {t:?}"))),
        }
    }
    pub(crate) fn conds(&mut self) -> Res<Vec<Cond>> {
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
    pub(crate) fn done(&self) -> Res<()> {
        match self.peek() {
            None => Ok(()),
            Some(t) => Err(CqlError::Syntax(format!("unexpected {t:?} (not supported by the CQL double)"))),
        }
    }
}

pub(crate) fn parse(text: &str) -> Res<Stmt> {
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
        "alter" => {
            p.kw("table")?;
            let table = p.table()?;
            p.kw("add")?;
            let col = p.word()?;
            let ty = Ty::parse(&p.word()?)?;
            Stmt::AlterAdd { table, col, ty }
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

pub(crate) fn create_table(p: &mut Parser) -> Res<TableDef> {
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
