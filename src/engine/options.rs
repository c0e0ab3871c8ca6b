//! How a database is opened and rotated: [`Options`], [`Durability`], [`RotateOptions`].

use super::*;

/// When a commit is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// The write-ahead log is fsynced before `commit` returns (the default).
    #[default]
    Immediate,
    /// NOT durable on return: `commit` returns once the commit is written
    /// to the operating system, and a background thread fsyncs the
    /// write-ahead log at this interval. A crash (of the machine, not only
    /// the process) can lose the commits of about the last interval; what
    /// survives is always a prefix of the history, each commit whole.
    RelaxedSyncEvery(Duration),
}

/// Options for [`Db::create`] and [`Db::open`].
#[derive(Clone)]
pub struct Options {
    /// Storage options (file system, segment size, read-only...).
    pub store: StoreOptions,
    /// Argon2id cost for a new passphrase-protected database.
    pub argon2: Argon2Params,
    /// Snapshot a table automatically after this many of its events (or
    /// as many events as it had rows at its last snapshot, if more: snapshot
    /// cost stays linear in the events). Automatic snapshots are written on
    /// a background thread while commits go on ([`Db::wait_for_snapshots`]
    /// waits for them); [`Db::snapshot`] writes one at once.
    pub snapshot_every_events: u64,
    /// ... or after this many bytes of its events (once at least half its
    /// row count in events has accumulated).
    pub snapshot_every_bytes: u64,
    /// When a commit is durable.
    pub durability: Durability,
    /// Checkpoint the write-ahead log into the segments once it holds this
    /// many bytes (it is also checkpointed on open and on close).
    pub checkpoint_bytes: u64,
    /// On open, resume an interrupted re-encryption in the background.
    pub resume_rotation: bool,
    /// Accept Argon2id parameters below the floor of
    /// [`Argon2Params::check_strength`] for a new passphrase (tests only).
    pub allow_weak_kdf: bool,
    /// Refuse to open a database whose keyring generation
    /// ([`Db::keyring_generation`]) is below this: pin the newest
    /// generation the application has seen (kept somewhere the database's
    /// disk is not), and an older copy of the whole directory put back in
    /// place is refused ([`Error::RolledBack`]). The same as
    /// [`StoreOptions::expect_generation`]; the larger of the two applies.
    pub expect_generation: Option<u64>,
    /// Bytes of decrypted blocks of the version tree kept in memory (a
    /// hard limit: reads beyond it decrypt again). 64 MiB by default.
    pub cache_bytes: u64,
    /// Row versions not yet in the version tree's sorted runs are held in
    /// memory; once they take this many bytes they are written out in the
    /// background. 8 MiB by default.
    pub memtable_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            store: StoreOptions::default(),
            argon2: Argon2Params::default(),
            snapshot_every_events: 10_000,
            snapshot_every_bytes: 64 << 20,
            durability: Durability::Immediate,
            checkpoint_bytes: 8 << 20,
            resume_rotation: true,
            allow_weak_kdf: false,
            expect_generation: None,
            cache_bytes: 64 << 20,
            memtable_bytes: 8 << 20,
        }
    }
}

/// Options of [`Db::rotate_master_key`] and [`Db::rotate_data_keys`].
#[derive(Clone, Debug)]
pub struct RotateOptions {
    /// Only re-wrap the data keys under the new master key; re-encrypt nothing.
    pub rewrap_only: bool,
    /// Re-encrypt at most this many bytes per second (so the foreground
    /// keeps its latency); `None`: as fast as the disk goes.
    pub throttle_bytes_per_sec: Option<u64>,
    /// Argon2id cost when the new master key is a passphrase.
    pub argon2: Argon2Params,
    /// Re-encrypt in a background thread (the default); otherwise call
    /// [`Db::resume_rotation`] to do it in the calling thread.
    pub background: bool,
    /// Accept a new passphrase's Argon2id parameters below the floor of
    /// [`Argon2Params::check_strength`] (tests only).
    pub allow_weak_kdf: bool,
    /// Accept the current passphrase as the new one when the Argon2id
    /// parameters differ: a rotation that only changes its cost. (Without
    /// it, a rotation to the passphrase in force is refused.)
    pub retune_kdf: bool,
}

impl Default for RotateOptions {
    fn default() -> Self {
        RotateOptions {
            rewrap_only: false,
            throttle_bytes_per_sec: None,
            argon2: Argon2Params::default(),
            background: true,
            allow_weak_kdf: false,
            retune_kdf: false,
        }
    }
}
