//! The `driftdb` command-line tool.
//!
//! Exit codes: 0 ok · 1 operation failed · 2 usage · 3 key problem ·
//! 4 integrity problem · 5 database in use · 6 transaction conflict.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use clap::{Args, Parser, Subcommand};
use driftdb::query::ast::quote_ident;
use driftdb::{Argon2Params, CreateOptions, Db, Error, KeySource, Options, Outcome, Store, StoreOptions};
use serde_json::Value;
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

/// The new master key of a rotation.
#[derive(Args, Debug, Default)]
struct NewKeyOpts {
    /// New master key file (must be mode 0600).
    #[arg(long, value_name = "PATH", group = "new_key")]
    new_key_file: Option<PathBuf>,
    /// Name of an environment variable holding the new passphrase.
    #[arg(long, value_name = "VAR", group = "new_key")]
    new_passphrase_env: Option<String>,
    /// Name of an environment variable holding the new key as hex or base64.
    #[arg(long, value_name = "VAR", group = "new_key")]
    new_key_env: Option<String>,
    /// Shell command that prints the new key.
    #[arg(long, value_name = "CMD", group = "new_key")]
    new_key_command: Option<String>,
}

impl NewKeyOpts {
    fn source(&self, allow_insecure: bool) -> Result<Option<KeySource>, Error> {
        Ok(if let Some(p) = &self.new_key_file {
            Some(KeySource::KeyFile { path: p.clone(), allow_insecure })
        } else if let Some(v) = &self.new_passphrase_env {
            let p = std::env::var(v).map_err(|_| Error::KeySource(format!("environment variable {v} is not set")))?;
            Some(KeySource::passphrase(p))
        } else if let Some(v) = &self.new_key_env {
            Some(KeySource::Env(v.clone()))
        } else {
            self.new_key_command.as_ref().map(|c| KeySource::Command(c.clone()))
        })
    }
}

