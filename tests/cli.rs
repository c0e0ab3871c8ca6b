//! The `driftdb` CLI: keygen, init, verify, key options and exit codes.

mod common;
use common::*;
use driftdb::{FileKind, KeySource, Store, StoreOptions};
use std::os::unix::fs::PermissionsExt;

fn populate(dir: &std::path::Path, key: &std::path::Path) {
    let s = Store::open(dir, &KeySource::key_file(key), StoreOptions::default()).unwrap();
    for i in 0..50 {
        s.append(1, FileKind::Segment, format!("record {i}").as_bytes()).unwrap();
    }
    s.close().unwrap();
}

#[test]
fn keygen_writes_a_0600_key_and_never_overwrites() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("master.key");
    let (code, out, _) = parts(&run(&["keygen", p.to_str().unwrap()]));
    assert_eq!(code, 0);
    assert!(out.contains("mode 0600"));
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    let first = std::fs::read(&p).unwrap();
    assert!(driftdb::crypto::keysource::parse_key_text(&first).is_ok());
    let (code, _, err) = parts(&run(&["keygen", p.to_str().unwrap()]));
    assert_eq!(code, 1);
    assert!(err.contains("never overwrites"), "{err}");
    assert_eq!(std::fs::read(&p).unwrap(), first);
    // Two keys differ.
    let q = t.path().join("other.key");
    assert_eq!(run(&["keygen", q.to_str().unwrap()]).status.code(), Some(0));
    assert_ne!(std::fs::read(&q).unwrap(), first);
}

