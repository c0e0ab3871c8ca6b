//! Error types shared by every layer, and the CLI exit code each one maps to.

use std::path::PathBuf;

/// Result alias used throughout DriftDB.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in DriftDB.
///
/// Errors never carry key material. Integrity errors name the file and the
/// byte offset where the problem was found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error.
    #[error("I/O error: {op} {}: {source}", path.display())]
    Io {
        /// What DriftDB was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Bytes on disk fail a structural or checksum check (no key needed to see it).
    #[error("corruption in {file} at offset {offset}: {reason}")]
    Corrupted {
        /// File name relative to the data directory.
        file: String,
        /// Byte offset of the damaged structure.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Bytes are well-formed but fail authentication: tampered, moved,
    /// reordered, replayed from elsewhere, or truncated.
    #[error("integrity check failed in {file} at offset {offset}: {reason}")]
    Tampered {
        /// File name relative to the data directory.
        file: String,
        /// Byte offset of the structure that failed authentication.
        offset: u64,
        /// What failed.
        reason: String,
    },
    /// The keyring is older than the newest one the caller has seen (the
    /// generation it pinned): an older copy was put back in place.
    #[error(
        "rollback detected: the keyring is at generation {found}, older than the generation {expected} expected; an older copy of the database (or of its keyring) was put in place"
    )]
    RolledBack {
        /// The keyring's generation.
        found: u64,
        /// The generation the caller expected at least.
        expected: u64,
    },
    /// The master key given does not open this database.
    #[error("wrong key: {0}")]
    WrongKey(String),
    /// The master key given was retired by a rotation.
    #[error(
        "key retired: this master key (version {version}) was retired by a key rotation; open the database with its current master key"
    )]
    KeyRetired {
        /// The retired master key version.
        version: u32,
    },
    /// The key source could not produce a key (missing file, bad format, command failed...).
    #[error("key source: {0}")]
    KeySource(String),
    /// Another process (or handle) holds the database lock.
    #[error("database is in use by another process: {}", path.display())]
    InUse {
        /// The data directory.
        path: PathBuf,
    },
    /// A caller-supplied argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The database directory does not hold a DriftDB database.
    #[error("not a DriftDB database: {}", path.display())]
    NotADatabase {
        /// The directory.
        path: PathBuf,
    },
    /// A file written by a newer or unknown format version.
    #[error("unsupported format version {found} in {file} (this build reads version {supported})")]
    UnsupportedVersion {
        /// File name.
        file: String,
        /// Version found.
        found: u16,
        /// Version this build understands.
        supported: u16,
    },
    /// An earlier write or sync failed; the store refuses further writes.
    #[error("database refuses writes after an earlier failure ({0}); reopen it to recover")]
    Poisoned(String),
    /// A requested item does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Something that must not exist already does.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A malformed or invalid query or statement (with its position when known).
    #[error("{0}")]
    Query(String),
    /// A statement conflicts with the data (duplicate key, missing or deleted row...).
    #[error("{0}")]
    Constraint(String),
    /// The store was opened read-only.
    #[error("the database was opened read-only")]
    ReadOnly,
    /// An invariant of DriftDB's own code was broken: a bug, never bad input
    /// (which gets one of the other variants). Nothing more was written.
    #[error("internal error (a bug in DriftDB; please report it): {0}")]
    Internal(String),
    /// A transaction conflicted with one that committed after it began;
    /// nothing of it was written. Retrying it may succeed.
    #[error("transaction conflict (retry the transaction): {0}")]
    Conflict(String),
}

impl Error {
    /// Process exit code for this error, as documented in the README:
    /// 1 operation failed, 2 usage, 3 key problem, 4 integrity problem, 5 in
    /// use, 6 transaction conflict (retry).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::WrongKey(_) | Error::KeyRetired { .. } | Error::KeySource(_) => 3,
            Error::Corrupted { .. }
            | Error::Tampered { .. }
            | Error::UnsupportedVersion { .. }
            | Error::RolledBack { .. } => 4,
            Error::InUse { .. } => 5,
            Error::Conflict(_) => 6,
            Error::InvalidArgument(_) => 2,
            Error::Io { .. }
            | Error::NotADatabase { .. }
            | Error::Poisoned(_)
            | Error::NotFound(_)
            | Error::AlreadyExists(_)
            | Error::ReadOnly
            | Error::Query(_)
            | Error::Constraint(_)
            | Error::Internal(_) => 1,
        }
    }

    /// True for errors that mean the data on disk is damaged or was tampered with.
    pub fn is_integrity(&self) -> bool {
        self.exit_code() == 4
    }

    /// An I/O error while doing `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { op, path: path.into(), source }
    }

    pub(crate) fn corrupted(file: &str, offset: u64, reason: impl Into<String>) -> Self {
        Error::Corrupted { file: file.to_string(), offset, reason: reason.into() }
    }

    pub(crate) fn tampered(file: &str, offset: u64, reason: impl Into<String>) -> Self {
        Error::Tampered { file: file.to_string(), offset, reason: reason.into() }
    }
}
