//! Nothing readable at rest: a canary string written through every path the
//! store offers (stream records of every kind, write-once files, file
//! metadata, the application root, a crash-left active file, a merge)
//! appears in no file under the data directory, and no file or folder name
//! carries anything but opaque ids.

mod common;
use driftdb::{CreateOptions, Edit, FileKind, KeySource, Store, StoreOptions};

const CANARY: &str = "CANARY-d41d8cd98f00b204-orders-customer_id";

#[test]
fn canary_appears_in_no_file_or_name() {
    let t = tempfile::tempdir().unwrap();
    let k = common::key_file(t.path(), "k", 0x55);
    let d = t.path().join("db");
    let key = KeySource::key_file(&k);
    let small =
        StoreOptions { segment_size: 8 * 1024, merge_min_files: 3, small_file_bytes: 64 * 1024, ..Default::default() };
    let s = Store::create(&d, &key, CreateOptions { store: small.clone(), ..Default::default() }).unwrap();
    for (stream, kind) in [(1, FileKind::Segment), (2, FileKind::Wal), (3, FileKind::AuditLog)] {
        for i in 0..200 {
            s.append(stream, kind, format!("{{\"id\":{i},\"note\":\"{CANARY}\"}}").as_bytes()).unwrap();
        }
    }
    for kind in [FileKind::Snapshot, FileKind::Index, FileKind::Catalog] {
        let mut b = s.build_file(kind, 10 + kind as u32, CANARY.as_bytes().to_vec()).unwrap();
        b.append(CANARY.as_bytes()).unwrap();
        let p = b.finish().unwrap();
        s.commit(Edit { add: vec![p], remove: vec![], root: Some(CANARY.as_bytes().to_vec()) }).unwrap();
    }
    s.close().unwrap();
    // Short sessions that get merged, and one left active as by a crash.
    for i in 0..5 {
        let s = Store::open(&d, &key, small.clone()).unwrap();
        s.append(1, FileKind::Segment, format!("{CANARY} session {i}").as_bytes()).unwrap();
        s.close().unwrap();
    }
    let s = Store::open(&d, &key, small.clone()).unwrap();
    s.append(1, FileKind::Segment, CANARY.as_bytes()).unwrap();
    s.sync().unwrap();
    let files = common::tree(&d);
    assert!(files.len() > 5, "expected several files, found {}", files.len());
    for (p, bytes) in &files {
        assert!(!common::contains(bytes, CANARY.as_bytes()), "canary in {}", p.display());
        assert!(!common::contains(bytes, b"CANARY"), "canary prefix in {}", p.display());
        assert!(!common::contains(bytes, b"customer_id"), "field name in {}", p.display());
        let name = p.strip_prefix(&d).unwrap().to_string_lossy().to_string();
        assert!(
            name == "keyring" || name == "LOCK" || driftdb::format::parse_file_name(&name).is_some(),
            "unexpected name {name}"
        );
    }
    // The data is really there (the scan is not vacuous).
    let mut n = 0;
    s.read_stream(1, |_, p| {
        if common::contains(p, CANARY.as_bytes()) {
            n += 1;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 200 + 5 + 1);
    assert_eq!(s.root(), CANARY.as_bytes());
}

/// The same through the database: canaries in table names, field names,
/// keys, indexed values and documents, through commits, transactions, the
/// WAL, snapshots, compaction, a key rotation and the audit log; every file
/// under the data directory is scanned while the WAL holds commits, during
/// the rotation and after it.
#[test]
fn canaries_through_every_file_kind_of_the_database_appear_nowhere() {
    use driftdb::{Db, Isolation, Options, Pk, RotateOptions};
    use serde_json::json;
    const T: &str = "CANARYtable_patients";
    const F: &str = "CANARYfield_diagnosis";
    let t = tempfile::tempdir().unwrap();
    let k1 = common::key_file(t.path(), "k1", 0x61);
    let k2 = common::key_file(t.path(), "k2", 0x62);
    let d = t.path().join("db");
    let scan = |when: &str| {
        let files = common::tree(&d);
        for (p, bytes) in &files {
            for needle in [&b"CANARY"[..], b"diagnosis", b"patients", b"secret-value"] {
                assert!(
                    !common::contains(bytes, needle),
                    "{when}: {:?} in {}",
                    String::from_utf8_lossy(needle),
                    p.display()
                );
            }
        }
        files.keys().filter_map(|p| p.extension().map(|e| e.to_string_lossy().into_owned())).collect::<Vec<_>>()
    };
    let o = Options { snapshot_every_events: 50, ..Default::default() };
    let db = Db::create(&d, &KeySource::key_file(&k1), o.clone()).unwrap();
    db.create_table(T, "CANARYpk", &[F]).unwrap();
    for i in 0..200 {
        db.insert(T, json!({"CANARYpk": format!("CANARYkey-{i}"), F: format!("CANARY-secret-value-{i}")})).unwrap();
    }
    let mut tx = db.begin(Isolation::Serializable);
    tx.patch(T, &Pk::Str("CANARYkey-1".into()), json!({F: "CANARY-in-a-transaction"}).as_object().cloned().unwrap())
        .unwrap();
    tx.commit().unwrap();
    db.snapshot(T).unwrap();
    let kinds = scan("with the WAL live");
    assert!(kinds.iter().any(|k| k == "wal") && kinds.iter().any(|k| k == "audit"), "{kinds:?}");
    db.compact(T, Some(&driftdb::query::ast::AsOf::Seq(100))).unwrap();
    db.rotate_master_key(
        &KeySource::key_file(&k2),
        RotateOptions { throttle_bytes_per_sec: Some(200_000), ..Default::default() },
    )
    .unwrap();
    scan("during the rotation");
    db.wait_for_rotation().unwrap();
    db.close().unwrap();
    let kinds = scan("after the rotation");
    assert!(kinds.iter().any(|k| k == "seg") && kinds.iter().any(|k| k == "snap"), "{kinds:?}");
    // The data is really there.
    let db = Db::open(&d, &KeySource::key_file(&k2), Options::default()).unwrap();
    assert_eq!(db.scan(T, None).unwrap().len(), 200);
}
