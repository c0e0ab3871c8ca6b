//! The `driftdb` command-line tool.
//!
//! Exit codes: 0 ok · 1 operation failed · 2 usage · 3 key problem ·
//! 4 integrity problem · 5 database in use · 6 transaction conflict.
//! A closed standard output (`driftdb select ... | head -1`) ends a command
//! quietly, with exit code 0; any other output error is exit code 1.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use clap::{Args, Parser, Subcommand};
use driftdb::query::ast::{AsOf, quote_ident};
use driftdb::{Argon2Params, CreateOptions, Db, Error, KeyCommand, KeySource, Options, Outcome, Store, StoreOptions};
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Standard output that never panics: a closed pipe stops further output
/// (the command ends quietly), any other failure is remembered and makes
/// the command fail.
mod out {
    use std::io::Write;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    static CLOSED: AtomicBool = AtomicBool::new(false);
    static FAILED: Mutex<Option<String>> = Mutex::new(None);

    fn note(e: std::io::Error) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CLOSED.store(true, Ordering::SeqCst);
        } else {
            CLOSED.store(true, Ordering::SeqCst);
            let mut f = FAILED.lock().unwrap_or_else(|p| p.into_inner());
            f.get_or_insert_with(|| e.to_string());
        }
    }

    /// Write a line to standard output.
    pub fn line(args: std::fmt::Arguments<'_>) {
        if closed() {
            return;
        }
        let mut o = std::io::stdout().lock();
        if let Err(e) = o.write_fmt(args).and_then(|()| o.write_all(b"\n")) {
            note(e);
        }
    }

    /// Flush standard output (at the end of the command).
    pub fn flush() {
        if !closed()
            && let Err(e) = std::io::stdout().lock().flush()
        {
            note(e);
        }
    }

    /// Whether standard output is gone (stop producing more).
    pub fn closed() -> bool {
        CLOSED.load(Ordering::SeqCst)
    }

    /// An output failure other than a closed pipe.
    pub fn failure() -> Option<String> {
        FAILED.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Write to standard error, ignoring failures (nowhere left to report them).
    pub fn err(args: std::fmt::Arguments<'_>) {
        let mut e = std::io::stderr().lock();
        let _ = e.write_fmt(args);
        let _ = e.flush();
    }
}

macro_rules! outln {
    ($($t:tt)*) => { out::line(format_args!($($t)*)) };
}
macro_rules! errln {
    () => { out::err(format_args!("\n")) };
    ($($t:tt)*) => { out::err(format_args!("{}\n", format_args!($($t)*))) };
}
macro_rules! errp {
    ($($t:tt)*) => { out::err(format_args!($($t)*)) };
}

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
    /// Shell command that prints the key (KMS, Vault, HSM...). It runs in a
    /// cleared environment (PATH, HOME, USER, LOGNAME, LANG, LC_ALL, TZ,
    /// TMPDIR and the variables given with --key-command-env).
    #[arg(long, value_name = "CMD", group = "key")]
    key_command: Option<String>,
    /// Kill a key command that has not finished after SECS seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    key_command_timeout: f64,
    /// Pass environment variable VAR to the key command (repeatable), e.g. VAULT_TOKEN.
    #[arg(long, value_name = "VAR")]
    key_command_env: Vec<String>,
}

impl KeyOpts {
    fn command(&self, script: &str) -> Result<KeySource, Error> {
        let t = self.key_command_timeout;
        if !(t.is_finite() && t > 0.0 && t <= 86_400.0) {
            return Err(Error::InvalidArgument(format!(
                "--key-command-timeout {t}: expected a number of seconds above 0 and at most 86400"
            )));
        }
        let mut c = KeyCommand::shell(script).timeout(Duration::from_secs_f64(t));
        for v in &self.key_command_env {
            c = c.allow_env(v.clone());
        }
        Ok(KeySource::Exec(c))
    }
}

/// How to open: what a rollback check and the KDF may ask.
#[derive(Args, Debug, Default)]
struct OpenOpts {
    /// Refuse a keyring older than generation N (the newest one seen; see
    /// `keys status`): detects an older copy of the database put in place.
    #[arg(long, value_name = "N")]
    expect_generation: Option<u64>,
    /// Most memory the keyring may ask Argon2id to use, in MiB (default 1024).
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    max_kdf_memory_mib: u32,
}

impl OpenOpts {
    fn store(&self, read_only: bool) -> StoreOptions {
        StoreOptions {
            read_only,
            expect_generation: self.expect_generation,
            max_kdf_memory_kib: self.max_kdf_memory_mib.saturating_mul(1024),
            ..StoreOptions::default()
        }
    }
}

/// Argon2id cost of a new passphrase.
#[derive(Args, Debug)]
struct KdfOpts {
    /// Argon2id memory in MiB (passphrase keys only).
    #[arg(long, default_value_t = 64)]
    kdf_memory_mib: u32,
    /// Argon2id iterations (passphrase keys only).
    #[arg(long, default_value_t = 3)]
    kdf_iterations: u32,
    /// Argon2id lanes (passphrase keys only).
    #[arg(long, default_value_t = 1)]
    kdf_parallelism: u32,
    /// Accept Argon2id parameters below 19 MiB and 2 iterations (tests only:
    /// a weakly stretched passphrase is cheap to guess from the keyring).
    #[arg(long)]
    allow_weak_kdf: bool,
}

