//! Schema changes: every statement read before and after it, now and
//! `AS OF`, before and after reopening; indexes following them; schema
//! changes inside transactions and against concurrent ones.

use driftdb::query::ast::Stmt;
use driftdb::{Db, Error, Isolation, KeySource, Options, Outcome, Pk};
use serde_json::{Value, json};
use std::path::Path;

fn key() -> KeySource {
    KeySource::Raw(driftdb::crypto::keys::SecretKey::from_bytes([7u8; 32]))
}

fn create(dir: &Path) -> Db {
    Db::create(dir, &key(), Options::default()).unwrap()
}

fn reopen(db: Db, dir: &Path) -> Db {
    db.close().unwrap();
    Db::open(dir, &key(), Options::default()).unwrap()
}

fn rows(db: &Db, q: &str) -> Vec<Value> {
    match db.execute_stmt(&driftdb::query::parse_one(q).unwrap()).unwrap() {
        Outcome::Rows(r) => r,
        o => panic!("{q}: {o:?}"),
    }
}

fn exec(db: &Db, q: &str) -> u64 {
    match db.execute_stmt(&driftdb::query::parse_one(q).unwrap()).unwrap() {
        Outcome::Committed(s) => s,
        o => panic!("{q}: {o:?}"),
    }
}

fn describe(db: &Db, q: &str) -> driftdb::TableDef {
    match db.execute_stmt(&driftdb::query::parse_one(q).unwrap()).unwrap() {
        Outcome::Tables(mut t) => t.remove(0),
        o => panic!("{q}: {o:?}"),
    }
}

/// Every current read path agrees: point reads, full scans, index scans.
fn check_reads_agree(db: &Db, table: &str, filter: &str) {
    let q = format!("SELECT * FROM {table} WHERE {filter}");
    let sel = match driftdb::query::parse_one(&q).unwrap() {
        Stmt::Select(s) => s,
        _ => unreachable!(),
    };
    assert_eq!(db.select(&sel).unwrap(), db.select_full_scan(&sel).unwrap(), "{q}");
}

