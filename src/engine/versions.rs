//! Row versions in the version tree (`storage::tree`, keys and values as
//! `table::version` encodes them): every insert, patch and soft delete is
//! one entry, so that a row as of any point is one seek reading one block,
//! a row's history is one range, and a table as of any point is one scan.
//!
//! The tree is derived from the log: each commit's versions go into its
//! memtable as the commit applies (under the state's write lock, so a
//! reader that sees a sequence number finds its versions), a background
//! worker flushes full memtables into runs (after syncing the WAL, so no
//! run holds a version the log could lose) and merges runs, and opening
//! replays into the memtable only the versions after the newest one in a
//! run. A database written before the tree existed gets its versions at
//! its first open, a memtable at a time.
//!
//! `COMPACT` folds: the rows live at the horizon go in as one `Folded`
//! version each at the horizon, with a marker, and a rewrite of the tree
//! drops the table's older versions. Until the marker is in, reads ignore
//! nothing; after it, they ignore the table's versions at or before the
//! marker's horizon except the folded ones.

use super::*;
use crate::storage::runs::BlockCache;
use crate::storage::tree::{Tree, TreeOptions};
use crate::table::index::{IKey, Probe};
use crate::table::version::{self as ver, VersionOp};
use std::collections::BTreeSet;

/// The stream of the version tree's runs.
pub const VERSIONS_STREAM: u32 = 4;

/// Open the version tree of `store`.
pub(super) fn open_tree(store: &Store, opts: &Options) -> Result<Arc<Tree>> {
    let cache = Arc::new(BlockCache::new(opts.cache_bytes));
    let tree = Tree::open(
        store,
        cache,
        TreeOptions {
            stream: VERSIONS_STREAM,
            shape: ver::shape,
            memtable_bytes: usize::try_from(opts.memtable_bytes).unwrap_or(usize::MAX).max(1),
            ..TreeOptions::default()
        },
    )?;
    Ok(Arc::new(tree))
}

/// A version's entry, for an event of `op` on `key` at `seq`.
pub(super) fn entry(table: u32, key: &Pk, seq: u64, op: Op, doc: Option<&str>) -> Option<(Vec<u8>, Vec<u8>)> {
    let (vop, doc) = match op {
        // A row event always carries its document; one without reads as
        // `null`, as the row map holds it.
        Op::Insert => (VersionOp::Insert, doc.or(Some("null"))),
        Op::Patch => (VersionOp::Patch, doc.or(Some("null"))),
        Op::SoftDelete => (VersionOp::SoftDelete, doc),
        _ => return None,
    };
    Some((ver::version_key(table, key, seq), ver::encode_value(vop, doc)))
}

/// The last sequence number of the newest commit the tree holds an entry
/// of (0: none).
pub(super) fn newest_commit_end(tree: &Tree) -> Result<u64> {
    // (No filter: commit entries are not in the runs' filters.)
    match tree.view().seek(&[ver::NS_COMMIT], None)? {
        Some((k, v)) if k.first() == Some(&ver::NS_COMMIT) => {
            let (first, len, _) = ver::decode_commit(&k, &v).map_err(|e| damaged(&e))?;
            Ok(first + u64::from(len) - 1)
        }
        _ => Ok(0),
    }
}

/// The commit holding sequence number `seq`, or the newest before it:
/// (first sequence number, events, time).
pub(super) fn commit_at(tree: &Tree, seq: u64) -> Result<Option<(u64, u32, i64)>> {
    match tree.view().seek(&ver::commit_key(seq), None)? {
        Some((k, v)) if k.first() == Some(&ver::NS_COMMIT) => {
            Ok(Some(ver::decode_commit(&k, &v).map_err(|e| damaged(&e))?))
        }
        _ => Ok(None),
    }
}

