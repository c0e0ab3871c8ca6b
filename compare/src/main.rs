//! DriftDB side by side with SQLite and SQLCipher, on the same machine in the
//! same run, and DriftDB's own figures that have no peer (time travel, open
//! time, key rotation against the disk's speed).
//!
//! ```sh
//! cd compare && cargo run --release -- --runs 3
//! ```
//!
//! Every engine stores the same ~110-byte JSON documents, keyed by `id`, with
//! an index on `status`; SQLite and SQLCipher keep them as JSON text in a
//! table with a primary key and an expression index, journal in WAL mode with
//! `synchronous=FULL`. SQLCipher is keyed with a raw 256-bit key (no PBKDF2),
//! as DriftDB is (no Argon2): both figures are "after the KDF". Each workload
//! runs on every engine in turn within a run; the table gives medians over
//! the runs, and ratios are taken within each run before their median.

use driftdb::{Db, KeySource, Options, Pk, RotateOptions};
use rusqlite::{Connection, params};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

type Res<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SQLCIPHER_KEY: &str = "x'2DD29CA851E7B56E4697B0E1F08507293D761A05CE4D1B628663F411A8086D99'";

struct Args {
    docs: u64,
    runs: usize,
    gets: u64,
    commit_secs: f64,
    out: Option<PathBuf>,
    dir: Option<PathBuf>,
}

