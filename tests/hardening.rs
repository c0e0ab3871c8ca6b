//! Hardening of the store, through the library: files the manifest does not
//! list are evidence (a restored older keyring is refused, nothing is
//! deleted; a crash's leftovers are removed and reported; a format-2
//! database's unexplained files are quarantined), a pinned keyring
//! generation refuses a rollback, key audit entries take effect only with
//! their keyring write, a destroyed key version means its files are gone,
//! and a failed keyring write latches the store.

use driftdb::format::keyring::{MasterSpec, decode_keyring};
use driftdb::storage::memfs::{Faults, MemFs};
use driftdb::storage::{Vfs, VfsFile};
use driftdb::{Db, Error, KeySource, Options, Pk, RecoveryEvent, RotateOptions, Store, StoreOptions};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn key(b: u8) -> KeySource {
    KeySource::Raw(driftdb::crypto::keys::SecretKey::from_bytes([b; 32]))
}

fn opts(fs: &MemFs) -> Options {
    Options {
        store: StoreOptions { vfs: Arc::new(fs.clone()), segment_size: 4096, ..Default::default() },
        snapshot_every_events: 1_000_000,
        checkpoint_bytes: 2048,
        ..Default::default()
    }
}

fn dir() -> PathBuf {
    PathBuf::from("/db")
}

fn files(fs: &MemFs) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = fs.paths().into_iter().map(|p| (p.clone(), fs.contents(&p).unwrap_or_default())).collect();
    v.sort();
    v
}

fn insert(db: &Db, id: i64) {
    db.insert("t", json!({"id": id, "v": format!("row {id}")})).unwrap();
}

#[test]
fn a_restored_older_keyring_is_refused_naming_the_file_and_nothing_is_deleted() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(1), opts(&fs)).unwrap();
    db.create_table("t", "id", &[]).unwrap();
    insert(&db, 1);
    db.close().unwrap();
    let old_keyring = fs.contents(&dir().join("keyring")).unwrap();
    let db = Db::open("/db", &key(1), opts(&fs)).unwrap();
    insert(&db, 2);
    db.close().unwrap();
    let new_keyring = fs.contents(&dir().join("keyring")).unwrap();
    fs.put(&dir().join("keyring"), &old_keyring);
    let before = files(&fs);
    for read_only in [false, true] {
        let o = Options { store: StoreOptions { read_only, ..opts(&fs).store }, ..opts(&fs) };
        match Db::open("/db", &key(1), o) {
            Err(e @ Error::Tampered { .. }) => {
                let m = e.to_string();
                assert!(m.contains(".seg") || m.contains(".wal") || m.contains(".audit"), "names the file: {m}");
                assert!(m.contains("keyring"), "{m}");
            }
            // Read-only opens do not recover; verify is what checks them.
            Ok(db) if read_only => {
                let r = db.store().verify();
                assert!(!r.ok, "verify passed an older keyring beside newer files");
                assert!(
                    r.problems.iter().any(|p| p.problem.contains("id mark") || p.problem.contains("older")),
                    "{:?}",
                    r.problems
                );
            }
            Err(e) => panic!("expected an integrity error, got {e}"),
            Ok(_) => panic!("an older keyring beside newer files opened for writing"),
        }
        assert_eq!(files(&fs), before, "nothing changed on disk");
    }
    let r = driftdb::verify_without_key(&dir(), &fs).unwrap();
    assert!(!r.ok && r.problems.iter().any(|p| p.problem.contains("id mark")), "{:?}", r.problems);
    // With the right keyring back, every row is there.
    fs.put(&dir().join("keyring"), &new_keyring);
    let db = Db::open("/db", &key(1), opts(&fs)).unwrap();
    assert!(db.get("t", &Pk::Int(1)).unwrap().is_some() && db.get("t", &Pk::Int(2)).unwrap().is_some());
    assert!(db.store().verify().ok);
}