impl KdfOpts {
    fn params(&self) -> Argon2Params {
        Argon2Params {
            m_cost_kib: self.kdf_memory_mib.saturating_mul(1024),
            t_cost: self.kdf_iterations,
            p_cost: self.kdf_parallelism,
        }
    }
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
    /// Shell command that prints the new key (run twice: it must print the
    /// same key both times). Timeout and environment as for --key-command.
    #[arg(long, value_name = "CMD", group = "new_key")]
    new_key_command: Option<String>,
}

impl NewKeyOpts {
    fn source(&self, key: &KeyOpts) -> Result<Option<KeySource>, Error> {
        Ok(if let Some(p) = &self.new_key_file {
            Some(KeySource::KeyFile { path: p.clone(), allow_insecure: key.allow_insecure_key_file })
        } else if let Some(v) = &self.new_passphrase_env {
            let p = std::env::var(v).map_err(|_| Error::KeySource(format!("environment variable {v} is not set")))?;
            Some(KeySource::passphrase(p))
        } else if let Some(v) = &self.new_key_env {
            Some(KeySource::Env(v.clone()))
        } else {
            self.new_key_command.as_ref().map(|c| key.command(c)).transpose()?
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
        #[command(flatten)]
        kdf: KdfOpts,
        /// Accept the current passphrase as the new one with other --kdf-*
        /// parameters: change only its Argon2id cost.
        #[arg(long)]
        retune_kdf: bool,
    },
    /// Finish an interrupted re-encryption.
    Resume {
        #[command(flatten)]
        db: DbArgs,
        /// Re-encrypt at most RATE bytes per second (suffix K, M or G).
        #[arg(long, value_name = "RATE")]
        throttle: Option<String>,
    },
    /// Key versions, what each still protects, the rotation's progress, the
    /// keyring generation and the audit chain head.
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
    /// The data directory (default: $DRIFTDB_DIR).
    #[arg(short = 'd', long = "dir", value_name = "DIR", env = "DRIFTDB_DIR")]
    dir: PathBuf,
    #[command(flatten)]
    key: KeyOpts,
    #[command(flatten)]
    open: OpenOpts,
}

/// Which database, with which key, and which migrations folder.
#[derive(Args, Debug)]
struct MigrateArgs {
    /// The data directory (default: $DRIFTDB_DIR).
    #[arg(short = 'd', long = "dir", visible_alias = "data-dir", value_name = "DIR", env = "DRIFTDB_DIR")]
    data: PathBuf,
    #[command(flatten)]
    key: KeyOpts,
    #[command(flatten)]
    open: OpenOpts,
    /// The migrations folder (files NNNN_name.driftql).
    #[arg(long = "migrations", value_name = "MIGRATIONS")]
    migrations: PathBuf,
    /// Print JSON Lines.
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
        /// The data directory (or -d DIR, or $DRIFTDB_DIR).
        #[arg(value_name = "DIR")]
        dir_arg: Option<PathBuf>,
        /// The data directory.
        #[arg(short = 'd', long = "dir", value_name = "DIR", env = "DRIFTDB_DIR")]
        dir: Option<PathBuf>,
        #[command(flatten)]
        key: KeyOpts,
        #[command(flatten)]
        kdf: KdfOpts,
    },
    /// Run DriftQL statements (each write is its own commit; the first error
    /// stops). Without -e or -f, the script is read from standard input.
    Sql {
        #[command(flatten)]
        db: DbArgs,
        /// Statements to run.
        #[arg(
            short = 'e',
            long = "execute",
            value_name = "STATEMENTS",
            conflicts_with = "file",
            allow_hyphen_values = true
        )]
        execute: Option<String>,
        /// A file of statements to run (`-` for standard input).
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
        #[arg(short = 'w', long = "where", value_name = "EXPR", allow_hyphen_values = true)]
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
        #[arg(short = 'k', long = "key", value_name = "KEY", allow_hyphen_values = true)]
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
    /// Folding everything (`@now`) or more than half of the table's history
    /// asks first (or needs --yes when standard input is not a terminal).
    Compact {
        #[command(flatten)]
        db: DbArgs,
        /// Table.
        #[arg(short = 't', long = "table")]
        table: String,
        /// The horizon: @seq:N, an RFC 3339 time or @now (default: keep all history).
        #[arg(long, value_name = "AS_OF")]
        before: Option<String>,
        /// Fold without asking.
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// Load a JSON Lines file into a table, in batched commits.
    Ingest {
        #[command(flatten)]
        db: DbArgs,
        /// Table.
        #[arg(short = 't', long = "table")]
        table: String,
        /// The JSON Lines file (one document per line; `-` for standard input).
        #[arg(short = 'f', long = "file", value_name = "FILE.jsonl")]
        file: PathBuf,
        /// Documents per commit (at least 1).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Bytes of documents per commit, at most (suffix K or M; below the
        /// 16 MiB commit limit).
        #[arg(long, value_name = "SIZE", default_value = "8M")]
        batch_bytes: String,
        /// Skip documents whose key is already in the table (or earlier in
        /// the file), so that a rerun after an interruption finishes the job.
        #[arg(long)]
        skip_existing: bool,
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
    /// Check every file: keyring, manifest, every frame's CRC and tag, and
    /// every file the manifest does not list.
    Verify {
        #[command(flatten)]
        db: DbArgs,
        /// Check without a key: structure, CRCs, and (format 3) every listed
        /// file's presence, length and sealing frame.
        #[arg(long)]
        no_key: bool,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// `migrate -d DATA --dir MIGRATIONS` (the form before `--migrations`
/// existed) keeps working: there `--dir` names the migrations folder.
fn legacy_migrate_args(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let Some(m) = args.iter().position(|a| a == "migrate") else { return args };
    let rest = &args[m + 1..];
    let has = |names: &[&str]| {
        rest.iter().any(|a| names.iter().any(|n| a == n || a.to_string_lossy().starts_with(&format!("{n}="))))
    };
    if has(&["--migrations"]) || !has(&["-d", "--data-dir"]) || !has(&["--dir"]) {
        return args;
    }
    for a in args.iter_mut().skip(m + 1) {
        let s = a.to_string_lossy().into_owned();
        if s == "--dir" {
            *a = "--migrations".into();
        } else if let Some(v) = s.strip_prefix("--dir=") {
            *a = format!("--migrations={v}").into();
        }
    }
    errln!(
        "note: `migrate --dir MIGRATIONS` is deprecated; write `--migrations MIGRATIONS` (`--dir` is the data directory everywhere)"
    );
    args
}

fn main() -> ExitCode {
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let json_errors = raw.iter().any(|a| a == "--json");
    let cli = match Cli::try_parse_from(legacy_migrate_args(raw)) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) || !json_errors {
                let _ = e.print();
                return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
            }
            let msg = e.kind().as_str().map(str::to_string).unwrap_or_else(|| e.to_string());
            errln!("{}", serde_json::json!({"error": msg, "detail": e.to_string().trim(), "exit_code": 2}));
            return ExitCode::from(2);
        }
    };
    let r = run(cli);
    out::flush();
    match r {
        Ok(code) => match out::failure() {
            Some(f) => {
                report(&format!("cannot write the output: {f}"), 1, json_errors);
                ExitCode::from(1)
            }
            None => ExitCode::from(code),
        },
        Err(e) => {
            let code = e.exit_code();
            report(&e.to_string(), code, json_errors);
            ExitCode::from(code as u8)
        }
    }
}

/// An error on standard error: a line of text, or a JSON object under `--json`.
fn report(msg: &str, code: i32, json: bool) {
    if json {
        errln!("{}", serde_json::json!({"error": msg, "exit_code": code}));
    } else {
        errln!("error: {msg}");
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
        return k.command(c);
    }
    if let Some(p) = std::env::var_os("DRIFTDB_KEY_FILE") {
        return Ok(KeySource::KeyFile { path: p.into(), allow_insecure: k.allow_insecure_key_file });
    }
    if let Ok(p) = std::env::var("DRIFTDB_PASSPHRASE") {
        return Ok(KeySource::passphrase(p));
    }
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        let p = zeroize::Zeroizing::new(
            rpassword::prompt_password("Passphrase: ")
                .map_err(|e| Error::KeySource(format!("cannot read the passphrase: {e}")))?,
        );
        if confirm {
            let again = zeroize::Zeroizing::new(
                rpassword::prompt_password("Repeat passphrase: ")
                    .map_err(|e| Error::KeySource(format!("cannot read the passphrase: {e}")))?,
            );
            if *again != *p {
                return Err(Error::KeySource("the passphrases do not match".into()));
            }
        }
        return Ok(KeySource::Passphrase(p));
    }
    Err(Error::KeySource(
        "no key given: pass --key-file, --passphrase-env, --key-env or --key-command, or set DRIFTDB_KEY_FILE or DRIFTDB_PASSPHRASE".into(),
    ))
}

