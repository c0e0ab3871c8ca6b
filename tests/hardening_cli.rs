//! The CLI as a new user meets it: a restored keyring and a rolled-back
//! copy refused with exit 4, key commands bounded in time and environment,
//! the KDF floor, closed pipes, bad input in `ingest` and `sql`, JSON Lines
//! everywhere, consistent exit codes and questions before folding history.

mod common;
use common::*;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Db {
    _t: tempfile::TempDir,
    t: PathBuf,
    dir: PathBuf,
    key: PathBuf,
}

impl Db {
    fn new() -> Db {
        let t = tempfile::tempdir().unwrap();
        let key = key_file(t.path(), "k", 0x61);
        let dir = t.path().join("db");
        let (c, _, e) = parts(&run(&["init", s(&dir), "--key-file", s(&key)]));
        assert_eq!(c, 0, "{e}");
        Db { t: t.path().to_path_buf(), _t: t, dir, key }
    }
    /// `driftdb CMD -d DIR --key-file KEY ARGS...`
    fn args<'a>(&'a self, cmd: &'a [&'a str], args: &[&'a str]) -> Vec<&'a str> {
        let mut a: Vec<&str> = cmd.to_vec();
        a.extend(["-d", s(&self.dir), "--key-file", s(&self.key)]);
        a.extend_from_slice(args);
        a
    }
    fn cmd(&self, cmd: &[&str], args: &[&str]) -> (i32, String, String) {
        parts(&run(&self.args(cmd, args)))
    }
    fn sql(&self, q: &str) -> (i32, String, String) {
        self.cmd(&["sql"], &["-e", q])
    }
    fn ok(&self, q: &str) -> String {
        let (c, o, e) = self.sql(q);
        assert_eq!(c, 0, "{q}: {e}");
        o
    }
}

#[test]
fn a_restored_older_keyring_is_exit_4_through_the_cli_and_loses_nothing() {
    let db = Db::new();
    db.ok("CREATE TABLE t (pk=id)\nINSERT INTO t {\"id\": \"a\"}");
    let old = std::fs::read(db.dir.join("keyring")).unwrap();
    db.ok("INSERT INTO t {\"id\": \"b\"}");
    let new = std::fs::read(db.dir.join("keyring")).unwrap();
    std::fs::write(db.dir.join("keyring"), &old).unwrap();
    let before = tree(&db.dir);
    let (c, o, e) = db.cmd(&["verify"], &[]);
    assert_eq!(c, 4, "{o}{e}");
    assert!(o.contains("PROBLEM") && o.contains("not in the manifest"), "{o}");
    let (c, o, e) = parts(&run(&["verify", "-d", s(&db.dir), "--no-key"]));
    assert_eq!(c, 4, "{o}{e}");
    for q in [&["select"][..], &["sql"][..]] {
        let extra: &[&str] = if q[0] == "select" { &["-t", "t"] } else { &["-e", "INSERT INTO t {\"id\": \"c\"}"] };
        let (c, _, e) = db.cmd(q, extra);
        assert_eq!(c, 4, "{q:?}: {e}");
        assert!(e.contains("keyring") && (e.contains(".wal") || e.contains(".seg")), "{e}");
    }
    assert_eq!(tree(&db.dir).keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>(), "nothing deleted");
    std::fs::write(db.dir.join("keyring"), &new).unwrap();
    let (c, o, _) = db.cmd(&["select"], &["-t", "t", "--json"]);
    assert_eq!(c, 0);
    assert_eq!(o.lines().count(), 2, "both rows: {o}");
}

