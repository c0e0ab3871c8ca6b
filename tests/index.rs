//! Index exactness: after random inserts, patches and soft deletes over
//! values of every JSON type, every query answered through an index equals
//! the same query answered by a full scan.

use driftdb::query::{Stmt, parse_one};
use driftdb::storage::memfs::MemFs;
use driftdb::{Db, KeySource, Options, Pk, StoreOptions};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::sync::Arc;

fn val() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-3i64..4).prop_map(Value::from),
        prop_oneof![Just(9007199254740992i64), Just(9007199254740993i64)].prop_map(Value::from),
        prop_oneof![Just(-0.0f64), Just(1.5), Just(2.0)].prop_map(|f| json!(f)),
        prop_oneof![Just("a"), Just("b"), Just("paid"), Just("")].prop_map(Value::from),
        Just(json!([1, 2])),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Insert(i64, Value, Value),
    Patch(i64, Value),
    Delete(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..12i64, val(), val()).prop_map(|(k, a, b)| Op::Insert(k, a, b)),
        (0..12i64, val()).prop_map(|(k, a)| Op::Patch(k, a)),
        (0..12i64).prop_map(Op::Delete),
    ]
}

const QUERIES: &[&str] = &[
    "status = 'paid'",
    "status = 'a' OR status = 'b'",
    "status IN ('a', 'b', 1)",
    "status = true",
    "n = 2",
    "n = 2.0",
    "n = 0",
    "n > 1",
    "n >= 2",
    "n < 0",
    "n <= 1.5",
    "n = 9007199254740993",
    "n > 9007199254740992",
    "n < 9007199254740993",
    "status > 'a'",
    "status < 'b'",
    "status = ''",
    "n > 0 AND status = 'paid'",
    "status = 'a' AND n IS NULL",
    "n IN (1.5, 2, 'a')",
    "id = 3",
    "id = 3.0",
    "id = '3'",
    "id IN (1, 4, 40, 'x')",
    "id = 2 AND n > 0",
    "n > 0 AND id = 5",
    "status >= false",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn indexed_answers_equal_full_scans(ops in proptest::collection::vec(op(), 1..60)) {
        let fs = MemFs::new();
        let k = KeySource::Raw(driftdb::crypto::keys::SecretKey::from_bytes([3; 32]));
        let o = Options { store: StoreOptions { vfs: Arc::new(fs.clone()), ..Default::default() }, ..Default::default() };
        let db = Db::create("/db", &k, o.clone()).unwrap();
        db.create_table("t", "id", &["status", "n"]).unwrap();
        for op in ops {
            let _ = match op {
                Op::Insert(id, s, n) => {
                    let mut m = Map::new();
                    m.insert("id".into(), json!(id));
                    if !s.is_null() { m.insert("status".into(), s); }
                    if !n.is_null() { m.insert("n".into(), n); }
                    db.insert("t", Value::Object(m))
                }
                Op::Patch(id, v) => {
                    let mut m = Map::new();
                    m.insert(if id % 2 == 0 { "status".into() } else { "n".into() }, v);
                    db.patch("t", &Pk::Int(id), m)
                }
                Op::Delete(id) => db.soft_delete("t", &Pk::Int(id)),
            };
        }
        let check = |db: &Db| {
            for w in QUERIES {
                let Stmt::Select(sel) = parse_one(&format!("SELECT * FROM t WHERE {w}")).unwrap() else { unreachable!() };
                assert_eq!(db.select(&sel).unwrap(), db.select_full_scan(&sel).unwrap(), "WHERE {w}");
            }
        };
        check(&db);
        db.close().unwrap();
        let db = Db::open("/db", &k, o).unwrap();
        check(&db);
    }
}