/// A crash between any two file-system operations of a workload that rolls
/// stream files, builds, rewrites and merges files never leaves something
/// that looks like tampering: the next open removes the leftovers, and says so.
#[test]
fn a_crash_at_any_operation_leaves_only_leftovers_that_are_removed_and_reported() {
    let mut ops = 0u64;
    let mut reported = 0;
    loop {
        let fs = MemFs::new();
        let db = Db::create("/db", &key(1), opts(&fs)).unwrap();
        db.create_table("t", "id", &[]).unwrap();
        for i in 0..30 {
            insert(&db, i);
        }
        fs.set_faults(Faults { ops_left: Some(ops), ..Faults::default() });
        let finished = (|| -> driftdb::Result<()> {
            for i in 30..60 {
                db.insert("t", json!({"id": i, "v": "x".repeat(200)}))?;
            }
            db.snapshot("t")?;
            db.compact("t", Some(&driftdb::query::ast::AsOf::Seq(20)))?;
            db.rotate_data_keys(RotateOptions { background: false, ..Default::default() })?;
            db.resume_rotation(None, |_| {})?;
            Ok(())
        })()
        .is_ok();
        fs.set_faults(Faults::default());
        fs.crash();
        drop(db);
        let db = Db::open("/db", &key(1), opts(&fs)).unwrap_or_else(|e| panic!("op {ops}: {e}"));
        for e in db.store().recovery_events() {
            if matches!(e, RecoveryEvent::RemovedLeftover { .. } | RecoveryEvent::RemovedOrphan { .. }) {
                reported += 1;
            }
            // Only a complete file caught between its sealing and its commit is set aside.
            if let RecoveryEvent::Quarantined { reason, .. } = e {
                assert!(reason.contains("being written"), "op {ops}: {e}");
            }
        }
        let r = db.store().verify();
        assert!(r.ok, "op {ops}: {r:?}");
        assert!(db.get("t", &Pk::Int(29)).unwrap().is_some(), "op {ops}");
        if finished {
            break;
        }
        ops += 1;
    }
    assert!(ops > 100, "the workload took only {ops} operations");
    assert!(reported > 10, "only {reported} leftovers reported");
}

/// A format-2 keyring cannot say what an unlisted file is: one holding
/// records but no sealing frame is moved to `quarantine/` (reported, never
/// deleted); a complete sealed one is refused.
#[test]
fn a_format_2_database_quarantines_an_unexplained_file_and_refuses_a_complete_one() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/format-v2/key-db");
    let copy = |to: &Path| {
        std::fs::create_dir(to).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    };
    let k = t.path().join("k");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("keys-example/example-master.key"), &k).unwrap();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = KeySource::key_file(&k);
    let seg = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let sealed = std::fs::read(&seg).unwrap();
    // Unsealed: the sealing frame cut off.
    let unsealed = &sealed[..sealed.len() - 41];
    let a = t.path().join("a");
    copy(&a);
    std::fs::write(a.join("00000000000fff01.seg"), unsealed).unwrap();
    let db = Db::open(&a, &key, Options::default()).unwrap();
    let q = db
        .store()
        .recovery_events()
        .iter()
        .find_map(|e| match e {
            RecoveryEvent::Quarantined { file, to, .. } => Some((file.clone(), to.clone())),
            _ => None,
        })
        .expect("quarantined");
    assert_eq!(q, ("00000000000fff01.seg".to_string(), "quarantine/00000000000fff01.seg".to_string()));
    assert_eq!(std::fs::read(a.join(&q.1)).unwrap(), unsealed, "kept, byte for byte");
    assert!(db.get("orders", &Pk::Str("o-1".into())).unwrap().is_some());
    let r = db.store().verify();
    assert!(r.ok && r.notes.iter().any(|n| n.contains("quarantine/")), "{r:?}");
    db.close().unwrap();
    // Complete and sealed: a format-2 keyring cannot say either whether it
    // is a crash's leftover or newer than itself: set aside too, never deleted.
    let b = t.path().join("b");
    copy(&b);
    std::fs::write(b.join("00000000000fff03.seg"), &sealed).unwrap();
    let db = Db::open(&b, &key, Options::default()).unwrap();
    assert!(
        db.store()
            .recovery_events()
            .iter()
            .any(|e| matches!(e, RecoveryEvent::Quarantined { file, .. } if file == "00000000000fff03.seg")),
        "{:?}",
        db.store().recovery_events()
    );
    assert_eq!(std::fs::read(b.join("quarantine/00000000000fff03.seg")).unwrap(), sealed);
    // Once the keyring is format 3, the same file is refused, and stays where it is.
    db.close().unwrap();
    std::fs::write(b.join("00000000000fff05.seg"), &sealed).unwrap();
    match Db::open(&b, &key, Options::default()) {
        Err(e @ Error::Tampered { .. }) => assert!(e.to_string().contains("00000000000fff05.seg"), "{e}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a complete unlisted file was accepted"),
    }
    assert!(b.join("00000000000fff05.seg").exists());
}

