//! Migrations through the CLI: checks, atomicity (kill -9 included),
//! checksums, order and dry runs.
//!
//! The tests here run one at a time: they open databases in this process
//! and start `driftdb` processes, and a process started while another test
//! holds a database open would inherit its lock until it execs.

mod common;

use driftdb::{Db, KeySource, Options, Outcome};
use serde_json::{Value, json};
use std::path::Path;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn rows(db: &Db, q: &str) -> Vec<Value> {
    match db.execute_stmt(&driftdb::query::parse_one(q).unwrap()).unwrap() {
        Outcome::Rows(r) => r,
        o => panic!("{q}: {o:?}"),
    }
}

struct Env {
    _tmp: tempfile::TempDir,
    data: String,
    key: String,
    migs: std::path::PathBuf,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let key = common::key_file(tmp.path(), "k", 7);
    let data = tmp.path().join("db");
    let migs = tmp.path().join("migrations");
    std::fs::create_dir(&migs).unwrap();
    let (c, _, e) = common::parts(&common::run(&["init", data.to_str().unwrap(), "--key-file", key.to_str().unwrap()]));
    assert_eq!(c, 0, "{e}");
    Env { data: data.to_str().unwrap().into(), key: key.to_str().unwrap().into(), migs, _tmp: tmp }
}

impl Env {
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.migs.join(name), text).unwrap();
    }
    fn migrate(&self, args: &[&str]) -> (i32, String, String) {
        let mut a =
            vec!["migrate", "-d", &self.data, "--key-file", &self.key, "--migrations", self.migs.to_str().unwrap()];
        a.extend_from_slice(args);
        common::parts(&common::run(&a))
    }
    fn sql(&self, q: &str) -> String {
        let (c, o, e) =
            common::parts(&common::run(&["sql", "-d", &self.data, "--key-file", &self.key, "--json", "-e", q]));
        assert_eq!(c, 0, "{q}: {e}");
        o
    }
    /// Everything a migration could change: documents, schema, indexes,
    /// migration history, latest sequence number.
    fn state(&self) -> String {
        let db = Db::open(
            &self.data,
            &KeySource::KeyFile { path: self.key.clone().into(), allow_insecure: false },
            Options::default(),
        )
        .unwrap();
        let mut out = format!("seq {}\n", db.latest_seq());
        for t in db.tables() {
            out.push_str(&format!("{t:?}\n"));
            for d in db.scan(&t.name, None).unwrap() {
                out.push_str(&format!("  {}\n", d.text()));
            }
        }
        db.close().unwrap();
        out
    }
}

const M1: &str = "-- users\nCREATE TABLE users (pk=id, INDEX(email))\n\
INSERT INTO users {\"id\": 1, \"email\": \"a@x\", \"name\": \"Ada\"}\n\
INSERT INTO users {\"id\": 2, \"email\": \"b@x\", \"name\": \"Bob\", \"tier\": \"gold\"}\n";
const M2: &str = "EXPECT (SELECT COUNT(*) FROM users) = 2\n\
ALTER TABLE users ADD COLUMN tier DEFAULT \"free\"\n\
ALTER TABLE users RENAME COLUMN name TO full_name\n\
CREATE INDEX ON users (tier)\n\
EXPECT (SELECT COUNT(*) FROM users WHERE tier IS NULL) = 0\n\
EXPECT (SELECT COUNT(*) FROM users WHERE tier = \"free\") = 1\n";

#[test]
fn migrate_up_applies_in_order_records_checksums_and_status_lists_them() {
    let _serial = serial();
    let e = env();
    e.write("0001_users.driftql", M1);
    e.write("0002_tiers.driftql", M2);
    e.write("README.md", "not a migration");
    let (c, o, err) = e.migrate(&["status"]);
    assert_eq!(c, 0, "{err}");
    assert!(o.contains("pending     1  0001_users.driftql") && o.contains("pending     2  0002_tiers.driftql"), "{o}");
    // The form from before `--migrations` (where `--dir` named the folder) still works, with a note.
    let m = e.migs.to_str().unwrap();
    let (c, legacy, err) =
        common::parts(&common::run(&["migrate", "-d", &e.data, "--key-file", &e.key, "--dir", m, "status"]));
    assert_eq!((c, &legacy), (0, &o), "{err}");
    assert!(err.contains("deprecated") && err.contains("--migrations"), "{err}");
    let (c, o, err) = e.migrate(&["up", "--to", "1", "--dry-run", "--json"]);
    assert_eq!(c, 0, "{err}");
    let r: Vec<Value> = o.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!((r.len(), &r[0]["file"], &r[0]["seq"]), (1, &json!("0001_users.driftql"), &Value::Null), "{o}");
    let (c, o, err) = e.migrate(&["up", "--to", "1"]);
    assert_eq!(c, 0, "{err}");
    assert!(o.contains("0001_users.driftql applied at @seq:") && o.contains("users: 2 rows"), "{o}");
    let (c, o, err) = e.migrate(&["up"]);
    assert_eq!(c, 0, "{err}");
    assert!(o.contains("0002_tiers.driftql applied") && o.contains("3 schema changes, 3 checks held"), "{o}");
    assert!(o.contains("users: 3 rows"), "1 row gets the default, 2 are renamed: {o}");
    let (c, o, _) = e.migrate(&["up"]);
    assert_eq!((c, o.trim()), (0, "nothing to apply"));
    let (c, o, err) = e.migrate(&["status", "--json"]);
    assert_eq!(c, 0, "{err}");
    // JSON Lines: one object per migration, with named fields.
    let st: Vec<Value> = o.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(st.len(), 2, "{o}");
    assert_eq!((&st[1]["version"], &st[1]["state"]), (&json!(2), &json!("applied")));
    assert!(st[1]["checksum"].as_str().unwrap().starts_with("sha256:"));
    assert!(st[1]["seq"].as_u64().unwrap() > st[0]["seq"].as_u64().unwrap());
    let rows = e.sql("SELECT id, full_name, tier FROM users WHERE tier = \"free\"");
    assert_eq!(
        serde_json::from_str::<Value>(rows.trim()).unwrap(),
        json!({"full_name": "Ada", "id": 1, "tier": "free"})
    );
    // The record is a row of an encrypted table like any other.
    assert!(e.sql("SELECT version, file FROM _drift_migrations").contains("0002_tiers.driftql"));
}

