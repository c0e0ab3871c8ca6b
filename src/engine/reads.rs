//! Reads: point gets, scans and queries, now and `AS OF` any past commit,
//! and a row's history.

use super::*;
use crate::sync::Locked;

/// What a read of the past needs: the snapshot to start from and the commits after it.
pub(super) struct ReplayPlan {
    pub(super) table: u32,
    /// The snapshot to start from: (sequence number, file id).
    pub(super) snapshot: Option<(u64, u64)>,
    pub(super) commits: Vec<(u32, CommitMeta)>,
    /// The point read.
    pub(super) seq: u64,
    /// The table's schema changes up to `seq` (documents read through them).
    pub(super) alters: Vec<(u64, Alter)>,
}

pub(super) fn replay_plan(st: &State, id: u32, t: &TableData, seq: u64) -> ReplayPlan {
    let si = t.snapshots.partition_point(|(s, _)| *s <= seq);
    let (snapshot, from) = match si.checked_sub(1).map(|i| t.snapshots[i]) {
        Some((s, file)) => (Some((s, file)), s),
        None => (None, 0),
    };
    let alters = t.alters.iter().take_while(|(s, _)| *s <= seq).cloned().collect();
    let start = st.commits.partition_point(|c| c.first_seq <= from);
    let commits = st.commits[start..]
        .iter()
        .enumerate()
        .take_while(|(_, c)| c.first_seq <= seq)
        .map(|(i, c)| ((start + i) as u32, *c))
        .collect();
    ReplayPlan { table: id, snapshot, commits, seq, alters }
}

/// The sequence number an `AS OF` names: the end of the last commit at or
/// before it. Beyond the latest sequence, in the future, or before the first
/// commit is an error, never "now".
pub(super) fn resolve(st: &State, a: &AsOf) -> Result<u64> {
    let latest = st.latest_seq();
    match a {
        AsOf::Now => Ok(latest),
        AsOf::Seq(n) if *n > latest => {
            Err(Error::Query(format!("AS OF @seq:{n} is beyond the latest sequence number ({latest})")))
        }
        // A commit is atomic in history too: a sequence number inside a
        // commit reads the state before that commit.
        AsOf::Seq(n) => {
            let k = st.commits.partition_point(|c| c.first_seq + u64::from(c.len) - 1 <= *n);
            Ok(if k == 0 { 0 } else { st.commits[k - 1].first_seq + u64::from(st.commits[k - 1].len) - 1 })
        }
        AsOf::Time(text, t) => {
            if *t > now_micros().max(st.last_time) {
                return Err(Error::Query(format!("AS OF {text:?} is in the future")));
            }
            // Commit times never decrease: binary search, no scan.
            let n = st.commits.partition_point(|c| c.time <= *t);
            if n == 0 {
                return Err(Error::Query(format!("AS OF {text:?} is before the first commit")));
            }
            let c = st.commits[n - 1];
            Ok(c.first_seq + u64::from(c.len) - 1)
        }
    }
}

pub(super) fn table_at<'a>(st: &'a State, table: &str, seq: u64) -> Result<&'a TableDef> {
    let def = st.table(table)?;
    if let Some(t) = st.tables.get(&def.id)
        && seq < t.horizon
    {
        return Err(Error::Query(format!(
            "history of table {table:?} before @seq:{} was compacted; @seq:{seq} can no longer be read",
            t.horizon
        )));
    }
    if def.created_seq > seq {
        return Err(Error::Query(format!(
            "table {table:?} did not exist at @seq:{seq} (created at @seq:{})",
            def.created_seq
        )));
    }
    Ok(def)
}

impl Db {
    /// The current document of a row.
    pub fn get(&self, table: &str, key: &Pk) -> Result<Option<Value>> {
        let st = self.state();
        let def = st.table(table)?;
        let Some(t) = st.tables.get(&def.id) else { return Ok(None) };
        Ok(t.rows.get(key).map(|d| t.view_value(d, u64::MAX)))
    }

