//! Opening a database: the newest catalog checkpoint in the version tree
//! is restored and only the log after it replayed (or, without one, the
//! whole log, skipping the row events each table's latest snapshot
//! counts). Whatever the log did (patches, deletes, deletes and re-inserts,
//! new rows, schema changes) must read, and index, exactly as before the
//! database was closed.

use driftdb::query::ast::Stmt;
use driftdb::{Db, KeySource, Options, Outcome, Pk};
use serde_json::{Map, Value, json};
use std::path::Path;

fn key() -> KeySource {
    KeySource::Raw(driftdb::crypto::keys::SecretKey::from_bytes([9u8; 32]))
}

fn opts() -> Options {
    // No automatic snapshot: the test places them.
    Options { snapshot_every_events: u64::MAX, snapshot_every_bytes: u64::MAX, ..Options::default() }
}

fn rows(db: &Db, q: &str) -> Vec<Value> {
    match db.execute_stmt(&driftdb::query::parse_one(q).unwrap()).unwrap() {
        Outcome::Rows(r) => r,
        o => panic!("{q}: {o:?}"),
    }
}

fn exec(db: &Db, q: &str) {
    db.execute_stmt(&driftdb::query::parse_one(q).unwrap()).unwrap();
}

/// Everything a reader can see of table `t`: every row, and the answers of
/// indexed and unindexed queries (checked against a full scan).
fn state(db: &Db) -> Vec<Vec<Value>> {
    let mut out = vec![rows(db, "SELECT * FROM t")];
    for q in [
        "SELECT * FROM t WHERE status = 'active'",
        "SELECT * FROM t WHERE status = 'closed'",
        "SELECT * FROM t WHERE tier = 'gold'",
        "SELECT * FROM t WHERE n >= 500",
        "SELECT * FROM t WHERE level = 3",
    ] {
        let got = rows(db, q);
        let Stmt::Select(sel) = driftdb::query::parse_one(q).unwrap() else { unreachable!() };
        assert_eq!(got, db.select_full_scan(&sel).unwrap(), "{q}: index and scan disagree");
        out.push(got);
    }
    out
}

fn set(f: &str, v: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(f.into(), v);
    m
}

fn build(dir: &Path, alter_after_snapshot: bool) -> Vec<Vec<Value>> {
    let db = Db::create(dir, &key(), opts()).unwrap();
    db.create_table("t", "id", &["status", "n"]).unwrap();
    db.write(|w| {
        for i in 0..6000i64 {
            let status = if i % 3 == 0 { "active" } else { "closed" };
            w.insert("t", json!({"id": i, "status": status, "n": i % 1000, "rank": i % 7}))?;
        }
        Ok(())
    })
    .unwrap();
    db.snapshot("t").unwrap();
    // After the snapshot: patches that move rows between index values,
    // deletes, deletes then re-inserts, re-inserts with other values, and
    // new rows on both sides of the snapshot's keys.
    db.write(|w| {
        for i in (0..6000i64).step_by(5) {
            w.patch("t", &Pk::Int(i), set("status", json!("closed")))?;
        }
        for i in (1..6000i64).step_by(7) {
            w.soft_delete("t", &Pk::Int(i))?;
        }
        for i in (1..6000i64).step_by(14) {
            w.insert("t", json!({"id": i, "status": "active", "n": 999, "rank": 0}))?;
        }
        for i in [-5i64, 3000, 7000, 7001] {
            if i == 3000 {
                w.soft_delete("t", &Pk::Int(i))?;
            }
            w.insert("t", json!({"id": i, "status": "active", "n": 1, "rank": 1}))?;
        }
        Ok(())
    })
    .unwrap();
    if alter_after_snapshot {
        // The snapshot's rows were indexed on the fields of its time: an
        // index created after it, a rename of an indexed field and a new
        // column with a default all change what they must be indexed by.
        exec(&db, "CREATE INDEX ON t (rank)");
        exec(&db, "ALTER TABLE t RENAME COLUMN rank TO level");
        exec(&db, "ALTER TABLE t ADD COLUMN tier DEFAULT 'gold'");
        exec(&db, "CREATE INDEX ON t (tier)");
        exec(&db, "DROP INDEX ON t (n)");
    }
    let before = state(&db);
    db.close().unwrap();
    before
}

#[test]
fn rows_written_and_deleted_after_the_snapshot_read_and_index_as_before_closing() {
    let t = tempfile::tempdir().unwrap();
    let before = build(t.path(), false);
    assert!(before[0].len() > 5000);
    for _ in 0..2 {
        let db = Db::open(t.path(), &key(), opts()).unwrap();
        assert_eq!(state(&db), before);
        db.close().unwrap();
    }
}

