//! Durable commits per second with 1, 2, 8 and 32 writer threads, each
//! commit one ~110-byte document, fsynced before `commit` returns (group
//! commit lets concurrent committers share an fsync). The database lives in
//! a temporary directory on the disk `TMPDIR` points to.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use driftdb::{Db, KeySource, Options};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn key() -> KeySource {
    KeySource::Raw(driftdb::crypto::keys::SecretKey::from_bytes([9; 32]))
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::create(tmp.path().join("db"), &key(), Options::default()).unwrap();
    db.create_table("users", "id", &["status"]).unwrap();
    let next = AtomicU64::new(0);
    let mut g = c.benchmark_group("durable_commits");
    g.sample_size(10).measurement_time(Duration::from_secs(6)).warm_up_time(Duration::from_secs(1));
    for writers in [1u64, 2, 8, 32] {
        // One "iteration" is one commit; criterion reports commits/s.
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(format!("{writers}_writers")), &writers, |b, &w| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(w);
                let t0 = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..w {
                        s.spawn(|| {
                            for _ in 0..per {
                                let i = next.fetch_add(1, Ordering::Relaxed);
                                db.insert(
                                    "users",
                                    serde_json::json!({
                                        "id": format!("user-{i:08}"), "email": format!("user{i}@example.com"),
                                        "status": "active", "balance": i % 1000, "note": "lorem ipsum dolor sit"
                                    }),
                                )
                                .unwrap();
                            }
                        });
                    }
                });
                // Scale to the requested count (threads ran per * w commits).
                t0.elapsed().mul_f64(iters as f64 / (per * w) as f64)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
