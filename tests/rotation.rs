//! Key rotation: the re-wrap is atomic and immediate, re-encryption runs
//! online and leaves nothing under the old keys, a crash at any write of
//! either leaves a database that opens with exactly one well-defined key and
//! all its data, and the key audit log records every step and catches
//! tampering.

use driftdb::query::ast::AsOf;
use driftdb::storage::memfs::{Faults, MemFs};
use driftdb::{Db, Error, FileKind, KeySource, Options, Pk, RotateOptions, StoreOptions};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

fn key(b: u8) -> KeySource {
    KeySource::Raw(driftdb::crypto::keys::SecretKey::from_bytes([b; 32]))
}

fn opts(fs: &MemFs) -> Options {
    Options {
        store: StoreOptions { vfs: Arc::new(fs.clone()), segment_size: 4096, ..Default::default() },
        snapshot_every_events: 60,
        checkpoint_bytes: 2048,
        ..Default::default()
    }
}

const CANARY: &str = "CANARY-rotation-5f3a";

/// A database with segments, WAL, snapshots and history.
fn fill(db: &Db) {
    db.create_table("t", "id", &["v"]).unwrap();
    for i in 0..150 {
        db.insert("t", json!({"id": i, "v": i % 5, "note": format!("{CANARY}-{i}")})).unwrap();
    }
    for i in 0..40 {
        db.patch("t", &Pk::Int(i), json!({"v": 99}).as_object().cloned().unwrap()).unwrap();
    }
    db.snapshot("t").unwrap();
    for i in 150..170 {
        db.insert("t", json!({"id": i, "v": 1})).unwrap();
    }
}

/// Everything a reader can see: the table at every 10th sequence number and now.
fn answers(db: &Db) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    let mut s = 2;
    while s <= db.latest_seq() {
        out.push(db.scan("t", Some(&AsOf::Seq(s))).unwrap().into_iter().map(|d| (*d).clone()).collect());
        s += 10;
    }
    out.push(db.scan("t", None).unwrap().into_iter().map(|d| (*d).clone()).collect());
    out
}

fn contains(fs: &MemFs, needle: &[u8]) -> bool {
    fs.paths().iter().any(|p| fs.contents(p).is_some_and(|b| b.windows(needle.len()).any(|w| w == needle)))
}

#[test]
fn a_master_rotation_rewraps_at_once_reencrypts_everything_and_retires_the_old_key() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(1), opts(&fs)).unwrap();
    fill(&db);
    let before = answers(&db);
    let old_files: Vec<u64> = db.store().files().iter().map(|f| f.file_id).collect();
    let kinds: std::collections::BTreeSet<FileKind> = db.store().files().iter().map(|f| f.kind).collect();
    assert!(kinds.contains(&FileKind::Segment) && kinds.contains(&FileKind::Snapshot), "{kinds:?}");
    assert!(kinds.contains(&FileKind::AuditLog), "{kinds:?}");

    let v = db.rotate_master_key(&key(2), RotateOptions::default()).unwrap();
    assert_eq!(v, 2);
    db.wait_for_rotation().unwrap();
    let st = db.rotation_status();
    assert_eq!(st.active_key_version, 2);
    assert_eq!(st.rotation.state, "complete", "{st:?}");
    assert!(st.rotation.files_total > 5 && st.rotation.files_done == st.rotation.files_total, "{st:?}");
    assert!(st.rotation.bytes_total > 10_000 && st.rotation.bytes_done == st.rotation.bytes_total, "{st:?}");
    let v1 = st.keys.iter().find(|k| k.version == 1).unwrap();
    assert_eq!((v1.state, v1.files, v1.bytes), ("retired", 0, 0), "{st:?}");
    // No live file is one of the old ones, and every data key is wrapped by version 2.
    for f in db.store().files() {
        assert!(!old_files.contains(&f.file_id), "{} survived the rotation", f.name);
        assert_eq!(f.kek_version, 2);
    }
    assert_eq!(answers(&db), before);
    // Writes go on under the new key.
    db.insert("t", json!({"id": 1000})).unwrap();
    db.close().unwrap();

    match Db::open("/db", &key(1), opts(&fs)) {
        Err(e @ Error::KeyRetired { version: 1 }) => assert_eq!(e.exit_code(), 3),
        Err(e) => panic!("old key: {e}"),
        Ok(_) => panic!("the retired key still opens the database"),
    }
    let db = Db::open("/db", &key(2), opts(&fs)).unwrap();
    assert_eq!(answers(&db)[..before.len() - 1], before[..before.len() - 1]);
    let r = db.store().verify();
    assert!(r.ok, "{:?}", r.problems);
    let (log, _) = db.store().audit_log().unwrap();
    let kinds: Vec<&str> = log.iter().map(|e| e.kind.as_str()).collect();
    for k in
        ["database-created", "rewrap", "reencrypt-started", "reencrypt-file", "reencrypt-finished", "master-destroyed"]
    {
        assert!(kinds.contains(&k), "{k} not in the audit log: {kinds:?}");
    }
    assert!(!contains(&fs, CANARY.as_bytes()), "plaintext on disk");
}

