//! Kill -9 while the version tree flushes and merges: a child process (this
//! test binary, re-run in child mode) commits single-row changes with a
//! memtable of a few KiB, so that its background worker writes and merges
//! runs all the time, and prints each commit once it is durable; the parent
//! SIGKILLs it at random moments, reopens, and checks every row's history
//! (read from the tree) against what was committed: every acknowledged
//! commit is there, in order, and nothing else.
//!
//! DRIFTDB_VERSIONS_CRASH_RUNS sets the number of kills (default 15).

mod common;
use driftdb::{Db, KeySource, Options, Pk};
use serde_json::json;
use std::io::Write;
use std::time::Duration;

const CHILD_ENV: &str = "DRIFTDB_VERSIONS_CRASH_CHILD_DIR";
const KEYS: u64 = 50;

fn options() -> Options {
    Options { memtable_bytes: 2 << 10, cache_bytes: 64 << 10, ..Default::default() }
}

/// Child mode: commit change `i` (to row `i % KEYS`, value `i`) for ever.
#[test]
fn versions_crash_child_entry() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let key = std::env::var("DRIFTDB_VERSIONS_CRASH_CHILD_KEY").unwrap();
    let start: u64 = std::env::var("DRIFTDB_VERSIONS_CRASH_CHILD_START").unwrap().parse().unwrap();
    let db = Db::open(&dir, &KeySource::key_file(&key), options()).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nCHILD-OPEN").unwrap();
    out.flush().unwrap();
    for i in start.. {
        let k = Pk::Int((i % KEYS) as i64);
        if i < KEYS {
            db.insert("t", json!({"id": i % KEYS, "v": i, "pad": "x".repeat(40)})).unwrap();
        } else {
            db.patch("t", &k, json!({"v": i}).as_object().cloned().unwrap()).unwrap();
        }
        writeln!(out, "ack {i}").unwrap();
        out.flush().unwrap();
    }
}

/// Every change committed, in the order of its history: `None` if a row's
/// history is not the changes `k, k + KEYS, k + 2 KEYS, ...` of one prefix.
fn committed(db: &Db) -> Vec<u64> {
    let mut all = Vec::new();
    for k in 0..KEYS {
        let Ok(h) = db.history("t", &Pk::Int(k as i64)) else { continue };
        let vs: Vec<u64> = h.iter().map(|e| e.doc["v"].as_u64().unwrap()).collect();
        let want: Vec<u64> = (0..vs.len() as u64).map(|j| k + j * KEYS).collect();
        assert_eq!(vs, want, "history of row {k}");
        // The row as read now and as of its last version agree with it.
        assert_eq!(db.get("t", &Pk::Int(k as i64)).unwrap().unwrap()["v"], json!(vs.last().unwrap()));
        all.extend(vs);
    }
    all.sort_unstable();
    all
}

#[test]
fn sigkill_while_versions_flush_and_merge_loses_no_acknowledged_commit() {
    let runs: usize = std::env::var("DRIFTDB_VERSIONS_CRASH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(15);
    let t = tempfile::tempdir().unwrap();
    let k = common::key_file(t.path(), "k", 0x5c);
    let d = t.path().join("db");
    let db = Db::create(&d, &KeySource::key_file(&k), options()).unwrap();
    db.create_table("t", "id", &[]).unwrap();
    db.close().unwrap();
    let mut next_start = 0u64;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut runs_seen = 0;
    for run in 0..runs {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let acked = common::run_child_and_kill(
            "versions_crash_child_entry",
            &[
                (CHILD_ENV, d.to_str().unwrap()),
                ("DRIFTDB_VERSIONS_CRASH_CHILD_KEY", k.to_str().unwrap()),
                ("DRIFTDB_VERSIONS_CRASH_CHILD_START", &next_start.to_string()),
            ],
            Duration::from_millis(100 + seed % 400),
        );
        let acked: Option<u64> = acked.last().map(|n| n.parse().unwrap());
        let db = Db::open(&d, &KeySource::key_file(&k), options()).unwrap();
        let got = committed(&db);
        assert_eq!(got, (0..got.len() as u64).collect::<Vec<_>>(), "run {run}: the changes are a prefix");
        if let Some(a) = acked {
            assert!(got.len() as u64 > a, "run {run}: acknowledged change {a} lost ({} present)", got.len());
        }
        runs_seen = runs_seen.max(db.version_tree_stats().runs.iter().sum::<usize>());
        next_start = got.len() as u64;
        db.close().unwrap();
    }
    assert!(next_start > 100, "the children committed: {next_start}");
    assert!(runs_seen > 1, "the tree had runs: {runs_seen}");
}
