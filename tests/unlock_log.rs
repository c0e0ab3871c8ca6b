//! A failed unlock writes nothing to disk and is reported to the caller and
//! through the `log` facade (target `driftdb::keys`), without key material.

use driftdb::storage::memfs::MemFs;
use driftdb::{Db, Error, KeySource, Options, RotateOptions, StoreOptions};
use std::sync::{Arc, Mutex};

static RECORDS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

struct Capture;
impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        RECORDS.lock().unwrap().push((r.target().to_string(), r.args().to_string()));
    }
    fn flush(&self) {}
}

#[test]
fn a_failed_unlock_is_logged_without_key_material_and_writes_nothing() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let fs = MemFs::new();
    let o = Options { store: StoreOptions { vfs: Arc::new(fs.clone()), ..Default::default() }, ..Default::default() };
    let k = |b: u8| KeySource::Raw(driftdb::crypto::keys::SecretKey::from_bytes([b; 32]));
    let db = Db::create("/db", &k(0xa1), o.clone()).unwrap();
    db.create_table("t", "id", &[]).unwrap();
    db.rotate_master_key(&k(0xa2), RotateOptions::default()).unwrap();
    db.wait_for_rotation().unwrap();
    db.close().unwrap();
    let snapshot: Vec<_> = fs.paths().into_iter().map(|p| (p.clone(), fs.contents(&p))).collect();
    assert!(matches!(Db::open("/db", &k(0xb7), o.clone()), Err(Error::WrongKey(_))));
    assert!(matches!(Db::open("/db", &k(0xa1), o.clone()), Err(Error::KeyRetired { version: 1 })));
    let after: Vec<_> = fs.paths().into_iter().map(|p| (p.clone(), fs.contents(&p))).collect();
    assert_eq!(snapshot, after, "a failed unlock changed the disk");
    let recs = RECORDS.lock().unwrap().clone();
    let mine: Vec<&(String, String)> = recs.iter().filter(|(t, _)| t == "driftdb::keys").collect();
    assert_eq!(mine.len(), 2, "{recs:?}");
    assert!(mine[0].1.contains("failed unlock") && mine[1].1.contains("retired"), "{mine:?}");
    for (_, m) in &mine {
        for b in [0xb7u8, 0xa1] {
            assert!(!m.to_lowercase().contains(&format!("{b:02x}").repeat(4)), "key bytes in the log: {m}");
        }
    }
}