#[test]
fn rewrap_only_changes_the_master_key_and_leaves_the_files_under_the_old_version() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(1), opts(&fs)).unwrap();
    fill(&db);
    let before = answers(&db);
    db.rotate_master_key(&key(2), RotateOptions { rewrap_only: true, ..Default::default() }).unwrap();
    let st = db.rotation_status();
    assert_eq!(st.rotation.state, "idle");
    let v1 = st.keys.iter().find(|k| k.version == 1).unwrap();
    assert_eq!(v1.state, "retiring");
    assert!(v1.files > 0 && v1.bytes > 0);
    db.close().unwrap();
    assert!(matches!(Db::open("/db", &key(1), opts(&fs)), Err(Error::KeyRetired { .. })));
    let db = Db::open("/db", &key(2), opts(&fs)).unwrap();
    assert_eq!(answers(&db), before);
    // A data-key rotation then replaces every file, keeping the master key.
    db.rotate_data_keys(RotateOptions::default()).unwrap();
    db.wait_for_rotation().unwrap();
    let st = db.rotation_status();
    assert_eq!(st.rotation.state, "complete");
    assert_eq!(st.keys.iter().find(|k| k.version == 1).unwrap().files, 0);
    assert_eq!(answers(&db), before);
}

#[test]
fn rotation_under_load_keeps_every_read_right_and_every_write() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(1), opts(&fs)).unwrap();
    fill(&db);
    let fixed = answers(&db);
    let latest_fixed = db.latest_seq();
    let stop = AtomicBool::new(false);
    let writes = AtomicU64::new(0);
    let reads = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 10_000;
            while !stop.load(Ordering::SeqCst) {
                db.insert("t", json!({"id": i, "v": 7})).unwrap();
                i += 1;
                writes.fetch_add(1, Ordering::SeqCst);
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                // The past never changes, whatever files move underneath.
                let k = reads.fetch_add(1, Ordering::SeqCst) as usize % (fixed.len() - 1);
                let got: Vec<Value> = db
                    .scan("t", Some(&AsOf::Seq(2 + 10 * k as u64)))
                    .unwrap()
                    .into_iter()
                    .map(|d| (*d).clone())
                    .collect();
                assert_eq!(got, fixed[k]);
                assert_eq!(db.get_as_of("t", &Pk::Int(3), latest_fixed).unwrap().unwrap()["v"], 99);
            }
        });
        db.rotate_master_key(&key(2), RotateOptions { throttle_bytes_per_sec: Some(200_000), ..Default::default() })
            .unwrap();
        db.wait_for_rotation().unwrap();
        // Keep the load on for a moment after the end too.
        std::thread::sleep(std::time::Duration::from_millis(50));
        stop.store(true, Ordering::SeqCst);
    });
    assert!(writes.load(Ordering::SeqCst) > 10 && reads.load(Ordering::SeqCst) > 10);
    assert_eq!(db.rotation_status().rotation.state, "complete");
    let n = writes.load(Ordering::SeqCst);
    assert_eq!(db.scan("t", None).unwrap().len() as u64, 170 + n);
    db.close().unwrap();
    let db = Db::open("/db", &key(2), opts(&fs)).unwrap();
    assert_eq!(db.scan("t", None).unwrap().len() as u64, 170 + n);
    assert!(db.store().verify().ok);
}