fn plural(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

fn run(cli: Cli) -> Result<u8, Error> {
    match cli.cmd {
        Command::Keygen { path } => {
            keygen(&path)?;
            outln!(
                "wrote a new 256-bit master key to {} (mode 0600); keep it away from the data directory",
                path.display()
            );
            Ok(0)
        }
        Command::Init { dir_arg, dir, key, kdf } => {
            let dir = match (dir_arg, dir) {
                (Some(a), _) => a,
                (None, Some(d)) => d,
                (None, None) => {
                    return Err(Error::InvalidArgument("give the data directory: init DIR (or -d DIR)".into()));
                }
            };
            let ks = key_source(&key, true)?;
            let store = Store::create(
                &dir,
                &ks,
                CreateOptions {
                    argon2: kdf.params(),
                    allow_weak_kdf: kdf.allow_weak_kdf,
                    store: StoreOptions::default(),
                },
            )?;
            let id: String = store.db_id().iter().map(|b| format!("{b:02x}")).collect();
            store.close()?;
            outln!("created database {id} in {} (master key: {})", dir.display(), ks.describe());
            Ok(0)
        }
        Command::Sql { db, execute, file, json } => {
            let script = match (execute, file) {
                (Some(e), _) => e,
                (None, Some(f)) if f.as_os_str() == "-" => read_stdin()?,
                (None, Some(f)) => std::fs::read_to_string(&f).map_err(|e| Error::io("reading", &f, e))?,
                (None, None) if !std::io::stdin().is_terminal() => read_stdin()?,
                (None, None) => {
                    return Err(Error::InvalidArgument(
                        "give statements with -e STATEMENTS, a file with -f FILE, or a script on standard input".into(),
                    ));
                }
            };
            let d = open_db(&db, false)?;
            d.execute_each(&script, |out| print_outcome(&out, json))?;
            d.close()?;
            Ok(0)
        }
        Command::Select { db, table, filter, as_of, limit, json } => {
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
            let d = open_db(&db, true)?;
            print_outcome(&d.execute_stmt(&stmt)?, json);
            Ok(0)
        }
        Command::Migrate { args, action } => migrate(args, action),
        Command::Drift { db, table, row, json } => {
            let d = open_db(&db, true)?;
            let k = parse_key(&row)?;
            print_outcome(&Outcome::Drift(d.history(&table, &k)?), json);
            Ok(0)
        }
        Command::Snapshot { db, table } => {
            let d = open_db(&db, false)?;
            print_outcome(&Outcome::Snapshot(d.snapshot(&table)?), false);
            d.close()?;
            Ok(0)
        }
        Command::Compact { db, table, before, yes } => compact(&db, &table, before.as_deref(), yes),
        Command::Tables { db, json } => {
            let d = open_db(&db, true)?;
            print_outcome(&Outcome::Tables(d.tables()), json);
            Ok(0)
        }
        Command::Ingest { db, table, file, batch, batch_bytes, skip_existing } => {
            if batch == 0 {
                return Err(Error::InvalidArgument("--batch 0: a commit holds at least one document".into()));
            }
            let max_bytes = parse_size(&batch_bytes, "--batch-bytes")?;
            if max_bytes > 15 << 20 {
                return Err(Error::InvalidArgument(format!(
                    "--batch-bytes {batch_bytes}: at most 15M (a commit is at most 16 MiB)"
                )));
            }
            // Ctrl-C (or a TERM) stops between commits, and says how far it got.
            let stop = std::sync::Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, stop.clone())
                    .map_err(|e| Error::io("handling signals for", &file, e))?;
            }
            let d = open_db(&db, false)?;
            let t0 = std::time::Instant::now();
            let done = ingest(&d, &table, &file, batch, max_bytes, skip_existing, &stop)?;
            let secs = t0.elapsed().as_secs_f64();
            if done.interrupted {
                errln!(
                    "\ninterrupted: {} of {} committed ({}); rerun with --skip-existing to load the rest",
                    lines_text(done.committed_lines),
                    file.display(),
                    plural(done.docs, "document", "documents")
                );
                d.close()?;
                return Ok(130);
            }
            outln!(
                "ingested {} into {table} in {secs:.2} s ({:.0} docs/s; latest sequence {}){}",
                plural(done.docs, "document", "documents"),
                done.docs as f64 / secs.max(1e-9),
                d.latest_seq(),
                if done.skipped > 0 {
                    format!("; skipped {} already there", plural(done.skipped, "document", "documents"))
                } else {
                    String::new()
                }
            );
            d.close()?;
            Ok(0)
        }
        Command::Keys { cmd } => keys(cmd),
        Command::Verify { db, no_key, json } => {
            let report = if no_key {
                driftdb::verify_without_key_expecting(&db.dir, &driftdb::storage::StdFs, db.open.expect_generation)?
            } else {
                let ks = key_source(&db.key, false)?;
                match Store::open(&db.dir, &ks, db.open.store(true)) {
                    Ok(store) => store.verify(),
                    Err(e) if e.is_integrity() => {
                        let p = driftdb::storage::verify::locate_public(&e);
                        driftdb::VerifyReport { authenticated: true, problems: vec![p], ..Default::default() }
                    }
                    Err(e) => return Err(e),
                }
            };
            if json {
                outln!("{}", serde_json::to_string(&report).unwrap_or_else(|_| "{}".into()));
            } else {
                print_report(&db.dir, &report);
            }
            Ok(if !report.problems.is_empty() {
                4
            } else if !report.errors.is_empty() {
                1
            } else {
                0
            })
        }
    }
}

