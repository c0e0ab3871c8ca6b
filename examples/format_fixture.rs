//! Writes the small databases that `tests/format_compat.rs` opens, to check
//! that a database written by an earlier format version keeps opening.
//!
//! `cargo run --example format_fixture -- DIR` creates `DIR/key-db` (master
//! key `keys-example/example-master.key`, with a rotation that keeps the
//! master key and renews every data key) and `DIR/passphrase-db`
//! (passphrase `fixture passphrase one`, rotated to `fixture passphrase two`,
//! with deliberately cheap Argon2id parameters so the tests stay fast).
//! `tests/data/README.md` says at which commit each committed fixture was
//! made.

use driftdb::{Argon2Params, Db, KeySource, Options, Pk, RotateOptions, StoreOptions};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(out) = std::env::args().nth(1) else {
        return Err("usage: format_fixture DIR".into());
    };
    let out = Path::new(&out);
    std::fs::create_dir_all(out)?;
    let key_path = out.join("example-master.key");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("keys-example/example-master.key"), &key_path)?;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    let opts = Options {
        store: StoreOptions { segment_size: 16 * 1024, ..StoreOptions::default() },
        snapshot_every_events: 1_000_000,
        ..Options::default()
    };

    // A key-file database: a table with an index, every kind of event, a
    // schema change, a snapshot, a compaction and a data-key rotation.
    let key = KeySource::key_file(&key_path);
    let db = Db::create(out.join("key-db"), &key, opts.clone())?;
    fill(&db)?;
    db.rotate_data_keys(RotateOptions { background: false, ..Default::default() })?;
    db.resume_rotation(None, |_| {})?;
    db.insert("orders", json!({"id": "after-rotation", "status": "new", "amount": 1}))?;
    db.close()?;
    // A second session, so the log spans sessions.
    let db = Db::open(out.join("key-db"), &key, opts.clone())?;
    db.patch("orders", &Pk::Str("o-3".into()), json!({"status": "shipped"}).as_object().cloned().unwrap_or_default())?;
    db.close()?;
    std::fs::remove_file(out.join("key-db").join("LOCK"))?;

    // A passphrase database rotated to a second passphrase (the first one
    // then stays in the header as a retired version).
    let cheap = Argon2Params { m_cost_kib: 64, t_cost: 1, p_cost: 1 };
    let p1 = KeySource::passphrase("fixture passphrase one");
    let p2 = KeySource::passphrase("fixture passphrase two");
    let db =
        Db::create(out.join("passphrase-db"), &p1, Options { argon2: cheap, allow_weak_kdf: true, ..opts.clone() })?;
    fill(&db)?;
    db.rotate_master_key(
        &p2,
        RotateOptions { argon2: cheap, allow_weak_kdf: true, background: false, ..Default::default() },
    )?;
    db.resume_rotation(None, |_| {})?;
    db.close()?;
    std::fs::remove_file(out.join("passphrase-db").join("LOCK"))?;
    std::fs::remove_file(&key_path)?;
    Ok(())
}

fn fill(db: &Db) -> driftdb::Result<()> {
    db.create_table("orders", "id", &["status"])?;
    for i in 0..40 {
        db.insert(
            "orders",
            json!({"id": format!("o-{i}"), "status": if i % 3 == 0 { "paid" } else { "pending" }, "amount": i * 10}),
        )?;
    }
    db.patch("orders", &Pk::Str("o-1".into()), json!({"status": "paid"}).as_object().cloned().unwrap_or_default())?;
    db.soft_delete("orders", &Pk::Str("o-2".into()))?;
    db.execute("ALTER TABLE orders ADD COLUMN currency DEFAULT \"EUR\"")?;
    db.snapshot("orders")?;
    db.execute("COMPACT orders BEFORE @seq:5")?;
    db.insert("orders", json!({"id": 7, "status": "pending", "amount": 70}))?;
    Ok(())
}