#[test]
fn a_failing_precondition_or_postcondition_changes_nothing_and_names_the_check() {
    let _serial = serial();
    let e = env();
    e.write("0001_users.driftql", M1);
    assert_eq!(e.migrate(&["up"]).0, 0);
    let before = e.state();
    for (name, text, failing) in [
        ("0002_pre.driftql", "EXPECT (SELECT COUNT(*) FROM users) = 5\nALTER TABLE users DROP COLUMN name\n", "= 5"),
        (
            "0002_post.driftql",
            "ALTER TABLE users DROP COLUMN name\nPATCH users KEY 1 SET {\"x\": 1}\nCREATE INDEX ON users (x)\nEXPECT (SELECT COUNT(*) FROM users WHERE name IS NOT NULL) = 0\nEXPECT (SELECT COUNT(*) FROM users WHERE x = 1) = 2\n",
            "= 2",
        ),
    ] {
        for f in std::fs::read_dir(&e.migs).unwrap() {
            let p = f.unwrap().path();
            if p.file_name().unwrap().to_str().unwrap().starts_with("0002") {
                std::fs::remove_file(p).unwrap();
            }
        }
        e.write(name, text);
        let (c, _, err) = e.migrate(&["up"]);
        assert_eq!(c, 1, "{err}");
        assert!(
            err.contains(name) && err.contains("EXPECT (SELECT COUNT(*) FROM users") && err.contains(failing),
            "{err}"
        );
        assert!(err.contains("nothing of it was applied"), "{err}");
        assert_eq!(e.state(), before, "{name} changed the database");
        let (_, o, _) = e.migrate(&["status"]);
        assert!(o.contains(&format!("pending     2  {name}")), "{o}");
    }
}

#[test]
fn an_edited_applied_migration_a_gap_or_a_missing_file_is_refused_and_dry_run_writes_nothing() {
    let _serial = serial();
    let e = env();
    e.write("0001_users.driftql", M1);
    assert_eq!(e.migrate(&["up"]).0, 0);
    e.write("0002_tiers.driftql", M2);
    // Dry run: everything runs, checks included; not one byte changes.
    let files = common::tree(Path::new(&e.data));
    let (c, o, err) = e.migrate(&["up", "--dry-run"]);
    assert_eq!(c, 0, "{err}");
    assert!(
        o.contains("0002_tiers.driftql would apply (dry run, nothing written)") && o.contains("users: 3 rows"),
        "{o}"
    );
    assert_eq!(common::tree(Path::new(&e.data)), files);
    assert!(e.migrate(&["status"]).1.contains("pending     2"));
    // A dry run whose check fails fails the same way.
    e.write("0003_bad.driftql", "EXPECT (SELECT COUNT(*) FROM users WHERE tier = \"free\") = 0\n");
    let (c, _, err) = e.migrate(&["up", "--dry-run"]);
    assert!(c == 1 && err.contains("0003_bad.driftql"), "{err}");
    std::fs::remove_file(e.migs.join("0003_bad.driftql")).unwrap();
    // An applied file edited afterwards.
    e.write("0001_users.driftql", &format!("{M1}INSERT INTO users {{\"id\": 3}}\n"));
    for cmd in [&["validate"][..], &["up"][..], &["status"][..]] {
        let (c, _, err) = e.migrate(cmd);
        assert_eq!(c, 1, "{cmd:?}");
        assert!(err.contains("0001_users.driftql was edited after it was applied"), "{err}");
    }
    assert_eq!(common::tree(Path::new(&e.data)), files);
    e.write("0001_users.driftql", M1);
    assert_eq!(e.migrate(&["validate"]).0, 0);
    // A gap in the numbering.
    e.write("0004_later.driftql", "CREATE INDEX ON users (name)\n");
    let (c, _, err) = e.migrate(&["up"]);
    assert!(c == 1 && err.contains("gap in migration versions") && err.contains("version 3 is missing"), "{err}");
    std::fs::remove_file(e.migs.join("0004_later.driftql")).unwrap();
    // A malformed name.
    e.write("add_things.driftql", "");
    let (c, _, err) = e.migrate(&["validate"]);
    assert!(c == 1 && err.contains("NNNN_name.driftql"), "{err}");
    std::fs::remove_file(e.migs.join("add_things.driftql")).unwrap();
    // An applied migration whose file is gone.
    assert_eq!(e.migrate(&["up"]).0, 0);
    std::fs::remove_file(e.migs.join("0002_tiers.driftql")).unwrap();
    let (c, _, err) = e.migrate(&["validate"]);
    assert!(c == 1 && err.contains("its file is missing"), "{err}");
    assert!(common::parts(&common::run(&["migrate", "-d", &e.data, "--key-file", &e.key, "up"])).0 == 2);
}

