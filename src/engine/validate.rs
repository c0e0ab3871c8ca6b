//! Commit-time validation: the view a group of commits sees, and the
//! conflict checks of each isolation level.

use super::*;
use crate::sync::Locked;

/// Where the group-commit leader puts a request's outcome, and the thread
/// waiting for it (woken on its own, so that answering a group does not
/// wake every waiting committer through one lock).
pub(crate) type Slot = Arc<SlotCell>;

/// See [`Slot`].
pub(crate) struct SlotCell {
    pub(super) result: std::sync::Mutex<Option<Result<u64>>>,
    pub(super) thread: std::thread::Thread,
}

impl SlotCell {
    /// A slot the current thread will wait on.
    pub fn new() -> Slot {
        Arc::new(SlotCell { result: std::sync::Mutex::new(None), thread: std::thread::current() })
    }

    /// Store the outcome (the waiter is woken by [`SlotCell::wake`]).
    pub fn set(&self, r: Result<u64>) {
        *self.result.locked() = Some(r);
    }

    /// Store the outcome unless there is one already.
    pub fn set_if_empty(&self, r: Result<u64>) {
        self.result.locked().get_or_insert(r);
    }

    /// Take the outcome, if there is one yet.
    pub fn take(&self) -> Option<Result<u64>> {
        self.result.locked().take()
    }

    /// Wake the waiting thread (to take its outcome, or to lead the next group).
    pub fn wake(&self) {
        self.thread.unpark();
    }
}

/// A commit request handed to the group-commit leader.
pub(crate) struct Request {
    /// The changes, as built by the transaction against its own view. The
    /// leader uses them as they are when nothing they depend on changed
    /// since `snapshot`, and otherwise re-applies them to the latest state.
    pub batch: Batch,
    pub iso: Isolation,
    pub snapshot: u64,
    pub reads: ReadSet,
    pub slot: Slot,
}

impl Request {
    /// Rows written in tables that existed before the transaction.
    pub fn written(&self) -> impl Iterator<Item = (u32, &Pk)> {
        self.batch
            .events
            .iter()
            .filter(|e| !self.batch.is_new(e.table))
            .filter_map(|e| e.key.as_ref().map(|k| (e.table, k)))
    }
}

/// The state a batch of changes is checked against.
pub(crate) trait View {
    /// A table's definition.
    fn def(&self, name: &str) -> Result<Cow<'_, TableDef>>;
    /// A row's document.
    fn current(&self, id: u32, key: &Pk) -> Result<Option<Value>>;
    /// Whether a row is live (what [`View::current`] says, without reading it).
    fn exists(&self, id: u32, key: &Pk) -> Result<bool> {
        Ok(self.current(id, key)?.is_some())
    }
    /// The id the next new table gets.
    fn next_table_id(&self) -> u32;
}

/// The latest committed state plus the commits accepted earlier in the same
/// group (not yet applied).
pub(crate) struct GroupView<'a> {
    pub st: &'a State,
    /// Accepted commits, in order.
    pub accepted: Vec<Accepted>,
    /// Rows the accepted commits write (of the first `indexed` of them:
    /// see [`GroupView::index_written`]).
    pub written: FastSet<(u32, Pk)>,
    pub(super) indexed: usize,
    pub new_tables: Vec<TableDef>,
    /// Tables whose schema the accepted commits change, and their definitions after.
    pub altered: Vec<TableDef>,
    pub next_table_id: u32,
    pub next_seq: u64,
    pub last_time: i64,
}

/// A commit the group-commit leader accepted.
pub(crate) struct Accepted {
    pub batch: Batch,
    pub slot: Slot,
    pub first_seq: u64,
    pub time: i64,
    pub bytes: Vec<u8>,
}

impl<'a> GroupView<'a> {
    pub fn new(st: &'a State) -> Self {
        GroupView {
            st,
            accepted: Vec::new(),
            written: FastSet::default(),
            indexed: 0,
            new_tables: Vec::new(),
            altered: Vec::new(),
            next_table_id: st.next_table_id.max(1),
            next_seq: st.next_seq,
            last_time: st.last_time,
        }
    }

    /// Take in a commit built against this view (or found equivalent to one).
    pub fn accept(&mut self, a: Accepted) {
        for d in &a.batch.new_tables {
            self.next_table_id = self.next_table_id.max(d.id + 1);
            self.new_tables.push(d.clone());
        }
        for d in &a.batch.altered {
            self.altered.retain(|x| x.id != d.id);
            self.altered.push(d.clone());
        }
        self.next_seq += a.batch.events.len() as u64;
        self.last_time = a.time;
        self.accepted.push(a);
    }

