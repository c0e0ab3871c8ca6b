//! Checkpoints: the write-ahead log's commits copied into the event segments.

use super::*;

impl Db {
    /// Copy the commits only in the WAL into the segments, sync them, and
    /// delete the WAL files (writer lock held). Crash-safe at every step: the
    /// WAL files go only after the segments holding their commits are synced,
    /// and opening skips WAL commits the segments already hold.
    /// The indexes the schema changes of `commit` (about to apply) will
    /// build, built now from the current rows under the read lock (the
    /// caller, the group-commit leader, keeps every other writer out).
    pub(super) fn prebuild_indexes(&self, commit: &Commit) -> Vec<Prebuilt> {
        let st = self.read();
        let mut out = Vec::new();
        // Indexed columns per table as the commit's earlier changes leave them.
        let mut indexed: FastMap<u32, Vec<String>> = FastMap::default();
        for (i, e) in commit.events.iter().enumerate() {
            if e.op != Op::Alter {
                continue;
            }
            let Some(Ok(alter)) = e.doc.as_ref().map(|d| serde_json::from_value::<Alter>(d.to_value())) else {
                continue;
            };
            let Some(t) = st.tables.get(&e.table) else { continue };
            let cols = indexed.entry(e.table).or_insert_with(|| t.indexes.keys().cloned().collect());
            let column = match &alter {
                Alter::CreateIndex { column } => {
                    cols.push(column.clone());
                    column
                }
                Alter::AddColumn { column, default: Some(_) } if cols.contains(column) => column,
                Alter::RenameColumn { column, to } => {
                    if !cols.contains(column) {
                        continue;
                    }
                    cols.iter_mut().filter(|c| *c == column).for_each(|c| *c = to.clone());
                    to
                }
                Alter::DropColumn { column } | Alter::DropIndex { column } => {
                    cols.retain(|c| c != column);
                    continue;
                }
                Alter::AddColumn { .. } => continue,
            };
            // The commit's changes before this one: rows it writes are
            // indexed as the change applies; its schema changes apply here.
            let before = &commit.events[..i];
            let skip: FastSet<&Pk> =
                before.iter().filter(|x| x.table == e.table).filter_map(|x| x.key.as_ref()).collect();
            let alters: Vec<(u64, Alter)> = before
                .iter()
                .enumerate()
                .filter(|(_, x)| x.table == e.table && x.op == Op::Alter)
                .filter_map(|(j, x)| {
                    Some((commit.first_seq + j as u64, serde_json::from_value(x.doc.as_ref()?.to_value()).ok()?))
                })
                .chain(std::iter::once((commit.first_seq + i as u64, alter.clone())))
                .collect();
            let index = Index::from_pairs(t.rows.iter().filter(|(k, _)| !skip.contains(k)).map(|(k, d)| {
                let mut v = t.view_value(d, u64::MAX);
                apply_between(&alters, 0, u64::MAX, &mut v);
                (v.get(column.as_str()).cloned(), k.clone())
            }));
            out.push(Prebuilt {
                table: e.table,
                seq: commit.first_seq + i as u64,
                column: column.clone(),
                index,
                skip: skip.into_iter().cloned().collect(),
            });
        }
        out
    }

    pub(super) fn checkpoint(&self, w: &mut WriterState) -> Result<()> {
        let wal_files = self.s.store.stream_files(WAL_STREAM);
        if wal_files.is_empty() && w.pending.is_empty() {
            return Ok(());
        }
        let r = self.checkpoint_steps(w);
        if let Err(e) = &r {
            // A retry in this session would copy commits the segments may
            // already hold: refuse writes instead; the next open checkpoints
            // from what the disk holds.
            self.s.store.poison_with(e);
        }
        r
    }

    pub(super) fn checkpoint_steps(&self, w: &mut WriterState) -> Result<()> {
        // Seal (and sync) the WAL's current file: every WAL file is then
        // fully covered by what is copied below.
        self.s.store.seal_stream(WAL_STREAM)?;
        let mut moved = Vec::with_capacity(w.pending.len());
        for (ci, rec) in &w.pending {
            moved.push((*ci, self.s.store.append(EVENTS_STREAM, FileKind::Segment, rec)?));
        }
        self.s.store.sync_stream(EVENTS_STREAM)?;
        {
            let mut st = self.write_state();
            for (ci, pos) in moved {
                if let Some(c) = st.commits.get_mut(ci as usize) {
                    c.pos = pos;
                }
            }
        }
        let remove: Vec<u64> = self.s.store.stream_files(WAL_STREAM).iter().map(|f| f.file_id).collect();
        w.pending.clear();
        w.pending_bytes = 0;
        self.s.store.commit(Edit { remove, ..Default::default() })
    }
}
