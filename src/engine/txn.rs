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

use super::*;

/// A transaction. Obtained from [`Db::begin`]; dropping it without
/// [`Txn::commit`] rolls it back.
pub struct Txn<'db> {
    pub(super) db: &'db Db,
    pub(super) iso: Isolation,
    pub(super) snapshot: u64,
    pub(super) local: Batch,
    pub(super) reads: ReadSet,
    pub(super) registered: bool,
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
    pub(super) fn with_view<R>(&self, f: impl FnOnce(&dyn View, &State) -> Result<R>) -> Result<R> {
        let st = self.db.state();
        match self.iso {
            Isolation::ReadCommitted => f(&GroupView::new(&st), &st),
            _ => f(&SnapshotView { db: self.db, st: &st, seq: self.snapshot }, &st),
        }
    }

    pub(super) fn stage(&mut self, op: TxnOp) -> Result<()> {
        let mut local = std::mem::take(&mut self.local);
        let r = self.with_view(|v, _| local.stage(v, op));
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
    /// parsed value would; a field given twice is refused. The
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
        let st = self.db.state();
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
                Some(_) => {
                    let at = if at_latest { st.latest_seq() } else { self.snapshot };
                    snap = self.db.rows_at_snapshot(st, def.id, at)?;
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
                local.through_staged_alters(def.id, None, &mut v);
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
        let sel = select_of(driftql)?;
        rows_as(self.select(&sel)?)
    }

    /// Commit: returns the sequence number of the transaction's last event
    /// (the latest sequence number if it changed nothing). Durable when it
    /// returns (with [`Durability::Immediate`]). A conflict is
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

    pub(super) fn end(&mut self) {
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
