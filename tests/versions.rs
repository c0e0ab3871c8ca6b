//! Row versions read from the version tree through a cache far smaller
//! than the data: a table of many rows, patched and soft-deleted over many
//! commits, checked against a model on every read path (current, `AS OF`,
//! `SHOW DRIFT`, index `=` / `IN` / range, full scans now and in the past,
//! aggregates), after reopening and after a crash; the cache's counters
//! prove that blocks were evicted and read again.

use driftdb::query::ast::AsOf;
use driftdb::storage::memfs::MemFs;
use driftdb::{Db, KeySource, Options, Pk, StoreOptions};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

fn key() -> KeySource {
    KeySource::Raw(driftdb::crypto::keys::SecretKey::from_bytes([0x37; 32]))
}

fn opts(fs: &MemFs) -> Options {
    Options {
        store: StoreOptions { vfs: Arc::new(fs.clone()), ..Default::default() },
        cache_bytes: 1 << 20,
        memtable_bytes: 512 << 10,
        // Keep the snapshots out of the way: the past is read from the tree.
        snapshot_every_events: u64::MAX,
        snapshot_every_bytes: u64::MAX,
        ..Default::default()
    }
}

/// Every version of every row: (sequence number, document or `None` once deleted).
#[derive(Default)]
struct Model {
    rows: BTreeMap<i64, Vec<(u64, Option<Value>)>>,
    latest: u64,
    /// The last sequence number of every commit (a read `AS OF` inside a
    /// commit reads the state before it: these are the points to read at).
    ends: Vec<u64>,
}

impl Model {
    fn at(&self, k: i64, seq: u64) -> Option<&Value> {
        let v = self.rows.get(&k)?;
        let i = v.partition_point(|(s, _)| *s <= seq);
        v.get(i.checked_sub(1)?)?.1.as_ref()
    }
    fn table_at(&self, seq: u64) -> Vec<Value> {
        self.rows.keys().filter_map(|k| self.at(*k, seq).cloned()).collect()
    }
}

fn doc(k: i64, round: u64) -> Value {
    let status = ["idle", "busy", "away", "gone"][((k as u64 + round) % 4) as usize];
    json!({"id": k, "status": status, "n": (k * 7 + round as i64) % 1000, "round": round,
           "text": format!("row {k} round {round} {}", "x".repeat((k % 40) as usize))})
}

/// Insert `rows` rows (unless `rounds` starts past 1), then rounds of
/// patches and soft deletes (and re-inserts), a commit of many events each.
fn fill(db: &Db, m: &mut Model, rows: i64, rounds: std::ops::RangeInclusive<u64>) {
    let chunks: Vec<Vec<i64>> = if *rounds.start() <= 1 {
        (0..rows).collect::<Vec<_>>().chunks(2000).map(<[i64]>::to_vec).collect()
    } else {
        Vec::new()
    };
    for chunk in &chunks {
        let chunk = chunk.as_slice();
        let last = db
            .write(|w| {
                for &k in chunk {
                    w.insert("t", doc(k, 0))?;
                }
                Ok(())
            })
            .unwrap();
        let first = last - chunk.len() as u64 + 1;
        for (i, &k) in chunk.iter().enumerate() {
            m.rows.entry(k).or_default().push((first + i as u64, Some(doc(k, 0))));
        }
        m.latest = last;
        m.ends.push(last);
    }
    for round in rounds {
        let keys: Vec<i64> = (0..rows).filter(|k| (k + round as i64) % 5 == 0).collect();
        for chunk in keys.chunks(2000) {
            let mut planned = Vec::new();
            let last = db
                .write(|w| {
                    planned.clear();
                    for &k in chunk {
                        let live = m.at(k, u64::MAX).is_some();
                        if !live {
                            w.insert("t", doc(k, round))?;
                            planned.push((k, Some(doc(k, round))));
                        } else if (k / 5 + round as i64) % 7 == 0 {
                            w.soft_delete("t", &Pk::Int(k))?;
                            planned.push((k, None));
                        } else {
                            let mut set = Map::new();
                            let d = doc(k, round);
                            for f in ["status", "n", "round"] {
                                set.insert(f.into(), d[f].clone());
                            }
                            w.patch("t", &Pk::Int(k), set)?;
                            let mut now = m.at(k, u64::MAX).cloned().unwrap();
                            for f in ["status", "n", "round"] {
                                now[f] = d[f].clone();
                            }
                            planned.push((k, Some(now)));
                        }
                    }
                    Ok(())
                })
                .unwrap();
            let first = last - planned.len() as u64 + 1;
            for (i, (k, d)) in planned.drain(..).enumerate() {
                m.rows.entry(k).or_default().push((first + i as u64, d));
            }
            m.latest = last;
            m.ends.push(last);
        }
    }
}

