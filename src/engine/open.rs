//! Opening a database: the latest snapshot of every table, then the log,
//! replayed; the rows checked and indexed.

use super::*;

/// Apply one log record while opening; returns the commit's index.
pub(super) fn replay_record(st: &mut State, kind: FileKind, pos: RecordPos, rec: &[u8]) -> Result<u32> {
    let name = crate::format::file_name(pos.file_id, kind);
    let c = RawCommit::decode(rec)
        .map_err(|e| Error::corrupted(&name, pos.offset, format!("commit record: {}", e.reason)))?;
    if c.first_seq != st.next_seq {
        return Err(Error::tampered(
            &name,
            pos.offset,
            format!("commit starts at seq {}, expected {}", c.first_seq, st.next_seq),
        ));
    }
    // Documents stay text (checked once the replay is over, for the rows
    // still current); events a table's snapshot already covers need none.
    let mut events = Vec::with_capacity(c.events.len());
    // Row versions the tree's runs do not hold yet go into its memtable.
    let want_versions = st.versions.is_some();
    let versions_from = st.versions_from;
    let mut versions = Vec::new();
    let rows_from = st.opening.as_ref().map(|o| &o.rows_from);
    let from = |table: u32| rows_from.and_then(|r| r.get(&table)).copied();
    for (i, e) in c.events.into_iter().enumerate() {
        let seq = c.first_seq + i as u64;
        let doc = match e.op {
            Op::CreateTable | Op::Compact | Op::Alter => match e.doc {
                Some(t) => Some(Arc::new(Doc::from_text(t).map_err(|err| {
                    Error::corrupted(&name, pos.offset, format!("commit record: event at seq {seq}: {err}"))
                })?)),
                None => None,
            },
            _ if from(e.table).is_none_or(|from| seq > from) => {
                e.doc.map(|t| Arc::new(Doc::from_text_unchecked(t).at(seq)))
            }
            _ => None,
        };
        // A row a snapshot covers needs no key made, unless its version
        // goes into the tree.
        let covered = from(e.table).is_some_and(|from| seq <= from);
        let to_tree = want_versions && seq > versions_from;
        let pk = if covered && !to_tree { None } else { e.key.map(crate::table::KeyRef::to_pk) };
        if to_tree
            && let Some(k) = &pk
            && let Some(v) = super::versions::entry(e.table, k, seq, e.op, e.doc)
        {
            versions.push(v);
        }
        let key = if covered { None } else { pk };
        events.push(Applied { op: e.op, table: e.table, key, doc, picks: None });
    }
    let ci = st.commits.len() as u32;
    st.version_batch = versions;
    st.apply_record(c.first_seq, c.time_micros, events, pos, rec.len())
        .map_err(|e| Error::corrupted(&name, pos.offset, e.to_string()))?;
    Ok(ci)
}

/// A row's indexed fields, as the index keys them.
pub(super) type RowKeys = Picked<IKey>;

/// The index keys of picked field values.
pub(super) fn ikeys(vals: Vec<Option<Value>>) -> Vec<Option<IKey>> {
    vals.into_iter().map(|v| v.and_then(crate::table::index::ikey_owned)).collect()
}

