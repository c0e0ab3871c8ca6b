//! Databases written by an earlier format version (`tests/data/format-v2`,
//! made by `examples/format_fixture.rs`) keep opening: the same reads, a
//! clean verify, new writes, and a reopen after them.

mod common;
use common::*;
use driftdb::query::ast::AsOf;
use driftdb::{Db, Error, KeySource, Options, Pk, StoreOptions};
use serde_json::json;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/format-v2").join(name);
    let dst = t.path().join(name);
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    (t, dst)
}

fn example_key(t: &Path) -> KeySource {
    use std::os::unix::fs::PermissionsExt;
    let p = t.join("example.key");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("keys-example/example-master.key"), &p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    KeySource::key_file(p)
}

fn check_contents(db: &Db) {
    let o1 = db.get("orders", &Pk::Str("o-1".into())).unwrap().unwrap();
    assert_eq!(o1["status"], "paid");
    assert_eq!(o1["currency"], "EUR", "read through the ADD COLUMN default");
    assert!(db.get("orders", &Pk::Str("o-2".into())).unwrap().is_none(), "soft-deleted");
    assert_eq!(db.get("orders", &Pk::Int(7)).unwrap().unwrap()["amount"], 70);
    let paid: Vec<serde_json::Value> = db.query("SELECT id FROM orders WHERE status = 'paid'").unwrap();
    assert!(paid.len() >= 14, "{paid:?}");
    // Before the compaction horizon: an error; after it: the past.
    assert!(db.get_as_of("orders", &Pk::Str("o-1".into()), 3).is_err());
    let past = db.scan("orders", Some(&AsOf::Seq(10))).unwrap();
    assert_eq!(past.len(), 9, "rows as of @seq:10");
    assert!(!db.history("orders", &Pk::Str("o-1".into())).unwrap().is_empty());
}

#[test]
fn a_format_2_key_file_database_opens_reads_verifies_and_takes_writes() {
    let (t, dir) = fixture("key-db");
    let key = example_key(t.path());
    let version = |dir: &Path| {
        let kr = std::fs::read(dir.join("keyring")).unwrap();
        driftdb::format::keyring::decode_keyring(&kr).unwrap().header.version
    };
    assert_eq!(version(&dir), 2);
    let db = Db::open(&dir, &key, Options::default()).unwrap();
    assert_eq!(version(&dir), 3, "the first read-write open rewrites the keyring as format 3");
    check_contents(&db);
    assert_eq!(db.get("orders", &Pk::Str("o-3".into())).unwrap().unwrap()["status"], "shipped");
    let report = db.store().verify();
    assert!(report.ok, "{:?}", report.problems);
    db.insert("orders", json!({"id": "new", "status": "new"})).unwrap();
    db.close().unwrap();
    let db = Db::open(&dir, &key, Options::default()).unwrap();
    check_contents(&db);
    assert_eq!(db.get("orders", &Pk::Str("new".into())).unwrap().unwrap()["status"], "new");
    assert!(db.store().verify().ok);
    db.close().unwrap();
    // The CLI agrees, with and without the key.
    let k = t.path().join("example.key");
    let (code, out, err) = parts(&run(&["verify", "-d", dir.to_str().unwrap(), "--key-file", k.to_str().unwrap()]));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = parts(&run(&["verify", "-d", dir.to_str().unwrap(), "--no-key"]));
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_format_2_passphrase_database_opens_with_its_current_passphrase_only() {
    let (_t, dir) = fixture("passphrase-db");
    let ro = Options { store: StoreOptions { read_only: true, ..StoreOptions::default() }, ..Options::default() };
    match Db::open(&dir, &KeySource::passphrase("fixture passphrase one"), ro.clone()) {
        Err(Error::KeyRetired { version: 1 }) => {}
        Err(e) => panic!("expected the retired-key error, got {e}"),
        Ok(_) => panic!("the retired passphrase opened the database"),
    }
    let key = KeySource::passphrase("fixture passphrase two");
    let db = Db::open(&dir, &key, Options::default()).unwrap();
    check_contents(&db);
    assert_eq!(db.store().master_version(), 2);
    db.insert("orders", json!({"id": "new", "status": "new"})).unwrap();
    db.close().unwrap();
    let db = Db::open(&dir, &key, ro).unwrap();
    assert_eq!(db.get("orders", &Pk::Str("new".into())).unwrap().unwrap()["status"], "new");
    assert!(db.store().verify().ok);
}

/// The first open of a format-2 database builds its version tree from the
/// log, a run at a time: a crash at any point of it leaves a database that
/// opens and reads exactly as before.
#[test]
fn a_crash_while_the_version_tree_is_built_at_the_first_open_loses_nothing() {
    use driftdb::storage::memfs::{Faults, MemFs};
    let (t, dir) = fixture("key-db");
    let key = example_key(t.path());
    let files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (Path::new("/db").join(e.file_name()), std::fs::read(e.path()).unwrap())
        })
        .collect();
    let opts = |fs: &MemFs| Options {
        store: StoreOptions { vfs: std::sync::Arc::new(fs.clone()), ..StoreOptions::default() },
        // A run every few versions: the build takes many steps.
        memtable_bytes: 512,
        ..Options::default()
    };
    let mut completed = false;
    let mut cut = 0;
    for ops in (0..4000).step_by(7) {
        let fs = MemFs::new();
        for (p, b) in &files {
            fs.put(p, b);
        }
        fs.set_faults(Faults { ops_left: Some(ops), ..Faults::default() });
        let first = Db::open("/db", &key, opts(&fs));
        fs.set_faults(Faults::default());
        if let Ok(db) = first {
            completed = true;
            drop(db);
        } else {
            cut += 1;
        }
        fs.crash();
        let db = Db::open("/db", &key, opts(&fs)).unwrap_or_else(|e| panic!("after a cut at {ops}: {e}"));
        check_contents(&db);
        assert!(db.version_tree_stats().runs.iter().sum::<usize>() > 0, "{:?}", db.version_tree_stats());
        db.close().unwrap();
        if completed {
            break;
        }
    }
    assert!(completed && cut > 5, "the first open was cut {cut} times, then completed: {completed}");
}
