//! Transactions and isolation.
//!
//! A [`Txn`] records its changes as operations and keeps its own writes in
//! an overlay, so its reads (point reads, queries, aggregates) see them. It
//! reads from a view that depends on its [`Isolation`]. Nothing reaches the
//! disk before [`Txn::commit`]: the commit is validated and turned into
//! events by the group-commit leader (see [`crate::db`]), against the latest
//! committed state, and is then written to the write-ahead log with the
//! other commits of its group, under one fsync.
//!
//! Validation is optimistic:
//!
//! * `ReadCommitted` checks nothing beyond the constraints: every change is
//!   re-applied to the latest state (a `PATCH` merges into the latest
//!   document, an `INSERT` fails if the key is live by then).
//! * `Snapshot` aborts with [`Error::Conflict`] if any row it writes was
//!   written by a transaction that committed after it began (first
//!   committer wins).
//! * `Serializable` also aborts if anything it read changed after it began:
//!   a row it read by key (present or absent), or any row of a table it
//!   queried whose old or new version satisfies the query's `WHERE` (a
//!   query without `WHERE` conflicts with any change to the table). A
//!   transaction that commits therefore read exactly what it would have read
//!   had it run alone at its commit point, so the committed history is
//!   serializable in commit order.

use crate::db::{Change, Db, State};
use crate::query::ast::{Expr, Select, Stmt};
use crate::table::schema::Alter;
use crate::table::{Doc, Event, FastMap, FastSet, Op, Pk, TableDef};
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Isolation level of a transaction.
///
/// | anomaly                     | ReadCommitted | Snapshot  | Serializable |
/// |-----------------------------|---------------|-----------|--------------|
/// | dirty read                  | prevented     | prevented | prevented    |
/// | non-repeatable read         | possible      | prevented | prevented    |
/// | lost update                 | possible      | prevented | prevented    |
/// | phantom (re-run query)      | possible      | prevented | prevented    |
/// | write skew                  | possible      | possible  | prevented    |
/// | phantom on a predicate read, then write | possible | possible | prevented |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Every read sees the latest committed state; changes are re-applied to
    /// the latest state at commit.
    ReadCommitted,
    /// Reads see the state at `begin`; a write-write conflict with a
    /// transaction that committed meanwhile aborts (first committer wins).
    Snapshot,
    /// Snapshot, and a commit also aborts if anything the transaction read
    /// (rows by key, query predicates) changed meanwhile. The default.
    #[default]
    Serializable,
}

impl Isolation {
    /// DriftQL spelling (`READ COMMITTED`, `SNAPSHOT`, `SERIALIZABLE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "READ COMMITTED",
            Isolation::Snapshot => "SNAPSHOT",
            Isolation::Serializable => "SERIALIZABLE",
        }
    }
}

/// One change of a transaction, re-applied at commit.
#[derive(Debug, Clone)]
pub(crate) enum TxnOp {
    CreateTable {
        name: String,
        pk: String,
        indexes: Vec<String>,
    },
    Insert {
        table: String,
        doc: Value,
    },
    /// An insert of a document given as JSON text (kept as given).
    InsertText {
        table: String,
        text: String,
    },
    Patch {
        table: String,
        key: Pk,
        set: Map<String, Value>,
    },
    SoftDelete {
        table: String,
        key: Pk,
    },
    Alter {
        table: String,
        alter: Alter,
    },
    /// An event built by the engine itself (compaction markers).
    Raw(Event),
}

/// What a transaction read, for `Serializable` validation.
#[derive(Default, Debug)]
pub(crate) struct ReadSet {
    pub keys: FastSet<(u32, Pk)>,
    /// (table, `WHERE`): `None` reads the whole table.
    pub preds: Vec<(u32, Option<Expr>)>,
}

/// Where the group-commit leader puts a request's outcome, and the thread
/// waiting for it (woken on its own, so that answering a group does not
/// wake every waiting committer through one lock).
pub(crate) type Slot = Arc<SlotCell>;

/// See [`Slot`].
pub(crate) struct SlotCell {
    result: std::sync::Mutex<Option<Result<u64>>>,
    thread: std::thread::Thread,
}

