//! DriftQL syntax tree. `Display` prints a statement back as DriftQL that
//! parses to the same tree.

use crate::table::Pk;
use serde_json::Value;
use std::fmt;

/// Words that cannot be bare names (write them as quoted strings).
pub const RESERVED: &[&str] = &[
    "select", "from", "where", "as", "of", "order", "by", "limit", "offset", "group", "and", "or", "not", "in", "is",
    "null", "asc", "desc", "key", "set", "true", "false", "before",
];

/// A name as DriftQL text: bare if it is a plain identifier and not a
/// reserved word, otherwise a quoted string.
pub fn quote_ident(s: &str) -> String {
    let plain = s.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_alphanumeric() || c == '_')
        && !RESERVED.iter().any(|r| s.eq_ignore_ascii_case(r));
    if plain { s.to_string() } else { Value::from(s).to_string() }
}

/// A field path: `a.b.c`.
pub type Path = Vec<String>;

/// A statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    /// `CREATE TABLE name (pk=field, INDEX(a, b))`
    CreateTable {
        /// Table name.
        name: String,
        /// Primary key field.
        pk: String,
        /// Indexed fields.
        indexes: Vec<String>,
    },
    /// `INSERT INTO t {...}`
    Insert {
        /// Table.
        table: String,
        /// Document.
        doc: serde_json::Map<String, Value>,
    },
    /// `PATCH t KEY k SET {...}`
    Patch {
        /// Table.
        table: String,
        /// Row key.
        key: Pk,
        /// Fields to set (`null` removes).
        set: serde_json::Map<String, Value>,
    },
    /// `SOFT DELETE FROM t KEY k`
    SoftDelete {
        /// Table.
        table: String,
        /// Row key.
        key: Pk,
    },
    /// `SELECT ...`
    Select(Select),
    /// `BEGIN [ISOLATION LEVEL READ COMMITTED | SNAPSHOT | SERIALIZABLE]`
    Begin(Option<crate::table::Isolation>),
    /// `COMMIT`
    Commit,
    /// `ROLLBACK`
    Rollback,
    /// `SHOW TABLES`
    ShowTables,
    /// `SHOW DRIFT t KEY k`
    ShowDrift {
        /// Table.
        table: String,
        /// Row key.
        key: Pk,
    },
    /// `DESCRIBE t [AS OF point]`
    Describe {
        /// Table.
        table: String,
        /// The point in history whose schema to show (none: now).
        as_of: Option<AsOf>,
    },
    /// `ALTER TABLE t ADD COLUMN f [DEFAULT v]`, `ALTER TABLE t DROP COLUMN f`,
    /// `ALTER TABLE t RENAME COLUMN a TO b`, `CREATE INDEX ON t (f)`,
    /// `DROP INDEX ON t (f)`
    Alter {
        /// Table.
        table: String,
        /// The change.
        alter: crate::table::schema::Alter,
    },
    /// `EXPECT (SELECT ...) op literal`: the query's one value must compare
    /// as stated, or the statement fails.
    Expect {
        /// The query: one row of one value.
        query: Select,
        /// The comparison.
        op: CmpOp,
        /// What it is compared with.
        value: Value,
    },
    /// `SNAPSHOT t`
    Snapshot {
        /// Table.
        table: String,
    },
    /// `COMPACT t [BEFORE point]`
    Compact {
        /// Table.
        table: String,
        /// The horizon: history at or before it is folded.
        before: Option<AsOf>,
    },
}

/// A point in history.
#[derive(Debug, Clone, PartialEq)]
pub enum AsOf {
    /// `@seq:N`
    Seq(u64),
    /// `"RFC3339"` (text as written, microseconds)
    Time(String, i64),
    /// `@now`
    Now,
}

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    /// `COUNT(*)` or `COUNT(f)` (non-null values)
    Count,
    /// `SUM(f)` over numbers
    Sum,
    /// `AVG(f)` over numbers
    Avg,
    /// `MIN(f)`
    Min,
    /// `MAX(f)`
    Max,
}