    /// Bring [`GroupView::written`] up to date with every accepted commit:
    /// due before the next request is checked against the group (a group of
    /// one commit never needs it).
    pub fn index_written(&mut self) {
        for a in &self.accepted[self.indexed..] {
            for (id, k) in a.batch.overlay.keys() {
                if !a.batch.is_new(*id) {
                    self.written.insert((*id, k.clone()));
                }
            }
        }
        self.indexed = self.accepted.len();
    }

    /// Whether `k` of table `id` is written by a commit accepted earlier.
    pub fn wrote(&self, id: u32, k: &Pk) -> bool {
        debug_assert_eq!(self.indexed, self.accepted.len());
        !self.written.is_empty() && self.written.contains(&(id, k.clone()))
    }

    /// Whether `b`, built by a transaction against its own view as of
    /// `snapshot` or later, is exactly what re-applying it here would build:
    /// no row it wrote changed since `snapshot`, and the tables it creates
    /// get the same ids and clash with none.
    pub fn still_valid(&self, b: &Batch, snapshot: u64) -> bool {
        let rows_unchanged = self.nothing_since(snapshot)
            || b.overlay
                .keys()
                .filter(|(id, _)| !b.is_new(*id))
                .all(|(id, k)| !self.wrote(*id, k) && self.st.newest_seq(*id, k).is_none_or(|s| s <= snapshot));
        let tables_fit = b.new_tables.first().is_none_or(|d| d.id == self.next_table_id)
            && b.new_tables.iter().all(|d| self.def(&d.name).is_err());
        // No schema change since `snapshot` to a table it writes or alters.
        let schemas_unchanged = b
            .overlay
            .keys()
            .map(|(id, _)| *id)
            .chain(b.alters.iter().map(|(_, id, _)| *id))
            .filter(|id| !b.is_new(*id))
            .all(|id| self.schema_changed_after(id, snapshot).is_none());
        rows_unchanged && tables_fit && schemas_unchanged
    }

    /// Whether nothing was committed since `snapshot` and nothing is
    /// accepted before this request in the group: no row, table or schema
    /// can have changed under it.
    pub fn nothing_since(&self, snapshot: u64) -> bool {
        self.accepted.is_empty() && self.st.latest_seq() <= snapshot
    }

    /// The sequence number of a schema change to table `id` after
    /// `snapshot`, committed or accepted earlier in the group.
    pub fn schema_changed_after(&self, id: u32, snapshot: u64) -> Option<u64> {
        if self.altered.iter().any(|d| d.id == id) {
            return Some(self.next_seq);
        }
        let s = self.st.tables.get(&id).map_or(0, |t| t.altered_at());
        (s > snapshot).then_some(s)
    }
}

impl View for GroupView<'_> {
    fn def(&self, name: &str) -> Result<Cow<'_, TableDef>> {
        if let Some(d) = self.altered.iter().find(|d| d.name == name) {
            return Ok(Cow::Borrowed(d));
        }
        if let Some(d) = self.new_tables.iter().find(|d| d.name == name) {
            return Ok(Cow::Borrowed(d));
        }
        self.st.table(name).map(Cow::Borrowed)
    }

    fn exists(&self, id: u32, key: &Pk) -> Result<bool> {
        if !self.accepted.is_empty() {
            return Ok(self.current(id, key)?.is_some());
        }
        // (A key past every run's last one, as keys that arrive in order
        // are, is found absent without reading a block.)
        Ok(self.st.current(id, key)?.is_some())
    }

    fn current(&self, id: u32, key: &Pk) -> Result<Option<Value>> {
        let committed = || self.st.current_value(id, key);
        if self.accepted.is_empty() {
            return committed();
        }
        let k = (id, key.clone());
        // Schema changes of commits after the one found, newest first.
        let mut later: Vec<&Alter> = Vec::new();
        let finish = |mut doc: Option<Value>, later: &[&Alter]| {
            if let Some(Value::Object(m)) = &mut doc {
                for a in later.iter().rev() {
                    a.apply_doc(m);
                }
            }
            doc
        };
        for a in self.accepted.iter().rev() {
            if let Some(doc) = a.batch.overlay_view(&k) {
                return Ok(finish(doc, &later));
            }
            later.extend(a.batch.alters.iter().rev().filter(|(_, t, _)| *t == id).map(|(_, _, x)| x));
        }
        Ok(finish(committed()?, &later))
    }

    fn next_table_id(&self) -> u32 {
        self.next_table_id
    }
}

/// The committed state as of a transaction's snapshot.
pub(crate) struct SnapshotView<'a> {
    pub db: &'a Db,
    pub st: &'a State,
    pub seq: u64,
}

