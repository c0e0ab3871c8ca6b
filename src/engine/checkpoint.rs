//! Checkpoints: the write-ahead log's commits copied into the event segments.

use super::*;

impl Db {
    /// Copy the commits only in the WAL into the segments, sync them, and
    /// delete the WAL files (writer lock held). Crash-safe at every step: the
    /// WAL files go only after the segments holding their commits are synced,
    /// and opening skips WAL commits the segments already hold.
    pub(super) fn checkpoint(&self, w: &mut WriterState) -> Result<()> {
        let wal_files = self.shared.store.stream_files(WAL_STREAM);
        if wal_files.is_empty() && w.pending.is_empty() {
            return Ok(());
        }
        let r = self.checkpoint_steps(w);
        if let Err(e) = &r {
            // A retry in this session would copy commits the segments may
            // already hold: refuse writes instead; the next open checkpoints
            // from what the disk holds.
            self.shared.store.poison_with(e);
        }
        r
    }

    pub(super) fn checkpoint_steps(&self, w: &mut WriterState) -> Result<()> {
        // Seal (and sync) the WAL's current file: every WAL file is then
        // fully covered by what is copied below.
        self.shared.store.seal_stream(WAL_STREAM)?;
        let mut moved = Vec::with_capacity(w.pending.len());
        for (first, rec) in &w.pending {
            moved.push((*first, self.shared.store.append(EVENTS_STREAM, FileKind::Segment, rec)?));
        }
        self.shared.store.sync_stream(EVENTS_STREAM)?;
        {
            let mut st = self.state_mut();
            for (first, pos) in moved {
                st.segment_starts.entry(pos.file_id).or_insert(first);
            }
        }
        let remove: Vec<u64> = self.shared.store.stream_files(WAL_STREAM).iter().map(|f| f.file_id).collect();
        w.pending.clear();
        w.pending_bytes = 0;
        self.shared.store.commit(Edit { remove, ..Default::default() })
    }
}