#[test]
fn a_crash_at_any_write_of_a_rotation_leaves_one_key_that_opens_everything_and_resume_finishes() {
    let mut budget = 0u64;
    let mut saw_old = false;
    let mut saw_new_unfinished = false;
    loop {
        let fs = MemFs::new();
        let db = Db::create("/db", &key(1), opts(&fs)).unwrap();
        fill(&db);
        let before = answers(&db);
        fs.set_faults(Faults { space_left: Some(budget), ..Default::default() });
        let r = db.rotate_master_key(&key(2), RotateOptions { background: false, ..Default::default() });
        let done = r.is_ok() && db.resume_rotation(None, |_| {}).is_ok();
        fs.set_faults(Faults::default());
        fs.crash_keeping(|p, extra| (p.as_os_str().len() + budget as usize) % (extra + 1));
        drop(db);
        // Exactly one of the two keys opens it.
        let no_resume = Options { resume_rotation: false, ..opts(&fs) };
        let (db, new) = match Db::open("/db", &key(2), no_resume.clone()) {
            Ok(db) => {
                assert!(
                    matches!(
                        Db::open("/db", &key(1), no_resume.clone()),
                        Err(Error::KeyRetired { .. } | Error::InUse { .. })
                    ),
                    "budget {budget}"
                );
                (db, true)
            }
            Err(Error::WrongKey(_)) => {
                (Db::open("/db", &key(1), no_resume.clone()).unwrap_or_else(|e| panic!("budget {budget}: {e}")), false)
            }
            Err(e) => panic!("budget {budget}: {e}"),
        };
        assert_eq!(answers(&db), before, "budget {budget}: data after the crash");
        if !new {
            saw_old = true;
            drop(db);
            if done {
                panic!("budget {budget}: the rotation completed but the old key still opens the database");
            }
        } else {
            let st = db.rotation_status();
            if st.rotation.state != "complete" {
                saw_new_unfinished = true;
                assert_eq!(st.rotation.state, "interrupted", "budget {budget}");
            }
            drop(db);
            // Resume (in the background, on open) and finish.
            let db = Db::open("/db", &key(2), opts(&fs)).unwrap();
            db.wait_for_rotation().unwrap();
            let st = db.rotation_status();
            assert_eq!(st.rotation.state, "complete", "budget {budget}: {st:?}");
            assert_eq!(st.keys.iter().find(|k| k.version == 1).unwrap().files, 0, "budget {budget}");
            assert_eq!(answers(&db), before, "budget {budget}: data after resume");
            assert!(db.store().verify().ok, "budget {budget}");
        }
        if done {
            break;
        }
        budget += 331;
    }
    assert!(saw_old && saw_new_unfinished, "the crashes fell before and after the re-wrap");
}

#[test]
fn tampering_with_the_audit_log_is_detected_by_verify() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(1), opts(&fs)).unwrap();
    fill(&db);
    db.rotate_master_key(&key(2), RotateOptions::default()).unwrap();
    db.wait_for_rotation().unwrap();
    db.close().unwrap();
    let audit: Vec<std::path::PathBuf> =
        fs.paths().into_iter().filter(|p| p.extension().is_some_and(|e| e == "audit")).collect();
    assert!(!audit.is_empty());
    let originals: Vec<(std::path::PathBuf, Vec<u8>)> =
        fs.paths().into_iter().map(|p| (p.clone(), fs.contents(&p).unwrap())).collect();
    let restore = || {
        for (p, b) in &originals {
            fs.put(p, b);
        }
    };
    let verify = || {
        let s = driftdb::Store::open(
            "/db",
            &key(2),
            StoreOptions { vfs: Arc::new(fs.clone()), read_only: true, ..Default::default() },
        );
        match s {
            Ok(s) => s.verify().ok,
            Err(_) => false,
        }
    };
    assert!(verify(), "untouched log verifies");
    let f = &audit[0];
    let bytes = fs.contents(f).unwrap();
    // Flip a byte of an entry.
    let mut b = bytes.clone();
    b[40] ^= 1;
    fs.put(f, &b);
    assert!(!verify(), "flipped entry");
    restore();
    // Drop the last entry (and everything after it) of a file.
    fs.put(f, &bytes[..bytes.len() - 60]);
    assert!(!verify(), "dropped entry");
    restore();
    // Reorder: swap two audit files' contents.
    if audit.len() >= 2 {
        let other = fs.contents(&audit[1]).unwrap();
        fs.put(&audit[0], &other);
        fs.put(&audit[1], &bytes);
        assert!(!verify(), "reordered files");
        restore();
    }
    assert!(verify());
}

