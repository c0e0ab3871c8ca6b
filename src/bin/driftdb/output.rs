//! Output: standard output that never panics, tables, outcomes and reports.

use crate::*;

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);
static FAILED: Mutex<Option<String>> = Mutex::new(None);

fn note(e: std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CLOSED.store(true, Ordering::SeqCst);
    } else {
        CLOSED.store(true, Ordering::SeqCst);
        let mut f = FAILED.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert_with(|| e.to_string());
    }
}

/// Write a line to standard output.
pub(crate) fn line(args: std::fmt::Arguments<'_>) {
    if closed() {
        return;
    }
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_fmt(args).and_then(|()| o.write_all(b"\n")) {
        note(e);
    }
}

/// Flush standard output (at the end of the command).
pub(crate) fn flush() {
    if !closed()
        && let Err(e) = std::io::stdout().lock().flush()
    {
        note(e);
    }
}

/// Whether standard output is gone (stop producing more).
pub(crate) fn closed() -> bool {
    CLOSED.load(Ordering::SeqCst)
}

/// An output failure other than a closed pipe.
pub(crate) fn failure() -> Option<String> {
    FAILED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Write to standard error, ignoring failures (nowhere left to report them).
pub(crate) fn err(args: std::fmt::Arguments<'_>) {
    let mut e = std::io::stderr().lock();
    let _ = e.write_fmt(args);
    let _ = e.flush();
}

/// A value as a table cell: unambiguous (`5` and `"5"` differ: a string
/// that would read as another value is quoted), one line (newlines and
/// tabs escaped).
pub(super) fn cell(v: Option<&Value>) -> String {
    match v {
        None => String::new(),
        Some(Value::String(s)) => {
            let ambiguous = s.is_empty()
                || s.trim() != s
                || s.starts_with('"')
                || serde_json::from_str::<Value>(s).is_ok_and(|v| !v.is_string());
            if ambiguous {
                return Value::String(s.clone()).to_string();
            }
            let mut o = String::with_capacity(s.len());
            for c in s.chars() {
                match c {
                    '\n' => o.push_str("\\n"),
                    '\r' => o.push_str("\\r"),
                    '\t' => o.push_str("\\t"),
                    '\\' if s.contains(['\n', '\r', '\t']) => o.push_str("\\\\"),
                    c if c.is_control() => o.push_str(&format!("\\u{{{:04x}}}", c as u32)),
                    c => o.push(c),
                }
            }
            o
        }
        Some(other) => other.to_string(),
    }
}

/// Widest a column gets; a longer value is cut and ends with `…`.
pub(super) const MAX_WIDTH: usize = 60;

pub(super) fn fit(v: &str, w: usize) -> String {
    let n = v.chars().count();
    if n <= w {
        return format!("{v:<w$}");
    }
    let cut: String = v.chars().take(w.saturating_sub(1)).collect();
    format!("{cut}…")
}

pub(super) fn print_rows(rows: &[Value]) {
    let mut cols: Vec<String> = Vec::new();
    for r in rows {
        if let Value::Object(m) = r {
            for k in m.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
    }
    let heads: Vec<String> = cols.iter().map(|c| cell(Some(&Value::String(c.clone())))).collect();
    let cells: Vec<Vec<String>> = rows.iter().map(|r| cols.iter().map(|c| cell(r.get(c))).collect()).collect();
    let widths: Vec<usize> = heads
        .iter()
        .enumerate()
        .map(|(i, h)| {
            cells.iter().map(|r| r[i].chars().count()).chain([h.chars().count()]).max().unwrap_or(0).min(MAX_WIDTH)
        })
        .collect();
    let line = |vals: &[String]| {
        let parts: Vec<String> = vals.iter().zip(&widths).map(|(v, w)| fit(v, *w)).collect();
        outln!("{}", parts.join(" | ").trim_end());
    };
    line(&heads);
    outln!("{}", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-"));
    for r in &cells {
        if output::closed() {
            return;
        }
        line(r);
    }
    outln!("({})", plural(rows.len() as u64, "row", "rows"));
}

pub(super) fn print_outcome(o: &Outcome, json: bool) {
    if output::closed() {
        return;
    }
    match o {
        Outcome::Committed(seq) => {
            if !json {
                outln!("ok (seq {seq})");
            }
        }
        Outcome::Rows(rows) => {
            if json {
                for r in rows {
                    if output::closed() {
                        return;
                    }
                    outln!("{r}");
                }
            } else {
                print_rows(rows);
            }
        }
        Outcome::Drift(h) => {
            if json {
                for e in h {
                    if output::closed() {
                        return;
                    }
                    outln!("{}", serde_json::to_string(e).unwrap_or_default());
                }
            } else {
                let rows: Vec<Value> = h
                    .iter()
                    .map(|e| serde_json::json!({"seq": e.seq, "time": e.time, "op": e.op, "doc": e.doc}))
                    .collect();
                print_rows(&rows);
            }
        }
        Outcome::Began(iso) => {
            if !json {
                outln!("begin ({})", iso.as_str().to_lowercase());
            }
        }
        Outcome::Staged => {
            if !json {
                outln!("ok (pending commit)");
            }
        }
        Outcome::Expected(v) => {
            if !json {
                outln!("ok (expectation holds: {v})");
            }
        }
        Outcome::RolledBack => {
            if !json {
                outln!("rolled back");
            }
        }
        Outcome::Snapshot(seq) => {
            if !json {
                outln!("ok (snapshot at seq {seq})");
            }
        }
        Outcome::Compacted(h) => {
            if !json {
                if *h == 0 {
                    outln!("ok (all history kept)");
                } else {
                    outln!("ok (history up to seq {h} folded)");
                }
            }
        }
        Outcome::Tables(t) => {
            if json {
                for d in t {
                    outln!(
                        "{}",
                        serde_json::json!({"table": d.name, "pk": d.pk, "columns": d.columns, "indexes": d.indexes, "created_seq": d.created_seq})
                    );
                }
                return;
            }
            let rows: Vec<Value> = t
                .iter()
                .map(|d| {
                    let cols: Vec<String> = d
                        .columns
                        .iter()
                        .map(|c| match &c.default {
                            Some(v) => format!("{} DEFAULT {v}", quote_ident(&c.name)),
                            None => quote_ident(&c.name),
                        })
                        .collect();
                    let mut row = serde_json::json!({"table": d.name, "pk": d.pk, "columns": cols.join(", "), "indexes": d.indexes.join(", "), "created_seq": d.created_seq});
                    // Nothing to list: an empty cell, not an empty string.
                    if let Some(m) = row.as_object_mut() {
                        m.retain(|_, v| v.as_str() != Some(""));
                    }
                    row
                })
                .collect();
            print_rows(&rows);
        }
    }
}

pub(super) fn print_report(dir: &Path, r: &driftdb::VerifyReport) {
    outln!("verify {}", dir.display());
    outln!(
        "  checked {}, {}, {} bytes ({})",
        plural(r.files_checked as u64, "file", "files"),
        plural(r.frames_checked, "frame", "frames"),
        r.bytes_checked,
        if r.authenticated { "CRC and authentication tag of every frame" } else { "structure and CRCs only, no key" }
    );
    if let Some(v) = r.master_version {
        outln!("  keyring and manifest authenticated under master key version {v}");
    }
    if let Some(g) = r.keyring_generation {
        outln!("  keyring generation {g} (pin it with --expect-generation {g} to detect a rollback)");
    }
    if let Some(h) = &r.audit_head {
        outln!("  key audit log head: {}, {}", plural(h.entries, "entry", "entries"), h.hash);
    }
    for n in &r.notes {
        outln!("  note: {n}");
    }
    for e in &r.errors {
        outln!("  NOT CHECKED: {e}");
    }
    for p in &r.problems {
        outln!("  PROBLEM: {} at offset {}: {}", p.file, p.offset, p.problem);
    }
    if !r.problems.is_empty() {
        outln!("  FAILED: {}", plural(r.problems.len() as u64, "problem", "problems"));
    } else if !r.errors.is_empty() {
        outln!("  INCOMPLETE: {} could not be checked", plural(r.errors.len() as u64, "thing", "things"));
    } else {
        outln!("  OK: no problems found");
    }
}

pub(super) fn plural(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}