    /// The document of a row as of sequence number `seq`.
    pub fn get_as_of(&self, table: &str, key: &Pk, seq: u64) -> Result<Option<Value>> {
        let st = self.state();
        let seq = resolve(&st, &AsOf::Seq(seq))?;
        let def = table_at(&st, table, seq)?;
        let Some(t) = st.tables.get(&def.id) else { return Ok(None) };
        let Some(h) = t.history.get(key) else { return Ok(None) };
        if let Some(e) = h.last().filter(|e| e.seq <= seq && !e.folded) {
            // Unchanged since: the current row is the answer, unless it was
            // read from a snapshot taken after `seq` and a schema change
            // between its write and that snapshot shaped it.
            let d = t.rows.get(key);
            if d.is_none_or(|d| d.seq() <= seq || !any_between(&t.alters, e.seq, d.seq())) {
                return Ok(d.map(|d| t.view_value(d, seq)));
            }
        }
        self.doc_at(&st, def.id, key, h, seq)
    }

    pub(super) fn doc_at(&self, st: &State, id: u32, key: &Pk, h: &[EventRef], seq: u64) -> Result<Option<Value>> {
        let n = h.partition_point(|e| e.seq <= seq);
        if n == 0 {
            return Ok(None);
        }
        let e = h[n - 1];
        if e.op == Op::SoftDelete {
            return Ok(None);
        }
        let Some(t) = st.tables.get(&id) else { return Ok(None) };
        if e.folded {
            return Ok(self.baseline(st, id)?.get(key).map(|d| t.view_value(d, seq)));
        }
        let mut doc = self.event(st, e)?.doc.map(|d| d.to_value());
        if let Some(v) = &mut doc {
            apply_between(&t.alters, e.seq, seq, v);
        }
        Ok(doc)
    }

    /// The rows of table `id` at its compaction horizon.
    pub(super) fn baseline(&self, st: &State, id: u32) -> Result<Arc<Rows>> {
        let t = st.tables.get(&id).ok_or_else(|| Error::NotFound(format!("table {id}")))?;
        if let Some((h, rows)) = self.shared.baselines.locked().get(&id)
            && *h == t.horizon
        {
            return Ok(rows.clone());
        }
        let file = t
            .snapshots
            .iter()
            .find(|(s, _)| *s == t.horizon)
            .map(|(_, f)| *f)
            .ok_or_else(|| Error::NotFound(format!("snapshot at the horizon of table {id}")))?;
        let rows = Arc::new(load_snapshot(&self.shared.store, file, t.horizon)?);
        self.shared.baselines.locked().insert(id, (t.horizon, rows.clone()));
        Ok(rows)
    }

    /// A decoded commit, from the cache or from disk (no state lock needed).
    pub(super) fn load_commit_meta(&self, ci: u32, meta: CommitMeta) -> Result<Arc<Commit>> {
        if let Some((c, _)) = self.shared.cache.locked().map.get(&ci) {
            return Ok(c.clone());
        }
        let rec = self.shared.store.read_record(meta.pos)?;
        let name = crate::format::file_name(meta.pos.file_id, FileKind::Segment);
        let c = Commit::decode(&rec).map_err(|e| Error::corrupted(&name, meta.pos.offset, e.reason))?;
        if c.first_seq != meta.first_seq || c.events.len() as u32 != meta.len {
            return Err(Error::tampered(&name, meta.pos.offset, "commit record changed since it was read"));
        }
        let c = Arc::new(c);
        let mut cache = self.shared.cache.locked();
        while cache.bytes + rec.len() > CACHE_BYTES {
            let Some(k) = cache.map.keys().next().copied() else { break };
            if let Some((_, n)) = cache.map.remove(&k) {
                cache.bytes -= n;
            }
        }
        cache.bytes += rec.len();
        if let Some((_, old)) = cache.map.insert(ci, (c.clone(), rec.len())) {
            cache.bytes -= old;
        }
        Ok(c)
    }

    pub(super) fn read_commit_record(&self, st: &State, ci: u32) -> Result<(Vec<u8>, CommitMeta, String)> {
        let meta = *st.commits.get(ci as usize).ok_or_else(|| Error::NotFound(format!("commit {ci}")))?;
        let rec = self.shared.store.read_record(meta.pos)?;
        Ok((rec, meta, crate::format::file_name(meta.pos.file_id, FileKind::Segment)))
    }

    /// One event: from the cache, or by decoding just that event of its commit.
    pub(super) fn event(&self, st: &State, h: EventRef) -> Result<Event> {
        if let Some((c, _)) = self.shared.cache.locked().map.get(&h.commit) {
            return c.events.get(h.idx as usize).cloned().ok_or_else(|| Error::NotFound(format!("event {}", h.seq)));
        }
        let (rec, meta, name) = self.read_commit_record(st, h.commit)?;
        let (first, n, e) =
            Commit::decode_one(&rec, h.idx as usize).map_err(|e| Error::corrupted(&name, meta.pos.offset, e.reason))?;
        if first != meta.first_seq || n as u32 != meta.len {
            return Err(Error::tampered(&name, meta.pos.offset, "commit record changed since it was read"));
        }
        Ok(e)
    }

