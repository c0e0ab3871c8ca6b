//! What the engine's calls return: statement outcomes, history entries, rotation status.

use super::*;

/// What a compaction would do ([`Db::compaction_preview`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CompactionPreview {
    /// The horizon it would move to.
    pub horizon: u64,
    /// The table's horizon now (0: all history kept).
    pub current_horizon: u64,
    /// Row events (insert, patch, soft delete) it would fold.
    pub events_folded: u64,
    /// Row events it would keep (after the horizon).
    pub events_kept: u64,
    /// The database's latest sequence number.
    pub latest_seq: u64,
}

/// One event of a row's history (`SHOW DRIFT`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistoryEntry {
    /// Sequence number.
    pub seq: u64,
    /// Commit time, RFC 3339.
    pub time: String,
    /// `INSERT`, `PATCH` or `SOFT_DELETE`.
    pub op: &'static str,
    /// The document after the event (for `SOFT_DELETE`, the document deleted).
    pub doc: Value,
}

/// What a statement produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A write committed at this sequence number.
    Committed(u64),
    /// Result rows.
    Rows(Vec<Value>),
    /// A row's history.
    Drift(Vec<HistoryEntry>),
    /// Table definitions.
    Tables(Vec<TableDef>),
    /// A snapshot was taken at this sequence number.
    Snapshot(u64),
    /// The table's history is folded up to this horizon.
    Compacted(u64),
    /// `BEGIN`: a transaction started.
    Began(Isolation),
    /// A change staged inside a transaction (committed by `COMMIT`).
    Staged,
    /// `ROLLBACK`: the transaction's changes were discarded.
    RolledBack,
    /// `EXPECT`: the check held; the value its query returned.
    Expected(Value),
}

/// Progress of the current or last re-encryption.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RotationProgress {
    /// `idle` (never rotated with re-encryption), `running`, `interrupted`
    /// (files remain and nothing is re-encrypting them: run `keys resume`
    /// or reopen) or `complete`.
    pub state: &'static str,
    /// Files re-encrypted.
    pub files_done: u64,
    /// Files to re-encrypt.
    pub files_total: u64,
    /// Bytes re-encrypted.
    pub bytes_done: u64,
    /// Bytes to re-encrypt.
    pub bytes_total: u64,
}

/// Keys and rotation, as `driftdb keys status` shows them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RotationStatus {
    /// Database id (hex).
    pub database_id: String,
    /// The master key version that opens the database.
    pub active_key_version: u32,
    /// Every master key version, with the live files whose data keys date from it.
    pub keys: Vec<crate::storage::store::KeyVersionStatus>,
    /// The current or last re-encryption.
    pub rotation: RotationProgress,
    /// The keyring's generation ([`Db::keyring_generation`]).
    pub keyring_generation: u64,
    /// The key audit log's chain head, as the keyring records it.
    pub audit_head: crate::storage::verify::AuditHeadReport,
}
