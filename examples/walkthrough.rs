//! A walkthrough on a fresh temporary database with the example key from
//! `keys-example/`: init, ingest, transactions, time travel, history,
//! snapshots, compaction, a key rotation with background re-encryption,
//! verify, and what happens with a wrong key, a flipped byte, a torn write
//! and an older keyring put back.
//!
//! Run with `cargo run --example walkthrough`.

use driftdb::query::parse_one;
use driftdb::{Db, Error, Isolation, KeySource, Options, Outcome, Pk, StoreOptions};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--die-mid-write" {
        return die_mid_write(Path::new(&args[2]), Path::new(&args[3]));
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");

    step("key", "copy keys-example/example-master.key (examples only!) and make it private (0600)");
    let key_path = tmp.path().join("master.key");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("keys-example/example-master.key"), &key_path)?;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    let key = KeySource::key_file(&key_path);

    step("init", &format!("create a database in {}", dir.display()));
    let opts =
        Options { store: StoreOptions { segment_size: 256 * 1024, ..StoreOptions::default() }, ..Options::default() };
    let db = Db::create(&dir, &key, opts.clone())?;
    println!("  database id {}", hex(&db.store().db_id()));
    run(&db, "CREATE TABLE users (pk=id, INDEX(status))")?;

    step("ingest", "20,000 documents, 1,000 per commit; segments roll at 256 KiB, each under its own data key");
    for batch in 0..20u32 {
        db.write(|w| {
            for i in batch * 1000..(batch + 1) * 1000 {
                w.insert(
                    "users",
                    json!({"id": format!("user-{i:08}"), "email": format!("user{i}@example.com"), "status": "active", "balance": i % 1000}),
                )?;
            }
            Ok(())
        })?;
    }
    let before_changes = db.latest_seq();
    println!("  latest sequence number: {before_changes}");

    step("change", "patch and soft delete; every change is a new event, nothing is overwritten");
    run(&db, r#"PATCH users KEY "user-00000007" SET {"status": "suspended", "balance": null}"#)?;
    run(&db, r#"SOFT DELETE FROM users KEY "user-00000042""#)?;
    run(&db, r#"PATCH users KEY "user-00000007" SET {"status": "active", "note": "appeal granted"}"#)?;
    for i in 100..110 {
        db.patch(
            "users",
            &Pk::Str(format!("user-{i:08}").into()),
            json!({"status": "closed"}).as_object().cloned().unwrap_or_default(),
        )?;
    }

    step("transaction", "two transactions add to one balance; the first to commit wins, the other retries");
    let k = Pk::Str("user-00000001".into());
    let add = |t: &mut driftdb::Txn<'_>, n: i64| -> driftdb::Result<()> {
        let b = t.get("users", &k)?.and_then(|d| d["balance"].as_i64()).unwrap_or(0);
        t.patch("users", &k, json!({"balance": b + n}).as_object().cloned().unwrap_or_default())
    };
    let mut t1 = db.begin(Isolation::Serializable);
    let mut t2 = db.begin(Isolation::Serializable);
    add(&mut t1, 10)?;
    add(&mut t2, 20)?;
    println!("  t1 committed at seq {}", t1.commit()?);
    match t2.commit() {
        Err(e @ Error::Conflict(_)) => println!("  t2: {e}"),
        other => return Err(format!("expected a conflict, got {other:?}").into()),
    }
    let mut t2 = db.begin(Isolation::Serializable);
    add(&mut t2, 20)?;
    println!("  t2 retried, committed at seq {}", t2.commit()?);
    run(&db, r#"SELECT id, balance FROM users WHERE id = "user-00000001""#)?;
    run(
        &db,
        r#"BEGIN ISOLATION LEVEL SERIALIZABLE
           PATCH users KEY "user-00000002" SET {"balance": 0}
           PATCH users KEY "user-00000003" SET {"balance": 5}
           COMMIT"#,
    )?;

    step("time travel", "the same query now and AS OF the sequence number before the changes");
    run(&db, "SELECT status, COUNT(*) FROM users GROUP BY status ORDER BY status")?;
    run(
        &db,
        &format!("SELECT status, COUNT(*) FROM users AS OF @seq:{before_changes} GROUP BY status ORDER BY status"),
    )?;
    run(&db, "SELECT id, status, balance FROM users WHERE status = 'closed' LIMIT 3")?;

    step("drift", "a row's whole history");
    run(&db, r#"SHOW DRIFT users KEY "user-00000007""#)?;

    step("snapshot", "snapshots bound the replay for reads of the present and the past");
    run(&db, "SNAPSHOT users")?;

    step("compact", "fold history older than a retention horizon; later history is untouched");
    run(&db, &format!("COMPACT users BEFORE @seq:{before_changes}"))?;
    match db.execute_stmt(&parse_one(&format!("SELECT COUNT(*) FROM users AS OF @seq:{}", before_changes - 1))?) {
        Err(e) => println!("    reading before the horizon: {e}"),
        Ok(_) => return Err("a read before the horizon succeeded".into()),
    }
    run(&db, r#"SHOW DRIFT users KEY "user-00000007""#)?;
    db.close()?;
    let db = Db::open(&dir, &key, opts.clone())?;
    println!(
        "  reopened: {} users now, {} as of @seq:{before_changes}",
        db.scan("users", None)?.len(),
        db.scan("users", Some(&driftdb::query::ast::AsOf::Seq(before_changes)))?.len()
    );
    list_files(&db);

    step("rotate", "a new master key: re-wrap at once, then re-encrypt every file in the background");
    let new_key_path = tmp.path().join("master-2.key");
    let fresh = driftdb::crypto::keys::SecretKey::random()?;
    let hex_key: String = fresh.expose().iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&new_key_path, hex_key + "\n")?;
    std::fs::set_permissions(&new_key_path, std::fs::Permissions::from_mode(0o600))?;
    let old_key = key;
    let key = KeySource::key_file(&new_key_path);
    let old_files: Vec<String> = db.store().files().iter().map(|f| f.name.clone()).collect();
    let version = db.rotate_master_key(
        &key,
        driftdb::RotateOptions { throttle_bytes_per_sec: Some(4 << 20), ..Default::default() },
    )?;
    println!("  master key version {version} is active; re-encryption runs in the background");
    // Reads and writes go on meanwhile.
    run(&db, r#"INSERT INTO users {"id": "user-during-rotation", "status": "active"}"#)?;
    run(&db, &format!("SELECT COUNT(*) FROM users AS OF @seq:{before_changes}"))?;
    let st = db.rotation_status();
    println!(
        "  progress: {} ({}/{} files, {}/{} bytes)",
        st.rotation.state,
        st.rotation.files_done,
        st.rotation.files_total,
        st.rotation.bytes_done,
        st.rotation.bytes_total
    );
    db.wait_for_rotation()?;
    let st = db.rotation_status();
    println!("  rotation {}: {}/{} files", st.rotation.state, st.rotation.files_done, st.rotation.files_total);
    for k in &st.keys {
        if k.files == 0 {
            println!(
                "  key version {}: {}; no live file is encrypted under key version {}",
                k.version, k.state, k.version
            );
        } else {
            println!("  key version {}: {}; {} files, {} bytes", k.version, k.state, k.files, k.bytes);
        }
    }
    let survivors = db.store().files().iter().filter(|f| old_files.contains(&f.name)).count();
    println!("  files from before the rotation still on disk: {survivors}");
    list_files(&db);
    db.close()?;
    match Db::open(&dir, &old_key, opts.clone()) {
        Err(e @ Error::KeyRetired { .. }) => println!("  the old key: {e} (CLI exit code {})", e.exit_code()),
        Err(e) => return Err(e.into()),
        Ok(_) => return Err("the retired key still opens the database".into()),
    }
    let db = Db::open(&dir, &key, opts.clone())?;
    for e in db.store().audit_log()?.0.iter().filter(|e| e.kind != "reencrypt-file") {
        println!("  audit #{} {} {}", e.seq, e.kind, e.detail);
    }
    db.close()?;

    step("at rest", "no plaintext on disk: search every file for an e-mail address we stored");
    let mut found = false;
    for e in std::fs::read_dir(&dir)? {
        let bytes = std::fs::read(e?.path())?;
        found |= bytes.windows(17).any(|w| w == b"user7@example.com");
    }
    println!("  'user7@example.com' found on disk: {found}");

    step("verify", "full scrub under the key");
    let store = driftdb::Store::open(&dir, &key, StoreOptions { read_only: true, ..StoreOptions::default() })?;
    let r = store.verify();
    println!(
        "  {} files, {} frames, {} bytes checked: {}",
        r.files_checked,
        r.frames_checked,
        r.bytes_checked,
        ok(r.ok)
    );
    drop(store);

    step("wrong key", "a wrong key fails fast and writes nothing");
    let wrong = KeySource::Raw(driftdb::crypto::keys::SecretKey::random()?);
    match Db::open(&dir, &wrong, opts.clone()) {
        Err(e @ Error::WrongKey(_)) => println!("  refused: {e} (CLI exit code {})", e.exit_code()),
        Err(e) => return Err(e.into()),
        Ok(_) => return Err("a wrong key opened the database".into()),
    }

    step("tamper", "flip one byte in a segment: verify names the file and the offset");
    let seg = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .ok_or("no segment")?;
    let original = std::fs::read(&seg)?;
    let mut bad = original.clone();
    bad[original.len() / 2] ^= 0x20;
    std::fs::write(&seg, &bad)?;
    let store = driftdb::Store::open(&dir, &key, StoreOptions { read_only: true, ..StoreOptions::default() })?;
    for p in store.verify().problems {
        println!("  PROBLEM {} at offset {}: {}", p.file, p.offset, p.problem);
    }
    drop(store);
    std::fs::write(&seg, &original)?;

    step("crash", "a process dies mid-write; the torn tail is cut off on the next open");
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg("--die-mid-write")
        .arg(&dir)
        .arg(&new_key_path)
        .status()?;
    println!("  writer process exited without closing ({status})");
    let db = Db::open(&dir, &key, opts.clone())?;
    for e in db.store().recovery_events() {
        println!("  recovery: {e}");
    }
    println!("  {} users; the committed insert survived, the torn write is gone", db.scan("users", None)?.len());
    run(&db, r#"SELECT id FROM users WHERE id = "user-crash""#)?;
    db.close()?;

    step("rollback", "an older keyring put back beside newer files is refused, and nothing is deleted");
    let old_keyring = std::fs::read(dir.join("keyring"))?;
    let db = Db::open(&dir, &key, opts.clone())?;
    run(&db, r#"INSERT INTO users {"id": "user-late", "status": "active"}"#)?;
    db.close()?;
    let new_keyring = std::fs::read(dir.join("keyring"))?;
    std::fs::write(dir.join("keyring"), &old_keyring)?;
    match Db::open(&dir, &key, opts.clone()) {
        Err(e) if e.is_integrity() => println!("  refused: {e} (CLI exit code {})", e.exit_code()),
        Err(e) => return Err(e.into()),
        Ok(_) => return Err("an older keyring beside newer files opened".into()),
    }
    std::fs::write(dir.join("keyring"), &new_keyring)?;
    let db = Db::open(&dir, &key, opts.clone())?;
    let generation = db.keyring_generation();
    let late = db.get("users", &Pk::Str("user-late".into()))?.is_some();
    println!("  the newer keyring back: user-late is {}", if late { "there" } else { "MISSING" });
    db.close()?;
    match Db::open(&dir, &key, Options { expect_generation: Some(generation + 1), ..opts.clone() }) {
        Err(e @ Error::RolledBack { .. }) => println!("  pinned to a newer generation: {e}"),
        Err(e) => return Err(e.into()),
        Ok(_) => return Err("a keyring older than the pinned generation opened".into()),
    }

    step("done", "the temporary directory is removed on exit");
    Ok(())
}

/// Child mode for the crash step: commit an insert, append half a frame by hand, exit without closing.
fn die_mid_write(dir: &Path, key: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let db = Db::open(dir, &KeySource::key_file(key), Options::default())?;
    db.insert("users", json!({"id": "user-crash", "status": "active"}))?;
    let active = db.store().stream_files(driftdb::db::WAL_STREAM).last().map(|f| dir.join(&f.name)).ok_or("no file")?;
    // What a write cut short by power loss leaves: the start of a frame.
    let mut f = std::fs::OpenOptions::new().append(true).open(active)?;
    std::io::Write::write_all(&mut f, &[0x41, 0x00, 0x00, 0x00, 0x00, 0x13, 0x37])?;
    std::process::exit(0); // no destructors run: the file stays active, the OS drops the lock
}

/// Run one statement and print what it returns.
fn run(db: &Db, q: &str) -> Result<(), Box<dyn std::error::Error>> {
    println!("  > {q}");
    db.execute_each(q, |o| match o {
        Outcome::Committed(seq) => println!("    ok (seq {seq})"),
        Outcome::Began(iso) => println!("    begin ({})", iso.as_str()),
        Outcome::Staged => println!("    ok (pending commit)"),
        Outcome::RolledBack => println!("    rolled back"),
        Outcome::Expected(v) => println!("    ok (expectation holds: {v})"),
        Outcome::Snapshot(seq) => println!("    snapshot at seq {seq}"),
        Outcome::Compacted(h) => println!("    history up to seq {h} folded"),
        Outcome::Rows(rows) => rows.iter().for_each(|r| println!("    {r}")),
        Outcome::Drift(h) => h.iter().for_each(|e| println!("    seq {} {} {:<11} {}", e.seq, e.time, e.op, e.doc)),
        Outcome::Tables(t) => t.iter().for_each(|d| println!("    {} (pk={}, indexes {:?})", d.name, d.pk, d.indexes)),
    })?;
    Ok(())
}

fn step(name: &str, what: &str) {
    println!("\n== {name}: {what}");
}

fn ok(b: bool) -> &'static str {
    if b { "OK" } else { "PROBLEMS" }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn list_files(db: &Db) {
    println!("  {:<22} {:<9} {:>8} {:>10} {:>7}", "file", "kind", "frames", "bytes", "master");
    for f in db.store().files() {
        let (frames, len) = match f.state {
            driftdb::format::keyring::FileState::Sealed { frames, len, .. } => (frames, len),
            driftdb::format::keyring::FileState::Active => (0, 0),
        };
        println!("  {:<22} {:<9} {:>8} {:>10} {:>7}", f.name, format!("{:?}", f.kind), frames, len, f.kek_version);
    }
}