    /// A row's whole history, oldest first.
    pub fn history(&self, table: &str, key: &Pk) -> Result<Vec<HistoryEntry>> {
        let st = self.state();
        let def = st.table(table)?;
        let Some(h) = st.tables.get(&def.id).and_then(|t| t.history.get(key)) else {
            return Err(Error::NotFound(format!("no row with key {key} in table {table:?}, now or ever")));
        };
        let mut out = Vec::with_capacity(h.len());
        for e in h.iter() {
            let (op, doc) = if e.folded {
                ("COMPACTED", self.baseline(&st, def.id)?.get(key).map(|d| d.to_value()).unwrap_or(Value::Null))
            } else {
                (e.op.name(), self.event(&st, *e)?.doc.map_or(Value::Null, |d| d.to_value()))
            };
            let time = st.commits.get(e.commit as usize).map(|c| c.time).unwrap_or(0);
            out.push(HistoryEntry { seq: e.seq, time: format_rfc3339(time), op, doc });
        }
        Ok(out)
    }

    /// Every table, in name order.
    pub fn tables(&self) -> Vec<TableDef> {
        let st = self.state();
        st.names.values().filter_map(|id| st.defs.get(id).cloned()).collect()
    }

    /// A table's definition.
    pub fn describe(&self, table: &str) -> Result<TableDef> {
        self.state().table(table).cloned()
    }

    /// A table's definition as of a point in history (columns, indexes).
    pub fn describe_at(&self, table: &str, as_of: &AsOf) -> Result<TableDef> {
        let st = self.state();
        let seq = resolve(&st, as_of)?;
        let def = table_at(&st, table, seq)?;
        let mut d = st.tables.get(&def.id).and_then(|t| t.def_at(seq)).unwrap_or(def).clone();
        d.id = def.id;
        d.created_seq = def.created_seq;
        Ok(d)
    }

    /// The documents of a table at a point in history (or now), in key order.
    ///
    /// A read of the past plans its replay under the state lock and reads
    /// the files without it, so writers are not held up by long reads.
    pub fn scan(&self, table: &str, as_of: Option<&AsOf>) -> Result<Vec<Arc<Doc>>> {
        for attempt in 0..8 {
            let plan = {
                let st = self.state();
                let latest = st.latest_seq();
                let seq = match as_of {
                    None => latest,
                    Some(a) => resolve(&st, a)?,
                };
                let def = table_at(&st, table, seq)?;
                let Some(t) = st.tables.get(&def.id) else { return Ok(Vec::new()) };
                if seq == latest {
                    return Ok(t.rows.values().map(|d| t.view(d, u64::MAX)).collect());
                }
                replay_plan(&st, def.id, t, seq)
            };
            match self.replay(plan) {
                // A concurrent compaction may have replaced a file the plan named: plan again.
                Err(Error::NotFound(_)) if attempt < 7 => continue,
                r => return Ok(r?.into_values().collect()),
            }
        }
        Err(Error::NotFound(format!("table {table:?} kept changing under the read")))
    }

    /// A table's rows at `seq` (a commit boundary): its nearest snapshot at
    /// or before `seq`, then the log's commits after it, up to `seq`.
    pub(super) fn rows_at(&self, st: &State, id: u32, t: &TableData, seq: u64) -> Result<Rows> {
        self.replay(replay_plan(st, id, t, seq))
    }

