//! The in-memory state: the catalog, schemas, counters and secondary
//! indexes of every table (its rows and their history are in the version
//! tree), and how a commit's events are applied to it.

use super::*;

#[derive(Default)]
pub(crate) struct TableData {
    /// Live rows (current rows themselves are in the version tree).
    pub(crate) live: u64,
    /// Secondary indexes, by field: the id of each (the event that built
    /// it; its entries in the version tree are under that id).
    pub(crate) indexes: BTreeMap<String, crate::table::version::IndexId>,
    /// Snapshots: (sequence number, file id), oldest first.
    pub(super) snapshots: Vec<(u64, u64)>,
    /// Events and bytes since the latest snapshot.
    pub(super) since_events: u64,
    pub(super) since_bytes: u64,
    /// History at or before this sequence number was folded by `COMPACT` (0: none).
    pub(super) horizon: u64,
    /// The version tree holds this table's rows folded at this horizon
    /// (0: none): its versions at or before it, except the folded ones,
    /// are not read (see `versions.rs`).
    pub(super) folded_at: u64,
    /// Schema changes, in order: (sequence number, change).
    pub(crate) alters: Vec<(u64, Alter)>,
    /// The definition after its creation and after each schema change:
    /// (sequence number, definition), in order.
    pub(super) schema: Vec<(u64, TableDef)>,
}

impl TableData {
    /// Whether `d` reads differently at `at` (a schema change after it).
    pub(super) fn stale(&self, d: &Doc, at: u64) -> bool {
        stale_in(&self.alters, d, at)
    }

    /// A document as read at `at` (`u64::MAX`: now), as a new value.
    pub(crate) fn view_value(&self, d: &Doc, at: u64) -> Value {
        view_value_in(&self.alters, d, at)
    }

    /// A top-level field of a current document, as read now.
    pub(super) fn view_field(&self, d: &Doc, f: &str) -> Option<Value> {
        if self.stale(d, u64::MAX) { self.view_value(d, u64::MAX).get(f).cloned() } else { d.field(f) }
    }

    /// The definition as of `seq`.
    pub(crate) fn def_at(&self, seq: u64) -> Option<&TableDef> {
        let n = self.schema.partition_point(|(s, _)| *s <= seq);
        self.schema.get(n.checked_sub(1)?).map(|(_, d)| d)
    }

    /// Sequence number of the latest schema change (0: none).
    pub(crate) fn altered_at(&self) -> u64 {
        self.alters.last().map_or(0, |(s, _)| *s)
    }

    /// The entries of the index on field `f` a schema change at `seq`
    /// builds (index id `(seq, 0)`): one for each row as of `seq` (read
    /// from `view`) that holds an indexable value, read as of now.
    pub(super) fn build_index(
        &self,
        view: &crate::storage::tree::TreeView,
        id: u32,
        f: &str,
        seq: u64,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        super::versions::for_each_row_at(view, self.shape(), id, seq, |k, d| {
            if let Some(ik) = self.view_field(&d, f).and_then(crate::table::index::ikey_owned) {
                out.push(super::versions::index_entry(id, (seq, 0), &ik, &k, seq, true));
            }
            Ok(())
        })?;
        Ok(out)
    }
}

/// Whether `d` reads differently at `at` under the schema changes `alters`.
pub(super) fn stale_in(alters: &[(u64, Alter)], d: &Doc, at: u64) -> bool {
    !alters.is_empty() && d.seq() != u64::MAX && any_between(alters, d.seq(), at)
}

/// A document as read at `at` under the schema changes `alters`, as a new value.
pub(super) fn view_value_in(alters: &[(u64, Alter)], d: &Doc, at: u64) -> Value {
    let mut v = d.to_value();
    if stale_in(alters, d, at) {
        apply_between(alters, d.seq(), at, &mut v);
    }
    v
}

