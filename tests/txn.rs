//! Transactions: read-your-writes, atomic commit and rollback, and the
//! anomalies each isolation level prevents or allows, shown side by side.

use driftdb::storage::memfs::MemFs;
use driftdb::{Db, Error, Isolation, KeySource, Options, Outcome, Pk, StoreOptions};
use serde_json::{Value, json};
use std::sync::Arc;

fn key() -> KeySource {
    KeySource::Raw(driftdb::crypto::keys::SecretKey::from_bytes([0x42; 32]))
}

fn opts(fs: &MemFs) -> Options {
    Options { store: StoreOptions { vfs: Arc::new(fs.clone()), ..Default::default() }, ..Default::default() }
}

fn db() -> (MemFs, Db) {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(), opts(&fs)).unwrap();
    db.create_table("acct", "id", &["status"]).unwrap();
    db.insert("acct", json!({"id": "a", "balance": 100, "status": "open"})).unwrap();
    db.insert("acct", json!({"id": "b", "balance": 100, "status": "open"})).unwrap();
    (fs, db)
}

fn set(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn balance(doc: &Option<Value>) -> i64 {
    doc.as_ref().unwrap()["balance"].as_i64().unwrap()
}

fn is_conflict<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::Conflict(_)))
}

#[test]
fn a_transaction_reads_its_own_writes_in_gets_queries_and_aggregates() {
    let (_fs, db) = db();
    for iso in [Isolation::ReadCommitted, Isolation::Snapshot, Isolation::Serializable] {
        let mut t = db.begin(iso);
        let c = format!("c-{iso:?}");
        t.insert("acct", json!({"id": c, "balance": 5, "status": "open"})).unwrap();
        t.patch("acct", &Pk::Str("a".into()), set(json!({"status": "frozen"}))).unwrap();
        assert_eq!(t.get("acct", &Pk::Str(c.clone().into())).unwrap().unwrap()["balance"], 5);
        let open: Vec<Value> = t.query("SELECT id FROM acct WHERE status = \"open\" ORDER BY id").unwrap();
        assert_eq!(open, vec![json!({"id": "b"}), json!({"id": c})], "{iso:?}");
        let sum: Vec<Value> = t.query("SELECT COUNT(*), SUM(balance) FROM acct").unwrap();
        assert_eq!(sum[0]["COUNT(*)"], 3, "{iso:?}: {sum:?}");
        // Nobody else sees any of it before the commit.
        assert!(db.get("acct", &Pk::Str(c.clone().into())).unwrap().is_none());
        assert_eq!(db.get("acct", &Pk::Str("a".into())).unwrap().unwrap()["status"], "open");
        t.rollback();
        assert!(db.get("acct", &Pk::Str(c.into())).unwrap().is_none());
    }
}

#[test]
fn a_table_created_in_a_transaction_is_usable_in_it_and_exists_only_after_commit() {
    let (_fs, db) = db();
    let mut t = db.begin(Isolation::Serializable);
    t.create_table("new", "k", &[]).unwrap();
    t.insert("new", json!({"k": 1, "x": "y"})).unwrap();
    assert_eq!(t.get("new", &Pk::Int(1)).unwrap().unwrap()["x"], "y");
    assert!(db.describe("new").is_err());
    let seq = t.commit().unwrap();
    assert_eq!(db.get("new", &Pk::Int(1)).unwrap().unwrap()["x"], "y");
    assert_eq!(db.latest_seq(), seq);
}

#[test]
fn a_commit_is_atomic_and_a_failed_change_or_a_drop_commits_nothing() {
    let (_fs, db) = db();
    let before = db.latest_seq();
    let mut t = db.begin(Isolation::Snapshot);
    t.insert("acct", json!({"id": "c", "balance": 1})).unwrap();
    // A change that fails does not end the transaction and leaves no trace.
    assert!(matches!(t.insert("acct", json!({"id": "a"})), Err(Error::Constraint(_))));
    t.patch("acct", &Pk::Str("a".into()), set(json!({"balance": 90}))).unwrap();
    let seq = t.commit().unwrap();
    assert_eq!(seq, before + 2, "two events, one commit");
    // Both events are in one commit: no state in between exists in history.
    assert!(db.get_as_of("acct", &Pk::Str("c".into()), before + 1).unwrap().is_none());
    assert_eq!(balance(&db.get_as_of("acct", &Pk::Str("a".into()), before + 2).unwrap()), 90);
    {
        let mut t = db.begin(Isolation::Serializable);
        t.insert("acct", json!({"id": "d"})).unwrap();
        // dropped without commit
    }
    assert!(db.get("acct", &Pk::Str("d".into())).unwrap().is_none());
    assert_eq!(db.latest_seq(), seq);
}

