//! `insert_json`: documents given as JSON text are checked, keyed and
//! stored as given, and read back exactly as the parsed insert of the same
//! text would; bad text is refused with a clear error and commits nothing.

use driftdb::storage::memfs::MemFs;
use driftdb::{Db, KeySource, Options, Pk, StoreOptions};
use serde_json::{Value, json};
use std::sync::Arc;

fn opts(fs: &MemFs) -> Options {
    Options { store: StoreOptions { vfs: Arc::new(fs.clone()), ..Default::default() }, ..Default::default() }
}

fn key() -> KeySource {
    KeySource::Raw(driftdb::crypto::keys::SecretKey::from_bytes([9; 32]))
}

/// Texts that parse to the same documents however they are spelled.
const TEXTS: &[&str] = &[
    r#"{"id":"a","s":"x","n":1}"#,
    "  {\n  \"id\" : \"b\" ,\t\"s\": \"y\", \"n\": 2.50, \"deep\": {\"l\": [1, [2, {\"m\": null}]]} }  ",
    r#"{"id":"c","s":"\u0078","e":"caf\u00e9 \ud83d\ude00","big":1e300,"neg":-0,"t":true}"#,
    r#"{"s":"x","id":"d","arr":[],"obj":{}}"#,
    r#"{"id":7,"s":"y"}"#,
];

fn parsed(t: &str) -> Value {
    serde_json::from_str(t).unwrap()
}

fn pk_of(t: &str) -> Pk {
    Pk::from_json(&parsed(t)["id"]).unwrap()
}

#[test]
fn text_inserts_read_back_as_parsed_inserts_do_now_and_after_reopening() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(), opts(&fs)).unwrap();
    db.create_table("text", "id", &["s"]).unwrap();
    db.create_table("parsed", "id", &["s"]).unwrap();
    db.write(|w| {
        for t in TEXTS {
            w.insert_json("text", *t)?;
            w.insert("parsed", parsed(t))?;
        }
        Ok(())
    })
    .unwrap();
    let check = |db: &Db| {
        for t in TEXTS {
            let k = pk_of(t);
            let a = db.get("text", &k).unwrap();
            assert_eq!(a, Some(parsed(t)), "{t}");
            assert_eq!(a, db.get("parsed", &k).unwrap());
            let h = db.history("text", &k).unwrap();
            assert_eq!(h.len(), 1);
            assert_eq!((h[0].op, &h[0].doc), ("INSERT", &parsed(t)));
        }
        for s in ["x", "y"] {
            let q = |table: &str| -> Vec<Value> {
                db.query(&format!("SELECT id FROM {table} WHERE s = '{s}' ORDER BY id")).unwrap()
            };
            assert_eq!(q("text"), q("parsed"), "index answers for s = {s}");
            assert!(!q("text").is_empty());
        }
    };
    check(&db);
    db.close().unwrap();
    let db = Db::open("/db", &key(), opts(&fs)).unwrap();
    check(&db);
    // And once more from a snapshot rather than from the log.
    db.snapshot("text").unwrap();
    db.close().unwrap();
    let db = Db::open("/db", &key(), opts(&fs)).unwrap();
    check(&db);
}

