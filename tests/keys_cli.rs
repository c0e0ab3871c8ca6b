//! `driftdb keys` through the CLI: rotate, status (human and JSON), audit,
//! the retired key refused with exit code 3, and a kill -9 loop of a
//! throttled rotation that `keys resume` always finishes.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CANARY: &str = "CANARY-keys-cli-77e1";

struct Fixture {
    _t: tempfile::TempDir,
    dir: PathBuf,
    k1: PathBuf,
    k2: PathBuf,
}

fn fixture(docs: usize, sessions: usize) -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let k1 = key_file(t.path(), "k1", 0x31);
    let k2 = key_file(t.path(), "k2", 0x32);
    let dir = t.path().join("db");
    let (code, _, err) = parts(&run(&["init", s(&dir), "--key-file", s(&k1)]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) =
        parts(&run(&["sql", "-d", s(&dir), "--key-file", s(&k1), "-e", "CREATE TABLE t (pk=id, INDEX(v))"]));
    assert_eq!(code, 0, "{err}");
    // Several sessions, so that there are several files to re-encrypt.
    for session in 0..sessions {
        let f = t.path().join(format!("docs{session}.jsonl"));
        let lines: Vec<String> = (0..docs)
            .map(|i| {
                let id = session * docs + i;
                format!("{{\"id\": {id}, \"v\": {}, \"note\": \"{CANARY}-{id}\"}}", id % 7)
            })
            .collect();
        std::fs::write(&f, lines.join("\n")).unwrap();
        let (code, _, err) = parts(&run(&["ingest", "-d", s(&dir), "--key-file", s(&k1), "-t", "t", "-f", s(&f)]));
        assert_eq!(code, 0, "{err}");
    }
    Fixture { _t: t, dir, k1, k2 }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn count(dir: &Path, key: &Path) -> Result<u64, (i32, String)> {
    let (code, out, err) =
        parts(&run(&["sql", "-d", s(dir), "--key-file", s(key), "-e", "SELECT COUNT(*) FROM t", "--json"]));
    if code != 0 {
        return Err((code, err));
    }
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or("{}")).unwrap();
    Ok(v["COUNT(*)"].as_u64().unwrap())
}