fn point(m: &Model, x: &mut u64) -> u64 {
    m.ends[(rand(x) % m.ends.len() as u64) as usize]
}

fn rand(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn check(db: &Db, m: &Model, rows: i64, x: &mut u64) {
    assert_eq!(db.latest_seq(), m.latest);
    // Current rows and `AS OF` point reads at random points.
    for _ in 0..1500 {
        let k = (rand(x) % rows as u64) as i64;
        assert_eq!(db.get("t", &Pk::Int(k)).unwrap().as_ref(), m.at(k, u64::MAX), "get {k}");
        let at = point(m, x);
        assert_eq!(db.get_as_of("t", &Pk::Int(k), at).unwrap().as_ref(), m.at(k, at), "get {k} as of {at}");
    }
    // Histories.
    for _ in 0..100 {
        let k = (rand(x) % rows as u64) as i64;
        let h = db.history("t", &Pk::Int(k)).unwrap();
        let want = &m.rows[&k];
        assert_eq!(h.len(), want.len(), "history of {k}");
        for (e, (seq, d)) in h.iter().zip(want) {
            assert_eq!(e.seq, *seq);
            match d {
                Some(d) => assert_eq!(&e.doc, d, "history of {k} at {seq}"),
                None => assert_eq!(e.op, "SOFT_DELETE"),
            }
        }
    }
    // Full scans now and in the past.
    let now: Vec<Value> = db.scan("t", None).unwrap().into_iter().map(|d| (*d).clone()).collect();
    assert_eq!(now, m.table_at(u64::MAX));
    for _ in 0..3 {
        let at = point(m, x);
        let past: Vec<Value> = db.scan("t", Some(&AsOf::Seq(at))).unwrap().into_iter().map(|d| (*d).clone()).collect();
        assert_eq!(past, m.table_at(at), "scan as of {at}");
    }
    // Index `=`, `IN` and range, and an aggregate, now and in the past.
    let at = point(m, x);
    for (q, pick) in [
        ("SELECT * FROM t WHERE status = \"idle\"", &(|d: &Value| d["status"] == "idle") as &dyn Fn(&Value) -> bool),
        ("SELECT * FROM t WHERE status IN (\"busy\", \"gone\")", &|d: &Value| {
            d["status"] == "busy" || d["status"] == "gone"
        }),
        ("SELECT * FROM t WHERE n >= 100 AND n < 200", &|d: &Value| {
            d["n"].as_i64().is_some_and(|n| (100..200).contains(&n))
        }),
    ] {
        let got: Vec<Value> = db.query(q).unwrap();
        let want: Vec<Value> = m.table_at(u64::MAX).into_iter().filter(|d| pick(d)).collect();
        assert_eq!(got, want, "{q}");
        let got: Vec<Value> = db.query(&format!("{q} AS OF @seq:{at}")).unwrap();
        let want: Vec<Value> = m.table_at(at).into_iter().filter(|d| pick(d)).collect();
        assert_eq!(got, want, "{q} as of {at}");
    }
    let count: Vec<Value> =
        db.query(&format!("SELECT COUNT(*) FROM t WHERE status = \"away\" AS OF @seq:{at}")).unwrap();
    let want = m.table_at(at).iter().filter(|d| d["status"] == "away").count();
    assert_eq!(count[0]["COUNT(*)"], json!(want), "{count:?}");
}

#[test]
fn a_table_many_times_the_cache_reads_like_the_model_on_every_path() {
    const ROWS: i64 = 60_000;
    let fs = MemFs::new();
    let db = Db::create("/db", &key(), opts(&fs)).unwrap();
    db.create_table("t", "id", &["status", "n"]).unwrap();
    let mut m = Model { latest: db.latest_seq(), ..Model::default() };
    fill(&db, &mut m, ROWS, 1..=5);
    let mut x = 0x1234_5678_9abc_def1u64;
    check(&db, &m, ROWS, &mut x);
    let tree = db.version_tree_stats();
    let cache = db.cache_stats();
    assert!(tree.flushes >= 4, "the versions outgrew the memtable many times: {tree:?}");
    assert!(tree.bytes.iter().sum::<u64>() > 8 * cache.capacity, "data many times the cache: {tree:?} {cache:?}");
    assert!(cache.evictions > 0 && cache.misses > cache.evictions / 2, "{cache:?}");
    assert!(cache.bytes_held <= cache.capacity, "{cache:?}");
    // Reopened: the same answers, and the versions the runs held were not
    // replayed into memory again.
    db.close().unwrap();
    let db = Db::open("/db", &key(), opts(&fs)).unwrap();
    assert!(db.version_tree_stats().memtable_bytes < (64 << 10), "{:?}", db.version_tree_stats());
    check(&db, &m, ROWS, &mut x);
    // More history, then a crash (no close): the log's commits the runs
    // lack are put back into the tree at the next open.
    fill(&db, &mut m, ROWS, 6..=6);
    drop(db);
    fs.crash();
    let db = Db::open("/db", &key(), opts(&fs)).unwrap();
    check(&db, &m, ROWS, &mut x);
}

#[test]
fn no_inserted_key_value_or_field_name_appears_in_any_file() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(), opts(&fs)).unwrap();
    db.create_table("canary_table", "canary_pk", &["canary_field"]).unwrap();
    for i in 0..5_000 {
        db.insert(
            "canary_table",
            json!({"canary_pk": format!("canary-key-{i}"), "canary_field": format!("canary-value-{i}")}),
        )
        .unwrap();
    }
    db.close().unwrap();
    let db = Db::open("/db", &key(), opts(&fs)).unwrap();
    assert!(db.version_tree_stats().runs.iter().sum::<usize>() > 0, "versions are in runs");
    db.close().unwrap();
    for p in fs.paths() {
        let c = fs.contents(&p).unwrap();
        for needle in [&b"canary"[..], b"key-1", b"value-1"] {
            assert!(!c.windows(needle.len()).any(|w| w == needle), "{} holds {:?}", p.display(), needle);
        }
    }
}

