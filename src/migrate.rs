//! Schema migrations: versioned DriftQL files applied in order, each as one
//! serializable transaction, recorded in the database with a checksum.
//!
//! A migrations folder holds files named `NNNN_name.driftql` (a version
//! number, an underscore, a name), numbered 1, 2, 3... without gaps. A file
//! holds DriftQL statements: schema changes, writes, queries and `EXPECT`
//! checks. The `EXPECT`s before the first change are its pre-conditions,
//! those after are its post-conditions; all run in order, inside the
//! migration's transaction, so a post-condition sees the migration's
//! changes.
//!
//! A migration commits as one commit (its changes and its record in
//! `_drift_migrations` together) or not at all: a failed check, any error,
//! a conflict or a crash leaves the database as it was. Applied files are
//! checked against their recorded SHA-256 on every run: an edited applied
//! file, a missing one, a gap or an out-of-order version stops everything
//! before any change.

use crate::query::ast::{Expr, Item, Select, Stmt};
use crate::table::Isolation;
use crate::table::Pk;
use crate::table::schema::Alter;
use crate::{Db, Error, Result};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The table that records applied migrations.
pub const HISTORY_TABLE: &str = "_drift_migrations";

/// A migration file.
#[derive(Debug, Clone)]
pub struct MigrationFile {
    /// Version number.
    pub version: u64,
    /// File name (`0002_add_tier.driftql`).
    pub file: String,
    /// Full path.
    pub path: PathBuf,
    /// The file's text.
    pub text: String,
    /// `sha256:` and the hex SHA-256 of the file's bytes.
    pub checksum: String,
}

/// A migration recorded as applied.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AppliedMigration {
    /// Version number.
    pub version: u64,
    /// File name when it was applied.
    pub file: String,
    /// Checksum of the file when it was applied.
    pub checksum: String,
    /// Sequence number of its commit.
    pub seq: u64,
}

/// Applied and pending migrations.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// Applied, in order.
    pub applied: Vec<AppliedMigration>,
    /// Pending: (version, file name), in order.
    pub pending: Vec<(u64, String)>,
}

/// What running a migration did (or, in a dry run, would do).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Version number.
    pub version: u64,
    /// File name.
    pub file: String,
    /// Sequence number of its commit (none in a dry run).
    pub seq: Option<u64>,
    /// Rows changed per table: rows written, plus rows an `ALTER TABLE`
    /// changes how they read (counted when it runs).
    pub rows_changed: BTreeMap<String, u64>,
    /// Schema changes.
    pub schema_changes: usize,
    /// `EXPECT` checks run (all held).
    pub checks: usize,
}

fn sha256(b: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut s = String::from("sha256:");
    for x in d.as_ref() {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// The migration files of `dir`, in version order. Other files are
/// ignored; a `.driftql` file with a malformed name, two files with one
/// version, or a gap in the numbering is an error.
pub fn discover(dir: &Path) -> Result<Vec<MigrationFile>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("read the migrations folder", dir, e))?;
    let mut out: Vec<MigrationFile> = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| Error::io("read the migrations folder", dir, e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".driftql") else { continue };
        let digits: String = stem.chars().take_while(char::is_ascii_digit).collect();
        let rest = &stem[digits.len()..];
        let version = digits.parse::<u64>().ok().filter(|v| *v > 0);
        let (Some(version), true) = (version, rest.len() > 1 && rest.starts_with('_')) else {
            return Err(Error::Constraint(format!(
                "migration file {name:?} in {}: a migration file is named NNNN_name.driftql (a version number from 1, an underscore, a name)",
                dir.display()
            )));
        };
        if let Some(other) = out.iter().find(|m| m.version == version) {
            return Err(Error::Constraint(format!(
                "migration files {:?} and {name:?} both have version {version}",
                other.file
            )));
        }
        let path = ent.path();
        let bytes = std::fs::read(&path).map_err(|e| Error::io("read a migration file", &path, e))?;
        let checksum = sha256(&bytes);
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::Constraint(format!("migration file {name:?} is not UTF-8 text")))?;
        out.push(MigrationFile { version, file: name, path, text, checksum });
    }
    out.sort_by_key(|m| m.version);
    let mut prev: Option<&MigrationFile> = None;
    for (i, m) in out.iter().enumerate() {
        let want = i as u64 + 1;
        if m.version != want {
            return Err(Error::Constraint(match prev {
                None => format!("migration versions start at 1; the first file is {:?}", m.file),
                Some(p) => format!(
                    "gap in migration versions: {:?} is followed by {:?} (version {want} is missing)",
                    p.file, m.file
                ),
            }));
        }
        prev = Some(m);
    }
    Ok(out)
}