/// The last sequence number of the newest commit at or before time `t`.
pub(super) fn commit_end_at_time(tree: &Tree, t: i64) -> Result<Option<u64>> {
    match tree.view().seek(&ver::commit_time_key(t, u64::MAX), None)? {
        Some((k, v)) if k.first() == Some(&ver::NS_COMMIT_TIME) => {
            Ok(Some(ver::decode_commit_time(&k, &v).map_err(|e| damaged(&e))?.2))
        }
        _ => Ok(None),
    }
}

/// An index entry: from `seq` on, row `key` does (`holds`) or does not
/// hold value `v` in index `ix` of table `table`.
pub(super) fn index_entry(
    table: u32,
    ix: ver::IndexId,
    v: &IKey,
    key: &Pk,
    seq: u64,
    holds: bool,
) -> (Vec<u8>, Vec<u8>) {
    (ver::index_key(table, ix, v, key, seq), ver::index_entry_value(holds))
}

/// The keys of the rows of table `table` whose value in index `ix`
/// answers `probe` against `lit` as of `at` (see [`Probe`]); `None` if
/// `lit` is not indexable. One range of the tree: each (value, key)
/// pair's newest entry at or before `at` says whether the row held it.
pub(super) fn index_candidates(
    view: &crate::storage::tree::TreeView,
    table: u32,
    ix: ver::IndexId,
    probe: Probe,
    lit: &Value,
    at: u64,
) -> Result<Option<BTreeSet<Pk>>> {
    let Some(k) = crate::table::index::ikey(lit) else { return Ok(None) };
    let (type_lo, type_hi) = ver::index_type_range(table, ix, &k);
    let value = ver::index_value_prefix(table, ix, &k);
    let value_end = crate::format::run::key::prefix_end(&value).unwrap_or_else(|| type_hi.clone());
    let (start, end) = match probe {
        Probe::Eq => (value, value_end),
        Probe::AtMost => (type_lo, value_end),
        Probe::AtLeast => (value, type_hi),
    };
    let mut it = view.range(&start, Some(&end))?;
    let mut out = BTreeSet::new();
    let mut decided: Vec<u8> = Vec::new();
    while it.valid() {
        let key = it.key();
        let (n, seq) = ver::split_index_key(key).ok_or_else(|| damaged_index("not an index entry key"))?;
        if seq > at || (!decided.is_empty() && key[..n] == decided[..]) {
            it.advance()?;
            continue;
        }
        decided.clear();
        decided.extend_from_slice(&key[..n]);
        if ver::decode_index_value(it.value()).map_err(|e| damaged(&e))? {
            out.insert(ver::decode_index_key(key).map_err(|e| damaged(&e))?.key);
        }
        it.advance()?;
    }
    Ok(Some(out))
}

fn damaged_index(reason: &str) -> Error {
    Error::tampered("version tree", 0, format!("index entry: {reason}"))
}

/// What reading a table's versions needs of its state: its schema changes
/// (documents are read through them) and the horizon it is folded at.
#[derive(Clone, Copy)]
pub(super) struct Shape<'a> {
    pub(super) alters: &'a [(u64, Alter)],
    pub(super) folded_at: u64,
}

impl TableData {
    /// What reading its versions needs.
    pub(super) fn shape(&self) -> Shape<'_> {
        Shape { alters: &self.alters, folded_at: self.folded_at }
    }
}

/// Whether the version of a row event (table, key, document of `doc_len`
/// bytes) fits a run's block: a commit that holds one that does not is
/// refused (its record alone may fit a frame, its version would not).
pub(super) fn fits(table: u32, key: &Pk, doc_len: usize) -> bool {
    // A block's kind and count, an entry's three varints, the key and the
    // op byte before the document. A key takes at most twice its bytes
    // and 16 more: only a document near the limit needs its key encoded.
    let at_most = |key_len: usize| 5 + 15 + key_len + 8 + 1 + doc_len <= crate::format::run::MAX_RUN_PAYLOAD;
    let longest = match key {
        Pk::Int(_) => 16,
        Pk::Str(s) => 2 * s.len() + 16,
    };
    at_most(longest) || at_most(ver::row_prefix(table, key).len())
}

