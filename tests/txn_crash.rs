//! Kill -9 during transactions: a child process (this test binary, re-run in
//! child mode) commits multi-event transactions from four threads, each one
//! inserting a batch of rows and incrementing a shared counter (Snapshot
//! isolation, retried on conflict), and prints every acknowledged batch. The
//! parent SIGKILLs it at a random moment, reopens the database and checks
//! that every acknowledged batch is there whole, that no partial batch is
//! visible, and that the counter equals the number of batches (no
//! transaction half-applied, no lost update).
//!
//! DRIFTDB_TXN_CRASH_RUNS sets the number of kills (default 50).

mod common;
use driftdb::{Db, Error, Isolation, KeySource, Options, Pk};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

const CHILD_ENV: &str = "DRIFTDB_TXN_CRASH_CHILD_DIR";

fn options() -> Options {
    let mut o = Options { checkpoint_bytes: 64 * 1024, ..Default::default() };
    o.store.segment_size = 256 * 1024;
    o
}

/// Child mode: commit forever, acknowledging each committed batch on stdout.
#[test]
fn txn_crash_child_entry() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let key = std::env::var("DRIFTDB_TXN_CRASH_CHILD_KEY").unwrap();
    let run: u64 = std::env::var("DRIFTDB_TXN_CRASH_CHILD_RUN").unwrap().parse().unwrap();
    let db = Db::open(&dir, &KeySource::key_file(&key), options()).unwrap();
    let out = Mutex::new(std::io::stdout());
    {
        let mut o = out.lock().unwrap();
        writeln!(o, "\nCHILD-OPEN").unwrap();
        o.flush().unwrap();
    }
    std::thread::scope(|s| {
        for th in 0..4u64 {
            let (db, out) = (&db, &out);
            s.spawn(move || {
                for i in 0.. {
                    let batch = format!("{run}-{th}-{i}");
                    let size = (i % 5) + 1;
                    loop {
                        let mut t = db.begin(Isolation::Snapshot);
                        for j in 0..size {
                            t.insert("rows", json!({"id": format!("{batch}/{j}"), "batch": batch, "size": size}))
                                .unwrap();
                        }
                        let c = t.get("rows", &Pk::Str("counter".into())).unwrap().unwrap()["n"].as_u64().unwrap();
                        t.patch("rows", &Pk::Str("counter".into()), json!({"n": c + 1}).as_object().unwrap().clone())
                            .unwrap();
                        match t.commit() {
                            Ok(seq) => {
                                let mut o = out.lock().unwrap();
                                writeln!(o, "ack {batch} {seq}").unwrap();
                                o.flush().unwrap();
                                break;
                            }
                            Err(Error::Conflict(_)) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
        }
    });
}

#[test]
fn sigkill_during_transactions_keeps_every_acknowledged_one_whole_and_no_partial_one() {
    let runs: usize = std::env::var("DRIFTDB_TXN_CRASH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let t = tempfile::tempdir().unwrap();
    let k = common::key_file(t.path(), "k", 0x5a);
    let d = t.path().join("db");
    {
        let db = Db::create(&d, &KeySource::key_file(&k), options()).unwrap();
        db.create_table("rows", "id", &["batch"]).unwrap();
        db.insert("rows", json!({"id": "counter", "n": 0})).unwrap();
        db.close().unwrap();
    }
    let mut seed = 0x9E3779B97F4A7C15u64;
    let mut all_acked: Vec<String> = Vec::new();
    for run in 0..runs {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let acked = common::run_child_and_kill(
            "txn_crash_child_entry",
            &[
                (CHILD_ENV, d.to_str().unwrap()),
                ("DRIFTDB_TXN_CRASH_CHILD_KEY", k.to_str().unwrap()),
                ("DRIFTDB_TXN_CRASH_CHILD_RUN", &run.to_string()),
            ],
            Duration::from_millis(2 + seed % 150),
        );
        all_acked.extend(acked.iter().map(|a| a.split(' ').next().unwrap().to_string()));

        // Reopen: the lock died with the child.
        let db = Db::open(&d, &KeySource::key_file(&k), options()).unwrap_or_else(|e| panic!("run {run}: {e}"));
        let mut batches: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for r in db.scan("rows", None).unwrap() {
            if let Some(b) = r["batch"].as_str() {
                let e = batches.entry(b.to_string()).or_insert((0, r["size"].as_u64().unwrap()));
                e.0 += 1;
            }
        }
        for (b, (have, size)) in &batches {
            assert_eq!(have, size, "run {run}: batch {b} is partial");
        }
        for b in &all_acked {
            assert!(batches.contains_key(b), "run {run}: acknowledged batch {b} lost");
        }
        let counter = db.get("rows", &Pk::Str("counter".into())).unwrap().unwrap()["n"].as_u64().unwrap();
        assert_eq!(counter, batches.len() as u64, "run {run}: counter and batches disagree");
        db.close().unwrap();
    }
    assert!(all_acked.len() > runs, "the children committed something: {}", all_acked.len());
}