/// The migrations recorded as applied, in version order.
pub fn applied(db: &Db) -> Result<Vec<AppliedMigration>> {
    if db.describe(HISTORY_TABLE).is_err() {
        return Ok(Vec::new());
    }
    let rows = db.select(&Select {
        items: Vec::new(),
        table: HISTORY_TABLE.to_string(),
        filter: None,
        as_of: None,
        group_by: Vec::new(),
        order_by: vec![(vec!["version".to_string()], false)],
        limit: None,
        offset: 0,
    })?;
    rows.iter()
        .map(|r| {
            let field = |f: &str| r.get(f).cloned().unwrap_or(Value::Null);
            Ok(AppliedMigration {
                version: field("version")
                    .as_u64()
                    .ok_or_else(|| Error::Query(format!("{HISTORY_TABLE}: a row without a version: {r}")))?,
                file: field("file").as_str().unwrap_or_default().to_string(),
                checksum: field("checksum").as_str().unwrap_or_default().to_string(),
                seq: 0,
            })
            .and_then(|mut a: AppliedMigration| {
                let key = Pk::Int(i64::try_from(a.version).unwrap_or(i64::MAX));
                a.seq = db.history(HISTORY_TABLE, &key)?.first().map_or(0, |h| h.seq);
                Ok(a)
            })
        })
        .collect()
}

/// Check the folder against what the database recorded, without changing
/// anything: every applied migration's file is there, unchanged, and the
/// applied versions are the first ones, in order.
pub fn validate(db: &Db, dir: &Path) -> Result<(Vec<MigrationFile>, Status)> {
    let files = discover(dir)?;
    let applied = applied(db)?;
    for (i, a) in applied.iter().enumerate() {
        let Some(f) = files.iter().find(|f| f.version == a.version) else {
            return Err(Error::Constraint(format!(
                "migration {} ({}) was applied at @seq:{} but its file is missing from {}",
                a.version,
                a.file,
                a.seq,
                dir.display()
            )));
        };
        if f.checksum != a.checksum {
            return Err(Error::Constraint(format!(
                "migration {} was edited after it was applied (at @seq:{}): its checksum was {}, the file now has {}; write a new migration instead of editing an applied one",
                f.file, a.seq, a.checksum, f.checksum
            )));
        }
        if a.version != i as u64 + 1 {
            return Err(Error::Constraint(format!(
                "applied migrations are out of order: version {} is applied but version {} is not",
                a.version,
                i + 1
            )));
        }
    }
    let pending =
        files.iter().filter(|f| f.version > applied.len() as u64).map(|f| (f.version, f.file.clone())).collect();
    Ok((files, Status { applied, pending }))
}

/// Applied and pending migrations (after [`validate`]).
pub fn status(db: &Db, dir: &Path) -> Result<Status> {
    validate(db, dir).map(|(_, s)| s)
}

/// Apply the pending migrations up to version `to` (all without it), each
/// as its own serializable transaction, in order; stop at the first that
/// fails. With `dry_run`, everything runs (checks included) in one
/// transaction that is rolled back: nothing is written.
pub fn up(db: &Db, dir: &Path, to: Option<u64>, dry_run: bool) -> Result<Vec<Report>> {
    let (files, st) = validate(db, dir)?;
    if let Some(to) = to
        && to < st.applied.len() as u64
    {
        return Err(Error::Constraint(format!(
            "--to {to}: migrations up to version {} are already applied (migrations are not undone; write a new one)",
            st.applied.len()
        )));
    }
    let pending: Vec<&MigrationFile> =
        files.iter().filter(|f| f.version > st.applied.len() as u64 && to.is_none_or(|t| f.version <= t)).collect();
    let mut reports = Vec::new();
    if dry_run {
        let mut t = db.begin(Isolation::Serializable);
        t.allow_system_writes();
        for f in pending {
            reports.push(run_one(db, &mut t, f)?);
        }
        t.rollback();
        return Ok(reports);
    }
    for f in pending {
        let mut t = db.begin(Isolation::Serializable);
        t.allow_system_writes();
        let mut r = run_one(db, &mut t, f)?;
        let seq = t.commit().map_err(|e| in_migration(f, None, e))?;
        r.seq = Some(seq);
        reports.push(r);
    }
    Ok(reports)
}