/// The index entries that move row `key` of table `table` from its old
/// document to its new one at `seq` (none for an index whose value stays).
/// Each document's indexed fields are picked in one pass over its text; an
/// old row written before a schema change is unindexed as it read (parsed
/// once, only then).
#[allow(clippy::too_many_arguments)]
pub(super) fn reindex(
    out: &mut Vec<(Vec<u8>, Vec<u8>)>,
    table: u32,
    indexes: &BTreeMap<String, crate::table::version::IndexId>,
    alters: &[(u64, Alter)],
    key: &Pk,
    seq: u64,
    old: Option<&Arc<Doc>>,
    new: Option<&Arc<Doc>>,
    picks: Option<Picks>,
) {
    if indexes.is_empty() {
        return;
    }
    let names: Vec<&str> = indexes.keys().map(String::as_str).collect();
    let old_vals: Vec<Option<Value>> = match old {
        Some(o) if stale_in(alters, o, u64::MAX) => {
            let v = view_value_in(alters, o, u64::MAX);
            names.iter().map(|f| v.get(*f).cloned()).collect()
        }
        Some(o) => o.fields(&names),
        None => Vec::new(),
    };
    let new_vals: Vec<Option<Value>> = match new {
        None => Vec::new(),
        Some(n) => picks.and_then(|p| p.take(&names)).unwrap_or_else(|| n.fields(&names)),
    };
    for (i, ix) in indexes.values().enumerate() {
        let o = old_vals.get(i).and_then(Option::as_ref).and_then(crate::table::index::ikey);
        let n = new_vals.get(i).and_then(Option::as_ref).and_then(crate::table::index::ikey);
        // Compared as the index keys them (long strings by their first bytes).
        let same = match (&o, &n) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a == b || crate::table::version::encode_index_value(a) == crate::table::version::encode_index_value(b)
            }
            _ => false,
        };
        if same {
            continue;
        }
        if let Some(o) = o {
            out.push(super::versions::index_entry(table, *ix, &o, key, seq, false));
        }
        if let Some(n) = n {
            out.push(super::versions::index_entry(table, *ix, &n, key, seq, true));
        }
    }
}

/// A row change, kept while a transaction that began before it is open.
pub(crate) struct Change {
    pub(crate) seq: u64,
    pub(crate) table: u32,
    pub(crate) old: Option<Arc<Doc>>,
    pub(crate) new: Option<Arc<Doc>>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(super) names: BTreeMap<String, u32>,
    pub(crate) defs: FastMap<u32, TableDef>,
    pub(crate) tables: FastMap<u32, TableData>,
    pub(crate) next_seq: u64,
    pub(crate) last_time: i64,
    /// The first sequence number of each log segment file (by file id):
    /// which files a `COMPACT` must rewrite.
    pub(super) segment_starts: BTreeMap<u64, u64>,
    /// The number of the last catalog checkpoint put into the tree (or
    /// restored from it).
    pub(super) catalog_gen: u32,
    /// What the last catalog checkpoint said of the sequence number and the
    /// segments (one that would say the same is not written).
    pub(super) catalog_last: Option<(u64, BTreeMap<u64, u64>)>,
    /// While opening: the last sequence number of the newest commit the
    /// tree holds an entry of (the commits after it get theirs as the
    /// log is replayed).
    pub(super) commits_from: u64,
    pub(crate) next_table_id: u32,
    /// Snapshots of the open `Snapshot`/`Serializable` transactions (count each).
    pub(super) active: BTreeMap<u64, usize>,
    /// Row changes after the oldest open transaction's snapshot, in order.
    pub(crate) changes: VecDeque<Change>,
    /// Indexes built for a commit's schema changes before it applies
    /// (without the write lock): see [`Db::prebuild_indexes`].
    pub(super) prebuilt: Vec<Prebuilt>,
    /// While the database is being opened (and only then): what the replay
    /// of the log gathers for the rows and histories built at its end. No
    /// index is maintained meanwhile.
    pub(super) opening: Option<Opening>,
    /// The version tree the applied commits' row versions go into.
    pub(super) versions: Option<Arc<crate::storage::tree::Tree>>,
    /// While opening: versions up to this sequence number are in the
    /// tree's runs already (not replayed into it).
    pub(super) versions_from: u64,
    /// While opening: index entries up to this sequence number are in the
    /// tree's runs already (at most `versions_from`).
    pub(super) index_from: u64,
    /// Set when the tree's memtable is due to be flushed.
    pub(super) versions_due: bool,
    /// The versions of the commit being applied.
    pub(super) version_batch: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What opening gathers while it replays the log (see [`Db::open`]).
#[derive(Default)]
pub(super) struct Opening {
    /// Row events of table `t` up to this sequence number are counted in
    /// its latest snapshot: replay skips them (but for the version tree).
    pub(super) rows_from: FastMap<u32, u64>,
}

/// An event of the (authenticated) log that does not make sense: written by
/// a bug, never by input.
fn log_error(seq: u64, msg: impl std::fmt::Display) -> Error {
    Error::Internal(format!("the event at @seq:{seq}: {msg}"))
}

/// An index built ahead of the schema change at `seq` that needs it, from
/// the rows as they were before its commit, except the rows its commit
/// writes before the change (`skip`: added as the change applies).
pub(crate) struct Prebuilt {
    pub(super) table: u32,
    pub(super) seq: u64,
    pub(super) column: String,
    /// The index's entries for the rows before the commit, but `skip`.
    pub(super) entries: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) skip: Vec<Pk>,
}

