//! DriftQL lexer and parser. Statements are separated by `;`, or by a
//! newline where a statement is complete: a statement may span lines, and a
//! line break inside one (or inside brackets, braces or a string) continues
//! it; `--` starts a comment; keywords are case-insensitive.
//! Every error names the line and column and what was expected.

use super::ast::*;
use crate::table::Isolation;
use crate::table::Pk;
use crate::{Error, Result};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(serde_json::Number),
    Json(Value),
    AtSeq(u64),
    AtNow,
    Sym(&'static str),
    Sep,
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
    col: usize,
    /// A line break comes between the previous token and this one.
    nl: bool,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) => format!("`{w}`"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Num(n) => format!("number {n}"),
        Tok::Json(_) => "a JSON object".into(),
        Tok::AtSeq(n) => format!("@seq:{n}"),
        Tok::AtNow => "@now".into(),
        Tok::Sym(s) => format!("`{s}`"),
        Tok::Sep => "end of statement".into(),
        Tok::Eof => "end of input".into(),
    }
}

fn err(line: usize, col: usize, msg: impl std::fmt::Display) -> Error {
    Error::Query(format!("line {line}, column {col}: {msg}"))
}

fn adv(chars: &[char], i: &mut usize, line: &mut usize, col: &mut usize, n: usize) {
    for k in 0..n {
        if chars[*i + k] == '\n' {
            *line += 1;
            *col = 1;
        } else {
            *col += 1;
        }
    }
    *i += n;
}

fn lex(src: &str) -> Result<Vec<Token>> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line, mut col) = (0usize, 1usize, 1usize);
    let mut nl = false;
    while i < chars.len() {
        let c = chars[i];
        let (tl, tc) = (line, col);
        if c == '\n' {
            nl = true;
            adv(&chars, &mut i, &mut line, &mut col, 1);
            continue;
        }
        if c.is_whitespace() {
            adv(&chars, &mut i, &mut line, &mut col, 1);
            continue;
        }
        if c == '-' && chars.get(i + 1) == Some(&'-') {
            let n = chars[i..].iter().take_while(|ch| **ch != '\n').count();
            adv(&chars, &mut i, &mut line, &mut col, n);
            continue;
        }
        let (tok, n) = match c {
            ';' => (Tok::Sep, 1),
            '{' => lex_json(&chars, i, tl, tc)?,
            '"' | '\'' => lex_string(&chars, i, tl, tc)?,
            '@' => lex_point(&chars, i, tl, tc)?,
            c if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) => {
                lex_number(&chars, i, tl, tc)?
            }
            c if c.is_alphabetic() || c == '_' => {
                let n = chars[i..].iter().take_while(|ch| ch.is_alphanumeric() || **ch == '_').count();
                (Tok::Word(chars[i..i + n].iter().collect()), n)
            }
            _ => lex_symbol(&chars, i, tl, tc)?,
        };
        adv(&chars, &mut i, &mut line, &mut col, n);
        out.push(Token { tok, line: tl, col: tc, nl: std::mem::take(&mut nl) });
    }
    out.push(Token { tok: Tok::Eof, line, col, nl });
    Ok(out)
}

/// A JSON object starting at `chars[i]`: its end found (honouring strings),
/// then parsed (a repeated key refused). Returns the token and its length.
fn lex_json(chars: &[char], i: usize, tl: usize, tc: usize) -> Result<(Tok, usize)> {
    let (mut j, mut d, mut in_str, mut esc) = (i, 0i32, false, false);
    while j < chars.len() {
        let ch = chars[j];
        if in_str {
            if esc {
                esc = false;
            } else if ch == '\\' {
                esc = true;
            } else if ch == '"' {
                in_str = false;
            }
        } else if ch == '"' {
            in_str = true;
        } else if ch == '{' || ch == '[' {
            d += 1;
        } else if ch == '}' || ch == ']' {
            d -= 1;
            if d == 0 {
                break;
            }
        }
        j += 1;
    }
    if j >= chars.len() {
        return Err(err(tl, tc, "unterminated JSON object: expected `}`"));
    }
    let text: String = chars[i..=j].iter().collect();
    let v: Value = crate::table::doc::parse_strict(&text).map_err(|e| {
        // serde_json counts bytes within the line; report characters.
        let line_text = text.lines().nth(e.line().saturating_sub(1)).unwrap_or("");
        let mut byte = e.column().saturating_sub(1).min(line_text.len());
        while !line_text.is_char_boundary(byte) {
            byte -= 1;
        }
        let chars_before = line_text[..byte].chars().count();
        let (l, c2) = (tl + e.line() - 1, if e.line() == 1 { tc + chars_before } else { chars_before + 1 });
        err(l, c2, format!("invalid JSON: {e}"))
    })?;
    Ok((Tok::Json(v), j + 1 - i))
}