/// Check every current row of a table read at open (their documents are
/// still the text of the log's records) and build the table's secondary
/// indexes from them, in one pass, on up to four threads. `pre` holds, by
/// row in key order, the fields `pre_fields` already picked from rows whose
/// text was checked (`None`, or a list shorter than the rows: not done).
pub(super) fn check_rows_and_index(
    name: &str,
    t: &mut TableData,
    pre_fields: &[String],
    pre: Vec<Option<RowKeys>>,
) -> Result<()> {
    let fields: Vec<String> = t.indexes.keys().cloned().collect();
    let f: Vec<&str> = fields.iter().map(String::as_str).collect();
    // Where each field is in what was picked before (all of them, or unused).
    let at: Option<Vec<usize>> = fields.iter().map(|x| pre_fields.iter().position(|p| p == x)).collect();
    let mut pre = pre.into_iter();
    let mut rows: Vec<(&Pk, &Arc<Doc>, Option<RowKeys>)> =
        t.rows.iter().map(|(k, d)| (k, d, pre.next().flatten().filter(|_| at.is_some()))).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    // Each part of the rows (in key order) is checked and grouped by field
    // value on its own thread; the parts' groups, joined in order, stay in
    // key order.
    type Groups = Vec<BTreeMap<crate::table::index::IKey, Vec<Pk>>>;
    let pick = |part: &mut [(&Pk, &Arc<Doc>, Option<RowKeys>)]| -> Result<Groups> {
        let mut groups: Groups = f.iter().map(|_| BTreeMap::new()).collect();
        let add = |g: &mut BTreeMap<IKey, Vec<Pk>>, ik: IKey, k: &Pk| match g.get_mut(&ik) {
            Some(pks) => pks.push(k.clone()),
            None => {
                g.insert(ik, vec![k.clone()]);
            }
        };
        for (k, d, done) in part.iter_mut() {
            if !t.stale(d, u64::MAX)
                && let (Some(p), Some(at)) = (done.as_mut(), at.as_ref())
            {
                for (g, i) in groups.iter_mut().zip(at) {
                    if let Some(ik) = p.take(*i) {
                        add(g, ik, k);
                    }
                }
                continue;
            }
            // A row written before a schema change is indexed as it reads now.
            let vals = if t.stale(d, u64::MAX) {
                crate::table::doc::check(d.text(), &[])
                    .map_err(|e| Error::tampered(name, 0, format!("the document of row {k} is not valid JSON: {e}")))?;
                let v = t.view_value(d, u64::MAX);
                ikeys(f.iter().map(|x| v.get(*x).cloned()).collect())
            } else {
                ikeys(
                    crate::table::doc::check(d.text(), &f).map_err(|e| {
                        Error::tampered(name, 0, format!("the document of row {k} is not valid JSON: {e}"))
                    })?,
                )
            };
            for (g, v) in groups.iter_mut().zip(vals) {
                if let Some(ik) = v {
                    add(g, ik, k);
                }
            }
        }
        Ok(groups)
    };
    let parts: Vec<Result<Groups>> = if threads == 1 || rows.len() < 4096 {
        vec![pick(&mut rows)]
    } else {
        let n = rows.len().div_ceil(threads);
        std::thread::scope(|s| {
            let hs: Vec<_> = rows.chunks_mut(n).map(|part| s.spawn(|| pick(part))).collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(Error::Query("index build thread panicked".into()))))
                .collect()
        })
    };
    drop(rows);
    let mut merged: Groups = fields.iter().map(|_| BTreeMap::new()).collect();
    for part in parts {
        for (into, g) in merged.iter_mut().zip(part?) {
            for (ik, pks) in g {
                into.entry(ik).or_insert_with(Vec::new).extend(pks);
            }
        }
    }
    for (f, g) in fields.into_iter().zip(merged) {
        t.indexes.insert(f, Index::from_groups(g));
    }
    Ok(())
}

/// The top-level fields `names` of a document: from its parsed form, or
/// picked from its text in one pass (an error if the text does not parse).
pub(super) fn pick_fields(d: &Doc, names: &[&str]) -> std::result::Result<Vec<Option<Value>>, serde_json::Error> {
    if d.has_value() { Ok(d.fields(names)) } else { crate::table::doc::check(d.text(), names) }
}

/// Every row of a snapshot file, checked.
pub(super) fn load_snapshot(store: &Store, file: u64, seq: u64) -> Result<Rows> {
    // Snapshot rows are in key order: a bulk build, not an insert per row.
    Ok(load_snapshot_rows(store, file, seq, true)?.rows.into_iter().collect())
}

/// A snapshot's rows, in key order. Unless `checked`, the documents are
/// left unchecked for the caller (see [`Doc::from_text_unchecked`]).
pub(super) fn load_snapshot_rows(store: &Store, file: u64, seq: u64, checked: bool) -> Result<SnapRows> {
    let mut rows = Vec::new();
    let mut picked = Vec::new();
    let mut fields: Option<usize> = None;
    let name = crate::format::file_name(file, FileKind::Snapshot);
    store.read_file(file, |pos, rec| {
        let raw = decode_rows_raw(rec).map_err(|e| Error::corrupted(&name, pos.offset, e.reason))?;
        if fields.is_none_or(|f| f == raw.fields) {
            fields = Some(raw.fields);
            picked.extend(raw.picked);
        } else {
            fields = Some(0);
            picked = Vec::new();
        }
        for (k, v) in raw.rows {
            let d = if checked {
                Doc::from_text(v).map_err(|e| Error::corrupted(&name, pos.offset, format!("row {k}: {e}")))?
            } else {
                Doc::from_text_unchecked(v)
            };
            let d = d.at(seq);
            // Opening merges the log's later writes in by key order.
            if rows.last().is_some_and(|(last, _): &(Pk, Arc<Doc>)| *last >= k) {
                return Err(Error::corrupted(&name, pos.offset, format!("row {k} is out of key order")));
            }
            rows.push((k, Arc::new(d)));
        }
        Ok(())
    })?;
    let fields = fields.unwrap_or(0);
    if fields == 0 {
        picked = Vec::new();
    }
    Ok(SnapRows { rows, fields, picked })
}