    /// Carry out a replay plan; needs no lock on the state.
    pub(super) fn replay(&self, plan: ReplayPlan) -> Result<Rows> {
        let id = plan.table;
        let mut rows = match plan.snapshot {
            Some((seq, file)) => load_snapshot(&self.shared.store, file, seq)?,
            None => BTreeMap::new(),
        };
        for (ci, meta) in plan.commits {
            let c = self.load_commit_meta(ci, meta)?;
            for (i, e) in c.events.iter().enumerate().filter(|(_, e)| e.table == id) {
                let seq = c.first_seq + i as u64;
                if seq > plan.seq {
                    break;
                }
                let Some(k) = &e.key else { continue };
                match e.op {
                    Op::Insert | Op::Patch => {
                        let d = Doc::from_value(e.doc.as_ref().map_or(Value::Null, |d| d.to_value())).at(seq);
                        rows.insert(k.clone(), Arc::new(d));
                    }
                    Op::SoftDelete => {
                        rows.remove(k);
                    }
                    Op::CreateTable | Op::Compact | Op::Folded | Op::Alter => {}
                }
            }
        }
        if plan.alters.iter().any(|(_, a)| a.changes_documents()) {
            for d in rows.values_mut() {
                if any_between(&plan.alters, d.seq(), plan.seq) {
                    let mut v = d.to_value();
                    apply_between(&plan.alters, d.seq(), plan.seq, &mut v);
                    *d = Arc::new(Doc::from_value(v));
                }
            }
        }
        Ok(rows)
    }

    /// Run a `SELECT`. A current read whose `WHERE` has an `=`, `IN` or
    /// range predicate on an indexed field reads only the candidate rows.
    pub fn select(&self, sel: &Select) -> Result<Vec<Value>> {
        {
            let st = self.state();
            let current = match &sel.as_of {
                None => true,
                Some(a) => resolve(&st, a)? == st.latest_seq(),
            };
            if current {
                let id = st.table(&sel.table)?.id;
                return self.select_current(&st, id, sel);
            }
        }
        self.select_full_scan(sel)
    }

    /// A `SELECT` over the current rows of table `id`, through an index when one applies.
    pub(crate) fn select_current(&self, st: &State, id: u32, sel: &Select) -> Result<Vec<Value>> {
        let Some(t) = st.tables.get(&id) else { return crate::query::eval::run_select(sel, std::iter::empty()) };
        if let Some(f) = &sel.filter
            && let Some(keys) = crate::query::plan::plan(f, &t.indexes)
        {
            let docs: Vec<Arc<Doc>> = keys.iter().filter_map(|k| t.rows.get(k)).map(|d| t.view(d, u64::MAX)).collect();
            return crate::query::eval::run_select(sel, docs.into_iter());
        }
        crate::query::eval::run_select(sel, t.rows.values().map(|d| t.view(d, u64::MAX)))
    }

    /// The sequence number an `AS OF` names now.
    pub(crate) fn resolve_as_of(&self, a: &AsOf) -> Result<u64> {
        resolve(&self.state(), a)
    }

    /// A row as of `seq`, for a transaction registered at `seq` or earlier:
    /// the current document unless the row changed after `seq`.
    pub(crate) fn doc_at_snapshot(&self, st: &State, id: u32, key: &Pk, seq: u64) -> Result<Option<Value>> {
        let Some(t) = st.tables.get(&id) else { return Ok(None) };
        let Some(h) = t.history.get(key) else { return Ok(None) };
        if h.last().is_none_or(|e| e.seq <= seq) {
            return Ok(t.rows.get(key).map(|d| t.view_value(d, seq)));
        }
        // The oldest change after the snapshot holds the row as it was.
        let from = st.changes.partition_point(|c| c.seq <= seq);
        if let Some(c) = st.changes.range(from..).find(|c| c.table == id && &c.key == key) {
            return Ok(c.old.as_ref().map(|d| t.view_value(d, seq)));
        }
        self.doc_at(st, id, key, h, seq)
    }

    /// Table `id`'s rows as of `seq`, for a transaction registered at `seq`
    /// or earlier: the current rows with the later changes undone.
    pub(crate) fn rows_at_snapshot(&self, st: &State, id: u32, seq: u64) -> Result<Rows> {
        let Some(t) = st.tables.get(&id) else { return Ok(BTreeMap::new()) };
        let mut rows = t.rows.clone();
        let from = st.changes.partition_point(|c| c.seq <= seq);
        for c in st.changes.range(from..).rev().filter(|c| c.table == id) {
            match &c.old {
                Some(d) => rows.insert(c.key.clone(), d.clone()),
                None => rows.remove(&c.key),
            };
        }
        if !t.alters.is_empty() {
            for d in rows.values_mut() {
                *d = t.view(d, seq);
            }
        }
        Ok(rows)
    }

    /// Run a `SELECT` without using any index (for checking index answers).
    #[doc(hidden)]
    pub fn select_full_scan(&self, sel: &Select) -> Result<Vec<Value>> {
        let docs = self.scan(&sel.table, sel.as_of.as_ref())?;
        crate::query::eval::run_select(sel, docs.into_iter())
    }
}
