//! `COMPACT`: fold a table's history before a horizon into a snapshot, and
//! remove the folded documents from the sealed log segments.

use super::*;
use crate::sync::{Locked, RwLocked};

impl Db {
    /// What `COMPACT table BEFORE before` would fold: the horizon it would
    /// move to, and the table's events (inserts, patches, soft deletes) it
    /// would fold and keep. Nothing changes.
    pub fn compaction_preview(&self, table: &str, before: &AsOf) -> Result<CompactionPreview> {
        let st = self.state();
        let def = st.table(table)?;
        let t = st.tables.get(&def.id).ok_or_else(|| Error::NotFound(format!("table {table}")))?;
        let horizon = resolve(&st, before)?.max(t.horizon);
        let (fold, keep) = super::versions::count_versions(self.tree()?, t.shape(), def.id, horizon)?;
        Ok(CompactionPreview {
            horizon,
            current_horizon: t.horizon,
            events_folded: fold,
            events_kept: keep,
            latest_seq: st.latest_seq(),
        })
    }

    /// `COMPACT t [BEFORE ...]`: fold the table's history at or before the
    /// horizon (the end of the last commit at or before the point given) into
    /// a snapshot at the horizon. Afterwards a read before the horizon is an
    /// error; everything at or after it reads as before. The folded events'
    /// documents are removed from the sealed log segments (each rewritten
    /// under a fresh data key), and older snapshots of the table are deleted.
    /// Without `before`, the current horizon stays (all history is kept) and
    /// only the reclaiming is redone. Returns the horizon.
    ///
    /// Crash-safe: the horizon snapshot is written first, then the horizon is
    /// committed as an event; each segment rewrite is an atomic swap, and a
    /// later `COMPACT` finishes any rewrite a crash interrupted.
    pub fn compact(&self, table: &str, before: Option<&AsOf>) -> Result<u64> {
        let mut w = self.lock_writer();
        self.wait_snapshots();
        let (id, horizon, current) = {
            let st = self.state();
            let def = st.table(table)?;
            let current = st.tables.get(&def.id).map_or(0, |t| t.horizon);
            let horizon = match before {
                None => current,
                Some(a) => resolve(&st, a)?,
            };
            if let Some(oldest) = st.active.keys().next()
                && horizon > *oldest
            {
                return Err(Error::Query(format!(
                    "a transaction that reads the database as of @seq:{oldest} is open; COMPACT {table:?} cannot move the horizon past it (to @seq:{horizon}) until it ends"
                )));
            }
            (def.id, horizon, current)
        };
        if horizon > current {
            // The snapshot at the horizon, streamed from the tree as of it.
            let source = {
                let st = self.state();
                let t = st.tables.get(&id).ok_or_else(|| Error::NotFound(format!("table {table}")))?;
                (!t.snapshots.iter().any(|(s, _)| *s == horizon))
                    .then(|| Ok::<_, Error>((t.alters.clone(), t.folded_at, self.tree()?.view())))
                    .transpose()?
            };
            if let Some((alters, folded_at, view)) = source {
                let shape = super::versions::Shape { alters: &alters, folded_at };
                self.write_snapshot(
                    id,
                    horizon,
                    &mut |f| super::versions::for_each_row_at(&view, shape, id, horizon, |k, d| f(&k, &d)),
                    (u64::MAX, u64::MAX),
                )?;
            }
            let baseline = {
                let st = self.state();
                let t = st.tables.get(&id).ok_or_else(|| Error::NotFound(format!("table {table}")))?;
                self.rows_at(id, t, horizon)?
            };
            self.commit_locked(
                &mut w,
                vec![Event {
                    op: Op::Compact,
                    table: id,
                    key: None,
                    doc: Some(Arc::new(Doc::from_value(serde_json::json!({ "horizon": horizon })))),
                    patch: None,
                }],
            )?;
            let mut st = self.shared.state.write_locked();
            st.drop_snapshots_before(id, horizon);
            if let (Some(tree), Some(t)) = (&self.shared.versions, st.tables.get_mut(&id)) {
                super::versions::fold(tree, t, id, horizon, &baseline);
            }
        }
        let horizon = horizon.max(current);
        if horizon == 0 {
            return Ok(0);
        }
        // Every commit into sealed segments first, so that all of them can
        // be rewritten.
        self.checkpoint(&mut w)?;
        self.shared.store.seal_stream(EVENTS_STREAM)?;
        self.reclaim(id, horizon)?;
        // The log is durable (checkpointed above): the versions the fold
        // hides leave the version tree's runs.
        if let Some(tree) = &self.shared.versions {
            super::versions::reclaim(tree, &self.shared.store, id, horizon)?;
        }
        Ok(horizon)
    }

    /// Remove the documents of table `id`'s events at or before `horizon` from the
    /// sealed log segments, and its snapshots older than `horizon`.
    pub(super) fn reclaim(&self, id: u32, horizon: u64) -> Result<()> {
        let _rewriting = self.shared.rewriting.locked();
        let active: Vec<u64> = self
            .shared
            .store
            .stream_files(EVENTS_STREAM)
            .into_iter()
            .filter(|f| !matches!(f.state, crate::format::keyring::FileState::Sealed { .. }))
            .map(|f| f.file_id)
            .collect();
        for f in self.shared.store.stream_files(EVENTS_STREAM) {
            if active.contains(&f.file_id) {
                continue;
            }
            // (A file whose start is not known is read.)
            let starts_before = self.state().segment_starts.get(&f.file_id).is_none_or(|first| *first <= horizon);
            if !starts_before {
                continue;
            }
            let rewritten = self.shared.store.rewrite_file(f.file_id, |rec| {
                let mut c = Commit::decode(rec).map_err(|e| Error::corrupted(&f.name, 0, e.reason))?;
                let mut changed = false;
                for (i, e) in c.events.iter_mut().enumerate() {
                    let seq = c.first_seq + i as u64;
                    if e.table == id && seq <= horizon && matches!(e.op, Op::Insert | Op::Patch | Op::SoftDelete) {
                        *e = Event { op: Op::Folded, table: id, key: None, doc: None, patch: None };
                        changed = true;
                    }
                }
                Ok(changed.then(|| c.encode()))
            })?;
            if let Some(new) = rewritten.and_then(|p| p.first().map(|p| p.file_id)) {
                self.state_mut().remap_segment(f.file_id, new);
            }
        }
        let old: Vec<u64> = self
            .shared
            .store
            .files()
            .into_iter()
            .filter(|f| f.stream == SNAPSHOT_STREAM_BASE + id)
            .filter(|f| SnapMeta::decode(&f.meta).is_ok_and(|m| m.seq < horizon))
            .map(|f| f.file_id)
            .collect();
        if !old.is_empty() {
            self.shared.store.commit(crate::storage::store::Edit { remove: old, ..Default::default() })?;
        }
        Ok(())
    }
}