/// Key management.
#[derive(Subcommand)]
enum KeysCmd {
    /// Rotate the master key (re-wrap at once), then re-encrypt every file
    /// under fresh data keys in the foreground. Interrupted, it resumes with
    /// `keys resume` (or on the next open by an application).
    Rotate {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        new: NewKeyOpts,
        /// Only re-wrap the data keys under the new master key.
        #[arg(long, conflicts_with = "data_keys_only")]
        rewrap_only: bool,
        /// Keep the master key; re-encrypt every file under fresh data keys.
        #[arg(long, conflicts_with = "new_key")]
        data_keys_only: bool,
        /// Re-encrypt at most RATE bytes per second (suffix K, M or G: 50M).
        #[arg(long, value_name = "RATE")]
        throttle: Option<String>,
        /// Argon2id memory in MiB (a new passphrase only).
        #[arg(long, default_value_t = 64)]
        kdf_memory_mib: u32,
        /// Argon2id iterations (a new passphrase only).
        #[arg(long, default_value_t = 3)]
        kdf_iterations: u32,
        /// Argon2id lanes (a new passphrase only).
        #[arg(long, default_value_t = 1)]
        kdf_parallelism: u32,
    },
    /// Finish an interrupted re-encryption.
    Resume {
        #[command(flatten)]
        db: DbArgs,
        /// Re-encrypt at most RATE bytes per second (suffix K, M or G).
        #[arg(long, value_name = "RATE")]
        throttle: Option<String>,
    },
    /// Key versions, what each still protects, and the rotation's progress.
    Status {
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The key audit log (hash chain checked).
    Audit {
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON Lines.
        #[arg(long)]
        json: bool,
    },
}

/// Which database to open, and with which key.
#[derive(Args, Debug)]
struct DbArgs {
    /// The data directory.
    #[arg(short = 'd', long = "dir", value_name = "DIR")]
    dir: PathBuf,
    #[command(flatten)]
    key: KeyOpts,
}

/// Which database, with which key, and which migrations folder.
#[derive(Args, Debug)]
struct MigrateArgs {
    /// The data directory.
    #[arg(short = 'd', long = "data-dir", value_name = "DIR")]
    data: PathBuf,
    #[command(flatten)]
    key: KeyOpts,
    /// The migrations folder (files NNNN_name.driftql).
    #[arg(long = "dir", value_name = "MIGRATIONS")]
    migrations: PathBuf,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

/// What `migrate` does.
#[derive(Subcommand)]
enum MigrateCmd {
    /// List applied and pending migrations (and check the folder).
    Status,
    /// Apply the pending migrations in order, each as one transaction.
    Up {
        /// Stop after this version.
        #[arg(long, value_name = "N")]
        to: Option<u64>,
        /// Run everything, checks included, and report what would change;
        /// commit nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check checksums and order of the applied migrations; apply nothing.
    Validate,
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
    /// Run DriftQL statements (each write is its own commit; the first error stops).
    Sql {
        #[command(flatten)]
        db: DbArgs,
        /// Statements to run.
        #[arg(
            short = 'e',
            long = "execute",
            value_name = "STATEMENTS",
            conflicts_with = "file",
            required_unless_present = "file"
        )]
        execute: Option<String>,
        /// A file of statements to run.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
        /// Print result rows as JSON Lines.
        #[arg(long)]
        json: bool,
    },
    /// Read a table, now or as of a point in history.
    Select {
        #[command(flatten)]
        db: DbArgs,
        /// Table.
        #[arg(short = 't', long = "table")]
        table: String,
        /// A WHERE expression, e.g. `status = "paid" AND amount > 10`.
        #[arg(short = 'w', long = "where", value_name = "EXPR")]
        filter: Option<String>,
        /// @seq:N, an RFC 3339 time, or @now.
        #[arg(long, value_name = "AS_OF")]
        as_of: Option<String>,
        /// At most this many rows.
        #[arg(short = 'l', long = "limit", value_name = "N")]
        limit: Option<u64>,
        /// Print JSON Lines.
        #[arg(long)]
        json: bool,
    },
    /// A row's whole history.
    Drift {
        #[command(flatten)]
        db: DbArgs,
        /// Table.
        #[arg(short = 't', long = "table")]
        table: String,
        /// Row key: an integer, a bare string, or a JSON string (`'"1"'` for the string 1).
        #[arg(short = 'k', long = "key", value_name = "KEY")]
        row: String,
        /// Print JSON Lines.
        #[arg(long)]
        json: bool,
    },
    /// List tables.
    Tables {
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON Lines.
        #[arg(long)]
        json: bool,
    },
    /// Snapshot a table now, so reads of the present and the past replay less.
    Snapshot {
        #[command(flatten)]
        db: DbArgs,
        /// Table.
        #[arg(short = 't', long = "table")]
        table: String,
    },
    /// Fold a table's history before a horizon into a snapshot (`--before`);
    /// reads before the horizon become errors, everything after is unchanged.
    Compact {
        #[command(flatten)]
        db: DbArgs,
        /// Table.
        #[arg(short = 't', long = "table")]
        table: String,
        /// The horizon: @seq:N or an RFC 3339 time (default: keep all history).
        #[arg(long, value_name = "AS_OF")]
        before: Option<String>,
    },
    /// Load a JSON Lines file into a table, in batched commits.
    Ingest {
        #[command(flatten)]
        db: DbArgs,
        /// Table.
        #[arg(short = 't', long = "table")]
        table: String,
        /// The JSON Lines file (one document per line).
        #[arg(short = 'f', long = "file", value_name = "FILE.jsonl")]
        file: PathBuf,
        /// Documents per commit.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Schema migrations from a folder of NNNN_name.driftql files.
    Migrate {
        #[command(flatten)]
        args: MigrateArgs,
        #[command(subcommand)]
        action: MigrateCmd,
    },
    /// Master and data keys: rotate, resume, status, audit log.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Check every file: keyring, manifest, every frame's CRC and tag.
    Verify {
        #[command(flatten)]
        db: DbArgs,
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
        Command::Sql { db: DbArgs { dir, key }, execute, file, json } => {
            let script = match (execute, file) {
                (Some(e), _) => e,
                (None, Some(f)) => std::fs::read_to_string(&f).map_err(|e| Error::io("reading", &f, e))?,
                (None, None) => return Err(Error::InvalidArgument("give -e STATEMENTS or -f FILE".into())),
            };
            let db = open_db(&dir, &key, false)?;
            db.execute_each(&script, |out| print_outcome(&out, json))?;
            db.close()?;
            Ok(0)
        }
        Command::Select { db: DbArgs { dir, key }, table, filter, as_of, limit, json } => {
            let mut q =
                format!("SELECT * FROM {}", Value::from(table.as_str()).as_str().map(quote_ident).unwrap_or_default());
            if let Some(w) = filter {
                q.push_str(&format!(" WHERE {w}"));
            }
            if let Some(a) = as_of {
                q.push_str(&format!(" AS OF {}", point_text(&a)));
            }
            if let Some(l) = limit {
                q.push_str(&format!(" LIMIT {l}"));
            }
            let stmt = driftdb::query::parse_one(&q)?;
            let db = open_db(&dir, &key, true)?;
            print_outcome(&db.execute_stmt(&stmt)?, json);
            Ok(0)
        }
        Command::Migrate { args, action } => migrate(args, action),
        Command::Drift { db: DbArgs { dir, key }, table, row, json } => {
            let db = open_db(&dir, &key, true)?;
            let k = parse_key(&row)?;
            print_outcome(&Outcome::Drift(db.history(&table, &k)?), json);
            Ok(0)
        }
        Command::Snapshot { db: DbArgs { dir, key }, table } => {
            let db = open_db(&dir, &key, false)?;
            print_outcome(&Outcome::Snapshot(db.snapshot(&table)?), false);
            db.close()?;
            Ok(0)
        }
        Command::Compact { db: DbArgs { dir, key }, table, before } => {
            let mut q = format!("COMPACT {}", quote_ident(&table));
            if let Some(b) = before {
                q.push_str(&format!(" BEFORE {}", point_text(&b)));
            }
            let stmt = driftdb::query::parse_one(&q)?;
            let db = open_db(&dir, &key, false)?;
            print_outcome(&db.execute_stmt(&stmt)?, false);
            db.close()?;
            Ok(0)
        }
        Command::Tables { db: DbArgs { dir, key }, json } => {
            let db = open_db(&dir, &key, true)?;
            print_outcome(&Outcome::Tables(db.tables()), json);
            Ok(0)
        }
        Command::Ingest { db: DbArgs { dir, key }, table, file, batch } => {
            let db = open_db(&dir, &key, false)?;
            let t0 = std::time::Instant::now();
            let n = ingest(&db, &table, &file, batch.max(1))?;
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "ingested {n} documents into {table} in {secs:.2} s ({:.0} docs/s; latest sequence {})",
                n as f64 / secs.max(1e-9),
                db.latest_seq()
            );
            db.close()?;
            Ok(0)
        }
        Command::Keys { cmd } => keys(cmd),
        Command::Verify { db: DbArgs { dir, key }, no_key, json } => {
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

fn open_db(dir: &std::path::Path, key: &KeyOpts, read_only: bool) -> Result<Db, Error> {
    let ks = key_source(key, false)?;
    Db::open(
        dir,
        &ks,
        Options {
            store: StoreOptions { read_only, ..StoreOptions::default() },
            // Re-encryption is `keys resume`'s job, not every command's.
            resume_rotation: false,
            ..Options::default()
        },
    )
}

/// `50M` → 50,000,000 bytes per second.
fn parse_rate(s: &str) -> Result<u64, Error> {
    let t = s.trim().trim_end_matches("/s").trim_end_matches(['B', 'b']);
    let (num, mul) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1_000u64),
        Some('M' | 'm') => (&t[..t.len() - 1], 1_000_000),
        Some('G' | 'g') => (&t[..t.len() - 1], 1_000_000_000),
        _ => (t, 1),
    };
    match num.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n * mul as f64 >= 1.0 => Ok((n * mul as f64) as u64),
        _ => {
            Err(Error::InvalidArgument(format!("--throttle {s:?}: expected a rate such as 500K, 50M or 1G (bytes/s)")))
        }
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        0..1024 => format!("{b} B"),
        1024..1_048_576 => format!("{:.1} KiB", b as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", b as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", b as f64 / 1_073_741_824.0),
    }
}

/// Re-encrypt in the foreground with a progress bar on a terminal.
fn reencrypt(db: &Db, throttle: Option<u64>) -> Result<(), Error> {
    let on = std::io::stderr().is_terminal();
    let start = std::time::Instant::now();
    let r = db.resume_rotation(throttle, |st| {
        if !on {
            return;
        }
        let p = &st.rotation;
        let frac = if p.bytes_total == 0 { 1.0 } else { (p.bytes_done as f64 / p.bytes_total as f64).min(1.0) };
        let filled = (frac * 30.0) as usize;
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let eta = if frac > 0.0 { secs * (1.0 - frac) / frac } else { 0.0 };
        eprint!(
            "\r[{}{}] {:>3.0}%  {}/{} files  {} of {}  {}/s  ETA {eta:.0}s ",
            "#".repeat(filled),
            " ".repeat(30 - filled),
            frac * 100.0,
            p.files_done,
            p.files_total,
            human_bytes(p.bytes_done),
            human_bytes(p.bytes_total),
            human_bytes((p.bytes_done as f64 / secs) as u64),
        );
    });
    if on {
        eprintln!();
    }
    r
}

fn print_status(st: &driftdb::RotationStatus) {
    println!("database {}", st.database_id);
    println!("active master key version: {}", st.active_key_version);
    for k in &st.keys {
        match k.state {
            "active" => println!("  key version {}: active; {} files, {}", k.version, k.files, human_bytes(k.bytes)),
            "retiring" => println!(
                "  key version {}: retired as master key, but {} files ({}) are still encrypted under data keys from its time",
                k.version,
                k.files,
                human_bytes(k.bytes)
            ),
            _ => println!(
                "  key version {}: retired; no live file is encrypted under key version {}",
                k.version, k.version
            ),
        }
    }
    let r = &st.rotation;
    match r.state {
        "idle" => println!("rotation: none"),
        state => println!(
            "rotation: {state}; {}/{} files, {} of {} re-encrypted{}",
            r.files_done,
            r.files_total,
            human_bytes(r.bytes_done),
            human_bytes(r.bytes_total),
            if state == "interrupted" { " (run `driftdb keys resume`)" } else { "" }
        ),
    }
}

fn keys(cmd: KeysCmd) -> Result<u8, Error> {
    match cmd {
        KeysCmd::Rotate {
            db: DbArgs { dir, key },
            new,
            rewrap_only,
            data_keys_only,
            throttle,
            kdf_memory_mib,
            kdf_iterations,
            kdf_parallelism,
        } => {
            let throttle = throttle.as_deref().map(parse_rate).transpose()?;
            let new_key = new.source(key.allow_insecure_key_file)?;
            if new_key.is_none() && !data_keys_only {
                return Err(Error::InvalidArgument(
                    "give the new master key (--new-key-file, --new-passphrase-env, --new-key-env or --new-key-command), or --data-keys-only".into(),
                ));
            }
            let db = open_db(&dir, &key, false)?;
            let o = driftdb::RotateOptions {
                rewrap_only,
                throttle_bytes_per_sec: throttle,
                argon2: Argon2Params {
                    m_cost_kib: kdf_memory_mib.saturating_mul(1024),
                    t_cost: kdf_iterations,
                    p_cost: kdf_parallelism,
                },
                background: false,
            };
            match &new_key {
                Some(k) => {
                    let v = db.rotate_master_key(k, o)?;
                    println!(
                        "master key version {v} is active: every data key is re-wrapped under it; only {} opens the database now",
                        k.describe()
                    );
                }
                None => {
                    db.rotate_data_keys(o)?;
                    println!("re-encrypting every file under fresh data keys (master key unchanged)");
                }
            }
            if !rewrap_only {
                reencrypt(&db, throttle)?;
            }
            print_status(&db.rotation_status());
            db.close()?;
            Ok(0)
        }
        KeysCmd::Resume { db: DbArgs { dir, key }, throttle } => {
            let throttle = throttle.as_deref().map(parse_rate).transpose()?;
            let db = open_db(&dir, &key, false)?;
            reencrypt(&db, throttle)?;
            print_status(&db.rotation_status());
            db.close()?;
            Ok(0)
        }
        KeysCmd::Status { db: DbArgs { dir, key }, json } => {
            let db = open_db(&dir, &key, true)?;
            let st = db.rotation_status();
            if json {
                println!("{}", serde_json::to_string(&st).unwrap_or_else(|_| "{}".into()));
            } else {
                print_status(&st);
            }
            Ok(0)
        }
        KeysCmd::Audit { db: DbArgs { dir, key }, json } => {
            let db = open_db(&dir, &key, true)?;
            let (entries, _) = db.store().audit_log()?;
            for e in entries {
                let time = driftdb::table::time::format_rfc3339(e.time_micros);
                let detail: Value = serde_json::from_str(&e.detail).unwrap_or(Value::String(e.detail.clone()));
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"seq": e.seq, "time": time, "event": e.kind, "master_version": e.master_version, "detail": detail})
                    );
                } else {
                    println!("#{:<4} {time}  {:<20} v{}  {}", e.seq, e.kind, e.master_version, detail);
                }
            }
            Ok(0)
        }
    }
}