/// A string in `"..."` or `'...'` starting at `chars[i]`: its escapes
/// decoded as JSON does (\" \\ \/ \b \f \n \r \t \uXXXX; in '...' also
/// \'); an unknown escape is an error.
fn lex_string(chars: &[char], i: usize, tl: usize, tc: usize) -> Result<(Tok, usize)> {
    let q = chars[i];
    let mut j = i + 1;
    let mut json = String::from("\"");
    loop {
        let Some(&ch) = chars.get(j) else {
            return Err(err(tl, tc, format!("unterminated string: expected closing {q}")));
        };
        if ch == '\\' {
            let Some(&n) = chars.get(j + 1) else {
                return Err(err(tl, tc, "unterminated string"));
            };
            if q == '\'' && n == '\'' {
                json.push('\'');
            } else {
                json.push('\\');
                json.push(n);
            }
            j += 2;
            continue;
        }
        if ch == q {
            break;
        }
        if ch == '"' {
            json.push_str("\\\"");
        } else {
            json.push(ch);
        }
        j += 1;
    }
    json.push('"');
    let s: String = serde_json::from_str(&json).map_err(|e| err(tl, tc, format!("invalid string literal: {e}")))?;
    Ok((Tok::Str(s), j + 1 - i))
}

/// A number starting at `chars[i]`, as JSON writes numbers.
fn lex_number(chars: &[char], i: usize, tl: usize, tc: usize) -> Result<(Tok, usize)> {
    let mut j = i + 1;
    while j < chars.len() && (chars[j].is_ascii_alphanumeric() || matches!(chars[j], '.' | '+' | '-')) {
        if matches!(chars[j], '+' | '-') && !matches!(chars[j - 1], 'e' | 'E') {
            break;
        }
        j += 1;
    }
    let text: String = chars[i..j].iter().collect();
    let n: serde_json::Number =
        serde_json::from_str(&text).map_err(|_| err(tl, tc, format!("malformed number `{text}`")))?;
    Ok((Tok::Num(n), j - i))
}

/// `@seq:N` or `@now` starting at `chars[i]`.
fn lex_point(chars: &[char], i: usize, tl: usize, tc: usize) -> Result<(Tok, usize)> {
    let n = 1 + chars[i + 1..].iter().take_while(|ch| ch.is_ascii_alphanumeric() || **ch == ':').count();
    let text: String = chars[i..i + n].iter().collect();
    let lower = text.to_ascii_lowercase();
    let tok = if lower == "@now" {
        Tok::AtNow
    } else if let Some(num) = lower.strip_prefix("@seq:") {
        Tok::AtSeq(
            num.parse().map_err(|_| err(tl, tc, format!("malformed `{text}`: expected @seq:N with N a number")))?,
        )
    } else {
        return Err(err(tl, tc, format!("unknown `{text}`: expected @seq:N or @now")));
    };
    Ok((tok, n))
}

/// An operator or punctuation starting at `chars[i]`.
fn lex_symbol(chars: &[char], i: usize, tl: usize, tc: usize) -> Result<(Tok, usize)> {
    let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
    let sym = match two.as_str() {
        "!=" | "<>" => Some("!="),
        "<=" => Some("<="),
        ">=" => Some(">="),
        _ => None,
    };
    if let Some(s) = sym {
        return Ok((Tok::Sym(s), 2));
    }
    let sym = match chars[i] {
        '(' => "(",
        ')' => ")",
        ',' => ",",
        '*' => "*",
        '=' => "=",
        '<' => "<",
        '>' => ">",
        '.' => ".",
        c => return Err(err(tl, tc, format!("unexpected character {c:?}"))),
    };
    Ok((Tok::Sym(sym), 1))
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
    /// Nesting depth of the expression being parsed.
    depth: usize,
    /// Expression nodes in the current statement.
    nodes: usize,
}