/// A version read back.
pub(crate) struct Found {
    /// Its sequence number (a folded version's: its horizon).
    pub(crate) seq: u64,
    pub(crate) op: VersionOp,
    pub(crate) text: Option<String>,
}

impl Found {
    /// Its document as read at `at` through the table's schema changes.
    pub(super) fn value_at(&self, t: Shape<'_>, at: u64) -> Result<Option<Value>> {
        self.text.as_deref().map(|text| parse_at(text, t, self.seq, at)).transpose()
    }

    /// The row's document after it, as written (at its own sequence
    /// number); `None` if the row is not live.
    pub(super) fn into_doc(self) -> Option<Arc<Doc>> {
        match self.text {
            Some(text) if self.op.is_live() => Some(Arc::new(Doc::from_string_unchecked(text).at(self.seq))),
            _ => None,
        }
    }
}

/// A version's document (`text`, written at `seq`) read through the schema
/// changes after it up to `at`: parsed strictly (a document that does not
/// parse is an error, never a row that reads as null).
fn parse_at(text: &str, t: Shape<'_>, seq: u64, at: u64) -> Result<Value> {
    let mut v: Value = serde_json::from_str(text)
        .map_err(|e| Error::Internal(format!("a row version at @seq:{seq} does not parse: {e}")))?;
    apply_between(t.alters, seq, at, &mut v);
    Ok(v)
}

/// Whether a version is read: anything after the horizon the table's
/// versions were folded at, and at the horizon itself a live row's
/// version. There a row has its folded version, or a version written at
/// exactly that point, or both under the same key (the fold replaces it):
/// both are the same document, so whichever run holds the entry read is
/// right, and it reads as the folded version. A soft delete at the horizon
/// is not read (the row was not live there: it has no folded version).
fn visible(op: VersionOp, seq: u64, folded_at: u64) -> bool {
    seq > folded_at || (seq == folded_at && op.is_live())
}

fn damaged(e: &crate::format::codec::DecodeError) -> Error {
    Error::tampered("version tree", 0, e.reason.clone())
}

/// A row version key's row prefix length and sequence number.
fn split(k: &[u8]) -> Result<(usize, u64)> {
    ver::split_key(k).ok_or_else(|| Error::tampered("version tree", 0, "not a row version key"))
}

fn found(k: &[u8], v: &[u8]) -> Result<Found> {
    let (_, seq) = split(k)?;
    let (op, text) = ver::decode_value(v).map_err(|e| damaged(&e))?;
    Ok(Found { seq, op, text: text.map(str::to_owned) })
}

/// The newest version of row `key` at or before `at` that is read.
pub(super) fn version_at(tree: &Tree, t: Shape<'_>, table: u32, key: &Pk, at: u64) -> Result<Option<Found>> {
    version_at_in(&tree.view(), t, table, key, at)
}

/// [`version_at`] in the tree as `view` holds it.
fn version_at_in(
    view: &crate::storage::tree::TreeView,
    t: Shape<'_>,
    table: u32,
    key: &Pk,
    at: u64,
) -> Result<Option<Found>> {
    let prefix = ver::row_prefix(table, key);
    let Some((k, v)) = view.seek(&ver::version_key(table, key, at), Some(&prefix))? else {
        return Ok(None);
    };
    let f = found(&k, &v)?;
    // Versions are newest first: one hidden by the fold hides all older.
    Ok(visible(f.op, f.seq, t.folded_at).then_some(f))
}

/// The sequence number of row `key`'s newest version (live or not).
pub(super) fn newest_seq(tree: &Tree, t: Shape<'_>, table: u32, key: &Pk) -> Result<Option<u64>> {
    Ok(version_at(tree, t, table, key, u64::MAX)?.map(|f| f.seq))
}

