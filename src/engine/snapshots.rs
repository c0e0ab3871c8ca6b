//! Snapshots: written on demand, or in the background once a table's events
//! since the last one are due.

use super::*;
use crate::sync::{Locked, RwLocked};

impl Db {
    /// Write automatic snapshots of tables `due` on a thread of their own,
    /// so that the next commits do not wait for them (called by the
    /// group-commit leader, writer lock held). If the thread is still
    /// writing earlier ones, the tables join its queue and it takes them
    /// before it ends. What could not run beside a snapshot being
    /// written (compaction, an explicit snapshot, a key rotation, closing)
    /// waits for it first, under the writer lock, so that no new one starts.
    pub(super) fn snapshot_in_background(&self, due: Vec<u32>) {
        let mut sn = self.shared.snapshotter.locked();
        for t in due {
            if !sn.pending.contains(&t) {
                sn.pending.push(t);
            }
        }
        if sn.running {
            return; // the thread takes them before it ends
        }
        if let Some(h) = sn.thread.take()
            && h.join().is_err()
        {
            log::error!(target: "driftdb::snapshot", "the automatic snapshot thread panicked");
        }
        let db = self.background_handle();
        let spawned = std::thread::Builder::new().name("driftdb-snapshot".into()).spawn(move || db.snapshot_pending());
        match spawned {
            Ok(h) => {
                sn.running = true;
                sn.thread = Some(h);
            }
            Err(_) => {
                drop(sn);
                self.snapshot_pending();
            }
        }
    }