/// Deepest nesting of parentheses and `NOT` in an expression.
const MAX_DEPTH: usize = 64;
/// Most conditions in one expression.
const MAX_NODES: usize = 1024;

/// Parse a script of statements.
pub fn parse(src: &str) -> Result<Vec<Stmt>> {
    let mut p = Parser { toks: lex(src)?, pos: 0, depth: 0, nodes: 0 };
    let mut out = Vec::new();
    loop {
        while p.peek() == &Tok::Sep {
            p.pos += 1;
        }
        if p.peek() == &Tok::Eof {
            break;
        }
        out.push(p.statement()?);
        match p.peek() {
            Tok::Sep | Tok::Eof => {}
            // A line break after a complete statement ends it.
            _ if p.toks[p.pos].nl => {}
            _ => return Err(p.expected("end of statement (`;` or a new line)")),
        }
    }
    Ok(out)
}

/// Parse exactly one statement.
pub fn parse_one(src: &str) -> Result<Stmt> {
    let mut v = parse(src)?;
    if v.len() != 1 {
        return Err(Error::Query(format!("expected one statement, found {}", v.len())));
    }
    Ok(v.remove(0))
}

use super::ast::RESERVED;

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].tok
    }

    fn here(&self) -> (usize, usize) {
        let t = &self.toks[self.pos];
        (t.line, t.col)
    }

    fn expected(&self, what: &str) -> Error {
        let (l, c) = self.here();
        err(l, c, format!("expected {what}, found {}", describe(self.peek())))
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn kw(&mut self, kw: &str) -> Result<()> {
        if self.eat_kw(kw) { Ok(()) } else { Err(self.expected(&format!("`{}`", kw.to_ascii_uppercase()))) }
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Tok::Sym(x) if *x == s) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn sym(&mut self, s: &str) -> Result<()> {
        if self.eat_sym(s) { Ok(()) } else { Err(self.expected(&format!("`{s}`"))) }
    }

    fn ident(&mut self, what: &str) -> Result<String> {
        match self.peek().clone() {
            Tok::Word(w) if !RESERVED.iter().any(|r| w.eq_ignore_ascii_case(r)) => {
                self.pos += 1;
                Ok(w)
            }
            // Any name may be written as a quoted string (needed for reserved
            // words and names that are not plain identifiers).
            Tok::Str(s) => {
                self.pos += 1;
                Ok(s)
            }
            _ => Err(self.expected(what)),
        }
    }

    fn path(&mut self) -> Result<Path> {
        let mut p = vec![self.ident("a field name")?];
        while self.eat_sym(".") {
            p.push(self.ident("a field name")?);
        }
        Ok(p)
    }

    fn literal(&mut self) -> Result<Value> {
        let v = match self.peek().clone() {
            Tok::Str(s) => Value::String(s),
            Tok::Num(n) => Value::Number(n),
            Tok::Json(v) => v,
            Tok::Word(w) if w.eq_ignore_ascii_case("true") => Value::Bool(true),
            Tok::Word(w) if w.eq_ignore_ascii_case("false") => Value::Bool(false),
            Tok::Word(w) if w.eq_ignore_ascii_case("null") => Value::Null,
            _ => return Err(self.expected("a literal (string, number, true, false or null)")),
        };
        self.pos += 1;
        Ok(v)
    }

    fn key(&mut self) -> Result<Pk> {
        let (l, c) = self.here();
        let v = self.literal()?;
        Pk::from_json(&v).ok_or_else(|| err(l, c, "expected a key: a string or an integer"))
    }

    fn json_object(&mut self) -> Result<serde_json::Map<String, Value>> {
        match self.peek().clone() {
            Tok::Json(Value::Object(m)) => {
                self.pos += 1;
                Ok(m)
            }
            _ => Err(self.expected("a JSON object `{...}`")),
        }
    }

    fn as_of(&mut self) -> Result<AsOf> {
        let (l, c) = self.here();
        match self.peek().clone() {
            Tok::AtSeq(n) => {
                self.pos += 1;
                Ok(AsOf::Seq(n))
            }
            Tok::AtNow => {
                self.pos += 1;
                Ok(AsOf::Now)
            }
            Tok::Str(s) => {
                self.pos += 1;
                let micros = crate::table::time::parse_rfc3339(&s).map_err(|e| err(l, c, e))?;
                Ok(AsOf::Time(s, micros))
            }
            _ => Err(self.expected("@seq:N, an RFC 3339 time in quotes, or @now")),
        }
    }

    /// `ON t (f)` of `CREATE INDEX` / `DROP INDEX`.
    fn index_target(&mut self) -> Result<(String, String)> {
        self.kw("on")?;
        let table = self.ident("table name")?;
        self.sym("(")?;
        let column = self.ident("indexed field")?;
        self.sym(")")?;
        Ok((table, column))
    }

    fn alter(&mut self) -> Result<Stmt> {
        use crate::table::schema::Alter;
        self.kw("table")?;
        let table = self.ident("table name")?;
        let alter = if self.eat_kw("add") {
            self.eat_kw("column");
            let column = self.ident("column name")?;
            let default = if self.eat_kw("default") { Some(self.literal()?).filter(|v| !v.is_null()) } else { None };
            Alter::AddColumn { column, default }
        } else if self.eat_kw("drop") {
            self.eat_kw("column");
            Alter::DropColumn { column: self.ident("column name")? }
        } else if self.eat_kw("rename") {
            self.eat_kw("column");
            let column = self.ident("column name")?;
            self.kw("to")?;
            Alter::RenameColumn { column, to: self.ident("new column name")? }
        } else {
            return Err(self.expected("ADD COLUMN, DROP COLUMN or RENAME COLUMN"));
        };
        Ok(Stmt::Alter { table, alter })
    }

    fn statement(&mut self) -> Result<Stmt> {
        use crate::table::schema::Alter;
        if self.eat_kw("alter") {
            return self.alter();
        }
        if self.is_kw("create")
            && matches!(self.toks.get(self.pos + 1).map(|t| &t.tok), Some(Tok::Word(w)) if w.eq_ignore_ascii_case("index"))
        {
            self.pos += 2;
            let (table, column) = self.index_target()?;
            return Ok(Stmt::Alter { table, alter: Alter::CreateIndex { column } });
        }
        if self.eat_kw("drop") {
            self.kw("index")?;
            let (table, column) = self.index_target()?;
            return Ok(Stmt::Alter { table, alter: Alter::DropIndex { column } });
        }
        if self.eat_kw("expect") {
            self.sym("(")?;
            let query = self.select()?;
            self.sym(")")?;
            let op = self.cmp_op()?;
            let value = self.literal()?;
            return Ok(Stmt::Expect { query, op, value });
        }
        if self.eat_kw("create") {
            self.kw("table")?;
            let name = self.ident("table name")?;
            self.sym("(")?;
            let mut pk = None;
            let mut indexes = Vec::new();
            loop {
                if self.eat_kw("pk") {
                    self.sym("=")?;
                    pk = Some(self.ident("primary key field")?);
                } else if self.eat_kw("index") {
                    self.sym("(")?;
                    loop {
                        indexes.push(self.ident("indexed field")?);
                        if !self.eat_sym(",") {
                            break;
                        }
                    }
                    self.sym(")")?;
                } else {
                    return Err(self.expected("`pk=field` or `INDEX(field, ...)`"));
                }
                if !self.eat_sym(",") {
                    break;
                }
            }
            self.sym(")")?;
            let Some(pk) = pk else {
                return Err(self.expected("a primary key declaration `pk=field` in the table definition"));
            };
            return Ok(Stmt::CreateTable { name, pk, indexes });
        }
        if self.eat_kw("insert") {
            self.kw("into")?;
            let table = self.ident("table name")?;
            let doc = self.json_object()?;
            return Ok(Stmt::Insert { table, doc });
        }
        if self.eat_kw("patch") {
            let table = self.ident("table name")?;
            self.kw("key")?;
            let key = self.key()?;
            self.kw("set")?;
            let set = self.json_object()?;
            return Ok(Stmt::Patch { table, key, set });
        }
        if self.eat_kw("soft") {
            self.kw("delete")?;
            self.kw("from")?;
            let table = self.ident("table name")?;
            self.kw("key")?;
            let key = self.key()?;
            return Ok(Stmt::SoftDelete { table, key });
        }
        if self.eat_kw("show") {
            if self.eat_kw("tables") {
                return Ok(Stmt::ShowTables);
            }
            if self.eat_kw("drift") {
                let table = self.ident("table name")?;
                self.kw("key")?;
                let key = self.key()?;
                return Ok(Stmt::ShowDrift { table, key });
            }
            return Err(self.expected("`TABLES` or `DRIFT`"));
        }
        if self.eat_kw("compact") {
            let table = self.ident("table name")?;
            let before = if self.eat_kw("before") { Some(self.as_of()?) } else { None };
            return Ok(Stmt::Compact { table, before });
        }
        if self.eat_kw("snapshot") {
            let table = self.ident("table name")?;
            return Ok(Stmt::Snapshot { table });
        }
        if self.eat_kw("describe") {
            let table = self.ident("table name")?;
            let as_of = if self.eat_kw("as") {
                self.kw("of")?;
                Some(self.as_of()?)
            } else {
                None
            };
            return Ok(Stmt::Describe { table, as_of });
        }
        if self.is_kw("select") {
            return self.select().map(Stmt::Select);
        }
        if self.eat_kw("begin") {
            self.eat_kw("transaction");
            if !self.eat_kw("isolation") {
                return Ok(Stmt::Begin(None));
            }
            self.kw("level")?;
            let iso = if self.eat_kw("read") {
                self.kw("committed")?;
                Isolation::ReadCommitted
            } else if self.eat_kw("snapshot") {
                Isolation::Snapshot
            } else if self.eat_kw("serializable") {
                Isolation::Serializable
            } else {
                return Err(self.expected("READ COMMITTED, SNAPSHOT or SERIALIZABLE"));
            };
            return Ok(Stmt::Begin(Some(iso)));
        }
        if self.eat_kw("commit") {
            return Ok(Stmt::Commit);
        }
        if self.eat_kw("rollback") {
            return Ok(Stmt::Rollback);
        }
        Err(self.expected(
            "a statement (CREATE TABLE, INSERT, PATCH, SOFT DELETE, SELECT, SHOW, DESCRIBE, SNAPSHOT, COMPACT, BEGIN, COMMIT, ROLLBACK, ALTER TABLE, CREATE INDEX, DROP INDEX, EXPECT)",
        ))
    }

    fn select(&mut self) -> Result<Select> {
        self.kw("select")?;
        let items = if self.eat_sym("*") {
            Vec::new()
        } else {
            let mut v = Vec::new();
            loop {
                v.push(self.item()?);
                if !self.eat_sym(",") {
                    break;
                }
            }
            v
        };
        self.kw("from")?;
        let table = self.ident("table name")?;
        let mut s = Select {
            items,
            table,
            filter: None,
            as_of: None,
            group_by: Vec::new(),
            order_by: Vec::new(),
            limit: None,
            offset: 0,
        };
        loop {
            if s.filter.is_none() && self.eat_kw("where") {
                s.filter = Some(self.expr()?);
            } else if s.as_of.is_none() && self.is_kw("as") {
                self.pos += 1;
                self.kw("of")?;
                s.as_of = Some(self.as_of()?);
            } else {
                break;
            }
        }
        if self.eat_kw("group") {
            self.kw("by")?;
            loop {
                s.group_by.push(self.path()?);
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        if self.eat_kw("order") {
            self.kw("by")?;
            loop {
                let p = self.path()?;
                let desc = if self.eat_kw("desc") {
                    true
                } else {
                    self.eat_kw("asc");
                    false
                };
                s.order_by.push((p, desc));
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        if self.eat_kw("limit") {
            s.limit = Some(self.count("a row count after LIMIT")?);
            if self.eat_kw("offset") {
                s.offset = self.count("a row count after OFFSET")?;
            }
        }
        Ok(s)
    }

    fn count(&mut self, what: &str) -> Result<u64> {
        match self.peek().clone() {
            Tok::Num(n) if n.as_u64().is_some() => {
                self.pos += 1;
                Ok(n.as_u64().unwrap_or(0))
            }
            _ => Err(self.expected(what)),
        }
    }

    fn item(&mut self) -> Result<Item> {
        for (name, f) in
            [("count", Agg::Count), ("sum", Agg::Sum), ("avg", Agg::Avg), ("min", Agg::Min), ("max", Agg::Max)]
        {
            if self.is_kw(name) && matches!(self.toks.get(self.pos + 1).map(|t| &t.tok), Some(Tok::Sym("("))) {
                self.pos += 2;
                let arg = if f == Agg::Count && self.eat_sym("*") { None } else { Some(self.path()?) };
                self.sym(")")?;
                return Ok(Item::Agg(f, arg));
            }
        }
        Ok(Item::Field(self.path()?))
    }

    fn node(&mut self) -> Result<()> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(self.expected(&format!("a shorter expression (at most {MAX_NODES} conditions)")));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr> {
        self.nodes = 0;
        self.expr_inner()
    }

    fn expr_inner(&mut self) -> Result<Expr> {
        let mut e = self.and_expr()?;
        while self.eat_kw("or") {
            e = Expr::Or(Box::new(e), Box::new(self.and_expr()?));
        }
        Ok(e)
    }

    fn and_expr(&mut self) -> Result<Expr> {
        let mut e = self.not_expr()?;
        while self.eat_kw("and") {
            e = Expr::And(Box::new(e), Box::new(self.not_expr()?));
        }
        Ok(e)
    }

    fn cmp_op(&mut self) -> Result<CmpOp> {
        let op = match self.peek() {
            Tok::Sym("=") => CmpOp::Eq,
            Tok::Sym("!=") => CmpOp::Ne,
            Tok::Sym("<") => CmpOp::Lt,
            Tok::Sym("<=") => CmpOp::Le,
            Tok::Sym(">") => CmpOp::Gt,
            Tok::Sym(">=") => CmpOp::Ge,
            _ => return Err(self.expected("a comparison (= != < <= > >=)")),
        };
        self.pos += 1;
        Ok(op)
    }

    fn not_expr(&mut self) -> Result<Expr> {
        self.node()?;
        if self.is_kw("not") || matches!(self.peek(), Tok::Sym("(")) {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(self.expected(&format!("less nesting (at most {MAX_DEPTH} levels of parentheses and NOT)")));
            }
            let r = if self.eat_kw("not") {
                self.not_expr().map(|e| Expr::Not(Box::new(e)))
            } else {
                self.pos += 1;
                let e = self.expr_inner();
                e.and_then(|e| self.sym(")").map(|()| e))
            };
            self.depth -= 1;
            return r;
        }
        let p = self.path()?;
        if self.eat_kw("is") {
            let negated = self.eat_kw("not");
            self.kw("null")?;
            return Ok(Expr::IsNull(p, negated));
        }
        if self.eat_kw("in") {
            self.sym("(")?;
            let mut vals = Vec::new();
            loop {
                vals.push(self.literal()?);
                if !self.eat_sym(",") {
                    break;
                }
            }
            self.sym(")")?;
            return Ok(Expr::In(p, vals));
        }
        let op = self.cmp_op().map_err(|_| self.expected("a comparison (= != < <= > >=), IN or IS [NOT] NULL"))?;
        let v = self.literal()?;
        Ok(Expr::Cmp(p, op, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_examples() {
        let s = parse(
            r#"
            CREATE TABLE orders (pk=id, INDEX(status, customer_id))
            INSERT INTO orders {"id": "o1", "status": "pending",
                                "amount": 100}  -- a comment
            PATCH orders KEY "o1" SET {"status": "paid", "note": null}; SOFT DELETE FROM orders KEY "o1"
            SELECT id, a.b, COUNT(*) FROM orders WHERE status = 'paid' AND (amount > 5 OR NOT x IS NULL) AS OF @seq:2 GROUP BY id ORDER BY amount DESC, id LIMIT 10 OFFSET 2
            SELECT * FROM orders AS OF "2025-01-01T00:00:00Z"
            SHOW DRIFT orders KEY 1
            SHOW TABLES
            DESCRIBE orders
            "#,
        )
        .unwrap();
        assert_eq!(s.len(), 9);
        assert_eq!(
            s[0],
            Stmt::CreateTable {
                name: "orders".into(),
                pk: "id".into(),
                indexes: vec!["status".into(), "customer_id".into()]
            }
        );
        assert!(matches!(&s[1], Stmt::Insert { doc, .. } if doc["amount"] == 100));
        assert!(matches!(&s[6], Stmt::ShowDrift { key: Pk::Int(1), .. }));
        let Stmt::Select(sel) = &s[4] else { panic!() };
        assert_eq!(sel.limit, Some(10));
        assert_eq!(sel.offset, 2);
        assert_eq!(sel.as_of, Some(AsOf::Seq(2)));
        assert_eq!(sel.items.len(), 3);
    }

    #[test]
    fn a_statement_may_span_lines_and_one_statement_per_line_still_works() {
        let pasted = parse(
            "SELECT id, status\n  FROM orders\n  WHERE amount > 10\n    AND status = 'paid'\n  ORDER BY id\n  LIMIT 5;\nINSERT INTO orders\n  {\"id\": \"o9\",\n   \"tags\": [\"a\",\n            \"b\"]}\nALTER TABLE orders\n  ADD COLUMN currency\n  DEFAULT 'EUR'\nCREATE TABLE t (\n  pk=id,\n  INDEX(a,\n        b))",
        )
        .unwrap();
        assert_eq!(pasted.len(), 4, "{pasted:?}");
        let Stmt::Select(sel) = &pasted[0] else { panic!("{:?}", pasted[0]) };
        assert_eq!((sel.table.as_str(), sel.limit), ("orders", Some(5)));
        assert!(sel.filter.is_some());
        assert!(matches!(&pasted[1], Stmt::Insert { doc, .. } if doc["tags"][1] == "b"));
        assert!(matches!(&pasted[2], Stmt::Alter { .. }));
        // One statement per line, as scripts have always been written.
        let lines = parse("SELECT * FROM a\nSELECT * FROM b WHERE x = 1\nSHOW TABLES\nBEGIN\nCOMMIT").unwrap();
        assert_eq!(lines.len(), 5);
        // A line that cannot continue the statement is still an error where it is.
        let e = parse("SELECT * FROM a WHERE x = 1 y").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("end of statement"), "{e}");
    }

    #[test]
    fn transaction_statements_parse_and_print_back() {
        let s = parse(
            "BEGIN\nbegin transaction isolation level read committed\nBEGIN ISOLATION LEVEL SNAPSHOT\nBEGIN ISOLATION LEVEL SERIALIZABLE\nCOMMIT\nrollback",
        )
        .unwrap();
        assert_eq!(
            s,
            vec![
                Stmt::Begin(None),
                Stmt::Begin(Some(Isolation::ReadCommitted)),
                Stmt::Begin(Some(Isolation::Snapshot)),
                Stmt::Begin(Some(Isolation::Serializable)),
                Stmt::Commit,
                Stmt::Rollback
            ]
        );
        for st in &s {
            assert_eq!(&parse_one(&st.to_string()).unwrap(), st);
        }
        let e = parse("BEGIN ISOLATION LEVEL REPEATABLE READ").unwrap_err().to_string();
        assert!(e.contains("READ COMMITTED, SNAPSHOT or SERIALIZABLE"), "{e}");
        assert!(parse("BEGIN ISOLATION LEVEL READ UNCOMMITTED").is_err());
    }

    #[test]
    fn schema_statements_and_expect_parse_and_print_back() {
        use crate::table::schema::Alter;
        let src = "ALTER TABLE users ADD COLUMN tier DEFAULT \"free\"\n\
            alter table users add flags default {\"a\": [1]}\n\
            ALTER TABLE users ADD COLUMN note DEFAULT null\n\
            ALTER TABLE users DROP COLUMN ssn\n\
            ALTER TABLE \"my users\" RENAME COLUMN name TO \"key\"\n\
            CREATE INDEX ON users (tier)\n\
            DROP INDEX ON users (tier)\n\
            EXPECT (SELECT COUNT(*) FROM users WHERE tier IS NULL) = 0\n\
            EXPECT (SELECT MAX(age) FROM users\n  AS OF @seq:3) <= 120.5\n\
            DESCRIBE users AS OF @seq:4";
        let s = parse(src).unwrap();
        assert_eq!(s.len(), 10);
        assert_eq!(
            s[0],
            Stmt::Alter {
                table: "users".into(),
                alter: Alter::AddColumn { column: "tier".into(), default: Some(Value::from("free")) }
            }
        );
        // `DEFAULT null` is no default.
        assert_eq!(
            s[2],
            Stmt::Alter { table: "users".into(), alter: Alter::AddColumn { column: "note".into(), default: None } }
        );
        assert!(matches!(&s[8], Stmt::Expect { op: CmpOp::Le, query, .. } if query.as_of == Some(AsOf::Seq(3))));
        for st in &s {
            assert_eq!(&parse_one(&st.to_string()).unwrap(), st);
        }
        for bad in [
            "ALTER TABLE users",
            "ALTER TABLE users RENAME COLUMN a b",
            "CREATE INDEX users (a)",
            "DROP INDEX ON users a",
            "EXPECT SELECT COUNT(*) FROM users = 0",
            "EXPECT (SELECT COUNT(*) FROM users) 0",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("line 1, column") && e.contains("expected"), "{bad}: {e}");
        }
    }

    #[test]
    fn errors_name_line_column_and_expectation() {
        let e = parse("SELECT * FROM orders\nSELEKT x FROM y").unwrap_err().to_string();
        assert!(e.contains("line 2, column 1") && e.contains("expected a statement"), "{e}");
        let e = parse("SELECT * FROM orders WHERE amount >").unwrap_err().to_string();
        assert!(e.contains("line 1, column 36") && e.contains("expected a literal"), "{e}");
        let e = parse("SELECT * FROM t AS OF \"2025-13-40\"").unwrap_err().to_string();
        assert!(e.contains("malformed timestamp"), "{e}");
        let e = parse("INSERT INTO t {\"a\": }").unwrap_err().to_string();
        assert!(e.contains("invalid JSON"), "{e}");
        let e = parse("PATCH t KEY 1.5 SET {}").unwrap_err().to_string();
        assert!(e.contains("expected a key"), "{e}");
        let e = parse("CREATE TABLE t (INDEX(a))").unwrap_err().to_string();
        assert!(e.contains("primary key"), "{e}");
        assert!(parse("SELECT * FROM t LIMIT -1").is_err());
        assert!(parse("SELECT * FROM t @bogus").is_err());
        // JSON escapes in strings; unknown escapes are errors.
        let Stmt::Select(sel) = parse_one(r#"SELECT * FROM t WHERE n = "caf\u00e9\n" OR m = 'it\'s'"#).unwrap() else {
            panic!()
        };
        assert_eq!(sel.filter.unwrap().to_string(), r#"(n = "café\n" OR m = "it's")"#);
        assert!(parse(r#"SELECT * FROM t WHERE n = "\q""#).is_err());
        // Quoted names for reserved words and odd table names.
        assert!(
            matches!(parse_one(r#"SELECT "key" FROM "my-orders""#).unwrap(), Stmt::Select(s) if s.table == "my-orders")
        );
        // Limits on nesting and size: errors, not stack overflows.
        let deep = format!("SELECT * FROM t WHERE {}a = 1{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(parse(&deep).unwrap_err().to_string().contains("less nesting"));
        let nots = format!("SELECT * FROM t WHERE {}a = 1", "NOT ".repeat(100_000));
        assert!(parse(&nots).is_err());
        let long = format!("SELECT * FROM t WHERE {}", vec!["a = 1"; 100_000].join(" AND "));
        assert!(parse(&long).unwrap_err().to_string().contains("shorter expression"));
        // Errors after a multi-byte character still point at the right column.
        let e = parse("INSERT INTO t {\"é\": }").unwrap_err().to_string();
        assert!(e.contains("column 21"), "{e}");
    }
}
