//! The write-ahead log through the fault-injecting file system: a torn write
//! at every byte of the last WAL record, a failed fsync, a full disk, a crash
//! at every write of a run of transactions and checkpoints. Every
//! acknowledged transaction survives whole; no partial one is ever visible.

use driftdb::storage::memfs::{Faults, MemFs};
use driftdb::{Db, Error, FileKind, Isolation, KeySource, Options, Pk, StoreOptions};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

fn key() -> KeySource {
    KeySource::Raw(driftdb::crypto::keys::SecretKey::from_bytes([0x24; 32]))
}

fn opts(fs: &MemFs, checkpoint_bytes: u64) -> Options {
    Options {
        store: StoreOptions { vfs: Arc::new(fs.clone()), segment_size: 8192, ..Default::default() },
        checkpoint_bytes,
        ..Default::default()
    }
}

/// Transaction `n`: `n % 4 + 1` rows of batch `n`, and the counter row moved to `n`.
fn txn(db: &Db, n: u64) -> Result<u64, Error> {
    let mut t = db.begin(Isolation::Snapshot);
    for j in 0..n % 4 + 1 {
        t.insert("t", json!({"id": format!("{n}-{j}"), "batch": n, "size": n % 4 + 1, "pad": "w".repeat(30)}))?;
    }
    t.patch("t", &Pk::Str("counter".into()), json!({"last": n}).as_object().cloned().unwrap_or_default())?;
    t.commit()
}

fn setup(fs: &MemFs, checkpoint_bytes: u64) -> Db {
    let db = Db::create("/db", &key(), opts(fs, checkpoint_bytes)).unwrap();
    db.create_table("t", "id", &["batch"]).unwrap();
    db.insert("t", json!({"id": "counter", "last": 0})).unwrap();
    db
}

/// Check the database holds exactly the transactions 1..=n for some n with
/// `acked <= n <= tried`, each whole, in every state of history; returns n.
fn check(db: &Db, acked: u64, tried: u64, what: &str) -> u64 {
    let rows = db.scan("t", None).unwrap();
    let counter = db.get("t", &Pk::Str("counter".into())).unwrap().unwrap()["last"].as_u64().unwrap();
    assert!(counter >= acked && counter <= tried, "{what}: last transaction {counter}, acked {acked}, tried {tried}");
    let mut per_batch = std::collections::BTreeMap::<u64, u64>::new();
    for r in rows.iter().filter(|r| r["batch"].is_u64()) {
        *per_batch.entry(r["batch"].as_u64().unwrap()).or_default() += 1;
    }
    for n in 1..=counter {
        assert_eq!(per_batch.get(&n).copied(), Some(n % 4 + 1), "{what}: transaction {n} not whole");
    }
    assert_eq!(per_batch.len() as u64, counter, "{what}: rows of a transaction after the last one");
    // History agrees: every transaction's rows appear in one step.
    let hist = db.history("t", &Pk::Str("counter".into())).unwrap();
    for e in hist.iter().skip(1) {
        let n = e.doc["last"].as_u64().unwrap();
        let at: Vec<Value> = db
            .query(&format!("SELECT id FROM t WHERE batch = {n} AS OF @seq:{}", e.seq))
            .unwrap_or_else(|err| panic!("{what}: {err}"));
        assert_eq!(at.len() as u64, n % 4 + 1, "{what}: transaction {n} as of its own commit");
        let before: Vec<Value> =
            db.query(&format!("SELECT id FROM t WHERE batch = {n} AS OF @seq:{}", e.seq - 1)).unwrap();
        assert!(before.is_empty(), "{what}: part of transaction {n} visible before its commit");
    }
    counter
}

fn wal_files(fs: &MemFs) -> Vec<std::path::PathBuf> {
    fs.paths().into_iter().filter(|p| p.extension().is_some_and(|e| e == "wal")).collect()
}