/// A select-list item.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A field.
    Field(Path),
    /// An aggregate; `None` argument is `COUNT(*)`.
    Agg(Agg, Option<Path>),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A `WHERE` expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `a AND b`
    And(Box<Expr>, Box<Expr>),
    /// `a OR b`
    Or(Box<Expr>, Box<Expr>),
    /// `NOT a`
    Not(Box<Expr>),
    /// `path op literal`
    Cmp(Path, CmpOp, Value),
    /// `path IN (literals)`
    In(Path, Vec<Value>),
    /// `path IS NULL` (`true`: `IS NOT NULL`)
    IsNull(Path, bool),
}

/// A `SELECT`.
#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    /// Items; empty means `*`.
    pub items: Vec<Item>,
    /// Table.
    pub table: String,
    /// `WHERE`.
    pub filter: Option<Expr>,
    /// `AS OF`.
    pub as_of: Option<AsOf>,
    /// `GROUP BY`.
    pub group_by: Vec<Path>,
    /// `ORDER BY` (path, descending).
    pub order_by: Vec<(Path, bool)>,
    /// `LIMIT`.
    pub limit: Option<u64>,
    /// `OFFSET`.
    pub offset: u64,
}

fn ident(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str(&quote_ident(s))
}

fn path(f: &mut fmt::Formatter<'_>, p: &Path) -> fmt::Result {
    for (i, s) in p.iter().enumerate() {
        if i > 0 {
            f.write_str(".")?;
        }
        ident(f, s)?;
    }
    Ok(())
}

/// Name of an item as a result column: `a.b`, `COUNT(*)`, `SUM(amount)`.
pub fn item_name(i: &Item) -> String {
    match i {
        Item::Field(p) => p.join("."),
        Item::Agg(a, None) => format!("{}(*)", agg_name(*a)),
        Item::Agg(a, Some(p)) => format!("{}({})", agg_name(*a), p.join(".")),
    }
}

fn agg_name(a: Agg) -> &'static str {
    match a {
        Agg::Count => "COUNT",
        Agg::Sum => "SUM",
        Agg::Avg => "AVG",
        Agg::Min => "MIN",
        Agg::Max => "MAX",
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::And(a, b) => write!(f, "({a} AND {b})"),
            Expr::Or(a, b) => write!(f, "({a} OR {b})"),
            Expr::Not(a) => write!(f, "NOT {a}"),
            Expr::Cmp(p, op, v) => {
                path(f, p)?;
                write!(f, " {} {v}", cmp_text(*op))
            }
            Expr::In(p, vs) => {
                path(f, p)?;
                f.write_str(" IN (")?;
                for (i, v) in vs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str(")")
            }
            Expr::IsNull(p, neg) => {
                path(f, p)?;
                f.write_str(if *neg { " IS NOT NULL" } else { " IS NULL" })
            }
        }
    }
}

/// A comparison operator as DriftQL text.
pub fn cmp_text(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq => "=",
        CmpOp::Ne => "!=",
        CmpOp::Lt => "<",
        CmpOp::Le => "<=",
        CmpOp::Gt => ">",
        CmpOp::Ge => ">=",
    }
}

fn as_of_text(a: &AsOf) -> String {
    match a {
        AsOf::Seq(n) => format!("@seq:{n}"),
        AsOf::Now => "@now".to_string(),
        AsOf::Time(t, _) => Value::from(t.as_str()).to_string(),
    }
}

fn key(f: &mut fmt::Formatter<'_>, k: &Pk) -> fmt::Result {
    write!(f, "{}", k.to_json())
}

