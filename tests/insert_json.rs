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

/// A field given twice keeps its last value, as in the parsed document:
/// the row is keyed by the last `id`, which is also the `id` it reads back.
#[test]
fn a_field_given_twice_keys_the_row_by_its_last_value() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(), opts(&fs)).unwrap();
    db.create_table("t", "id", &["s"]).unwrap();
    db.insert_json("t", r#"{"id":"first","s":"old","id":"last","s":"new"}"#).unwrap();
    assert_eq!(db.get("t", &Pk::Str("first".into())).unwrap(), None);
    let row = db.get("t", &Pk::Str("last".into())).unwrap().unwrap();
    assert_eq!((&row["id"], &row["s"]), (&json!("last"), &json!("new")));
    let hits: Vec<Value> = db.query("SELECT id FROM t WHERE s = 'new'").unwrap();
    assert_eq!(hits, vec![json!({"id": "last"})]);
    let none: Vec<Value> = db.query("SELECT id FROM t WHERE s = 'old'").unwrap();
    assert!(none.is_empty());
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