#[test]
fn init_then_verify_with_a_key_file() {
    let t = tempfile::tempdir().unwrap();
    let k = key_file(t.path(), "k", 0x11);
    let d = t.path().join("db");
    let (code, out, err) = parts(&run(&["init", d.to_str().unwrap(), "--key-file", k.to_str().unwrap()]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("created database"));
    populate(&d, &k);
    let (code, out, err) = parts(&run(&["verify", "-d", d.to_str().unwrap(), "--key-file", k.to_str().unwrap()]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("51 frames"), "50 records and the audit log's first entry: {out}");
    assert!(out.contains("OK"));
    let o = run(&["verify", "-d", d.to_str().unwrap(), "--key-file", k.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["frames_checked"], 51);
    assert_eq!(v["authenticated"], true);
}

#[test]
fn init_refuses_a_non_empty_directory() {
    let t = tempfile::tempdir().unwrap();
    let k = key_file(t.path(), "k", 0x11);
    let d = t.path().join("db");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("precious.txt"), b"keep me").unwrap();
    let (code, _, err) = parts(&run(&["init", d.to_str().unwrap(), "--key-file", k.to_str().unwrap()]));
    assert_eq!(code, 1);
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read(d.join("precious.txt")).unwrap(), b"keep me");
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
}

#[test]
fn wrong_key_exits_3_and_leaves_every_file_byte_identical() {
    let t = tempfile::tempdir().unwrap();
    let k = key_file(t.path(), "k", 0x11);
    let wrong = key_file(t.path(), "wrong", 0x12);
    let d = t.path().join("db");
    assert_eq!(run(&["init", d.to_str().unwrap(), "--key-file", k.to_str().unwrap()]).status.code(), Some(0));
    populate(&d, &k);
    // As in a restored copy: no lock file. Neither a wrong key nor a read-only
    // verify may create one.
    std::fs::remove_file(d.join("LOCK")).unwrap();
    let before = tree(&d);
    let (code, _, err) = parts(&run(&["verify", "-d", d.to_str().unwrap(), "--key-file", k.to_str().unwrap()]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(tree(&d), before, "read-only verify wrote something");
    let s = Store::open(&d, &KeySource::key_file(&wrong), StoreOptions::default());
    assert!(matches!(s, Err(driftdb::Error::WrongKey(_))));
    assert_eq!(tree(&d), before, "a read-write open with the wrong key wrote something");
    let (code, _, err) = parts(&run(&["verify", "-d", d.to_str().unwrap(), "--key-file", wrong.to_str().unwrap()]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("wrong key"), "{err}");
    assert!(!err.contains(&"12".repeat(8)), "key material in the message");
    assert_eq!(tree(&d), before);
    // A passphrase against a key-file database: also exit 3.
    let (code, _, err) =
        parts(&run_env(&["verify", "-d", d.to_str().unwrap(), "--passphrase-env", "PW"], &[("PW", "not it")]));
    assert_eq!(code, 3, "{err}");
    assert_eq!(tree(&d), before);
}

#[test]
fn passphrase_database_wrong_passphrase_exits_3() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("db");
    let d = d.to_str().unwrap();
    let (code, _, err) = parts(&run_env(&["init", d, "--passphrase-env", "PW"], &[("PW", "correct horse battery")]));
    assert_eq!(code, 0, "{err}");
    let before = tree(std::path::Path::new(d));
    let (code, _, err) = parts(&run_env(&["verify", "-d", d, "--passphrase-env", "PW"], &[("PW", "wrong horse")]));
    assert_eq!(code, 3, "{err}");
    assert!(!err.contains("wrong horse"));
    assert_eq!(tree(std::path::Path::new(d)), before);
    let (code, _, err) = parts(&run_env(&["verify", "-d", d], &[("DRIFTDB_PASSPHRASE", "correct horse battery")]));
    assert_eq!(code, 0, "{err}");
    // The Argon2id parameters in the keyring header meet the floor.
    let kr = std::fs::read(std::path::Path::new(d).join("keyring")).unwrap();
    let sk = driftdb::format::keyring::decode_keyring(&kr).unwrap();
    match sk.header.active.spec {
        driftdb::format::keyring::MasterSpec::Passphrase { params, .. } => {
            assert!(params.m_cost_kib >= 64 * 1024 && params.t_cost >= 3)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn env_and_command_key_sources_open_the_same_database() {
    let t = tempfile::tempdir().unwrap();
    let hex = "5a".repeat(32);
    let d = t.path().join("db");
    let d = d.to_str().unwrap();
    let (code, _, err) = parts(&run_env(&["init", d, "--key-env", "MK"], &[("MK", &hex)]));
    assert_eq!(code, 0, "{err}");
    let cmd = format!("printf '%s' {hex}");
    let (code, _, err) = parts(&run(&["verify", "-d", d, "--key-command", &cmd]));
    assert_eq!(code, 0, "{err}");
    let k = t.path().join("k");
    std::fs::write(&k, &hex).unwrap();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, _, err) = parts(&run_env(&["verify", "-d", d], &[("DRIFTDB_KEY_FILE", k.to_str().unwrap())]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = parts(&run(&["verify", "-d", d, "--key-command", "exit 9"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("key command failed"));
    let (code, _, err) = parts(&run(&["verify", "-d", d, "--key-env", "DRIFTDB_TEST_NOT_SET"]));
    assert_eq!(code, 3);
    assert!(err.contains("DRIFTDB_TEST_NOT_SET is not set"), "{err}");
}

#[test]
fn insecure_key_file_is_refused_unless_forced() {
    let t = tempfile::tempdir().unwrap();
    let k = key_file(t.path(), "k", 0x21);
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
    let d = t.path().join("db");
    let (code, _, err) = parts(&run(&["init", d.to_str().unwrap(), "--key-file", k.to_str().unwrap()]));
    assert_eq!(code, 3);
    assert!(err.contains("readable by group or others") && err.contains("--allow-insecure-key-file"), "{err}");
    assert!(!d.exists(), "nothing created");
    let (code, _, err) =
        parts(&run(&["init", d.to_str().unwrap(), "--key-file", k.to_str().unwrap(), "--allow-insecure-key-file"]));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn missing_key_and_usage_errors() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("db");
    let (code, _, err) = parts(&run(&["init", d.to_str().unwrap()]));
    assert_eq!(code, 3);
    assert!(err.contains("no key given"), "{err}");
    let (code, _, _) = parts(&run(&["verify"]));
    assert_eq!(code, 2, "missing -d is a usage error");
    let (code, _, _) = parts(&run(&["frobnicate"]));
    assert_eq!(code, 2);
    let k = key_file(t.path(), "k", 1);
    let (code, _, _) = parts(&run(&["verify", "-d", "x", "--key-file", k.to_str().unwrap(), "--key-env", "V"]));
    assert_eq!(code, 2, "two key sources is a usage error");
    let (code, _, err) =
        parts(&run(&["verify", "-d", t.path().join("nothing").to_str().unwrap(), "--key-file", k.to_str().unwrap()]));
    assert_eq!(code, 1);
    assert!(err.contains("not a DriftDB database"), "{err}");
}

#[test]
fn verify_reports_damage_with_file_and_offset_and_exits_4() {
    let t = tempfile::tempdir().unwrap();
    let k = key_file(t.path(), "k", 0x31);
    let d = t.path().join("db");
    assert_eq!(run(&["init", d.to_str().unwrap(), "--key-file", k.to_str().unwrap()]).status.code(), Some(0));
    populate(&d, &k);
    let seg = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[100] ^= 0x04;
    std::fs::write(&seg, &bytes).unwrap();
    let name = seg.file_name().unwrap().to_str().unwrap();
    for extra in [&["--key-file", k.to_str().unwrap()][..], &["--no-key"][..]] {
        let mut args = vec!["verify", "-d", d.to_str().unwrap()];
        args.extend_from_slice(extra);
        let (code, out, err) = parts(&run(&args));
        assert_eq!(code, 4, "{out}{err}");
        assert!(out.contains(name) && out.contains("PROBLEM"), "{out}");
        assert!(out.contains("at offset"), "{out}");
    }
    // A damaged keyring: exit 4 too, naming the keyring.
    let kr = d.join("keyring");
    let mut kb = std::fs::read(&kr).unwrap();
    kb[40] ^= 1;
    std::fs::write(&kr, &kb).unwrap();
    let (code, out, _) = parts(&run(&["verify", "-d", d.to_str().unwrap(), "--key-file", k.to_str().unwrap()]));
    assert_eq!(code, 4);
    assert!(out.contains("keyring"), "{out}");
}

#[test]
fn a_database_in_use_exits_5() {
    let t = tempfile::tempdir().unwrap();
    let k = key_file(t.path(), "k", 0x41);
    let d = t.path().join("db");
    assert_eq!(run(&["init", d.to_str().unwrap(), "--key-file", k.to_str().unwrap()]).status.code(), Some(0));
    let held = Store::open(&d, &KeySource::key_file(&k), StoreOptions::default()).unwrap();
    let (code, _, err) = parts(&run(&["verify", "-d", d.to_str().unwrap(), "--key-file", k.to_str().unwrap()]));
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("in use"));
    drop(held);
    assert_eq!(run(&["verify", "-d", d.to_str().unwrap(), "--key-file", k.to_str().unwrap()]).status.code(), Some(0));
}

#[test]
fn keys_example_sources_work() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("keys-example");
    let t = tempfile::tempdir().unwrap();
    // The example key file, copied and made private as the README says.
    let k = t.path().join("master.key");
    std::fs::copy(root.join("example-master.key"), &k).unwrap();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = t.path().join("db");
    let (code, _, err) = parts(&run(&["init", d.to_str().unwrap(), "--key-file", k.to_str().unwrap()]));
    assert_eq!(code, 0, "{err}");
    // The example key command prints the same key.
    let cmd = root.join("key-command.sh");
    let (code, _, err) = parts(&run(&["verify", "-d", d.to_str().unwrap(), "--key-command", cmd.to_str().unwrap()]));
    assert_eq!(code, 0, "{err}");
    // The example passphrase file's variable works for a passphrase database.
    let env = std::fs::read_to_string(root.join("passphrase.env.example")).unwrap();
    let line = env.lines().find(|l| l.starts_with("DRIFTDB_EXAMPLE_PASSPHRASE=")).unwrap();
    let pass = line.split_once('=').unwrap().1.trim_matches('\'');
    let d2 = t.path().join("db2");
    let vars = [("DRIFTDB_EXAMPLE_PASSPHRASE", pass)];
    let (code, _, err) =
        parts(&run_env(&["init", d2.to_str().unwrap(), "--passphrase-env", "DRIFTDB_EXAMPLE_PASSPHRASE"], &vars));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = parts(&run_env(
        &["verify", "-d", d2.to_str().unwrap(), "--passphrase-env", "DRIFTDB_EXAMPLE_PASSPHRASE"],
        &vars,
    ));
    assert_eq!(code, 0, "{err}");
}
