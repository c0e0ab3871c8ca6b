//! Reads: point gets, scans and queries, now and `AS OF` any past commit,
//! and a row's history.

use super::*;

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
        AsOf::Seq(n) => Ok(match versions::commit_at(st.tree()?, *n)? {
            Some((first, len, _)) if first + u64::from(len) - 1 <= *n => first + u64::from(len) - 1,
            Some((first, _, _)) => first - 1,
            None => 0,
        }),
        AsOf::Time(text, t) => {
            if *t > now_micros().max(st.last_time) {
                return Err(Error::Query(format!("AS OF {text:?} is in the future")));
            }
            // Commit times never decrease: one seek of the commits by time.
            versions::commit_end_at_time(st.tree()?, *t)?
                .ok_or_else(|| Error::Query(format!("AS OF {text:?} is before the first commit")))
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
        st.current_value(def.id, key)
    }

    /// The document of a row as of sequence number `seq`: its newest
    /// version at or before `seq` in the version tree (one block read).
    pub fn get_as_of(&self, table: &str, key: &Pk, seq: u64) -> Result<Option<Value>> {
        let st = self.state();
        let seq = resolve(&st, &AsOf::Seq(seq))?;
        let def = table_at(&st, table, seq)?;
        let Some(t) = st.tables.get(&def.id) else { return Ok(None) };
        self.version_value(t, def.id, key, seq)
    }

    /// The version tree.
    pub(super) fn tree(&self) -> Result<&crate::storage::tree::Tree> {
        self.shared.versions.as_deref().ok_or_else(|| Error::Internal("the database has no version tree".into()))
    }

    /// Row `key` of table `id` (its state `t`) as of `seq`, read through
    /// the schema changes up to `seq`.
    pub(super) fn version_value(&self, t: &TableData, id: u32, key: &Pk, seq: u64) -> Result<Option<Value>> {
        match versions::version_at(self.tree()?, t.shape(), id, key, seq)? {
            Some(f) if f.op.is_live() => f.value_at(t.shape(), seq),
            _ => Ok(None),
        }
    }

    /// A row's whole history, oldest first (one range of the version
    /// tree); a row folded by `COMPACT` starts with its state at the
    /// horizon, as `COMPACTED`.
    pub fn history(&self, table: &str, key: &Pk) -> Result<Vec<HistoryEntry>> {
        let st = self.state();
        let def = st.table(table)?;
        let found = match st.tables.get(&def.id) {
            Some(t) => versions::row_versions(self.tree()?, t.shape(), def.id, key)?,
            None => Vec::new(),
        };
        if found.is_empty() {
            return Err(Error::NotFound(format!("no row with key {key} in table {table:?}, now or ever")));
        }
        let mut out = Vec::with_capacity(found.len());
        for f in found {
            let op = match f.op {
                crate::table::version::VersionOp::Insert => Op::Insert.name(),
                crate::table::version::VersionOp::Patch => Op::Patch.name(),
                crate::table::version::VersionOp::SoftDelete => Op::SoftDelete.name(),
                crate::table::version::VersionOp::Folded => "COMPACTED",
            };
            let doc = match &f.text {
                Some(text) => serde_json::from_str(text)
                    .map_err(|e| Error::Internal(format!("a row version at @seq:{} does not parse: {e}", f.seq)))?,
                None => Value::Null,
            };
            let time = versions::commit_at(self.tree()?, f.seq)?.map_or(0, |(_, _, t)| t);
            out.push(HistoryEntry { seq: f.seq, time: format_rfc3339(time), op, doc });
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
    /// The version tree as of the read is taken under the state lock and
    /// read without it, so writers are not held up by long reads.
    pub fn scan(&self, table: &str, as_of: Option<&AsOf>) -> Result<Vec<Arc<Doc>>> {
        let (id, seq, alters, folded_at, view) = {
            let st = self.state();
            let seq = match as_of {
                None => st.latest_seq(),
                Some(a) => resolve(&st, a)?,
            };
            let def = table_at(&st, table, seq)?;
            let Some(t) = st.tables.get(&def.id) else { return Ok(Vec::new()) };
            let alters: Vec<(u64, Alter)> = t.alters.iter().take_while(|(s, _)| *s <= seq).cloned().collect();
            // The tree as of the horizon just checked: a `COMPACT` that
            // folds past `seq` meanwhile cannot take its versions from it.
            (def.id, seq, alters, t.folded_at, self.tree()?.view())
        };
        // Read without the lock: commits only add versions after `seq`.
        let shape = versions::Shape { alters: &alters, folded_at };
        Ok(versions::rows_at(&view, shape, id, seq)?.into_values().collect())
    }

    /// A table's rows at `seq` (a commit boundary), from the version tree.
    pub(super) fn rows_at(&self, id: u32, t: &TableData, seq: u64) -> Result<Rows> {
        versions::rows_at(&self.tree()?.view(), t.shape(), id, seq)
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
                let read = CurrentRead::new(self, &st, id)?;
                drop(st);
                // Read without the lock: commits only add versions after it.
                return read.select(sel);
            }
        }
        self.select_full_scan(sel)
    }

    /// A `SELECT` over the current rows of table `id`, through an index
    /// when one applies (read under the caller's lock on the state).
    pub(crate) fn select_current(&self, st: &State, id: u32, sel: &Select) -> Result<Vec<Value>> {
        CurrentRead::new(self, st, id)?.select(sel)
    }

    /// The sequence number an `AS OF` names now.
    pub(crate) fn resolve_as_of(&self, a: &AsOf) -> Result<u64> {
        resolve(&self.state(), a)
    }

    /// A row as of `seq`, for a transaction registered at `seq` or earlier
    /// (its horizon cannot pass `seq`), from the version tree.
    pub(crate) fn doc_at_snapshot(&self, st: &State, id: u32, key: &Pk, seq: u64) -> Result<Option<Value>> {
        let Some(t) = st.tables.get(&id) else { return Ok(None) };
        self.version_value(t, id, key, seq)
    }

    /// Table `id`'s rows as of `seq`, for a transaction registered at `seq`
    /// or earlier (its horizon cannot pass `seq`), from the version tree.
    pub(crate) fn rows_at_snapshot(&self, st: &State, id: u32, seq: u64) -> Result<Rows> {
        let Some(t) = st.tables.get(&id) else { return Ok(BTreeMap::new()) };
        self.rows_at(id, t, seq)
    }

    /// Run a `SELECT` without using any index (for checking index answers).
    #[doc(hidden)]
    pub fn select_full_scan(&self, sel: &Select) -> Result<Vec<Value>> {
        let docs = self.scan(&sel.table, sel.as_of.as_ref())?;
        crate::query::eval::run_select(sel, docs.into_iter())
    }
}