#[test]
fn verify_without_a_key_exits_4_for_a_truncated_or_missing_file() {
    let db = Db::new();
    db.ok("CREATE TABLE t (pk=id)\nINSERT INTO t {\"id\": 1}\nSNAPSHOT t");
    let (c, o, _) = parts(&run(&["verify", "-d", s(&db.dir), "--no-key"]));
    assert_eq!(c, 0, "{o}");
    for ext in ["seg", "snap"] {
        let f = std::fs::read_dir(&db.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == ext))
            .unwrap();
        let b = std::fs::read(&f).unwrap();
        std::fs::write(&f, &b[..b.len() - 10]).unwrap();
        let (c, o, _) = parts(&run(&["verify", "-d", s(&db.dir), "--no-key"]));
        assert_eq!(c, 4, "{ext} truncated: {o}");
        std::fs::remove_file(&f).unwrap();
        let (c, o, _) = parts(&run(&["verify", "-d", s(&db.dir), "--no-key"]));
        assert_eq!(c, 4, "{ext} missing: {o}");
        assert!(o.contains("missing"), "{o}");
        std::fs::write(&f, &b).unwrap();
    }
    let (c, o, _) = parts(&run(&["verify", "-d", s(&db.dir), "--no-key"]));
    assert_eq!(c, 0, "{o}");
}