/// A point in history as DriftQL: `@seq:N` and `@now` as given, a time quoted.
fn point_text(a: &str) -> String {
    if a.starts_with('@') { a.to_string() } else { Value::from(a).to_string() }
}

/// `1` is an integer key, `o1` a string key, `"1"` (JSON) the string 1.
fn parse_key(s: &str) -> Result<driftdb::Pk, Error> {
    if let Ok(v) = serde_json::from_str::<Value>(s)
        && let Some(k) = driftdb::Pk::from_json(&v)
    {
        return Ok(k);
    }
    Ok(driftdb::Pk::Str(s.into()))
}

/// A progress bar on standard error (only on a terminal).
struct Progress {
    on: bool,
    total_bytes: u64,
    start: std::time::Instant,
    last: std::time::Instant,
}

impl Progress {
    fn new(total_bytes: u64) -> Self {
        let now = std::time::Instant::now();
        Progress { on: std::io::stderr().is_terminal(), total_bytes, start: now, last: now }
    }

    fn show(&mut self, bytes: u64, docs: u64, force: bool) {
        if !self.on || (!force && self.last.elapsed() < std::time::Duration::from_millis(100)) {
            return;
        }
        self.last = std::time::Instant::now();
        let frac = if self.total_bytes == 0 { 1.0 } else { (bytes as f64 / self.total_bytes as f64).min(1.0) };
        let filled = (frac * 30.0) as usize;
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = docs as f64 / secs;
        let eta = if frac > 0.0 { secs * (1.0 - frac) / frac } else { 0.0 };
        eprint!(
            "\r[{}{}] {:>3.0}%  {docs} documents  {rate:.0} docs/s  ETA {eta:.0}s ",
            "#".repeat(filled),
            " ".repeat(30 - filled),
            frac * 100.0
        );
    }