/// A snapshot's rows, and the indexed values its records carry.
pub(super) struct SnapRows {
    /// In key order.
    pub(super) rows: Vec<(Pk, Arc<Doc>)>,
    /// Values per row (0: not every record carries them, or not as many).
    pub(super) fields: usize,
    /// `rows.len() × fields` values, in row order.
    pub(super) picked: Vec<Option<IKey>>,
}

/// A table's latest snapshot as loaded at open: its rows in key order and,
/// by row, the fields `fields` picked from the rows whose text checked.
pub(super) struct Loaded {
    pub(super) table: u32,
    pub(super) fields: Vec<String>,
    pub(super) rows: Vec<(Pk, Arc<Doc>)>,
    pub(super) picks: Vec<Option<RowKeys>>,
}

/// A table's rows at open: those the log wrote after its snapshot
/// (`written`, in key order), and the snapshot's rows (`snap`, in key order) the log
/// neither wrote nor deleted (`gone`) after it; with, by row of the result,
/// the snapshot row's `picks` (none for the rows the log wrote).
pub(super) fn merge_rows(
    snap: Vec<(Pk, Arc<Doc>)>,
    picks: Vec<Option<RowKeys>>,
    written: Vec<(Pk, Arc<Doc>)>,
    gone: Option<&FastSet<Pk>>,
) -> (Rows, Vec<Option<RowKeys>>) {
    if written.is_empty() && gone.is_none_or(|g| g.is_empty()) {
        return (snap.into_iter().collect(), picks);
    }
    let mut out = Vec::with_capacity(snap.len() + written.len());
    let mut out_picks = Vec::with_capacity(if picks.is_empty() { 0 } else { out.capacity() });
    let mut picks = picks.into_iter();
    let mut w = written.into_iter().peekable();
    for (k, d) in snap {
        let p = picks.next().flatten();
        while let Some(next) = w.next_if(|(wk, _)| *wk < k) {
            out.push(next);
            out_picks.push(None);
        }
        if w.peek().is_some_and(|(wk, _)| *wk == k) || gone.is_some_and(|g| g.contains(&k)) {
            continue;
        }
        out.push((k, d));
        out_picks.push(p);
    }
    out.extend(w);
    (out.into_iter().collect(), out_picks)
}

impl Db {
    /// Create a new database in `dir` (missing or empty).
    pub fn create(dir: impl AsRef<Path>, key: &KeySource, opts: Options) -> Result<Db> {
        let opts_rest = opts.clone();
        let store = Store::create(
            dir,
            key,
            CreateOptions { argon2: opts.argon2, allow_weak_kdf: opts.allow_weak_kdf, store: opts.store },
        )?;
        let tree = super::versions::open_tree(&store, &opts_rest)?;
        Ok(Db::from_store(store, State { next_seq: 1, versions: Some(tree), ..State::default() }, opts_rest))
    }