/// A crash between any two file-system operations of a rotation (before
/// and after every write, fsync, rename, removal and directory sync of the
/// re-wrap and of each file's re-encryption).
#[test]
fn a_crash_between_any_two_operations_of_a_rotation_is_recoverable() {
    let small = |fs: &MemFs| Options { snapshot_every_events: 1000, ..opts(fs) };
    let mut ops = 0u64;
    loop {
        let fs = MemFs::new();
        let db = Db::create("/db", &key(1), small(&fs)).unwrap();
        db.create_table("t", "id", &[]).unwrap();
        for i in 0..40 {
            db.insert("t", json!({"id": i, "pad": "p".repeat(60)})).unwrap();
        }
        db.snapshot("t").unwrap();
        db.close().unwrap();
        let db = Db::open("/db", &key(1), small(&fs)).unwrap();
        let before = answers(&db);
        fs.set_faults(Faults { ops_left: Some(ops), ..Default::default() });
        let done = db.rotate_master_key(&key(2), RotateOptions { background: false, ..Default::default() }).is_ok()
            && db.resume_rotation(None, |_| {}).is_ok();
        fs.set_faults(Faults::default());
        fs.crash();
        drop(db);
        let no_resume = Options { resume_rotation: false, ..small(&fs) };
        let db = match Db::open("/db", &key(2), no_resume.clone()) {
            Ok(db) => db,
            Err(Error::WrongKey(_)) => {
                let db = Db::open("/db", &key(1), no_resume.clone()).unwrap_or_else(|e| panic!("op {ops}: {e}"));
                assert!(!done, "op {ops}: completed, yet the old key opens the database");
                assert_eq!(answers(&db), before, "op {ops}: data under the old key");
                ops += 1;
                continue;
            }
            Err(e) => panic!("op {ops}: {e}"),
        };
        assert_eq!(answers(&db), before, "op {ops}: data under the new key");
        drop(db);
        let db = Db::open("/db", &key(2), small(&fs)).unwrap();
        db.wait_for_rotation().unwrap_or_else(|e| panic!("op {ops}: resume: {e}"));
        let st = db.rotation_status();
        assert_eq!(st.rotation.state, "complete", "op {ops}: {st:?}");
        assert_eq!(st.keys.iter().find(|k| k.version == 1).map(|k| k.files), Some(0), "op {ops}");
        assert_eq!(answers(&db), before, "op {ops}: after resume");
        assert!(db.store().verify().ok, "op {ops}");
        if done {
            break;
        }
        ops += 1;
    }
    assert!(ops > 50, "the rotation took {ops} operations");
}

#[test]
fn a_passphrase_change_is_a_rotation_and_argon2_can_be_retuned_by_rewrapping() {
    let fs = MemFs::new();
    let cheap = driftdb::Argon2Params { m_cost_kib: 64, t_cost: 1, p_cost: 1 };
    let o = Options { argon2: cheap, allow_weak_kdf: true, ..opts(&fs) };
    let a = KeySource::passphrase("correct horse");
    let b = KeySource::passphrase("battery staple");
    let db = Db::create("/db", &a, o.clone()).unwrap();
    fill(&db);
    let before = answers(&db);
    let tuned = driftdb::Argon2Params { m_cost_kib: 128, t_cost: 2, p_cost: 1 };
    let weak = RotateOptions { rewrap_only: true, allow_weak_kdf: true, ..Default::default() };
    db.rotate_master_key(&b, RotateOptions { argon2: tuned, ..weak }).unwrap();
    db.close().unwrap();
    assert!(matches!(Db::open("/db", &a, o.clone()), Err(Error::KeyRetired { .. })));
    let db = Db::open("/db", &b, o.clone()).unwrap();
    assert_eq!(answers(&db), before);
    // The same passphrase again is refused (it would change nothing), and
    // so is one retired before.
    let e = db.rotate_master_key(&b, RotateOptions { argon2: cheap, ..weak }).unwrap_err();
    assert!(e.to_string().contains("is the current one"), "{e}");
    let e = db.rotate_master_key(&a, RotateOptions { argon2: cheap, ..weak }).unwrap_err();
    assert!(e.to_string().contains("retired"), "{e}");
    assert_eq!(db.store().master_version(), 2);
    // Only its Argon2 cost changes when asked for explicitly, with new parameters.
    let retune = RotateOptions { argon2: cheap, retune_kdf: true, ..weak };
    let e = db.rotate_master_key(&b, RotateOptions { argon2: tuned, ..retune }).unwrap_err();
    assert!(e.to_string().contains("same Argon2id parameters"), "{e}");
    db.rotate_master_key(&b, retune).unwrap();
    db.close().unwrap();
    let db = Db::open("/db", &b, o.clone()).unwrap();
    assert_eq!(db.store().master_version(), 3);
    assert_eq!(answers(&db), before);
    let log = db.store().audit().unwrap();
    assert!(log.entries.iter().any(|e| e.kind == "rewrap" && e.detail.contains("\"kdf_retuned\":true")));
    // A new passphrase: a new salt and version.
    let c = KeySource::passphrase("a third one");
    db.rotate_master_key(&c, RotateOptions { argon2: cheap, ..weak }).unwrap();
    db.close().unwrap();
    let db = Db::open("/db", &c, o).unwrap();
    assert_eq!(db.store().master_version(), 4);
    assert_eq!(answers(&db), before);
}