#[test]
fn commits_go_to_the_wal_and_a_checkpoint_moves_them_into_segments() {
    let fs = MemFs::new();
    let db = setup(&fs, 1 << 40);
    for n in 1..=20 {
        txn(&db, n).unwrap();
    }
    let kinds: Vec<FileKind> = db.store().files().iter().map(|f| f.kind).collect();
    assert!(kinds.contains(&FileKind::Wal), "{kinds:?}");
    assert!(!kinds.contains(&FileKind::Segment), "nothing checkpointed yet: {kinds:?}");
    // The WAL is encrypted: no document text, field name or table name in any file.
    for p in fs.paths() {
        let bytes = fs.contents(&p).unwrap();
        for needle in [&b"wwwwwwwwww"[..], b"batch", b"counter"] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle), "plaintext in {}", p.display());
        }
    }
    // Dropped without close, as after a crash: the WAL is replayed on open.
    fs.crash();
    drop(db);
    let db = Db::open("/db", &key(), opts(&fs, 1 << 40)).unwrap();
    assert_eq!(check(&db, 20, 20, "replayed"), 20);
    // Opening checkpointed the WAL: only segments remain.
    assert!(wal_files(&fs).is_empty(), "{:?}", fs.paths());
    assert!(db.store().files().iter().any(|f| f.kind == FileKind::Segment));
    // A small checkpoint threshold keeps the WAL short while writing.
    drop(db);
    let db = Db::open("/db", &key(), opts(&fs, 2048)).unwrap();
    for n in 21..=80 {
        txn(&db, n).unwrap();
        assert!(db.store().stream_files(driftdb::db::WAL_STREAM).len() <= 2);
    }
    db.close().unwrap();
    assert!(wal_files(&fs).is_empty(), "close checkpoints");
    let db = Db::open("/db", &key(), opts(&fs, 2048)).unwrap();
    assert_eq!(check(&db, 80, 80, "after close"), 80);
}

#[test]
fn a_torn_write_at_every_byte_of_the_last_wal_record_loses_only_that_unacknowledged_commit() {
    // Learn how many bytes the last commit leaves unsynced.
    let probe = MemFs::new();
    let db = setup(&probe, 1 << 40);
    for n in 1..=3 {
        txn(&db, n).unwrap();
    }
    probe.set_faults(Faults { fail_sync: true, ..Default::default() });
    assert!(txn(&db, 4).is_err(), "a failed fsync is not an acknowledgement");
    let mut unsynced = 0;
    probe.crash_keeping(|p, extra| {
        if p.extension().is_some_and(|e| e == "wal") {
            unsynced = extra;
        }
        0
    });
    drop(db);
    assert!(unsynced > 60, "the sync marker and the last record: {unsynced} bytes");
    for keep in 0..=unsynced {
        let fs = MemFs::new();
        let db = setup(&fs, 1 << 40);
        for n in 1..=3 {
            txn(&db, n).unwrap();
        }
        fs.set_faults(Faults { fail_sync: true, ..Default::default() });
        assert!(txn(&db, 4).is_err());
        fs.set_faults(Faults::default());
        fs.crash_keeping(|p, _| if p.extension().is_some_and(|e| e == "wal") { keep } else { 0 });
        drop(db);
        let db = Db::open("/db", &key(), opts(&fs, 1 << 40))
            .unwrap_or_else(|e| panic!("torn at byte {keep} of {unsynced}: {e}"));
        let n = check(&db, 3, 4, &format!("torn at byte {keep}"));
        assert_eq!(n == 4, keep == unsynced, "the commit is there exactly when all of it reached the disk");
        // And the database takes new commits.
        txn(&db, n + 1).unwrap();
        assert!(db.recovery_ok());
    }
}

trait RecoveryOk {
    fn recovery_ok(&self) -> bool;
}
impl RecoveryOk for Db {
    fn recovery_ok(&self) -> bool {
        self.store().poisoned().is_none()
    }
}

#[test]
fn after_a_failed_fsync_writes_are_refused_until_reopen_and_reads_go_on() {
    let fs = MemFs::new();
    let db = setup(&fs, 1 << 40);
    for n in 1..=5 {
        txn(&db, n).unwrap();
    }
    fs.set_faults(Faults { fail_sync: true, ..Default::default() });
    let e = txn(&db, 6).unwrap_err();
    assert!(e.to_string().contains("syncing"), "{e}");
    fs.set_faults(Faults::default());
    // The store does not guess: it refuses every later write, even though
    // the disk works again, and says how to recover.
    let e = txn(&db, 6).unwrap_err();
    assert!(matches!(e, Error::Poisoned(_)), "{e}");
    assert!(e.to_string().contains("reopen"), "{e}");
    assert!(db.snapshot("t").is_err());
    // Reads go on, and show only what was acknowledged.
    assert_eq!(check(&db, 5, 5, "reads after the failure"), 5);
    drop(db);
    let db = Db::open("/db", &key(), opts(&fs, 1 << 40)).unwrap();
    let n = check(&db, 5, 6, "reopened");
    txn(&db, n + 1).unwrap();
    fs.crash();
    drop(db);
    let db = Db::open("/db", &key(), opts(&fs, 1 << 40)).unwrap();
    check(&db, n + 1, n + 1, "after a crash");
}