impl State {
    /// Segment file `old` was rewritten as `new` (same records).
    pub(super) fn remap_segment(&mut self, old: u64, new: u64) {
        if let Some(first) = self.segment_starts.remove(&old) {
            self.segment_starts.insert(new, first);
        }
    }

    /// The version tree.
    pub(crate) fn tree(&self) -> Result<&Arc<crate::storage::tree::Tree>> {
        self.versions.as_ref().ok_or_else(|| Error::Internal("the database has no version tree".into()))
    }

    /// Row `k`'s current document, from the version tree (as written: read
    /// it through later schema changes with [`TableData::view`]). While a
    /// commit applies, its versions are in the tree only once
    /// [`State::put_version_batch`] put them there.
    pub(crate) fn current(&self, id: u32, k: &Pk) -> Result<Option<Arc<Doc>>> {
        let Some(t) = self.tables.get(&id) else { return Ok(None) };
        super::versions::current(self.tree()?, t.shape(), id, k)
    }

    /// Row `k`'s current document as read now (parsed strictly: a
    /// document that does not parse is an error).
    pub(crate) fn current_value(&self, id: u32, k: &Pk) -> Result<Option<Value>> {
        let Some(t) = self.tables.get(&id) else { return Ok(None) };
        match super::versions::version_at(self.tree()?, t.shape(), id, k, u64::MAX)? {
            Some(f) if f.op.is_live() => f.value_at(t.shape(), u64::MAX),
            _ => Ok(None),
        }
    }

    /// Put the versions of the commit being applied into the tree (before
    /// a read of the rows it wrote).
    pub(super) fn put_version_batch(&mut self) {
        if !self.version_batch.is_empty()
            && let Some(tree) = &self.versions
            && tree.insert(std::mem::take(&mut self.version_batch))
        {
            self.versions_due = true;
        }
    }

    /// The sequence number of row `k`'s newest version (live or not), from
    /// the version tree. A read that fails answers `u64::MAX` ("changed
    /// now"), so that a validation it serves fails safe, as a conflict.
    pub(super) fn newest_seq(&self, id: u32, k: &Pk) -> Option<u64> {
        let t = self.tables.get(&id)?;
        let tree = self.versions.as_ref()?;
        super::versions::newest_seq(tree, t.shape(), id, k).unwrap_or(Some(u64::MAX))
    }

    pub(crate) fn table(&self, name: &str) -> Result<&TableDef> {
        self.names
            .get(name)
            .and_then(|id| self.defs.get(id))
            .ok_or_else(|| Error::Query(format!("unknown table {name:?}")))
    }