#[test]
fn keys_rotate_status_audit_and_the_retired_key() {
    let f = fixture(300, 3);
    let (code, out, err) =
        parts(&run(&["keys", "rotate", "-d", s(&f.dir), "--key-file", s(&f.k1), "--new-key-file", s(&f.k2)]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("master key version 2 is active"), "{out}");
    assert!(out.contains("no live file is encrypted under key version 1"), "{out}");
    // The old key: exit 3, and the message says it was retired.
    let (code, _, err) = parts(&run(&["tables", "-d", s(&f.dir), "--key-file", s(&f.k1)]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("retired"), "{err}");
    assert_eq!(count(&f.dir, &f.k2).unwrap(), 900);
    // Status as JSON, in the documented shape.
    let (code, out, err) = parts(&run(&["keys", "status", "-d", s(&f.dir), "--key-file", s(&f.k2), "--json"]));
    assert_eq!(code, 0, "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["active_key_version"], 2);
    assert_eq!(st["database_id"].as_str().unwrap().len(), 32);
    assert_eq!(st["rotation"]["state"], "complete");
    assert_eq!(st["rotation"]["files_done"], st["rotation"]["files_total"]);
    assert_eq!(st["rotation"]["bytes_done"], st["rotation"]["bytes_total"]);
    let v1 = &st["keys"][0];
    assert_eq!((v1["version"].as_u64(), v1["state"].as_str()), (Some(1), Some("retired")));
    assert_eq!((v1["files"].as_u64(), v1["bytes"].as_u64()), (Some(0), Some(0)));
    assert_eq!(st["keys"][1]["state"], "active");
    // The audit log lists every step.
    let (code, out, err) = parts(&run(&["keys", "audit", "-d", s(&f.dir), "--key-file", s(&f.k2), "--json"]));
    assert_eq!(code, 0, "{err}");
    let events: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].as_str().unwrap().to_string())
        .collect();
    for e in
        ["database-created", "rewrap", "reencrypt-started", "reencrypt-file", "reencrypt-finished", "master-destroyed"]
    {
        assert!(events.iter().any(|x| x == e), "{e} missing from {events:?}");
    }
    // Verify checks every frame and the audit chain; nothing readable on disk.
    let (code, out, err) = parts(&run(&["verify", "-d", s(&f.dir), "--key-file", s(&f.k2)]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("hash chain intact"), "{out}");
    for (p, bytes) in tree(&f.dir) {
        assert!(!contains(&bytes, CANARY.as_bytes()), "canary in {}", p.display());
    }
    // Usage errors: no new key, two new keys.
    let (code, _, _) = parts(&run(&["keys", "rotate", "-d", s(&f.dir), "--key-file", s(&f.k2)]));
    assert_eq!(code, 2);
    let (code, _, _) = parts(&run(&[
        "keys",
        "rotate",
        "-d",
        s(&f.dir),
        "--key-file",
        s(&f.k2),
        "--new-key-file",
        s(&f.k1),
        "--data-keys-only",
    ]));
    assert_eq!(code, 2);
    let (code, _, err) =
        parts(&run(&["keys", "rotate", "-d", s(&f.dir), "--key-file", s(&f.k2), "--new-key-file", s(&f.k1)]));
    assert_eq!(code, 2, "the retired key cannot come back: {err}");
    let (code, _, err) = parts(&run(&[
        "keys",
        "rotate",
        "-d",
        s(&f.dir),
        "--key-file",
        s(&f.k2),
        "--data-keys-only",
        "--throttle",
        "fast",
    ]));
    assert_eq!(code, 2, "{err}");
}

#[test]
fn kill_9_during_keys_rotate_then_resume_finishes_with_all_data() {
    let runs: usize = std::env::var("DRIFTDB_ROTATE_KILL_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let f = fixture(200, 6);
    let total = count(&f.dir, &f.k1).unwrap();
    let mut keys: Vec<PathBuf> = vec![f.k1.clone(), f.k2.clone()];
    // keys[cur] opens the database; keys[cur + 1] is the rotation's target.
    let mut cur = 0;
    let mut seed = 0x1234_5678_9abc_def1u64;
    let (mut kills, mut killed_reencrypting) = (0, 0);
    for round in 0..runs {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let (old, new) = (keys[cur].clone(), keys[cur + 1].clone());
        // An unfinished re-encryption is resumed; otherwise a new rotation starts.
        let status = {
            let (_, out, _) = parts(&run(&["keys", "status", "-d", s(&f.dir), "--key-file", s(&old), "--json"]));
            serde_json::from_str::<serde_json::Value>(&out).ok()
        };
        let resuming = status.as_ref().is_some_and(|st| st["rotation"]["state"] == "interrupted");
        let mut args = vec!["keys", if resuming { "resume" } else { "rotate" }, "-d", s(&f.dir), "--key-file", s(&old)];
        if !resuming {
            args.extend_from_slice(&["--new-key-file", s(&new)]);
        }
        args.extend_from_slice(&["--throttle", "20K"]);
        let mut child = bin()
            .args(&args)
            .env_remove("DRIFTDB_KEY_FILE")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20 + seed % 400));
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        kills += usize::from(!finished);
        // Exactly one key opens the database, with all the data.
        let opener = if resuming { &old } else { &new };
        match (count(&f.dir, opener), count(&f.dir, if resuming { &new } else { &old })) {
            (Ok(n), Err((3, _))) => {
                assert_eq!(n, total, "round {round}");
                if !resuming {
                    cur += 1;
                    keys.push(key_file(f._t.path(), &format!("k{}", keys.len() + 1), 0x40 + keys.len() as u8));
                }
                killed_reencrypting += usize::from(!finished);
            }
            (Err((3, _)), Ok(n)) if !resuming => assert_eq!(n, total, "round {round}: killed before the re-wrap"),
            other => panic!("round {round}: {other:?}"),
        }
    }
    eprintln!("{kills} kills, {killed_reencrypting} of them after the re-wrap");
    assert!(kills > 0);
    let key = keys[cur].clone();
    let (code, out, err) = parts(&run(&["keys", "resume", "-d", s(&f.dir), "--key-file", s(&key)]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rotation: complete"), "{out}");
    let (code, out, _) = parts(&run(&["keys", "status", "-d", s(&f.dir), "--key-file", s(&key), "--json"]));
    assert_eq!(code, 0);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["rotation"]["state"], "complete", "{st}");
    for v in st["keys"].as_array().unwrap() {
        if v["state"] != "active" {
            assert_eq!(v["files"], 0, "{st}");
        }
    }
    assert_eq!(count(&f.dir, &key).unwrap(), total);
    for old in &keys[..cur] {
        assert_eq!(count(&f.dir, old).unwrap_err().0, 3);
    }
    let (code, out, err) = parts(&run(&["verify", "-d", s(&f.dir), "--key-file", s(&key)]));
    assert_eq!(code, 0, "{out}{err}");
}
