//! The commits of the log, as the engine keeps them in memory (where each
//! record is, its sequence numbers and commit time): what `AS OF` a time
//! resolves against, and what rewriting a segment repoints.

use super::*;

/// A commit of the log, as the engine keeps it in memory: where its record
/// is, and which sequence numbers and commit time it holds.
#[derive(Clone, Copy)]
pub(super) struct CommitMeta {
    /// The sequence number of its first event.
    pub(super) first_seq: u64,
    /// Its events.
    pub(super) len: u32,
    /// Its commit time (microseconds since the Unix epoch).
    pub(super) time: i64,
    /// Its record in the segments or the WAL.
    pub(super) pos: RecordPos,
}