/// Every version of row `key` that is read, oldest first.
pub(super) fn row_versions(tree: &Tree, t: Shape<'_>, table: u32, key: &Pk) -> Result<Vec<Found>> {
    let prefix = ver::row_prefix(table, key);
    let end = crate::format::run::key::prefix_end(&prefix);
    let mut it = tree.view().range(&prefix, end.as_deref())?;
    let mut out = Vec::new();
    while it.valid() {
        let mut f = found(it.key(), it.value())?;
        if !visible(f.op, f.seq, t.folded_at) {
            break;
        }
        if f.seq == t.folded_at {
            f.op = VersionOp::Folded;
        }
        out.push(f);
        it.advance()?;
    }
    out.reverse();
    Ok(out)
}

/// Table `table`'s rows as of `at`, in key order, each read through the
/// schema changes up to `at`.
/// `view` is the tree as it was when `t` was read (a `COMPACT` that runs
/// meanwhile cannot take the versions it reads away).
pub(super) fn rows_at(view: &crate::storage::tree::TreeView, t: Shape<'_>, table: u32, at: u64) -> Result<Rows> {
    let mut rows = Rows::new();
    for_each_row_at(view, t, table, at, |k, d| {
        rows.insert(k, d);
        Ok(())
    })?;
    Ok(rows)
}

/// Call `f` with each of table `table`'s rows as of `at`, in key order,
/// each read through the schema changes up to `at` (streamed: one block
/// of each run at a time is held).
pub(super) fn for_each_row_at(
    view: &crate::storage::tree::TreeView,
    t: Shape<'_>,
    table: u32,
    at: u64,
    mut f: impl FnMut(Pk, Arc<Doc>) -> Result<()>,
) -> Result<()> {
    let prefix = ver::table_prefix(table);
    let end = crate::format::run::key::prefix_end(&prefix);
    let mut it = view.range(&prefix, end.as_deref())?;
    // The row prefix of the last row decided (its newest version at or
    // before `at` found, or its versions found hidden).
    let mut decided: Vec<u8> = Vec::new();
    while it.valid() {
        let k = it.key();
        let (n, seq) = split(k)?;
        if seq > at || (!decided.is_empty() && k[..n] == decided[..]) {
            it.advance()?;
            continue;
        }
        decided.clear();
        decided.extend_from_slice(&k[..n]);
        let (op, text) = ver::decode_value(it.value()).map_err(|e| damaged(&e))?;
        if visible(op, seq, t.folded_at)
            && op.is_live()
            && let Some(text) = text
        {
            let key = ver::decode_key(k).map_err(|e| damaged(&e))?.key;
            let mut d = Arc::new(Doc::from_text_unchecked(text).at(seq));
            if any_between(t.alters, seq, at) {
                d = Arc::new(Doc::from_value(parse_at(d.text(), t, seq, at)?));
            }
            f(key, d)?;
        }
        it.advance()?;
    }
    Ok(())
}

/// Row `key`'s document as of `at` in `view`, read through the schema
/// changes up to `at`.
pub(super) fn doc_at(
    view: &crate::storage::tree::TreeView,
    t: Shape<'_>,
    table: u32,
    key: &Pk,
    at: u64,
) -> Result<Option<Arc<Doc>>> {
    let Some(d) = version_at_in(view, t, table, key, at)?.and_then(Found::into_doc) else { return Ok(None) };
    if any_between(t.alters, d.seq(), at) {
        return Ok(Some(Arc::new(Doc::from_value(parse_at(d.text(), t, d.seq(), at)?))));
    }
    Ok(Some(d))
}

/// Row `key`'s current document, as written (at its own sequence number:
/// read it through the schema changes after it with `TableData::view`).
pub(super) fn current(tree: &Tree, t: Shape<'_>, table: u32, key: &Pk) -> Result<Option<Arc<Doc>>> {
    Ok(version_at(tree, t, table, key, u64::MAX)?.and_then(Found::into_doc))
}

