//! Single measurements of DriftDB alone, for profiling one path at a time
//! (the comparison harness in `compare/` measures against the peers).
//!
//! ```text
//! cargo run --release --example perf_probe -- ingest DIR [DOCS]   # new database of DOCS documents (1000000), given as JSON text
//! cargo run --release --example perf_probe -- ingest-value DIR [DOCS] # the same, each document parsed by the caller first
//! cargo run --release --example perf_probe -- open DIR            # open it three times
//! cargo run --release --example perf_probe -- get DIR [DOCS]      # 400,000 point gets of random keys
//! cargo run --release --example perf_probe -- commits DIR         # single-document commits, 1 then 8 writers, 3 s each (WRITERS=n: n only)
//! cargo run --release --example perf_probe -- commits-relaxed DIR # the same without an fsync per commit
//! cargo run --release --example perf_probe -- rotate DIR          # full re-encryption next to the disk's write speed
//! ```
//!
//! `CACHE_MB=n` gives the block cache n MiB (64 by default).
//!
//! Documents are the harness's (about 110 bytes, table `users`, primary key
//! `id`, an index on `status`), 1,000 per commit. The master key is a raw
//! key whose byte is kept in `DIR.keyno` (7 at first; `rotate` moves it on,
//! as a retired key cannot come back). Run under `perf record` to profile.

use driftdb::crypto::keys::SecretKey;
use driftdb::{Db, Durability, KeySource, Options, Pk, RotateOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn doc_text(i: u64) -> String {
    format!(
        r#"{{"id":"user-{i:08}","email":"user{i}@example.com","status":"active","balance":{},"note":"lorem ipsum dolor sit"}}"#,
        i % 1000
    )
}

fn key_file(dir: &Path) -> PathBuf {
    dir.with_extension("keyno")
}

fn key_byte(dir: &Path) -> u8 {
    std::fs::read_to_string(key_file(dir)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(7)
}

fn key(n: u8) -> KeySource {
    KeySource::Raw(SecretKey::from_bytes([n; 32]))
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(what), Some(dir)) = (args.get(1), args.get(2)) else {
        return Err("usage: perf_probe (ingest|ingest-value|open|get|commits|commits-relaxed|rotate) DIR [DOCS]".into());
    };
    let dir = PathBuf::from(dir);
    let docs: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    // CACHE_MB=n: a block cache of n MiB instead of the default.
    let cache_bytes = std::env::var("CACHE_MB").ok().and_then(|s| s.parse::<u64>().ok()).map(|mb| mb << 20);
    let opts = Options {
        resume_rotation: false,
        cache_bytes: cache_bytes.unwrap_or(Options::default().cache_bytes),
        ..Options::default()
    };
    match what.as_str() {
        "ingest" | "ingest-value" => {
            let parsed = what == "ingest-value";
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_file(key_file(&dir));
            let db = Db::create(&dir, &key(7), opts)?;
            db.create_table("users", "id", &["status"])?;
            let t = Instant::now();
            let mut i = 0;
            while i < docs {
                let end = (i + 1000).min(docs);
                db.write(|w| {
                    for j in i..end {
                        if parsed {
                            let v =
                                serde_json::from_str(&doc_text(j)).map_err(|e| driftdb::Error::Query(e.to_string()))?;
                            w.insert("users", v)?;
                        } else {
                            w.insert_json("users", doc_text(j))?;
                        }
                    }
                    Ok(())
                })?;
                i = end;
            }
            let s = t.elapsed().as_secs_f64();
            println!("ingest {docs} documents: {s:.3} s = {:.0} docs/s", docs as f64 / s);
            db.close()?;
        }
        "open" => {
            for _ in 0..3 {
                let t = Instant::now();
                let db = Db::open(&dir, &key(key_byte(&dir)), opts.clone())?;
                println!("open: {:.3} s", t.elapsed().as_secs_f64());
                db.close()?;
            }
        }
        "get" => {
            let db = Db::open(&dir, &key(key_byte(&dir)), opts)?;
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let n = 400_000;
            let t = Instant::now();
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let k = Pk::Str(format!("user-{:08}", x % docs).into());
                if db.get("users", &k)?.is_none() {
                    return Err(format!("row {k} is missing").into());
                }
            }
            println!("get: {:.0} gets/s", n as f64 / t.elapsed().as_secs_f64());
        }
        "commits" | "commits-relaxed" => {
            let mut o = opts;
            if what == "commits-relaxed" {
                o.durability = Durability::RelaxedSyncEvery(Duration::from_millis(100));
            }
            let db = Db::open(&dir, &key(key_byte(&dir)), o)?;
            // Keys past any earlier run's.
            let next = AtomicU64::new(db.latest_seq() + 1_000_000_000);
            let ws: Vec<usize> = match std::env::var("WRITERS") {
                Ok(w) => vec![w.parse().map_err(|_| format!("WRITERS={w:?} is not a number"))?],
                Err(_) => vec![1, 8],
            };
            for writers in ws {
                let stop = Instant::now() + Duration::from_secs(3);
                let done = AtomicU64::new(0);
                let t = Instant::now();
                std::thread::scope(|s| -> Res<()> {
                    let hs: Vec<_> = (0..writers)
                        .map(|_| {
                            s.spawn(|| -> Res<()> {
                                while Instant::now() < stop {
                                    let i = next.fetch_add(1, Ordering::Relaxed);
                                    db.insert_json("users", doc_text(i))?;
                                    done.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(())
                            })
                        })
                        .collect();
                    for h in hs {
                        h.join().map_err(|_| "a writer panicked")??;
                    }
                    Ok(())
                })?;
                let r = done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();
                println!("{writers} writers: {r:.0} commits/s");
            }
            db.close()?;
        }
        "rotate" => {
            let n = key_byte(&dir);
            let db = Db::open(&dir, &key(n), opts)?;
            let next = n.checked_add(1).ok_or("out of key bytes: ingest again")?;
            let bytes: u64 = db.rotation_status().keys.iter().map(|v| v.bytes).sum();
            let p = dir.join("seqwrite.tmp");
            let buf = vec![0x5au8; 1 << 20];
            let t = Instant::now();
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&p)?;
                let mut written = 0;
                while written < bytes {
                    f.write_all(&buf)?;
                    written += buf.len() as u64;
                }
                f.sync_all()?;
            }
            let disk = bytes as f64 / t.elapsed().as_secs_f64();
            std::fs::remove_file(&p)?;
            let t = Instant::now();
            db.rotate_master_key(&key(next), RotateOptions { background: false, ..Default::default() })?;
            std::fs::write(key_file(&dir), next.to_string())?;
            db.resume_rotation(None, |_| {})?;
            let reenc = db.rotation_status().rotation.bytes_total as f64 / t.elapsed().as_secs_f64();
            println!("disk {:.0} MB/s, re-encryption {:.0} MB/s, ratio {:.2}", disk / 1e6, reenc / 1e6, reenc / disk);
            db.close()?;
        }
        other => return Err(format!("unknown measurement {other:?}").into()),
    }
    Ok(())
}
