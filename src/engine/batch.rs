//! A transaction's staged changes: every operation checked against the view
//! the transaction reads, and turned into events at commit.

use super::*;

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

/// A row's indexed fields, picked from its document (`None`: missing), in
/// the order of the field list they were picked for: one kept inline (a
/// table with one index: no allocation per row), more in a vector. As JSON
/// values when a commit stages a row ([`Picks`]), as index keys when a
/// snapshot row is read at open.
#[derive(Clone)]
pub(crate) enum Picked<T> {
    One(Option<T>),
    Many(Vec<Option<T>>),
}

impl<T> Picked<T> {
    pub(super) fn from_vec(mut v: Vec<Option<T>>) -> Picked<T> {
        if v.len() == 1 { Picked::One(v.pop().flatten()) } else { Picked::Many(v) }
    }

    /// The value of field `i`, taken out.
    pub(super) fn take(&mut self, i: usize) -> Option<T> {
        match self {
            Picked::One(v) if i == 0 => v.take(),
            Picked::One(_) => None,
            Picked::Many(v) => v.get_mut(i).and_then(Option::take),
        }
    }
}

/// The values of a staged document's indexed fields `names`.
pub(crate) struct Picks {
    pub names: Arc<[String]>,
    pub values: Picked<Value>,
}

impl Picks {
    /// The values of fields `fields`, in that order, if every one of them was picked.
    pub fn take(mut self, fields: &[&str]) -> Option<Vec<Option<Value>>> {
        fields
            .iter()
            .map(|f| {
                let i = self.names.iter().position(|x| x == f)?;
                Some(self.values.take(i))
            })
            .collect()
    }
}

/// The longest string primary key, in bytes (its entries in the version
/// tree must fit a run's key limit whatever bytes it holds).
pub const MAX_KEY_BYTES: usize = 4096;

/// Tables whose names begin with this are DriftDB's own (the migration
/// history): readable, never written by statements.
pub const SYSTEM_PREFIX: &str = "_drift";

pub(super) fn check_name(kind: &str, n: &str) -> Result<()> {
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
        self.through_staged_alters(k.0, Some(i), &mut doc);
        Some(doc)
    }

    /// A document read through this batch's schema changes to table `id`
    /// after event `after` (all of them for `None`).
    pub fn through_staged_alters(&self, id: u32, after: Option<usize>, doc: &mut Option<Value>) {
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
        self.through_staged_alters(id, None, &mut doc);
        Ok(doc)
    }

    /// Refuse writes to DriftDB's own tables from statements.
    pub(super) fn writable(&self, table: &str) -> Result<()> {
        if table.starts_with(SYSTEM_PREFIX) && !self.system {
            return Err(Error::Query(format!(
                "table {table:?} belongs to DriftDB (names beginning with {SYSTEM_PREFIX:?} are reserved): it can be read, not written"
            )));
        }
        Ok(())
    }

    /// Check and add one change.
    pub fn stage(&mut self, v: &dyn View, op: TxnOp) -> Result<()> {
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

    pub(super) fn create_table(&mut self, v: &dyn View, name: &str, pk: &str, indexes: &[String]) -> Result<()> {
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
    pub(super) fn key_of(def: &TableDef, table: &str, doc: &Value) -> Result<Pk> {
        let Value::Object(m) = doc else {
            return Err(Error::Query(format!("INSERT INTO {table}: the document must be a JSON object")));
        };
        Self::key_from(def, table, m.get(&def.pk))
    }

    /// The primary key from the value of the key field `v`: an integer, or
    /// a string of at most [`MAX_KEY_BYTES`] bytes.
    pub(super) fn key_from(def: &TableDef, table: &str, v: Option<&Value>) -> Result<Pk> {
        match v {
            None | Some(Value::Null) => {
                Err(Error::Query(format!("INSERT INTO {table}: the document has no primary key field {:?}", def.pk)))
            }
            Some(v) => {
                let k = Pk::from_json(v).ok_or_else(|| {
                    Error::Query(format!(
                        "INSERT INTO {table}: primary key {:?} must be a string or an integer, not {v}",
                        def.pk
                    ))
                })?;
                if let Pk::Str(s) = &k
                    && s.len() > MAX_KEY_BYTES
                {
                    return Err(Error::Query(format!(
                        "INSERT INTO {table}: primary key {:?} is {} bytes long, more than the limit of {MAX_KEY_BYTES}",
                        def.pk,
                        s.len()
                    )));
                }
                Ok(k)
            }
        }
    }

    pub(super) fn insert(&mut self, v: &dyn View, table: &str, doc: Value) -> Result<()> {
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
    pub(super) fn insert_text(&mut self, v: &dyn View, table: &str, text: String) -> Result<()> {
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
            Picks { names, values: Picked::from_vec(picked.drain(1..).collect()) }
        });
        if let Some(p) = &indexed
            && !self.pick_names.iter().any(|(t, n)| *t == id && Arc::ptr_eq(n, &p.names))
        {
            self.pick_names.retain(|(t, _)| *t != id);
            self.pick_names.push((id, p.names.clone()));
        }
        self.push_insert(v, table, id, key, Arc::new(Doc::from_string_unchecked(text)), indexed)
    }

    pub(super) fn push_insert(
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

    pub(super) fn patch(&mut self, v: &dyn View, table: &str, key: &Pk, set: Map<String, Value>) -> Result<()> {
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

    pub(super) fn alter(&mut self, v: &dyn View, table: &str, alter: Alter) -> Result<()> {
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

    pub(super) fn soft_delete(&mut self, v: &dyn View, table: &str, key: &Pk) -> Result<()> {
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

/// A row's document as the log and the row map keep it: its JSON text
/// (serialized here, in the committing thread, not by the group's leader).
pub(super) fn row_doc(doc: &Value) -> Result<Arc<Doc>> {
    let text = serde_json::to_string(doc).map_err(|e| Error::Query(e.to_string()))?;
    Ok(Arc::new(Doc::from_string_unchecked(text)))
}

/// A document must read back: no deeper than [`crate::table::doc::MAX_DEPTH`].
pub(super) fn check_depth(table: &str, doc: &Value) -> Result<()> {
    if crate::table::doc::within_depth(doc) { Ok(()) } else { Err(depth_error(table)) }
}

/// The error for a document nested too deep.
pub(super) fn depth_error(table: &str) -> Error {
    Error::Constraint(format!(
        "a document of table {table:?} nests arrays and objects deeper than {} levels",
        crate::table::doc::MAX_DEPTH
    ))
}
