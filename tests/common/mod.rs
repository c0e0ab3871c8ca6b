//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `driftdb` binary built for these tests.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_driftdb"))
}

/// Run the CLI with args; no stdin, no inherited DRIFTDB_* variables.
pub fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

/// Run the CLI with args and extra environment variables.
pub fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = bin();
    c.args(args)
        .env_remove("DRIFTDB_KEY_FILE")
        .env_remove("DRIFTDB_PASSPHRASE")
        .env_remove("DRIFTDB_DIR")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Exit code, stdout and stderr as text.
pub fn parts(o: &Output) -> (i32, String, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// Write a 0600 key file holding `byte` repeated, as hex.
pub fn key_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{}\n", format!("{byte:02x}").repeat(32))).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Every file under `dir` with its bytes.
pub fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                m.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    m
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Re-run this test binary in child mode (only test `entry`, with `env`),
/// wait until it prints `CHILD-OPEN`, let it run for `run_for`, SIGKILL it,
/// and return the text after `ack ` of every line it printed.
pub fn run_child_and_kill(entry: &str, env: &[(&str, &str)], run_for: std::time::Duration) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", entry, "--nocapture", "--test-threads=1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.ends_with("CHILD-OPEN") {
                let _ = tx.send(());
            } else if let Some(rest) = line.strip_prefix("ack ") {
                acked.push(rest.to_string());
            }
        }
        acked
    });
    rx.recv_timeout(std::time::Duration::from_secs(60)).expect("child never opened the database");
    let t0 = std::time::Instant::now();
    while t0.elapsed() < run_for {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap()
}