#[test]
fn a_full_disk_is_an_error_that_corrupts_nothing() {
    for space in [0u64, 10, 100, 300, 1000, 5000] {
        let fs = MemFs::new();
        let db = setup(&fs, 4096);
        for n in 1..=10 {
            txn(&db, n).unwrap();
        }
        fs.set_faults(Faults { space_left: Some(space), ..Default::default() });
        let mut acked = 10;
        let mut tried = 10;
        for n in 11..=40 {
            tried = n;
            match txn(&db, n) {
                Ok(_) => acked = n,
                Err(e) => {
                    assert!(
                        e.to_string().contains("No space") || e.to_string().contains("space"),
                        "space {space}: {e}"
                    );
                    break;
                }
            }
        }
        assert!(tried < 40, "space {space}: the disk never filled");
        assert!(txn(&db, tried + 1).is_err(), "writes refused after the failure");
        check(&db, acked, acked, &format!("space {space}: reads after the failure"));
        fs.set_faults(Faults::default());
        drop(db);
        let db = Db::open("/db", &key(), opts(&fs, 4096)).unwrap();
        let n = check(&db, acked, tried, &format!("space {space}: reopened"));
        txn(&db, n + 1).unwrap();
    }
}

#[test]
fn a_crash_at_any_write_of_transactions_and_checkpoints_keeps_every_acknowledged_transaction_whole() {
    let mut budget = 0u64;
    let mut completed = false;
    while !completed {
        let fs = MemFs::new();
        let db = setup(&fs, 1500);
        fs.set_faults(Faults { space_left: Some(budget), ..Default::default() });
        let mut acked = 0;
        let mut tried = 0;
        for n in 1..=30 {
            tried = n;
            match txn(&db, n) {
                Ok(_) => acked = n,
                Err(_) => break,
            }
        }
        completed = acked == 30;
        fs.set_faults(Faults::default());
        // Crash keeping a random-ish torn part of every unsynced tail.
        fs.crash_keeping(|p: &Path, extra| (p.as_os_str().len() * 7 + budget as usize * 13) % (extra + 1));
        drop(db);
        let db =
            Db::open("/db", &key(), opts(&fs, 1500)).unwrap_or_else(|e| panic!("budget {budget}: does not open: {e}"));
        let n = check(&db, acked, tried, &format!("budget {budget}"));
        txn(&db, n + 1).unwrap_or_else(|e| panic!("budget {budget}: no commit after reopen: {e}"));
        budget += 97;
    }
    assert!(budget > 10_000, "the run covered checkpoints: {budget}");
}

#[test]
fn after_a_failed_write_at_any_point_the_session_never_writes_a_commit_twice() {
    // A write fails part-way (a full disk during a commit or a checkpoint);
    // then space returns and the application keeps committing in the same
    // session. Whatever was refused or accepted, the database reopens with
    // every acknowledged transaction whole and nothing duplicated.
    let mut budget = 0u64;
    while budget < 40_000 {
        let fs = MemFs::new();
        let db = setup(&fs, 1500);
        fs.set_faults(Faults { space_left: Some(budget), ..Default::default() });
        let mut acked = 0;
        let mut n = 1;
        while n <= 30 {
            if txn(&db, n).is_err() {
                break;
            }
            acked = n;
            n += 1;
        }
        fs.set_faults(Faults::default());
        let mut refused = false;
        for m in n..n + 10 {
            match txn(&db, m) {
                Ok(_) => acked = m,
                Err(e) => {
                    assert!(matches!(e, Error::Poisoned(_)), "budget {budget}: {e}");
                    refused = true;
                    break;
                }
            }
        }
        let _ = db.close();
        let db = Db::open("/db", &key(), opts(&fs, 1500)).unwrap_or_else(|e| panic!("budget {budget}: {e}"));
        let last = check(&db, acked, n + 10, &format!("budget {budget}"));
        if !refused {
            assert_eq!(last, acked, "budget {budget}");
        }
        budget += 233;
    }
}

#[test]
fn relaxed_durability_never_lets_a_snapshot_get_ahead_of_the_log() {
    let fs = MemFs::new();
    let o = |fs: &MemFs| Options {
        durability: driftdb::Durability::RelaxedSyncEvery(std::time::Duration::from_secs(3600)),
        snapshot_every_events: 20,
        ..opts(fs, 1 << 40)
    };
    let db = Db::create("/db", &key(), o(&fs)).unwrap();
    db.create_table("t", "id", &["batch"]).unwrap();
    db.insert("t", json!({"id": "counter", "last": 0})).unwrap();
    for n in 1..=40 {
        txn(&db, n).unwrap();
    }
    db.wait_for_snapshots();
    assert!(!db.snapshots("t").unwrap().is_empty(), "automatic snapshots were taken");
    // Power loss: nothing unsynced survives.
    fs.crash();
    drop(db);
    let db = Db::open("/db", &key(), o(&fs)).unwrap();
    let n = check(&db, 0, 40, "after power loss");
    assert!(n >= 20, "the snapshot's commits were made durable first: {n}");
}