    fn finish(&mut self, bytes: u64, docs: u64) {
        if self.on {
            self.show(bytes, docs, true);
            eprintln!();
        }
    }
}

fn ingest(db: &Db, table: &str, file: &std::path::Path, batch: usize) -> Result<u64, Error> {
    use std::io::BufRead;
    let f = std::fs::File::open(file).map_err(|e| Error::io("opening", file, e))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bar = Progress::new(size);
    let mut pending: Vec<(usize, Value)> = Vec::with_capacity(batch);
    let mut total = 0u64;
    let mut bytes = 0u64;
    let flush = |pending: &mut Vec<(usize, Value)>, total: &mut u64| -> Result<(), Error> {
        if pending.is_empty() {
            return Ok(());
        }
        let first = pending[0].0;
        let last = pending[pending.len() - 1].0;
        let count = pending.len() as u64;
        db.write(|w| {
            for (line, doc) in pending.drain(..) {
                w.insert(table, doc).map_err(|e| match e {
                    Error::Query(m) => Error::Query(format!("{}:{line}: {m}", file.display())),
                    Error::Constraint(m) => Error::Constraint(format!("{}:{line}: {m}", file.display())),
                    other => other,
                })?;
            }
            Ok(())
        })
        .inspect_err(|_| eprintln!("\nnothing of lines {first}..={last} was committed"))?;
        *total += count;
        Ok(())
    };
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| Error::io("reading", file, e))?;
        bytes += line.len() as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let doc: Value = serde_json::from_str(&line).map_err(|e| {
            eprintln!(
                "\nnothing of the current batch (from line {}) was committed",
                pending.first().map_or(n, |p| p.0)
            );
            Error::Query(format!("{}:{n}: invalid JSON: {e}", file.display()))
        })?;
        pending.push((n, doc));
        if pending.len() >= batch {
            flush(&mut pending, &mut total)?;
            bar.show(bytes, total, false);
        }
    }
    flush(&mut pending, &mut total)?;
    bar.finish(bytes, total);
    Ok(total)
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn print_rows(rows: &[Value]) {
    let mut cols: Vec<String> = Vec::new();
    for r in rows {
        if let Value::Object(m) = r {
            for k in m.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
    }
    let cells: Vec<Vec<String>> =
        rows.iter().map(|r| cols.iter().map(|c| r.get(c).map(cell).unwrap_or_default()).collect()).collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| cells.iter().map(|r| r[i].chars().count()).chain([c.chars().count()]).max().unwrap_or(0).min(60))
        .collect();
    let line = |vals: &[String]| {
        let parts: Vec<String> = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| {
                let v: String = v.chars().take(*w).collect();
                format!("{v:<w$}", w = *w)
            })
            .collect();
        println!("{}", parts.join(" | ").trim_end());
    };
    line(&cols);
    println!("{}", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-"));
    for r in &cells {
        line(r);
    }
    println!("({} row{})", rows.len(), if rows.len() == 1 { "" } else { "s" });
}

