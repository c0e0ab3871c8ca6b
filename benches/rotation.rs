//! Key rotation: full re-encryption throughput next to the disk's sequential
//! write speed (measured in the same run, same directory, with an fsync at
//! the end like every re-encrypted file), and a reader's latency during a
//! background re-encryption against idle. Medians of DRIFTDB_BENCH_RUNS runs
//! (default 3) over DRIFTDB_BENCH_DOCS documents (default 300,000).
//!
//! `cargo bench --bench rotation`

use driftdb::{Db, KeySource, Options, Pk, RotateOptions};
use std::io::Write;
use std::time::{Duration, Instant};

fn key(b: u8) -> KeySource {
    KeySource::Raw(driftdb::crypto::keys::SecretKey::from_bytes([b; 32]))
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize]
}

/// Sequential write of `bytes` in 1 MiB writes, then fsync: bytes per second.
fn disk_write_speed(dir: &std::path::Path, bytes: u64) -> f64 {
    let p = dir.join("seqwrite.tmp");
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(&p).unwrap();
    let mut n = 0;
    while n < bytes {
        f.write_all(&buf).unwrap();
        n += buf.len() as u64;
    }
    f.sync_all().unwrap();
    let s = n as f64 / t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&p).unwrap();
    s
}

/// Reads `AS OF` a random past sequence number of random keys for `d`:
/// the latency of each (these read and decrypt log records from disk).
fn reader(db: &Db, latest: u64, docs: u64, d: Duration, seed: u64) -> Vec<Duration> {
    let mut rng = Rng(seed);
    let mut lat = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < d {
        let k = Pk::Str(format!("user-{:08}", rng.next() % docs));
        let seq = 2 + rng.next() % (latest - 1);
        let t = Instant::now();
        std::hint::black_box(db.get_as_of("users", &k, seq).unwrap());
        lat.push(t.elapsed());
    }
    lat
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list
    }
    let docs: u64 = std::env::var("DRIFTDB_BENCH_DOCS").ok().and_then(|v| v.parse().ok()).unwrap_or(300_000);
    let runs: usize = std::env::var("DRIFTDB_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let o = Options { resume_rotation: false, ..Options::default() };
    let db = Db::create(&dir, &key(1), o.clone()).unwrap();
    db.create_table("users", "id", &["status"]).unwrap();
    let mut i = 0u64;
    while i < docs {
        db.write(|w| {
            for j in i..(i + 1000).min(docs) {
                w.insert(
                    "users",
                    serde_json::json!({"id": format!("user-{j:08}"), "email": format!("user{j}@example.com"),
                        "status": "active", "balance": j % 1000, "note": "lorem ipsum dolor sit"}),
                )?;
            }
            Ok(())
        })
        .unwrap();
        i += 1000;
    }
    // Some history to read in the past: patch a tenth of the rows.
    for j in (0..docs).step_by(10) {
        db.patch(
            "users",
            &Pk::Str(format!("user-{j:08}")),
            serde_json::json!({"status": "closed"}).as_object().cloned().unwrap(),
        )
        .unwrap();
    }
    db.close().unwrap();
    let mut db = Db::open(&dir, &key(1), o.clone()).unwrap();
    let latest = db.latest_seq();
    let mut k = 1u8;

    let (mut disk, mut reenc, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let (mut idle50, mut idle99, mut rot50, mut rot99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        // Re-encryption throughput, and the disk's speed right before it.
        let bytes_total: u64 = db.rotation_status().keys.iter().map(|v| v.bytes).sum();
        let d = disk_write_speed(tmp.path(), bytes_total.max(64 << 20));
        let t = Instant::now();
        db.rotate_master_key(&key(k + 1), RotateOptions { background: false, ..Default::default() }).unwrap();
        db.resume_rotation(None, |_| {}).unwrap();
        let secs = t.elapsed().as_secs_f64();
        k += 1;
        let st = db.rotation_status();
        let r = st.rotation.bytes_total as f64 / secs;
        disk.push(d / 1e6);
        reenc.push(r / 1e6);
        ratio.push(r / d);

        // A reader, idle and during a background re-encryption.
        let mut idle = reader(&db, latest, docs, Duration::from_secs(2), 7 + run as u64);
        db.rotate_master_key(&key(k + 1), RotateOptions::default()).unwrap();
        k += 1;
        let mut during = Vec::new();
        let t0 = Instant::now();
        while db.rotation_status().rotation.state == "running" {
            during.extend(reader(&db, latest, docs, Duration::from_millis(100), 99 + run as u64 + during.len() as u64));
        }
        db.wait_for_rotation().unwrap();
        eprintln!(
            "run {run}: {} files, {:.1} MB re-encrypted in {secs:.2} s; background rotation took {:.2} s, {} reads during it",
            st.rotation.files_total,
            st.rotation.bytes_total as f64 / 1e6,
            t0.elapsed().as_secs_f64(),
            during.len()
        );
        if during.len() < 10 {
            during = reader(&db, latest, docs, Duration::from_millis(10), 5);
        }
        idle50.push(percentile(&mut idle, 0.5).as_secs_f64() * 1e6);
        idle99.push(percentile(&mut idle, 0.99).as_secs_f64() * 1e6);
        rot50.push(percentile(&mut during, 0.5).as_secs_f64() * 1e6);
        rot99.push(percentile(&mut during, 0.99).as_secs_f64() * 1e6);
        db.close().unwrap();
        db = Db::open(&dir, &key(k), o.clone()).unwrap();
    }
    println!("\nmedians of {runs} runs, {docs} documents:");
    println!("| what | figure |\n|---|---|");
    println!("| disk sequential write (1 MiB writes + fsync) | {:.0} MB/s |", median(&mut disk));
    println!("| full re-encryption (read, verify, encrypt, write, fsync, swap) | {:.0} MB/s |", median(&mut reenc));
    println!("| re-encryption / disk write | {:.2} |", median(&mut ratio));
    println!(
        "| reader `AS OF` p50 idle / during rotation | {:.1} µs / {:.1} µs |",
        median(&mut idle50),
        median(&mut rot50)
    );
    println!(
        "| reader `AS OF` p99 idle / during rotation | {:.1} µs / {:.1} µs |",
        median(&mut idle99),
        median(&mut rot99)
    );
    let r99: Vec<f64> = rot99.iter().zip(&idle99).map(|(a, b)| a / b).collect();
    println!("| reader p99 during rotation / idle | {:.2} |", median(&mut r99.clone()));
    db.close().unwrap();
}
