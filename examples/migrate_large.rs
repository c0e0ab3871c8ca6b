//! A migration on a large table: how long it takes, what it does to a
//! concurrent reader's latency, and to the process's memory.
//!
//! ```text
//! cargo run --release --example migrate_large -- [ROWS]   (default 1000000)
//! ```
//!
//! Ingests ROWS documents of about 110 bytes (1,000 per commit), then runs
//! one migration file (pre-condition, ADD COLUMN with a default, RENAME
//! COLUMN, CREATE INDEX, post-conditions) through `driftdb::migrate::up`,
//! while a reader thread does point gets of random keys. Prints the
//! migration's time, the reader's latency (median, p99, max) while idle and
//! while the migration runs, and resident memory before and after.

use driftdb::crypto::keys::SecretKey;
use driftdb::{Db, KeySource, Options, Pk};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn rss_mib(field: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

/// Point gets of pseudo-random keys until `stop`; latencies in ns.
fn reader(db: Arc<Db>, rows: u64, stop: Arc<AtomicBool>) -> Vec<u64> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut lat = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = Pk::Str(format!("user-{:08}", x % rows).into());
        let t = Instant::now();
        let got = db.get("users", &k);
        lat.push(t.elapsed().as_nanos() as u64);
        assert!(matches!(got, Ok(Some(_))), "reader lost a row: {got:?}");
        std::thread::sleep(Duration::from_micros(200));
    }
    lat
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rows: u64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1_000_000);
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("db");
    let key = KeySource::Raw(SecretKey::from_bytes([42; 32]));
    let db = Arc::new(Db::create(&dir, &key, Options::default())?);
    db.create_table("users", "id", &["status"])?;
    let statuses = ["active", "suspended", "closed"];
    let t = Instant::now();
    for start in (0..rows).step_by(1000) {
        db.write(|w| {
            for i in start..(start + 1000).min(rows) {
                w.insert(
                    "users",
                    serde_json::json!({
                        "id": format!("user-{i:08}"), "email": format!("user{i}@example.com"),
                        "status": statuses[(i % 3) as usize], "balance": i % 1000, "note": "lorem ipsum dolor sit"
                    }),
                )?;
            }
            Ok(())
        })?;
    }
    println!("ingested {rows} rows in {:.1} s", t.elapsed().as_secs_f64());
    let migs = tmp.path().join("migrations");
    std::fs::create_dir(&migs)?;
    std::fs::write(
        migs.join("0001_tiers.driftql"),
        format!(
            "EXPECT (SELECT COUNT(*) FROM users WHERE tier IS NOT NULL) = 0\n\
             ALTER TABLE users ADD COLUMN tier DEFAULT \"free\"\n\
             ALTER TABLE users RENAME COLUMN note TO memo\n\
             CREATE INDEX ON users (tier)\n\
             EXPECT (SELECT COUNT(*) FROM users WHERE tier = \"free\") = {rows}\n\
             EXPECT (SELECT COUNT(*) FROM users WHERE note IS NOT NULL) = 0\n"
        ),
    )?;
    let rss_before = rss_mib("VmRSS:");

    let stop = Arc::new(AtomicBool::new(false));
    let h = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || reader(db, rows, stop))
    };
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let mut idle = h.join().map_err(|_| "reader panicked")?;

    let stop = Arc::new(AtomicBool::new(false));
    let h = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || reader(db, rows, stop))
    };
    let t = Instant::now();
    let reports = driftdb::migrate::up(&db, &migs, None, false)?;
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut during = h.join().map_err(|_| "reader panicked")?;
    let rss_after = rss_mib("VmRSS:");

    let r = &reports[0];
    println!(
        "migration {} on {rows} rows: {:.2} s ({} schema changes, {} checks, rows changed {:?})",
        r.file,
        took.as_secs_f64(),
        r.schema_changes,
        r.checks,
        r.rows_changed
    );
    println!(
        "reader point gets, idle:           n={:>6} median {:>7.1} µs  p99 {:>8.1} µs  max {:>9.1} µs",
        idle.len(),
        pct(&mut idle, 0.5),
        pct(&mut idle, 0.99),
        pct(&mut idle, 1.0)
    );
    println!(
        "reader point gets, during it:      n={:>6} median {:>7.1} µs  p99 {:>8.1} µs  max {:>9.1} µs",
        during.len(),
        pct(&mut during, 0.5),
        pct(&mut during, 0.99),
        pct(&mut during, 1.0)
    );
    println!(
        "resident memory: {rss_before:.0} MiB before, {rss_after:.0} MiB after, peak {:.0} MiB",
        rss_mib("VmHWM:")
    );
    let got = db.get("users", &Pk::Str("user-00000001".into()))?;
    println!("a row after: {}", got.map(|v| v.to_string()).unwrap_or_default());
    Ok(())
}
