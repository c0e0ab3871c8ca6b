//! The `driftdb` command-line tool.
//!
//! Exit codes: 0 ok · 1 operation failed · 2 usage · 3 key problem ·
//! 4 integrity problem · 5 database in use.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use clap::{Args, Parser, Subcommand};
use driftdb::{Argon2Params, CreateOptions, Error, KeySource, Store, StoreOptions};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "driftdb", version, about = "An append-only, time-travelling document database, encrypted at rest")]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

/// Where the master key comes from. With none given, DRIFTDB_KEY_FILE or
/// DRIFTDB_PASSPHRASE are used, then a prompt on a terminal.
#[derive(Args, Debug, Default)]
struct KeyOpts {
    /// Master key file: 32 raw bytes, 64 hex digits or base64 (must be mode 0600).
    #[arg(long, value_name = "PATH", group = "key")]
    key_file: Option<PathBuf>,
    /// Accept a key file that group or others can read.
    #[arg(long)]
    allow_insecure_key_file: bool,
    /// Name of an environment variable holding a passphrase (Argon2id).
    #[arg(long, value_name = "VAR", group = "key")]
    passphrase_env: Option<String>,
    /// Name of an environment variable holding the key as hex or base64.
    #[arg(long, value_name = "VAR", group = "key")]
    key_env: Option<String>,
    /// Shell command that prints the key (KMS, Vault, HSM...).
    #[arg(long, value_name = "CMD", group = "key")]
    key_command: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new random 256-bit master key (mode 0600; never overwrites).
    Keygen {
        /// Where to write the key.
        path: PathBuf,
    },
    /// Create a new database in an empty or missing directory.
    Init {
        /// The data directory.
        dir: PathBuf,
        #[command(flatten)]
        key: KeyOpts,
        /// Argon2id memory in MiB (passphrase keys only).
        #[arg(long, default_value_t = 64)]
        kdf_memory_mib: u32,
        /// Argon2id iterations (passphrase keys only).
        #[arg(long, default_value_t = 3)]
        kdf_iterations: u32,
        /// Argon2id lanes (passphrase keys only).
        #[arg(long, default_value_t = 1)]
        kdf_parallelism: u32,
    },
    /// Check every file: keyring, manifest, every frame's CRC and tag.
    Verify {
        /// The data directory.
        #[arg(short = 'd', long = "dir", value_name = "DIR")]
        dir: PathBuf,
        #[command(flatten)]
        key: KeyOpts,
        /// Check structure and CRCs only, without a key.
        #[arg(long)]
        no_key: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn key_source(k: &KeyOpts, confirm: bool) -> Result<KeySource, Error> {
    if let Some(p) = &k.key_file {
        return Ok(KeySource::KeyFile { path: p.clone(), allow_insecure: k.allow_insecure_key_file });
    }
    if let Some(v) = &k.passphrase_env {
        let p = std::env::var(v).map_err(|_| Error::KeySource(format!("environment variable {v} is not set")))?;
        return Ok(KeySource::passphrase(p));
    }
    if let Some(v) = &k.key_env {
        return Ok(KeySource::Env(v.clone()));
    }
    if let Some(c) = &k.key_command {
        return Ok(KeySource::Command(c.clone()));
    }
    if let Some(p) = std::env::var_os("DRIFTDB_KEY_FILE") {
        return Ok(KeySource::KeyFile { path: p.into(), allow_insecure: k.allow_insecure_key_file });
    }
    if let Ok(p) = std::env::var("DRIFTDB_PASSPHRASE") {
        return Ok(KeySource::passphrase(p));
    }
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        let p = rpassword::prompt_password("Passphrase: ")
            .map_err(|e| Error::KeySource(format!("cannot read the passphrase: {e}")))?;
        if confirm {
            let again = rpassword::prompt_password("Repeat passphrase: ")
                .map_err(|e| Error::KeySource(format!("cannot read the passphrase: {e}")))?;
            if again != p {
                return Err(Error::KeySource("the passphrases do not match".into()));
            }
        }
        return Ok(KeySource::passphrase(p));
    }
    Err(Error::KeySource(
        "no key given: pass --key-file, --passphrase-env, --key-env or --key-command, or set DRIFTDB_KEY_FILE or DRIFTDB_PASSPHRASE".into(),
    ))
}

fn run(cli: Cli) -> Result<u8, Error> {
    match cli.cmd {
        Command::Keygen { path } => {
            keygen(&path)?;
            println!(
                "wrote a new 256-bit master key to {} (mode 0600); keep it away from the data directory",
                path.display()
            );
            Ok(0)
        }
        Command::Init { dir, key, kdf_memory_mib, kdf_iterations, kdf_parallelism } => {
            let ks = key_source(&key, true)?;
            let argon2 = Argon2Params {
                m_cost_kib: kdf_memory_mib.saturating_mul(1024),
                t_cost: kdf_iterations,
                p_cost: kdf_parallelism,
            };
            let store = Store::create(&dir, &ks, CreateOptions { argon2, store: StoreOptions::default() })?;
            let id: String = store.db_id().iter().map(|b| format!("{b:02x}")).collect();
            store.close()?;
            println!("created database {id} in {} (master key: {})", dir.display(), ks.describe());
            Ok(0)
        }
        Command::Verify { dir, key, no_key, json } => {
            let report = if no_key {
                driftdb::verify_without_key(&dir, &driftdb::storage::StdFs)?
            } else {
                let ks = key_source(&key, false)?;
                let opts = StoreOptions { read_only: true, ..StoreOptions::default() };
                match Store::open(&dir, &ks, opts) {
                    Ok(store) => store.verify(),
                    Err(e) if e.is_integrity() => {
                        let p = driftdb::storage::verify::locate_public(&e);
                        driftdb::VerifyReport { authenticated: true, problems: vec![p], ..Default::default() }
                    }
                    Err(e) => return Err(e),
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_else(|_| "{}".into()));
            } else {
                print_report(&dir, &report);
            }
            Ok(if report.problems.is_empty() { 0 } else { 4 })
        }
    }
}

fn print_report(dir: &std::path::Path, r: &driftdb::VerifyReport) {
    println!("verify {}", dir.display());
    println!(
        "  checked {} files, {} frames, {} bytes ({})",
        r.files_checked,
        r.frames_checked,
        r.bytes_checked,
        if r.authenticated { "CRC and authentication tag of every frame" } else { "structure and CRCs only, no key" }
    );
    if let Some(v) = r.master_version {
        println!("  keyring and manifest authenticated under master key version {v}");
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
    for p in &r.problems {
        println!("  PROBLEM: {} at offset {}: {}", p.file, p.offset, p.problem);
    }
    if r.problems.is_empty() {
        println!("  OK: no problems found");
    } else {
        println!("  FAILED: {} problem(s)", r.problems.len());
    }
}

fn keygen(path: &std::path::Path) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = driftdb::crypto::keys::SecretKey::random()?;
    let hex = driftdb::crypto::keysource::key_to_hex(&key);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::AlreadyExists(format!("{} exists; keygen never overwrites a key", path.display()))
        } else {
            Error::KeySource(format!("cannot create {}: {e}", path.display()))
        }
    })?;
    f.write_all(hex.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::KeySource(format!("cannot write {}: {e}", path.display())))?;
    Ok(())
}