    pub(crate) fn latest_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Whether table `id` is due for an automatic snapshot: after
    /// `snapshot_every_events` of its events (or `snapshot_every_bytes` of
    /// them), but not before as many events as it had rows at its last
    /// snapshot, so that the cost of snapshots stays linear in the events.
    pub(super) fn snapshot_due(&self, id: u32, opts: &Options) -> bool {
        let Some(t) = self.tables.get(&id) else { return false };
        policy::snapshot_due(
            t.live,
            t.since_events,
            t.since_bytes,
            opts.snapshot_every_events,
            opts.snapshot_every_bytes,
        )
    }

    /// Forget the changes no open transaction can need.
    pub(super) fn prune_changes(&mut self) {
        match self.active.keys().next().copied() {
            None => self.changes.clear(),
            Some(min) => {
                while self.changes.front().is_some_and(|c| c.seq <= min) {
                    self.changes.pop_front();
                }
            }
        }
    }

    /// Apply a commit just written as a record of `rec_len` bytes. Rows
    /// keep the documents' text as staged (no parsed tree); documents and
    /// keys are moved out of `c`.
    pub(super) fn apply_commit(&mut self, c: &mut Commit, picks: Vec<(usize, Picks)>, rec_len: usize) -> Result<()> {
        // Left over by a commit that failed to apply: not this one's.
        self.version_batch.clear();
        let first = c.first_seq;
        let mut picks = picks.into_iter().peekable();
        let events = c
            .events
            .iter_mut()
            .enumerate()
            .map(|(i, e)| {
                let seq = first + i as u64;
                // The staged document itself goes into the row map: only
                // its sequence number is set (a copy if it is shared).
                let doc = e.doc.take().map(|mut d| match Arc::get_mut(&mut d) {
                    Some(m) => {
                        m.set_seq(seq);
                        d
                    }
                    None => Arc::new(Doc::from_text_unchecked(d.text()).at(seq)),
                });
                let picks = match picks.peek() {
                    Some((at, _)) if *at == i => picks.next().map(|(_, p)| p),
                    _ => None,
                };
                Applied { op: e.op, table: e.table, key: e.key.take(), doc, picks }
            })
            .collect();
        self.apply_record(c.first_seq, c.time_micros, events, rec_len)
    }

    /// Apply the events of one commit (`rec_len` bytes on disk).
    pub(super) fn apply_record(
        &mut self,
        first_seq: u64,
        time_micros: i64,
        events: Vec<Applied>,
        rec_len: usize,
    ) -> Result<()> {
        let share = (rec_len / events.len().max(1)) as u64;
        let len = u32::try_from(events.len()).map_err(|_| log_error(first_seq, "a commit of too many events"))?;
        if len == 0 {
            return Err(log_error(first_seq, "a commit of no events"));
        }
        self.apply_events(first_seq, events, share)?;
        let end = first_seq + u64::from(len) - 1;
        self.next_seq = end + 1;
        self.last_time = self.last_time.max(time_micros);
        // The commit's entries (by sequence number and by time) go in after
        // its events' (while opening, only those the tree lacks).
        if self.opening.is_none() || end > self.commits_from {
            use crate::table::version as ver;
            self.version_batch.push((ver::commit_key(first_seq), ver::encode_commit(len, time_micros)));
            self.version_batch.push((ver::commit_time_key(time_micros, first_seq), end.to_be_bytes().to_vec()));
        }
        self.put_version_batch();
        self.version_batch.clear();
        Ok(())
    }

    /// The loop of [`State::apply_record`]: event `i` is at `first_seq + i`.
    pub(super) fn apply_events(&mut self, first_seq: u64, events: Vec<Applied>, share: u64) -> Result<()> {
        for (i, e) in events.into_iter().enumerate() {
            let seq = first_seq + i as u64;
            match e.op {
                Op::CreateTable => self.apply_create_table(seq, &e)?,
                Op::Compact => {
                    let h = e.doc.as_ref().and_then(|d| d.get("horizon")).and_then(Value::as_u64).unwrap_or(0);
                    if let Some(t) = self.tables.get_mut(&e.table) {
                        t.horizon = t.horizon.max(h);
                    }
                }
                Op::Folded => {}
                Op::Alter => self.apply_alter(seq, &e)?,
                Op::Insert | Op::Patch | Op::SoftDelete => self.apply_row(seq, e, share)?,
            }
        }
        Ok(())
    }