fn migrate(a: MigrateArgs, action: MigrateCmd) -> Result<u8, Error> {
    use driftdb::migrate;
    let read_only = !matches!(action, MigrateCmd::Up { dry_run: false, .. });
    let db = open_db(&a.data, &a.key, read_only)?;
    match action {
        MigrateCmd::Status | MigrateCmd::Validate => {
            let st = migrate::status(&db, &a.migrations)?;
            if a.json {
                println!("{}", serde_json::to_string(&st).unwrap_or_default());
            } else {
                for m in &st.applied {
                    println!("applied  {:>4}  {}  (@seq:{}, {})", m.version, m.file, m.seq, m.checksum);
                }
                for (v, f) in &st.pending {
                    println!("pending  {v:>4}  {f}");
                }
                if matches!(action, MigrateCmd::Validate) {
                    println!(
                        "ok: {} applied migration(s) match their files; {} pending",
                        st.applied.len(),
                        st.pending.len()
                    );
                }
            }
        }
        MigrateCmd::Up { to, dry_run } => {
            let reports = migrate::up(&db, &a.migrations, to, dry_run)?;
            if a.json {
                println!("{}", serde_json::to_string(&reports).unwrap_or_default());
            } else {
                if reports.is_empty() {
                    println!("nothing to apply");
                }
                for r in &reports {
                    let changed: Vec<String> = r.rows_changed.iter().map(|(t, n)| format!("{t}: {n} rows")).collect();
                    let what = match r.seq {
                        Some(seq) => format!("applied at @seq:{seq}"),
                        None => "would apply (dry run, nothing written)".to_string(),
                    };
                    println!(
                        "{} {what}: {} schema change(s), {} check(s) held; {}",
                        r.file,
                        r.schema_changes,
                        r.checks,
                        if changed.is_empty() { "no rows changed".to_string() } else { changed.join(", ") }
                    );
                }
            }
        }
    }
    db.close()?;
    Ok(0)
}

