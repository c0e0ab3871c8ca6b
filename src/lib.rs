//! DriftDB: an embeddable, append-only, time-travelling document database,
//! encrypted at rest with envelope encryption and online key rotation.
//!
//! This crate's storage core: every byte that reaches the disk is sealed with
//! AES-256-GCM under a per-file data key; data keys are wrapped by a
//! versioned master key from a [`KeySource`]; files are sequences of
//! CRC-checked, position-bound frames; the manifest of live files is
//! authenticated; a torn tail is recovered and anything else is reported
//! with its file and offset.
//!
//! See `docs/FORMAT.md` for every byte on disk and `SECURITY.md` for the
//! threat model.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

// The layers, lowest first (docs/DESIGN.md; tests/layers.rs keeps them):
// error → crypto → format → storage → table → query → engine → migrate.
mod error;
mod sync;

pub mod crypto;
mod engine;
/// The on-disk encodings (frames, headers, the keyring, the audit log):
/// for tests, benchmarks and fuzzing; not an API.
#[doc(hidden)]
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod migrate;
pub mod query;
pub mod storage;
pub mod table;

pub use crypto::kdf::Argon2Params;
pub use crypto::keysource::KeyCommand;
pub use crypto::keysource::KeySource;
pub use engine::{
    CompactionPreview, Db, Durability, HistoryEntry, MAX_KEY_BYTES, Options, Outcome, RotateOptions, RotationProgress,
    RotationStatus, Txn,
};
pub use error::{Error, Result};
pub use format::FileKind;
pub use storage::store::{CreateOptions, Edit, FileInfo, RecordPos, RecoveryEvent, Store, StoreOptions};
pub use storage::verify::{VerifyReport, verify_without_key, verify_without_key_expecting};
pub use table::Isolation;
pub use table::{KeyStr, Pk, TableDef};

/// The database engine (kept under this path for code written against it).
pub mod db {
    pub use crate::engine::{
        CompactionPreview, Db, Durability, EVENTS_STREAM, HistoryEntry, Options, Outcome, RotateOptions,
        RotationProgress, RotationStatus, WAL_STREAM,
    };
}

/// Transactions (kept under this path for code written against it).
pub mod txn {
    pub use crate::engine::{SYSTEM_PREFIX, Txn};
    pub use crate::table::Isolation;
}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