fn read_stdin() -> Result<String, Error> {
    use std::io::Read;
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).map_err(|e| Error::io("reading", "standard input", e))?;
    Ok(s)
}

fn open_db(a: &DbArgs, read_only: bool) -> Result<Db, Error> {
    open_at(&a.dir, &a.key, &a.open, read_only)
}

fn open_at(dir: &Path, key: &KeyOpts, open: &OpenOpts, read_only: bool) -> Result<Db, Error> {
    let ks = key_source(key, false)?;
    let db = Db::open(
        dir,
        &ks,
        Options {
            store: open.store(read_only),
            // Re-encryption is `keys resume`'s job, not every command's.
            resume_rotation: false,
            ..Options::default()
        },
    )?;
    for e in db.store().recovery_events() {
        if !matches!(e, driftdb::RecoveryEvent::Merged { .. }) {
            errln!("note: recovery: {e}");
        }
    }
    Ok(db)
}

/// `50M` → 50,000,000 (bytes); `K`, `M`, `G` are powers of 1000.
fn parse_size(s: &str, flag: &str) -> Result<u64, Error> {
    let t = s.trim().trim_end_matches("/s").trim_end_matches(['B', 'b']);
    let (num, mul) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1_000u64),
        Some('M' | 'm') => (&t[..t.len() - 1], 1_000_000),
        Some('G' | 'g') => (&t[..t.len() - 1], 1_000_000_000),
        _ => (t, 1),
    };
    match num.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n * mul as f64 >= 1.0 && n * (mul as f64) < 1e18 => Ok((n * mul as f64) as u64),
        _ => Err(Error::InvalidArgument(format!("{flag} {s:?}: expected a size such as 500K, 50M or 1G"))),
    }
}