fn print_outcome(o: &Outcome, json: bool) {
    match o {
        Outcome::Committed(seq) => {
            if !json {
                println!("ok (seq {seq})");
            }
        }
        Outcome::Rows(rows) => {
            if json {
                for r in rows {
                    println!("{r}");
                }
            } else {
                print_rows(rows);
            }
        }
        Outcome::Drift(h) => {
            if json {
                for e in h {
                    println!("{}", serde_json::to_string(e).unwrap_or_default());
                }
            } else {
                let rows: Vec<Value> = h
                    .iter()
                    .map(|e| serde_json::json!({"seq": e.seq, "time": e.time, "op": e.op, "doc": e.doc.to_string()}))
                    .collect();
                print_rows(&rows);
            }
        }
        Outcome::Began(iso) => {
            if !json {
                println!("begin ({})", iso.as_str().to_lowercase());
            }
        }
        Outcome::Staged => {
            if !json {
                println!("ok (pending commit)");
            }
        }
        Outcome::Expected(v) => {
            if !json {
                println!("ok (expectation holds: {v})");
            }
        }
        Outcome::RolledBack => {
            if !json {
                println!("rolled back");
            }
        }
        Outcome::Snapshot(seq) => {
            if !json {
                println!("ok (snapshot at seq {seq})");
            }
        }
        Outcome::Compacted(h) => {
            if !json {
                if *h == 0 {
                    println!("ok (all history kept)");
                } else {
                    println!("ok (history before seq {h} folded)");
                }
            }
        }
        Outcome::Tables(t) => {
            let rows: Vec<Value> = t
                .iter()
                .map(|d| {
                    let cols: Vec<String> = d
                        .columns
                        .iter()
                        .map(|c| match &c.default {
                            Some(v) => format!("{} DEFAULT {v}", quote_ident(&c.name)),
                            None => quote_ident(&c.name),
                        })
                        .collect();
                    serde_json::json!({"table": d.name, "pk": d.pk, "columns": cols.join(", "), "indexes": d.indexes.join(", "), "created_seq": d.created_seq})
                })
                .collect();
            if json {
                for r in &rows {
                    println!("{r}");
                }
            } else {
                print_rows(&rows);
            }
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
