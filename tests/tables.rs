//! Tables through the CLI: the seed's examples, time travel, history,
//! ingest, and bad input (each a clear error, an exit code, nothing committed).

mod common;
use common::*;
use std::path::{Path, PathBuf};

struct Db {
    _t: tempfile::TempDir,
    dir: PathBuf,
    key: PathBuf,
}

impl Db {
    fn new() -> Db {
        let t = tempfile::tempdir().unwrap();
        let key = key_file(t.path(), "k", 0x61);
        let dir = t.path().join("db");
        assert_eq!(run(&["init", dir.to_str().unwrap(), "--key-file", key.to_str().unwrap()]).status.code(), Some(0));
        Db { _t: t, dir, key }
    }

    fn cmd(&self, sub: &str, extra: &[&str]) -> (i32, String, String) {
        let mut args = vec![sub, "-d", self.dir.to_str().unwrap(), "--key-file", self.key.to_str().unwrap()];
        args.extend_from_slice(extra);
        parts(&run(&args))
    }

    fn sql(&self, s: &str) -> (i32, String, String) {
        self.cmd("sql", &["-e", s])
    }

    fn lines(&self, sub: &str, extra: &[&str]) -> Vec<serde_json::Value> {
        let (code, out, err) = self.cmd(sub, extra);
        assert_eq!(code, 0, "{err}");
        out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

const SEED: &str = r#"
  CREATE TABLE orders (pk=id, INDEX(status, customer_id))
  INSERT INTO orders {"id": "o1", "status": "pending", "amount": 100, "customer_id": "c1"}
  PATCH orders KEY "o1" SET {"status": "paid"}
  SOFT DELETE FROM orders KEY "o1""#;

#[test]
fn the_seed_examples_through_the_cli() {
    let db = Db::new();
    let (code, out, err) = db.sql(SEED);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");
    // AS OF each point of the row's life.
    let at = |s: &str| db.lines("select", &["-t", "orders", "--as-of", s, "--json"]);
    assert_eq!(at("@seq:1"), Vec::<serde_json::Value>::new());
    assert_eq!(at("@seq:2")[0]["status"], "pending");
    assert_eq!(at("@seq:3")[0]["status"], "paid");
    assert!(at("@seq:4").is_empty());
    assert!(at("@now").is_empty());
    let drift = db.lines("drift", &["-t", "orders", "-k", "o1", "--json"]);
    let ops: Vec<&str> = drift.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["INSERT", "PATCH", "SOFT_DELETE"]);
    assert_eq!(drift[1]["seq"], 3);
    assert_eq!(drift[1]["doc"]["status"], "paid");
    assert!(drift[0]["time"].as_str().unwrap().ends_with('Z'));
    // A time between events resolves to the state at that time.
    let t_patch = drift[1]["time"].as_str().unwrap().to_string();
    assert_eq!(at(&t_patch)[0]["status"], "paid");
    // Re-insert after soft delete: history continues.
    let (code, _, err) = db.sql(r#"INSERT INTO orders {"id": "o1", "status": "new", "amount": 5}"#);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.lines("drift", &["-t", "orders", "-k", "o1", "--json"]).len(), 4);
    // WHERE, ORDER BY, aggregates.
    db.sql(r#"INSERT INTO orders {"id": "o2", "status": "paid", "amount": 7}; INSERT INTO orders {"id": "o3", "status": "paid", "amount": 30}"#);
    let rows = db.lines("select", &["-t", "orders", "-w", "status = \"paid\" AND amount > 10", "--json"]);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], "o3");
    let (code, out, _) = db.cmd(
        "sql",
        &["-e", "SELECT status, COUNT(*), SUM(amount) FROM orders GROUP BY status ORDER BY status", "--json"],
    );
    assert_eq!(code, 0);
    let g: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        g,
        vec![
            serde_json::json!({"status": "new", "COUNT(*)": 1, "SUM(amount)": 5}),
            serde_json::json!({"status": "paid", "COUNT(*)": 2, "SUM(amount)": 37}),
        ]
    );
    let (code, out, _) = db.cmd("sql", &["-e", "SELECT COUNT(*) FROM orders AS OF @seq:3", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), r#"{"COUNT(*)":1}"#);
    // Snapshots: on demand, through DriftQL and the CLI; reads are unchanged.
    let before = db.lines("select", &["-t", "orders", "--as-of", "@seq:3", "--json"]);
    let (code, out, err) = db.cmd("snapshot", &["-t", "orders"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("snapshot at seq"), "{out}");
    let (code, out, _) = db.sql("SNAPSHOT orders");
    assert_eq!(code, 0);
    assert!(out.contains("snapshot at seq"), "{out}");
    assert_eq!(db.lines("select", &["-t", "orders", "--as-of", "@seq:3", "--json"]), before);
    assert!(std::fs::read_dir(&db.dir).unwrap().any(|e| e.unwrap().path().extension().is_some_and(|x| x == "snap")));
    // COMPACT through the CLI: reads before the horizon become errors, after it unchanged.
    let now_rows = db.lines("select", &["-t", "orders", "--json"]);
    let (code, out, err) = db.cmd("compact", &["-t", "orders", "--before", "@seq:3"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("folded"), "{out}");
    let (code, _, err) = db.cmd("select", &["-t", "orders", "--as-of", "@seq:2"]);
    assert_eq!(code, 1);
    assert!(err.contains("compacted"), "{err}");
    assert_eq!(db.lines("select", &["-t", "orders", "--json"]), now_rows);
    assert_eq!(db.lines("select", &["-t", "orders", "--as-of", "@seq:3", "--json"])[0]["status"], "paid");
    let drift = db.lines("drift", &["-t", "orders", "-k", "o1", "--json"]);
    assert_eq!(drift[0]["op"], "COMPACTED");
    // Tables and human output.
    let (code, out, _) = db.cmd("tables", &[]);
    assert_eq!(code, 0);
    assert!(out.contains("orders") && out.contains("status, customer_id"), "{out}");
    let (code, out, _) = db.cmd("select", &["-t", "orders", "-l", "1"]);
    assert_eq!(code, 0);
    assert!(out.contains("(1 row)"), "{out}");
}

#[test]
fn integer_and_string_keys_match_exactly() {
    let db = Db::new();
    let (code, _, err) =
        db.sql(r#"CREATE TABLE t (pk=id); INSERT INTO t {"id": 1, "v": "int"}; INSERT INTO t {"id": "1", "v": "str"}"#);
    assert_eq!(code, 0, "{err}");
    let d = db.lines("drift", &["-t", "t", "-k", "1", "--json"]);
    assert_eq!(d[0]["doc"]["v"], "int");
    let d = db.lines("drift", &["-t", "t", "-k", "\"1\"", "--json"]);
    assert_eq!(d[0]["doc"]["v"], "str");
    let (code, _, _) = db.sql(r#"PATCH t KEY 1 SET {"v": "int2"}"#);
    assert_eq!(code, 0);
    let rows = db.lines("select", &["-t", "t", "-w", "v = \"int2\"", "--json"]);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], 1);
}

impl Db {
    fn latest_seq(&self) -> u64 {
        let opts = driftdb::Options {
            store: driftdb::StoreOptions { read_only: true, ..Default::default() },
            ..Default::default()
        };
        driftdb::Db::open(&self.dir, &driftdb::KeySource::key_file(&self.key), opts).unwrap().latest_seq()
    }
}

#[test]
fn bad_input_is_a_clear_error_and_commits_nothing() {
    let db = Db::new();
    db.sql("CREATE TABLE orders (pk=id)");
    db.sql(r#"INSERT INTO orders {"id": "o1"}"#);
    let before = db.latest_seq();
    let cases: &[(&str, i32, &str)] = &[
        ("SELEC * FROM orders", 1, "line 1, column 1"),
        ("SELECT * FROM nosuch", 1, "unknown table"),
        (r#"INSERT INTO orders {"id": "o1"}"#, 1, "duplicate primary key"),
        (r#"INSERT INTO orders {"name": "x"}"#, 1, "no primary key"),
        (r#"INSERT INTO orders {"id": 1.5}"#, 1, "string or an integer"),
        (r#"PATCH orders KEY "zz" SET {"a": 1}"#, 1, "no live row"),
        (r#"SELECT * FROM orders AS OF "2025-02-30T00:00:00Z""#, 1, "malformed timestamp"),
        (r#"SELECT * FROM orders AS OF "2999-01-01T00:00:00Z""#, 1, "in the future"),
        ("SELECT * FROM orders AS OF @seq:99", 1, "beyond the latest"),
        (r#"INSERT INTO orders {"id": "o9", "x": }"#, 1, "invalid JSON"),
    ];
    for (q, code, msg) in cases {
        let (c, _, err) = db.sql(q);
        assert_eq!(c, *code, "{q}: {err}");
        assert!(err.contains(msg), "{q}: {err}");
    }
    assert_eq!(db.latest_seq(), before, "a failed statement committed something");
    // Soft-deleted rows cannot be patched or deleted again.
    db.sql(r#"SOFT DELETE FROM orders KEY "o1""#);
    let (c, _, err) = db.sql(r#"PATCH orders KEY "o1" SET {"a": 1}"#);
    assert_eq!(c, 1);
    assert!(err.contains("missing or deleted"), "{err}");
    // A missing flag is a usage error.
    let (c, _, _) = db.cmd("select", &[]);
    assert_eq!(c, 2);
}

#[test]
fn ingest_commits_in_batches_and_stops_at_a_bad_line() {
    let db = Db::new();
    db.sql("CREATE TABLE users (pk=id, INDEX(status))");
    let f = db.dir.parent().unwrap().join("users.jsonl");
    let mut text = String::new();
    for i in 0..25 {
        text.push_str(&format!("{{\"id\":\"user-{i:03}\",\"status\":\"active\",\"n\":{i}}}\n"));
    }
    std::fs::write(&f, &text).unwrap();
    let (code, out, err) = db.cmd("ingest", &["-t", "users", "-f", f.to_str().unwrap(), "--batch", "10"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ingested 25 documents"), "{out}");
    let (_, out, _) = db.cmd("sql", &["-e", "SELECT COUNT(*) FROM users", "--json"]);
    assert_eq!(out.trim(), r#"{"COUNT(*)":25}"#);
    // Line 13 is bad: batch 1 (lines 1-10) commits, the batch holding line 13 does not.
    let mut text = String::new();
    for i in 100..120 {
        if i == 112 {
            text.push_str("{not json}\n");
        } else {
            text.push_str(&format!("{{\"id\":\"user-{i:03}\"}}\n"));
        }
    }
    std::fs::write(&f, &text).unwrap();
    let (code, _, err) = db.cmd("ingest", &["-t", "users", "-f", f.to_str().unwrap(), "--batch", "10"]);
    assert_eq!(code, 1);
    assert!(err.contains(":13:") && err.contains("invalid JSON"), "{err}");
    let (_, out, _) = db.cmd("sql", &["-e", "SELECT COUNT(*) FROM users", "--json"]);
    assert_eq!(out.trim(), r#"{"COUNT(*)":35}"#);
    // A duplicate inside a batch fails the whole batch.
    std::fs::write(&f, "{\"id\":\"a\"}\n{\"id\":\"user-000\"}\n").unwrap();
    let (code, _, err) = db.cmd("ingest", &["-t", "users", "-f", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains(":2:") && err.contains("duplicate"), "{err}");
    let (_, out, _) = db.cmd("sql", &["-e", "SELECT COUNT(*) FROM users", "--json"]);
    assert_eq!(out.trim(), r#"{"COUNT(*)":35}"#);
}

#[test]
fn table_data_canaries_appear_in_no_file() {
    let db = Db::new();
    let (code, _, err) = db.sql(
        r#"CREATE TABLE canary_table_7d1e (pk=canary_pk_field, INDEX(canary_indexed_field))
        INSERT INTO canary_table_7d1e {"canary_pk_field": "canary-key-55aa", "canary_indexed_field": "canary-indexed-value-93", "doc": "canary-document-text-c0ffee"}
        PATCH canary_table_7d1e KEY "canary-key-55aa" SET {"canary_patched_field": "canary-patch-value"}"#,
    );
    assert_eq!(code, 0, "{err}");
    for (p, bytes) in tree(&db.dir) {
        for needle in ["canary", "CANARY", "7d1e", "55aa", "c0ffee"] {
            assert!(!contains(&bytes, needle.as_bytes()), "{needle} found in {}", p.display());
        }
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        assert!(!name.contains("canary"), "{name}");
    }
    assert!(Path::new(&db.dir).exists());
}

#[test]
fn a_transaction_through_the_cli_commits_whole_or_rolls_back_and_says_so() {
    let db = Db::new();
    let (code, out, err) = db.sql(
        r#"CREATE TABLE acct (pk=id)
           BEGIN ISOLATION LEVEL SNAPSHOT
           INSERT INTO acct {"id": "a", "balance": 10}
           INSERT INTO acct {"id": "b", "balance": 20}
           SELECT COUNT(*) FROM acct
           COMMIT"#,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("begin (snapshot)") && out.contains("pending commit"), "{out}");
    assert!(out.contains("ok (seq 3)"), "one commit for both inserts: {out}");
    let (code, _, err) = db.sql(
        r#"BEGIN
           PATCH acct KEY "a" SET {"balance": 0}
           PATCH acct KEY "missing" SET {"balance": 30}
           COMMIT"#,
    );
    assert_eq!(code, 1);
    assert!(err.contains("statement 3") && err.contains("rolled back"), "{err}");
    let rows = db.lines("select", &["-t", "acct", "--json"]);
    assert_eq!(rows.iter().map(|r| r["balance"].as_i64().unwrap()).collect::<Vec<_>>(), vec![10, 20]);
    let (code, _, err) = db.sql("BEGIN\nINSERT INTO acct {\"id\": \"c\"}");
    assert_eq!(code, 1);
    assert!(err.contains("not committed"), "{err}");
    assert_eq!(db.lines("select", &["-t", "acct", "--json"]).len(), 2);
}