    /// A `CREATE TABLE` event.
    fn apply_create_table(&mut self, seq: u64, e: &Applied) -> Result<()> {
        let v = e.doc.as_ref().map_or(Value::Null, |d| d.to_value());
        let mut def: TableDef =
            serde_json::from_value(v).map_err(|err| log_error(seq, format!("bad table definition: {err}")))?;
        def.id = e.table;
        def.created_seq = seq;
        self.names.insert(def.name.clone(), def.id);
        let t = self.tables.entry(e.table).or_default();
        t.schema.push((seq, def.clone()));
        for (i, f) in def.indexes.iter().enumerate() {
            t.indexes.insert(f.clone(), (seq, u32::try_from(i).unwrap_or(u32::MAX)));
        }
        self.defs.insert(def.id, def);
        self.next_table_id = self.next_table_id.max(e.table + 1);
        Ok(())
    }

    /// A schema change: the definition, and the indexes it drops or
    /// rebuilds (with an index prebuilt for it, if there is one).
    fn apply_alter(&mut self, seq: u64, e: &Applied) -> Result<()> {
        let v = e.doc.as_ref().map_or(Value::Null, |d| d.to_value());
        let alter: Alter =
            serde_json::from_value(v).map_err(|err| log_error(seq, format!("bad schema change: {err}")))?;
        let (Some(def), Some(t)) = (self.defs.get_mut(&e.table), self.tables.get_mut(&e.table)) else {
            return Err(log_error(seq, "a schema change names an unknown table"));
        };
        alter.apply_def(def).map_err(|m| log_error(seq, format!("schema change: {m}")))?;
        t.schema.push((seq, def.clone()));
        t.alters.push((seq, alter.clone()));
        let effect = alter.index_effect(|c| t.indexes.contains_key(c));
        if let Some(c) = effect.drop {
            t.indexes.remove(c);
        }
        let Some(column) = effect.rebuild else { return Ok(()) };
        // The index is named by this event; its entries are in the runs
        // already if the tree holds versions up to here. (Otherwise the
        // name is given once the entries are in: a build that fails leaves
        // no index without them.)
        if self.opening.is_some() && seq <= self.index_from {
            t.indexes.insert(column.to_string(), (seq, 0));
            return Ok(());
        }
        t.indexes.remove(column);
        let pre = self
            .prebuilt
            .iter()
            .position(|p| p.table == e.table && p.seq == seq && p.column == column)
            .map(|i| self.prebuilt.swap_remove(i));
        // The rows this commit wrote before the change are read from the tree.
        self.put_version_batch();
        let tree = self.versions.clone().ok_or_else(|| log_error(seq, "the database has no version tree"))?;
        let Some(t) = self.tables.get(&e.table) else { return Ok(()) };
        let entries = match pre {
            Some(p) => {
                let mut entries = p.entries;
                let skip: FastSet<Pk> = p.skip.into_iter().collect();
                // Those rows as of this change (the commit's later writes
                // may be in the tree already while opening).
                for k in &skip {
                    let d = super::versions::version_at(&tree, t.shape(), e.table, k, seq)?
                        .and_then(super::versions::Found::into_doc);
                    if let Some(ik) = d.and_then(|d| t.view_field(&d, column)).and_then(crate::table::index::ikey_owned)
                    {
                        entries.push(super::versions::index_entry(e.table, (seq, 0), &ik, k, seq, true));
                    }
                }
                entries
            }
            None => t.build_index(&tree.view(), e.table, column, seq)?,
        };
        if !entries.is_empty() && tree.insert(entries) {
            self.versions_due = true;
        }
        if let Some(t) = self.tables.get_mut(&e.table) {
            t.indexes.insert(column.to_string(), (seq, 0));
        }
        Ok(())
    }

