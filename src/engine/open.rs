//! Opening a database: the catalog and counters from the log (row events
//! that a table's latest snapshot counts are skipped), and the version
//! tree (rows, their history and the secondary indexes) caught up with it.

use super::*;

/// Apply one log record while opening.
pub(super) fn replay_record(st: &mut State, kind: FileKind, pos: RecordPos, rec: &[u8]) -> Result<()> {
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
    let index_from = st.index_from;
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
            // A row a snapshot covers needs no document or key made,
            // unless its version (and index entries) go into the tree.
            _ if from(e.table).is_none_or(|from| seq > from) || (want_versions && seq > index_from) => {
                e.doc.map(|t| Arc::new(Doc::from_text_unchecked(t).at(seq)))
            }
            _ => None,
        };
        let covered = from(e.table).is_some_and(|from| seq <= from);
        let to_tree = want_versions && seq > versions_from;
        let pk =
            if covered && !(want_versions && seq > index_from) { None } else { e.key.map(crate::table::KeyRef::to_pk) };
        if to_tree
            && let Some(k) = &pk
            && let Some(v) = super::versions::entry(e.table, k, seq, e.op, e.doc)
        {
            versions.push(v);
        }
        events.push(Applied { op: e.op, table: e.table, key: pk, doc, picks: None });
    }
    st.version_batch = versions;
    st.apply_record(c.first_seq, c.time_micros, events, rec.len())
        .map_err(|e| Error::corrupted(&name, pos.offset, e.to_string()))
}

/// The top-level fields `names` of a document: from its parsed form, or
/// picked from its text in one pass (an error if the text does not parse).
pub(super) fn pick_fields(d: &Doc, names: &[&str]) -> std::result::Result<Vec<Option<Value>>, serde_json::Error> {
    if d.has_value() { Ok(d.fields(names)) } else { crate::table::doc::check(d.text(), names) }
}

/// Every row of a snapshot file, checked.
pub(super) fn load_snapshot(store: &Store, file: u64, seq: u64) -> Result<Rows> {
    // Snapshot rows are in key order: a bulk build, not an insert per row.
    Ok(load_snapshot_rows(store, file, seq, true)?.into_iter().collect())
}

/// A snapshot's rows, in key order. Unless `checked`, the documents are
/// left unchecked for the caller (see [`Doc::from_text_unchecked`]).
pub(super) fn load_snapshot_rows(store: &Store, file: u64, seq: u64, checked: bool) -> Result<Vec<(Pk, Arc<Doc>)>> {
    let mut rows: Vec<(Pk, Arc<Doc>)> = Vec::new();
    let name = crate::format::file_name(file, FileKind::Snapshot);
    store.read_file(file, |pos, rec| {
        let raw = decode_rows_raw(rec).map_err(|e| Error::corrupted(&name, pos.offset, e.reason))?;
        for (k, v) in raw.rows {
            let d = if checked {
                Doc::from_text(v).map_err(|e| Error::corrupted(&name, pos.offset, format!("row {k}: {e}")))?
            } else {
                Doc::from_text_unchecked(v)
            };
            if rows.last().is_some_and(|(last, _)| *last >= k) {
                return Err(Error::corrupted(&name, pos.offset, format!("row {k} is out of key order")));
            }
            rows.push((k, Arc::new(d.at(seq))));
        }
        Ok(())
    })?;
    Ok(rows)
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

    /// Open a database: the key is checked first; then the log is
    /// replayed for the catalog, the schemas and the counters (the row
    /// events a table's latest snapshot counts are skipped, and the
    /// version tree gets the versions and index entries its runs lack),
    /// and tables are folded at their compaction horizons. Rows and
    /// indexes stay in the tree.
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
        let commits_from = super::versions::newest_commit_end(&tree)?;
        let mut st = State {
            next_seq: 1,
            versions_from: tree.flushed_seq(),
            commits_from,
            versions: Some(tree),
            ..State::default()
        };
        // The newest catalog checkpoint the runs hold: the state up to it.
        let tree = st.versions.clone().ok_or_else(|| Error::Internal("the database has no version tree".into()))?;
        let checkpoint = st.restore_catalog(&tree)?;
        // Runs without a single commit entry (and no checkpoint) were
        // written before index entries went into the tree (or hold only
        // part of a first, huge commit): the index entries of every event
        // are made again (they are the same where they exist).
        st.index_from = if checkpoint.is_none() && st.commits_from == 0 { 0 } else { st.versions_from };
        if checkpoint.is_some() {
            // Segment files rewritten since (their new ids are learned as
            // they are read).
            let live: FastSet<u64> = store.stream_files(EVENTS_STREAM).iter().map(|f| f.file_id).collect();
            st.segment_starts.retain(|f, _| live.contains(f));
        }
        let plan = SnapshotPlan::read(&store, &mut st)?;
        let mut opening = Opening::default();
        // A table's latest snapshot after the checkpoint (or any, without
        // one) counts its rows and events up to it.
        let from = checkpoint.unwrap_or(0);
        for (id, seq, rows) in &plan.latest {
            if checkpoint.is_none() || *seq > from {
                opening.rows_from.insert(*id, *seq);
                let t = st.tables.entry(*id).or_default();
                t.live = *rows;
                if checkpoint.is_some() {
                    t.since_events = 0;
                    t.since_bytes = 0;
                }
            }
        }
        st.opening = Some(opening);
        // 2. The log replayed after the checkpoint (the version tree given
        // what its runs lack).
        let mut writer = WriterState::default();
        let wal_files = store.stream_files(WAL_STREAM).len();
        replay_log(&store, &mut st, &mut writer, checkpoint.unwrap_or(0))?;
        // 3. The compaction horizons put in place.
        let opening = st.opening.take().unwrap_or_default();
        settle(&store, &mut st, opening)?;
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
    /// (table, sequence number, the rows it holds).
    pub(super) latest: Vec<(u32, u64, u64)>,
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
                let rows = metas.get(&file).map_or(0, |m| m.rows);
                latest.push((*id, seq, rows));
            }
        }
        Ok(SnapshotPlan { latest })
    }
}

