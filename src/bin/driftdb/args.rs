//! The command line: every command and flag (clap).

use crate::*;

#[derive(Parser)]
#[command(name = "driftdb", version, about = "An append-only, time-travelling document database, encrypted at rest")]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) cmd: Command,
}

/// Where the master key comes from. With none given, DRIFTDB_KEY_FILE or
/// DRIFTDB_PASSPHRASE are used, then a prompt on a terminal.
#[derive(Args, Debug, Default)]
pub(super) struct KeyOpts {
    /// Master key file: 32 raw bytes, 64 hex digits or base64 (must be mode 0600).
    #[arg(long, value_name = "PATH", group = "key")]
    pub(super) key_file: Option<PathBuf>,
    /// Accept a key file that group or others can read.
    #[arg(long)]
    pub(super) allow_insecure_key_file: bool,
    /// Name of an environment variable holding a passphrase (Argon2id).
    #[arg(long, value_name = "VAR", group = "key")]
    pub(super) passphrase_env: Option<String>,
    /// Name of an environment variable holding the key as hex or base64.
    #[arg(long, value_name = "VAR", group = "key")]
    pub(super) key_env: Option<String>,
    /// Shell command that prints the key (KMS, Vault, HSM...). It runs in a
    /// cleared environment (PATH, HOME, USER, LOGNAME, LANG, LC_ALL, TZ,
    /// TMPDIR and the variables given with --key-command-env).
    #[arg(long, value_name = "CMD", group = "key")]
    pub(super) key_command: Option<String>,
    /// Kill a key command that has not finished after SECS seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub(super) key_command_timeout: f64,
    /// Pass environment variable VAR to the key command (repeatable), e.g. VAULT_TOKEN.
    #[arg(long, value_name = "VAR")]
    pub(super) key_command_env: Vec<String>,
}

/// How to open: what a rollback check and the KDF may ask.
#[derive(Args, Debug, Default)]
pub(super) struct OpenOpts {
    /// Refuse a keyring older than generation N (the newest one seen; see
    /// `keys status`): detects an older copy of the database put in place.
    #[arg(long, value_name = "N")]
    pub(super) expect_generation: Option<u64>,
    /// Most memory the keyring may ask Argon2id to use, in MiB (default 1024).
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub(super) max_kdf_memory_mib: u32,
}

impl OpenOpts {
    pub(super) fn store(&self, read_only: bool) -> StoreOptions {
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
pub(super) struct KdfOpts {
    /// Argon2id memory in MiB (passphrase keys only).
    #[arg(long, default_value_t = 64)]
    pub(super) kdf_memory_mib: u32,
    /// Argon2id iterations (passphrase keys only).
    #[arg(long, default_value_t = 3)]
    pub(super) kdf_iterations: u32,
    /// Argon2id lanes (passphrase keys only).
    #[arg(long, default_value_t = 1)]
    pub(super) kdf_parallelism: u32,
    /// Accept Argon2id parameters below 19 MiB and 2 iterations (tests only:
    /// a weakly stretched passphrase is cheap to guess from the keyring).
    #[arg(long)]
    pub(super) allow_weak_kdf: bool,
}

impl KdfOpts {
    pub(super) fn params(&self) -> Argon2Params {
        Argon2Params {
            m_cost_kib: self.kdf_memory_mib.saturating_mul(1024),
            t_cost: self.kdf_iterations,
            p_cost: self.kdf_parallelism,
        }
    }
}

/// The new master key of a rotation.
#[derive(Args, Debug, Default)]
pub(super) struct NewKeyOpts {
    /// New master key file (must be mode 0600).
    #[arg(long, value_name = "PATH", group = "new_key")]
    pub(super) new_key_file: Option<PathBuf>,
    /// Name of an environment variable holding the new passphrase.
    #[arg(long, value_name = "VAR", group = "new_key")]
    pub(super) new_passphrase_env: Option<String>,
    /// Name of an environment variable holding the new key as hex or base64.
    #[arg(long, value_name = "VAR", group = "new_key")]
    pub(super) new_key_env: Option<String>,
    /// Shell command that prints the new key (run twice: it must print the
    /// same key both times). Timeout and environment as for --key-command.
    #[arg(long, value_name = "CMD", group = "new_key")]
    pub(super) new_key_command: Option<String>,
}

/// Key management.
#[derive(Subcommand)]
pub(super) enum KeysCmd {
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
pub(super) struct DbArgs {
    /// The data directory (default: $DRIFTDB_DIR).
    #[arg(short = 'd', long = "dir", value_name = "DIR", env = "DRIFTDB_DIR")]
    pub(super) dir: PathBuf,
    #[command(flatten)]
    pub(super) key: KeyOpts,
    #[command(flatten)]
    pub(super) open: OpenOpts,
}

/// Which database, with which key, and which migrations folder.
#[derive(Args, Debug)]
pub(super) struct MigrateArgs {
    /// The data directory (default: $DRIFTDB_DIR).
    #[arg(short = 'd', long = "dir", visible_alias = "data-dir", value_name = "DIR", env = "DRIFTDB_DIR")]
    pub(super) data: PathBuf,
    #[command(flatten)]
    pub(super) key: KeyOpts,
    #[command(flatten)]
    pub(super) open: OpenOpts,
    /// The migrations folder (files NNNN_name.driftql).
    #[arg(long = "migrations", value_name = "MIGRATIONS")]
    pub(super) migrations: PathBuf,
    /// Print JSON Lines.
    #[arg(long, global = true)]
    pub(super) json: bool,
}

/// What `migrate` does.
#[derive(Subcommand)]
pub(super) enum MigrateCmd {
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
pub(super) enum Command {
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
pub(super) fn legacy_migrate_args(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
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