    /// Open a database: the key is checked first; then every table's latest
    /// snapshot is loaded (on a second thread) while the log is replayed
    /// (the row histories built on a third), and the two are merged. Rows
    /// are kept as the JSON text their records hold, and parsed when first
    /// read. A snapshot row is indexed by the values its record carries
    /// (its text was checked before it was written), or else checked and
    /// picked on the loading thread; every other current row is checked
    /// once (on up to four threads, building the secondary indexes in the
    /// same pass).
    pub fn open(dir: impl AsRef<Path>, key: &KeySource, opts: Options) -> Result<Db> {
        let mut store_opts = opts.store.clone();
        store_opts.expect_generation = store_opts.expect_generation.max(opts.expect_generation);
        let store = Store::open(dir, key, store_opts)?;
        if store.options().read_only {
            // A read-write open checks the files the manifest does not list
            // as it recovers; a read-only one does no recovery.
            store.check_unlisted()?;
        }
        // 1. The snapshots: registered, and the latest of each table chosen.
        let tree = super::versions::open_tree(&store, &opts)?;
        let mut st = State { next_seq: 1, versions_from: tree.flushed_seq(), versions: Some(tree), ..State::default() };
        let plan = SnapshotPlan::read(&store, &mut st)?;
        let mut opening = Opening::default();
        for (id, seq, _, _) in &plan.latest {
            opening.rows_from.insert(*id, *seq);
        }
        st.opening = Some(opening);
        // 2. The latest snapshots load on a second thread while this one
        // replays the log (and gives the version tree what its runs lack).
        let mut writer = WriterState::default();
        let wal_files = store.stream_files(WAL_STREAM).len();
        let loaded = replay(&store, &mut st, &plan, &mut writer)?;
        // 3. The rows merged, checked and indexed; the compaction horizons
        // put in place.
        let opening = st.opening.take().unwrap_or_default();
        settle(&store, &mut st, opening, loaded)?;
        // 4. The WAL checkpointed, and an interrupted re-encryption resumed.
        let db = Db::from_store(store, st, opts);
        if wal_files > 0 && !db.shared.store.options().read_only {
            let mut w = db.lock_writer();
            *w = writer;
            // Housekeeping: if it cannot be done now (a full disk, say),
            // the WAL stays and the next open tries again.
            match db.checkpoint(&mut w) {
                Err(e) if e.is_integrity() => return Err(e),
                _ => {}
            }
        } else {
            *db.lock_writer() = writer;
        }
        if db.shared.opts.resume_rotation
            && !db.shared.store.options().read_only
            && db.shared.store.poisoned().is_none()
        {
            db.start_reencryption(None);
        }
        Ok(db)
    }

    pub(super) fn from_store(store: Store, mut state: State, opts: Options) -> Db {
        let store = Arc::new(store);
        state.versions_due = false;
        let versions = state.versions.clone();
        let worker_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let worker = match &versions {
            Some(tree) if !store.options().read_only => {
                super::versions::start_worker(store.clone(), tree.clone(), worker_stop.clone())
            }
            _ => None,
        };
        let flusher = match opts.durability {
            Durability::RelaxedSyncEvery(every) if !store.options().read_only => {
                let (stop, rx) = std::sync::mpsc::channel::<()>();
                let s = store.clone();
                let thread = std::thread::Builder::new()
                    .name("driftdb-wal-sync".into())
                    .spawn(move || {
                        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                            // A failure poisons the store: the next commit reports it.
                            let _ = s.sync_stream(WAL_STREAM);
                        }
                    })
                    .ok();
                Some(Flusher { stop, thread })
            }
            _ => None,
        };
        Db {
            shared: Arc::new(Shared {
                store,
                state: RwLock::new(state),
                writer: Mutex::new(WriterState::default()),
                queue: Mutex::new(Vec::new()),
                arrived: std::sync::Condvar::new(),
                gather: Mutex::new(Gather::default()),
                opts,
                flusher: Mutex::new(flusher),
                rewriting: Mutex::new(()),
                rotator: Mutex::new(None),
                stop: std::sync::atomic::AtomicBool::new(false),
                rotating: std::sync::atomic::AtomicBool::new(false),
                snapshotter: Mutex::new(Snapshotter::default()),
                versions,
                tree_worker: Mutex::new(worker),
                tree_worker_stop: worker_stop,
            }),
            owner: true,
        }
    }
}

/// The latest snapshot of every table, chosen before the replay.
pub(super) struct SnapshotPlan {
    /// (table, sequence number, file, the fields its rows carry values of).
    pub(super) latest: Vec<(u32, u64, u64, Vec<String>)>,
}

impl SnapshotPlan {
    /// Register every snapshot file in `st` (oldest first per table) and
    /// pick each table's latest.
    pub(super) fn read(store: &Store, st: &mut State) -> Result<SnapshotPlan> {
        let mut metas = HashMap::new();
        for f in store.files() {
            if f.kind != FileKind::Snapshot || f.stream < SNAPSHOT_STREAM_BASE {
                continue;
            }
            let m = SnapMeta::decode(&f.meta)
                .map_err(|e| Error::corrupted(&f.name, 0, format!("snapshot metadata: {}", e.reason)))?;
            st.tables.entry(m.table).or_default().snapshots.push((m.seq, f.file_id));
            metas.insert(f.file_id, m);
        }
        let mut latest = Vec::new();
        for (id, t) in st.tables.iter_mut() {
            t.snapshots.sort_unstable();
            if let Some(&(seq, file)) = t.snapshots.last() {
                let fields = metas.remove(&file).map_or(Vec::new(), |m| m.indexes);
                latest.push((*id, seq, file, fields));
            }
        }
        Ok(SnapshotPlan { latest })
    }
}