#[test]
fn lost_update_is_prevented_under_snapshot_and_serializable_and_possible_under_read_committed() {
    for iso in [Isolation::ReadCommitted, Isolation::Snapshot, Isolation::Serializable] {
        let (_fs, db) = db();
        let a = Pk::Str("a".into());
        // Two read-modify-write transactions on the same balance.
        let mut t1 = db.begin(iso);
        let mut t2 = db.begin(iso);
        let b1 = balance(&t1.get("acct", &a).unwrap());
        let b2 = balance(&t2.get("acct", &a).unwrap());
        t1.patch("acct", &a, set(json!({"balance": b1 + 10}))).unwrap();
        t2.patch("acct", &a, set(json!({"balance": b2 + 20}))).unwrap();
        t1.commit().unwrap();
        let second = t2.commit();
        let end = balance(&db.get("acct", &a).unwrap());
        match iso {
            Isolation::ReadCommitted => {
                second.unwrap();
                assert_eq!(end, 120, "read committed: t1's update is lost");
            }
            _ => {
                assert!(is_conflict(second), "{iso:?}: first committer wins");
                assert_eq!(end, 110);
            }
        }
    }
}

#[test]
fn a_conflict_is_retryable_and_concurrent_increments_are_never_lost() {
    let (_fs, db) = db();
    db.insert("acct", json!({"id": "counter", "n": 0})).unwrap();
    let k = Pk::Str("counter".into());
    let conflicts = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..25 {
                    loop {
                        let mut t = db.begin(Isolation::Snapshot);
                        let n = t.get("acct", &k).unwrap().unwrap()["n"].as_i64().unwrap();
                        t.patch("acct", &k, set(json!({"n": n + 1}))).unwrap();
                        match t.commit() {
                            Ok(_) => break,
                            Err(Error::Conflict(_)) => {
                                conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
        }
    });
    assert_eq!(db.get("acct", &k).unwrap().unwrap()["n"], 100);
    assert_eq!(Error::Conflict(String::new()).exit_code(), 6);
}

#[test]
fn non_repeatable_reads_and_phantoms_are_prevented_under_snapshot_and_possible_under_read_committed() {
    for iso in [Isolation::ReadCommitted, Isolation::Snapshot, Isolation::Serializable] {
        let (_fs, db) = db();
        let a = Pk::Str("a".into());
        let mut t = db.begin(iso);
        let first = t.get("acct", &a).unwrap();
        let q = "SELECT COUNT(*) FROM acct WHERE status = \"open\"";
        let count1: Vec<Value> = t.query(q).unwrap();
        db.patch("acct", &a, set(json!({"balance": 0}))).unwrap();
        db.insert("acct", json!({"id": "z", "balance": 1, "status": "open"})).unwrap();
        let again = t.get("acct", &a).unwrap();
        let count2: Vec<Value> = t.query(q).unwrap();
        if iso == Isolation::ReadCommitted {
            assert_ne!(first, again, "read committed sees the new balance");
            assert_ne!(count1, count2, "read committed sees the new row");
        } else {
            assert_eq!(first, again, "{iso:?}: repeatable read");
            assert_eq!(count1, count2, "{iso:?}: no phantom");
            // ... while the database itself has moved on.
            assert_eq!(balance(&db.get("acct", &a).unwrap()), 0);
        }
    }
}

/// Two doctors on call, written with the field `field` (renamed to
/// `on_call` afterwards if it is another name).
fn doctors(fs: &MemFs, field: &str) -> Db {
    let db = Db::create("/db", &key(), opts(fs)).unwrap();
    db.create_table("doctors", "name", &[]).unwrap();
    db.insert("doctors", json!({"name": "alice", field: true})).unwrap();
    db.insert("doctors", json!({"name": "bob", field: true})).unwrap();
    if field != "on_call" {
        let stmt = driftdb::query::parse_one(&format!("ALTER TABLE doctors RENAME COLUMN {field} TO on_call")).unwrap();
        db.execute_stmt(&stmt).unwrap();
    }
    db
}

const ON_CALL: &str = "SELECT COUNT(*) FROM doctors WHERE on_call = true";

/// Each of two transactions checks that the other doctor is still on call,
/// then takes its own off: the second commit's outcome, and how many are
/// left on call.
fn both_go_off_call(db: &Db, iso: Isolation) -> (Result<u64, Error>, Value) {
    let mut t1 = db.begin(iso);
    let mut t2 = db.begin(iso);
    let n1: Vec<Value> = t1.query(ON_CALL).unwrap();
    let n2: Vec<Value> = t2.query(ON_CALL).unwrap();
    assert_eq!((n1[0]["COUNT(*)"].as_i64(), n2[0]["COUNT(*)"].as_i64()), (Some(2), Some(2)));
    t1.patch("doctors", &Pk::Str("alice".into()), set(json!({"on_call": false}))).unwrap();
    t2.patch("doctors", &Pk::Str("bob".into()), set(json!({"on_call": false}))).unwrap();
    t1.commit().unwrap();
    let r2 = t2.commit();
    let left: Vec<Value> = db.query(ON_CALL).unwrap();
    (r2, left[0]["COUNT(*)"].clone())
}

/// Write skew: two doctors on call; each transaction checks that the other
/// is still on call, then takes itself off. Together they leave nobody.
#[test]
fn write_skew_is_prevented_under_serializable_and_possible_under_snapshot() {
    for iso in [Isolation::Snapshot, Isolation::Serializable] {
        let fs = MemFs::new();
        let db = doctors(&fs, "on_call");
        let (r2, left) = both_go_off_call(&db, iso);
        if iso == Isolation::Snapshot {
            r2.unwrap();
            assert_eq!(left, 0, "snapshot isolation allows write skew: nobody is on call");
        } else {
            assert!(is_conflict(r2), "serializable refuses the second doctor");
            assert_eq!(left, 1);
        }
    }
}

/// The same write skew on rows written before a schema change renamed the
/// field the predicate reads: the conflict check must see the changed rows
/// as the transactions read them (through the rename), not as stored.
#[test]
fn write_skew_through_a_renamed_field_is_prevented_under_serializable() {
    let fs = MemFs::new();
    let db = doctors(&fs, "oncall");
    let (r2, left) = both_go_off_call(&db, Isolation::Serializable);
    assert!(is_conflict(r2), "serializable refuses the second doctor");
    assert_eq!(left, 1);
}

/// Predicate phantom: a transaction counts the open accounts and records the
/// count; another opens an account meanwhile. Serially, the recorded count
/// would match one of the two orders.
#[test]
fn a_phantom_on_a_predicate_read_is_prevented_under_serializable_and_possible_under_snapshot() {
    for iso in [Isolation::Snapshot, Isolation::Serializable] {
        let (_fs, db) = db();
        db.create_table("report", "id", &[]).unwrap();
        let mut t1 = db.begin(iso);
        let n: Vec<Value> = t1.query("SELECT COUNT(*) FROM acct WHERE status = \"open\"").unwrap();
        t1.insert("report", json!({"id": 1, "open_accounts": n[0]["COUNT(*)"]})).unwrap();
        // Meanwhile, another transaction opens an account (writes a row t1
        // never read by key, but that matches t1's predicate).
        let mut t2 = db.begin(iso);
        t2.insert("acct", json!({"id": "new", "balance": 0, "status": "open"})).unwrap();
        t2.commit().unwrap();
        let r1 = t1.commit();
        if iso == Isolation::Snapshot {
            r1.unwrap();
            let rep = db.get("report", &Pk::Int(1)).unwrap().unwrap();
            let now: Vec<Value> = db.query("SELECT COUNT(*) FROM acct WHERE status = \"open\"").unwrap();
            assert_ne!(rep["open_accounts"], now[0]["COUNT(*)"], "snapshot: the report missed the phantom row");
        } else {
            assert!(is_conflict(r1), "serializable: the phantom invalidates the count");
            assert!(db.get("report", &Pk::Int(1)).unwrap().is_none());
        }
        // A change that does not match the predicate is no conflict.
        let mut t3 = db.begin(Isolation::Serializable);
        let _: Vec<Value> = t3.query("SELECT COUNT(*) FROM acct WHERE status = \"open\"").unwrap();
        t3.insert("report", json!({"id": 2})).unwrap();
        db.insert("acct", json!({"id": "closed-1", "status": "closed"})).unwrap();
        t3.commit().unwrap();
    }
}

#[test]
fn serializable_detects_a_changed_read_of_a_missing_row() {
    let (_fs, db) = db();
    let mut t = db.begin(Isolation::Serializable);
    assert!(t.get("acct", &Pk::Str("x".into())).unwrap().is_none());
    t.insert("acct", json!({"id": "y", "note": "x was missing"})).unwrap();
    db.insert("acct", json!({"id": "x"})).unwrap();
    assert!(is_conflict(t.commit()));
}

#[test]
fn read_committed_reapplies_patches_to_the_latest_row_and_rechecks_constraints() {
    let (_fs, db) = db();
    let a = Pk::Str("a".into());
    let mut t = db.begin(Isolation::ReadCommitted);
    t.patch("acct", &a, set(json!({"status": "frozen"}))).unwrap();
    db.patch("acct", &a, set(json!({"balance": 1}))).unwrap();
    t.commit().unwrap();
    let doc = db.get("acct", &a).unwrap().unwrap();
    assert_eq!((doc["status"].as_str(), doc["balance"].as_i64()), (Some("frozen"), Some(1)), "both fields kept");
    // A row deleted meanwhile cannot be patched.
    let mut t = db.begin(Isolation::ReadCommitted);
    t.patch("acct", &a, set(json!({"x": 1}))).unwrap();
    db.soft_delete("acct", &a).unwrap();
    assert!(matches!(t.commit(), Err(Error::Constraint(_))));
}

#[test]
fn snapshot_reads_stay_at_the_snapshot_through_many_changes_and_tables_created_later() {
    let (_fs, db) = db();
    let mut t = db.begin(Isolation::Snapshot);
    let before: Vec<Value> = t.query("SELECT * FROM acct ORDER BY id").unwrap();
    for i in 0..50 {
        db.insert("acct", json!({"id": format!("n{i}"), "balance": i})).unwrap();
        db.patch("acct", &Pk::Str("a".into()), set(json!({"balance": i}))).unwrap();
    }
    db.soft_delete("acct", &Pk::Str("b".into())).unwrap();
    db.create_table("later", "id", &[]).unwrap();
    let after: Vec<Value> = t.query("SELECT * FROM acct ORDER BY id").unwrap();
    assert_eq!(before, after);
    assert_eq!(balance(&t.get("acct", &Pk::Str("b".into())).unwrap()), 100);
    assert!(t.get("later", &Pk::Int(1)).is_err(), "a table created after the snapshot is not visible");
}

#[test]
fn driftql_transactions_commit_together_and_an_error_rolls_back_and_says_so() {
    let (_fs, db) = db();
    let out = db
        .execute(
            "BEGIN ISOLATION LEVEL SERIALIZABLE
             INSERT INTO acct {\"id\": \"t1\", \"balance\": 1}
             PATCH acct KEY \"a\" SET {\"balance\": 99}
             SELECT COUNT(*) FROM acct
             COMMIT",
        )
        .unwrap();
    assert_eq!(out[0], Outcome::Began(Isolation::Serializable));
    assert_eq!(out[1], Outcome::Staged);
    assert_eq!(out[3], Outcome::Rows(vec![json!({"COUNT(*)": 3})]));
    let Outcome::Committed(seq) = out[4] else { panic!("{:?}", out[4]) };
    assert_eq!(db.latest_seq(), seq);
    assert_eq!(db.get("acct", &Pk::Str("t1".into())).unwrap().unwrap()["balance"], 1);

    let before = db.latest_seq();
    let err = db
        .execute(
            "BEGIN
             INSERT INTO acct {\"id\": \"t2\"}
             INSERT INTO acct {\"id\": \"a\"}
             COMMIT",
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("statement 3") && msg.contains("duplicate"), "{msg}");
    assert!(msg.contains("begun at statement 1 was rolled back"), "{msg}");
    assert_eq!(db.latest_seq(), before);
    assert!(db.get("acct", &Pk::Str("t2".into())).unwrap().is_none());

    let out = db.execute("BEGIN\nINSERT INTO acct {\"id\": \"t3\"}\nROLLBACK").unwrap();
    assert_eq!(out[2], Outcome::RolledBack);
    assert!(db.get("acct", &Pk::Str("t3".into())).unwrap().is_none());

    let err = db.execute("BEGIN\nINSERT INTO acct {\"id\": \"t4\"}").unwrap_err().to_string();
    assert!(err.contains("not committed") && err.contains("rolled back"), "{err}");
    assert!(db.get("acct", &Pk::Str("t4".into())).unwrap().is_none());
    for bad in ["COMMIT", "ROLLBACK", "BEGIN\nBEGIN", "BEGIN\nSNAPSHOT acct\nCOMMIT"] {
        assert!(db.execute(bad).is_err(), "{bad}");
    }
    assert_eq!(db.latest_seq(), before);
}

#[test]
fn transactions_survive_reopen_and_relaxed_durability_still_commits() {
    let fs = MemFs::new();
    let o =
        Options { durability: driftdb::Durability::RelaxedSyncEvery(std::time::Duration::from_millis(5)), ..opts(&fs) };
    let db = Db::create("/db", &key(), o.clone()).unwrap();
    db.create_table("t", "id", &[]).unwrap();
    let mut t = db.begin(Isolation::Serializable);
    for i in 0..10 {
        t.insert("t", json!({"id": i})).unwrap();
    }
    let seq = t.commit().unwrap();
    db.close().unwrap();
    let db = Db::open("/db", &key(), o).unwrap();
    assert_eq!(db.latest_seq(), seq);
    assert_eq!(db.scan("t", None).unwrap().len(), 10);
}

#[test]
fn compaction_cannot_move_the_horizon_past_an_open_transaction() {
    let (_fs, db) = db();
    let mut t = db.begin(Isolation::Serializable);
    let snap = t.snapshot_seq();
    db.soft_delete("acct", &Pk::Str("b".into())).unwrap();
    db.insert("acct", json!({"id": "c"})).unwrap();
    let e = db.compact("acct", Some(&driftdb::query::ast::AsOf::Seq(db.latest_seq()))).unwrap_err();
    assert!(e.to_string().contains("transaction"), "{e}");
    // The transaction still reads its snapshot and sees the delete as a conflict.
    assert_eq!(balance(&t.get("acct", &Pk::Str("b".into())).unwrap()), 100);
    t.insert("acct", json!({"id": "d", "note": "b was there"})).unwrap();
    assert!(is_conflict(t.commit()));
    // Up to the snapshot is fine while it is open; anything once it ended.
    let t = db.begin(Isolation::Snapshot);
    db.compact("acct", Some(&driftdb::query::ast::AsOf::Seq(snap))).unwrap();
    drop(t);
    db.compact("acct", Some(&driftdb::query::ast::AsOf::Seq(db.latest_seq()))).unwrap();
}

#[test]
fn as_of_inside_a_snapshot_transaction_reads_only_up_to_its_snapshot() {
    let (_fs, db) = db();
    let before = db.latest_seq();
    let mut t = db.begin(Isolation::Serializable);
    db.patch("acct", &Pk::Str("a".into()), set(json!({"balance": 1}))).unwrap();
    let q = |s: &str| {
        driftdb::query::parse_one(s).map(|st| match st {
            driftdb::query::ast::Stmt::Select(sel) => sel,
            _ => unreachable!(),
        })
    };
    let at = t.select(&q(&format!("SELECT balance FROM acct WHERE id = \"a\" AS OF @seq:{before}")).unwrap()).unwrap();
    assert_eq!(at, vec![json!({"balance": 100})]);
    for past_it in ["AS OF @now".to_string(), format!("AS OF @seq:{}", db.latest_seq())] {
        let e = t.select(&q(&format!("SELECT * FROM acct {past_it}")).unwrap()).unwrap_err();
        assert!(e.to_string().contains("snapshot"), "{e}");
    }
    // Read committed reads committed history, as any read outside a transaction.
    let mut rc = db.begin(Isolation::ReadCommitted);
    assert_eq!(rc.select(&q("SELECT balance FROM acct WHERE id = \"a\" AS OF @now").unwrap()).unwrap().len(), 1);
}

#[test]
fn a_table_created_in_a_transaction_never_shadows_one_committed_meanwhile() {
    let (_fs, db) = db();
    let mut t = db.begin(Isolation::ReadCommitted);
    t.create_table("mine", "k", &[]).unwrap();
    t.insert("mine", json!({"k": 1})).unwrap();
    db.create_table("theirs", "k", &[]).unwrap();
    db.insert("theirs", json!({"k": 1, "owner": "them"})).unwrap();
    // `theirs` is its own table for the transaction: its row is visible and
    // a duplicate key there is refused; `mine` is unaffected.
    assert_eq!(t.get("theirs", &Pk::Int(1)).unwrap().unwrap()["owner"], "them");
    assert!(t.insert("theirs", json!({"k": 1})).is_err());
    t.insert("theirs", json!({"k": 2})).unwrap();
    let mine: Vec<Value> = t.query("SELECT * FROM mine").unwrap();
    assert_eq!(mine, vec![json!({"k": 1})]);
    t.commit().unwrap();
    assert_eq!(db.scan("theirs", None).unwrap().len(), 2);
    assert_eq!(db.scan("mine", None).unwrap().len(), 1);
    assert_ne!(db.describe("mine").unwrap().id, db.describe("theirs").unwrap().id);
}