fn parse_rate(s: &str) -> Result<u64, Error> {
    parse_size(s, "--throttle").map_err(|_| {
        Error::InvalidArgument(format!("--throttle {s:?}: expected a rate such as 500K, 50M or 1G (bytes/s)"))
    })
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
        errp!(
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
        errln!();
    }
    r
}

fn print_status(st: &driftdb::RotationStatus) {
    outln!("database {}", st.database_id);
    outln!("active master key version: {}", st.active_key_version);
    for k in &st.keys {
        match k.state {
            "active" => outln!(
                "  key version {}: active; {}, {}",
                k.version,
                plural(k.files, "file", "files"),
                human_bytes(k.bytes)
            ),
            "retiring" => outln!(
                "  key version {}: retired as master key, but {} ({}) still encrypted under data keys from its time",
                k.version,
                if k.files == 1 { "1 file is".to_string() } else { format!("{} files are", k.files) },
                human_bytes(k.bytes)
            ),
            _ => outln!(
                "  key version {}: retired; no live file is encrypted under key version {}",
                k.version,
                k.version
            ),
        }
    }
    let r = &st.rotation;
    match r.state {
        "idle" => outln!("rotation: none"),
        state => outln!(
            "rotation: {state}; {}/{} files, {} of {} re-encrypted{}",
            r.files_done,
            r.files_total,
            human_bytes(r.bytes_done),
            human_bytes(r.bytes_total),
            if state == "interrupted" { " (run `driftdb keys resume`)" } else { "" }
        ),
    }
    outln!(
        "keyring generation: {} (pin it with --expect-generation {} to detect a rollback)",
        st.keyring_generation,
        st.keyring_generation
    );
    outln!("key audit log: {}, chain head {}", plural(st.audit_head.entries, "entry", "entries"), st.audit_head.hash);
}

