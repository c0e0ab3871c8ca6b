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