/// Load the latest snapshot of every table, with each row's indexed fields:
/// the values a record carries (its text was checked before it was
/// written, and the record is authenticated, so it is not parsed), or else
/// picked from the checked text (rows that fail here are checked again,
/// and reported, if they are still current once the log is replayed).
fn load_latest(store: &Store, latest: &[(u32, u64, u64, Vec<String>)]) -> Result<Vec<Loaded>> {
    latest
        .iter()
        .map(|(id, seq, file, fields)| {
            let SnapRows { rows, fields: stored, picked } = load_snapshot_rows(store, *file, *seq, false)?;
            if stored > 0 && stored == fields.len() && picked.len() == rows.len() * stored {
                let mut values = picked.into_iter();
                let picks = rows
                    .iter()
                    .map(|_| match stored {
                        1 => Some(Picked::One(values.next().flatten())),
                        _ => Some(Picked::Many(values.by_ref().take(stored).collect())),
                    })
                    .collect();
                return Ok(Loaded { table: *id, fields: fields.clone(), rows, picks });
            }
            let f: Vec<&str> = fields.iter().map(String::as_str).collect();
            let pick = |part: &[(Pk, Arc<Doc>)]| -> Vec<Option<RowKeys>> {
                part.iter()
                    .map(|(_, d)| crate::table::doc::check(d.text(), &f).ok().map(|v| Picked::from_vec(ikeys(v))))
                    .collect()
            };
            // In two halves, the second on a thread of its own: this
            // thread is the longest of the open, and the replay's
            // thread finishes first and leaves a core free.
            let picks = match (f.is_empty(), rows.len() >= 4096) {
                (true, _) => Vec::new(),
                (false, false) => pick(&rows),
                (false, true) => {
                    let (a, b) = rows.split_at(rows.len() / 2);
                    std::thread::scope(|s| {
                        let second = s.spawn(|| pick(b));
                        let mut picks = pick(a);
                        match second.join() {
                            Ok(p) => picks.extend(p),
                            // Not picked: checked again once the log is replayed.
                            Err(_) => picks.resize(rows.len(), None),
                        }
                        picks
                    })
                }
            };
            Ok(Loaded { table: *id, fields: fields.clone(), rows, picks })
        })
        .collect()
}

/// Replay the log (the segments, then what the WAL holds beyond them) into
/// `st` while the latest snapshots load on a second thread. The WAL's
/// commits go to `writer` (to be checkpointed). Returns the loaded snapshots.
fn replay(store: &Store, st: &mut State, plan: &SnapshotPlan, writer: &mut WriterState) -> Result<Vec<Loaded>> {
    let (replayed, loaded) = std::thread::scope(|s| {
        let loader = std::thread::Builder::new()
            .name("driftdb-open".into())
            .spawn_scoped(s, || load_latest(store, &plan.latest));
        let replayed = replay_log(store, st, writer);
        let loaded = match loader {
            Ok(h) => h.join().unwrap_or_else(|_| Err(Error::Poisoned("the snapshot loading thread panicked".into()))),
            Err(_) => load_latest(store, &plan.latest),
        };
        (replayed, loaded)
    });
    replayed?;
    loaded
}

/// Replay the segments, then the commits the WAL holds beyond them (a WAL
/// file already checkpointed may still be there if a crash came before its
/// deletion: its commits are skipped).
fn replay_log(store: &Store, st: &mut State, writer: &mut WriterState) -> Result<()> {
    store.read_stream(EVENTS_STREAM, |pos, rec| {
        replay_record(st, FileKind::Segment, pos, rec)?;
        flush_versions_while_opening(store, st)
    })?;
    store.read_stream(WAL_STREAM, |pos, rec| {
        let name = crate::format::file_name(pos.file_id, FileKind::Wal);
        let c = Commit::decode_headers(rec)
            .map_err(|e| Error::corrupted(&name, pos.offset, format!("commit record: {}", e.reason)))?;
        let end = c.first_seq + c.events.len() as u64;
        if end <= st.next_seq {
            return Ok(());
        }
        if c.first_seq < st.next_seq {
            return Err(Error::tampered(
                &name,
                pos.offset,
                format!("commit @seq:{} overlaps the segments' last commit", c.first_seq),
            ));
        }
        let ci = replay_record(st, FileKind::Wal, pos, rec)?;
        flush_versions_while_opening(store, st)?;
        writer.pending_bytes += rec.len() as u64;
        writer.pending.push((ci, rec.to_vec()));
        Ok(())
    })
}

