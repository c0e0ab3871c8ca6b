//! Table benchmarks: durable batch ingest (1,000 documents per commit), point
//! get by primary key, `AS OF` a random past sequence number for a random
//! key, and open time, over a table of DRIFTDB_BENCH_EVENTS events
//! (default 1,000,000) of ~110-byte documents.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use driftdb::{Db, KeySource, Options, Pk};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn doc(i: u64) -> serde_json::Value {
    serde_json::json!({
        "id": format!("user-{i:08}"), "email": format!("user{i}@example.com"),
        "status": "active", "balance": i % 1000, "note": "lorem ipsum dolor sit"
    })
}

fn key() -> KeySource {
    KeySource::Raw(driftdb::crypto::keys::SecretKey::from_bytes([5; 32]))
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

fn bench(c: &mut Criterion) {
    let n: u64 = std::env::var("DRIFTDB_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let db = Db::create(&dir, &key(), Options::default()).unwrap();
    db.create_table("users", "id", &["status"]).unwrap();
    let t0 = Instant::now();
    let mut next = 0u64;
    while next < n {
        db.write(|w| {
            for i in next..(next + 1000).min(n) {
                w.insert("users", doc(i))?;
            }
            Ok(())
        })
        .unwrap();
        next = (next + 1000).min(n);
    }
    eprintln!(
        "setup: {n} documents ingested in {:.1} s ({:.0} docs/s)",
        t0.elapsed().as_secs_f64(),
        n as f64 / t0.elapsed().as_secs_f64()
    );

    let mut g = c.benchmark_group("tables");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("ingest_1000_per_commit", |b| {
        b.iter(|| {
            db.write(|w| {
                for i in next..next + 1000 {
                    w.insert("users", doc(i))?;
                }
                Ok(())
            })
            .unwrap();
            next += 1000;
        })
    });
    g.throughput(Throughput::Elements(1));
    let mut rng = Rng(0x1234_5678);
    g.bench_function("point_get", |b| {
        b.iter(|| {
            let k = Pk::Str(format!("user-{:08}", rng.next() % n).into());
            black_box(db.get("users", &k).unwrap());
        })
    });
    let latest = db.latest_seq();
    g.bench_function("as_of_random_seq_random_key", |b| {
        b.iter(|| {
            let i = rng.next() % n;
            // Row i is inserted by commit i / 1000 (seq i + 2) and visible
            // from the end of that commit on.
            let visible = (i / 1000 + 1) * 1000 + 1;
            let seq = visible + rng.next() % (latest - visible + 1);
            let v = db.get_as_of("users", &Pk::Str(format!("user-{i:08}").into()), seq).unwrap();
            assert!(v.is_some());
            black_box(v);
        })
    });
    g.finish();
    db.close().unwrap();

    let mut g = c.benchmark_group("tables_open");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("open", |b| {
        b.iter(|| {
            let db = Db::open(&dir, &key(), Options::default()).unwrap();
            black_box(db.latest_seq());
            db.close().unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
