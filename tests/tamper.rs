//! Tamper sweep: a small database with every file kind written so far (log
//! segments, the write-ahead log, snapshots, the key audit log, the version
//! tree's runs, the keyring); for each file, bytes are flipped at
//! many positions (every byte of small files), then the database is opened
//! and everything read: each read returns exactly the original data or an
//! error, never other data and never a panic. A flip in a file no read
//! touches (a snapshot: opening reads rows from the version tree) is found
//! by `verify`.

use driftdb::query::ast::AsOf;
use driftdb::storage::memfs::MemFs;
use driftdb::{Db, KeySource, Options, Pk, StoreOptions};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;

fn key() -> KeySource {
    KeySource::Raw(driftdb::crypto::keys::SecretKey::from_bytes([0x51; 32]))
}

fn opts(fs: &MemFs) -> Options {
    Options {
        store: StoreOptions { vfs: Arc::new(fs.clone()), segment_size: 2048, ..Default::default() },
        // Several runs in the version tree, read through a cache too small
        // to keep them.
        memtable_bytes: 1024,
        cache_bytes: 8 << 10,
        ..Default::default()
    }
}

/// Everything a reader can see: every table state at every commit end, and every history.
fn read_everything(fs: &MemFs) -> driftdb::Result<Vec<Value>> {
    let db = Db::open("/db", &key(), opts(fs))?;
    let mut out = Vec::new();
    for seq in 0..=db.latest_seq() {
        match db.scan("t", Some(&AsOf::Seq(seq))) {
            Ok(rows) => out.push(Value::Array(rows.into_iter().map(|d| (*d).clone()).collect())),
            Err(driftdb::Error::Query(m)) => out.push(Value::String(m)),
            Err(e) => return Err(e),
        }
    }
    for k in 0..8 {
        out.push(serde_json::to_value(db.history("t", &Pk::Int(k)).ok()).unwrap_or(Value::Null));
        out.push(db.get("t", &Pk::Int(k))?.unwrap_or(Value::Null));
    }
    out.push(Value::from(db.latest_seq()));
    db.close()?;
    Ok(out)
}

/// Put the directory back exactly as `files` (removing anything else).
fn restore(fs: &MemFs, files: &[(PathBuf, Vec<u8>)]) {
    use driftdb::storage::Vfs;
    for p in fs.paths() {
        if !files.iter().any(|(q, _)| *q == p) {
            fs.remove_file(&p).unwrap();
            fs.sync_dir(p.parent().unwrap()).unwrap();
        }
    }
    for (p, b) in files {
        fs.put(p, b);
    }
}

#[test]
fn flipped_bytes_give_the_original_data_or_an_error() {
    let fs = MemFs::new();
    let db = Db::create("/db", &key(), opts(&fs)).unwrap();
    db.create_table("t", "id", &["v"]).unwrap();
    for i in 0..24 {
        db.insert("t", json!({"id": i, "v": i, "s": format!("doc-{i}")})).unwrap();
    }
    db.snapshot("t").unwrap();
    // Closing checkpoints the write-ahead log into segments ...
    db.close().unwrap();
    let db = Db::open("/db", &key(), opts(&fs)).unwrap();
    for i in 0..4 {
        db.patch("t", &Pk::Int(i), json!({"v": i * 10}).as_object().cloned().unwrap()).unwrap();
    }
    db.soft_delete("t", &Pk::Int(5)).unwrap();
    // ... while these last commits stay in the WAL (no checkpoint before the next open).
    drop(db);
    let files: Vec<(PathBuf, Vec<u8>)> =
        fs.paths().into_iter().map(|p| (p.clone(), fs.contents(&p).unwrap())).collect();
    let original = read_everything(&fs).unwrap();
    // Restoring the files alone (the reopen's new files left beside an older
    // keyring) is a rollback, refused.
    for (p, b) in &files {
        fs.put(p, b);
    }
    match read_everything(&fs) {
        Err(e) => assert!(e.is_integrity() && e.to_string().contains("keyring"), "{e}"),
        Ok(_) => panic!("an older keyring beside newer files opened"),
    }
    // Restoring the whole directory restores the database.
    restore(&fs, &files);
    assert_eq!(read_everything(&fs).unwrap(), original);
    let kinds: std::collections::BTreeSet<String> = files
        .iter()
        .filter_map(|(p, _)| p.extension().map(|e| e.to_string_lossy().into_owned()).or(Some("keyring".into())))
        .collect();
    assert!(
        kinds.contains("seg")
            && kinds.contains("wal")
            && kinds.contains("snap")
            && kinds.contains("audit")
            && kinds.contains("run")
            && kinds.contains("keyring"),
        "{kinds:?}"
    );
    let mut flips = 0;
    let mut errors = 0;
    for (path, bytes) in &files {
        if path.ends_with("LOCK") {
            continue;
        }
        // Every byte of small files; a spread of positions in larger ones.
        let step = (bytes.len() / 1500).max(1);
        for pos in (0..bytes.len()).step_by(step) {
            restore(&fs, &files);
            let mut b = bytes.clone();
            b[pos] ^= 0x5a;
            fs.put(path, &b);
            flips += 1;
            match read_everything(&fs) {
                Ok(got) => {
                    assert_eq!(got, original, "flip at {}:{pos} changed what is read", path.display());
                    // Not read: `verify` reads every file.
                    let db = Db::open("/db", &key(), opts(&fs)).unwrap();
                    if !db.store().verify().ok {
                        errors += 1;
                    }
                    db.close().unwrap();
                }
                Err(e) => {
                    errors += 1;
                    assert!(
                        e.is_integrity() || e.exit_code() == 3,
                        "flip at {}:{pos}: unexpected error {e}",
                        path.display()
                    );
                }
            }
        }
    }
    eprintln!("{flips} flips, {errors} detected as errors (or by verify), the rest read back the original data");
    assert!(flips >= 2000, "only {flips} flips");
    assert!(errors > flips * 9 / 10, "{errors} of {flips} flips detected");
}