/// While opening: write the tree's memtable out once it is full (the log
/// it comes from is durable), unless the store is read-only (then the
/// versions the runs lack stay in memory).
fn flush_versions_while_opening(store: &Store, st: &mut State) -> Result<()> {
    if st.versions_due && !store.options().read_only {
        st.versions_due = false;
        if let Some(tree) = &st.versions {
            tree.flush(store)?;
        }
    }
    Ok(())
}

/// After the replay: every table's rows (the log's writes over its
/// snapshot's rows), checked and indexed; and the version tree folded at
/// each compaction horizon.
fn settle(store: &Store, st: &mut State, opening: Opening, loaded: Vec<Loaded>) -> Result<()> {
    let deleted = opening.deleted;
    // The rows the log wrote, in key order: each key's last write (a
    // stable sort keeps a key's writes in log order, and finds the runs
    // a log in key order is made of), unless it is a delete.
    let mut written: FastMap<u32, Vec<(Pk, Arc<Doc>)>> = opening
        .rows
        .into_iter()
        .map(|(id, mut writes)| {
            settle_writes(&mut writes);
            (id, writes.into_iter().filter_map(|(k, d)| Some((k, d?))).collect())
        })
        .collect();
    let mut picked: HashMap<u32, (Vec<String>, Vec<Option<RowKeys>>)> = HashMap::new();
    for l in loaded {
        let t = st.tables.entry(l.table).or_default();
        let w = written.remove(&l.table).unwrap_or_default();
        let (rows, picks) = merge_rows(l.rows, l.picks, w, deleted.get(&l.table));
        t.rows = rows;
        picked.insert(l.table, (l.fields, picks));
    }
    for (id, w) in written {
        st.tables.entry(id).or_default().rows = w.into_iter().collect();
    }
    let latest = st.latest_seq();
    if let Some((id, from)) = opening.rows_from.iter().find(|(_, f)| **f > latest) {
        return Err(Error::tampered(
            "keyring",
            0,
            format!("a snapshot of table {id} is at @seq:{from}, past the end of the event log (@seq:{latest})"),
        ));
    }
    for (id, t) in st.tables.iter_mut() {
        let name = st.defs.get(id).map_or_else(|| format!("table {id}"), |d| format!("table {:?}", d.name));
        let (fields, picks) = picked.remove(id).unwrap_or_default();
        check_rows_and_index(&name, t, &fields, picks)?;
    }
    let horizons: Vec<(u32, u64, Option<u64>)> = st
        .tables
        .iter()
        .filter(|(_, t)| t.horizon > 0)
        .map(|(id, t)| (*id, t.horizon, t.snapshots.iter().find(|(s, _)| *s == t.horizon).map(|(_, f)| *f)))
        .collect();
    for (id, h, snap) in horizons {
        let snap = snap.ok_or_else(|| {
            Error::tampered(
                "keyring",
                0,
                format!("the snapshot at the compaction horizon @seq:{h} of table {id} is missing"),
            )
        })?;
        let rows = load_snapshot(store, snap, h)?;
        st.drop_snapshots_before(id, h);
        // The version tree: folded at this horizon already, or folded now
        // (and, unless read-only, the versions the fold hides reclaimed).
        if let Some(tree) = st.versions.clone() {
            let marker = super::versions::folded_at(&tree, id)?;
            let Some(t) = st.tables.get_mut(&id) else { continue };
            if marker >= h {
                t.folded_at = marker;
            } else {
                super::versions::fold(&tree, t, id, h, &rows);
                if !store.options().read_only {
                    super::versions::reclaim(&tree, store, id, h)?;
                }
            }
        }
    }
    if let Some(tree) = &st.versions
        && tree.flushed_seq() > latest
    {
        return Err(Error::tampered(
            "keyring",
            0,
            format!(
                "the version tree holds a version at @seq:{}, past the end of the event log (@seq:{latest})",
                tree.flushed_seq()
            ),
        ));
    }
    Ok(())
}