impl SlotCell {
    /// A slot the current thread will wait on.
    pub fn new() -> Slot {
        Arc::new(SlotCell { result: std::sync::Mutex::new(None), thread: std::thread::current() })
    }

    /// Store the outcome (the waiter is woken by [`SlotCell::wake`]).
    pub fn set(&self, r: Result<u64>) {
        *self.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }

    /// Store the outcome unless there is one already.
    pub fn set_if_empty(&self, r: Result<u64>) {
        self.result.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(r);
    }

    /// Take the outcome, if there is one yet.
    pub fn take(&self) -> Option<Result<u64>> {
        self.result.lock().unwrap_or_else(|p| p.into_inner()).take()
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
    indexed: usize,
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
            || b.overlay.keys().filter(|(id, _)| !b.is_new(*id)).all(|(id, k)| {
                !self.wrote(*id, k)
                    && self
                        .st
                        .tables
                        .get(id)
                        .and_then(|t| t.history.get(k))
                        .and_then(|h| h.last())
                        .is_none_or(|e| e.seq <= snapshot)
            });
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
        // A key past the table's last one (keys that arrive in order) is
        // absent without a search.
        Ok(self
            .st
            .tables
            .get(&id)
            .is_some_and(|t| t.rows.last_key_value().is_some_and(|(last, _)| key <= last) && t.rows.contains_key(key)))
    }