/// Counts of table `table`'s versions read now: (at or before `h`, after it).
pub(super) fn count_versions(tree: &Tree, t: Shape<'_>, table: u32, h: u64) -> Result<(u64, u64)> {
    let prefix = ver::table_prefix(table);
    let end = crate::format::run::key::prefix_end(&prefix);
    let mut it = tree.view().range(&prefix, end.as_deref())?;
    let (mut before, mut after) = (0, 0);
    while it.valid() {
        let k = it.key();
        let (_, seq) = split(k)?;
        let (op, _) = ver::decode_value(it.value()).map_err(|e| damaged(&e))?;
        if visible(op, seq, t.folded_at) && seq > t.folded_at {
            if seq <= h { before += 1 } else { after += 1 }
        }
        it.advance()?;
    }
    Ok((before, after))
}

/// The newest horizon table `table`'s versions were folded at (0: none).
pub(super) fn folded_at(tree: &Tree, table: u32) -> Result<u64> {
    let p = ver::fold_prefix(table);
    match tree.view().seek(&p, None)? {
        Some((k, _)) if k.starts_with(&p) => Ok(ver::decode_fold_key(&k).map_err(|e| damaged(&e))?.1),
        _ => Ok(0),
    }
}

/// Fold table `table`'s versions at horizon `h` into `live` (its rows as
/// of `h`, read at `h`): they go into the memtable as folded versions with
/// the marker, and from then on the table's older versions are not read.
/// The caller holds the state's write lock (`t` is the table's state).
pub(super) fn fold(tree: &Tree, t: &mut TableData, table: u32, h: u64, live: &Rows) {
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = live
        .iter()
        .map(|(k, d)| (ver::version_key(table, k, h), ver::encode_value(VersionOp::Folded, Some(d.text()))))
        .collect();
    entries.push((ver::fold_key(table, h), Vec::new()));
    tree.insert(entries);
    t.folded_at = t.folded_at.max(h);
}