    /// Write the pending automatic snapshots until none is left (each table
    /// only if it is still due: a table found due again while its snapshot
    /// was being written may no longer be).
    pub(super) fn snapshot_pending(&self) {
        // Cleared on the way out, even by a panic, so that a later group
        // starts a new thread.
        struct NotRunning<'a>(&'a Mutex<Snapshotter>);
        impl Drop for NotRunning<'_> {
            fn drop(&mut self) {
                let mut sn = self.0.locked();
                sn.running = false;
            }
        }
        let _guard = NotRunning(&self.shared.snapshotter);
        loop {
            let todo = {
                let mut sn = self.shared.snapshotter.locked();
                if sn.pending.is_empty() {
                    sn.running = false;
                    return;
                }
                std::mem::take(&mut sn.pending)
            };
            for t in todo {
                if self.state().snapshot_due(t, &self.shared.opts) {
                    self.auto_snapshot(t);
                }
            }
        }
    }

    /// One automatic snapshot. The commits it covers are durable; a failure
    /// only delays the next one (its counters restart, so it is not retried
    /// on every commit).
    pub(super) fn auto_snapshot(&self, t: u32) {
        if let Err(e) = self.snapshot_now(t) {
            log::warn!(target: "driftdb::snapshot", "automatic snapshot of table {t} failed: {e}");
            let mut st = self.state_mut();
            if let Some(td) = st.tables.get_mut(&t) {
                td.since_events = 0;
                td.since_bytes = 0;
            }
        }
    }

    /// Wait for the automatic snapshots being written, if any (writer lock
    /// held, or the last handle dropping: no group adds more meanwhile).
    pub(super) fn wait_snapshots(&self) {
        let h = self.shared.snapshotter.locked().thread.take();
        if let Some(h) = h
            && h.join().is_err()
        {
            log::error!(target: "driftdb::snapshot", "the automatic snapshot thread panicked");
        }
    }

    /// Wait until the automatic snapshots started by earlier commits are
    /// written (they are written in the background; see
    /// [`Options::snapshot_every_events`]).
    pub fn wait_for_snapshots(&self) {
        let _w = self.lock_writer();
        self.wait_snapshots();
    }

    /// Snapshot a table now (`SNAPSHOT t`); returns the sequence number it is taken at.
    pub fn snapshot(&self, table: &str) -> Result<u64> {
        let _w = self.lock_writer();
        self.wait_snapshots();
        let id = self.state().table(table)?.id;
        self.snapshot_now(id)
    }

    /// Write a snapshot of table `id` at the latest sequence number (the
    /// writer lock held, or on the automatic snapshot thread: see
    /// [`Db::snapshot_in_background`]).
    pub(super) fn snapshot_now(&self, id: u32) -> Result<u64> {
        // The tree as of `seq` taken under the lock, read without it.
        let (seq, alters, folded_at, view, counted) = {
            let st = self.state();
            let seq = st.latest_seq();
            let Some(t) = st.tables.get(&id) else { return Ok(seq) };
            if t.snapshots.last().is_some_and(|(s, _)| *s == seq) {
                return Ok(seq);
            }
            (seq, t.alters.clone(), t.folded_at, self.tree()?.view(), (t.since_events, t.since_bytes))
        };
        let shape = versions::Shape { alters: &alters, folded_at };
        // Streamed from the tree into the file: one record of rows at a time
        // is held.
        self.write_snapshot(
            id,
            seq,
            &mut |f| versions::for_each_row_at(&view, shape, id, seq, |k, d| f(&k, &d)),
            counted,
        )
    }

    /// Write rows (each given to the callback `rows` calls, in key order)
    /// as the snapshot of table `id` at `seq` and record it.
    /// `counted`: the table's events and bytes since its last snapshot when
    /// the rows were read (commits may come while the snapshot is written:
    /// they count towards the next one).
    pub(super) fn write_snapshot(
        &self,
        id: u32,
        seq: u64,
        rows: &mut RowSource<'_>,
        counted: (u64, u64),
    ) -> Result<u64> {
        // A snapshot must never be ahead of the durable log. With immediate
        // durability every commit was synced before it applied, so there is
        // nothing to sync (and no second fsync of the WAL beside the leader's,
        // which could take a write-back error the leader then would not see).
        if self.shared.opts.durability != Durability::Immediate {
            self.shared.store.sync_stream(WAL_STREAM)?;
        }
        // The fields the table indexed at `seq`, so that opening can index
        // the rows as it loads them (not listed if unusually long).
        let mut indexes =
            self.state().tables.get(&id).and_then(|t| t.def_at(seq)).map(|d| d.indexes.clone()).unwrap_or_default();
        if !crate::table::snapshot::fields_fit(&indexes) {
            indexes.clear();
        }
        // Each row carries the values of those fields, so that opening
        // indexes it without parsing it.
        let names: Vec<&str> = indexes.iter().map(String::as_str).collect();
        let m = if names.len() <= crate::table::snapshot::MAX_PICKED_FIELDS { names.len() } else { 0 };
        let mut meta = SnapMeta { table: id, seq, rows: 0, indexes: indexes.clone() };
        let mut b = self.shared.store.build_file(FileKind::Snapshot, SNAPSHOT_STREAM_BASE + id, meta.encode())?;
        let mut count = 0u64;
        // Records of about RECORD_TARGET bytes, by the rows' real encoded size
        // (a single row larger than a record gets a record of its own).
        b.with_write_behind(|b| {
            let mut picked: Vec<Option<IKey>> = Vec::new();
            let mut size = 0usize;
            // A record whose values would take it past the frame limit (a
            // huge indexed string) is written without them: opening then
            // parses that file's rows, as it does a file written before.
            let record = |chunk: &[(Pk, Vec<u8>)], picked: &[Option<IKey>]| {
                let r = encode_rows(chunk, (m > 0).then_some((m, picked)));
                if r.len() > crate::format::frame::MAX_PAYLOAD { encode_rows(chunk, None) } else { r }
            };
            let mut chunk: Vec<(Pk, Vec<u8>)> = Vec::new();
            rows(&mut |k, v| {
                let doc = v.text().as_bytes().to_vec();
                let mut n = doc.len() + 32;
                let mut vals = Vec::new();
                if m > 0 {
                    vals = pick_fields(v, &names)
                        .map_err(|e| {
                            Error::Query(format!(
                                "snapshot of table {id}: the document of row {k} is not valid JSON: {e}"
                            ))
                        })?
                        .into_iter()
                        .map(|x| x.and_then(crate::table::index::ikey_owned))
                        .collect();
                    n += vals.iter().map(|x| if let Some(IKey::Str(s)) = x { 5 + s.len() } else { 9 }).sum::<usize>();
                }
                if !chunk.is_empty() && size + n > crate::table::snapshot::RECORD_TARGET {
                    b.append(&record(&chunk, &picked))?;
                    chunk.clear();
                    picked.clear();
                    size = 0;
                }
                picked.extend(vals);
                size += n;
                count += 1;
                chunk.push((k.clone(), doc));
                Ok(())
            })?;
            if !chunk.is_empty() || count == 0 {
                b.append(&record(&chunk, &picked))?;
            }
            Ok(())
        })?;
        meta.rows = count;
        b.set_meta(meta.encode())?;
        let pending = b.finish()?;
        let file_id = pending.file_id();
        self.shared.store.commit(crate::storage::store::Edit { add: vec![pending], ..Default::default() })?;
        let mut st = self.shared.state.write_locked();
        if let Some(t) = st.tables.get_mut(&id) {
            t.snapshots.push((seq, file_id));
            t.snapshots.sort_unstable();
            if t.snapshots.last().is_some_and(|(s, _)| *s == seq) {
                t.since_events = t.since_events.saturating_sub(counted.0);
                t.since_bytes = t.since_bytes.saturating_sub(counted.1);
            }
        }
        Ok(seq)
    }

    /// Snapshots of a table: sequence numbers, oldest first.
    pub fn snapshots(&self, table: &str) -> Result<Vec<u64>> {
        let st = self.state();
        let id = st.table(table)?.id;
        Ok(st.tables.get(&id).map(|t| t.snapshots.iter().map(|(s, _)| *s).collect()).unwrap_or_default())
    }
}

/// Rows to snapshot: calls its argument with each row, in key order.
pub(super) type RowSource<'a> = dyn FnMut(&mut dyn FnMut(&Pk, &Arc<Doc>) -> Result<()>) -> Result<()> + 'a;