fn parse_args() -> Res<Args> {
    let mut a = Args { docs: 1_000_000, runs: 3, gets: 200_000, commit_secs: 3.0, out: None, dir: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--docs" => a.docs = val()?.parse()?,
            "--runs" => a.runs = val()?.parse()?,
            "--gets" => a.gets = val()?.parse()?,
            "--commit-secs" => a.commit_secs = val()?.parse()?,
            "--out" => a.out = Some(val()?.into()),
            "--dir" => a.dir = Some(val()?.into()),
            "-h" | "--help" => {
                println!(
                    "driftdb-compare [--docs N (1000000)] [--runs R (3)] [--gets N (200000)] \
                     [--commit-secs S (3)] [--out FILE.md] [--dir DIR (a temporary directory)]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    if a.docs < 10_000 || a.runs == 0 {
        return Err("--docs must be at least 10000 and --runs at least 1".into());
    }
    Ok(a)
}

/// Document `i`, as the JSON text every engine is given.
fn doc_text(i: u64) -> String {
    format!(
        r#"{{"id":"user-{i:08}","email":"user{i}@example.com","status":"active","balance":{},"note":"lorem ipsum dolor sit"}}"#,
        i % 1000
    )
}

fn key_of(i: u64) -> String {
    format!("user-{i:08}")
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

fn percentile(v: &mut [Duration], p: f64) -> f64 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

// ---------------------------------------------------------------- engines

#[derive(Clone, Copy, PartialEq)]
enum Peer {
    Sqlite,
    Sqlcipher,
}

impl Peer {
    fn connect(self, path: &Path) -> Res<Connection> {
        let c = Connection::open(path)?;
        if self == Peer::Sqlcipher {
            c.pragma_update(None, "key", SQLCIPHER_KEY)?;
        }
        c.busy_timeout(Duration::from_secs(60))?;
        c.pragma_update(None, "journal_mode", "WAL")?;
        c.pragma_update(None, "synchronous", "FULL")?;
        Ok(c)
    }

    fn create(self, path: &Path) -> Res<Connection> {
        let c = self.connect(path)?;
        c.execute_batch(
            "CREATE TABLE users (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
             CREATE INDEX users_status ON users (json_extract(doc, '$.status'));",
        )?;
        if self == Peer::Sqlcipher {
            let v: String = c.query_row("PRAGMA cipher_version", [], |r| r.get(0))?;
            if v.is_empty() {
                return Err("SQLCipher is not active (PRAGMA cipher_version is empty)".into());
            }
        }
        Ok(c)
    }
}

fn drift_key() -> KeySource {
    KeySource::Raw(driftdb::crypto::keys::SecretKey::from_bytes([7; 32]))
}

fn drift_key_n(n: u8) -> KeySource {
    KeySource::Raw(driftdb::crypto::keys::SecretKey::from_bytes([n; 32]))
}

fn drift_opts() -> Options {
    Options { resume_rotation: false, ..Options::default() }
}

/// Batch ingest, 1,000 documents per durable commit: documents per second.
fn ingest_drift(db: &Db, docs: u64) -> Res<f64> {
    let t = Instant::now();
    let mut i = 0;
    while i < docs {
        let end = (i + 1000).min(docs);
        db.write(|w| {
            for j in i..end {
                w.insert_json("users", doc_text(j))?;
            }
            Ok(())
        })?;
        i = end;
    }
    Ok(docs as f64 / t.elapsed().as_secs_f64())
}

fn ingest_peer(c: &mut Connection, docs: u64) -> Res<f64> {
    let t = Instant::now();
    let mut i = 0;
    while i < docs {
        let end = (i + 1000).min(docs);
        let tx = c.transaction()?;
        {
            let mut st = tx.prepare_cached("INSERT INTO users (id, doc) VALUES (?1, ?2)")?;
            for j in i..end {
                st.execute(params![key_of(j), doc_text(j)])?;
            }
        }
        tx.commit()?;
        i = end;
    }
    Ok(docs as f64 / t.elapsed().as_secs_f64())
}

/// Point gets of random keys: gets per second. DriftDB returns the parsed
/// document; the peers return its JSON text.
fn gets_drift(db: &Db, docs: u64, n: u64, seed: u64) -> Res<f64> {
    let mut rng = Rng(seed);
    let t = Instant::now();
    for _ in 0..n {
        let k = Pk::Str(key_of(rng.next() % docs).into());
        if db.get("users", &k)?.is_none() {
            return Err(format!("DriftDB lost {k:?}").into());
        }
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn gets_peer(c: &Connection, docs: u64, n: u64, seed: u64) -> Res<f64> {
    let mut rng = Rng(seed);
    let mut st = c.prepare_cached("SELECT doc FROM users WHERE id = ?1")?;
    let t = Instant::now();
    for _ in 0..n {
        let k = key_of(rng.next() % docs);
        let d: String = st.query_row(params![k], |r| r.get(0))?;
        std::hint::black_box(d);
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Durable single-document commits from one thread per writer state in
/// `writers` for `secs` (each `step` is one commit): commits per second.
fn commits_per_sec<W: Send>(writers: Vec<W>, secs: f64, step: impl Fn(&mut W) -> Res<()> + Sync) -> Res<f64> {
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let done = AtomicU64::new(0);
    let t = Instant::now();
    std::thread::scope(|s| -> Res<()> {
        let hs: Vec<_> = writers
            .into_iter()
            .map(|mut w| {
                let (done, step) = (&done, &step);
                s.spawn(move || -> Res<()> {
                    while Instant::now() < stop {
                        step(&mut w)?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join().map_err(|_| "writer thread panicked")??;
        }
        Ok(())
    })?;
    Ok(done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64())
}

fn commits_drift(db: &Db, writers: usize, secs: f64, next: &AtomicU64) -> Res<f64> {
    commits_per_sec(vec![(); writers], secs, |_| {
        let i = next.fetch_add(1, Ordering::Relaxed);
        db.insert_json("users", doc_text(i))?;
        Ok(())
    })
}

fn commits_peer(peer: Peer, path: &Path, writers: usize, secs: f64, next: &AtomicU64) -> Res<f64> {
    let conns: Vec<Connection> = (0..writers).map(|_| peer.connect(path)).collect::<Res<_>>()?;
    commits_per_sec(conns, secs, |c| {
        let i = next.fetch_add(1, Ordering::Relaxed);
        c.prepare_cached("INSERT INTO users (id, doc) VALUES (?1, ?2)")?.execute(params![key_of(i), doc_text(i)])?;
        Ok(())
    })
}

/// `AS OF` a random past sequence number for random keys among `keys`
/// (each visible from `visible(i)` on): latencies.
fn as_of_drift(db: &Db, n: usize, seed: u64, key: impl Fn(u64) -> (u64, u64)) -> Res<Vec<Duration>> {
    let mut rng = Rng(seed);
    let latest = db.latest_seq();
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let (i, visible) = key(rng.next());
        let seq = visible + rng.next() % (latest - visible + 1);
        let k = Pk::Str(key_of(i).into());
        let t = Instant::now();
        let v = db.get_as_of("users", &k, seq)?;
        lat.push(t.elapsed());
        if v.is_none() {
            return Err(format!("DriftDB: {k:?} missing AS OF @seq:{seq}").into());
        }
    }
    Ok(lat)
}

/// Sequential write of `bytes` in 1 MiB writes, then fsync: bytes per second.
fn disk_write_speed(dir: &Path, bytes: u64) -> Res<f64> {
    let p = dir.join("seqwrite.tmp");
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(&p)?;
    let mut n = 0;
    while n < bytes {
        f.write_all(&buf)?;
        n += buf.len() as u64;
    }
    f.sync_all()?;
    let s = n as f64 / t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&p)?;
    Ok(s)
}

/// Random `AS OF` reads (any key, any past sequence number) for `d`: latencies.
fn reader(db: &Db, docs: u64, d: Duration, seed: u64) -> Res<Vec<Duration>> {
    let mut rng = Rng(seed);
    let latest = db.latest_seq();
    let mut lat = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < d {
        let k = Pk::Str(key_of(rng.next() % docs).into());
        let seq = 2 + rng.next() % (latest - 1);
        let t = Instant::now();
        std::hint::black_box(db.get_as_of("users", &k, seq)?);
        lat.push(t.elapsed());
    }
    Ok(lat)
}

// ---------------------------------------------------------------- one run

#[derive(Default)]
struct Figures(BTreeMap<&'static str, Vec<f64>>);

impl Figures {
    fn add(&mut self, what: &'static str, v: f64) {
        self.0.entry(what).or_default().push(v);
    }
    fn med(&self, what: &str) -> f64 {
        self.0.get(what).map(|v| median(v)).unwrap_or(f64::NAN)
    }
}

fn run(a: &Args, root: &Path, run: usize, f: &mut Figures) -> Res<()> {
    let dir = root.join(format!("run{run}"));
    std::fs::create_dir_all(&dir)?;
    let seed = 0x9E37_79B9_7F4A_7C15 ^ run as u64;
    let ddir = dir.join("driftdb");
    let paths = [(Peer::Sqlite, dir.join("sqlite.db")), (Peer::Sqlcipher, dir.join("sqlcipher.db"))];

    // 1. Batch ingest.
    let db = Db::create(&ddir, &drift_key(), drift_opts())?;
    db.create_table("users", "id", &["status"])?;
    let d = ingest_drift(&db, a.docs)?;
    f.add("ingest/DriftDB", d);
    let mut conns = Vec::new();
    for (p, path) in &paths {
        let mut c = p.create(path)?;
        let r = ingest_peer(&mut c, a.docs)?;
        f.add(if *p == Peer::Sqlite { "ingest/SQLite" } else { "ingest/SQLCipher" }, r);
        if *p == Peer::Sqlcipher {
            f.add("ingest/ratio", d / r);
        }
        conns.push(c);
    }
    eprintln!("run {run}: ingest done");

    // 2. Point gets.
    let d = gets_drift(&db, a.docs, a.gets, seed)?;
    f.add("get/DriftDB", d);
    for ((p, _), c) in paths.iter().zip(&conns) {
        let r = gets_peer(c, a.docs, a.gets, seed)?;
        f.add(if *p == Peer::Sqlite { "get/SQLite" } else { "get/SQLCipher" }, r);
        if *p == Peer::Sqlcipher {
            f.add("get/ratio", d / r);
        }
    }
    drop(conns);
    // 2b. The same with the cache sized to the data: DriftDB's block cache
    // twice its version tree, SQLCipher's page cache (`PRAGMA cache_size`)
    // twice its file (each warmed by a pass of gets first); then both given
    // a tenth of their data (DriftDB's tree, SQLCipher's file).
    let tree_bytes: u64 = db.version_tree_stats().bytes.iter().sum();
    let cipher_bytes = std::fs::metadata(&paths[1].1)?.len();
    db.close()?;
    for (name, drift_cache, cipher_cache) in
        [("get-fit", 2 * tree_bytes, 2 * cipher_bytes), ("get-small", tree_bytes / 10, cipher_bytes / 10)]
    {
        let db = Db::open(&ddir, &drift_key(), Options { cache_bytes: drift_cache.max(1 << 20), ..drift_opts() })?;
        gets_drift(&db, a.docs, a.gets, seed ^ 5)?;
        let d = gets_drift(&db, a.docs, a.gets, seed ^ 6)?;
        db.close()?;
        let c = Peer::Sqlcipher.connect(&paths[1].1)?;
        c.pragma_update(None, "cache_size", -((cipher_cache / 1024).max(1) as i64))?;
        gets_peer(&c, a.docs, a.gets, seed ^ 5)?;
        let r = gets_peer(&c, a.docs, a.gets, seed ^ 6)?;
        drop(c);
        let (kd, kc, kr) = match name {
            "get-fit" => ("get-fit/DriftDB", "get-fit/SQLCipher", "get-fit/ratio"),
            _ => ("get-small/DriftDB", "get-small/SQLCipher", "get-small/ratio"),
        };
        f.add(kd, d);
        f.add(kc, r);
        f.add(kr, d / r);
    }
    let db = Db::open(&ddir, &drift_key(), drift_opts())?;
    eprintln!("run {run}: gets done");

    // 3. AS OF at 1M events: random key, random sequence number from the
    // end of the commit that inserted it (row i is seq i + 2, commit i/1000).
    let docs = a.docs;
    let mut lat = as_of_drift(&db, 200_000, seed, |r| {
        let i = r % docs;
        (i, ((i / 1000 + 1) * 1000 + 1).min(docs + 1))
    })?;
    f.add("asof/p50", percentile(&mut lat, 0.5));
    f.add("asof/p99", percentile(&mut lat, 0.99));

    // 4. Open time after the KDF (a raw key: no Argon2), at a.docs events.
    db.close()?;
    for _ in 0..3 {
        let t = Instant::now();
        let db = Db::open(&ddir, &drift_key(), drift_opts())?;
        f.add("open", t.elapsed().as_secs_f64());
        db.close()?;
    }
    eprintln!("run {run}: AS OF and open done");
    let db = Db::open(&ddir, &drift_key(), drift_opts())?;

    // 5. History: patch every 10th row, then AS OF on patched rows, half the
    // time before the patch (the old version comes from the log on disk).
    let mut j = 0;
    while j < a.docs {
        db.write(|w| {
            for k in (j..(j + 10_000).min(a.docs)).step_by(10) {
                let mut set = serde_json::Map::new();
                set.insert("status".into(), "closed".into());
                w.patch("users", &Pk::Str(key_of(k).into()), set)?;
            }
            Ok(())
        })?;
        j += 10_000;
    }
    let mut lat = as_of_drift(&db, 20_000, seed ^ 1, |r| {
        let i = (r % (docs / 10)) * 10;
        (i, ((i / 1000 + 1) * 1000 + 1).min(docs + 1))
    })?;
    f.add("asof-hist/p50", percentile(&mut lat, 0.5));
    f.add("asof-hist/p99", percentile(&mut lat, 0.99));

    // 5b. The same reads through a cache a tenth of the version tree's
    // runs (reopened, so the cache starts cold): most of them decrypt.
    let tree_bytes: u64 = db.version_tree_stats().bytes.iter().sum();
    db.close()?;
    let small = (tree_bytes / 10).max(1 << 20);
    let db = Db::open(&ddir, &drift_key(), Options { cache_bytes: small, ..drift_opts() })?;
    let mut lat = as_of_drift(&db, 20_000, seed ^ 2, |r| {
        let i = (r % (docs / 10)) * 10;
        (i, ((i / 1000 + 1) * 1000 + 1).min(docs + 1))
    })?;
    f.add("asof-small/p50", percentile(&mut lat, 0.5));
    f.add("asof-small/p99", percentile(&mut lat, 0.99));
    f.add("asof-small/ratio", tree_bytes as f64 / small as f64);
    let cs = db.cache_stats();
    f.add("asof-small/miss", cs.misses as f64 / (cs.hits + cs.misses).max(1) as f64);
    db.close()?;
    let db = Db::open(&ddir, &drift_key(), drift_opts())?;

    // 6. Durable single-document commits, 1 and 8 writers.
    let next = AtomicU64::new(a.docs);
    for w in [1usize, 8] {
        let d = commits_drift(&db, w, a.commit_secs, &next)?;
        f.add(if w == 1 { "commit1/DriftDB" } else { "commit8/DriftDB" }, d);
        for (p, path) in &paths {
            let r = commits_peer(*p, path, w, a.commit_secs, &next)?;
            let name = match (w, p) {
                (1, Peer::Sqlite) => "commit1/SQLite",
                (1, Peer::Sqlcipher) => "commit1/SQLCipher",
                (_, Peer::Sqlite) => "commit8/SQLite",
                (_, Peer::Sqlcipher) => "commit8/SQLCipher",
            };
            f.add(name, r);
            if *p == Peer::Sqlcipher {
                f.add(if w == 1 { "commit1/ratio" } else { "commit8/ratio" }, d / r);
            }
        }
    }
    let c1 = *f.0["commit1/DriftDB"].last().unwrap_or(&f64::NAN);
    let c8 = *f.0["commit8/DriftDB"].last().unwrap_or(&f64::NAN);
    f.add("commit8/self", c8 / c1);
    eprintln!("run {run}: commits done");

    // 7. Rotation: full re-encryption next to the disk's sequential write
    // speed; a reader idle and during a background re-encryption.
    let bytes_total: u64 = db.rotation_status().keys.iter().map(|v| v.bytes).sum();
    let disk = disk_write_speed(&dir, bytes_total.max(64 << 20))?;
    let t = Instant::now();
    db.rotate_master_key(&drift_key_n(8), RotateOptions { background: false, ..Default::default() })?;
    db.resume_rotation(None, |_| {})?;
    let secs = t.elapsed().as_secs_f64();
    let reenc = db.rotation_status().rotation.bytes_total as f64 / secs;
    f.add("disk", disk / 1e6);
    f.add("reenc", reenc / 1e6);
    f.add("reenc/ratio", reenc / disk);
    let mut idle = reader(&db, a.docs, Duration::from_secs(2), seed ^ 2)?;
    db.rotate_master_key(&drift_key_n(9), RotateOptions::default())?;
    let mut during = Vec::new();
    while db.rotation_status().rotation.state == "running" {
        during.extend(reader(&db, a.docs, Duration::from_millis(100), seed ^ during.len() as u64)?);
    }
    db.wait_for_rotation()?;
    let (i99, r99) = (percentile(&mut idle, 0.99), percentile(&mut during, 0.99));
    f.add("rot/idle99", i99);
    f.add("rot/during99", r99);
    f.add("rot/ratio", r99 / i99);
    db.close()?;
    eprintln!("run {run}: rotation done ({} reads during it)", during.len());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

// ---------------------------------------------------------------- report

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let sqlite = rusqlite::version();
    format!("{cpu}, {cores} cores; SQLCipher on SQLite {sqlite}")
}

fn report(a: &Args, f: &Figures) -> String {
    let mut s = String::new();
    let n = |v: f64| {
        if v.is_nan() {
            "—".to_string()
        } else if v >= 100.0 {
            let r = v.round() as u64;
            let t = r.to_string();
            let mut out = String::new();
            for (i, c) in t.chars().enumerate() {
                if i > 0 && (t.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            out
        } else {
            format!("{v:.2}")
        }
    };
    let ok = |b: bool| if b { "met" } else { "**missed**" };
    s += &format!("Machine: {}\n\n", machine());
    s += &format!("Medians of {} runs, {} documents.\n\n", a.runs, n(a.docs as f64));
    s +=
        "| workload | DriftDB | SQLite | SQLCipher | DriftDB / SQLCipher | target | |\n|---|---|---|---|---|---|---|\n";
    for (w, label, unit, target) in [
        ("ingest", "batch ingest, 1,000 docs per commit", "docs/s", 2.0),
        ("get", "point get, random keys, default caches", "gets/s", f64::NAN),
        ("get-fit", "point get, each cache twice its data", "gets/s", 5.0),
        ("get-small", "point get, each cache a tenth of its data", "gets/s", 2.0),
        ("commit1", "durable commits, 1 writer", "commits/s", 1.0),
        ("commit8", "durable commits, 8 writers", "commits/s", f64::NAN),
    ] {
        let r = f.med(&format!("{w}/ratio"));
        let t = if target.is_nan() { "—".to_string() } else { format!("≥ {target}×") };
        let met = if target.is_nan() { String::new() } else { ok(r >= target).to_string() };
        s += &format!(
            "| {label} ({unit}) | {} | {} | {} | {:.2}× | {t} | {met} |\n",
            n(f.med(&format!("{w}/DriftDB"))),
            n(f.med(&format!("{w}/SQLite"))),
            n(f.med(&format!("{w}/SQLCipher"))),
            r
        );
    }
    s += "\nDriftDB only:\n\n| what | figure | target | |\n|---|---|---|---|\n";
    let c8 = f.med("commit8/self");
    s += &format!("| durable commits, 8 writers / 1 writer | {c8:.2}× | ≥ 5× | {} |\n", ok(c8 >= 5.0));
    let p50 = f.med("asof/p50");
    s += &format!(
        "| `AS OF` random key, random past seq, p50 / p99 | {p50:.1} µs / {:.1} µs | p50 ≤ 50 µs | {} |\n",
        f.med("asof/p99"),
        ok(p50 <= 50.0)
    );
    s += &format!(
        "| `AS OF` on rows with history (every 10th row patched), p50 / p99 | {:.1} µs / {:.1} µs | | |\n",
        f.med("asof-hist/p50"),
        f.med("asof-hist/p99")
    );
    let small = f.med("asof-small/p50");
    s += &format!(
        "| the same through a cache {:.1}× smaller than the version tree ({:.0}% of block reads missed), p50 / p99 | {small:.1} µs / {:.1} µs | p50 ≤ 200 µs at 10× | {} |\n",
        f.med("asof-small/ratio"),
        100.0 * f.med("asof-small/miss"),
        f.med("asof-small/p99"),
        // Judged only when the cache is about a tenth of the tree (a small
        // database floors the cache at 1 MiB).
        if f.med("asof-small/ratio") >= 9.5 { ok(small <= 200.0) } else { "" }
    );
    let open = f.med("open");
    s += &format!(
        "| open after the KDF (closed cleanly: no WAL to replay), {} events | {:.1} ms | ≤ 50 ms | {} |\n",
        n(a.docs as f64 + 1.0),
        open * 1000.0,
        ok(open <= 0.05)
    );
    let rr = f.med("reenc/ratio");
    s += &format!(
        "| full re-encryption / disk sequential write | {:.0} / {:.0} MB/s = {rr:.2} | ≥ 0.5 | {} |\n",
        f.med("reenc"),
        f.med("disk"),
        ok(rr >= 0.5)
    );
    let pr = f.med("rot/ratio");
    s += &format!(
        "| reader p99 during rotation / idle | {:.1} / {:.1} µs = {pr:.2} | ≤ 2 | {} |\n",
        f.med("rot/during99"),
        f.med("rot/idle99"),
        ok(pr <= 2.0)
    );
    s
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Res<()> {
    let a = parse_args()?;
    let tmp;
    let root = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            tempfile::tempdir_in(d)?
        }
        None => {
            tmp = tempfile::tempdir()?;
            tempfile::tempdir_in(tmp.path())?
        }
    };
    let mut f = Figures::default();
    for r in 0..a.runs {
        run(&a, root.path(), r, &mut f)?;
    }
    let table = report(&a, &f);
    println!("{table}");
    if let Some(out) = &a.out {
        std::fs::write(out, &table)?;
    }
    Ok(())
}
