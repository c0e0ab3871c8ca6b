//! Opening a database for a command, and the commands that need more than a call: `compact`, `migrate`.

use crate::*;

pub(super) fn read_stdin() -> Result<String, Error> {
    use std::io::Read;
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).map_err(|e| Error::io("reading", "standard input", e))?;
    Ok(s)
}

pub(super) fn open_db(a: &DbArgs, read_only: bool) -> Result<Db, Error> {
    open_at(&a.dir, &a.key, &a.open, read_only)
}

pub(super) fn open_at(dir: &Path, key: &KeyOpts, open: &OpenOpts, read_only: bool) -> Result<Db, Error> {
    let ks = key_source(key, false)?;
    let db = Db::open(
        dir,
        &ks,
        Options {
            store: open.store(read_only),
            // Re-encryption is `keys resume`'s job, not every command's.
            resume_rotation: false,
            ..Options::default()
        },
    )?;
    for e in db.store().recovery_events() {
        if !matches!(e, driftdb::RecoveryEvent::Merged { .. }) {
            errln!("note: recovery: {e}");
        }
    }
    Ok(db)
}

/// A point in history as DriftQL: `@seq:N` and `@now` as given, a time quoted.
pub(super) fn point_text(a: &str) -> String {
    if a.starts_with('@') { a.to_string() } else { Value::from(a).to_string() }
}

/// `1` is an integer key, `o1` a string key, `"1"` (JSON) the string 1.
pub(super) fn parse_key(s: &str) -> Result<driftdb::Pk, Error> {
    if let Ok(v) = serde_json::from_str::<Value>(s)
        && let Some(k) = driftdb::Pk::from_json(&v)
    {
        return Ok(k);
    }
    Ok(driftdb::Pk::Str(s.into()))
}

/// `COMPACT`, asking first when it would fold everything or most of the history.
pub(super) fn compact(db: &DbArgs, table: &str, before: Option<&str>, yes: bool) -> Result<u8, Error> {
    let mut q = format!("COMPACT {}", quote_ident(table));
    if let Some(b) = before {
        q.push_str(&format!(" BEFORE {}", point_text(b)));
    }
    let stmt = driftdb::query::parse_one(&q)?;
    let d = open_db(db, false)?;
    if let Some(b) = before {
        let point = match driftdb::query::parse_one(&format!("SELECT * FROM t AS OF {}", point_text(b)))? {
            driftdb::query::ast::Stmt::Select(s) => s.as_of.unwrap_or(AsOf::Now),
            _ => AsOf::Now,
        };
        let p = d.compaction_preview(table, &point)?;
        let total = p.events_folded + p.events_kept;
        let everything = matches!(point, AsOf::Now) || p.horizon >= p.latest_seq;
        let most = total > 0 && p.events_folded * 2 > total;
        if p.horizon > p.current_horizon && (everything || most) {
            let what = format!(
                "COMPACT {table} BEFORE {b} folds {} of the table's {} ({}%) up to @seq:{}{}; reads before it become errors and this cannot be undone",
                p.events_folded,
                plural(total, "event", "events"),
                (p.events_folded * 100).checked_div(total).unwrap_or(100),
                p.horizon,
                if everything { ", all of its history" } else { "" }
            );
            if !yes {
                if !std::io::stdin().is_terminal() {
                    return Err(Error::InvalidArgument(format!(
                        "{what}: pass --yes to do it (standard input is not a terminal, so nobody can be asked)"
                    )));
                }
                errp!("{what}.\nFold it? [y/N] ");
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer).map_err(|e| Error::io("reading", "standard input", e))?;
                if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
                    errln!("nothing was folded");
                    d.close()?;
                    return Ok(1);
                }
            }
        }
    }
    print_outcome(&d.execute_stmt(&stmt)?, false);
    d.close()?;
    Ok(0)
}

