//! Engine tests that need its internals.

use super::*;
use crate::table::index::Probe;

fn memdb() -> (Db, KeySource, Options) {
    let fs = crate::storage::memfs::MemFs::new();
    let opts = Options {
        store: crate::StoreOptions { vfs: Arc::new(fs.clone()), ..Default::default() },
        ..Options::default()
    };
    let key = KeySource::Raw(crate::crypto::keys::SecretKey::from_bytes([3; 32]));
    (Db::create("/db", &key, opts.clone()).unwrap(), key, opts)
}

/// What an index lookup must answer for table `t`'s field `s` as of `at`,
/// from a full scan.
fn model_candidates(db: &Db, probe: Probe, lit: &Value, at: u64) -> BTreeSet<Pk> {
    use crate::table::index::ikey;
    let k = ikey(lit).unwrap();
    let same_type = |a: &IKey| std::mem::discriminant(a) == std::mem::discriminant(&k);
    db.scan("t", Some(&AsOf::Seq(at)))
        .unwrap()
        .iter()
        .filter(|d| {
            d.get("s").and_then(ikey).is_some_and(|v| match probe {
                Probe::Eq => v == k,
                Probe::AtMost => same_type(&v) && v <= k,
                Probe::AtLeast => same_type(&v) && v >= k,
            })
        })
        .map(|d| Pk::from_json(&d["id"]).unwrap())
        .collect()
}

fn index_candidates(db: &Db, probe: Probe, lit: &Value, at: u64) -> BTreeSet<Pk> {
    let st = db.state();
    let id = st.table("t").unwrap().id;
    let ix = st.tables[&id].indexes["s"];
    super::versions::index_candidates(&db.tree().unwrap().view(), id, ix, probe, lit, at).unwrap().unwrap()
}

