//! Engine tests that need its internals.

use super::*;

#[test]
fn rows_read_at_open_are_checked_and_indexed() {
    let mut t = TableData::default();
    t.indexes.insert("s".into(), Index::default());
    for i in 0..5000i64 {
        let text = format!(r#"{{"id":{i},"s":"v{}","n":{i}}}"#, i % 3);
        t.rows.insert(Pk::Int(i), Arc::new(Doc::from_text_unchecked(&text)));
    }
    check_rows_and_index("table \"t\"", &mut t, &[], Vec::new()).unwrap();
    let ix = &t.indexes["s"];
    assert_eq!(ix.len(), 3);
    let hits = ix.candidates(crate::table::index::Probe::Eq, &Value::from("v1")).unwrap();
    assert_eq!(hits.len(), 1667);
    assert!(hits.iter().all(|k| matches!(k, Pk::Int(i) if i % 3 == 1)));

    // A row whose text is not JSON is an error naming the table and the
    // row, never a row that reads as null.
    t.rows.insert(Pk::Int(4242), Arc::new(Doc::from_text_unchecked(r#"{"id":4242,"s":"v"#)));
    let e = check_rows_and_index("table \"t\"", &mut t, &[], Vec::new()).unwrap_err().to_string();
    assert!(e.contains("table \"t\"") && e.contains("4242") && e.contains("not valid JSON"), "{e}");
}

#[test]
fn keys_of_every_length_around_the_inline_limit_stay_distinct() {
    let mut keys: Vec<Pk> = (0..=crate::table::key::KEY_INLINE + 2).map(|n| Pk::Str("k".repeat(n).into())).collect();
    // Same bytes up to the padding, and a key that is all padding.
    keys.push(Pk::Str("k\0".into()));
    keys.push(Pk::Str("\0".into()));
    keys.extend([Pk::Int(0), Pk::Int(-1), Pk::Int(i64::MAX), Pk::Str("0".into())]);
    let mut h: FastMap<Pk, Vec<u64>> = FastMap::default();
    for (i, k) in keys.iter().enumerate() {
        for j in 0..=i {
            h.entry(k.clone()).or_default().push((i * 100 + j) as u64);
        }
    }
    assert_eq!(h.len(), keys.len());
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            h.get(k).cloned().unwrap_or_default(),
            (0..=i).map(|j| (i * 100 + j) as u64).collect::<Vec<_>>(),
            "{k:?}"
        );
    }
    assert!(!h.contains_key(&Pk::Str("k".repeat(crate::table::key::KEY_INLINE + 3).into())));
    assert!(!h.contains_key(&Pk::Int(1)));
    // The version tree's keys of the same rows are distinct too, and
    // read back as the same keys.
    let vkeys: std::collections::BTreeSet<Vec<u8>> =
        keys.iter().map(|k| crate::table::version::version_key(1, k, 5)).collect();
    assert_eq!(vkeys.len(), keys.len());
    for k in &keys {
        let back = crate::table::version::decode_key(&crate::table::version::version_key(1, k, 5)).unwrap();
        assert_eq!(&back.key, k);
    }
}

/// A database whose table `t` (indexed on `s`) has rows 0 to 2, then a
/// snapshot written by hand of the rows given (each with `s` = "x" in
/// its text), with the indexed values `picked` (none: the format without);
/// closed and opened again.
fn reopened_with_snapshot(picked: Option<&[Option<IKey>]>) -> Db {
    let fs = crate::storage::memfs::MemFs::new();
    let opts = Options {
        store: crate::StoreOptions { vfs: Arc::new(fs.clone()), ..Default::default() },
        ..Options::default()
    };
    let key = KeySource::Raw(crate::crypto::keys::SecretKey::from_bytes([3; 32]));
    let db = Db::create("/db", &key, opts.clone()).unwrap();
    db.create_table("t", "id", &["s"]).unwrap();
    let docs: Vec<(Pk, Vec<u8>)> = (0..3i64)
        .map(|i| {
            db.insert("t", serde_json::json!({"id": i, "s": "x"})).unwrap();
            (Pk::Int(i), format!(r#"{{"id":{i},"s":"x"}}"#).into_bytes())
        })
        .collect();
    let id = db.state().table("t").unwrap().id;
    let meta = SnapMeta { table: id, seq: db.latest_seq(), rows: 3, indexes: vec!["s".into()] };
    let mut b = db.store().build_file(FileKind::Snapshot, SNAPSHOT_STREAM_BASE + id, meta.encode()).unwrap();
    let rows: Vec<(&Pk, Vec<u8>)> = docs.iter().map(|(k, d)| (k, d.clone())).collect();
    b.append(&encode_rows(&rows, picked.map(|p| (1, p)))).unwrap();
    let pending = b.finish().unwrap();
    db.store().commit(crate::Edit { add: vec![pending], ..Default::default() }).unwrap();
    db.close().unwrap();
    Db::open("/db", &key, opts).unwrap()
}

fn hits(db: &Db, v: &str) -> usize {
    let r = db.state();
    let t = &r.tables[&r.table("t").unwrap().id];
    t.indexes["s"].candidates(crate::table::index::Probe::Eq, &Value::from(v)).map_or(0, |h| h.len())
}

#[test]
fn log_writes_settle_to_each_keys_last_write_in_key_order() {
    let d = |n: i64| Some(Arc::new(Doc::from_value(serde_json::json!({ "n": n }))));
    let mut w: LogWrites = vec![
        (Pk::Int(3), d(1)),
        (Pk::Int(1), d(2)),
        (Pk::Int(3), None),
        (Pk::Int(2), d(3)),
        (Pk::Int(1), d(4)),
        (Pk::Int(3), d(5)),
        (Pk::Int(4), d(6)),
        (Pk::Int(4), None),
    ];
    settle_writes(&mut w);
    let got: Vec<(Pk, Option<i64>)> =
        w.iter().map(|(k, d)| (k.clone(), d.as_ref().and_then(|d| d.value()["n"].as_i64()))).collect();
    assert_eq!(got, vec![(Pk::Int(1), Some(4)), (Pk::Int(2), Some(3)), (Pk::Int(3), Some(5)), (Pk::Int(4), None)]);
}

#[test]
fn opening_indexes_snapshot_rows_by_the_values_they_carry_without_parsing_them() {
    // Values that differ from the text (no writer makes such a file:
    // here they show which of the two opening used).
    let carried = [Some(IKey::Str("carried".into())), None, Some(IKey::Str("carried".into()))];
    let db = reopened_with_snapshot(Some(&carried));
    assert_eq!((hits(&db, "carried"), hits(&db, "x")), (2, 0));
}

#[test]
fn snapshot_rows_without_indexed_values_are_parsed_and_indexed_at_open() {
    let db = reopened_with_snapshot(None);
    assert_eq!((hits(&db, "carried"), hits(&db, "x")), (0, 3));
}

#[test]
fn snapshots_written_by_the_database_carry_each_rows_indexed_values() {
    use crate::storage::memfs::MemFs;
    let fs = MemFs::new();
    let opts = Options {
        store: crate::StoreOptions { vfs: Arc::new(fs.clone()), ..Default::default() },
        ..Options::default()
    };
    let key = KeySource::Raw(crate::crypto::keys::SecretKey::from_bytes([3; 32]));
    let db = Db::create("/db", &key, opts).unwrap();
    db.create_table("t", "id", &["s", "n"]).unwrap();
    db.insert_json("t", r#"{"id":1,"s":"a","n":2}"#).unwrap();
    db.insert("t", serde_json::json!({"id": 2, "s": [1], "n": 2.5})).unwrap();
    db.insert("t", serde_json::json!({"id": 3, "n": true})).unwrap();
    db.snapshot("t").unwrap();
    let id = db.state().table("t").unwrap().id;
    let file = db.state().tables[&id].snapshots.last().unwrap().1;
    let got = load_snapshot_rows(db.store(), file, 0, true).unwrap();
    assert_eq!(got.fields, 2);
    let num = |f: f64| crate::table::index::ikey(&Value::from(f));
    assert_eq!(got.picked, vec![Some(IKey::Str("a".into())), num(2.0), None, num(2.5), None, Some(IKey::Bool(true))]);
}

#[test]
fn a_snapshot_whose_rows_are_out_of_key_order_is_refused_at_open() {
    use crate::storage::memfs::MemFs;
    let fs = MemFs::new();
    let opts = || Options {
        store: crate::StoreOptions { vfs: Arc::new(fs.clone()), ..Default::default() },
        ..Options::default()
    };
    let key = KeySource::Raw(crate::crypto::keys::SecretKey::from_bytes([3; 32]));
    let db = Db::create("/db", &key, opts()).unwrap();
    db.create_table("t", "id", &["s"]).unwrap();
    for i in 0..3i64 {
        db.insert("t", serde_json::json!({"id": i, "s": "x"})).unwrap();
    }
    // A snapshot (authentic: written with the key) whose rows are not in
    // key order, as only a faulty writer could make it.
    let id = db.state().table("t").unwrap().id;
    let seq = db.latest_seq();
    let meta = SnapMeta { table: id, seq, rows: 2, indexes: vec!["s".into()] };
    let mut b = db.store().build_file(FileKind::Snapshot, SNAPSHOT_STREAM_BASE + id, meta.encode()).unwrap();
    let (k2, k1) = (Pk::Int(2), Pk::Int(1));
    b.append(&encode_rows(&[(&k2, br#"{"id":2,"s":"x"}"#.to_vec()), (&k1, br#"{"id":1,"s":"x"}"#.to_vec())], None))
        .unwrap();
    let pending = b.finish().unwrap();
    let name = crate::format::file_name(pending.file_id(), FileKind::Snapshot);
    db.store().commit(crate::Edit { add: vec![pending], ..Default::default() }).unwrap();
    db.close().unwrap();
    let e = Db::open("/db", &key, opts()).err().expect("open must refuse the snapshot").to_string();
    assert!(e.contains("out of key order") && e.contains(&name), "{e}");
}