#[test]
fn a_rotation_started_while_another_is_reencrypting_takes_over_and_both_keys_retire() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(1), opts(&fs)).unwrap();
    fill(&db);
    let before = answers(&db);
    db.rotate_master_key(&key(2), RotateOptions { throttle_bytes_per_sec: Some(20_000), ..Default::default() })
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(30));
    assert_eq!(db.rotation_status().rotation.state, "running");
    // A second rotation while files are still being re-encrypted.
    db.rotate_master_key(&key(3), RotateOptions::default()).unwrap();
    db.wait_for_rotation().unwrap();
    // Whatever the first thread was doing, everything ends under version 3.
    let mut tries = 0;
    while db.rotation_status().rotation.state != "complete" && tries < 100 {
        db.resume_rotation(None, |_| {}).ok();
        tries += 1;
    }
    let st = db.rotation_status();
    assert_eq!(st.rotation.state, "complete", "{st:?}");
    for v in [1, 2] {
        assert_eq!(st.keys.iter().find(|k| k.version == v).unwrap().files, 0, "{st:?}");
    }
    db.close().unwrap();
    for old in [1, 2] {
        assert!(matches!(Db::open("/db", &key(old), opts(&fs)), Err(Error::KeyRetired { .. })));
    }
    let db = Db::open("/db", &key(3), opts(&fs)).unwrap();
    assert_eq!(answers(&db), before);
    assert!(db.store().verify().ok);
    assert!(db.store().files().iter().all(|f| f.kek_version == 3));
}

#[test]
fn a_failed_write_mid_rotation_then_retrying_in_the_same_session_never_forks_the_audit_log() {
    let mut budget = 0u64;
    loop {
        let fs = MemFs::new();
        let db = Db::create("/db", &key(1), opts(&fs)).unwrap();
        fill(&db);
        fs.set_faults(Faults { space_left: Some(budget), ..Default::default() });
        let first = db.rotate_master_key(&key(2), RotateOptions { background: false, ..Default::default() });
        let done = first.is_ok() && db.resume_rotation(None, |_| {}).is_ok();
        fs.set_faults(Faults::default());
        // Space is back: carry on in the same session, if the store allows it.
        let _ = db.resume_rotation(None, |_| {});
        let _ = db.close();
        let k = if Db::open("/db", &key(2), Options { resume_rotation: false, ..opts(&fs) }).is_ok() { 2 } else { 1 };
        let db = Db::open("/db", &key(k), opts(&fs)).unwrap_or_else(|e| panic!("budget {budget}: {e}"));
        db.wait_for_rotation().unwrap_or_else(|e| panic!("budget {budget}: {e}"));
        let r = db.store().verify();
        assert!(r.ok, "budget {budget}: {:?}", r.problems);
        db.store().audit_log().unwrap_or_else(|e| panic!("budget {budget}: {e}"));
        if done {
            break;
        }
        budget += 1009;
    }
}