pub(super) fn migrate(a: MigrateArgs, action: MigrateCmd) -> Result<u8, Error> {
    use driftdb::migrate;
    let read_only = !matches!(action, MigrateCmd::Up { dry_run: false, .. });
    let db = open_at(&a.data, &a.key, &a.open, read_only)?;
    match action {
        MigrateCmd::Status | MigrateCmd::Validate => {
            let st = migrate::status(&db, &a.migrations)?;
            if a.json {
                for m in &st.applied {
                    outln!(
                        "{}",
                        serde_json::json!({"version": m.version, "file": m.file, "state": "applied", "seq": m.seq, "checksum": m.checksum})
                    );
                }
                for (v, f) in &st.pending {
                    outln!("{}", serde_json::json!({"version": v, "file": f, "state": "pending"}));
                }
            } else {
                for m in &st.applied {
                    outln!("applied  {:>4}  {}  (@seq:{}, {})", m.version, m.file, m.seq, m.checksum);
                }
                for (v, f) in &st.pending {
                    outln!("pending  {v:>4}  {f}");
                }
                if matches!(action, MigrateCmd::Validate) {
                    let n = st.applied.len();
                    outln!(
                        "ok: {} {}; {} pending",
                        plural(n as u64, "applied migration", "applied migrations"),
                        if n == 1 { "matches its file" } else { "match their files" },
                        st.pending.len()
                    );
                }
            }
        }
        MigrateCmd::Up { to, dry_run } => {
            let reports = migrate::up(&db, &a.migrations, to, dry_run)?;
            if a.json {
                for r in &reports {
                    outln!("{}", serde_json::to_string(r).unwrap_or_default());
                }
            } else {
                if reports.is_empty() {
                    outln!("nothing to apply");
                }
                for r in &reports {
                    let changed: Vec<String> =
                        r.rows_changed.iter().map(|(t, n)| format!("{t}: {}", plural(*n, "row", "rows"))).collect();
                    let what = match r.seq {
                        Some(seq) => format!("applied at @seq:{seq}"),
                        None => "would apply (dry run, nothing written)".to_string(),
                    };
                    outln!(
                        "{} {what}: {}, {} held; {}",
                        r.file,
                        plural(r.schema_changes as u64, "schema change", "schema changes"),
                        plural(r.checks as u64, "check", "checks"),
                        if changed.is_empty() { "no rows changed".to_string() } else { changed.join(", ") }
                    );
                }
            }
        }
    }
    db.close()?;
    Ok(0)
}

/// `sql`: a script from `-e`, a file or standard input.
pub(super) fn sql(db: &DbArgs, execute: Option<String>, file: Option<PathBuf>, json: bool) -> Result<u8, Error> {
    let script = match (execute, file) {
        (Some(e), _) => e,
        (None, Some(f)) if f.as_os_str() == "-" => read_stdin()?,
        (None, Some(f)) => std::fs::read_to_string(&f).map_err(|e| Error::io("reading", &f, e))?,
        (None, None) if !std::io::stdin().is_terminal() => read_stdin()?,
        (None, None) => {
            return Err(Error::InvalidArgument(
                "give statements with -e STATEMENTS, a file with -f FILE, or a script on standard input".into(),
            ));
        }
    };
    let d = open_db(db, false)?;
    d.execute_each(&script, |out| print_outcome(&out, json))?;
    d.close()?;
    Ok(0)
}

/// `select`: a table, now or as of a point, with an optional `WHERE` and limit.
pub(super) fn select(
    db: &DbArgs,
    table: &str,
    filter: Option<String>,
    as_of: Option<String>,
    limit: Option<u64>,
    json: bool,
) -> Result<u8, Error> {
    let mut q = format!("SELECT * FROM {}", Value::from(table).as_str().map(quote_ident).unwrap_or_default());
    if let Some(w) = filter {
        q.push_str(&format!(" WHERE {w}"));
    }
    if let Some(a) = as_of {
        q.push_str(&format!(" AS OF {}", point_text(&a)));
    }
    if let Some(l) = limit {
        q.push_str(&format!(" LIMIT {l}"));
    }
    let stmt = driftdb::query::parse_one(&q)?;
    let d = open_db(db, true)?;
    print_outcome(&d.execute_stmt(&stmt)?, json);
    Ok(0)
}

/// `verify`: with the key, or (`--no-key`) what can be checked without it.
pub(super) fn verify(db: &DbArgs, no_key: bool, json: bool) -> Result<u8, Error> {
    let report = if no_key {
        driftdb::verify_without_key_expecting(&db.dir, &driftdb::storage::StdFs, db.open.expect_generation)?
    } else {
        let ks = key_source(&db.key, false)?;
        match Store::open(&db.dir, &ks, db.open.store(true)) {
            Ok(store) => store.verify(),
            Err(e) if e.is_integrity() => {
                let p = driftdb::storage::verify::locate_public(&e);
                driftdb::VerifyReport { authenticated: true, problems: vec![p], ..Default::default() }
            }
            Err(e) => return Err(e),
        }
    };
    if json {
        outln!("{}", serde_json::to_string(&report).unwrap_or_else(|_| "{}".into()));
    } else {
        print_report(&db.dir, &report);
    }
    Ok(if !report.problems.is_empty() {
        4
    } else if !report.errors.is_empty() {
        1
    } else {
        0
    })
}