#[test]
fn a_pinned_generation_refuses_a_rolled_back_copy() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(1), opts(&fs)).unwrap();
    db.create_table("t", "id", &[]).unwrap();
    insert(&db, 1);
    db.close().unwrap();
    let old = files(&fs);
    let old_generation = decode_keyring(&fs.contents(&dir().join("keyring")).unwrap()).unwrap().header.generation;
    let db = Db::open("/db", &key(1), opts(&fs)).unwrap();
    insert(&db, 2);
    db.close().unwrap();
    let db =
        Db::open("/db", &key(1), Options { store: StoreOptions { read_only: true, ..opts(&fs).store }, ..opts(&fs) })
            .unwrap();
    let newest = db.keyring_generation();
    assert_eq!(db.rotation_status().keyring_generation, newest);
    drop(db);
    // The whole directory as it was: internally consistent, and older.
    for p in fs.paths() {
        fs.remove_file(&p).unwrap();
    }
    for (p, b) in &old {
        fs.put(p, b);
    }
    let pinned = Options { expect_generation: Some(newest), ..opts(&fs) };
    match Db::open("/db", &key(1), pinned) {
        Err(e @ Error::RolledBack { .. }) => {
            assert_eq!(e.exit_code(), 4);
            assert!(e.to_string().contains(&newest.to_string()), "{e}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a rolled-back copy opened"),
    }
    assert_eq!(files(&fs), old, "nothing written");
    let r = driftdb::verify_without_key_expecting(&dir(), &fs, Some(newest)).unwrap();
    assert!(!r.ok && r.problems.iter().any(|p| p.problem.contains("rollback")), "{:?}", r.problems);
    // Without the pin (or with an older one) it opens: the check is the pin.
    assert!(old_generation < newest);
    let db = Db::open("/db", &key(1), Options { expect_generation: Some(old_generation), ..opts(&fs) }).unwrap();
    assert!(db.get("t", &Pk::Int(2)).unwrap().is_none());
}

/// Every committed audit entry describes something the keyring shows
/// happened: a crash or a full disk between an entry and its keyring write
/// leaves the entry uncommitted, and the next key event records it as aborted.
#[test]
fn audit_entries_take_effect_only_with_their_keyring_write() {
    for (name, faults) in [
        ("crash", Box::new(|n: u64| Faults { ops_left: Some(n), ..Faults::default() }) as Box<dyn Fn(u64) -> Faults>),
        ("disk full", Box::new(|n: u64| Faults { space_left: Some(n * 97), ..Faults::default() })),
    ] {
        let mut n = 0u64;
        let mut aborted_seen = 0;
        loop {
            let fs = MemFs::new();
            let db = Db::create("/db", &key(1), opts(&fs)).unwrap();
            db.create_table("t", "id", &[]).unwrap();
            insert(&db, 1);
            fs.set_faults(faults(n));
            let ok = db.rotate_master_key(&key(2), RotateOptions { rewrap_only: true, ..Default::default() }).is_ok();
            fs.set_faults(Faults::default());
            if name == "crash" {
                fs.crash();
            }
            drop(db);
            let (db, version) = match Db::open("/db", &key(2), opts(&fs)) {
                Ok(db) => (db, 2),
                Err(Error::WrongKey(_)) => (Db::open("/db", &key(1), opts(&fs)).unwrap(), 1),
                Err(e) => panic!("{name} {n}: {e}"),
            };
            assert_eq!(db.store().master_version(), version);
            let log = db.store().audit().unwrap();
            let committed_rewraps =
                log.entries.iter().zip(&log.committed).filter(|(e, c)| **c && e.kind == "rewrap").count();
            assert_eq!(committed_rewraps, version as usize - 1, "{name} {n}: the log and the keyring disagree");
            let uncommitted: Vec<u64> = (log.recorded.count..log.head.count).collect();
            // The next key event records what did not happen as aborted.
            let next = if version == 1 { key(2) } else { key(3) };
            db.rotate_master_key(&next, RotateOptions { rewrap_only: true, ..Default::default() }).unwrap();
            let log = db.store().audit().unwrap();
            let rewraps = log.entries.iter().zip(&log.committed).filter(|(e, c)| **c && e.kind == "rewrap").count();
            assert_eq!(rewraps, version as usize, "{name} {n}");
            if !uncommitted.is_empty() {
                aborted_seen += 1;
                let a = log.entries.iter().find(|e| e.kind == "aborted").expect("an aborted entry");
                let named: serde_json::Value = serde_json::from_str(&a.detail).unwrap();
                assert_eq!(named["entries"], json!(uncommitted), "{name} {n}: {}", a.detail);
                for s in &uncommitted {
                    assert!(!log.committed[*s as usize], "{name} {n}: entry {s} counts as committed");
                }
            } else {
                assert!(!log.entries.iter().any(|e| e.kind == "aborted"), "{name} {n}");
            }
            assert!(db.store().verify().ok, "{name} {n}");
            if ok {
                break;
            }
            n += 1;
        }
        assert!(aborted_seen > 0, "{name}: no point left an entry without its keyring write");
    }
}