fn keys(cmd: KeysCmd) -> Result<u8, Error> {
    match cmd {
        KeysCmd::Rotate { db, new, rewrap_only, data_keys_only, throttle, kdf, retune_kdf } => {
            let throttle = throttle.as_deref().map(parse_rate).transpose()?;
            let new_key = new.source(&db.key)?;
            if new_key.is_none() && !data_keys_only {
                return Err(Error::InvalidArgument(
                    "give the new master key (--new-key-file, --new-passphrase-env, --new-key-env or --new-key-command), or --data-keys-only".into(),
                ));
            }
            let d = open_db(&db, false)?;
            let o = driftdb::RotateOptions {
                rewrap_only,
                throttle_bytes_per_sec: throttle,
                argon2: kdf.params(),
                background: false,
                allow_weak_kdf: kdf.allow_weak_kdf,
                retune_kdf,
            };
            match &new_key {
                Some(k) => {
                    let v = d.rotate_master_key(k, o)?;
                    outln!(
                        "master key version {v} is active: every data key is re-wrapped under it; only {} opens the database now",
                        k.describe()
                    );
                }
                None => {
                    d.rotate_data_keys(o)?;
                    outln!("re-encrypting every file under fresh data keys (master key unchanged)");
                }
            }
            if !rewrap_only {
                reencrypt(&d, throttle)?;
            }
            print_status(&d.rotation_status());
            d.close()?;
            Ok(0)
        }
        KeysCmd::Resume { db, throttle } => {
            let throttle = throttle.as_deref().map(parse_rate).transpose()?;
            let d = open_db(&db, false)?;
            reencrypt(&d, throttle)?;
            print_status(&d.rotation_status());
            d.close()?;
            Ok(0)
        }
        KeysCmd::Status { db, json } => {
            let d = open_db(&db, true)?;
            let st = d.rotation_status();
            if json {
                outln!("{}", serde_json::to_string(&st).unwrap_or_else(|_| "{}".into()));
            } else {
                print_status(&st);
            }
            Ok(0)
        }
        KeysCmd::Audit { db, json } => {
            let d = open_db(&db, true)?;
            let log = d.store().audit()?;
            for (e, committed) in log.entries.iter().zip(&log.committed) {
                if out::closed() {
                    break;
                }
                let time = driftdb::table::time::format_rfc3339(e.time_micros);
                let detail: Value = serde_json::from_str(&e.detail).unwrap_or(Value::String(e.detail.clone()));
                if json {
                    outln!(
                        "{}",
                        serde_json::json!({"seq": e.seq, "time": time, "event": e.kind, "master_version": e.master_version, "committed": committed, "detail": detail})
                    );
                } else {
                    let mark = if *committed { "" } else { "  (did not happen: its keyring write never completed)" };
                    outln!("#{:<4} {time}  {:<20} v{}  {}{mark}", e.seq, e.kind, e.master_version, detail);
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

/// `COMPACT`, asking first when it would fold everything or most of the history.
fn compact(db: &DbArgs, table: &str, before: Option<&str>, yes: bool) -> Result<u8, Error> {
    let mut q = format!("COMPACT {}", quote_ident(table));
    if let Some(b) = before {
        q.push_str(&format!(" BEFORE {}", point_text(b)));
    }
    let stmt = driftdb::query::parse_one(&q)?;
    let d = open_db(db, false)?;
    if let Some(b) = before {
        let point = match driftdb::query::parse_one(&format!("SELECT * FROM t AS OF {}", point_text(b)))? {
            driftdb::query::ast::Stmt::Select(s) => s.as_of.unwrap_or(AsOf::Now),
            _ => AsOf::Now,
        };
        let p = d.compaction_preview(table, &point)?;
        let total = p.events_folded + p.events_kept;
        let everything = matches!(point, AsOf::Now) || p.horizon >= p.latest_seq;
        let most = total > 0 && p.events_folded * 2 > total;
        if p.horizon > p.current_horizon && (everything || most) {
            let what = format!(
                "COMPACT {table} BEFORE {b} folds {} of the table's {} ({}%) up to @seq:{}{}; reads before it become errors and this cannot be undone",
                p.events_folded,
                plural(total, "event", "events"),
                (p.events_folded * 100).checked_div(total).unwrap_or(100),
                p.horizon,
                if everything { ", all of its history" } else { "" }
            );
            if !yes {
                if !std::io::stdin().is_terminal() {
                    return Err(Error::InvalidArgument(format!(
                        "{what}: pass --yes to do it (standard input is not a terminal, so nobody can be asked)"
                    )));
                }
                errp!("{what}.\nFold it? [y/N] ");
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer).map_err(|e| Error::io("reading", "standard input", e))?;
                if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
                    errln!("nothing was folded");
                    d.close()?;
                    return Ok(1);
                }
            }
        }
    }
    print_outcome(&d.execute_stmt(&stmt)?, false);
    d.close()?;
    Ok(0)
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
        errp!(
            "\r[{}{}] {:>3.0}%  {docs} documents  {rate:.0} docs/s  ETA {eta:.0}s ",
            "#".repeat(filled),
            " ".repeat(30 - filled),
            frac * 100.0
        );
    }

    fn finish(&mut self, bytes: u64, docs: u64) {
        if self.on {
            self.show(bytes, docs, true);
            errln!();
        }
    }
}

/// `lines 1–1000`, `line 7`, `no line`.
fn lines_text(upto: usize) -> String {
    match upto {
        0 => "no line".into(),
        1 => "line 1".into(),
        n => format!("lines 1–{n}"),
    }
}

/// What an ingest did.
struct Ingested {
    docs: u64,
    skipped: u64,
    /// Every line up to this one is committed (or skipped).
    committed_lines: usize,
    interrupted: bool,
}

fn ingest(
    db: &Db,
    table: &str,
    file: &Path,
    batch: usize,
    max_bytes: u64,
    skip_existing: bool,
    stop: &AtomicBool,
) -> Result<Ingested, Error> {
    use std::io::BufRead;
    let pk = db.describe(table)?.pk;
    let (reader, size): (Box<dyn BufRead>, u64) = if file.as_os_str() == "-" {
        (Box::new(std::io::BufReader::new(std::io::stdin())), 0)
    } else {
        let f = std::fs::File::open(file).map_err(|e| Error::io("opening", file, e))?;
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(std::io::BufReader::new(f)), size)
    };
    let mut reader = reader;
    let mut bar = Progress::new(size);
    let mut done = Ingested { docs: 0, skipped: 0, committed_lines: 0, interrupted: false };
    // (line number, document) waiting for the next commit.
    let mut pending: Vec<(usize, Value)> = Vec::with_capacity(batch);
    let mut pending_bytes = 0u64;
    let mut staged_keys = std::collections::HashSet::new();
    let mut bytes = 0u64;
    let mut last_line = 0usize;
    let at = |n: usize| format!("{}:{n}", file.display());
    let fail = |done: &Ingested, e: Error| -> Error {
        errln!(
            "\n{} of {} committed ({}); nothing after that",
            lines_text(done.committed_lines),
            file.display(),
            plural(done.docs, "document", "documents")
        );
        e
    };
    let flush = |pending: &mut Vec<(usize, Value)>, upto: usize, done: &mut Ingested| -> Result<(), Error> {
        if !pending.is_empty() {
            let count = pending.len() as u64;
            db.write(|w| {
                for (line, doc) in pending.drain(..) {
                    w.insert(table, doc).map_err(|e| match e {
                        Error::Query(m) => Error::Query(format!("{}: {m}", at(line))),
                        Error::Constraint(m) => Error::Constraint(format!("{}: {m}", at(line))),
                        other => other,
                    })?;
                }
                Ok(())
            })?;
            done.docs += count;
        }
        done.committed_lines = upto;
        Ok(())
    };
    let mut buf = Vec::new();
    loop {
        if stop.load(Ordering::SeqCst) {
            done.interrupted = true;
            return Ok(done);
        }
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| fail(&done, Error::io("reading", file, e)))?;
        if n == 0 {
            break;
        }
        last_line += 1;
        bytes += n as u64;
        let line = match std::str::from_utf8(&buf) {
            Ok(l) => l,
            Err(e) => {
                return Err(fail(
                    &done,
                    Error::Query(format!(
                        "{}: not valid UTF-8 (byte {} of the line)",
                        at(last_line),
                        e.valid_up_to() + 1
                    )),
                ));
            }
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let doc: Value = driftdb::table::doc::parse_strict(line)
            .map_err(|e| fail(&done, Error::Query(format!("{}: invalid JSON: {e}", at(last_line)))))?;
        if skip_existing {
            let key = doc.get(&pk).and_then(driftdb::Pk::from_json);
            if let Some(k) = key {
                if staged_keys.contains(&k) || db.get(table, &k).map_err(|e| fail(&done, e))?.is_some() {
                    done.skipped += 1;
                    continue;
                }
                staged_keys.insert(k);
            }
        }
        let len = line.len() as u64;
        if !pending.is_empty() && pending_bytes + len > max_bytes {
            let upto = pending.last().map_or(0, |p| p.0);
            flush(&mut pending, upto, &mut done).map_err(|e| fail(&done, e))?;
            pending_bytes = 0;
            staged_keys.clear();
            bar.show(bytes, done.docs, false);
        }
        pending.push((last_line, doc));
        pending_bytes += len;
        if pending.len() >= batch {
            flush(&mut pending, last_line, &mut done).map_err(|e| fail(&done, e))?;
            pending_bytes = 0;
            staged_keys.clear();
            bar.show(bytes, done.docs, false);
        }
    }
    flush(&mut pending, last_line, &mut done).map_err(|e| fail(&done, e))?;
    bar.finish(bytes, done.docs);
    Ok(done)
}

/// A value as a table cell: unambiguous (`5` and `"5"` differ: a string
/// that would read as another value is quoted), one line (newlines and
/// tabs escaped).
fn cell(v: Option<&Value>) -> String {
    match v {
        None => String::new(),
        Some(Value::String(s)) => {
            let ambiguous = s.is_empty()
                || s.trim() != s
                || s.starts_with('"')
                || serde_json::from_str::<Value>(s).is_ok_and(|v| !v.is_string());
            if ambiguous {
                return Value::String(s.clone()).to_string();
            }
            let mut o = String::with_capacity(s.len());
            for c in s.chars() {
                match c {
                    '\n' => o.push_str("\\n"),
                    '\r' => o.push_str("\\r"),
                    '\t' => o.push_str("\\t"),
                    '\\' if s.contains(['\n', '\r', '\t']) => o.push_str("\\\\"),
                    c if c.is_control() => o.push_str(&format!("\\u{{{:04x}}}", c as u32)),
                    c => o.push(c),
                }
            }
            o
        }
        Some(other) => other.to_string(),
    }
}

/// Widest a column gets; a longer value is cut and ends with `…`.
const MAX_WIDTH: usize = 60;

fn fit(v: &str, w: usize) -> String {
    let n = v.chars().count();
    if n <= w {
        return format!("{v:<w$}");
    }
    let cut: String = v.chars().take(w.saturating_sub(1)).collect();
    format!("{cut}…")
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
    let heads: Vec<String> = cols.iter().map(|c| cell(Some(&Value::String(c.clone())))).collect();
    let cells: Vec<Vec<String>> = rows.iter().map(|r| cols.iter().map(|c| cell(r.get(c))).collect()).collect();
    let widths: Vec<usize> = heads
        .iter()
        .enumerate()
        .map(|(i, h)| {
            cells.iter().map(|r| r[i].chars().count()).chain([h.chars().count()]).max().unwrap_or(0).min(MAX_WIDTH)
        })
        .collect();
    let line = |vals: &[String]| {
        let parts: Vec<String> = vals.iter().zip(&widths).map(|(v, w)| fit(v, *w)).collect();
        outln!("{}", parts.join(" | ").trim_end());
    };
    line(&heads);
    outln!("{}", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-"));
    for r in &cells {
        if out::closed() {
            return;
        }
        line(r);
    }
    outln!("({})", plural(rows.len() as u64, "row", "rows"));
}

fn migrate(a: MigrateArgs, action: MigrateCmd) -> Result<u8, Error> {
    use driftdb::migrate;
    let read_only = !matches!(action, MigrateCmd::Up { dry_run: false, .. });
    let db = open_at(&a.data, &a.key, &a.open, read_only)?;
    match action {
        MigrateCmd::Status | MigrateCmd::Validate => {
            let st = migrate::status(&db, &a.migrations)?;
            if a.json {
                for m in &st.applied {
                    outln!(
                        "{}",
                        serde_json::json!({"version": m.version, "file": m.file, "state": "applied", "seq": m.seq, "checksum": m.checksum})
                    );
                }
                for (v, f) in &st.pending {
                    outln!("{}", serde_json::json!({"version": v, "file": f, "state": "pending"}));
                }
            } else {
                for m in &st.applied {
                    outln!("applied  {:>4}  {}  (@seq:{}, {})", m.version, m.file, m.seq, m.checksum);
                }
                for (v, f) in &st.pending {
                    outln!("pending  {v:>4}  {f}");
                }
                if matches!(action, MigrateCmd::Validate) {
                    let n = st.applied.len();
                    outln!(
                        "ok: {} {}; {} pending",
                        plural(n as u64, "applied migration", "applied migrations"),
                        if n == 1 { "matches its file" } else { "match their files" },
                        st.pending.len()
                    );
                }
            }
        }
        MigrateCmd::Up { to, dry_run } => {
            let reports = migrate::up(&db, &a.migrations, to, dry_run)?;
            if a.json {
                for r in &reports {
                    outln!("{}", serde_json::to_string(r).unwrap_or_default());
                }
            } else {
                if reports.is_empty() {
                    outln!("nothing to apply");
                }
                for r in &reports {
                    let changed: Vec<String> =
                        r.rows_changed.iter().map(|(t, n)| format!("{t}: {}", plural(*n, "row", "rows"))).collect();
                    let what = match r.seq {
                        Some(seq) => format!("applied at @seq:{seq}"),
                        None => "would apply (dry run, nothing written)".to_string(),
                    };
                    outln!(
                        "{} {what}: {}, {} held; {}",
                        r.file,
                        plural(r.schema_changes as u64, "schema change", "schema changes"),
                        plural(r.checks as u64, "check", "checks"),
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
    if out::closed() {
        return;
    }
    match o {
        Outcome::Committed(seq) => {
            if !json {
                outln!("ok (seq {seq})");
            }
        }
        Outcome::Rows(rows) => {
            if json {
                for r in rows {
                    if out::closed() {
                        return;
                    }
                    outln!("{r}");
                }
            } else {
                print_rows(rows);
            }
        }
        Outcome::Drift(h) => {
            if json {
                for e in h {
                    if out::closed() {
                        return;
                    }
                    outln!("{}", serde_json::to_string(e).unwrap_or_default());
                }
            } else {
                let rows: Vec<Value> = h
                    .iter()
                    .map(|e| serde_json::json!({"seq": e.seq, "time": e.time, "op": e.op, "doc": e.doc}))
                    .collect();
                print_rows(&rows);
            }
        }
        Outcome::Began(iso) => {
            if !json {
                outln!("begin ({})", iso.as_str().to_lowercase());
            }
        }
        Outcome::Staged => {
            if !json {
                outln!("ok (pending commit)");
            }
        }
        Outcome::Expected(v) => {
            if !json {
                outln!("ok (expectation holds: {v})");
            }
        }
        Outcome::RolledBack => {
            if !json {
                outln!("rolled back");
            }
        }
        Outcome::Snapshot(seq) => {
            if !json {
                outln!("ok (snapshot at seq {seq})");
            }
        }
        Outcome::Compacted(h) => {
            if !json {
                if *h == 0 {
                    outln!("ok (all history kept)");
                } else {
                    outln!("ok (history up to seq {h} folded)");
                }
            }
        }
        Outcome::Tables(t) => {
            if json {
                for d in t {
                    outln!(
                        "{}",
                        serde_json::json!({"table": d.name, "pk": d.pk, "columns": d.columns, "indexes": d.indexes, "created_seq": d.created_seq})
                    );
                }
                return;
            }
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
                    let mut row = serde_json::json!({"table": d.name, "pk": d.pk, "columns": cols.join(", "), "indexes": d.indexes.join(", "), "created_seq": d.created_seq});
                    // Nothing to list: an empty cell, not an empty string.
                    if let Some(m) = row.as_object_mut() {
                        m.retain(|_, v| v.as_str() != Some(""));
                    }
                    row
                })
                .collect();
            print_rows(&rows);
        }
    }
}

fn print_report(dir: &Path, r: &driftdb::VerifyReport) {
    outln!("verify {}", dir.display());
    outln!(
        "  checked {}, {}, {} bytes ({})",
        plural(r.files_checked as u64, "file", "files"),
        plural(r.frames_checked, "frame", "frames"),
        r.bytes_checked,
        if r.authenticated { "CRC and authentication tag of every frame" } else { "structure and CRCs only, no key" }
    );
    if let Some(v) = r.master_version {
        outln!("  keyring and manifest authenticated under master key version {v}");
    }
    if let Some(g) = r.keyring_generation {
        outln!("  keyring generation {g} (pin it with --expect-generation {g} to detect a rollback)");
    }
    if let Some(h) = &r.audit_head {
        outln!("  key audit log head: {}, {}", plural(h.entries, "entry", "entries"), h.hash);
    }
    for n in &r.notes {
        outln!("  note: {n}");
    }
    for e in &r.errors {
        outln!("  NOT CHECKED: {e}");
    }
    for p in &r.problems {
        outln!("  PROBLEM: {} at offset {}: {}", p.file, p.offset, p.problem);
    }
    if !r.problems.is_empty() {
        outln!("  FAILED: {}", plural(r.problems.len() as u64, "problem", "problems"));
    } else if !r.errors.is_empty() {
        outln!("  INCOMPLETE: {} could not be checked", plural(r.errors.len() as u64, "thing", "things"));
    } else {
        outln!("  OK: no problems found");
    }
}

fn keygen(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = driftdb::crypto::keys::SecretKey::random()?;
    let hex = driftdb::crypto::keysource::key_to_hex(&key);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::AlreadyExists(format!("{} exists; keygen never overwrites a key", path.display()))
        } else {
            Error::io("creating", path, e)
        }
    })?;
    f.write_all(hex.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("writing", path, e))?;
    Ok(())
}
