//! Kill -9 at random moments: a child process (this test binary, re-run in
//! child mode) appends records and prints each one once it is durable; the
//! parent SIGKILLs it, reopens, and checks that every acknowledged record is
//! there, in order, that nothing else appears, and that the lock was released.
//!
//! DRIFTDB_CRASH_RUNS raises the number of kills (default 20).

mod common;
use driftdb::{FileKind, KeySource, Store, StoreOptions};
use std::io::Write;
use std::time::Duration;

const CHILD_ENV: &str = "DRIFTDB_CRASH_CHILD_DIR";

fn rec(i: u64) -> Vec<u8> {
    format!("rec-{i:08}-{}", "p".repeat((i % 97) as usize)).into_bytes()
}

/// Child mode: append forever, acknowledging each synced record on stdout.
#[test]
fn crash_child_entry() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let key = std::env::var("DRIFTDB_CRASH_CHILD_KEY").unwrap();
    let start: u64 = std::env::var("DRIFTDB_CRASH_CHILD_START").unwrap().parse().unwrap();
    let opts =
        StoreOptions { segment_size: 16 * 1024, merge_min_files: 4, small_file_bytes: 8 * 1024, ..Default::default() };
    let s = Store::open(&dir, &KeySource::key_file(&key), opts).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nCHILD-OPEN").unwrap();
    out.flush().unwrap();
    for i in start.. {
        s.append(1, FileKind::Segment, &rec(i)).unwrap();
        if i % 3 == 0 {
            s.sync().unwrap();
            writeln!(out, "ack {i}").unwrap();
            out.flush().unwrap();
        }
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_record() {
    let runs: usize = std::env::var("DRIFTDB_CRASH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let t = tempfile::tempdir().unwrap();
    let k = common::key_file(t.path(), "k", 0x77);
    let d = t.path().join("db");
    Store::create(&d, &KeySource::key_file(&k), Default::default()).unwrap().close().unwrap();
    let mut next_start = 0u64;
    let mut seed = 0x2545F4914F6CDD1Du64;
    for run in 0..runs {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let acked = common::run_child_and_kill(
            "crash_child_entry",
            &[
                (CHILD_ENV, d.to_str().unwrap()),
                ("DRIFTDB_CRASH_CHILD_KEY", k.to_str().unwrap()),
                ("DRIFTDB_CRASH_CHILD_START", &next_start.to_string()),
            ],
            Duration::from_millis(5 + seed % 120),
        );
        let acked = acked.last().map(|n| n.parse::<u64>().unwrap());
        // Reopen: the lock died with the child; every acknowledged record is there.
        let s = Store::open(&d, &KeySource::key_file(&k), StoreOptions::default()).unwrap();
        let mut got = Vec::new();
        s.read_stream(1, |_, p| {
            got.push(p.to_vec());
            Ok(())
        })
        .unwrap();
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r, &rec(i as u64), "run {run}: record {i} wrong");
        }
        if let Some(a) = acked {
            assert!(got.len() as u64 > a, "run {run}: acknowledged record {a} lost ({} present)", got.len());
        }
        next_start = got.len() as u64;
        s.close().unwrap();
    }
}