#[test]
fn a_version_is_destroyed_only_once_its_files_are_deleted() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(1), opts(&fs)).unwrap();
    db.create_table("t", "id", &[]).unwrap();
    for i in 0..40 {
        insert(&db, i);
    }
    db.close().unwrap();
    let db = Db::open("/db", &key(1), Options { resume_rotation: false, ..opts(&fs) }).unwrap();
    db.rotate_master_key(&key(2), RotateOptions { background: false, ..Default::default() }).unwrap();
    fs.set_faults(Faults { fail_removes: true, ..Faults::default() });
    let r = db.resume_rotation(None, |_| {});
    assert!(r.is_err(), "the deletions failed, so the rotation cannot claim to be done");
    let st = db.rotation_status();
    assert_ne!(st.rotation.state, "complete", "{st:?}");
    let log = db.store().audit().unwrap();
    assert!(!log.entries.iter().any(|e| e.kind == "master-destroyed"), "destroyed while its files exist");
    fs.set_faults(Faults::default());
    db.resume_rotation(None, |_| {}).unwrap();
    assert_eq!(db.rotation_status().rotation.state, "complete");
    let log = db.store().audit().unwrap();
    assert!(log.entries.iter().any(|e| e.kind == "master-destroyed"));
    // Only live files (and the lock and keyring) are left.
    let live: Vec<String> = db.store().files().iter().map(|f| f.name.clone()).collect();
    for p in fs.paths() {
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(n == "keyring" || n == "LOCK" || live.contains(&n), "{n} left behind");
    }
}

#[test]
fn a_destroyed_passphrase_version_leaves_the_plaintext_header() {
    let fs = MemFs::new();
    let cheap = driftdb::Argon2Params { m_cost_kib: 64, t_cost: 1, p_cost: 1 };
    let o = Options { argon2: cheap, allow_weak_kdf: true, ..opts(&fs) };
    let a = KeySource::passphrase("first passphrase");
    let b = KeySource::passphrase("second passphrase");
    let db = Db::create("/db", &a, o.clone()).unwrap();
    db.create_table("t", "id", &[]).unwrap();
    insert(&db, 1);
    let ro = RotateOptions {
        argon2: cheap,
        allow_weak_kdf: true,
        background: false,
        rewrap_only: true,
        ..Default::default()
    };
    db.rotate_master_key(&b, ro).unwrap();
    let retired = |fs: &MemFs| {
        let kr = fs.contents(&dir().join("keyring")).unwrap();
        decode_keyring(&kr)
            .unwrap()
            .header
            .retired
            .iter()
            .filter(|r| matches!(r.spec, MasterSpec::Passphrase { .. }))
            .count()
    };
    assert_eq!(retired(&fs), 1, "retiring: its salt stays, so the old passphrase gets a clear error");
    drop(db);
    assert!(matches!(Db::open("/db", &a, o.clone()), Err(Error::KeyRetired { version: 1 })));
    let db = Db::open("/db", &b, Options { resume_rotation: false, ..o.clone() }).unwrap();
    db.rotate_data_keys(RotateOptions { background: false, ..Default::default() }).unwrap();
    db.resume_rotation(None, |_| {}).unwrap();
    assert_eq!(retired(&fs), 0, "destroyed: its salt and check value are gone from the header");
    drop(db);
    assert!(matches!(Db::open("/db", &a, o), Err(Error::WrongKey(_))));
}