#[test]
fn a_primary_key_up_to_the_limit_goes_into_the_tree_and_a_longer_one_is_refused() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(), opts(&fs)).unwrap();
    db.create_table("t", "id", &[]).unwrap();
    // NUL bytes take twice their length in the tree's key encoding.
    let long = "\0".repeat(driftdb::MAX_KEY_BYTES);
    db.insert("t", json!({"id": long, "v": 1})).unwrap();
    let e = db.insert("t", json!({"id": "k".repeat(driftdb::MAX_KEY_BYTES + 1)})).unwrap_err();
    assert!(e.to_string().contains("bytes long"), "{e}");
    assert_eq!(e.exit_code(), 1);
    let text = format!("{{\"id\":\"{}\"}}", "x".repeat(driftdb::MAX_KEY_BYTES + 1));
    assert!(db.insert_json("t", text).is_err());
    db.patch("t", &Pk::Str(long.as_str().into()), json!({"v": 2}).as_object().cloned().unwrap()).unwrap();
    db.close().unwrap();
    let db = Db::open("/db", &key(), opts(&fs)).unwrap();
    assert!(db.version_tree_stats().runs.iter().sum::<usize>() > 0);
    let h = db.history("t", &Pk::Str(long.as_str().into())).unwrap();
    assert_eq!(h.iter().map(|e| e.doc["v"].clone()).collect::<Vec<_>>(), vec![json!(1), json!(2)]);
}

