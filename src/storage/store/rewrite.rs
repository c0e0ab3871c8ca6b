//! Rewriting sealed files under fresh data keys, and merging small ones.

use super::*;

/// A sealed file's records copied into a new file ([`Store::copy_sealed`]).
pub(super) struct SealedCopy<'s> {
    /// The file copied.
    pub(super) info: FileInfo,
    /// The copy, not yet finished.
    pub(super) builder: FileBuilder<'s>,
    /// Every record's position in the copy, in order.
    pub(super) positions: Vec<RecordPos>,
    /// Whether the transform changed any record.
    pub(super) changed: bool,
}

impl Store {
    /// Rewrite a sealed file under a fresh data key, passing each record
    /// through `transform` (which may return it unchanged). The new file takes
    /// the old one's place in its stream (same kind, stream, ordinal and
    /// metadata) in one atomic manifest change, and the old file is deleted.
    /// If `transform` changed nothing, nothing is written and `None` is
    /// returned; otherwise the new position of every record, in order.
    pub fn rewrite_file(
        &self,
        file_id: u64,
        transform: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>>,
    ) -> Result<Option<Vec<RecordPos>>> {
        let copy = self.copy_sealed(file_id, transform)?;
        if !copy.changed {
            return Ok(None); // the builder's file is removed on drop
        }
        let pending = copy.builder.finish()?;
        self.commit(Edit { add: vec![pending], remove: vec![file_id], root: None })?;
        Ok(Some(copy.positions))
    }

    /// Copy a live sealed file's records, each through `transform`, into a
    /// new file that is to take its place (same kind, stream, ordinal and
    /// metadata; a fresh data key), not yet finished: the caller finishes
    /// and commits it, or drops it (and it is removed).
    pub(super) fn copy_sealed(
        &self,
        file_id: u64,
        mut transform: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>>,
    ) -> Result<SealedCopy<'_>> {
        let info = self
            .files()
            .into_iter()
            .find(|f| f.file_id == file_id)
            .ok_or_else(|| Error::NotFound(format!("file {file_id:016x}")))?;
        if !matches!(info.state, FileState::Sealed { .. })
            || self.lock_inner().writers.values().any(|w| w.header.file_id == file_id)
        {
            return Err(Error::InvalidArgument(format!("{} is still being written", info.name)));
        }
        let mut builder = {
            let mut guard = self.lock_inner();
            let inner = &mut *guard;
            let (writer, entry, path) = self.new_file(
                inner,
                Place { kind: info.kind, stream: info.stream, ordinal: info.ordinal, meta: info.meta.clone() },
                true,
            )?;
            FileBuilder::new(self, writer, entry, path)
        };
        let mut changed = false;
        let positions = builder.with_write_behind(|b| {
            let mut positions = Vec::new();
            self.read_file(file_id, |_, rec| {
                let pos = match transform(rec)? {
                    Some(new) => {
                        changed = true;
                        b.append(&new)?
                    }
                    None => b.append(rec)?,
                };
                positions.push(pos);
                Ok(())
            })?;
            Ok(positions)
        })?;
        Ok(SealedCopy { info, builder, positions, changed })
    }

    /// Merge runs of small sealed stream files (left by many short sessions)
    /// into one file under a fresh data key. Record order is preserved; record
    /// positions in the merged files change.
    pub fn merge_small_files(&self) -> Result<Vec<RecoveryEvent>> {
        let mut events = Vec::new();
        let files = self.files();
        let active: Vec<u64> = self.lock_inner().writers.values().map(|w| w.header.file_id).collect();
        let mut streams: Vec<u32> = files.iter().map(|f| f.stream).collect();
        streams.dedup();
        for s in streams {
            // Every file of the stream, in order: any file that cannot join
            // the run (another kind, metadata, large, being written) ends it,
            // so merging never reorders a stream.
            let sf: Vec<&FileInfo> = files.iter().filter(|f| f.stream == s).collect();
            let small_below = self.opts.small_file_bytes.min(self.opts.segment_size / 4);
            let size = |f: &FileInfo| match f.state {
                FileState::Sealed { len, .. } => len,
                FileState::Active => u64::MAX,
            };
            let mut run: Vec<&FileInfo> = Vec::new();
            let mut run_bytes = 0u64;
            let mut runs = Vec::new();
            for f in sf {
                let mergeable = size(f) < small_below
                    && !active.contains(&f.file_id)
                    && f.meta.is_empty()
                    && matches!(f.kind, FileKind::Segment | FileKind::AuditLog);
                if mergeable
                    && run.first().is_none_or(|r| r.kind == f.kind)
                    && run_bytes + size(f) <= self.opts.segment_size
                {
                    run_bytes += size(f);
                    run.push(f);
                } else {
                    if run.len() >= self.opts.merge_min_files {
                        runs.push(std::mem::take(&mut run));
                    }
                    run.clear();
                    run_bytes = 0;
                    if mergeable {
                        run_bytes = size(f);
                        run.push(f);
                    }
                }
            }
            if run.len() >= self.opts.merge_min_files {
                runs.push(run);
            }
            for run in runs {
                let first = run[0];
                let mut b = {
                    let mut guard = self.lock_inner();
                    let inner = &mut *guard;
                    let (writer, mut entry, path) = self.new_file(
                        inner,
                        Place { kind: first.kind, stream: s, ordinal: first.ordinal, meta: first.meta.clone() },
                        true,
                    )?;
                    entry.ordinal = first.ordinal;
                    FileBuilder::new(self, writer, entry, path)
                };
                b.with_write_behind(|b| {
                    for f in &run {
                        self.read_file(f.file_id, |_, p| b.append(p).map(|_| ()))?;
                    }
                    Ok(())
                })?;
                let into = b.writer.name.clone();
                let pending = b.finish()?;
                self.commit(Edit { add: vec![pending], remove: run.iter().map(|f| f.file_id).collect(), root: None })?;
                events.push(RecoveryEvent::Merged { files: run.len(), into });
            }
        }
        Ok(events)
    }
}