#[test]
fn a_failed_keyring_write_latches_the_store() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(1), opts(&fs)).unwrap();
    db.create_table("t", "id", &[]).unwrap();
    insert(&db, 1);
    // Room for the snapshot's data, not for the keyring that would list it.
    let before = files(&fs).iter().map(|(_, b)| b.len()).sum::<usize>();
    let mut latched = false;
    for room in (0..20_000u64).step_by(64) {
        fs.set_faults(Faults { space_left: Some(room), ..Faults::default() });
        let r = db.snapshot("t");
        fs.set_faults(Faults::default());
        match r {
            Ok(_) => break,
            Err(Error::Io { path, .. }) if path.ends_with("keyring.tmp") => {
                // Latched: no later write goes through, even with room again.
                assert!(matches!(db.insert("t", json!({"id": 2})), Err(Error::Poisoned(_))));
                latched = true;
                break;
            }
            Err(Error::Poisoned(_)) => break,
            Err(_) => {}
        }
    }
    assert!(latched, "no point failed at the keyring write ({before} bytes)");
}

/// A wrapper file system whose `open` of one path fails with EACCES.
struct Denied {
    inner: MemFs,
    path: PathBuf,
}

impl Vfs for Denied {
    fn open(&self, path: &Path, mode: driftdb::storage::vfs::OpenMode) -> std::io::Result<Box<dyn VfsFile>> {
        if path == self.path {
            return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        }
        self.inner.open(path, mode)
    }
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn read_dir(&self, path: &Path) -> std::io::Result<Vec<String>> {
        self.inner.read_dir(path)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn exists(&self, path: &Path) -> std::io::Result<bool> {
        self.inner.exists(path)
    }
    fn try_lock(
        &self,
        path: &Path,
        exclusive: bool,
    ) -> std::io::Result<Option<Box<dyn driftdb::storage::vfs::LockGuard>>> {
        self.inner.try_lock(path, exclusive)
    }
}

#[test]
fn a_file_that_cannot_be_read_is_an_error_not_an_integrity_problem() {
    let fs = MemFs::new();
    let s = Store::create(
        "/db",
        &key(1),
        driftdb::CreateOptions {
            store: StoreOptions { vfs: Arc::new(fs.clone()), ..Default::default() },
            ..Default::default()
        },
    )
    .unwrap();
    s.append(1, driftdb::FileKind::Segment, b"x").unwrap();
    let seg = s.files().iter().find(|f| f.stream == 1).unwrap().name.clone();
    s.close().unwrap();
    let denied = Denied { inner: fs.clone(), path: dir().join(&seg) };
    let r = driftdb::verify_without_key(&dir(), &denied).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert!(!r.ok && r.errors.iter().any(|e| e.contains(&seg)), "{r:?}");
    // The key check, too.
    let st = Store::open("/db", &key(1), StoreOptions { vfs: Arc::new(denied), read_only: true, ..Default::default() })
        .unwrap();
    let r = st.verify();
    assert!(r.problems.is_empty() && !r.errors.is_empty(), "{r:?}");
}

#[test]
fn verify_without_a_key_finds_a_missing_or_truncated_file() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(1), opts(&fs)).unwrap();
    db.create_table("t", "id", &[]).unwrap();
    for i in 0..50 {
        insert(&db, i);
    }
    db.snapshot("t").unwrap();
    db.close().unwrap();
    let clean = files(&fs);
    assert!(driftdb::verify_without_key(&dir(), &fs).unwrap().ok);
    for ext in ["seg", "snap", "audit"] {
        let (p, b) = clean.iter().find(|(p, _)| p.extension().is_some_and(|e| e == ext)).unwrap().clone();
        // Truncated at a frame boundary (the sealing frame cut off), and anywhere.
        for cut in [b.len() - 41, b.len() / 2] {
            fs.put(&p, &b[..cut]);
            let r = driftdb::verify_without_key(&dir(), &fs).unwrap();
            assert!(!r.ok && r.problems.iter().any(|x| p.ends_with(&x.file)), "{ext} cut at {cut}: {r:?}");
        }
        fs.put(&p, &b);
        fs.remove_file(&p).unwrap();
        let r = driftdb::verify_without_key(&dir(), &fs).unwrap();
        assert!(!r.ok && r.problems.iter().any(|x| x.problem.contains("missing")), "{ext} missing: {r:?}");
        fs.put(&p, &b);
    }
    assert!(driftdb::verify_without_key(&dir(), &fs).unwrap().ok);
}