#[test]
fn kill_9_during_a_large_migration_leaves_it_applied_or_not_and_up_completes_it() {
    let _serial = serial();
    let e = env();
    const N: i64 = 20_000;
    {
        let db = Db::open(
            &e.data,
            &KeySource::KeyFile { path: e.key.clone().into(), allow_insecure: false },
            Options::default(),
        )
        .unwrap();
        db.create_table("users", "id", &["email"]).unwrap();
        for chunk in (0..N).collect::<Vec<_>>().chunks(2000) {
            db.write(|t| {
                for i in chunk {
                    t.insert("users", json!({"id": i, "email": format!("u{i}@x"), "name": format!("n{i}")}))?;
                }
                Ok(())
            })
            .unwrap();
        }
        db.close().unwrap();
    }
    e.write(
        "0001_big.driftql",
        "EXPECT (SELECT COUNT(*) FROM users WHERE tier IS NOT NULL) = 0\n\
        ALTER TABLE users ADD COLUMN tier DEFAULT \"free\"\n\
        ALTER TABLE users RENAME COLUMN name TO full_name\n\
        CREATE INDEX ON users (tier)\n\
        PATCH users KEY 7 SET {\"tier\": \"gold\"}\n\
        EXPECT (SELECT COUNT(*) FROM users WHERE tier = \"free\") = 19999\n",
    );
    // How long an uninterrupted run takes, on a copy.
    let copy = tempfile::tempdir().unwrap();
    for (p, b) in common::tree(Path::new(&e.data)) {
        let to = copy.path().join(p.strip_prefix(&e.data).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, b).unwrap();
    }
    let t0 = std::time::Instant::now();
    let (c, _, err) = common::parts(&common::run(&[
        "migrate",
        "-d",
        copy.path().to_str().unwrap(),
        "--key-file",
        &e.key,
        "--dir",
        e.migs.to_str().unwrap(),
        "up",
    ]));
    assert_eq!(c, 0, "{err}");
    let full = t0.elapsed();
    let (mut applied_seen, mut not_seen) = (0, 0);
    for round in 0..8u32 {
        let mut child = common::bin()
            .args(["migrate", "-d", &e.data, "--key-file", &e.key, "--migrations", e.migs.to_str().unwrap(), "up"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(f64::from(round) / 7.0 * 1.1));
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        let db = Db::open(
            &e.data,
            &KeySource::KeyFile { path: e.key.clone().into(), allow_insecure: false },
            Options::default(),
        )
        .unwrap();
        let recorded = db.describe("_drift_migrations").is_ok();
        let count = |q: &str| rows(&db, q)[0]["COUNT(*)"].as_u64().unwrap();
        let def = db.describe("users").unwrap();
        if recorded {
            applied_seen += 1;
            assert_eq!(def.indexes, vec!["email", "tier"], "round {round}");
            assert_eq!(count(r#"SELECT COUNT(*) FROM users WHERE tier = "free""#), (N - 1) as u64, "round {round}");
            assert_eq!(count("SELECT COUNT(*) FROM users WHERE name IS NOT NULL"), 0, "round {round}");
            assert_eq!(count("SELECT COUNT(*) FROM users WHERE full_name IS NOT NULL"), N as u64, "round {round}");
        } else {
            not_seen += 1;
            assert_eq!((def.indexes, def.columns), (vec!["email".to_string()], vec![]), "round {round}");
            assert_eq!(count("SELECT COUNT(*) FROM users WHERE tier IS NOT NULL"), 0, "round {round}");
            assert_eq!(count("SELECT COUNT(*) FROM users WHERE name IS NOT NULL"), N as u64, "round {round}");
        }
        db.close().unwrap();
        if recorded {
            break;
        }
    }
    assert!(not_seen > 0, "no kill landed before the commit (full run {full:?})");
    let (c, o, err) = e.migrate(&["up"]);
    assert_eq!(c, 0, "{err}");
    assert!(applied_seen > 0 || o.contains("0001_big.driftql applied"), "{o}");
    let (_, o, _) = e.migrate(&["status"]);
    assert!(o.contains("applied     1  0001_big.driftql"), "{o}");
}