fn users(db: &Db) -> (u64, u64) {
    exec(db, "CREATE TABLE users (pk=id, INDEX(email))");
    exec(db, r#"INSERT INTO users {"id": 1, "email": "a@x", "name": "Ada", "ssn": "111"}"#);
    exec(db, r#"INSERT INTO users {"id": 2, "email": "b@x", "name": "Bob", "tier": "gold"}"#);
    let before = exec(db, r#"INSERT INTO users {"id": 3, "email": "c@x", "name": "Cy", "ssn": "333"}"#);
    (before, db.latest_seq())
}

#[test]
fn add_column_default_reads_from_its_sequence_on_now_as_of_and_after_reopen() {
    let d = tempfile::tempdir().unwrap();
    let mut db = create(d.path());
    let (before, _) = users(&db);
    let at = exec(&db, r#"ALTER TABLE users ADD COLUMN tier DEFAULT "free""#);
    let after_insert = exec(&db, r#"INSERT INTO users {"id": 4, "email": "d@x"}"#);
    for round in 0..3 {
        let got = |k: i64| db.get("users", &Pk::Int(k)).unwrap().unwrap()["tier"].clone();
        assert_eq!((got(1), got(2), got(3), got(4)), (json!("free"), json!("gold"), json!("free"), json!("free")));
        // Before the change: as written.
        assert_eq!(db.get_as_of("users", &Pk::Int(1), before).unwrap().unwrap().get("tier"), None);
        assert_eq!(rows(&db, &format!("SELECT id FROM users WHERE tier IS NULL AS OF @seq:{before}")).len(), 2);
        assert_eq!(db.get_as_of("users", &Pk::Int(1), at).unwrap().unwrap()["tier"], json!("free"));
        assert_eq!(
            rows(&db, &format!("SELECT COUNT(*) FROM users WHERE tier = \"free\" AS OF @seq:{at}")),
            vec![json!({"COUNT(*)": 2})]
        );
        assert_eq!(rows(&db, "SELECT COUNT(*) FROM users WHERE tier IS NULL"), vec![json!({"COUNT(*)": 0})]);
        // The schema, now and then.
        assert!(describe(&db, &format!("DESCRIBE users AS OF @seq:{before}")).columns.is_empty());
        let now = describe(&db, "DESCRIBE users");
        assert_eq!(now.columns.len(), 1);
        assert_eq!((now.columns[0].name.as_str(), &now.columns[0].default), ("tier", &Some(json!("free"))));
        // The history keeps what was written.
        let h = db.history("users", &Pk::Int(1)).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].doc.get("tier"), None);
        assert_eq!(db.get("users", &Pk::Int(4)).unwrap().unwrap(), json!({"id": 4, "email": "d@x", "tier": "free"}));
        assert!(after_insert > at);
        match round {
            0 => db = reopen(db, d.path()),
            // From a snapshot taken after the change.
            _ => {
                db.snapshot("users").unwrap();
                db = reopen(db, d.path());
            }
        }
    }
    // An index created afterwards sees the default too.
    exec(&db, "CREATE INDEX ON users (tier)");
    check_reads_agree(&db, "users", r#"tier = "free""#);
    assert_eq!(rows(&db, r#"SELECT id FROM users WHERE tier = "free""#).len(), 3);
    let db = reopen(db, d.path());
    check_reads_agree(&db, "users", r#"tier = "free""#);
    assert_eq!(rows(&db, r#"SELECT id FROM users WHERE tier = "free""#).len(), 3);
}

#[test]
fn drop_column_hides_the_field_from_later_reads_while_history_keeps_it() {
    let d = tempfile::tempdir().unwrap();
    let mut db = create(d.path());
    let (before, _) = users(&db);
    exec(&db, "CREATE INDEX ON users (ssn)");
    let at = exec(&db, "ALTER TABLE users DROP COLUMN ssn");
    // A later write of an old row does not bring the field back.
    exec(&db, r#"PATCH users KEY 1 SET {"name": "Ada L"}"#);
    for _ in 0..2 {
        assert_eq!(db.get("users", &Pk::Int(1)).unwrap().unwrap(), json!({"id": 1, "email": "a@x", "name": "Ada L"}));
        assert_eq!(db.get("users", &Pk::Int(3)).unwrap().unwrap().get("ssn"), None);
        assert_eq!(db.get_as_of("users", &Pk::Int(3), at - 1).unwrap().unwrap()["ssn"], json!("333"));
        assert_eq!(db.get_as_of("users", &Pk::Int(3), at).unwrap().unwrap().get("ssn"), None);
        assert_eq!(rows(&db, "SELECT id FROM users WHERE ssn IS NOT NULL"), Vec::<Value>::new());
        assert_eq!(rows(&db, &format!("SELECT id FROM users WHERE ssn IS NOT NULL AS OF @seq:{before}")).len(), 2);
        assert_eq!(db.history("users", &Pk::Int(3)).unwrap()[0].doc["ssn"], json!("333"));
        // The index on the dropped field went with it.
        assert_eq!(describe(&db, "DESCRIBE users").indexes, vec!["email".to_string()]);
        assert_eq!(describe(&db, &format!("DESCRIBE users AS OF @seq:{}", at - 1)).indexes, vec!["email", "ssn"]);
        check_reads_agree(&db, "users", r#"email = "c@x""#);
        db = reopen(db, d.path());
    }
    // The pk cannot be dropped.
    let e = db.execute("ALTER TABLE users DROP COLUMN id").unwrap_err();
    assert!(e.to_string().contains("primary key"), "{e}");
}

#[test]
fn rename_column_moves_the_field_and_its_index_in_current_reads() {
    let d = tempfile::tempdir().unwrap();
    let mut db = create(d.path());
    let (before, _) = users(&db);
    let at = exec(&db, "ALTER TABLE users RENAME COLUMN email TO mail");
    exec(&db, r#"INSERT INTO users {"id": 5, "mail": "e@x"}"#);
    for _ in 0..2 {
        let u1 = db.get("users", &Pk::Int(1)).unwrap().unwrap();
        assert_eq!((u1.get("email"), &u1["mail"]), (None, &json!("a@x")));
        assert_eq!(db.get_as_of("users", &Pk::Int(1), before).unwrap().unwrap()["email"], json!("a@x"));
        // The index followed the rename: it answers on the new name.
        assert_eq!(describe(&db, "DESCRIBE users").indexes, vec!["mail".to_string()]);
        assert_eq!(describe(&db, &format!("DESCRIBE users AS OF @seq:{before}")).indexes, vec!["email".to_string()]);
        assert_eq!(rows(&db, r#"SELECT id FROM users WHERE mail = "b@x""#), vec![json!({"id": 2})]);
        assert_eq!(rows(&db, r#"SELECT id FROM users WHERE mail = "e@x""#), vec![json!({"id": 5})]);
        check_reads_agree(&db, "users", r#"mail IN ("a@x", "c@x", "e@x")"#);
        assert_eq!(rows(&db, &format!(r#"SELECT id FROM users WHERE email = "b@x" AS OF @seq:{}"#, at - 1)).len(), 1);
        db = reopen(db, d.path());
    }
}

#[test]
fn an_index_renamed_onto_a_field_some_rows_already_have_still_finds_them() {
    let d = tempfile::tempdir().unwrap();
    let mut db = create(d.path());
    exec(&db, "CREATE TABLE t (pk=id, INDEX(a))");
    exec(&db, r#"INSERT INTO t {"id": 1, "b": 5}"#);
    exec(&db, r#"INSERT INTO t {"id": 2, "a": 5}"#);
    exec(&db, r#"INSERT INTO t {"id": 3, "a": 6, "b": 9}"#);
    exec(&db, "ALTER TABLE t RENAME COLUMN a TO b");
    for _ in 0..2 {
        assert_eq!(rows(&db, "SELECT id FROM t WHERE b = 5"), vec![json!({"id": 1}), json!({"id": 2})]);
        assert_eq!(rows(&db, "SELECT id FROM t WHERE b = 6"), vec![json!({"id": 3})]);
        check_reads_agree(&db, "t", "b IN (5, 6, 9)");
        db = reopen(db, d.path());
    }
}

#[test]
fn a_default_too_deep_to_read_back_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let db = create(d.path());
    users(&db);
    let mut deep = json!(1);
    for _ in 0..127 {
        deep = json!([deep]);
    }
    let e = db
        .write(|t| {
            t.alter("users", driftdb::table::schema::Alter::AddColumn { column: "x".into(), default: Some(deep) })
        })
        .unwrap_err();
    assert!(e.to_string().contains("nests too deeply"), "{e}");
    let db = reopen(db, d.path());
    assert!(describe(&db, "DESCRIBE users").columns.is_empty());
}

#[test]
fn create_and_drop_index_change_the_schema_not_the_answers() {
    let d = tempfile::tempdir().unwrap();
    let mut db = create(d.path());
    users(&db);
    let created = exec(&db, "CREATE INDEX ON users (name)");
    check_reads_agree(&db, "users", r#"name >= "B""#);
    exec(&db, "DROP INDEX ON users (name)");
    db = reopen(db, d.path());
    assert_eq!(describe(&db, "DESCRIBE users").indexes, vec!["email".to_string()]);
    assert_eq!(describe(&db, &format!("DESCRIBE users AS OF @seq:{created}")).indexes, vec!["email", "name"]);
    check_reads_agree(&db, "users", r#"name >= "B""#);
    let e = db.execute("DROP INDEX ON users (name)").unwrap_err();
    assert!(e.to_string().contains("no index"), "{e}");
}

#[test]
fn a_transaction_reads_its_own_schema_changes_and_conflicts_with_others() {
    let d = tempfile::tempdir().unwrap();
    let db = create(d.path());
    users(&db);
    // Staged changes are seen by the transaction's own later reads only.
    let mut t = db.begin(Isolation::Serializable);
    t.alter("users", driftdb::table::schema::Alter::AddColumn { column: "tier".into(), default: Some(json!("free")) })
        .unwrap();
    assert_eq!(t.get("users", &Pk::Int(1)).unwrap().unwrap()["tier"], json!("free"));
    let q = driftdb::query::parse_one("SELECT COUNT(*) FROM users WHERE tier = \"free\"").unwrap();
    let Stmt::Select(sel) = q else { unreachable!() };
    assert_eq!(t.select(&sel).unwrap(), vec![json!({"COUNT(*)": 2})]);
    assert_eq!(db.get("users", &Pk::Int(1)).unwrap().unwrap().get("tier"), None);
    // A transaction that began before the change and writes the table conflicts.
    let mut other = db.begin(Isolation::Snapshot);
    other.patch("users", &Pk::Int(3), json!({"name": "C"}).as_object().unwrap().clone()).unwrap();
    let at = t.commit().unwrap();
    let e = other.commit().unwrap_err();
    assert!(matches!(e, Error::Conflict(_)) && e.to_string().contains("schema of table"), "{e}");
    // A snapshot taken before the change keeps reading the old shape.
    let _ = at;
}

#[test]
fn an_index_built_by_a_commit_covers_the_rows_that_commit_wrote_before_and_after_it() {
    let d = tempfile::tempdir().unwrap();
    let mut db = create(d.path());
    users(&db);
    db.execute(
        r#"BEGIN
        PATCH users KEY 1 SET {"tier": "silver"}
        INSERT INTO users {"id": 6, "email": "f@x"}
        ALTER TABLE users ADD COLUMN tier DEFAULT "free"
        INSERT INTO users {"id": 7, "email": "g@x", "tier": "silver"}
        CREATE INDEX ON users (tier)
        SOFT DELETE FROM users KEY 3
        PATCH users KEY 2 SET {"tier": "silver"}
        COMMIT"#,
    )
    .unwrap();
    for _ in 0..2 {
        for v in ["free", "silver", "gold"] {
            check_reads_agree(&db, "users", &format!("tier = \"{v}\""));
        }
        assert_eq!(rows(&db, r#"SELECT id FROM users WHERE tier = "silver""#).len(), 3);
        assert_eq!(rows(&db, r#"SELECT id FROM users WHERE tier = "free""#), vec![json!({"id": 6})]);
        db = reopen(db, d.path());
    }
}

#[test]
fn a_snapshot_transaction_reads_the_shape_of_its_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let db = create(d.path());
    users(&db);
    let mut t = db.begin(Isolation::Snapshot);
    exec(&db, "ALTER TABLE users RENAME COLUMN name TO full_name");
    assert_eq!(t.get("users", &Pk::Int(2)).unwrap().unwrap()["name"], json!("Bob"));
    let Stmt::Select(sel) = driftdb::query::parse_one("SELECT id FROM users WHERE name = \"Cy\"").unwrap() else {
        unreachable!()
    };
    assert_eq!(t.select(&sel).unwrap(), vec![json!({"id": 3})]);
    t.rollback();
    assert_eq!(db.get("users", &Pk::Int(2)).unwrap().unwrap()["full_name"], json!("Bob"));
}

#[test]
fn the_migration_history_table_cannot_be_written_by_statements() {
    let d = tempfile::tempdir().unwrap();
    let db = create(d.path());
    let e = db.execute("CREATE TABLE _drift_migrations (pk=version)").unwrap_err();
    assert!(e.to_string().contains("reserved"), "{e}");
}