#[test]
fn a_fold_at_the_point_of_a_write_reads_the_same_after_re_encryption_and_reopen() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(), opts(&fs)).unwrap();
    db.create_table("t", "id", &[]).unwrap();
    for i in 0..50 {
        db.insert("t", json!({"id": i, "v": 0})).unwrap();
    }
    // The horizon is the very commit that patches row 7: its version at
    // the horizon and its folded version share a key.
    let h = db.patch("t", &Pk::Int(7), json!({"v": 1}).as_object().cloned().unwrap()).unwrap();
    db.soft_delete("t", &Pk::Int(8)).unwrap();
    db.patch("t", &Pk::Int(7), json!({"v": 2}).as_object().cloned().unwrap()).unwrap();
    db.close().unwrap();
    let db = Db::open("/db", &key(), opts(&fs)).unwrap();
    db.compact("t", Some(&AsOf::Seq(h))).unwrap();
    let key2 = KeySource::Raw(driftdb::crypto::keys::SecretKey::from_bytes([0x38; 32]));
    db.rotate_master_key(&key2, driftdb::RotateOptions { background: false, ..Default::default() }).unwrap();
    db.resume_rotation(None, |_| {}).unwrap();
    assert!(db.store().files().iter().all(|f| f.kek_version == db.store().files()[0].kek_version));
    let check = |db: &Db| {
        assert_eq!(db.get_as_of("t", &Pk::Int(7), h).unwrap(), Some(json!({"id": 7, "v": 1})));
        assert_eq!(db.get("t", &Pk::Int(7)).unwrap(), Some(json!({"id": 7, "v": 2})));
        assert_eq!(db.get_as_of("t", &Pk::Int(8), h).unwrap(), Some(json!({"id": 8, "v": 0})));
        assert!(db.get_as_of("t", &Pk::Int(7), h - 1).is_err(), "before the horizon");
        let ops: Vec<&str> = db.history("t", &Pk::Int(7)).unwrap().iter().map(|e| e.op).collect();
        assert_eq!(ops[0], "COMPACTED");
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert_eq!(db.scan("t", Some(&AsOf::Seq(h))).unwrap().len(), 50);
    };
    check(&db);
    db.close().unwrap();
    let db = Db::open("/db", &key2, opts(&fs)).unwrap();
    check(&db);
}

#[test]
fn a_document_whose_version_would_not_fit_a_run_is_refused_before_it_commits() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(), opts(&fs)).unwrap();
    db.create_table("t", "id", &[]).unwrap();
    // Its commit record fits a frame; its version (the key's NUL bytes
    // escaped) would not fit a run's block.
    let k = "\0".repeat(driftdb::MAX_KEY_BYTES);
    let pad = 16 * 1024 * 1024 - 6_000 - 40 - k.len() * 6;
    let text = format!("{{\"id\":{},\"pad\":\"{}\"}}", serde_json::to_string(&k).unwrap(), "p".repeat(pad));
    let before = db.latest_seq();
    let e = db.insert_json("t", text).unwrap_err();
    assert!(e.to_string().contains("too large"), "{e}");
    assert_eq!(db.latest_seq(), before, "nothing committed");
    // A large document that fits goes in, and the tree flushes it.
    db.insert("t", json!({"id": "big", "pad": "q".repeat(4 << 20)})).unwrap();
    db.close().unwrap();
    let db = Db::open("/db", &key(), opts(&fs)).unwrap();
    assert_eq!(db.history("t", &Pk::Str("big".into())).unwrap().len(), 1);
}

/// A commit that is logged but cannot be applied (the version tree cannot
/// be read when the commit needs a row's previous version) is answered
/// with an error, nothing more is acknowledged, and reopening applies it
/// from the log.
#[test]
fn a_logged_commit_that_fails_to_apply_stops_the_database_and_reopening_applies_it() {
    use driftdb::storage::memfs::Faults;
    let fs = MemFs::new();
    let o = Options { cache_bytes: 1, ..opts(&fs) };
    let db = Db::create("/db", &key(), o.clone()).unwrap();
    db.create_table("t", "id", &["status"]).unwrap();
    for k in 0..50 {
        db.insert("t", doc(k, 0)).unwrap();
    }
    db.close().unwrap();
    let db = Db::open("/db", &key(), o.clone()).unwrap();
    // Staged (the row read) while reads work; committed once they fail.
    let mut t = db.begin(driftdb::Isolation::ReadCommitted);
    t.patch("t", &Pk::Int(7), json!({"status": "moved"}).as_object().cloned().unwrap()).unwrap();
    fs.set_faults(Faults { fail_reads_of: Some(".run".into()), ..Faults::default() });
    assert!(t.commit().is_err(), "the commit that failed to apply was acknowledged");
    fs.set_faults(Faults::default());
    let e = db.insert("t", doc(100, 0)).expect_err("a commit after a failed apply was taken");
    assert!(e.to_string().contains("failed to apply"), "{e}");
    drop(db);
    let db = Db::open("/db", &key(), o).unwrap();
    assert_eq!(db.get("t", &Pk::Int(7)).unwrap().unwrap()["status"], "moved");
    let moved: Vec<Value> = db.query("SELECT id FROM t WHERE status = 'moved'").unwrap();
    assert_eq!(moved, vec![json!({"id": 7})]);
    assert!(db.get("t", &Pk::Int(100)).unwrap().is_none());
}