/// A read of a table's current rows: what it needs of the state, taken
/// under the state lock (the tree as of the latest sequence number), so
/// that the reading itself needs no lock.
pub(crate) struct CurrentRead {
    id: u32,
    at: u64,
    alters: Vec<(u64, Alter)>,
    folded_at: u64,
    indexes: BTreeMap<String, crate::table::version::IndexId>,
    /// The primary key's field (`=` and `IN` on it read those rows only).
    pk: String,
    view: Option<crate::storage::tree::TreeView>,
}

impl CurrentRead {
    pub(crate) fn new(db: &Db, st: &State, id: u32) -> Result<CurrentRead> {
        let at = st.latest_seq();
        let pk = st.defs.get(&id).map(|d| d.pk.clone()).unwrap_or_default();
        Ok(match st.tables.get(&id) {
            Some(t) => CurrentRead {
                id,
                at,
                alters: t.alters.clone(),
                folded_at: t.folded_at,
                indexes: t.indexes.clone(),
                pk,
                view: Some(db.tree()?.view()),
            },
            None => CurrentRead { id, at, alters: Vec::new(), folded_at: 0, indexes: BTreeMap::new(), pk, view: None },
        })
    }

    fn shape(&self) -> versions::Shape<'_> {
        versions::Shape { alters: &self.alters, folded_at: self.folded_at }
    }

    /// The candidate keys the primary key or an index gives for `filter`,
    /// if one applies.
    fn index_plan(&self, view: &crate::storage::tree::TreeView, filter: &Expr) -> Result<Option<BTreeSet<Pk>>> {
        crate::query::plan::plan(filter, &mut |field, probe, lit| {
            if field == self.pk && probe == crate::table::index::Probe::Eq {
                // A row's key is its primary key field (which never
                // changes); a literal that is no key leaves the scan.
                return Ok(Pk::from_json(lit).map(|k| BTreeSet::from([k])));
            }
            match self.indexes.get(field) {
                Some(ix) => versions::index_candidates(view, self.id, *ix, probe, lit, self.at),
                None => Ok(None),
            }
        })
    }

    /// Run `sel` over the rows.
    pub(crate) fn select(&self, sel: &Select) -> Result<Vec<Value>> {
        let Some(view) = &self.view else { return crate::query::eval::run_select(sel, std::iter::empty()) };
        if let Some(f) = &sel.filter
            && let Some(keys) = self.index_plan(view, f)?
        {
            let mut docs: Vec<Arc<Doc>> = Vec::with_capacity(keys.len());
            for k in &keys {
                if let Some(d) = versions::doc_at(view, self.shape(), self.id, k, self.at)? {
                    docs.push(d);
                }
            }
            return crate::query::eval::run_select(sel, docs.into_iter());
        }
        let rows = versions::rows_at(view, self.shape(), self.id, self.at)?;
        crate::query::eval::run_select(sel, rows.into_values())
    }
}