#[test]
fn schema_changes_after_the_snapshot_are_indexed_as_the_rows_read_now() {
    let t = tempfile::tempdir().unwrap();
    let before = build(t.path(), true);
    assert!(before[3].len() > 5000, "every row has the default tier");
    assert!(!before[5].is_empty());
    let db = Db::open(t.path(), &key(), opts()).unwrap();
    assert_eq!(state(&db), before);
}

#[test]
fn a_snapshot_taken_after_the_last_write_opens_with_its_rows_indexed() {
    let t = tempfile::tempdir().unwrap();
    let before = build(t.path(), false);
    let db = Db::open(t.path(), &key(), opts()).unwrap();
    db.snapshot("t").unwrap();
    db.close().unwrap();
    let db = Db::open(t.path(), &key(), opts()).unwrap();
    assert_eq!(state(&db), before);
}

/// Opening restores the catalog checkpoint and does not read the log
/// segments it covers: a damaged byte in the oldest segment is not seen by
/// opening or by any read (rows, indexes, history and commit times are in
/// the version tree), only by `verify`; commits after the checkpoint (in
/// the WAL when the process died) are replayed.
#[test]
fn opening_replays_only_the_log_after_the_catalog_checkpoint() {
    use driftdb::storage::memfs::MemFs;
    let fs = MemFs::new();
    // (Made anew after a simulated crash: a handle from before it is dead.)
    let o = |fs: &MemFs| Options {
        store: driftdb::StoreOptions { vfs: std::sync::Arc::new(fs.clone()), segment_size: 4096, ..Default::default() },
        // Flushes (and catalog checkpoints) every few commits.
        memtable_bytes: 4096,
        ..opts()
    };
    let db = Db::create("/db", &key(), o(&fs)).unwrap();
    db.create_table("t", "id", &["status"]).unwrap();
    exec(&db, "ALTER TABLE t ADD COLUMN tier DEFAULT 'free'");
    for i in 0..200i64 {
        db.insert("t", json!({"id": i, "status": if i % 3 == 0 { "active" } else { "closed" }, "n": i * 5})).unwrap();
    }
    for i in (0..200i64).step_by(7) {
        db.patch("t", &Pk::Int(i), set("tier", json!("gold"))).unwrap();
    }
    db.soft_delete("t", &Pk::Int(3)).unwrap();
    let mid = db.latest_seq();
    let before = state(&db);
    let past = db.scan("t", Some(&driftdb::query::ast::AsOf::Seq(mid - 40))).unwrap();
    let history = db.history("t", &Pk::Int(7)).unwrap();
    db.close().unwrap();
    let mut segs: Vec<_> = fs.paths().into_iter().filter(|p| p.extension().is_some_and(|e| e == "seg")).collect();
    segs.sort();
    assert!(segs.len() >= 3, "{segs:?}");
    // A full segment followed by a full one (opening merges runs of small
    // files, which reads them and gives them new ids).
    let full = |p: &std::path::PathBuf| fs.contents(p).unwrap().len() >= 3000;
    let seg = segs.windows(2).find(|w| full(&w[0]) && full(&w[1])).map(|w| w[0].clone()).expect("two full segments");
    let mut b = fs.contents(&seg).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x40;
    fs.put(&seg, &b);
    let db = Db::open("/db", &key(), o(&fs)).unwrap();
    assert_eq!(state(&db), before);
    assert_eq!(db.scan("t", Some(&driftdb::query::ast::AsOf::Seq(mid - 40))).unwrap(), past);
    assert_eq!(db.history("t", &Pk::Int(7)).unwrap(), history);
    assert!(!db.store().verify().ok, "verify must find the damaged segment");
    b[at] ^= 0x40;
    fs.put(&seg, &b);
    // Commits after the checkpoint, only in the WAL when the process dies
    // (the tree flushed, with newer checkpoints, meanwhile).
    for i in 200..230i64 {
        db.insert("t", json!({"id": i, "status": "active", "n": i})).unwrap();
    }
    db.patch("t", &Pk::Int(0), set("status", json!("closed"))).unwrap();
    let after = state(&db);
    drop(db);
    fs.crash();
    let db = Db::open("/db", &key(), o(&fs)).unwrap();
    assert_eq!(state(&db), after);
    assert_eq!(db.describe("t").unwrap().columns.len(), 1);
    // The WAL's commits that a checkpoint already covered went into the
    // segments all the same: the log stays whole.
    db.close().unwrap();
    let db = Db::open("/db", &key(), o(&fs)).unwrap();
    assert_eq!(state(&db), after);
    let report = db.store().verify();
    assert!(report.ok, "{report:?}");
    let mut next = 1;
    db.store()
        .read_stream(1, |_, rec| {
            let (first, n) = driftdb::table::RawCommit::peek(rec).unwrap();
            assert_eq!(first, next, "the segments skip from @seq:{} to @seq:{first}", next - 1);
            next = first + n;
            Ok(())
        })
        .unwrap();
    assert_eq!(next, db.latest_seq() + 1);
}
