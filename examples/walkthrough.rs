//! A walkthrough on a fresh temporary database with the example key from
//! `keys-example/`: init, ingest, reopen, read back, verify, and what
//! happens with a wrong key, a flipped byte and a torn write.
//!
//! Run with `cargo run --example walkthrough`.

use driftdb::{CreateOptions, Error, FileKind, KeySource, Store, StoreOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const EVENTS: u32 = 1;

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
    let opts = StoreOptions { segment_size: 256 * 1024, ..StoreOptions::default() };
    let store = Store::create(&dir, &key, CreateOptions { store: opts.clone(), ..Default::default() })?;
    println!("  database id {}", hex(&store.db_id()));

    step("ingest", "append 20,000 events; files roll at 256 KiB, each under its own data key");
    for i in 0..20_000u32 {
        let doc = format!(
            r#"{{"id":"user-{i:08}","email":"user{i}@example.com","status":"active","balance":{},"note":"lorem ipsum"}}"#,
            i % 1000
        );
        store.append(EVENTS, FileKind::Segment, doc.as_bytes())?;
    }
    store.sync()?;
    store.close()?;
    list_files(&Store::open(&dir, &key, StoreOptions { read_only: true, ..opts.clone() })?);

    step("reopen", "a new session never appends to an old file: its first write starts a new one");
    let store = Store::open(&dir, &key, opts.clone())?;
    let pos = store.append(EVENTS, FileKind::Segment, br#"{"id":"user-late","email":"late@example.com"}"#)?;
    store.sync()?;
    println!("  new record went to file {:016x} (frame {})", pos.file_id, pos.index);
    let mut count = 0;
    store.read_stream(EVENTS, |_, _| {
        count += 1;
        Ok(())
    })?;
    println!("  read back {count} events, every frame's CRC and tag checked");
    println!("  record by position: {}", String::from_utf8_lossy(&store.read_record(pos)?));
    store.close()?;

    step("at rest", "no plaintext on disk: search every file for an e-mail address we stored");
    let mut found = false;
    for e in std::fs::read_dir(&dir)? {
        let bytes = std::fs::read(e?.path())?;
        found |= bytes.windows(17).any(|w| w == b"user7@example.com");
    }
    println!("  'user7@example.com' found on disk: {found}");

    step("verify", "full scrub under the key");
    let store = Store::open(&dir, &key, StoreOptions { read_only: true, ..opts.clone() })?;
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
    match Store::open(&dir, &wrong, opts.clone()) {
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
    let store = Store::open(&dir, &key, StoreOptions { read_only: true, ..opts.clone() })?;
    for p in store.verify().problems {
        println!("  PROBLEM {} at offset {}: {}", p.file, p.offset, p.problem);
    }
    drop(store);
    std::fs::write(&seg, &original)?;

    step("crash", "a process dies mid-write; the torn tail is cut off on the next open");
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg("--die-mid-write")
        .arg(&dir)
        .arg(&key_path)
        .status()?;
    println!("  writer process exited without closing ({status})");
    let store = Store::open(&dir, &key, opts.clone())?;
    for e in store.recovery_events() {
        println!("  recovery: {e:?}");
    }
    let mut count = 0;
    store.read_stream(EVENTS, |_, _| {
        count += 1;
        Ok(())
    })?;
    println!("  {count} events readable; the synced record survived, the torn one is gone");
    store.close()?;

    step("done", "the temporary directory is removed on exit");
    Ok(())
}

/// Child mode for the crash step: append, sync, append half a frame by hand, and exit without closing.
fn die_mid_write(dir: &Path, key: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(dir, &KeySource::key_file(key), StoreOptions::default())?;
    store.append(EVENTS, FileKind::Segment, b"synced before the crash")?;
    store.sync()?;
    let active = store.stream_files(EVENTS).last().map(|f| dir.join(&f.name)).ok_or("no file")?;
    // What a write cut short by power loss leaves: the start of a frame.
    let mut f = std::fs::OpenOptions::new().append(true).open(active)?;
    std::io::Write::write_all(&mut f, &[0x41, 0x00, 0x00, 0x00, 0x00, 0x13, 0x37])?;
    std::process::exit(0); // no destructors run: the file stays active, the OS drops the lock
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

fn list_files(store: &Store) {
    println!("  {:<22} {:<8} {:>8} {:>10} {:>8}", "file", "kind", "frames", "bytes", "master");
    for f in store.files() {
        let (frames, len) = match f.state {
            driftdb::format::keyring::FileState::Sealed { frames, len, .. } => (frames, len),
            driftdb::format::keyring::FileState::Active => (0, 0),
        };
        println!("  {:<22} {:<8} {:>8} {:>10} {:>8}", f.name, format!("{:?}", f.kind), frames, len, f.kek_version);
    }
}