impl fmt::Display for Stmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stmt::CreateTable { name, pk, indexes } => {
                f.write_str("CREATE TABLE ")?;
                ident(f, name)?;
                f.write_str(" (pk=")?;
                ident(f, pk)?;
                if !indexes.is_empty() {
                    f.write_str(", INDEX(")?;
                    for (i, x) in indexes.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        ident(f, x)?;
                    }
                    f.write_str(")")?;
                }
                f.write_str(")")
            }
            Stmt::Insert { table, doc } => {
                f.write_str("INSERT INTO ")?;
                ident(f, table)?;
                write!(f, " {}", Value::Object(doc.clone()))
            }
            Stmt::Patch { table, key: k, set } => {
                f.write_str("PATCH ")?;
                ident(f, table)?;
                f.write_str(" KEY ")?;
                key(f, k)?;
                write!(f, " SET {}", Value::Object(set.clone()))
            }
            Stmt::SoftDelete { table, key: k } => {
                f.write_str("SOFT DELETE FROM ")?;
                ident(f, table)?;
                f.write_str(" KEY ")?;
                key(f, k)
            }
            Stmt::ShowTables => f.write_str("SHOW TABLES"),
            Stmt::Begin(None) => f.write_str("BEGIN"),
            Stmt::Begin(Some(iso)) => write!(f, "BEGIN ISOLATION LEVEL {}", iso.as_str()),
            Stmt::Commit => f.write_str("COMMIT"),
            Stmt::Rollback => f.write_str("ROLLBACK"),
            Stmt::ShowDrift { table, key: k } => {
                f.write_str("SHOW DRIFT ")?;
                ident(f, table)?;
                f.write_str(" KEY ")?;
                key(f, k)
            }
            Stmt::Describe { table, as_of } => {
                f.write_str("DESCRIBE ")?;
                ident(f, table)?;
                match as_of {
                    None => Ok(()),
                    Some(a) => write!(f, " AS OF {}", as_of_text(a)),
                }
            }
            Stmt::Alter { table, alter } => {
                use crate::table::schema::Alter as A;
                match alter {
                    A::CreateIndex { column } | A::DropIndex { column } => {
                        let verb = if matches!(alter, A::CreateIndex { .. }) { "CREATE" } else { "DROP" };
                        write!(f, "{verb} INDEX ON ")?;
                        ident(f, table)?;
                        f.write_str(" (")?;
                        ident(f, column)?;
                        f.write_str(")")
                    }
                    _ => {
                        f.write_str("ALTER TABLE ")?;
                        ident(f, table)?;
                        match alter {
                            A::AddColumn { column, default } => {
                                f.write_str(" ADD COLUMN ")?;
                                ident(f, column)?;
                                match default {
                                    Some(d) => write!(f, " DEFAULT {d}"),
                                    None => Ok(()),
                                }
                            }
                            A::DropColumn { column } => {
                                f.write_str(" DROP COLUMN ")?;
                                ident(f, column)
                            }
                            A::RenameColumn { column, to } => {
                                f.write_str(" RENAME COLUMN ")?;
                                ident(f, column)?;
                                f.write_str(" TO ")?;
                                ident(f, to)
                            }
                            A::CreateIndex { .. } | A::DropIndex { .. } => Ok(()),
                        }
                    }
                }
            }
            Stmt::Expect { query, op, value } => {
                write!(f, "EXPECT ({}) {} {value}", Stmt::Select(query.clone()), cmp_text(*op))
            }
            Stmt::Snapshot { table } => {
                f.write_str("SNAPSHOT ")?;
                ident(f, table)
            }
            Stmt::Compact { table, before } => {
                f.write_str("COMPACT ")?;
                ident(f, table)?;
                match before {
                    None => Ok(()),
                    Some(a) => write!(f, " BEFORE {}", as_of_text(a)),
                }
            }
            Stmt::Select(s) => {
                f.write_str("SELECT ")?;
                if s.items.is_empty() {
                    f.write_str("*")?;
                }
                for (i, it) in s.items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    match it {
                        Item::Field(p) => path(f, p)?,
                        Item::Agg(a, None) => write!(f, "{}(*)", agg_name(*a))?,
                        Item::Agg(a, Some(p)) => {
                            write!(f, "{}(", agg_name(*a))?;
                            path(f, p)?;
                            f.write_str(")")?;
                        }
                    }
                }
                f.write_str(" FROM ")?;
                ident(f, &s.table)?;
                if let Some(e) = &s.filter {
                    write!(f, " WHERE {e}")?;
                }
                if let Some(a) = &s.as_of {
                    write!(f, " AS OF {}", as_of_text(a))?;
                }
                if !s.group_by.is_empty() {
                    f.write_str(" GROUP BY ")?;
                    for (i, p) in s.group_by.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        path(f, p)?;
                    }
                }
                if !s.order_by.is_empty() {
                    f.write_str(" ORDER BY ")?;
                    for (i, (p, desc)) in s.order_by.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        path(f, p)?;
                        if *desc {
                            f.write_str(" DESC")?;
                        }
                    }
                }
                if let Some(l) = s.limit {
                    write!(f, " LIMIT {l}")?;
                    if s.offset > 0 {
                        write!(f, " OFFSET {}", s.offset)?;
                    }
                }
                Ok(())
            }
        }
    }
}