impl View for SnapshotView<'_> {
    fn def(&self, name: &str) -> Result<Cow<'_, TableDef>> {
        let d = self.st.table(name)?;
        if d.created_seq > self.seq {
            return Err(Error::Query(format!(
                "unknown table {name:?} (created at @seq:{}, after this transaction's snapshot @seq:{})",
                d.created_seq, self.seq
            )));
        }
        // The definition as of the snapshot (a later schema change conflicts at commit).
        let mut at = self.st.tables.get(&d.id).and_then(|t| t.def_at(self.seq)).unwrap_or(d).clone();
        at.id = d.id;
        at.created_seq = d.created_seq;
        Ok(Cow::Owned(at))
    }

    fn current(&self, id: u32, key: &Pk) -> Result<Option<Value>> {
        self.db.doc_at_snapshot(self.st, id, key, self.seq)
    }

    fn next_table_id(&self) -> u32 {
        self.st.next_table_id.max(1)
    }
}

/// The first change after `snapshot` that invalidates what a request wrote
/// (Snapshot and Serializable) or read (Serializable): a description of it.
pub(crate) fn conflict(st: &State, g: &GroupView<'_>, req: &Request) -> Option<String> {
    if req.iso == Isolation::ReadCommitted {
        return None;
    }
    if g.nothing_since(req.snapshot) {
        return None;
    }
    let changed_key = |id: u32, k: &Pk| -> Option<u64> {
        if g.wrote(id, k) {
            return Some(g.next_seq);
        }
        let last = st.newest_seq(id, k)?;
        (last > req.snapshot).then_some(last)
    };
    let name = |id: u32| st.defs.get(&id).map_or_else(|| format!("#{id}"), |d| d.name.clone());
    // A schema change to a table it wrote, changed the schema of or read.
    let tables = req
        .written()
        .map(|(id, _)| id)
        .chain(req.batch.alters.iter().map(|(_, id, _)| *id).filter(|id| !req.batch.is_new(*id)))
        .chain(req.reads.keys.iter().map(|(id, _)| *id))
        .chain(req.reads.preds.iter().map(|(id, _)| *id));
    for id in tables {
        if let Some(s) = g.schema_changed_after(id, req.snapshot) {
            return Some(format!(
                "the schema of table {:?} was changed at @seq:{s} by a transaction that committed after this one began (@seq:{})",
                name(id),
                req.snapshot
            ));
        }
    }
    for (id, k) in req.written() {
        if let Some(s) = changed_key(id, k) {
            return Some(format!(
                "row {k} of table {:?} was changed at @seq:{s} by a transaction that committed after this one began (@seq:{})",
                name(id),
                req.snapshot
            ));
        }
    }
    if req.iso != Isolation::Serializable {
        return None;
    }
    for (id, k) in &req.reads.keys {
        if let Some(s) = changed_key(*id, k) {
            return Some(format!(
                "row {k} of table {:?}, read by this transaction, was changed at @seq:{s} after it began (@seq:{})",
                name(*id),
                req.snapshot
            ));
        }
    }
    let hit = |pred: &Option<Expr>, old: Option<&Value>, new: Option<&Value>| match pred {
        None => true,
        Some(p) => {
            old.is_some_and(|d| crate::query::eval::matches(p, d))
                || new.is_some_and(|d| crate::query::eval::matches(p, d))
        }
    };
    for (id, pred) in &req.reads.preds {
        let from = st.changes.partition_point(|c| c.seq <= req.snapshot);
        let c: Option<&Change> = st.changes.range(from..).find(|c| {
            if c.table != *id {
                return false;
            }
            // Documents as the transaction's reads saw them: through the schema changes.
            let t = st.tables.get(&c.table);
            let old = c.old.as_deref().zip(t).map(|(d, t)| t.view_value(d, c.seq));
            let new = c.new.as_deref().zip(t).map(|(d, t)| t.view_value(d, c.seq));
            hit(pred, old.as_ref(), new.as_ref())
        });
        // Rows written earlier in the group: before it, they are as in `st`.
        let in_group = || {
            g.written.iter().filter(|(t, _)| t == id).any(|(t, k)| {
                // A read that fails counts as a change (fails safe, as a conflict).
                let Ok(old) = st.current_value(*t, k) else { return true };
                let new = g.current(*t, k).ok().flatten();
                hit(pred, old.as_ref(), new.as_ref())
            })
        };
        let s = c.map(|c| c.seq).or_else(|| in_group().then_some(g.next_seq));
        if let Some(s) = s {
            return Some(format!(
                "a query of table {:?} read by this transaction would see a change committed at @seq:{s}, after it began (@seq:{})",
                name(*id),
                req.snapshot
            ));
        }
    }
    None
}