/// An error of migration `f` (at statement `at`, 1-based), naming both.
fn in_migration(f: &MigrationFile, at: Option<(usize, &Stmt)>, e: Error) -> Error {
    let place = match at {
        Some((i, s)) => format!("migration {} failed at statement {i} ({s}); nothing of it was applied: ", f.file),
        None => format!("migration {} failed; nothing of it was applied: ", f.file),
    };
    match e {
        Error::Query(m) => Error::Query(format!("{place}{m}")),
        Error::Constraint(m) => Error::Constraint(format!("{place}{m}")),
        Error::Conflict(m) => Error::Conflict(format!("{place}{m}")),
        Error::NotFound(m) => Error::NotFound(format!("{place}{m}")),
        Error::InvalidArgument(m) => Error::Constraint(format!("{place}{m}")),
        other => other,
    }
}

/// `COUNT(*)` of the rows of `table` matching `filter`, as `t` sees them.
fn count(t: &mut crate::Txn<'_>, table: &str, filter: Expr) -> Result<u64> {
    let rows = t.select(&Select {
        items: vec![Item::Agg(crate::query::ast::Agg::Count, None)],
        table: table.to_string(),
        filter: Some(filter),
        as_of: None,
        group_by: Vec::new(),
        order_by: Vec::new(),
        limit: None,
        offset: 0,
    })?;
    Ok(crate::query::eval::single_value(&rows)?.as_u64().unwrap_or(0))
}

/// Run migration `f`'s statements in `t` and record it.
fn run_one(db: &Db, t: &mut crate::Txn<'_>, f: &MigrationFile) -> Result<Report> {
    let stmts = crate::query::parse(&f.text).map_err(|e| in_migration(f, None, e))?;
    let mut r = Report {
        version: f.version,
        file: f.file.clone(),
        seq: None,
        rows_changed: BTreeMap::new(),
        schema_changes: 0,
        checks: 0,
    };
    let before = t.written_rows();
    for (i, s) in stmts.iter().enumerate() {
        let at = Some((i + 1, s));
        match s {
            Stmt::Begin(_) | Stmt::Commit | Stmt::Rollback | Stmt::Snapshot { .. } | Stmt::Compact { .. } => {
                return Err(in_migration(
                    f,
                    at,
                    Error::Query("not allowed in a migration (each migration is one transaction)".into()),
                ));
            }
            Stmt::Alter { table, alter } => {
                let p = |c: &str| vec![c.to_string()];
                let affected = match alter {
                    Alter::AddColumn { column, default: Some(_) } => Some(Expr::IsNull(p(column), false)),
                    Alter::DropColumn { column } | Alter::RenameColumn { column, .. } => {
                        Some(Expr::IsNull(p(column), true))
                    }
                    _ => None,
                };
                if let Some(e) = affected {
                    let n = count(t, table, e).map_err(|e| in_migration(f, at, e))?;
                    *r.rows_changed.entry(table.clone()).or_insert(0) += n;
                }
                r.schema_changes += 1;
            }
            Stmt::Expect { .. } => r.checks += 1,
            _ => {}
        }
        db.execute_in(t, s).map_err(|e| in_migration(f, at, e))?;
    }
    for (name, n) in t.written_rows() {
        let n = n - before.get(&name).copied().unwrap_or(0);
        if n > 0 {
            *r.rows_changed.entry(name).or_insert(0) += n;
        }
    }
    if t.describe(HISTORY_TABLE).is_err() {
        t.create_table(HISTORY_TABLE, "version", &[]).map_err(|e| in_migration(f, None, e))?;
    }
    t.insert(
        HISTORY_TABLE,
        json!({
            "version": f.version,
            "file": f.file,
            "checksum": f.checksum,
            "statements": stmts.len(),
        }),
    )
    .map_err(|e| in_migration(f, None, e))?;
    Ok(r)
}