#[test]
fn index_entries_answer_every_probe_as_of_every_point_and_after_reopening() {
    use serde_json::json;
    let (db, key, opts) = memdb();
    db.create_table("t", "id", &["s"]).unwrap();
    let value = |i: i64| match i % 6 {
        0 => json!(format!("v{}", i % 4)),
        1 => json!((i % 5) as f64 - 2.0),
        2 => json!(i % 4 == 1),
        3 => json!(null),
        4 => json!([i]),
        _ => json!(format!("w\u{0}{}", i % 3)),
    };
    let mut points = vec![db.latest_seq()];
    db.write(|t| {
        for i in 0..60i64 {
            t.insert("t", json!({"id": i, "s": value(i)}))?;
        }
        Ok(())
    })
    .unwrap();
    points.push(db.latest_seq());
    for i in (0..60i64).step_by(7) {
        let mut set = Map::new();
        set.insert("s".into(), value(i + 1));
        db.patch("t", &Pk::Int(i), set).unwrap();
    }
    points.push(db.latest_seq());
    for i in (3..60i64).step_by(11) {
        db.soft_delete("t", &Pk::Int(i)).unwrap();
    }
    points.push(db.latest_seq());
    db.insert("t", json!({"id": 3, "s": "v3"})).unwrap();
    db.insert("t", json!({"id": 1000, "s": 1.5})).unwrap();
    points.push(db.latest_seq());
    let lits = [json!("v1"), json!("v3"), json!("w"), json!(0.0), json!(-1.0), json!(1.5), json!(true), json!(false)];
    let check = |db: &Db| {
        for &at in &points[1..] {
            for lit in &lits {
                for probe in [Probe::Eq, Probe::AtMost, Probe::AtLeast] {
                    assert_eq!(
                        index_candidates(db, probe, lit, at),
                        model_candidates(db, probe, lit, at),
                        "{probe:?} {lit} @seq:{at}"
                    );
                }
            }
        }
    };
    check(&db);
    db.close().unwrap();
    let db = Db::open("/db", &key, opts.clone()).unwrap();
    check(&db);
    // An index dropped and created again holds only the rows as they are
    // when it is created.
    db.execute("DROP INDEX ON t (s)").unwrap();
    let mut set = Map::new();
    set.insert("s".into(), json!("moved"));
    db.patch("t", &Pk::Int(1), set).unwrap();
    db.execute("CREATE INDEX ON t (s)").unwrap();
    let now = db.latest_seq();
    for lit in &lits {
        assert_eq!(index_candidates(&db, Probe::Eq, lit, now), model_candidates(&db, Probe::Eq, lit, now), "{lit}");
    }
    assert_eq!(index_candidates(&db, Probe::Eq, &json!("moved"), now), BTreeSet::from([Pk::Int(1)]));
    db.close().unwrap();
    let db = Db::open("/db", &key, opts).unwrap();
    assert_eq!(index_candidates(&db, Probe::Eq, &json!("moved"), now), BTreeSet::from([Pk::Int(1)]));
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

#[test]
fn opening_counts_a_tables_rows_from_its_latest_snapshot_and_the_log_after_it() {
    let (db, key, opts) = memdb();
    db.create_table("t", "id", &[]).unwrap();
    for i in 0..10i64 {
        db.insert("t", serde_json::json!({"id": i})).unwrap();
    }
    db.soft_delete("t", &Pk::Int(3)).unwrap();
    db.snapshot("t").unwrap();
    db.insert("t", serde_json::json!({"id": 3})).unwrap();
    db.insert("t", serde_json::json!({"id": 10})).unwrap();
    db.soft_delete("t", &Pk::Int(0)).unwrap();
    db.soft_delete("t", &Pk::Int(1)).unwrap();
    let mut set = Map::new();
    set.insert("x".into(), Value::from(1));
    db.patch("t", &Pk::Int(2), set).unwrap();
    let live = |db: &Db| {
        let st = db.state();
        st.tables[&st.table("t").unwrap().id].live
    };
    assert_eq!(live(&db), 9);
    db.close().unwrap();
    let db = Db::open("/db", &key, opts).unwrap();
    assert_eq!(live(&db), 9);
    assert_eq!(db.scan("t", None).unwrap().len(), 9);
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
    let mut picked = Vec::new();
    db.store()
        .read_file(file, |_, rec| {
            let raw = decode_rows_raw(rec).unwrap();
            assert_eq!(raw.fields, 2);
            picked.extend(raw.picked);
            Ok(())
        })
        .unwrap();
    let num = |f: f64| crate::table::index::ikey(&Value::from(f));
    assert_eq!(picked, vec![Some(IKey::Str("a".into())), num(2.0), None, num(2.5), None, Some(IKey::Bool(true))]);
}

#[test]
fn a_snapshot_whose_rows_are_out_of_key_order_is_refused_when_read() {
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
    let file = pending.file_id();
    db.store().commit(crate::Edit { add: vec![pending], ..Default::default() }).unwrap();
    let e = load_snapshot_rows(db.store(), file, seq, true).expect_err("the snapshot must be refused").to_string();
    assert!(e.contains("out of key order") && e.contains(&name), "{e}");
}

/// A version tree written before index entries, commit entries and
/// catalog checkpoints went into it (runs of row versions only) gets them
/// at the next open: index lookups, `AS OF` and history times read as
/// before, on a table compacted too.
#[test]
fn runs_written_without_index_and_commit_entries_get_them_at_open() {
    use serde_json::json;
    let (db, key, opts) = memdb();
    db.create_table("t", "id", &["s"]).unwrap();
    for c in 0..6i64 {
        db.write(|t| {
            for i in (c * 40)..(c * 40 + 40) {
                t.insert("t", json!({"id": i, "s": format!("v{}", i % 5)}))?;
            }
            Ok(())
        })
        .unwrap();
    }
    let mid = db.latest_seq();
    for i in (0..240i64).step_by(9) {
        let mut set = Map::new();
        set.insert("s".into(), json!(format!("p{}", i % 3)));
        db.patch("t", &Pk::Int(i), set).unwrap();
    }
    db.soft_delete("t", &Pk::Int(4)).unwrap();
    db.compact("t", Some(&AsOf::Seq(mid))).unwrap();
    for i in (1..240i64).step_by(13) {
        let mut set = Map::new();
        set.insert("s".into(), json!("late"));
        db.patch("t", &Pk::Int(i), set).unwrap();
    }
    let lits = [json!("v1"), json!("v4"), json!("p0"), json!("p2"), json!("late"), json!("a")];
    let now = db.latest_seq();
    let want: Vec<BTreeSet<Pk>> = lits.iter().map(|l| model_candidates(&db, Probe::Eq, l, now)).collect();
    assert!(want.iter().all(|w| !w.is_empty()) || want[5].is_empty());
    let past = db.scan("t", Some(&AsOf::Seq(mid + 5))).unwrap();
    let history = db.history("t", &Pk::Int(9)).unwrap();
    db.close().unwrap();
    let db = Db::open("/db", &key, opts.clone()).unwrap();
    // What the earlier layout did not write.
    let tree = db.tree().unwrap();
    let later = |k: &[u8], _: &[u8]| {
        use crate::table::version as ver;
        matches!(k.first(), Some(&ver::NS_INDEX | &ver::NS_COMMIT | &ver::NS_COMMIT_TIME | &ver::NS_CATALOG))
    };
    tree.rewrite(db.store(), &later, Vec::new()).unwrap();
    drop(db);
    let db = Db::open("/db", &key, opts).unwrap();
    for (l, w) in lits.iter().zip(&want) {
        assert_eq!(&index_candidates(&db, Probe::Eq, l, now), w, "{l}");
    }
    assert_eq!(db.scan("t", Some(&AsOf::Seq(mid + 5))).unwrap(), past);
    assert_eq!(db.history("t", &Pk::Int(9)).unwrap(), history);
}