    /// An insert, patch or soft delete: the table's counters; live (not
    /// opening), the indexes, the version tree and the change log of open
    /// transactions.
    fn apply_row(&mut self, seq: u64, e: Applied, share: u64) -> Result<()> {
        let Some(t) = self.tables.get_mut(&e.table) else {
            return Err(log_error(seq, "an event names an unknown table"));
        };
        let opening = self.opening.is_some();
        // While opening: the row events a table's latest snapshot counts,
        // and everything the tree's runs hold already.
        let counted = self.opening.as_ref().is_some_and(|o| o.rows_from.get(&e.table).is_some_and(|from| seq <= *from));
        let in_runs = opening && seq <= self.index_from;
        if counted && (in_runs || t.indexes.is_empty()) {
            return Ok(());
        }
        let Some(key) = e.key else {
            return Err(log_error(seq, "a row event has no key"));
        };
        if !counted {
            t.since_events += 1;
            t.since_bytes += share;
            match e.op {
                Op::Insert => t.live += 1,
                Op::SoftDelete => t.live = t.live.saturating_sub(1),
                _ => {}
            }
        }
        // While opening, the versions come from the log's records as they
        // are read; the index entries of those the runs lack are made here.
        if opening && (in_runs || t.indexes.is_empty()) {
            return Ok(());
        }
        // The row's version for the tree (a live commit's), pushed after
        // the read of its previous one below: every insert into the tree
        // holds whole events (a version and its index entries), so a flush
        // never holds one without the other.
        let version = if opening {
            None
        } else {
            let text = e.doc.as_ref().map(|d| d.text()).or(match e.op {
                Op::Insert | Op::Patch => Some("null"),
                _ => None,
            });
            super::versions::entry(e.table, &key, seq, e.op, text)
        };
        // A soft delete carries the row as it read when it was staged.
        let carried = match (e.op, &e.doc) {
            (Op::SoftDelete, Some(d)) if !opening => Some(d.clone()),
            _ => None,
        };
        let new = match e.op {
            Op::Insert | Op::Patch => Some(e.doc.unwrap_or_else(|| Arc::new(Doc::from_value(Value::Null).at(seq)))),
            _ => None,
        };
        // The row as it was: an insert's is not live (checked when it was
        // staged); otherwise read from the tree as of the event before, if
        // an index or an open transaction needs it.
        let transactions = !opening && !self.active.is_empty();
        let needs_old = e.op != Op::Insert && (!t.indexes.is_empty() || transactions);
        let old = if carried.is_some() {
            carried
        } else if needs_old {
            self.put_version_batch();
            let t = self.tables.get(&e.table).ok_or_else(|| log_error(seq, "an event names an unknown table"))?;
            let tree = self.versions.as_ref().ok_or_else(|| log_error(seq, "the database has no version tree"))?;
            super::versions::version_at(tree, t.shape(), e.table, &key, seq.saturating_sub(1))?
                .and_then(super::versions::Found::into_doc)
        } else {
            None
        };
        if let Some(v) = version {
            self.version_batch.push(v);
        }
        let t = self.tables.get(&e.table).ok_or_else(|| log_error(seq, "an event names an unknown table"))?;
        reindex(
            &mut self.version_batch,
            e.table,
            &t.indexes,
            &t.alters,
            &key,
            seq,
            old.as_ref(),
            new.as_ref(),
            if new.is_some() { e.picks } else { None },
        );
        if transactions {
            self.changes.push_back(Change { seq, table: e.table, old, new });
        }
        Ok(())
    }

    /// Forget table `id`'s snapshots before its horizon `h` (a read before
    /// it is refused).
    pub(super) fn drop_snapshots_before(&mut self, id: u32, h: u64) {
        if let Some(t) = self.tables.get_mut(&id) {
            t.snapshots.retain(|(s, _)| *s >= h);
        }
    }
}

/// One event as [`State::apply_record`] takes it.
pub(super) struct Applied {
    pub(super) op: Op,
    pub(super) table: u32,
    pub(super) key: Option<Pk>,
    pub(super) doc: Option<Arc<Doc>>,
    /// Its indexed fields, picked when it was staged.
    pub(super) picks: Option<Picks>,
}