/// The index entries of table `table` (its state `t`, folded at `h`)
/// as its row versions imply them, for every current index from
/// `max(h, its id's sequence number)` on: a row's value then, then an
/// entry at each later version that changes it. Opening makes them after
/// it folds a table whose versions at or before `h` were not in the tree
/// (a database of an earlier format, whose log no longer holds the folded
/// documents): the entries made while the log was replayed missed those
/// rows, and are a subset of these.
pub(super) fn index_entries_since_fold(
    view: &crate::storage::tree::TreeView,
    t: &TableData,
    table: u32,
    h: u64,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    if t.indexes.is_empty() {
        return Ok(out);
    }
    let prefix = ver::table_prefix(table);
    let end = crate::format::run::key::prefix_end(&prefix);
    let mut it = view.range(&prefix, end.as_deref())?;
    // One row's visible versions, newest first: (seq, document if live).
    let mut row: Vec<(u64, Option<Arc<Doc>>)> = Vec::new();
    let mut row_prefix: Vec<u8> = Vec::new();
    let mut row_key: Option<Pk> = None;
    let emit = |key: &Pk, versions: &mut Vec<(u64, Option<Arc<Doc>>)>, out: &mut Vec<(Vec<u8>, Vec<u8>)>| {
        versions.reverse();
        for (f, ix) in &t.indexes {
            let start = h.max(ix.0);
            let value = |d: &Option<Arc<Doc>>| {
                d.as_ref().and_then(|d| t.view_field(d, f)).and_then(crate::table::index::ikey_owned)
            };
            let n = versions.partition_point(|(s, _)| *s <= start);
            let mut cur = n.checked_sub(1).and_then(|i| value(&versions[i].1));
            if let Some(v) = &cur {
                out.push(index_entry(table, *ix, v, key, start, true));
            }
            let enc = |v: &Option<IKey>| v.as_ref().map(ver::encode_index_value);
            for (seq, d) in &versions[n..] {
                let new = value(d);
                if enc(&new) != enc(&cur) {
                    if let Some(o) = &cur {
                        out.push(index_entry(table, *ix, o, key, *seq, false));
                    }
                    if let Some(v) = &new {
                        out.push(index_entry(table, *ix, v, key, *seq, true));
                    }
                    cur = new;
                }
            }
        }
        versions.clear();
    };
    while it.valid() {
        let k = it.key();
        let (n, seq) = split(k)?;
        if row_prefix.as_slice() != &k[..n] {
            if let Some(key) = row_key.take() {
                emit(&key, &mut row, &mut out);
            }
            row_prefix.clear();
            row_prefix.extend_from_slice(&k[..n]);
            row_key = Some(ver::decode_key(k).map_err(|e| damaged(&e))?.key);
        }
        let (op, text) = ver::decode_value(it.value()).map_err(|e| damaged(&e))?;
        if visible(op, seq, t.folded_at) {
            let doc = match (op.is_live(), text) {
                (true, Some(text)) => Some(Arc::new(Doc::from_text_unchecked(text).at(seq))),
                _ => None,
            };
            row.push((seq, doc));
        }
        it.advance()?;
    }
    if let Some(key) = row_key.take() {
        emit(&key, &mut row, &mut out);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Rewrite the tree without table `table`'s versions the fold at `h`
/// hides: the space they took is given back, and nothing of them stays on
/// disk in the runs.
pub(super) fn reclaim(tree: &Tree, store: &Store, table: u32, h: u64) -> Result<()> {
    let prefix = ver::table_prefix(table);
    let fold = ver::fold_prefix(table);
    let hidden = move |k: &[u8], v: &[u8]| -> bool {
        if k.starts_with(&fold) {
            // Older markers of the table.
            return ver::decode_fold_key(k).is_ok_and(|(_, m)| m < h);
        }
        if !k.starts_with(&prefix) {
            return false;
        }
        match (ver::split_key(k), ver::decode_value(v)) {
            (Some((_, seq)), Ok((op, _))) => !visible(op, seq, h),
            _ => false,
        }
    };
    tree.rewrite(store, &hidden, Vec::new())
}

/// The background worker of the version tree: flushes full memtables
/// (the WAL synced first) and merges runs, woken by commits; a failure is
/// logged and tried again at the next wake-up (the memtable stays in
/// memory meanwhile, and nothing is lost).
pub(super) struct TreeWorker {
    pub(super) wake: std::sync::mpsc::SyncSender<()>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

pub(super) fn start_worker(
    store: Arc<Store>,
    tree: Arc<Tree>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Option<TreeWorker> {
    let (wake, rx) = std::sync::mpsc::sync_channel::<()>(1);
    let thread = std::thread::Builder::new()
        .name("driftdb-versions".into())
        .spawn(move || {
            use std::sync::atomic::Ordering::Relaxed;
            loop {
                match rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
                if stop.load(Relaxed) {
                    return;
                }
                if let Err(e) = flush(&store, &tree) {
                    log::warn!("flushing row versions: {e}");
                    continue;
                }
                while !stop.load(Relaxed) && tree.merge_due() {
                    if let Err(e) = tree.merge_once(&store) {
                        log::warn!("merging row version runs: {e}");
                        break;
                    }
                    // Commits went on meanwhile: their memtable first.
                    if let Err(e) = flush(&store, &tree) {
                        log::warn!("flushing row versions: {e}");
                        break;
                    }
                }
            }
        })
        .ok()?;
    Some(TreeWorker { wake, thread: Some(thread) })
}

/// Flush the memtable if it is due: frozen first, the WAL synced, then
/// written (no run may hold a version whose commit a crash could still lose).
pub(super) fn flush(store: &Store, tree: &Tree) -> Result<()> {
    if !tree.flush_due() || store.options().read_only {
        return Ok(());
    }
    tree.freeze();
    store.sync_stream(WAL_STREAM)?;
    tree.flush_frozen(store)?;
    Ok(())
}