/// Replay the segments, then the commits the WAL holds beyond them (a WAL
/// file already checkpointed may still be there if a crash came before its
/// deletion: its commits are skipped). The commits up to `restored` (a
/// catalog checkpoint's sequence number; 0: none) are in the state already:
/// a segment file whose next file starts at or before the one after it is
/// not read, and their records are only looked at (a WAL record of theirs
/// not yet in the segments still goes to `writer`, to be checkpointed).
fn replay_log(store: &Store, st: &mut State, writer: &mut WriterState, restored: u64) -> Result<()> {
    // The last sequence number the segments hold.
    let mut seg_end = 0u64;
    let files = store.stream_files(EVENTS_STREAM);
    for (i, f) in files.iter().enumerate() {
        let next_start = files.get(i + 1).and_then(|n| st.segment_starts.get(&n.file_id).copied());
        if restored > 0
            && let Some(next) = next_start
            && next > 0
            && next - 1 <= restored
        {
            seg_end = seg_end.max(next - 1);
            continue;
        }
        store.read_file(f.file_id, |pos, rec| {
            let name = crate::format::file_name(pos.file_id, FileKind::Segment);
            let (first, n) = RawCommit::peek(rec)
                .map_err(|e| Error::corrupted(&name, pos.offset, format!("commit record: {}", e.reason)))?;
            let end = first + n - 1;
            st.segment_starts.entry(pos.file_id).or_insert(first);
            seg_end = seg_end.max(end);
            if end <= restored {
                return Ok(());
            }
            if first <= restored {
                return Err(Error::tampered(
                    &name,
                    pos.offset,
                    format!("commit @seq:{first} overlaps the catalog checkpoint at @seq:{restored}"),
                ));
            }
            replay_record(st, FileKind::Segment, pos, rec)?;
            flush_versions_while_opening(store, st)
        })?;
    }
    if restored == 0 {
        seg_end = st.latest_seq();
    }
    // The WAL: what the segments lack, in order.
    let mut wal_next = seg_end + 1;
    store.read_stream(WAL_STREAM, |pos, rec| {
        let name = crate::format::file_name(pos.file_id, FileKind::Wal);
        let (first, n) = RawCommit::peek(rec)
            .map_err(|e| Error::corrupted(&name, pos.offset, format!("commit record: {}", e.reason)))?;
        let end = first + n - 1;
        if end <= seg_end {
            return Ok(());
        }
        if first != wal_next {
            return Err(Error::tampered(
                &name,
                pos.offset,
                if first < wal_next {
                    format!("commit @seq:{first} overlaps the segments' last commit")
                } else {
                    format!("commit starts at seq {first}, expected {wal_next}")
                },
            ));
        }
        wal_next = end + 1;
        if end > restored {
            replay_record(st, FileKind::Wal, pos, rec)?;
            flush_versions_while_opening(store, st)?;
        }
        writer.pending_bytes += rec.len() as u64;
        writer.pending.push((first, rec.to_vec()));
        Ok(())
    })?;
    let log_end = seg_end.max(wal_next - 1);
    if restored > log_end {
        return Err(Error::tampered(
            "version tree",
            0,
            format!("the catalog checkpoint is at @seq:{restored}, past the end of the log (@seq:{log_end})"),
        ));
    }
    Ok(())
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

/// After the replay: the version tree folded at each compaction horizon.
fn settle(store: &Store, st: &mut State, opening: Opening) -> Result<()> {
    let latest = st.latest_seq();
    if let Some((id, from)) = opening.rows_from.iter().find(|(_, f)| **f > latest) {
        return Err(Error::tampered(
            "keyring",
            0,
            format!("a snapshot of table {id} is at @seq:{from}, past the end of the event log (@seq:{latest})"),
        ));
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
        st.drop_snapshots_before(id, h);
        // The version tree: folded at this horizon already, or folded now
        // (and, unless read-only, the versions the fold hides reclaimed).
        let remake_indexes = st.index_from == 0 && st.versions_from > 0;
        if let Some(tree) = st.versions.clone() {
            let marker = super::versions::folded_at(&tree, id)?;
            let Some(t) = st.tables.get_mut(&id) else { continue };
            if marker >= h {
                t.folded_at = marker;
                // Index entries made again (runs written before they were in
                // the tree): the rows folded at the marker have theirs from it.
                if remake_indexes {
                    let entries = super::versions::index_entries_since_fold(&tree.view(), t, id, marker)?;
                    if !entries.is_empty() {
                        tree.insert(entries);
                    }
                }
            } else {
                let rows = load_snapshot(store, snap, h)?;
                super::versions::fold(&tree, t, id, h, &rows);
                // The indexes as the history from the fold on implies them
                // (what the replay made for them lacked the folded rows).
                let entries = super::versions::index_entries_since_fold(&tree.view(), t, id, h)?;
                if !entries.is_empty() {
                    tree.insert(entries);
                }
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