#[test]
fn bad_text_is_refused_with_a_clear_error_and_commits_nothing() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(), opts(&fs)).unwrap();
    db.create_table("t", "id", &["s"]).unwrap();
    db.insert_json("t", r#"{"id":"taken"}"#).unwrap();
    let deep = format!(r#"{{"id":"deep","d":{}1{}}}"#, "[".repeat(127), "]".repeat(127));
    let fits = format!(r#"{{"id":"fits","d":{}1{}}}"#, "[".repeat(126), "]".repeat(126));
    let cases: Vec<(String, &str)> = vec![
        (r#"{"id":"x","#.into(), "not valid JSON"),
        (r#"{"id":"x"} trailing"#.into(), "not valid JSON"),
        (r#"{"id":"x","s":"\ud800"}"#.into(), "not valid JSON"),
        ("".into(), "not valid JSON"),
        (r#"[{"id":"x"}]"#.into(), "must be a JSON object"),
        (r#""id""#.into(), "must be a JSON object"),
        (r#"{"s":"x"}"#.into(), "no primary key field \"id\""),
        (r#"{"id":null}"#.into(), "no primary key field \"id\""),
        (r#"{"id":1.5}"#.into(), "must be a string or an integer"),
        (r#"{"id":{"a":1}}"#.into(), "must be a string or an integer"),
        (r#"{"id":"taken"}"#.into(), "duplicate primary key \"taken\""),
        (deep, "deeper than 127 levels"),
    ];
    let seq = db.latest_seq();
    for (text, why) in &cases {
        let e = db.insert_json("t", text.as_str()).unwrap_err().to_string();
        assert!(e.contains(why), "{text:?}: {e}");
        assert!(e.contains("t"), "{e}");
    }
    // A bad document anywhere in a transaction commits none of it.
    let e = db
        .write(|w| {
            w.insert_json("t", r#"{"id":"ok"}"#)?;
            w.insert_json("t", r#"{"id":"ok"}"#)
        })
        .unwrap_err();
    assert!(e.to_string().contains("duplicate primary key \"ok\""), "{e}");
    assert_eq!(db.latest_seq(), seq, "nothing was committed");
    assert_eq!(db.scan("t", None).unwrap().len(), 1);
    assert!(db.get("t", &Pk::Str("ok".into())).unwrap().is_none());
    // The deepest document a parsed insert accepts is accepted as text too.
    db.insert_json("t", fits.as_str()).unwrap();
    assert_eq!(db.get("t", &Pk::Str("fits".into())).unwrap(), Some(parsed(&fits)));
}

/// A field given twice is refused, naming the field: a parse would keep the
/// last value silently, so `{"id": 500, "id": 501}` is never stored as 501.
#[test]
fn a_field_given_twice_is_refused_wherever_documents_enter() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(), opts(&fs)).unwrap();
    db.create_table("t", "id", &["s"]).unwrap();
    let before = db.latest_seq();
    for bad in [r#"{"id":"first","s":"old","id":"last","s":"new"}"#, r#"{"id":1,"n":{"a":1,"a":2}}"#] {
        let e = db.insert_json("t", bad).unwrap_err().to_string();
        assert!(e.contains("duplicate key"), "{e}");
    }
    let e = db.execute(r#"INSERT INTO t {"id": 500, "id": 501}"#).unwrap_err().to_string();
    assert!(e.contains(r#"duplicate key "id""#) && e.contains("line 1"), "{e}");
    db.insert("t", json!({"id": 1, "s": "x"})).unwrap();
    let e = db.execute(r#"PATCH t KEY 1 SET {"s": "a", "s": "b"}"#).unwrap_err().to_string();
    assert!(e.contains(r#"duplicate key "s""#), "{e}");
    assert_eq!(db.latest_seq(), before + 1, "only the valid insert was committed");
    assert_eq!(db.scan("t", None).unwrap().len(), 1);
    assert_eq!(db.get("t", &Pk::Int(1)).unwrap().unwrap()["s"], "x");
}

#[test]
fn text_inserts_get_column_defaults_and_are_read_by_their_own_transaction() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(), opts(&fs)).unwrap();
    db.create_table("t", "id", &[]).unwrap();
    db.execute(r#"ALTER TABLE t ADD COLUMN tier DEFAULT "free""#).unwrap();
    db.insert_json("t", r#"{"id":1}"#).unwrap();
    db.insert_json("t", r#"{"id":2,"tier":"gold"}"#).unwrap();
    assert_eq!(db.get("t", &Pk::Int(1)).unwrap(), Some(json!({"id": 1, "tier": "free"})));
    assert_eq!(db.get("t", &Pk::Int(2)).unwrap(), Some(json!({"id": 2, "tier": "gold"})));
    db.write(|w| {
        w.insert_json("t", r#"{"id":3,"x":[1,2]}"#)?;
        assert_eq!(w.get("t", &Pk::Int(3))?, Some(json!({"id": 3, "x": [1, 2], "tier": "free"})));
        Ok(())
    })
    .unwrap();
    assert_eq!(db.get("t", &Pk::Int(3)).unwrap(), Some(json!({"id": 3, "x": [1, 2], "tier": "free"})));
}

/// The operations of [`large_commits_index_and_record_history_as_one_commit_per_change_does`]:
/// 400 inserts given as text, then patches, deletes and inserts again of
/// rows among them (some rows changed twice in the same commit).
fn mixed_ops() -> Vec<(u8, i64, String)> {
    let s = |i: i64| match i % 5 {
        0 => r#","s":"x""#.to_string(),
        1 => r#","s":"y""#.to_string(),
        2 => r#","s":3"#.to_string(),
        3 => String::new(),
        _ => r#","s":true"#.to_string(),
    };
    let mut ops: Vec<(u8, i64, String)> = (0..400).map(|i| (0, i, format!(r#"{{"id":{i}{}}}"#, s(i)))).collect();
    ops.extend((0..120).map(|i| (1, i * 3, (i % 4).to_string())));
    ops.extend((0..60).map(|i| (1, i * 3, "z".to_string())));
    ops.extend((0..50).map(|i| (2, i * 7 + 1, String::new())));
    ops.extend((0..20).map(|i| (0, i * 7 + 1, format!(r#"{{"id":{},"s":"again"}}"#, i * 7 + 1))));
    ops
}

fn run_op(w: &mut driftdb::Txn<'_>, (op, id, arg): &(u8, i64, String)) -> driftdb::Result<()> {
    match op {
        0 => w.insert_json("t", arg.as_str()),
        1 => {
            let mut set = serde_json::Map::new();
            set.insert("s".into(), if arg == "z" { json!("z") } else { json!(arg.parse::<i64>().unwrap_or(0)) });
            w.patch("t", &Pk::Int(*id), set)
        }
        _ => w.soft_delete("t", &Pk::Int(*id)),
    }
}

/// A commit of hundreds of changes records its history on a thread of its
/// own while its rows and indexes are updated, and indexes its text
/// inserts by the fields picked when they were staged: every row's
/// history, every indexed answer and every row read the same as when each
/// change is its own commit, before and after reopening.
#[test]
fn large_commits_index_and_record_history_as_one_commit_per_change_does() {
    let ops = mixed_ops();
    let (fs_one, fs_each) = (MemFs::new(), MemFs::new());
    let one = Db::create("/db", &key(), opts(&fs_one)).unwrap();
    let each = Db::create("/db", &key(), opts(&fs_each)).unwrap();
    for db in [&one, &each] {
        db.create_table("t", "id", &["s"]).unwrap();
    }
    one.write(|w| ops.iter().try_for_each(|op| run_op(w, op))).unwrap();
    for op in &ops {
        each.write(|w| run_op(w, op)).unwrap();
    }
    assert_eq!(one.latest_seq(), each.latest_seq());
    let check = |one: &Db, each: &Db| {
        for id in 0..400 {
            let k = Pk::Int(id);
            let h = |db: &Db| -> Vec<(u64, &'static str, Value)> {
                db.history("t", &k).unwrap().into_iter().map(|e| (e.seq, e.op, e.doc)).collect()
            };
            let h_one = h(one);
            assert_eq!(h_one, h(each), "history of row {id}");
            assert!(!h_one.is_empty() && h_one.windows(2).all(|p| p[0].0 < p[1].0), "row {id}: {h_one:?}");
            assert_eq!(one.get("t", &k).unwrap(), each.get("t", &k).unwrap(), "row {id}");
        }
        for w in ["s = 'x'", "s = 'y'", "s = 'z'", "s = 'again'", "s = 3", "s = 0", "s = true", "s > 0", "s IS NULL"] {
            let q = format!("SELECT id FROM t WHERE {w} ORDER BY id");
            let (a, b): (Vec<Value>, Vec<Value>) = (one.query(&q).unwrap(), each.query(&q).unwrap());
            assert_eq!(a, b, "WHERE {w}");
            let driftdb::query::ast::Stmt::Select(sel) =
                driftdb::query::parse_one(&format!("SELECT * FROM t WHERE {w}")).unwrap()
            else {
                unreachable!()
            };
            assert_eq!(one.select(&sel).unwrap(), one.select_full_scan(&sel).unwrap(), "WHERE {w}");
        }
    };
    check(&one, &each);
    one.close().unwrap();
    each.close().unwrap();
    let one = Db::open("/db", &key(), opts(&fs_one)).unwrap();
    let each = Db::open("/db", &key(), opts(&fs_each)).unwrap();
    check(&one, &each);
}

/// Fields picked while a text insert is staged are those indexed then; a
/// schema change later in the same transaction (a new index, a dropped
/// one, a renamed column) still leaves every index exact.
#[test]
fn text_inserts_are_indexed_exactly_across_schema_changes_in_their_transaction() {
    use driftdb::table::schema::Alter;
    let fs = MemFs::new();
    let db = Db::create("/db", &key(), opts(&fs)).unwrap();
    db.create_table("t", "id", &["s"]).unwrap();
    let exact = |db: &Db, wheres: &[&str]| {
        for w in wheres {
            let driftdb::query::ast::Stmt::Select(sel) =
                driftdb::query::parse_one(&format!("SELECT * FROM t WHERE {w}")).unwrap()
            else {
                unreachable!()
            };
            assert_eq!(db.select(&sel).unwrap(), db.select_full_scan(&sel).unwrap(), "WHERE {w}");
        }
    };
    db.write(|w| {
        w.insert_json("t", r#"{"id":1,"s":"a","u":"p"}"#)?;
        w.alter("t", Alter::CreateIndex { column: "u".into() })?;
        w.insert_json("t", r#"{"id":2,"s":"b","u":"q"}"#)?;
        Ok(())
    })
    .unwrap();
    exact(&db, &["u = 'p'", "u = 'q'", "s = 'a'", "s = 'b'"]);
    let ids: Vec<Value> = db.query("SELECT id FROM t WHERE u = 'q'").unwrap();
    assert_eq!(ids, vec![json!({"id": 2})]);
    db.write(|w| {
        w.alter("t", Alter::DropIndex { column: "s".into() })?;
        w.insert_json("t", r#"{"id":3,"s":"a","u":"p"}"#)?;
        w.alter("t", Alter::RenameColumn { column: "u".into(), to: "v".into() })?;
        w.insert_json("t", r#"{"id":4,"s":"b","v":"q","u":"p"}"#)?;
        Ok(())
    })
    .unwrap();
    let check = |db: &Db| {
        exact(db, &["v = 'p'", "v = 'q'", "u = 'p'", "s = 'a'", "s = 'b'"]);
        let ids: Vec<Value> = db.query("SELECT id FROM t WHERE v = 'p' ORDER BY id").unwrap();
        assert_eq!(ids, vec![json!({"id": 1}), json!({"id": 3})]);
        let ids: Vec<Value> = db.query("SELECT id FROM t WHERE v = 'q' ORDER BY id").unwrap();
        assert_eq!(ids, vec![json!({"id": 2}), json!({"id": 4})]);
    };
    check(&db);
    db.close().unwrap();
    check(&Db::open("/db", &key(), opts(&fs)).unwrap());
}

/// A key field that is also indexed gets its value in both places from
/// the one pass over the text.
#[test]
fn an_indexed_key_field_indexes_text_inserts() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(), opts(&fs)).unwrap();
    db.create_table("t", "id", &["id", "s"]).unwrap();
    db.write(|w| {
        for i in 0..300 {
            w.insert_json("t", format!(r#"{{"id":"k{i:03}","s":"v{}"}}"#, i % 3))?;
        }
        Ok(())
    })
    .unwrap();
    db.insert_json("t", r#"{"s":"v9","id":"last"}"#).unwrap();
    for w in ["id = 'k007'", "id = 'last'", "id > 'k290'", "s = 'v1'", "s = 'v9'"] {
        let driftdb::query::ast::Stmt::Select(sel) =
            driftdb::query::parse_one(&format!("SELECT * FROM t WHERE {w}")).unwrap()
        else {
            unreachable!()
        };
        let got = db.select(&sel).unwrap();
        assert!(!got.is_empty(), "WHERE {w}");
        assert_eq!(got, db.select_full_scan(&sel).unwrap(), "WHERE {w}");
    }
}

/// A row whose indexed value is too large to be carried beside it in a
/// snapshot record is still snapshotted (that record without the values),
/// and reads and indexes the same after reopening.
#[test]
fn a_snapshot_of_a_row_with_a_huge_indexed_string_is_written_and_reopens() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(), opts(&fs)).unwrap();
    db.create_table("t", "id", &["s"]).unwrap();
    let big = "x".repeat(9 << 20);
    db.insert_json("t", format!(r#"{{"id":1,"s":"{big}"}}"#)).unwrap();
    db.insert_json("t", r#"{"id":2,"s":"small"}"#).unwrap();
    db.snapshot("t").unwrap();
    db.close().unwrap();
    let db = Db::open("/db", &key(), opts(&fs)).unwrap();
    assert_eq!(db.snapshots("t").unwrap().len(), 1);
    let ids: Vec<Value> = db.query("SELECT id FROM t WHERE s = 'small'").unwrap();
    assert_eq!(ids, vec![json!({"id": 2})]);
    let ids: Vec<Value> = db.query(&format!("SELECT id FROM t WHERE s = '{big}'")).unwrap();
    assert_eq!(ids, vec![json!({"id": 1})]);
}

/// Text stored as given is still encrypted at rest: a canary inserted as
/// JSON text (in the log, the WAL and a snapshot) appears in no file.
#[test]
fn text_stored_as_given_appears_in_no_file() {
    const CANARY: &str = "CANARY-insert-json-7f3a9c";
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("db");
    let db = Db::create(&dir, &key(), Options::default()).unwrap();
    db.create_table("t", "id", &["s"]).unwrap();
    for i in 0..50 {
        db.insert_json("t", format!(r#"{{"id":{i},"s":"{CANARY}","note":"{CANARY} {i}"}}"#)).unwrap();
    }
    db.snapshot("t").unwrap();
    db.insert_json("t", format!(r#"{{"id":"{CANARY}"}}"#)).unwrap();
    db.close().unwrap();
    let mut stack = vec![dir.clone()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            files += 1;
            let b = std::fs::read(&p).unwrap();
            assert!(
                !b.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
                "{} holds the canary in clear",
                p.display()
            );
        }
    }
    assert!(files > 2, "the database wrote its files");
    let db = Db::open(&dir, &key(), Options::default()).unwrap();
    assert_eq!(db.get("t", &Pk::Str(CANARY.into())).unwrap(), Some(json!({"id": CANARY})));
}