#[test]
fn keys_status_and_verify_print_the_generation_and_expect_generation_refuses_a_rollback() {
    let db = Db::new();
    db.ok("CREATE TABLE t (pk=id)");
    let copy = db.t.join("copy");
    std::fs::create_dir(&copy).unwrap();
    for (p, b) in tree(&db.dir) {
        std::fs::write(copy.join(p.file_name().unwrap()), b).unwrap();
    }
    db.ok("INSERT INTO t {\"id\": 1}");
    let (c, o, e) = db.cmd(&["keys", "status"], &["--json"]);
    assert_eq!(c, 0, "{e}");
    let st: serde_json::Value = serde_json::from_str(o.trim()).unwrap();
    let g = st["keyring_generation"].as_u64().unwrap();
    assert!(st["audit_head"]["entries"].as_u64().unwrap() >= 1);
    assert_eq!(st["audit_head"]["hash"].as_str().unwrap().len(), 64);
    let (_, o, _) = db.cmd(&["keys", "status"], &[]);
    assert!(o.contains(&format!("keyring generation: {g}")) && o.contains("chain head"), "{o}");
    let (c, o, _) = db.cmd(&["verify"], &["--json"]);
    assert_eq!(c, 0);
    assert_eq!(o.lines().count(), 1, "one JSON object: {o}");
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(v["keyring_generation"], g);
    // Put the older, consistent copy in place.
    for e in std::fs::read_dir(&db.dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for (p, b) in tree(&copy) {
        std::fs::write(db.dir.join(p.file_name().unwrap()), b).unwrap();
    }
    let gs = g.to_string();
    let (c, _, e) = db.cmd(&["select"], &["-t", "t", "--expect-generation", &gs]);
    assert_eq!(c, 4, "{e}");
    assert!(e.contains("rollback"), "{e}");
    let (c, o, _) = parts(&run(&["verify", "-d", s(&db.dir), "--no-key", "--expect-generation", &gs]));
    assert_eq!(c, 4, "{o}");
    let (c, _, e) = db.cmd(&["select"], &["-t", "t"]);
    assert_eq!(c, 0, "without the pin it opens: {e}");
}

#[test]
fn a_key_command_is_killed_after_its_timeout_and_sees_a_cleared_environment() {
    let db = Db::new();
    let hex = std::fs::read_to_string(&db.key).unwrap().trim().to_string();
    let marker = db.t.join("grandchild-alive");
    // A command that hangs (and started a child that would outlive it).
    let hang = format!("(sleep 2; touch {}) & sleep 30", s(&marker));
    let t0 = std::time::Instant::now();
    let (c, _, e) = parts(&run(&["verify", "-d", s(&db.dir), "--key-command", &hang, "--key-command-timeout", "0.5"]));
    assert_eq!(c, 3, "{e}");
    assert!(e.contains("did not finish within 0.5 s") && e.contains("killed"), "{e}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(4), "took {:?}", t0.elapsed());
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(!marker.exists(), "what the key command started outlived the timeout");
    // The environment: a passphrase or an old key in another variable never reaches it.
    let probe = format!("if [ -n \"${{DRIFTDB_PASSPHRASE:-}}${{OLD_KEY:-}}\" ]; then exit 7; fi; printf %s {hex}");
    let (c, _, e) = parts(&run_env(
        &["verify", "-d", s(&db.dir), "--key-command", &probe],
        &[("DRIFTDB_PASSPHRASE", "x"), ("OLD_KEY", "y")],
    ));
    assert_eq!(c, 0, "{e}");
    let (c, _, e) = parts(&run_env(
        &["verify", "-d", s(&db.dir), "--key-command", &probe, "--key-command-env", "OLD_KEY"],
        &[("OLD_KEY", "y")],
    ));
    assert_eq!(c, 3, "an allowed variable does pass: {e}");
    // Neither the command nor a secret prefix of it reaches a message or the audit log.
    let secret = format!("VAULT_TOKEN=s3cr3t-t0ken sh -c 'printf %s {hex}'");
    let (c, _, e) = parts(&run(&["sql", "-d", s(&db.dir), "--key-command", &secret, "-e", "SHOW TABLES"]));
    assert_eq!(c, 0, "{e}");
    let (_, audit, _) = db.cmd(&["keys", "audit"], &["--json"]);
    assert!(!audit.contains("s3cr3t") && !audit.contains("VAULT_TOKEN"), "{audit}");
    let dbg = format!("{:?}", driftdb::KeySource::Command(secret.clone()));
    assert!(!dbg.contains("s3cr3t") && !dbg.contains("VAULT_TOKEN"), "{dbg}");
}

#[test]
fn a_rotation_to_a_key_command_that_prints_a_new_key_each_run_is_refused() {
    let db = Db::new();
    db.ok("CREATE TABLE t (pk=id)");
    let random = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'";
    let (c, _, e) = db.cmd(&["keys", "rotate"], &["--new-key-command", random]);
    assert_eq!(c, 3, "{e}");
    assert!(e.contains("different key when run a second time"), "{e}");
    let (c, _, e) = db.cmd(&["tables"], &[]);
    assert_eq!(c, 0, "the old key still opens it: {e}");
    // A command that prints a stored key is fine.
    let k2 = key_file(&db.t, "k2", 0x62);
    let (c, _, e) = db.cmd(&["keys", "rotate"], &["--new-key-command", &format!("cat {}", s(&k2))]);
    assert_eq!(c, 0, "{e}");
}

#[test]
fn the_kdf_has_a_floor_and_a_failed_init_leaves_the_directory_as_it_was() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("db");
    let pw = [("PW", "a passphrase")];
    let weak = ["init", s(&d), "--passphrase-env", "PW", "--kdf-memory-mib", "1", "--kdf-iterations", "1"];
    let (c, _, e) = parts(&run_env(&weak, &pw));
    assert_eq!(c, 2, "{e}");
    assert!(e.contains("below the minimum") && e.contains("--allow-weak-kdf"), "{e}");
    assert!(!d.exists(), "a failed init created {}", d.display());
    // An existing empty directory stays empty.
    std::fs::create_dir(&d).unwrap();
    let (c, _, _) = parts(&run_env(&weak, &pw));
    assert_eq!(c, 2);
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0, "no LOCK or anything else left behind");
    let mut ok = weak.to_vec();
    ok.push("--allow-weak-kdf");
    let (c, _, e) = parts(&run_env(&ok, &pw));
    assert_eq!(c, 0, "{e}");
    // A keyring header asking for more Argon2id memory than allowed is
    // refused before anything is derived.
    let kr = d.join("keyring");
    let mut b = std::fs::read(&kr).unwrap();
    b[76..80].copy_from_slice(&(2u32 * 1024 * 1024).to_le_bytes());
    let n = b.len() - 4;
    let crc = crc32fast::hash(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&kr, &b).unwrap();
    let t0 = std::time::Instant::now();
    let (c, _, e) = parts(&run_env(&["tables", "-d", s(&d), "--passphrase-env", "PW"], &pw));
    assert_eq!(c, 3, "{e}");
    assert!(e.contains("2048 MiB of Argon2id memory") && e.contains("1024 MiB allowed"), "{e}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn a_rotation_to_the_same_passphrase_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("db");
    let env = [("PW", "the passphrase"), ("PW2", "another one")];
    let cheap = ["--kdf-memory-mib", "1", "--kdf-iterations", "1", "--allow-weak-kdf"];
    let mut init = vec!["init", s(&d), "--passphrase-env", "PW"];
    init.extend(cheap);
    assert_eq!(parts(&run_env(&init, &env)).0, 0);
    let mut rot = vec!["keys", "rotate", "-d", s(&d), "--passphrase-env", "PW", "--new-passphrase-env", "PW"];
    rot.extend(cheap);
    let (c, _, e) = parts(&run_env(&rot, &env));
    assert_eq!(c, 2, "{e}");
    assert!(e.contains("is the current one"), "{e}");
    let (_, o, _) = parts(&run_env(&["keys", "status", "-d", s(&d), "--passphrase-env", "PW", "--json"], &env));
    let st: serde_json::Value = serde_json::from_str(o.trim()).unwrap();
    assert_eq!(st["active_key_version"], 1, "nothing changed");
    rot[7] = "PW2";
    assert_eq!(parts(&run_env(&rot, &env)).0, 0);
}

/// Start the CLI with `args`, standard output and error piped.
fn spawn(args: &[&str], stdin: Stdio) -> std::process::Child {
    bin()
        .args(args)
        .env_remove("DRIFTDB_KEY_FILE")
        .env_remove("DRIFTDB_PASSPHRASE")
        .env_remove("DRIFTDB_DIR")
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Run `args`, read one line of its output, close the pipe, and wait.
fn read_one_line_then_close(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = spawn(args, Stdio::null());
    let mut first = String::new();
    {
        let mut r = std::io::BufReader::new(child.stdout.take().unwrap());
        r.read_line(&mut first).unwrap();
    } // closed
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (child.wait().unwrap().code(), first, err)
}

#[test]
fn a_closed_pipe_ends_every_command_quietly() {
    let db = Db::new();
    let f = db.t.join("many.jsonl");
    let lines: Vec<String> = (0..3000).map(|i| format!("{{\"id\": {i}, \"pad\": \"{}\"}}", "x".repeat(100))).collect();
    std::fs::write(&f, lines.join("\n")).unwrap();
    db.ok("CREATE TABLE t (pk=id)\nINSERT INTO t {\"id\": 0}");
    let patches: Vec<String> = (0..3000).map(|i| format!("PATCH t KEY 0 SET {{\"n\": {i}}}")).collect();
    db.ok(&patches.join("\n"));
    assert_eq!(db.cmd(&["ingest"], &["-t", "t", "-f", s(&f), "--skip-existing"]).0, 0);
    for args in [
        db.args(&["select"], &["-t", "t"]),
        db.args(&["select"], &["-t", "t", "--json"]),
        db.args(&["sql"], &["-e", "SELECT * FROM t"]),
        db.args(&["drift"], &["-t", "t", "-k", "0"]),
        db.args(&["keys", "audit"], &[]),
    ] {
        let (code, first, err) = read_one_line_then_close(&args);
        assert!(!first.is_empty());
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
    }
    // A rotation whose output reader goes away still finishes its work.
    let k2 = key_file(&db.t, "k2", 0x63);
    let (code, _, err) = read_one_line_then_close(&db.args(&["keys", "rotate"], &["--new-key-file", s(&k2)]));
    assert_eq!(code, Some(0), "{err}");
    let (c, o, _) = parts(&run(&["keys", "status", "-d", s(&db.dir), "--key-file", s(&k2), "--json"]));
    assert_eq!(c, 0);
    assert!(o.contains("\"complete\""), "{o}");
}

#[test]
fn an_output_that_cannot_be_written_is_exit_1_never_a_panic() {
    let db = Db::new();
    db.ok("CREATE TABLE t (pk=id)");
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let o = bin()
        .args(db.args(&["tables"], &[]))
        .env_remove("DRIFTDB_KEY_FILE")
        .stdin(Stdio::null())
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot write the output") && !err.contains("panicked"), "{err}");
}

#[test]
fn ingest_splits_by_size_reports_progress_on_failure_and_finishes_with_skip_existing() {
    let db = Db::new();
    db.ok("CREATE TABLE t (pk=id)");
    // 3,000 documents of 20 KB: more than one commit's 16 MiB at the default batch.
    let f = db.t.join("big.jsonl");
    let pad = "p".repeat(20_000);
    let mut text = String::new();
    for i in 0..3000 {
        text.push_str(&format!("{{\"id\": {i}, \"pad\": \"{pad}\"}}\n"));
    }
    std::fs::write(&f, &text).unwrap();
    let (c, o, e) = db.cmd(&["ingest"], &["-t", "t", "-f", s(&f)]);
    assert_eq!(c, 0, "{e}");
    assert!(o.contains("ingested 3000 documents"), "{o}");
    let (c, _, e) = db.cmd(&["ingest"], &["-t", "t", "-f", s(&f), "--batch", "0"]);
    assert_eq!(c, 2, "{e}");
    assert!(e.contains("--batch 0"), "{e}");
    // A duplicate key on line 1,500: the lines before it are committed, and it says so.
    let g = db.t.join("dups.jsonl");
    let lines: Vec<String> = (0..2000).map(|i| format!("{{\"id\": \"k{}\"}}", if i == 1499 { 3 } else { i })).collect();
    std::fs::write(&g, lines.join("\n")).unwrap();
    let (c, _, e) = db.cmd(&["ingest"], &["-t", "t", "-f", s(&g)]);
    assert_eq!(c, 1, "{e}");
    assert!(e.contains("dups.jsonl:1500") && e.contains("lines 1–1000"), "{e}");
    assert!(!e.contains("..="), "no Rust range syntax: {e}");
    let (_, o, _) = db.cmd(&["sql"], &["-e", "SELECT COUNT(*) FROM t WHERE id >= \"k\"", "--json"]);
    assert!(o.contains("1000"), "{o}");
    // A rerun with --skip-existing finishes past the committed part (the
    // duplicate inside the file is skipped too).
    let (c, o, e) = db.cmd(&["ingest"], &["-t", "t", "-f", s(&g), "--skip-existing"]);
    assert_eq!(c, 0, "{e}");
    assert!(o.contains("ingested 999 documents") && o.contains("skipped 1001 documents"), "{o}");
    // Invalid UTF-8 and a duplicated field are reported with their line.
    let h = db.t.join("bad.jsonl");
    std::fs::write(&h, b"{\"id\": \"u1\"}\n{\"id\": \"u2\", \"s\": \"\xff\"}\n").unwrap();
    let (c, _, e) = db.cmd(&["ingest"], &["-t", "t", "-f", s(&h)]);
    assert_eq!(c, 1);
    assert!(e.contains("bad.jsonl:2") && e.contains("UTF-8"), "{e}");
    std::fs::write(&h, "{\"id\": \"d1\", \"id\": \"d2\"}\n").unwrap();
    let (c, _, e) = db.cmd(&["ingest"], &["-t", "t", "-f", s(&h)]);
    assert_eq!(c, 1);
    assert!(e.contains("bad.jsonl:1") && e.contains("duplicate key \"id\""), "{e}");
}

#[test]
fn ingest_interrupted_by_ctrl_c_says_how_far_it_got() {
    let db = Db::new();
    db.ok("CREATE TABLE t (pk=id)");
    let f = db.t.join("slow.jsonl");
    let lines: Vec<String> = (0..400_000).map(|i| format!("{{\"id\": {i}, \"v\": \"{}\"}}", "y".repeat(40))).collect();
    std::fs::write(&f, lines.join("\n")).unwrap();
    let child = spawn(&db.args(&["ingest"], &["-t", "t", "-f", s(&f), "--batch", "100"]), Stdio::null());
    std::thread::sleep(std::time::Duration::from_millis(1500));
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted: lines 1–") && err.contains("--skip-existing"), "{err}");
    let committed: u64 = err
        .split("committed (")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.replace(',', "").parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    let (_, out, _) = db.cmd(&["sql"], &["-e", "SELECT COUNT(*) FROM t", "--json"]);
    assert!(out.contains(&format!(":{committed}}}")), "{out} vs {committed}");
    let (c, out, e) = db.cmd(&["ingest"], &["-t", "t", "-f", s(&f), "--skip-existing"]);
    assert_eq!(c, 0, "{e}");
    assert!(out.contains(&format!("ingested {} documents", 400_000 - committed)), "{out}");
}

#[test]
fn sql_reads_stdin_and_multi_line_statements() {
    let db = Db::new();
    let script = "CREATE TABLE t (\n  pk=id,\n  INDEX(v)\n)\nINSERT INTO t\n  {\"id\": 1,\n   \"v\": \"a\"};\nSELECT id, v\n  FROM t\n  WHERE v = 'a'\n";
    for via in [None, Some("-")] {
        let mut a = db.args(&["sql"], &["--json"]);
        if let Some(f) = via {
            a.extend(["-f", f]);
        }
        if via.is_some() {
            db.ok("SOFT DELETE FROM t KEY 1");
        }
        let script = if via.is_some() {
            script.replace("CREATE TABLE t (\n  pk=id,\n  INDEX(v)\n)\n", "")
        } else {
            script.to_string()
        };
        let mut child = spawn(&a, Stdio::piped());
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "{\"id\":1,\"v\":\"a\"}");
    }
    // `-e` with a leading comment is a script, not a flag.
    let (c, _, e) = db.sql("-- nothing to do");
    assert_eq!(c, 0, "{e}");
}

#[test]
fn json_means_json_lines_everywhere_and_errors_under_json_are_json() {
    let db = Db::new();
    db.ok("CREATE TABLE t (pk=id, INDEX(a, b))");
    let (c, o, _) = db.cmd(&["tables"], &["--json"]);
    assert_eq!(c, 0);
    let v: serde_json::Value = serde_json::from_str(o.trim()).unwrap();
    assert_eq!(v["indexes"], serde_json::json!(["a", "b"]));
    let (c, _, e) = db.cmd(&["select"], &["-t", "nope", "--json"]);
    assert_eq!(c, 1);
    let v: serde_json::Value = serde_json::from_str(e.trim()).unwrap_or_else(|_| panic!("{e}"));
    assert_eq!(v["exit_code"], 1);
    assert!(v["error"].as_str().unwrap().contains("nope"));
    let (c, _, e) = parts(&run(&["select", "--json"]));
    assert_eq!(c, 2);
    let v: serde_json::Value = serde_json::from_str(e.trim()).unwrap_or_else(|_| panic!("{e}"));
    assert_eq!(v["exit_code"], 2);
    // DRIFTDB_DIR supplies -d; init takes -d too.
    let (c, o, e) = parts(&run_env(&["tables", "--key-file", s(&db.key), "--json"], &[("DRIFTDB_DIR", s(&db.dir))]));
    assert_eq!(c, 0, "{e}");
    assert!(o.contains("\"t\""));
    let d2 = db.t.join("db2");
    let (c, _, e) = parts(&run(&["init", "-d", s(&d2), "--key-file", s(&db.key)]));
    assert_eq!(c, 0, "{e}");
}

#[test]
fn table_output_is_unambiguous_and_plural_right() {
    let db = Db::new();
    db.ok("CREATE TABLE t (pk=id)");
    db.ok(r#"INSERT INTO t {"id": 1, "v": 5}"#);
    db.ok(r#"INSERT INTO t {"id": 2, "v": "5"}"#);
    db.ok(&format!(r#"INSERT INTO t {{"id": 3, "v": "line one\nline\ttwo", "long": "{}"}}"#, "z".repeat(100)));
    let (c, o, _) = db.cmd(&["select"], &["-t", "t"]);
    assert_eq!(c, 0);
    let row = |id: &str| o.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("{o}")).to_string();
    assert!(row("1 ").contains("| 5") && !row("1 ").contains('"'), "the number 5 is bare: {o}");
    assert!(row("2 ").contains("| \"5\""), "the string 5 is quoted: {o}");
    assert!(o.contains("line one\\nline\\ttwo"), "escaped: {o}");
    assert!(o.contains('…') && !o.contains(&"z".repeat(100)), "truncation marked: {o}");
    assert!(o.trim_end().ends_with("(3 rows)"), "{o}");
    let (_, o, _) = db.cmd(&["select"], &["-t", "t", "-w", "id = 1"]);
    assert!(o.trim_end().ends_with("(1 row)"), "{o}");
}

#[test]
fn exit_codes_match_the_readme() {
    let t = tempfile::tempdir().unwrap();
    // An I/O error is 1, not a key problem.
    let (c, _, e) = parts(&run(&["keygen", s(&t.path().join("nodir/x.key"))]));
    assert_eq!(c, 1, "{e}");
    // A database whose keyring is missing: an integrity problem that says so.
    let db = Db::new();
    db.ok("CREATE TABLE t (pk=id)");
    std::fs::remove_file(db.dir.join("keyring")).unwrap();
    for args in [db.args(&["tables"], &[]), vec!["verify", "-d", s(&db.dir), "--no-key"]] {
        let (c, _, e) = parts(&run(&args));
        assert_eq!(c, 4, "{args:?}: {e}");
        assert!(e.contains("keyring is missing"), "{e}");
    }
    // A directory with nothing of DriftDB's: not a database (1).
    let (c, _, e) = parts(&run(&["verify", "-d", s(t.path()), "--no-key"]));
    assert_eq!(c, 1, "{e}");
    assert!(e.contains("not a DriftDB database"), "{e}");
}

#[test]
fn folding_all_or_most_history_asks_first() {
    let db = Db::new();
    db.ok("CREATE TABLE t (pk=id)");
    for i in 0..10 {
        db.ok(&format!("INSERT INTO t {{\"id\": {i}}}"));
    }
    for now in [&["--before", "@now"][..], &["--before", "@seq:9"][..]] {
        let mut a = vec!["-t", "t"];
        a.extend_from_slice(now);
        let (c, _, e) = db.cmd(&["compact"], &a);
        assert_eq!(c, 2, "{now:?}: {e}");
        assert!(e.contains("--yes") && e.contains("cannot be undone"), "{e}");
        let (_, o, _) = db.cmd(&["sql"], &["-e", "SELECT COUNT(*) FROM t AS OF @seq:2", "--json"]);
        assert_eq!(o.trim(), "{\"COUNT(*)\":1}", "nothing folded");
    }
    // A small share goes ahead without asking.
    let (c, _, e) = db.cmd(&["compact"], &["-t", "t", "--before", "@seq:3"]);
    assert_eq!(c, 0, "{e}");
    let (c, _, e) = db.cmd(&["compact"], &["-t", "t", "--before", "@now", "--yes"]);
    assert_eq!(c, 0, "{e}");
    let (c, _, _) = db.sql("SELECT COUNT(*) FROM t AS OF @seq:5");
    assert_eq!(c, 1, "history before the horizon is folded");
}

/// On a terminal, `compact` asks (a pseudo-terminal from util-linux's `script`).
#[test]
fn folding_everything_on_a_terminal_asks_and_no_means_no() {
    let db = Db::new();
    db.ok("CREATE TABLE t (pk=id)\nINSERT INTO t {\"id\": 1}\nINSERT INTO t {\"id\": 2}");
    let cmd = |answer: &str| {
        let line = format!(
            "{} compact -d {} --key-file {} -t t --before @now",
            env!("CARGO_BIN_EXE_driftdb"),
            s(&db.dir),
            s(&db.key)
        );
        let mut child = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(format!("{answer}\n").as_bytes()).unwrap();
        let o = child.wait_with_output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let (code, out) = cmd("n");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("Fold it? [y/N]") && out.contains("nothing was folded"), "{out}");
    assert_eq!(db.cmd(&["sql"], &["-e", "SELECT COUNT(*) FROM t AS OF @seq:2", "--json"]).1.trim(), "{\"COUNT(*)\":1}");
    let (code, out) = cmd("y");
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(db.cmd(&["sql"], &["-e", "SELECT COUNT(*) FROM t AS OF @seq:2"]).0, 1, "folded");
}