    fn current(&self, id: u32, key: &Pk) -> Result<Option<Value>> {
        let committed = || self.st.tables.get(&id).and_then(|t| t.rows.get(key).map(|d| t.view_value(d, u64::MAX)));
        if self.accepted.is_empty() {
            return Ok(committed());
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
        Ok(finish(committed(), &later))
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

/// Changes being built into one commit: every change is checked against a
/// [`View`] and the changes before it.
#[derive(Default)]
pub(crate) struct Batch {
    pub events: Vec<Event>,
    /// Each row written: the index of its last event.
    pub overlay: FastMap<(u32, Pk), usize>,
    pub new_tables: Vec<TableDef>,
    /// Schema changes: (index of the event, table, change), in order.
    pub alters: Vec<(usize, u32, Alter)>,
    /// Definitions of the tables this batch changes the schema of, after it.
    pub altered: Vec<TableDef>,
    /// May write DriftDB's own tables (names beginning with `_drift`).
    pub system: bool,
    /// Give new tables provisional ids from the top of the id space (a
    /// transaction's own batch: real ids are assigned at commit, and a table
    /// another transaction creates meanwhile can never share one).
    pub local_ids: bool,
    /// Indexed fields of inserted documents, picked while their text was
    /// checked: (index of the event, fields), in event order.
    pub picks: Vec<(usize, Picks)>,
    /// The latest list of indexed fields picked, per table (shared by its picks).
    pub pick_names: Vec<(u32, Arc<[String]>)>,
}

/// The values of a document's indexed fields `names` (`None`: missing).
pub(crate) struct Picks {
    pub names: Arc<[String]>,
    pub values: Vec<Option<Value>>,
}

impl Picks {
    /// The values of fields `fields`, in that order, if every one of them was picked.
    pub fn take(mut self, fields: &[&str]) -> Option<Vec<Option<Value>>> {
        fields
            .iter()
            .map(|f| {
                let i = self.names.iter().position(|x| x == f)?;
                Some(self.values.get_mut(i).and_then(Option::take))
            })
            .collect()
    }
}

/// Tables whose names begin with this are DriftDB's own (the migration
/// history): readable, never written by statements.
pub const SYSTEM_PREFIX: &str = "_drift";

fn check_name(kind: &str, n: &str) -> Result<()> {
    if n.is_empty() || n.len() > 256 || n.chars().any(|c| c.is_control()) {
        return Err(Error::Query(format!("invalid {kind} name {n:?}")));
    }
    Ok(())
}

impl Batch {
    pub fn def<'a>(&'a self, v: &'a dyn View, table: &str) -> Result<Cow<'a, TableDef>> {
        if let Some(d) = self.altered.iter().find(|d| d.name == table) {
            return Ok(Cow::Borrowed(d));
        }
        if let Some(d) = self.new_tables.iter().find(|d| d.name == table) {
            return Ok(Cow::Borrowed(d));
        }
        v.def(table)
    }

    pub fn is_new(&self, id: u32) -> bool {
        self.new_tables.iter().any(|d| d.id == id)
    }

    /// The row as this batch left it: `Some(None)` if it deleted it, `None`
    /// if the batch did not write it.
    pub fn overlay_doc(&self, k: &(u32, Pk)) -> Option<Option<Value>> {
        let i = *self.overlay.get(k)?;
        let e = self.events.get(i)?;
        Some(match e.op {
            // Parsed for this read only: the document staged stays text.
            Op::Insert | Op::Patch => e.doc.as_ref().map(|d| d.to_value()),
            _ => None,
        })
    }

    /// The row as this batch left it, read through the batch's later schema
    /// changes: `Some(None)` if it deleted it, `None` if it did not write it.
    pub fn overlay_view(&self, k: &(u32, Pk)) -> Option<Option<Value>> {
        let i = *self.overlay.get(k)?;
        let mut doc = self.overlay_doc(k)?;
        self.apply_staged(k.0, Some(i), &mut doc);
        Some(doc)
    }

    /// Apply this batch's schema changes to table `id` after event `after`
    /// (all of them for `None`) to a document.
    pub fn apply_staged(&self, id: u32, after: Option<usize>, doc: &mut Option<Value>) {
        if let Some(Value::Object(m)) = doc {
            for (_, _, a) in self.alters.iter().filter(|(i, t, _)| *t == id && after.is_none_or(|x| *i > x)) {
                a.apply_doc(m);
            }
        }
    }

    /// Whether this batch changes the schema of table `id`.
    pub fn alters_table(&self, id: u32) -> bool {
        self.alters.iter().any(|(_, t, _)| *t == id)
    }

    /// Whether the row is live as this batch leaves it (see [`Batch::current`]).
    pub fn exists(&self, v: &dyn View, id: u32, key: &Pk) -> Result<bool> {
        if let Some(i) = self.overlay.get(&(id, key.clone())) {
            return Ok(self.events.get(*i).is_some_and(|e| matches!(e.op, Op::Insert | Op::Patch) && e.doc.is_some()));
        }
        if self.is_new(id) {
            return Ok(false);
        }
        v.exists(id, key)
    }

    pub fn current(&self, v: &dyn View, id: u32, key: &Pk) -> Result<Option<Value>> {
        if let Some(x) = self.overlay_view(&(id, key.clone())) {
            return Ok(x);
        }
        if self.is_new(id) {
            return Ok(None);
        }
        let mut doc = v.current(id, key)?;
        self.apply_staged(id, None, &mut doc);
        Ok(doc)
    }

    /// Refuse writes to DriftDB's own tables from statements.
    fn writable(&self, table: &str) -> Result<()> {
        if table.starts_with(SYSTEM_PREFIX) && !self.system {
            return Err(Error::Query(format!(
                "table {table:?} belongs to DriftDB (names beginning with {SYSTEM_PREFIX:?} are reserved): it can be read, not written"
            )));
        }
        Ok(())
    }

    /// Check and add one change.
    pub fn apply(&mut self, v: &dyn View, op: TxnOp) -> Result<()> {
        match op {
            TxnOp::CreateTable { name, pk, indexes } => self.create_table(v, &name, &pk, &indexes),
            TxnOp::Insert { table, doc } => self.insert(v, &table, doc),
            TxnOp::InsertText { table, text } => self.insert_text(v, &table, text),
            TxnOp::Patch { table, key, set } => self.patch(v, &table, &key, set),
            TxnOp::SoftDelete { table, key } => self.soft_delete(v, &table, &key),
            TxnOp::Alter { table, alter } => self.alter(v, &table, alter),
            TxnOp::Raw(e) => {
                self.events.push(e);
                Ok(())
            }
        }
    }

    /// The changes of this batch as operations, to re-apply them elsewhere
    /// (`st` names the tables that existed before it).
    pub fn into_ops(self, st: &State) -> Result<Vec<TxnOp>> {
        let name = |id: u32| -> Result<String> {
            self.new_tables
                .iter()
                .find(|d| d.id == id)
                .map(|d| d.name.clone())
                .or_else(|| st.defs.get(&id).map(|d| d.name.clone()))
                .ok_or_else(|| Error::NotFound(format!("table {id}")))
        };
        let mut ops = Vec::with_capacity(self.events.len());
        for e in &self.events {
            let key = || e.key.clone().ok_or_else(|| Error::Query("event without a key".into()));
            ops.push(match e.op {
                Op::CreateTable => {
                    let d = self
                        .new_tables
                        .iter()
                        .find(|d| d.id == e.table)
                        .ok_or_else(|| Error::NotFound(format!("new table {}", e.table)))?;
                    TxnOp::CreateTable { name: d.name.clone(), pk: d.pk.clone(), indexes: d.indexes.clone() }
                }
                Op::Insert => match &e.doc {
                    Some(d) => TxnOp::InsertText { table: name(e.table)?, text: d.text().to_owned() },
                    None => TxnOp::Insert { table: name(e.table)?, doc: Value::Null },
                },
                Op::Patch => TxnOp::Patch {
                    table: name(e.table)?,
                    key: key()?,
                    set: match &e.patch {
                        Some(Value::Object(m)) => m.clone(),
                        _ => Map::new(),
                    },
                },
                Op::SoftDelete => TxnOp::SoftDelete { table: name(e.table)?, key: key()? },
                Op::Alter => TxnOp::Alter {
                    table: name(e.table)?,
                    alter: serde_json::from_value(e.doc.as_ref().map_or(Value::Null, |d| d.to_value()))
                        .map_err(|err| Error::Query(format!("schema change: {err}")))?,
                },
                _ => TxnOp::Raw(e.clone()),
            });
        }
        Ok(ops)
    }

    fn create_table(&mut self, v: &dyn View, name: &str, pk: &str, indexes: &[String]) -> Result<()> {
        check_name("table", name)?;
        self.writable(name)?;
        check_name("primary key field", pk)?;
        for i in indexes {
            check_name("indexed field", i)?;
        }
        if self.def(v, name).is_ok() {
            return Err(Error::Constraint(format!("table {name:?} already exists")));
        }
        let n = self.new_tables.len() as u32;
        let id = if self.local_ids { u32::MAX - n } else { v.next_table_id().max(1) + n };
        let def = TableDef {
            id,
            name: name.to_string(),
            pk: pk.to_string(),
            indexes: indexes.to_vec(),
            columns: Vec::new(),
            created_seq: 0,
        };
        let doc = serde_json::to_value(&def).map_err(|e| Error::Query(e.to_string()))?;
        self.events.push(Event {
            op: Op::CreateTable,
            table: id,
            key: None,
            doc: Some(Arc::new(Doc::from_value(doc))),
            patch: None,
        });
        self.new_tables.push(def);
        Ok(())
    }

    /// The primary key of a document for table `def`.
    fn key_of(def: &TableDef, table: &str, doc: &Value) -> Result<Pk> {
        let Value::Object(m) = doc else {
            return Err(Error::Query(format!("INSERT INTO {table}: the document must be a JSON object")));
        };
        Self::key_from(def, table, m.get(&def.pk))
    }

    /// The primary key from the value of the key field `v`.
    fn key_from(def: &TableDef, table: &str, v: Option<&Value>) -> Result<Pk> {
        match v {
            None | Some(Value::Null) => {
                Err(Error::Query(format!("INSERT INTO {table}: the document has no primary key field {:?}", def.pk)))
            }
            Some(v) => Pk::from_json(v).ok_or_else(|| {
                Error::Query(format!(
                    "INSERT INTO {table}: primary key {:?} must be a string or an integer, not {v}",
                    def.pk
                ))
            }),
        }
    }

    fn insert(&mut self, v: &dyn View, table: &str, doc: Value) -> Result<()> {
        self.writable(table)?;
        let def = self.def(v, table)?;
        let key = Self::key_of(&def, table, &doc)?;
        let mut doc = doc;
        // A declared column's default fills a field the document lacks.
        if let Value::Object(m) = &mut doc {
            for c in &def.columns {
                if let Some(d) = &c.default
                    && m.get(&c.name).is_none_or(Value::is_null)
                {
                    m.insert(c.name.clone(), d.clone());
                }
            }
        }
        let id = def.id;
        check_depth(table, &doc)?;
        self.push_insert(v, table, id, key, row_doc(&doc)?, None)
    }

    /// Insert a document given as JSON text: checked and its key picked in
    /// one pass, then kept as given (no parsed tree is built). A table with
    /// column defaults takes the parsed path, which fills them in.
    fn insert_text(&mut self, v: &dyn View, table: &str, text: String) -> Result<()> {
        self.writable(table)?;
        let def = self.def(v, table)?;
        let bad = |e: serde_json::Error| {
            // The parser's nesting limit is the parsed path's (`check_depth`).
            if e.to_string().starts_with("recursion limit exceeded") {
                return depth_error(table);
            }
            Error::Query(format!("INSERT INTO {table}: the document is not valid JSON: {e}"))
        };
        if def.columns.iter().any(|c| c.default.is_some()) {
            let doc: Value = crate::table::doc::parse_strict(&text).map_err(bad)?;
            return self.insert(v, table, doc);
        }
        // The key and the indexed fields, in one pass: applying the insert
        // then indexes the row without reading its text again.
        let mut fields: Vec<&str> = Vec::with_capacity(1 + def.indexes.len());
        fields.push(def.pk.as_str());
        fields.extend(def.indexes.iter().map(String::as_str));
        let mut picked = crate::table::doc::check_strict(&text, &fields).map_err(bad)?;
        if !text.trim_start().starts_with('{') {
            return Err(Error::Query(format!("INSERT INTO {table}: the document must be a JSON object")));
        }
        let key = Self::key_from(&def, table, picked.first().and_then(Option::as_ref))?;
        let id = def.id;
        let indexed = (!def.indexes.is_empty()).then(|| {
            let names = match self.pick_names.iter().find(|(t, _)| *t == id) {
                Some((_, n)) if n.iter().eq(def.indexes.iter()) => n.clone(),
                _ => Arc::from(def.indexes.as_slice()),
            };
            Picks { names, values: picked.drain(1..).collect() }
        });
        if let Some(p) = &indexed
            && !self.pick_names.iter().any(|(t, n)| *t == id && Arc::ptr_eq(n, &p.names))
        {
            self.pick_names.retain(|(t, _)| *t != id);
            self.pick_names.push((id, p.names.clone()));
        }
        self.push_insert(v, table, id, key, Arc::new(Doc::from_string_unchecked(text)), indexed)
    }

    fn push_insert(
        &mut self,
        v: &dyn View,
        table: &str,
        id: u32,
        key: Pk,
        doc: Arc<Doc>,
        indexed: Option<Picks>,
    ) -> Result<()> {
        if self.exists(v, id, &key)? {
            return Err(Error::Constraint(format!("duplicate primary key {key} in table {table:?}")));
        }
        if let Some(p) = indexed {
            self.picks.push((self.events.len(), p));
        }
        self.overlay.insert((id, key.clone()), self.events.len());
        self.events.push(Event { op: Op::Insert, table: id, key: Some(key), doc: Some(doc), patch: None });
        Ok(())
    }

    fn patch(&mut self, v: &dyn View, table: &str, key: &Pk, set: Map<String, Value>) -> Result<()> {
        self.writable(table)?;
        let def = self.def(v, table)?;
        let id = def.id;
        let Some(Value::Object(mut doc)) = self.current(v, id, key)? else {
            return Err(Error::Constraint(format!("PATCH {table}: no live row with key {key} (missing or deleted)")));
        };
        if let Some(x) = set.get(&def.pk)
            && Pk::from_json(x).as_ref() != Some(key)
        {
            return Err(Error::Constraint(format!("PATCH {table}: the primary key {:?} cannot change", def.pk)));
        }
        for (k, x) in &set {
            if x.is_null() {
                doc.remove(k);
            } else {
                doc.insert(k.clone(), x.clone());
            }
        }
        let doc = Value::Object(doc);
        check_depth(table, &doc)?;
        self.overlay.insert((id, key.clone()), self.events.len());
        self.events.push(Event {
            op: Op::Patch,
            table: id,
            key: Some(key.clone()),
            doc: Some(row_doc(&doc)?),
            patch: Some(Value::Object(set)),
        });
        Ok(())
    }

    fn alter(&mut self, v: &dyn View, table: &str, alter: Alter) -> Result<()> {
        self.writable(table)?;
        let mut def = self.def(v, table)?.into_owned();
        alter.apply_def(&mut def).map_err(Error::Constraint)?;
        let doc = serde_json::to_value(&alter).map_err(|e| Error::Query(e.to_string()))?;
        self.alters.push((self.events.len(), def.id, alter));
        self.events.push(Event {
            op: Op::Alter,
            table: def.id,
            key: None,
            doc: Some(Arc::new(Doc::from_value(doc))),
            patch: None,
        });
        self.altered.retain(|d| d.id != def.id);
        self.altered.push(def);
        Ok(())
    }

    fn soft_delete(&mut self, v: &dyn View, table: &str, key: &Pk) -> Result<()> {
        self.writable(table)?;
        let id = self.def(v, table)?.id;
        let Some(doc) = self.current(v, id, key)? else {
            return Err(Error::Constraint(format!("SOFT DELETE FROM {table}: no live row with key {key}")));
        };
        self.overlay.insert((id, key.clone()), self.events.len());
        self.events.push(Event {
            op: Op::SoftDelete,
            table: id,
            key: Some(key.clone()),
            doc: Some(row_doc(&doc)?),
            patch: None,
        });
        Ok(())
    }
}

/// A transaction. Obtained from [`Db::begin`]; dropping it without
/// [`Txn::commit`] rolls it back.
pub struct Txn<'db> {
    db: &'db Db,
    iso: Isolation,
    snapshot: u64,
    local: Batch,
    reads: ReadSet,
    registered: bool,
}

impl<'db> Txn<'db> {
    pub(crate) fn new(db: &'db Db, iso: Isolation, snapshot: u64, registered: bool) -> Self {
        let local = Batch { local_ids: true, ..Batch::default() };
        Txn { db, iso, snapshot, local, reads: ReadSet::default(), registered }
    }

    /// The isolation level.
    pub fn isolation(&self) -> Isolation {
        self.iso
    }

    /// The sequence number the transaction's snapshot was taken at (for
    /// `ReadCommitted`, the latest at `begin`; its reads move on).
    pub fn snapshot_seq(&self) -> u64 {
        self.snapshot
    }

    /// Run `f` with the view this transaction reads through.
    fn with_view<R>(&self, f: impl FnOnce(&dyn View, &State) -> Result<R>) -> Result<R> {
        let st = self.db.read_state();
        match self.iso {
            Isolation::ReadCommitted => f(&GroupView::new(&st), &st),
            _ => f(&SnapshotView { db: self.db, st: &st, seq: self.snapshot }, &st),
        }
    }

    fn stage(&mut self, op: TxnOp) -> Result<()> {
        let mut local = std::mem::take(&mut self.local);
        let r = self.with_view(|v, _| local.apply(v, op));
        self.local = local;
        r
    }

    /// Create a table.
    pub fn create_table(&mut self, name: &str, pk: &str, indexes: &[&str]) -> Result<()> {
        self.stage(TxnOp::CreateTable {
            name: name.to_string(),
            pk: pk.to_string(),
            indexes: indexes.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Insert a document; its primary key must not be live.
    pub fn insert(&mut self, table: &str, doc: Value) -> Result<()> {
        self.stage(TxnOp::Insert { table: table.to_string(), doc })
    }

    /// Insert a document given as JSON text (an object); its primary key
    /// must not be live. The text is checked and stored as given, without
    /// building a parsed document: the fast path for data that arrives as
    /// JSON. Reads return it parsed, exactly as [`Txn::insert`] of the
    /// parsed value would (a field given twice keeps its last value). The
    /// text is kept as given, whitespace included, in memory and on disk:
    /// compact text is the cheaper to store.
    pub fn insert_json(&mut self, table: &str, json: impl Into<String>) -> Result<()> {
        self.stage(TxnOp::InsertText { table: table.to_string(), text: json.into() })
    }

    /// Merge `set` into a live row; `null` removes a field.
    pub fn patch(&mut self, table: &str, key: &Pk, set: Map<String, Value>) -> Result<()> {
        self.stage(TxnOp::Patch { table: table.to_string(), key: key.clone(), set })
    }

    /// Soft-delete a live row.
    pub fn soft_delete(&mut self, table: &str, key: &Pk) -> Result<()> {
        self.stage(TxnOp::SoftDelete { table: table.to_string(), key: key.clone() })
    }

    /// Change a table's schema (`ALTER TABLE`, `CREATE INDEX`, `DROP INDEX`).
    pub fn alter(&mut self, table: &str, alter: Alter) -> Result<()> {
        self.stage(TxnOp::Alter { table: table.to_string(), alter })
    }

    /// Let this transaction write DriftDB's own tables (the migration runner).
    pub(crate) fn allow_system_writes(&mut self) {
        self.local.system = true;
    }

    /// A table's definition as this transaction sees it.
    pub fn describe(&self, table: &str) -> Result<TableDef> {
        let local = &self.local;
        self.with_view(|v, _| local.def(v, table).map(Cow::into_owned))
    }

    /// Rows this transaction writes, per table name (its own new tables included).
    pub(crate) fn written_rows(&self) -> BTreeMap<String, u64> {
        let st = self.db.read_state();
        let mut out = BTreeMap::new();
        for (t, _) in self.local.overlay.keys() {
            let name = self
                .local
                .new_tables
                .iter()
                .find(|d| d.id == *t)
                .map(|d| d.name.clone())
                .or_else(|| st.defs.get(t).map(|d| d.name.clone()))
                .unwrap_or_else(|| format!("#{t}"));
            *out.entry(name).or_insert(0) += 1;
        }
        out
    }

    /// A row's document as this transaction sees it (its own writes included).
    pub fn get(&mut self, table: &str, key: &Pk) -> Result<Option<Value>> {
        let local = &self.local;
        let (id, new, doc) = self.with_view(|v, _| {
            let def = local.def(v, table)?;
            Ok((def.id, local.is_new(def.id), local.current(v, def.id, key)?))
        })?;
        if !new {
            self.reads.keys.insert((id, key.clone()));
        }
        Ok(doc)
    }

    /// Run a `SELECT` as this transaction sees the data (its own writes
    /// included). A `SELECT ... AS OF` reads committed history instead; in a
    /// `Snapshot` or `Serializable` transaction only history up to its
    /// snapshot (which no later commit can change).
    pub fn select(&mut self, sel: &Select) -> Result<Vec<Value>> {
        if let Some(a) = &sel.as_of {
            if self.iso == Isolation::ReadCommitted {
                return self.db.select(sel);
            }
            let seq = self.db.resolve_as_of(a)?;
            if seq > self.snapshot {
                return Err(Error::Query(format!(
                    "AS OF {} reads past this transaction's snapshot (@seq:{}); a {} transaction reads history only up to its snapshot",
                    match a {
                        crate::query::ast::AsOf::Seq(n) => format!("@seq:{n}"),
                        crate::query::ast::AsOf::Now => "@now".to_string(),
                        crate::query::ast::AsOf::Time(t, _) => format!("{t:?}"),
                    },
                    self.snapshot,
                    self.iso.as_str()
                )));
            }
            let mut at = sel.clone();
            at.as_of = Some(crate::query::ast::AsOf::Seq(seq));
            return self.db.select(&at);
        }
        let local = &self.local;
        let (id, new, out) = self.with_view(|v, st| {
            let def = local.def(v, &sel.table)?;
            let new = local.is_new(def.id);
            let mine = local.overlay.keys().any(|(t, _)| *t == def.id) || local.alters_table(def.id);
            let at_latest = self.iso == Isolation::ReadCommitted || st.latest_seq() == self.snapshot;
            if !new && !mine && at_latest {
                return Ok((def.id, new, self.db.select_current(st, def.id, sel)?));
            }
            // The committed rows (read now or at the snapshot) merged in key
            // order with this transaction's writes, every row read through
            // its staged schema changes; streamed, not copied.
            let snap;
            let committed: Box<dyn Iterator<Item = (&Pk, Arc<Doc>)>> = match st.tables.get(&def.id) {
                Some(_) if new => Box::new(std::iter::empty()),
                Some(t) if at_latest => Box::new(t.rows.iter().map(move |(k, d)| (k, t.view(d, u64::MAX)))),
                Some(_) => {
                    snap = self.db.rows_at_snapshot(st, def.id, self.snapshot)?;
                    Box::new(snap.iter().map(|(k, d)| (k, d.clone())))
                }
                None => Box::new(std::iter::empty()),
            };
            let overlay: BTreeMap<Pk, Option<Value>> = local
                .overlay
                .keys()
                .filter(|(t, _)| *t == def.id)
                .map(|(t, k)| (k.clone(), local.overlay_view(&(*t, k.clone())).flatten()))
                .collect();
            let staged = local.alters_table(def.id);
            let through_staged = |d: Arc<Doc>| {
                if !staged {
                    return d;
                }
                let mut v = Some(d.to_value());
                local.apply_staged(def.id, None, &mut v);
                Arc::new(Doc::from_value(v.unwrap_or(Value::Null)))
            };
            let mut c = committed.peekable();
            let mut o = overlay.iter().peekable();
            let merged = std::iter::from_fn(move || {
                loop {
                    let take_overlay = match (c.peek(), o.peek()) {
                        (None, None) => return None,
                        (Some(_), None) => false,
                        (None, Some(_)) => true,
                        (Some((kc, _)), Some((ko, _))) => {
                            if *ko == *kc {
                                c.next();
                                true
                            } else {
                                *ko < *kc
                            }
                        }
                    };
                    if take_overlay {
                        if let Some((_, Some(d))) = o.next() {
                            return Some(Arc::new(Doc::from_value(d.clone())));
                        }
                    } else if let Some((_, d)) = c.next() {
                        return Some(through_staged(d));
                    }
                }
            });
            Ok((def.id, new, crate::query::eval::run_select(sel, merged)?))
        })?;
        if !new {
            self.reads.preds.push((id, sel.filter.clone()));
        }
        Ok(out)
    }

    /// Run a DriftQL `SELECT` inside the transaction and deserialize its rows.
    pub fn query<T: serde::de::DeserializeOwned>(&mut self, driftql: &str) -> Result<Vec<T>> {
        let Stmt::Select(sel) = crate::query::parse_one(driftql)? else {
            return Err(Error::Query("query() runs a SELECT".into()));
        };
        self.select(&sel)?
            .into_iter()
            .map(|v| {
                serde_json::from_value(v).map_err(|e| Error::Query(format!("row does not fit the requested type: {e}")))
            })
            .collect()
    }

    /// Commit: returns the sequence number of the transaction's last event
    /// (the latest sequence number if it changed nothing). Durable when it
    /// returns (with [`crate::db::Durability::Immediate`]). A conflict is
    /// [`Error::Conflict`]: nothing was written; run the transaction again.
    pub fn commit(mut self) -> Result<u64> {
        if self.local.events.is_empty() {
            let latest = self.db.latest_seq();
            self.end();
            return Ok(latest);
        }
        let req = Request {
            batch: std::mem::take(&mut self.local),
            iso: self.iso,
            snapshot: self.snapshot,
            reads: std::mem::take(&mut self.reads),
            slot: SlotCell::new(),
        };
        let r = self.db.submit(req);
        self.end();
        r
    }

    /// Discard every change.
    pub fn rollback(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if self.registered {
            self.db.unregister(self.snapshot);
            self.registered = false;
        }
    }
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        self.end();
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
        let last = st.tables.get(&id)?.history.get(k)?.last()?.seq;
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
                let old = st.tables.get(t).and_then(|x| x.rows.get(k).map(|d| x.view_value(d, u64::MAX)));
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

/// A document must read back: no deeper than [`crate::table::doc::MAX_DEPTH`].
/// A row's document as the log and the row map keep it: its JSON text
/// (serialized here, in the committing thread, not by the group's leader).
fn row_doc(doc: &Value) -> Result<Arc<Doc>> {
    let text = serde_json::to_string(doc).map_err(|e| Error::Query(e.to_string()))?;
    Ok(Arc::new(Doc::from_string_unchecked(text)))
}

fn check_depth(table: &str, doc: &Value) -> Result<()> {
    if crate::table::doc::within_depth(doc) { Ok(()) } else { Err(depth_error(table)) }
}

fn depth_error(table: &str) -> Error {
    Error::Constraint(format!(
        "a document of table {table:?} nests arrays and objects deeper than {} levels",
        crate::table::doc::MAX_DEPTH
    ))
}
