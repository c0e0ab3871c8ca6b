//! The database: tables of JSON documents over the encrypted store.
//!
//! Every change is an event in one database-wide, append-only log. A commit
//! is one record holding all its events, so it is on disk entirely or not at
//! all. It is first written to the write-ahead log (stream [`WAL_STREAM`],
//! files of their own with their own data keys) and synced before the call
//! that made it returns; concurrent committers share that fsync (group
//! commit: the first to take the writer lock writes everyone's queued commits
//! and syncs once). A checkpoint later copies the logged commits into the
//! event segments (stream [`EVENTS_STREAM`]), syncs them and deletes the WAL
//! files; opening replays whatever the WAL holds beyond the segments.
//!
//! Current rows live in memory; the history of each row is indexed in memory
//! by sequence number and read back from the log, so any past state can be
//! reconstructed. Readers take a read lock on that state and never wait for
//! an fsync.

use crate::query::ast::{AsOf, Select, Stmt};
use crate::storage::store::{CreateOptions, Edit, RecordPos, Store, StoreOptions};
use crate::table::index::{IKey, Index};
use crate::table::schema::{Alter, any_between, apply_between};
use crate::table::snapshot::{SNAPSHOT_STREAM_BASE, SnapMeta, decode_rows_raw, encode_rows};
use crate::table::time::{format_rfc3339, now_micros};
use crate::table::{Commit, Doc, Event, FastMap, FastSet, Op, Pk, RawCommit, TableDef};
use crate::txn::{Accepted, Batch, GroupView, Isolation, Picks, Request, Slot, SlotCell};
use crate::{Argon2Params, Error, FileKind, KeySource, Result};
use serde_json::{Map, Value};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use crate::txn::Txn;

/// The segment stream holding every checkpointed commit.
pub const EVENTS_STREAM: u32 = 1;
/// The write-ahead log stream: commits not yet checkpointed.
pub const WAL_STREAM: u32 = 2;

/// When a commit is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// The write-ahead log is fsynced before `commit` returns (the default).
    #[default]
    Immediate,
    /// NOT durable on return: `commit` returns once the commit is written
    /// to the operating system, and a background thread fsyncs the
    /// write-ahead log at this interval. A crash (of the machine, not only
    /// the process) can lose the commits of about the last interval; what
    /// survives is always a prefix of the history, each commit whole.
    RelaxedSyncEvery(Duration),
}

/// Options for [`Db::create`] and [`Db::open`].
#[derive(Clone)]
pub struct Options {
    /// Storage options (file system, segment size, read-only...).
    pub store: StoreOptions,
    /// Argon2id cost for a new passphrase-protected database.
    pub argon2: Argon2Params,
    /// Snapshot a table automatically after this many of its events (or
    /// as many events as it had rows at its last snapshot, if more: snapshot
    /// cost stays linear in the events). Automatic snapshots are written on
    /// a background thread while commits go on ([`Db::wait_for_snapshots`]
    /// waits for them); [`Db::snapshot`] writes one at once.
    pub snapshot_every_events: u64,
    /// ... or after this many bytes of its events (once at least half its
    /// row count in events has accumulated).
    pub snapshot_every_bytes: u64,
    /// When a commit is durable.
    pub durability: Durability,
    /// Checkpoint the write-ahead log into the segments once it holds this
    /// many bytes (it is also checkpointed on open and on close).
    pub checkpoint_bytes: u64,
    /// On open, resume an interrupted re-encryption in the background.
    pub resume_rotation: bool,
    /// Accept Argon2id parameters below the floor of
    /// [`Argon2Params::check_strength`] for a new passphrase (tests only).
    pub allow_weak_kdf: bool,
    /// Refuse to open a database whose keyring generation
    /// ([`Db::keyring_generation`]) is below this: pin the newest
    /// generation the application has seen (kept somewhere the database's
    /// disk is not), and an older copy of the whole directory put back in
    /// place is refused ([`Error::RolledBack`]). The same as
    /// [`StoreOptions::expect_generation`]; the larger of the two applies.
    pub expect_generation: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            store: StoreOptions::default(),
            argon2: Argon2Params::default(),
            snapshot_every_events: 10_000,
            snapshot_every_bytes: 64 << 20,
            durability: Durability::Immediate,
            checkpoint_bytes: 8 << 20,
            resume_rotation: true,
            allow_weak_kdf: false,
            expect_generation: None,
        }
    }
}

/// What a compaction would do ([`Db::compaction_preview`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CompactionPreview {
    /// The horizon it would move to.
    pub horizon: u64,
    /// The table's horizon now (0: all history kept).
    pub current_horizon: u64,
    /// Row events (insert, patch, soft delete) it would fold.
    pub events_folded: u64,
    /// Row events it would keep (after the horizon).
    pub events_kept: u64,
    /// The database's latest sequence number.
    pub latest_seq: u64,
}

/// One event of a row's history (`SHOW DRIFT`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistoryEntry {
    /// Sequence number.
    pub seq: u64,
    /// Commit time, RFC 3339.
    pub time: String,
    /// `INSERT`, `PATCH` or `SOFT_DELETE`.
    pub op: &'static str,
    /// The document after the event (for `SOFT_DELETE`, the document deleted).
    pub doc: Value,
}

/// What a statement produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A write committed at this sequence number.
    Committed(u64),
    /// Result rows.
    Rows(Vec<Value>),
    /// A row's history.
    Drift(Vec<HistoryEntry>),
    /// Table definitions.
    Tables(Vec<TableDef>),
    /// A snapshot was taken at this sequence number.
    Snapshot(u64),
    /// The table's history is folded up to this horizon.
    Compacted(u64),
    /// `BEGIN`: a transaction started.
    Began(Isolation),
    /// A change staged inside a transaction (committed by `COMMIT`).
    Staged,
    /// `ROLLBACK`: the transaction's changes were discarded.
    RolledBack,
    /// `EXPECT`: the check held; the value its query returned.
    Expected(Value),
}

#[derive(Clone, Copy)]
struct CommitMeta {
    first_seq: u64,
    len: u32,
    time: i64,
    pos: RecordPos,
}

#[derive(Clone, Copy)]
pub(crate) struct Hist {
    pub(crate) seq: u64,
    op: Op,
    commit: u32,
    idx: u32,
    /// The row's state at the table's compaction horizon (`seq` is the
    /// horizon); its document is in the horizon snapshot.
    folded: bool,
}

/// A row's history, oldest first: most rows have one event, kept inline.
#[derive(Clone)]
pub(crate) enum Hists {
    One(Hist),
    Many(Vec<Hist>),
}

impl Default for Hists {
    fn default() -> Hists {
        Hists::Many(Vec::new())
    }
}

impl std::ops::Deref for Hists {
    type Target = [Hist];
    fn deref(&self) -> &[Hist] {
        match self {
            Hists::One(h) => std::slice::from_ref(h),
            Hists::Many(v) => v,
        }
    }
}

impl Hists {
    fn push(&mut self, h: Hist) {
        match self {
            Hists::Many(v) if v.is_empty() => *self = Hists::One(h),
            Hists::Many(v) => v.push(h),
            Hists::One(first) => *self = Hists::Many(vec![*first, h]),
        }
    }

    fn to_vec_mut(&mut self) -> &mut Vec<Hist> {
        if let Hists::One(h) = *self {
            *self = Hists::Many(vec![h]);
        }
        match self {
            Hists::Many(v) => v,
            Hists::One(_) => unreachable_hists(),
        }
    }
}

#[allow(clippy::panic)]
#[cold]
fn unreachable_hists() -> ! {
    // `to_vec_mut` has just made it `Many`.
    panic!("history list is not a vector")
}

/// A row key as the history map holds it: inline when short, so that
/// building the map (a million entries at open) neither allocates per key
/// nor follows a pointer to hash or compare one.
#[derive(Clone, PartialEq, Eq)]
enum HKey {
    Int(i64),
    Short(u8, [u8; HKEY_INLINE]),
    Long(Box<str>),
}

const HKEY_INLINE: usize = 22;

impl std::hash::Hash for HKey {
    // One write per key, not one per part (equal keys have equal parts).
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        match self {
            HKey::Int(i) => h.write_i64(*i),
            HKey::Short(n, b) => {
                let mut buf = [0u8; HKEY_INLINE + 1];
                buf[0] = *n;
                buf[1..].copy_from_slice(b);
                h.write(&buf)
            }
            HKey::Long(s) => h.write(s.as_bytes()),
        }
    }
}

impl HKey {
    fn of(k: &Pk) -> HKey {
        HKey::of_ref(k.as_key_ref())
    }

    fn of_ref(k: crate::table::KeyRef<'_>) -> HKey {
        match k {
            crate::table::KeyRef::Int(i) => HKey::Int(i),
            crate::table::KeyRef::Str(s) if s.len() <= HKEY_INLINE => {
                let mut b = [0u8; HKEY_INLINE];
                b[..s.len()].copy_from_slice(s.as_bytes());
                HKey::Short(s.len() as u8, b)
            }
            crate::table::KeyRef::Str(s) => HKey::Long(s.into()),
        }
    }
}

/// Every row's history, by key, in shards picked by a hash of the key that
/// is independent of each shard's own: opening a database groups its
/// history entries by shard first and then builds one shard at a time,
/// so that each insert hits a table small enough to stay in cache instead
/// of one cache miss per event across a table of a million rows.
#[derive(Default)]
pub(crate) struct RowHistory {
    pick: foldhash::quality::RandomState,
    /// Empty until the first entry, then `HIST_SHARDS` maps.
    shards: Vec<FastMap<HKey, Hists>>,
}

/// Shards of a [`RowHistory`].
const HIST_SHARDS: usize = 256;

/// Events from which a commit's history entries are recorded on a thread
/// of their own while it is applied (below, a thread costs more than it saves).
const PARALLEL_APPLY: u64 = 256;

impl RowHistory {
    /// The shard of key `k`.
    fn shard_of(&self, k: &HKey) -> usize {
        use std::hash::BuildHasher;
        (self.pick.hash_one(k) >> 56) as usize % HIST_SHARDS
    }

    pub(crate) fn get(&self, k: &Pk) -> Option<&Hists> {
        let k = HKey::of(k);
        self.shards.get(self.shard_of(&k))?.get(&k)
    }

    /// The shards, made on first use.
    fn shards_mut(&mut self) -> &mut [FastMap<HKey, Hists>] {
        if self.shards.is_empty() {
            self.shards = (0..HIST_SHARDS).map(|_| FastMap::default()).collect();
        }
        &mut self.shards
    }

    fn shard_mut(&mut self, k: &HKey) -> &mut FastMap<HKey, Hists> {
        let i = self.shard_of(k);
        &mut self.shards_mut()[i]
    }

    fn push_key(&mut self, k: HKey, h: Hist) {
        self.shard_mut(&k).entry(k).or_default().push(h);
    }

    fn entry(&mut self, k: &Pk) -> &mut Hists {
        let k = HKey::of(k);
        self.shard_mut(&k).entry(k).or_default()
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Hists> {
        self.shards.iter_mut().flat_map(|m| m.values_mut())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|m| m.len()).sum()
    }

    fn retain_nonempty(&mut self) {
        for m in &mut self.shards {
            m.retain(|_, v| !v.is_empty());
        }
    }

    /// Add entries that all belong to shard `i` (see [`RowHistory::shard_of`]),
    /// in the order of their events.
    fn fill_shard(&mut self, i: usize, entries: Vec<(HKey, Hist)>) {
        if entries.is_empty() {
            return;
        }
        let Some(m) = self.shards_mut().get_mut(i) else { return };
        m.reserve(entries.len());
        for (k, h) in entries {
            m.entry(k).or_default().push(h);
        }
    }
}

#[derive(Default)]
pub(crate) struct TableData {
    pub(crate) rows: BTreeMap<Pk, Arc<Doc>>,
    pub(crate) history: RowHistory,
    /// Secondary indexes of the current rows, by field.
    indexes: BTreeMap<String, Index>,
    /// Snapshots: (sequence number, file id), oldest first.
    snapshots: Vec<(u64, u64)>,
    /// Events and bytes since the latest snapshot.
    since_events: u64,
    since_bytes: u64,
    /// History at or before this sequence number was folded by `COMPACT` (0: none).
    horizon: u64,
    /// Schema changes, in order: (sequence number, change).
    pub(crate) alters: Vec<(u64, Alter)>,
    /// The definition after its creation and after each schema change:
    /// (sequence number, definition), in order.
    schema: Vec<(u64, TableDef)>,
}

impl TableData {
    /// Whether `d` reads differently at `at` (a schema change after it).
    fn stale(&self, d: &Doc, at: u64) -> bool {
        stale_in(&self.alters, d, at)
    }

    /// A document as read at `at` (`u64::MAX`: now), as a new value.
    pub(crate) fn view_value(&self, d: &Doc, at: u64) -> Value {
        view_value_in(&self.alters, d, at)
    }

    /// A document as read at `at`: itself, or a new one if a schema change
    /// after it changes how it reads.
    pub(crate) fn view(&self, d: &Arc<Doc>, at: u64) -> Arc<Doc> {
        if !self.stale(d, at) {
            return d.clone();
        }
        Arc::new(Doc::from_value(self.view_value(d, at)))
    }

    /// A top-level field of a current document, as read now.
    fn view_field(&self, d: &Doc, f: &str) -> Option<Value> {
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

    /// An index on field `f` of the current rows, read now.
    fn build_index(&self, f: &str) -> Index {
        Index::from_pairs(self.rows.iter().map(|(k, d)| (self.view_field(d, f), k.clone())))
    }
}

/// Record a history entry: in the table's map, or, while opening, in the
/// batch for the thread that builds the maps.
fn push_history(open: &mut Option<Vec<(u32, HKey, Hist)>>, history: &mut RowHistory, table: u32, k: HKey, h: Hist) {
    match open {
        Some(batch) => batch.push((table, k, h)),
        None => history.push_key(k, h),
    }
}

/// Whether `d` reads differently at `at` under the schema changes `alters`.
fn stale_in(alters: &[(u64, Alter)], d: &Doc, at: u64) -> bool {
    !alters.is_empty() && d.seq() != u64::MAX && any_between(alters, d.seq(), at)
}

/// A document as read at `at` under the schema changes `alters`, as a new value.
fn view_value_in(alters: &[(u64, Alter)], d: &Doc, at: u64) -> Value {
    let mut v = d.to_value();
    if stale_in(alters, d, at) {
        apply_between(alters, d.seq(), at, &mut v);
    }
    v
}

/// Move row `key`'s entries in `indexes` from its old document to its new
/// one. Each document's indexed fields are picked in one pass over its
/// text; an old row written before a schema change is unindexed as it
/// read (parsed once, only then).
fn reindex(
    indexes: &mut BTreeMap<String, Index>,
    alters: &[(u64, Alter)],
    key: &Pk,
    old: Option<&Arc<Doc>>,
    new: Option<&Arc<Doc>>,
    picks: Option<Picks>,
) {
    if indexes.is_empty() {
        return;
    }
    let (old_vals, new_vals) = {
        let names: Vec<&str> = indexes.keys().map(String::as_str).collect();
        let old_vals = match old {
            Some(o) if stale_in(alters, o, u64::MAX) => {
                let v = view_value_in(alters, o, u64::MAX);
                names.iter().map(|f| v.get(*f).cloned()).collect()
            }
            Some(o) => o.fields(&names),
            None => Vec::new(),
        };
        let new_vals = match new {
            None => Vec::new(),
            Some(n) => picks.and_then(|p| p.take(&names)).unwrap_or_else(|| n.fields(&names)),
        };
        (old_vals, new_vals)
    };
    for (i, ix) in indexes.values_mut().enumerate() {
        if old.is_some() {
            ix.remove_value(old_vals.get(i).and_then(Option::as_ref), key);
        }
        if new.is_some() {
            ix.add_value(new_vals.get(i).and_then(Option::as_ref), key);
        }
    }
}

/// A row change, kept while a transaction that began before it is open.
pub(crate) struct Change {
    pub(crate) seq: u64,
    pub(crate) table: u32,
    pub(crate) key: Pk,
    pub(crate) old: Option<Arc<Doc>>,
    pub(crate) new: Option<Arc<Doc>>,
}

#[derive(Default)]
pub(crate) struct State {
    names: BTreeMap<String, u32>,
    pub(crate) defs: FastMap<u32, TableDef>,
    pub(crate) tables: FastMap<u32, TableData>,
    pub(crate) next_seq: u64,
    pub(crate) last_time: i64,
    commits: Vec<CommitMeta>,
    pub(crate) next_table_id: u32,
    /// Snapshots of the open `Snapshot`/`Serializable` transactions (count each).
    active: BTreeMap<u64, usize>,
    /// Row changes after the oldest open transaction's snapshot, in order.
    pub(crate) changes: VecDeque<Change>,
    /// Rows of table `t` up to this sequence number came from a snapshot:
    /// replay only indexes their history.
    rows_from: FastMap<u32, u64>,
    /// Maintain indexes as events apply (off while opening; built after).
    maintain_indexes: bool,
    /// While opening: keys the log deletes after their table's snapshot
    /// (whose rows are merged in once the replay is over).
    open_deleted: Option<FastMap<u32, FastSet<Pk>>>,
    /// While opening: what the log writes to each table's rows, in log
    /// order (`None`: a delete), put in key order once it is read (an
    /// insert into a large ordered map compares the key with every key of
    /// each node on its path; a log is mostly in key order already).
    open_rows: Option<FastMap<u32, LogWrites>>,
    /// While opening: history entries not yet handed to the thread that
    /// builds the history maps (see [`Db::open`]).
    open_history: Option<Vec<(u32, HKey, Hist)>>,
    /// Indexes built for a commit's schema changes before it applies
    /// (without the write lock): see [`Db::prebuild_indexes`].
    prebuilt: Vec<Prebuilt>,
}

/// What the log writes to a table's rows while opening, in log order
/// (`None`: a delete).
type LogWrites = Vec<(Pk, Option<Arc<Doc>>)>;

/// Put writes in key order, each key's last write only (a stable sort
/// keeps a key's writes in log order, and finds the runs of a log written
/// in key order).
fn settle_writes(writes: &mut LogWrites) {
    writes.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: LogWrites = Vec::with_capacity(writes.len());
    let mut it = std::mem::take(writes).into_iter().peekable();
    while let Some((k, d)) = it.next() {
        if it.peek().is_none_or(|(next, _)| *next != k) {
            out.push((k, d));
        }
    }
    *writes = out;
}

/// An index built ahead of the schema change at `seq` that needs it, from
/// the rows as they were before its commit, except the rows its commit
/// writes before the change (`skip`: added as the change applies).
pub(crate) struct Prebuilt {
    table: u32,
    seq: u64,
    column: String,
    index: Index,
    skip: Vec<Pk>,
}

impl State {
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
    fn snapshot_due(&self, id: u32, opts: &Options) -> bool {
        let Some(t) = self.tables.get(&id) else { return false };
        let rows = t.rows.len() as u64;
        t.since_events >= opts.snapshot_every_events.max(rows.saturating_sub(t.since_events))
            || (t.since_bytes >= opts.snapshot_every_bytes && t.since_events >= rows / 2)
    }

    /// Forget the changes no open transaction can need.
    fn prune_changes(&mut self) {
        match self.active.keys().next().copied() {
            None => self.changes.clear(),
            Some(min) => {
                while self.changes.front().is_some_and(|c| c.seq <= min) {
                    self.changes.pop_front();
                }
            }
        }
    }

    /// Apply a commit just written at `pos` as a record of `rec_len` bytes.
    /// Rows keep the documents' text as staged (no parsed tree); documents
    /// and keys are moved out of `c`.
    fn apply(&mut self, c: &mut Commit, picks: Vec<(usize, Picks)>, rec_len: usize, pos: RecordPos) -> Result<()> {
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
                Applied { op: e.op, table: e.table, key: e.key.take(), hkey: None, doc, picks }
            })
            .collect();
        self.apply_events(c.first_seq, c.time_micros, events, pos, rec_len)
    }

    /// Apply the events of one commit found at `pos` (`rec_len` bytes on disk).
    fn apply_events(
        &mut self,
        first_seq: u64,
        time_micros: i64,
        events: Vec<Applied>,
        pos: RecordPos,
        rec_len: usize,
    ) -> Result<()> {
        let share = (rec_len / events.len().max(1)) as u64;
        let ci = u32::try_from(self.commits.len()).map_err(|_| Error::Query("too many commits".into()))?;
        let n = events.len() as u64;
        self.commits.push(CommitMeta { first_seq, len: events.len() as u32, time: time_micros, pos });
        // A large commit of row changes only, applied live: its history
        // entries go into the history maps on a thread of their own while
        // this one updates the rows and the indexes.
        let plain = n >= PARALLEL_APPLY
            && self.maintain_indexes
            && self.open_history.is_none()
            && events.iter().all(|e| {
                matches!(e.op, Op::Insert | Op::Patch | Op::SoftDelete)
                    && e.key.is_some()
                    && self.tables.contains_key(&e.table)
            });
        if plain {
            let mut work: Vec<HistoryWork> = Vec::new();
            for (i, e) in events.iter().enumerate() {
                let Some(k) = &e.key else { continue };
                let hist = Hist { seq: first_seq + i as u64, op: e.op, commit: ci, idx: i as u32, folded: false };
                let at = match work.iter().position(|(t, _, _)| *t == e.table) {
                    Some(at) => at,
                    None => {
                        let h = self.tables.get_mut(&e.table).map(|t| std::mem::take(&mut t.history));
                        work.push((e.table, h.unwrap_or_default(), Vec::with_capacity(events.len())));
                        work.len() - 1
                    }
                };
                if let Some((_, _, entries)) = work.get_mut(at) {
                    entries.push((HKey::of(k), hist));
                }
            }
            let fill = |work: &mut Vec<HistoryWork>| {
                for (_, history, entries) in work.iter_mut() {
                    for (k, h) in entries.drain(..) {
                        history.push_key(k, h);
                    }
                }
            };
            // A panic on either thread is resumed once the maps are back
            // in their tables (as the serial path would leave them).
            let (r, filled) = std::thread::scope(|s| {
                let w = &mut work;
                let spawned = std::thread::Builder::new().name("driftdb-apply".into()).spawn_scoped(s, || fill(w));
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.apply_rows(first_seq, ci, events, share, true)
                }));
                let filled = match spawned {
                    Ok(h) => Some(h.join()),
                    Err(_) => None,
                };
                (r, filled)
            });
            let filled = match filled {
                Some(f) => f,
                None => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fill(&mut work))),
            };
            for (id, history, _) in work {
                if let Some(t) = self.tables.get_mut(&id) {
                    t.history = history;
                }
            }
            if let Err(p) = filled {
                std::panic::resume_unwind(p);
            }
            match r {
                Ok(r) => r?,
                Err(p) => std::panic::resume_unwind(p),
            }
        } else {
            self.apply_rows(first_seq, ci, events, share, false)?;
        }
        self.next_seq = first_seq + n;
        self.last_time = self.last_time.max(time_micros);
        Ok(())
    }

    /// The loop of [`State::apply_events`]: event `i` is at `first_seq + i`
    /// in commit `ci`; `history_done` when its history entries are recorded
    /// elsewhere.
    fn apply_rows(
        &mut self,
        first_seq: u64,
        ci: u32,
        events: Vec<Applied>,
        share: u64,
        history_done: bool,
    ) -> Result<()> {
        for (i, e) in events.into_iter().enumerate() {
            let seq = first_seq + i as u64;
            if e.op == Op::CreateTable {
                let v = e.doc.as_ref().map_or(Value::Null, |d| d.to_value());
                let mut def: TableDef = serde_json::from_value(v)
                    .map_err(|err| Error::Query(format!("bad table definition at seq {seq}: {err}")))?;
                def.id = e.table;
                def.created_seq = seq;
                self.names.insert(def.name.clone(), def.id);
                let t = self.tables.entry(e.table).or_default();
                t.schema.push((seq, def.clone()));
                self.defs.insert(def.id, def);
                for f in &self.defs[&e.table].indexes {
                    t.indexes.entry(f.clone()).or_default();
                }
                self.next_table_id = self.next_table_id.max(e.table + 1);
                continue;
            }
            if e.op == Op::Compact {
                let h = e.doc.as_ref().and_then(|d| d.get("horizon")).and_then(Value::as_u64).unwrap_or(0);
                if let Some(t) = self.tables.get_mut(&e.table) {
                    t.horizon = t.horizon.max(h);
                }
                continue;
            }
            if e.op == Op::Folded {
                continue;
            }
            if e.op == Op::Alter {
                let v = e.doc.as_ref().map_or(Value::Null, |d| d.to_value());
                let alter: Alter = serde_json::from_value(v)
                    .map_err(|err| Error::Query(format!("bad schema change at seq {seq}: {err}")))?;
                let (Some(def), Some(t)) = (self.defs.get_mut(&e.table), self.tables.get_mut(&e.table)) else {
                    return Err(Error::Query(format!("schema change at seq {seq} names an unknown table")));
                };
                alter.apply_def(def).map_err(|m| Error::Query(format!("schema change at seq {seq}: {m}")))?;
                t.schema.push((seq, def.clone()));
                t.alters.push((seq, alter.clone()));
                match &alter {
                    Alter::DropColumn { column } | Alter::DropIndex { column } => {
                        t.indexes.remove(column);
                    }
                    Alter::CreateIndex { column: c }
                    | Alter::AddColumn { column: c, default: Some(_) }
                    | Alter::RenameColumn { to: c, .. } => {
                        let column = c;
                        // A rename's index is built anew: rows that had the
                        // new name already keep their own value.
                        let renamed = match &alter {
                            Alter::RenameColumn { column: from, .. } => t.indexes.remove(from).is_some(),
                            _ => false,
                        };
                        if matches!(alter, Alter::CreateIndex { .. }) || renamed || t.indexes.contains_key(column) {
                            // While opening, indexes are built once the replay is over.
                            let pre = self
                                .prebuilt
                                .iter()
                                .position(|p| p.table == e.table && p.seq == seq && p.column == *column)
                                .map(|i| self.prebuilt.swap_remove(i));
                            let ix = match pre {
                                _ if !self.maintain_indexes => Index::default(),
                                Some(mut p) => {
                                    for k in p.skip {
                                        if let Some(d) = t.rows.get(&k) {
                                            p.index.add_value(t.view_field(d, column).as_ref(), &k);
                                        }
                                    }
                                    p.index
                                }
                                None => t.build_index(column),
                            };
                            t.indexes.insert(column.clone(), ix);
                        }
                    }
                    Alter::AddColumn { default: None, .. } => {}
                }
                continue;
            }
            let Some(t) = self.tables.get_mut(&e.table) else {
                return Err(Error::Query(format!("event at seq {seq} names an unknown table")));
            };
            let hist = Hist { seq, op: e.op, commit: ci, idx: i as u32, folded: false };
            if self.rows_from.get(&e.table).is_some_and(|from| seq <= *from) {
                // Opening: the row's state is in the table's snapshot.
                match (e.hkey, &e.key) {
                    (Some(h), _) => push_history(&mut self.open_history, &mut t.history, e.table, h, hist),
                    (None, Some(k)) => push_history(&mut self.open_history, &mut t.history, e.table, HKey::of(k), hist),
                    (None, None) => return Err(Error::Query(format!("event at seq {seq} has no key"))),
                }
                continue;
            }
            let Some(key) = e.key else {
                return Err(Error::Query(format!("event at seq {seq} has no key")));
            };
            t.since_events += 1;
            t.since_bytes += share;
            let new = match e.op {
                Op::Insert | Op::Patch => Some(e.doc.unwrap_or_else(|| Arc::new(Doc::from_value(Value::Null).at(seq)))),
                _ => None,
            };
            if let Some(open_rows) = self.open_rows.as_mut() {
                // Opening (no index is maintained, no transaction is open).
                let hk = HKey::of(&key);
                // The snapshot's row, if it has one, is gone.
                if new.is_none()
                    && self.rows_from.contains_key(&e.table)
                    && let Some(gone) = self.open_deleted.as_mut()
                {
                    gone.entry(e.table).or_default().insert(key.clone());
                }
                let writes = open_rows.entry(e.table).or_default();
                writes.push((key, new));
                // Superseded writes are dropped now and then, so that a log
                // that rewrites the same rows does not pile them all up.
                if writes.len() >= 1 << 20 && writes.len().is_power_of_two() {
                    settle_writes(writes);
                }
                if !history_done {
                    push_history(&mut self.open_history, &mut t.history, e.table, hk, hist);
                }
                continue;
            }
            // One lookup; the key moves into the row map (or is dropped for a
            // delete), its other uses borrow it.
            let maintain = self.maintain_indexes;
            let mut picks = e.picks;
            let keep = !self.active.is_empty();
            let mut change = None;
            let mut changed = |k: &Pk, old: Option<&Arc<Doc>>, new: Option<&Arc<Doc>>| {
                if keep {
                    change = Some(Change { seq, table: e.table, key: k.clone(), old: old.cloned(), new: new.cloned() });
                }
            };
            match (t.rows.entry(key), new) {
                (Entry::Vacant(v), new) => {
                    if new.is_none()
                        && self.rows_from.contains_key(&e.table)
                        && let Some(gone) = self.open_deleted.as_mut()
                    {
                        gone.entry(e.table).or_default().insert(v.key().clone());
                    }
                    if maintain {
                        reindex(&mut t.indexes, &t.alters, v.key(), None, new.as_ref(), picks.take());
                    }
                    changed(v.key(), None, new.as_ref());
                    if !history_done {
                        push_history(&mut self.open_history, &mut t.history, e.table, HKey::of(v.key()), hist);
                    }
                    if let Some(d) = new {
                        v.insert(d);
                    }
                }
                (Entry::Occupied(mut o), Some(d)) => {
                    let old = o.insert(d.clone());
                    if maintain {
                        reindex(&mut t.indexes, &t.alters, o.key(), Some(&old), Some(&d), picks.take());
                    }
                    changed(o.key(), Some(&old), Some(&d));
                    if !history_done {
                        push_history(&mut self.open_history, &mut t.history, e.table, HKey::of(o.key()), hist);
                    }
                }
                (Entry::Occupied(o), None) => {
                    let (k, old) = o.remove_entry();
                    if self.rows_from.contains_key(&e.table)
                        && let Some(gone) = self.open_deleted.as_mut()
                    {
                        gone.entry(e.table).or_default().insert(k.clone());
                    }
                    if maintain {
                        reindex(&mut t.indexes, &t.alters, &k, Some(&old), None, None);
                    }
                    changed(&k, Some(&old), None);
                    if !history_done {
                        push_history(&mut self.open_history, &mut t.history, e.table, HKey::of(&k), hist);
                    }
                }
            }
            if let Some(c) = change {
                self.changes.push_back(c);
            }
        }
        Ok(())
    }

    /// Replace table `id`'s history at or before `h` by one folded entry per
    /// row live at `h` (the keys of the horizon snapshot).
    fn fold_history<'k>(&mut self, id: u32, h: u64, live_at_h: impl Iterator<Item = &'k Pk>) {
        let ci = self.commits.partition_point(|c| c.first_seq <= h).saturating_sub(1) as u32;
        let Some(t) = self.tables.get_mut(&id) else { return };
        for hist in t.history.values_mut() {
            hist.to_vec_mut().retain(|e| e.seq > h);
        }
        for k in live_at_h {
            t.history
                .entry(k)
                .to_vec_mut()
                .insert(0, Hist { seq: h, op: Op::Insert, commit: ci, idx: 0, folded: true });
        }
        t.history.retain_nonempty();
        t.snapshots.retain(|(s, _)| *s >= h);
    }
}

/// A table's history map, taken out while a commit's entries for it
/// (in event order) are added on another thread.
type HistoryWork = (u32, RowHistory, Vec<(HKey, Hist)>);

/// One event as [`State::apply_events`] takes it.
struct Applied {
    op: Op,
    table: u32,
    key: Option<Pk>,
    /// The key as the history map holds it, for an event replayed at open
    /// whose row comes from a snapshot (no [`Pk`] is made for it).
    hkey: Option<HKey>,
    doc: Option<Arc<Doc>>,
    /// Its indexed fields, picked when it was staged.
    picks: Option<Picks>,
}

/// An embedded DriftDB database.
pub struct Db {
    s: Arc<Shared>,
    /// The application's handle (not a background thread's): dropping it
    /// stops and joins the background threads.
    owner: bool,
}

/// What a `Db` handle and its background threads share.
pub(crate) struct Shared {
    store: Arc<Store>,
    state: RwLock<State>,
    /// Held by the group-commit leader (and by explicit snapshots,
    /// compaction and key rotation; automatic snapshots are written beside
    /// it, see [`Db::snapshot_in_background`]).
    writer: Mutex<WriterState>,
    /// Commit requests waiting for a leader, with the committing thread.
    queue: Mutex<Vec<(std::thread::ThreadId, Request)>>,
    /// Signalled when a request joins the queue while a leader gathers.
    arrived: std::sync::Condvar,
    /// What the next leader expects to gather (see [`Db::gather`]).
    gather: Mutex<Gather>,
    cache: Mutex<CommitCache>,
    /// Rows at each table's compaction horizon, loaded on first use.
    baselines: Mutex<HashMap<u32, (u64, Arc<Rows>)>>,
    opts: Options,
    flusher: Mutex<Option<Flusher>>,
    /// Taken for each file rewrite (compaction, re-encryption).
    maint: Mutex<()>,
    /// The background re-encryption, if one was started.
    rotator: Mutex<Option<std::thread::JoinHandle<Result<()>>>>,
    /// Set to stop the background re-encryption between two files.
    stop: std::sync::atomic::AtomicBool,
    /// Whether a re-encryption is running in this process.
    rotating: std::sync::atomic::AtomicBool,
    /// The thread writing automatic snapshots, if one was started (see
    /// [`Db::snapshot_in_background`]).
    snapshotter: Mutex<Snapshotter>,
}

/// The automatic snapshots to write, and the thread writing them.
#[derive(Default)]
struct Snapshotter {
    /// Tables found due, not yet taken by the thread.
    pending: Vec<u32>,
    /// Whether the thread is running (it clears this, under the lock, when
    /// it finds nothing pending, and then ends).
    running: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Options of [`Db::rotate_master_key`] and [`Db::rotate_data_keys`].
#[derive(Clone, Debug)]
pub struct RotateOptions {
    /// Only re-wrap the data keys under the new master key; re-encrypt nothing.
    pub rewrap_only: bool,
    /// Re-encrypt at most this many bytes per second (so the foreground
    /// keeps its latency); `None`: as fast as the disk goes.
    pub throttle_bytes_per_sec: Option<u64>,
    /// Argon2id cost when the new master key is a passphrase.
    pub argon2: Argon2Params,
    /// Re-encrypt in a background thread (the default); otherwise call
    /// [`Db::resume_rotation`] to do it in the calling thread.
    pub background: bool,
    /// Accept a new passphrase's Argon2id parameters below the floor of
    /// [`Argon2Params::check_strength`] (tests only).
    pub allow_weak_kdf: bool,
    /// Accept the current passphrase as the new one when the Argon2id
    /// parameters differ: a rotation that only changes its cost. (Without
    /// it, a rotation to the passphrase in force is refused.)
    pub retune_kdf: bool,
}

impl Default for RotateOptions {
    fn default() -> Self {
        RotateOptions {
            rewrap_only: false,
            throttle_bytes_per_sec: None,
            argon2: Argon2Params::default(),
            background: true,
            allow_weak_kdf: false,
            retune_kdf: false,
        }
    }
}

/// Progress of the current or last re-encryption.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RotationProgress {
    /// `idle` (never rotated with re-encryption), `running`, `interrupted`
    /// (files remain and nothing is re-encrypting them: run `keys resume`
    /// or reopen) or `complete`.
    pub state: &'static str,
    /// Files re-encrypted.
    pub files_done: u64,
    /// Files to re-encrypt.
    pub files_total: u64,
    /// Bytes re-encrypted.
    pub bytes_done: u64,
    /// Bytes to re-encrypt.
    pub bytes_total: u64,
}

/// Keys and rotation, as `driftdb keys status` shows them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RotationStatus {
    /// Database id (hex).
    pub database_id: String,
    /// The master key version that opens the database.
    pub active_key_version: u32,
    /// Every master key version, with the live files whose data keys date from it.
    pub keys: Vec<crate::storage::store::KeyVersionStatus>,
    /// The current or last re-encryption.
    pub rotation: RotationProgress,
    /// The keyring's generation ([`Db::keyring_generation`]).
    pub keyring_generation: u64,
    /// The key audit log's chain head, as the keyring records it.
    pub audit_head: crate::storage::verify::AuditHeadReport,
}

/// What the writer lock guards: the commits in the WAL not yet checkpointed.
#[derive(Default)]
struct WriterState {
    /// (commit index, record) of every commit only in the WAL.
    pending: Vec<(u32, Vec<u8>)>,
    pending_bytes: u64,
}

/// The writer lock, held; releasing it wakes a queued committer to lead
/// the next group. Committers wait parked, not on the writer lock, so that
/// one whose commit a leader already finished returns at once instead of
/// queueing behind the next leader's fsync.
struct WriterGuard<'a> {
    guard: Option<std::sync::MutexGuard<'a, WriterState>>,
    queue: &'a Mutex<Vec<(std::thread::ThreadId, Request)>>,
}

impl std::ops::Deref for WriterGuard<'_> {
    type Target = WriterState;
    fn deref(&self) -> &WriterState {
        // Present until drop.
        self.guard.as_deref().unwrap_or(&EMPTY_WRITER)
    }
}

static EMPTY_WRITER: WriterState = WriterState { pending: Vec::new(), pending_bytes: 0 };

impl std::ops::DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut WriterState {
        match self.guard.as_deref_mut() {
            Some(w) => w,
            None => unreachable_writer(),
        }
    }
}

#[allow(clippy::panic)]
#[cold]
fn unreachable_writer() -> ! {
    // The guard is only taken out in drop.
    panic!("writer guard used after release")
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        // A committer that queued while the lock was held found it taken
        // and parked (see [`Db::submit`]): wake one to lead.
        if let Some((_, r)) = self.queue.lock().unwrap_or_else(|p| p.into_inner()).first() {
            r.slot.wake();
        }
    }
}

/// If a group's leader unwinds (see [`Db::run_group`]): the store refuses
/// writes from then on (what was applied is unknown; reopening recovers
/// from the disk), and every committer of the group gets its outcome or
/// that error, and is woken.
struct WakeOnUnwind<'a>(&'a Store, Vec<Slot>);

impl Drop for WakeOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let why = "a group-commit leader panicked; reopen the database";
            self.0.poison_with(&Error::Poisoned(why.into()));
            for s in &self.1 {
                s.set_if_empty(Err(Error::Poisoned(why.into())));
                s.wake();
            }
        }
    }
}

/// What a group-commit leader knows of the committers before it takes the
/// queue: who was in the last group, and how long the last fsyncs took.
#[derive(Default)]
struct Gather {
    /// The threads of the last group: each is likely to commit again soon.
    last: Vec<std::thread::ThreadId>,
    /// Moving average of the WAL fsync, in microseconds (0: none yet, or
    /// not synced per commit); below 50 µs, leaders do not wait.
    sync_micros: u64,
    /// The committers a waiting leader still expects: the last of them to
    /// arrive signals `arrived` (one wake-up per group, not one per arrival).
    awaited: Vec<std::thread::ThreadId>,
    /// Groups to take without waiting: set when a wait gathered nobody
    /// (committers that commit now and then, not in a loop).
    cooldown: u32,
}

/// The background thread of [`Durability::RelaxedSyncEvery`].
struct Flusher {
    stop: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Db {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        let _ = self.stop_rotation();
        self.wait_snapshots();
        let flusher = self.s.flusher.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut f) = flusher {
            let _ = f.stop.send(());
            if let Some(t) = f.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// A table's rows, in key order.
type Rows = BTreeMap<Pk, Arc<Doc>>;

/// Decoded commits, bounded by the bytes of their records.
#[derive(Default)]
struct CommitCache {
    map: HashMap<u32, (Arc<Commit>, usize)>,
    bytes: usize,
}

/// Bytes of log records kept decoded in the commit cache.
const CACHE_BYTES: usize = 64 << 20;

impl Db {
    /// Create a new database in `dir` (missing or empty).
    pub fn create(dir: impl AsRef<Path>, key: &KeySource, opts: Options) -> Result<Db> {
        let opts_rest = opts.clone();
        let store = Store::create(
            dir,
            key,
            CreateOptions { argon2: opts.argon2, allow_weak_kdf: opts.allow_weak_kdf, store: opts.store },
        )?;
        Ok(Db::from_store(store, State { next_seq: 1, maintain_indexes: true, ..State::default() }, opts_rest))
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
        let mut st = State { next_seq: 1, ..State::default() };
        let mut metas = HashMap::new();
        // Bytes of the log, and of each snapshot file: to size the history map.
        let files = store.files();
        let log_bytes: u64 = files
            .iter()
            .filter(|f| f.stream == EVENTS_STREAM || f.stream == WAL_STREAM)
            .map(|f| f.state.sealed_len())
            .sum();
        for f in files {
            if f.kind != FileKind::Snapshot || f.stream < SNAPSHOT_STREAM_BASE {
                continue;
            }
            let m = SnapMeta::decode(&f.meta)
                .map_err(|e| Error::corrupted(&f.name, 0, format!("snapshot metadata: {}", e.reason)))?;
            st.tables.entry(m.table).or_default().snapshots.push((m.seq, f.file_id));
            metas.insert(f.file_id, (m, f.state.sealed_len()));
        }
        let mut latest = Vec::new();
        let mut room: HashMap<u32, usize> = HashMap::new();
        for (id, t) in st.tables.iter_mut() {
            t.snapshots.sort_unstable();
            if let Some(&(seq, file)) = t.snapshots.last() {
                let (rows, fields, bytes) =
                    metas.remove(&file).map_or((0, Vec::new(), 0), |(m, bytes)| (m.rows, m.indexes, bytes));
                // Every row of the snapshot has a history, and so may each
                // event of the log (a snapshot row's size as a guess of an
                // event's): room for them at once, not regrown on the way.
                let per_row = bytes / rows.max(1);
                let events = if per_row >= 32 { log_bytes / per_row } else { 0 };
                room.insert(*id, rows.max(events).min(1 << 26) as usize);
                latest.push((*id, seq, file, fields));
            }
        }
        for (id, seq, _, _) in &latest {
            st.rows_from.insert(*id, *seq);
        }
        // The latest snapshots load on a second thread while this one
        // replays the log (and their rows are checked there, picking the
        // fields the table indexed at the snapshot): the rows the log
        // writes after a snapshot go to the table's row map, the keys it
        // deletes are noted, and the snapshot's rows fill in the rest once
        // both are done.
        st.open_deleted = Some(FastMap::default());
        st.open_rows = Some(FastMap::default());
        let mut writer = WriterState::default();
        let wal_files = store.stream_files(WAL_STREAM).len();
        let load_all = || -> Result<Vec<Loaded>> {
            latest
                .iter()
                .map(|(id, seq, file, fields)| {
                    let SnapRows { rows, fields: stored, picked } = load_snapshot_rows(&store, *file, *seq, false)?;
                    // Rows that carry their indexed values are not parsed:
                    // their record is authenticated, and their text was
                    // checked before it was written.
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
                    // A row that fails here is checked again, and reported,
                    // if it is still current once the log is replayed.
                    let pick = |part: &[(Pk, Arc<Doc>)]| -> Vec<Option<Picked>> {
                        part.iter()
                            .map(|(_, d)| {
                                crate::table::doc::check(d.text(), &f).ok().map(|v| Picked::from_vec(ikeys(v)))
                            })
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
        };
        // The history maps are built on a third thread, from batches of
        // entries the replay hands it in order.
        type HistBatch = Vec<(u32, HKey, Hist)>;
        const HIST_BATCH: usize = 16 * 1024;
        let build_history = move |rx: std::sync::mpsc::Receiver<HistBatch>| {
            // Entries are grouped by table and shard as they come (appends
            // only), and each shard is built once the log is read.
            type Parts = (RowHistory, Vec<Vec<(HKey, Hist)>>);
            let mut parts: FastMap<u32, Parts> = FastMap::default();
            let new_parts = |id: u32| -> Parts {
                let per_shard = room.get(&id).map_or(0, |n| n / HIST_SHARDS + n / HIST_SHARDS / 8);
                (RowHistory::default(), (0..HIST_SHARDS).map(|_| Vec::with_capacity(per_shard)).collect())
            };
            for batch in rx {
                for (id, k, h) in batch {
                    let (rh, shards) = parts.entry(id).or_insert_with(|| new_parts(id));
                    let i = rh.shard_of(&k);
                    if let Some(v) = shards.get_mut(i) {
                        v.push((k, h));
                    }
                }
            }
            let mut maps: FastMap<u32, RowHistory> = FastMap::default();
            for (id, (mut rh, shards)) in parts {
                for (i, entries) in shards.into_iter().enumerate() {
                    rh.fill_shard(i, entries);
                }
                maps.insert(id, rh);
            }
            maps
        };
        // The history thread goes on building the maps while this thread
        // merges the rows and checks them (it is joined last).
        let (tx, rx) = std::sync::mpsc::sync_channel::<HistBatch>(4);
        let historian =
            std::thread::Builder::new().name("driftdb-open-history".into()).spawn(move || build_history(rx));
        let (replayed, loaded) = std::thread::scope(|s| {
            let loader = std::thread::Builder::new().name("driftdb-open".into()).spawn_scoped(s, load_all);
            let mut tx = historian.is_ok().then_some(tx);
            if tx.is_some() {
                st.open_history = Some(Vec::with_capacity(HIST_BATCH));
            }
            let hand_over = |st: &mut State, all: bool| {
                if let (Some(tx), Some(b)) = (&tx, st.open_history.as_mut())
                    && (all || b.len() >= HIST_BATCH)
                {
                    // A closed channel means the thread is gone: its join reports it.
                    let _ = tx.send(std::mem::replace(b, Vec::with_capacity(HIST_BATCH)));
                }
            };
            let replayed = (|| -> Result<()> {
                store.read_stream(EVENTS_STREAM, |pos, rec| {
                    replay_record(&mut st, FileKind::Segment, pos, rec)?;
                    hand_over(&mut st, false);
                    Ok(())
                })?;
                // Then the commits the WAL holds beyond the segments (a WAL file
                // already checkpointed may still be there if a crash came before
                // its deletion: its commits are skipped).
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
                    let ci = replay_record(&mut st, FileKind::Wal, pos, rec)?;
                    hand_over(&mut st, false);
                    writer.pending_bytes += rec.len() as u64;
                    writer.pending.push((ci, rec.to_vec()));
                    Ok(())
                })?;
                Ok(())
            })();
            hand_over(&mut st, true);
            drop(tx.take()); // the history thread ends
            let loaded = match loader {
                Ok(h) => {
                    h.join().unwrap_or_else(|_| Err(Error::Poisoned("the snapshot loading thread panicked".into())))
                }
                Err(_) => load_all(),
            };
            (replayed, loaded)
        });
        let with_history = st.open_history.take().is_some();
        replayed?;
        let deleted = st.open_deleted.take().unwrap_or_default();
        // The rows the log wrote, in key order: each key's last write (a
        // stable sort keeps a key's writes in log order, and finds the runs
        // a log in key order is made of), unless it is a delete.
        let mut written: FastMap<u32, Vec<(Pk, Arc<Doc>)>> = st
            .open_rows
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(|(id, mut writes)| {
                settle_writes(&mut writes);
                (id, writes.into_iter().filter_map(|(k, d)| Some((k, d?))).collect())
            })
            .collect();
        let mut picked: HashMap<u32, (Vec<String>, Vec<Option<Picked>>)> = HashMap::new();
        for l in loaded? {
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
        if let Some((id, from)) = st.rows_from.iter().find(|(_, f)| **f > latest) {
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
        let histories = match historian {
            Ok(h) => h.join().map_err(|_| Error::Poisoned("the history thread panicked".into()))?,
            Err(_) => FastMap::default(),
        };
        if with_history {
            for (id, h) in histories {
                st.tables.entry(id).or_default().history = h;
            }
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
            let rows = load_snapshot(&store, snap, h)?;
            st.fold_history(id, h, rows.keys());
        }
        st.rows_from.clear();
        st.maintain_indexes = true;
        let db = Db::from_store(store, st, opts);
        if wal_files > 0 && !db.s.store.options().read_only {
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
        if db.s.opts.resume_rotation && !db.s.store.options().read_only && db.s.store.poisoned().is_none() {
            db.start_reencryption(None);
        }
        Ok(db)
    }

    fn from_store(store: Store, state: State, opts: Options) -> Db {
        let store = Arc::new(store);
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
            s: Arc::new(Shared {
                store,
                state: RwLock::new(state),
                writer: Mutex::new(WriterState::default()),
                queue: Mutex::new(Vec::new()),
                arrived: std::sync::Condvar::new(),
                gather: Mutex::new(Gather::default()),
                cache: Mutex::new(CommitCache::default()),
                baselines: Mutex::new(HashMap::new()),
                opts,
                flusher: Mutex::new(flusher),
                maint: Mutex::new(()),
                rotator: Mutex::new(None),
                stop: std::sync::atomic::AtomicBool::new(false),
                rotating: std::sync::atomic::AtomicBool::new(false),
                snapshotter: Mutex::new(Snapshotter::default()),
            }),
            owner: true,
        }
    }

    /// A handle for a background thread (does not stop anything when dropped).
    fn background_handle(&self) -> Db {
        Db { s: self.s.clone(), owner: false }
    }

    /// The underlying store (files, keys, verification).
    pub fn store(&self) -> &Store {
        &self.s.store
    }

    /// The keyring's generation, incremented on every keyring write. Keep
    /// the newest value seen somewhere the database's disk is not, and pass
    /// it as [`Options::expect_generation`] on the next open: an older copy
    /// of the whole directory put back in place is then refused.
    pub fn keyring_generation(&self) -> u64 {
        self.s.store.keyring_generation()
    }

    /// What `COMPACT table BEFORE before` would fold: the horizon it would
    /// move to, and the table's events (inserts, patches, soft deletes) it
    /// would fold and keep. Nothing changes.
    pub fn compaction_preview(&self, table: &str, before: &AsOf) -> Result<CompactionPreview> {
        let st = self.read();
        let def = st.table(table)?;
        let t = st.tables.get(&def.id).ok_or_else(|| Error::NotFound(format!("table {table}")))?;
        let horizon = resolve(&st, before)?.max(t.horizon);
        let (mut fold, mut keep) = (0u64, 0u64);
        for m in &t.history.shards {
            for hs in m.values() {
                for h in hs.iter().filter(|h| !h.folded) {
                    if h.seq <= horizon { fold += 1 } else { keep += 1 }
                }
            }
        }
        Ok(CompactionPreview {
            horizon,
            current_horizon: t.horizon,
            events_folded: fold,
            events_kept: keep,
            latest_seq: st.latest_seq(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.s.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.read()
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.s.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_writer(&self) -> WriterGuard<'_> {
        WriterGuard { guard: Some(self.s.writer.lock().unwrap_or_else(|p| p.into_inner())), queue: &self.s.queue }
    }

    fn try_lock_writer(&self) -> Option<WriterGuard<'_>> {
        let guard = match self.s.writer.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(WriterGuard { guard: Some(guard), queue: &self.s.queue })
    }

    /// The latest committed sequence number (0 for an empty database).
    pub fn latest_seq(&self) -> u64 {
        self.read().latest_seq()
    }

    /// Close the database: checkpoint the write-ahead log and seal the open files.
    pub fn close(self) -> Result<()> {
        self.wait_snapshots();
        let rotation = self.stop_rotation();
        if !self.s.store.options().read_only && self.s.store.poisoned().is_none() {
            let mut w = self.lock_writer();
            self.checkpoint(&mut w)?;
        }
        self.s.store.close_shared()?;
        rotation
    }

    /// Rotate the master key: every data key is re-wrapped under a new
    /// master key version in one atomic keyring replacement, and from the
    /// moment this returns only `new_key` opens the database. Then, unless
    /// `rewrap_only`, every file is re-encrypted under a fresh data key in
    /// the background (see [`Db::rotation_status`]) while reads and writes
    /// go on; a crash or a close leaves it to resume on the next open.
    /// Returns the new master key version.
    pub fn rotate_master_key(&self, new_key: &KeySource, o: RotateOptions) -> Result<u32> {
        self.rotate(Some(new_key), o)
    }

    /// Re-encrypt every file under a fresh data key, keeping the master key.
    pub fn rotate_data_keys(&self, o: RotateOptions) -> Result<()> {
        self.rotate(None, RotateOptions { rewrap_only: false, ..o }).map(|_| ())
    }

    fn rotate(&self, new_key: Option<&KeySource>, o: RotateOptions) -> Result<u32> {
        let version = {
            let mut w = self.lock_writer();
            // No file rewrite in flight: a file begun under the old master
            // key must not be committed after the re-wrap.
            self.wait_snapshots();
            let _m = self.s.maint.lock().unwrap_or_else(|p| p.into_inner());
            // The WAL's commits into the segments first: no file the
            // re-encryption rewrites is one a commit position points into
            // while it is still being written.
            self.checkpoint(&mut w)?;
            let nm = crate::storage::store::NewMaster {
                argon2: o.argon2,
                allow_weak_kdf: o.allow_weak_kdf,
                retune_kdf: o.retune_kdf,
            };
            self.s.store.begin_rotation_with(new_key, &nm, !o.rewrap_only)?
        };
        if !o.rewrap_only && o.background {
            self.start_reencryption(o.throttle_bytes_per_sec);
        }
        Ok(version)
    }

    /// Keys and the progress of the current or last re-encryption.
    pub fn rotation_status(&self) -> RotationStatus {
        let store = &self.s.store;
        let keys = store.key_versions();
        let rotation = match store.rotation() {
            None => RotationProgress { state: "idle", files_done: 0, files_total: 0, bytes_done: 0, bytes_total: 0 },
            Some(r) => {
                let pending = store.rotation_pending();
                let left_bytes: u64 = pending.iter().map(|f| f.state.sealed_len()).sum();
                let state = if r.finished_unix != 0 {
                    "complete"
                } else if self.s.rotating.load(std::sync::atomic::Ordering::SeqCst) {
                    "running"
                } else {
                    "interrupted"
                };
                RotationProgress {
                    state,
                    files_done: r.files_total.saturating_sub(pending.len() as u64),
                    files_total: r.files_total,
                    bytes_done: r.bytes_total.saturating_sub(left_bytes),
                    bytes_total: r.bytes_total,
                }
            }
        };
        let head = store.audit_head();
        RotationStatus {
            database_id: store.db_id().iter().map(|b| format!("{b:02x}")).collect(),
            active_key_version: store.master_version(),
            keys,
            rotation,
            keyring_generation: store.keyring_generation(),
            audit_head: crate::storage::verify::AuditHeadReport {
                entries: head.count,
                hash: head.hash.iter().map(|b| format!("{b:02x}")).collect(),
            },
        }
    }

    /// Re-encrypt, in the calling thread, every file an interrupted (or
    /// foreground) rotation has left, calling `progress` after each file;
    /// then record the end of the rotation.
    pub fn resume_rotation(
        &self,
        throttle_bytes_per_sec: Option<u64>,
        mut progress: impl FnMut(&RotationStatus),
    ) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.s.rotating.swap(true, Ordering::SeqCst) {
            return Err(Error::InvalidArgument("a re-encryption is already running".into()));
        }
        let r = self.reencrypt_all(throttle_bytes_per_sec, &mut progress);
        self.s.rotating.store(false, Ordering::SeqCst);
        r
    }

    /// Start the background re-encryption (if files remain and none runs).
    fn start_reencryption(&self, throttle: Option<u64>) {
        use std::sync::atomic::Ordering;
        if self.s.store.rotation_pending().is_empty() && self.s.store.rotation().is_none_or(|r| r.finished_unix != 0) {
            return;
        }
        if self.s.rotating.swap(true, Ordering::SeqCst) {
            return;
        }
        self.s.stop.store(false, Ordering::SeqCst);
        let h = self.background_handle();
        let spawned = std::thread::Builder::new().name("driftdb-reencrypt".into()).spawn(move || {
            let r = h.reencrypt_all(throttle, &mut |_| {});
            h.s.rotating.store(false, Ordering::SeqCst);
            r
        });
        match spawned {
            Ok(t) => *self.s.rotator.lock().unwrap_or_else(|p| p.into_inner()) = Some(t),
            Err(_) => self.s.rotating.store(false, Ordering::SeqCst),
        }
    }

    /// Wait for the background re-encryption to end; its outcome.
    pub fn wait_for_rotation(&self) -> Result<()> {
        let t = self.s.rotator.lock().unwrap_or_else(|p| p.into_inner()).take();
        match t {
            Some(t) => t.join().unwrap_or_else(|_| Err(Error::Poisoned("the re-encryption thread panicked".into()))),
            None => Ok(()),
        }
    }

    /// Stop the background re-encryption after the file in progress.
    fn stop_rotation(&self) -> Result<()> {
        self.s.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wait_for_rotation()
    }

    fn reencrypt_all(&self, throttle: Option<u64>, progress: &mut dyn FnMut(&RotationStatus)) -> Result<()> {
        let t0 = std::time::Instant::now();
        let mut bytes = 0u64;
        let stopped = || self.s.stop.load(std::sync::atomic::Ordering::SeqCst);
        loop {
            if stopped() {
                return Ok(());
            }
            let Some(f) = self.s.store.rotation_pending().into_iter().next() else {
                // A rotation started meanwhile may have added files: end
                // only when none is left.
                if self.s.store.finish_rotation()? || self.s.store.rotation_pending().is_empty() {
                    break;
                }
                continue;
            };
            bytes += f.state.sealed_len();
            self.reencrypt_one(&f)?;
            progress(&self.rotation_status());
            if let Some(rate) = throttle.filter(|r| *r > 0) {
                let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
                while let Some(wait) = due.checked_sub(t0.elapsed()) {
                    if stopped() {
                        return Ok(());
                    }
                    std::thread::sleep(wait.min(Duration::from_millis(50)));
                }
            }
        }
        progress(&self.rotation_status());
        Ok(())
    }

    /// Re-encrypt one file and point everything that refers to it at its
    /// replacement before the old file is deleted.
    fn reencrypt_one(&self, f: &crate::storage::store::FileInfo) -> Result<()> {
        let _m = self.s.maint.lock().unwrap_or_else(|p| p.into_inner());
        let (new_id, positions) = match self.s.store.reencrypt_file(f.file_id) {
            // Replaced meanwhile (merged or compacted): under a fresh key already.
            Err(Error::NotFound(_)) => return Ok(()),
            r => r?,
        };
        let r = match f.kind {
            FileKind::Segment | FileKind::Wal => self.remap_commits(f.file_id, &f.name, &positions),
            FileKind::Snapshot => {
                let mut st = self.write_state();
                for t in st.tables.values_mut() {
                    for s in t.snapshots.iter_mut() {
                        if s.1 == f.file_id {
                            s.1 = new_id;
                        }
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        };
        self.s.store.release(f.file_id);
        r
    }

    /// Point the commits stored in file `old` at their positions in its rewrite.
    fn remap_commits(&self, old: u64, name: &str, positions: &[RecordPos]) -> Result<()> {
        let mut st = self.write_state();
        let mut idx: Vec<usize> = (0..st.commits.len()).filter(|i| st.commits[*i].pos.file_id == old).collect();
        idx.sort_by_key(|i| st.commits[*i].pos.offset);
        if idx.len() != positions.len() {
            return Err(Error::corrupted(name, 0, "rewritten file holds a different number of commits"));
        }
        for (i, p) in idx.into_iter().zip(positions) {
            st.commits[i].pos = *p;
        }
        Ok(())
    }

    /// Begin a transaction.
    pub fn begin(&self, iso: Isolation) -> Txn<'_> {
        if iso == Isolation::ReadCommitted {
            return Txn::new(self, iso, self.read().latest_seq(), false);
        }
        // Registered under the write lock, so that every change after the
        // snapshot is kept for the transaction's reads and validation.
        let mut st = self.write_state();
        let snapshot = st.latest_seq();
        *st.active.entry(snapshot).or_default() += 1;
        Txn::new(self, iso, snapshot, true)
    }

    /// A transaction with snapshot `snapshot` ended.
    pub(crate) fn unregister(&self, snapshot: u64) {
        let mut st = self.write_state();
        if let Some(n) = st.active.get_mut(&snapshot) {
            *n -= 1;
            if *n == 0 {
                st.active.remove(&snapshot);
            }
        }
        st.prune_changes();
    }

    /// Hand a commit to the group-commit leader (which may be this thread)
    /// and wait for its outcome.
    pub(crate) fn submit(&self, req: Request) -> Result<u64> {
        let slot = req.slot.clone();
        let take = || slot.take();
        let me = std::thread::current().id();
        self.s.queue.lock().unwrap_or_else(|p| p.into_inner()).push((me, req));
        {
            let mut g = self.s.gather.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = g.awaited.iter().position(|t| *t == me) {
                g.awaited.swap_remove(i);
                if g.awaited.is_empty() {
                    self.s.arrived.notify_all();
                }
            }
        }
        // No wake-up is missed: a leader stores the outcome before it wakes
        // the waiter (a wake before `park` makes `park` return at once), and
        // whoever releases the writer lock after this thread found it taken
        // finds this request queued and wakes it to lead.
        loop {
            if let Some(r) = take() {
                return r;
            }
            match self.try_lock_writer() {
                Some(mut w) => {
                    // Answered between the check above and taking the lock:
                    // do not lead (and wait) for nothing.
                    if let Some(r) = take() {
                        return r;
                    }
                    let reqs = self.gather();
                    self.run_group(&mut w, reqs);
                    drop(w);
                    if let Some(r) = take() {
                        return r;
                    }
                }
                None => std::thread::park(),
            }
        }
    }

    /// Take the queued requests for the next group (writer lock held).
    ///
    /// The committers of the last group were answered a moment ago and
    /// are likely building their next commit: when some of them are not
    /// queued yet, the leader waits for them, at most about one fsync, so
    /// that concurrent committers share an fsync instead of alternating
    /// between two half groups. A lone committer never waits (it is its
    /// own last group), nor does anyone when commits are not synced; and
    /// when a wait gathers nobody (committers that commit now and then),
    /// the next groups do not wait.
    fn gather(&self) -> Vec<Request> {
        let (expected, limit) = {
            let mut g = self.s.gather.lock().unwrap_or_else(|p| p.into_inner());
            // Not worth a wait when an fsync is nearly free.
            let limit = if g.cooldown > 0 || g.sync_micros < 50 { 0 } else { g.sync_micros.min(2_000) };
            g.cooldown = g.cooldown.saturating_sub(1);
            (std::mem::take(&mut g.last), Duration::from_micros(limit))
        };
        let mut q = self.s.queue.lock().unwrap_or_else(|p| p.into_inner());
        // The expected committers not queued yet.
        let absent = |q: &Vec<(std::thread::ThreadId, Request)>| -> Vec<std::thread::ThreadId> {
            expected.iter().filter(|t| !q.iter().any(|(u, _)| u == *t)).copied().collect()
        };
        let missing = |q: &Vec<(std::thread::ThreadId, Request)>| absent(q).len();
        let mut idle = false;
        let before = missing(&q);
        if !limit.is_zero() && before > 0 {
            let deadline = std::time::Instant::now() + limit;
            // Set under the queue lock: a committer queued later finds itself here.
            self.s.gather.lock().unwrap_or_else(|p| p.into_inner()).awaited = absent(&q);
            while missing(&q) > 0 {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                q = self.s.arrived.wait_timeout(q, left).unwrap_or_else(|p| p.into_inner()).0;
            }
            idle = missing(&q) == before;
            self.s.gather.lock().unwrap_or_else(|p| p.into_inner()).awaited.clear();
        }
        let taken = std::mem::take(&mut *q);
        drop(q);
        let mut g = self.s.gather.lock().unwrap_or_else(|p| p.into_inner());
        if idle {
            g.cooldown = 4;
        }
        g.last = taken.iter().map(|(t, _)| *t).collect();
        taken.into_iter().map(|(_, r)| r).collect()
    }

    /// The group-commit leader's work (writer lock held): validate and build
    /// every queued commit against the latest state, append them all to the
    /// WAL, sync once, apply them, and answer each request.
    fn run_group(&self, w: &mut WriterState, reqs: Vec<Request>) {
        // Should anything below panic, no committer of the group stays
        // parked: each gets its outcome, or an error, and is woken.
        let _unwind = WakeOnUnwind(&self.s.store, reqs.iter().map(|r| r.slot.clone()).collect());
        let set = |slot: &Slot, r: Result<u64>| {
            slot.set(r);
            slot.wake();
        };
        let accepted = {
            let st = self.read();
            let mut g = GroupView::new(&st);
            for req in reqs {
                g.index_written();
                if let Some(why) = crate::txn::conflict(&st, &g, &req) {
                    set(&req.slot, Err(Error::Conflict(why)));
                    continue;
                }
                let Request { batch, snapshot, slot, .. } = req;
                // The transaction's own batch when nothing it depends on
                // changed; otherwise its changes re-applied to the latest state.
                let mut b = if g.still_valid(&batch, snapshot) {
                    batch
                } else {
                    let mut b = Batch { system: batch.system, ..Batch::default() };
                    let rebuilt =
                        batch.into_ops(&st).and_then(|ops| ops.into_iter().try_for_each(|op| b.apply(&g, op)));
                    if let Err(e) = rebuilt {
                        set(&slot, Err(e));
                        continue;
                    }
                    b
                };
                if b.events.is_empty() {
                    set(&slot, Ok(g.next_seq - 1));
                    continue;
                }
                let time = now_micros().max(g.last_time);
                let commit = Commit { first_seq: g.next_seq, time_micros: time, events: std::mem::take(&mut b.events) };
                let bytes = commit.encode();
                b.events = commit.events;
                if bytes.len() > crate::format::frame::MAX_PAYLOAD {
                    set(
                        &slot,
                        Err(Error::Query(format!(
                            "commit of {} bytes exceeds the {}-byte limit; split it",
                            bytes.len(),
                            crate::format::frame::MAX_PAYLOAD
                        ))),
                    );
                    continue;
                }
                g.accept(Accepted { batch: b, slot, first_seq: g.next_seq, time, bytes });
            }
            g.accepted
        };
        type Built = (Commit, Vec<u8>, Slot, Vec<(usize, Picks)>);
        let built: Vec<Built> = accepted
            .into_iter()
            .map(|a| {
                let c = Commit { first_seq: a.first_seq, time_micros: a.time, events: a.batch.events };
                (c, a.bytes, a.slot, a.batch.picks)
            })
            .collect();
        if built.is_empty() {
            return;
        }
        // The group's records go to the WAL in one write.
        let records: Vec<&[u8]> = built.iter().map(|(_, bytes, _, _)| bytes.as_slice()).collect();
        let (positions, mut failure) = match self.s.store.append_many(WAL_STREAM, FileKind::Wal, &records) {
            Ok(p) => (p, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        drop(records);
        if failure.is_none() && self.s.opts.durability == Durability::Immediate {
            let t = std::time::Instant::now();
            failure = self.s.store.sync_stream(WAL_STREAM).err();
            let us = t.elapsed().as_micros().min(1_000_000) as u64;
            let mut g = self.s.gather.lock().unwrap_or_else(|p| p.into_inner());
            g.sync_micros = if g.sync_micros == 0 { us } else { (g.sync_micros * 3 + us) / 4 };
        }
        if let Some(e) = failure {
            // Nothing of the group is acknowledged or applied, though part
            // of it may be on disk: the store refuses writes from now on
            // (reopen recovers, and decides from what the disk holds).
            self.s.store.poison_with(&e);
            let msg = e.to_string();
            let mut first = Some(e);
            for (_, _, slot, _) in built {
                let err = first.take().unwrap_or_else(|| Error::Poisoned(msg.clone()));
                set(&slot, Err(err));
            }
            return;
        }
        let mut due: Vec<u32> = Vec::new();
        let mut answered: Vec<Slot> = Vec::with_capacity(built.len());
        {
            let mut guard = Some(self.write_state());
            for ((mut commit, bytes, slot, picks), pos) in built.into_iter().zip(positions) {
                // A schema change that builds an index builds it first,
                // under the read lock only: readers go on meanwhile.
                if commit.events.iter().any(|e| e.op == Op::Alter) {
                    drop(guard.take());
                    let pre = self.prebuild_indexes(&commit);
                    guard = Some(self.write_state());
                    if let Some(st) = guard.as_mut() {
                        st.prebuilt = pre;
                    }
                }
                let Some(st) = guard.as_mut() else { break };
                let ci = st.commits.len() as u32;
                // Woken once the state is released (they would wait for it).
                let r = st.apply(&mut commit, picks, bytes.len(), pos);
                let failed = r.is_err();
                slot.set(r.map(|()| st.latest_seq()));
                answered.push(slot);
                if failed {
                    continue;
                }
                st.prebuilt.clear();
                w.pending_bytes += bytes.len() as u64;
                w.pending.push((ci, bytes));
                for e in &commit.events {
                    if !due.contains(&e.table) && st.snapshot_due(e.table, &self.s.opts) {
                        due.push(e.table);
                    }
                }
            }
        }
        // Wake the committers answered above before the housekeeping below.
        for slot in answered {
            slot.wake();
        }
        if w.pending_bytes >= self.s.opts.checkpoint_bytes {
            // The commits are durable in the WAL: a failed checkpoint only
            // leaves them there (and the store refuses writes until reopened).
            let _ = self.checkpoint(w);
        }
        if !due.is_empty() {
            self.snapshot_in_background(due);
        }
    }

    /// Write automatic snapshots of tables `due` on a thread of their own,
    /// so that the next commits do not wait for them (called by the
    /// group-commit leader, writer lock held). If the thread is still
    /// writing earlier ones, the tables join its queue and it takes them
    /// before it ends. What could not run beside a snapshot being
    /// written (compaction, an explicit snapshot, a key rotation, closing)
    /// waits for it first, under the writer lock, so that no new one starts.
    fn snapshot_in_background(&self, due: Vec<u32>) {
        let mut sn = self.s.snapshotter.lock().unwrap_or_else(|p| p.into_inner());
        for t in due {
            if !sn.pending.contains(&t) {
                sn.pending.push(t);
            }
        }
        if sn.running {
            return; // the thread takes them before it ends
        }
        if let Some(h) = sn.thread.take()
            && h.join().is_err()
        {
            log::error!(target: "driftdb::snapshot", "the automatic snapshot thread panicked");
        }
        let db = self.background_handle();
        let spawned = std::thread::Builder::new().name("driftdb-snapshot".into()).spawn(move || db.snapshot_pending());
        match spawned {
            Ok(h) => {
                sn.running = true;
                sn.thread = Some(h);
            }
            Err(_) => {
                drop(sn);
                self.snapshot_pending();
            }
        }
    }

    /// Write the pending automatic snapshots until none is left (each table
    /// only if it is still due: a table found due again while its snapshot
    /// was being written may no longer be).
    fn snapshot_pending(&self) {
        // Cleared on the way out, even by a panic, so that a later group
        // starts a new thread.
        struct NotRunning<'a>(&'a Mutex<Snapshotter>);
        impl Drop for NotRunning<'_> {
            fn drop(&mut self) {
                let mut sn = self.0.lock().unwrap_or_else(|p| p.into_inner());
                sn.running = false;
            }
        }
        let _guard = NotRunning(&self.s.snapshotter);
        loop {
            let todo = {
                let mut sn = self.s.snapshotter.lock().unwrap_or_else(|p| p.into_inner());
                if sn.pending.is_empty() {
                    sn.running = false;
                    return;
                }
                std::mem::take(&mut sn.pending)
            };
            for t in todo {
                if self.read().snapshot_due(t, &self.s.opts) {
                    self.auto_snapshot(t);
                }
            }
        }
    }

    /// One automatic snapshot. The commits it covers are durable; a failure
    /// only delays the next one (its counters restart, so it is not retried
    /// on every commit).
    fn auto_snapshot(&self, t: u32) {
        if let Err(e) = self.snapshot_now(t) {
            log::warn!(target: "driftdb::snapshot", "automatic snapshot of table {t} failed: {e}");
            let mut st = self.write_state();
            if let Some(td) = st.tables.get_mut(&t) {
                td.since_events = 0;
                td.since_bytes = 0;
            }
        }
    }

    /// Wait for the automatic snapshots being written, if any (writer lock
    /// held, or the last handle dropping: no group adds more meanwhile).
    fn wait_snapshots(&self) {
        let h = self.s.snapshotter.lock().unwrap_or_else(|p| p.into_inner()).thread.take();
        if let Some(h) = h
            && h.join().is_err()
        {
            log::error!(target: "driftdb::snapshot", "the automatic snapshot thread panicked");
        }
    }

    /// Wait until the automatic snapshots started by earlier commits are
    /// written (they are written in the background; see
    /// [`Options::snapshot_every_events`]).
    pub fn wait_for_snapshots(&self) {
        let _w = self.lock_writer();
        self.wait_snapshots();
    }

    /// Copy the commits only in the WAL into the segments, sync them, and
    /// delete the WAL files (writer lock held). Crash-safe at every step: the
    /// WAL files go only after the segments holding their commits are synced,
    /// and opening skips WAL commits the segments already hold.
    /// The indexes the schema changes of `commit` (about to apply) will
    /// build, built now from the current rows under the read lock (the
    /// caller, the group-commit leader, keeps every other writer out).
    fn prebuild_indexes(&self, commit: &Commit) -> Vec<Prebuilt> {
        let st = self.read();
        let mut out = Vec::new();
        // Indexed columns per table as the commit's earlier changes leave them.
        let mut indexed: FastMap<u32, Vec<String>> = FastMap::default();
        for (i, e) in commit.events.iter().enumerate() {
            if e.op != Op::Alter {
                continue;
            }
            let Some(Ok(alter)) = e.doc.as_ref().map(|d| serde_json::from_value::<Alter>(d.to_value())) else {
                continue;
            };
            let Some(t) = st.tables.get(&e.table) else { continue };
            let cols = indexed.entry(e.table).or_insert_with(|| t.indexes.keys().cloned().collect());
            let column = match &alter {
                Alter::CreateIndex { column } => {
                    cols.push(column.clone());
                    column
                }
                Alter::AddColumn { column, default: Some(_) } if cols.contains(column) => column,
                Alter::RenameColumn { column, to } => {
                    if !cols.contains(column) {
                        continue;
                    }
                    cols.iter_mut().filter(|c| *c == column).for_each(|c| *c = to.clone());
                    to
                }
                Alter::DropColumn { column } | Alter::DropIndex { column } => {
                    cols.retain(|c| c != column);
                    continue;
                }
                Alter::AddColumn { .. } => continue,
            };
            // The commit's changes before this one: rows it writes are
            // indexed as the change applies; its schema changes apply here.
            let before = &commit.events[..i];
            let skip: FastSet<&Pk> =
                before.iter().filter(|x| x.table == e.table).filter_map(|x| x.key.as_ref()).collect();
            let alters: Vec<(u64, Alter)> = before
                .iter()
                .enumerate()
                .filter(|(_, x)| x.table == e.table && x.op == Op::Alter)
                .filter_map(|(j, x)| {
                    Some((commit.first_seq + j as u64, serde_json::from_value(x.doc.as_ref()?.to_value()).ok()?))
                })
                .chain(std::iter::once((commit.first_seq + i as u64, alter.clone())))
                .collect();
            let index = Index::from_pairs(t.rows.iter().filter(|(k, _)| !skip.contains(k)).map(|(k, d)| {
                let mut v = t.view_value(d, u64::MAX);
                apply_between(&alters, 0, u64::MAX, &mut v);
                (v.get(column.as_str()).cloned(), k.clone())
            }));
            out.push(Prebuilt {
                table: e.table,
                seq: commit.first_seq + i as u64,
                column: column.clone(),
                index,
                skip: skip.into_iter().cloned().collect(),
            });
        }
        out
    }

    fn checkpoint(&self, w: &mut WriterState) -> Result<()> {
        let wal_files = self.s.store.stream_files(WAL_STREAM);
        if wal_files.is_empty() && w.pending.is_empty() {
            return Ok(());
        }
        let r = self.checkpoint_steps(w);
        if let Err(e) = &r {
            // A retry in this session would copy commits the segments may
            // already hold: refuse writes instead; the next open checkpoints
            // from what the disk holds.
            self.s.store.poison_with(e);
        }
        r
    }

    fn checkpoint_steps(&self, w: &mut WriterState) -> Result<()> {
        // Seal (and sync) the WAL's current file: every WAL file is then
        // fully covered by what is copied below.
        self.s.store.seal_stream(WAL_STREAM)?;
        let mut moved = Vec::with_capacity(w.pending.len());
        for (ci, rec) in &w.pending {
            moved.push((*ci, self.s.store.append(EVENTS_STREAM, FileKind::Segment, rec)?));
        }
        self.s.store.sync_stream(EVENTS_STREAM)?;
        {
            let mut st = self.write_state();
            for (ci, pos) in moved {
                if let Some(c) = st.commits.get_mut(ci as usize) {
                    c.pos = pos;
                }
            }
        }
        let remove: Vec<u64> = self.s.store.stream_files(WAL_STREAM).iter().map(|f| f.file_id).collect();
        w.pending.clear();
        w.pending_bytes = 0;
        self.s.store.commit(Edit { remove, ..Default::default() })
    }

    /// Commit engine-built events (compaction markers) as one commit, writer lock held.
    fn commit_locked(&self, w: &mut WriterState, events: Vec<Event>) -> Result<u64> {
        let slot: Slot = SlotCell::new();
        let batch = Batch { events, ..Batch::default() };
        let req = Request {
            batch,
            iso: Isolation::ReadCommitted,
            snapshot: self.latest_seq(),
            reads: Default::default(),
            slot: slot.clone(),
        };
        self.run_group(w, vec![req]);
        let r = slot.take();
        r.unwrap_or_else(|| Err(Error::Poisoned("the commit was lost".into())))
    }

    /// Snapshot a table now (`SNAPSHOT t`); returns the sequence number it is taken at.
    pub fn snapshot(&self, table: &str) -> Result<u64> {
        let _w = self.lock_writer();
        self.wait_snapshots();
        let id = self.read().table(table)?.id;
        self.snapshot_now(id)
    }

    /// Write a snapshot of table `id` at the latest sequence number (the
    /// writer lock held, or on the automatic snapshot thread: see
    /// [`Db::snapshot_in_background`]).
    fn snapshot_now(&self, id: u32) -> Result<u64> {
        let (seq, rows, counted) = {
            let st = self.read();
            let seq = st.latest_seq();
            let Some(t) = st.tables.get(&id) else { return Ok(seq) };
            if t.snapshots.last().is_some_and(|(s, _)| *s == seq) {
                return Ok(seq);
            }
            let rows: Vec<(Pk, Arc<Doc>)> = t.rows.iter().map(|(k, v)| (k.clone(), t.view(v, seq))).collect();
            (seq, rows, (t.since_events, t.since_bytes))
        };
        self.write_snapshot(id, seq, &rows, counted)
    }

    /// Write rows as the snapshot of table `id` at `seq` and record it.
    /// `counted`: the table's events and bytes since its last snapshot when
    /// the rows were read (commits may come while the snapshot is written:
    /// they count towards the next one).
    fn write_snapshot(&self, id: u32, seq: u64, rows: &[(Pk, Arc<Doc>)], counted: (u64, u64)) -> Result<u64> {
        // A snapshot must never be ahead of the durable log. With immediate
        // durability every commit was synced before it applied, so there is
        // nothing to sync (and no second fsync of the WAL beside the leader's,
        // which could take a write-back error the leader then would not see).
        if self.s.opts.durability != Durability::Immediate {
            self.s.store.sync_stream(WAL_STREAM)?;
        }
        // The fields the table indexed at `seq`, so that opening can index
        // the rows as it loads them (not listed if unusually long).
        let mut indexes =
            self.read().tables.get(&id).and_then(|t| t.def_at(seq)).map(|d| d.indexes.clone()).unwrap_or_default();
        if !crate::table::snapshot::fields_fit(&indexes) {
            indexes.clear();
        }
        // Each row carries the values of those fields, so that opening
        // indexes it without parsing it.
        let names: Vec<&str> = indexes.iter().map(String::as_str).collect();
        let m = if names.len() <= crate::table::snapshot::MAX_PICKED_FIELDS { names.len() } else { 0 };
        let meta = SnapMeta { table: id, seq, rows: rows.len() as u64, indexes: indexes.clone() };
        let mut b = self.s.store.build_file(FileKind::Snapshot, SNAPSHOT_STREAM_BASE + id, meta.encode())?;
        // Records of about RECORD_TARGET bytes, by the rows' real encoded size
        // (a single row larger than a record gets a record of its own).
        b.with_write_behind(|b| {
            let mut chunk: Vec<(&Pk, Vec<u8>)> = Vec::new();
            let mut picked: Vec<Option<IKey>> = Vec::new();
            let mut size = 0usize;
            // A record whose values would take it past the frame limit (a
            // huge indexed string) is written without them: opening then
            // parses that file's rows, as it does a file written before.
            let record = |chunk: &[(&Pk, Vec<u8>)], picked: &[Option<IKey>]| {
                let r = encode_rows(chunk, (m > 0).then_some((m, picked)));
                if r.len() > crate::format::frame::MAX_PAYLOAD { encode_rows(chunk, None) } else { r }
            };
            for (k, v) in rows {
                let doc = v.text().as_bytes().to_vec();
                let mut n = doc.len() + 32;
                let mut vals = Vec::new();
                if m > 0 {
                    vals = pick_fields(v, &names)
                        .map_err(|e| {
                            Error::Query(format!(
                                "snapshot of table {id}: the document of row {k} is not valid JSON: {e}"
                            ))
                        })?
                        .into_iter()
                        .map(|x| x.and_then(crate::table::index::ikey_owned))
                        .collect();
                    n += vals.iter().map(|x| if let Some(IKey::Str(s)) = x { 5 + s.len() } else { 9 }).sum::<usize>();
                }
                if !chunk.is_empty() && size + n > crate::table::snapshot::RECORD_TARGET {
                    b.append(&record(&chunk, &picked))?;
                    chunk.clear();
                    picked.clear();
                    size = 0;
                }
                picked.extend(vals);
                size += n;
                chunk.push((k, doc));
            }
            if !chunk.is_empty() || rows.is_empty() {
                b.append(&record(&chunk, &picked))?;
            }
            Ok(())
        })?;
        let pending = b.finish()?;
        let file_id = pending.file_id();
        self.s.store.commit(crate::storage::store::Edit { add: vec![pending], ..Default::default() })?;
        let mut st = self.s.state.write().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = st.tables.get_mut(&id) {
            t.snapshots.push((seq, file_id));
            t.snapshots.sort_unstable();
            if t.snapshots.last().is_some_and(|(s, _)| *s == seq) {
                t.since_events = t.since_events.saturating_sub(counted.0);
                t.since_bytes = t.since_bytes.saturating_sub(counted.1);
            }
        }
        Ok(seq)
    }

    /// `COMPACT t [BEFORE ...]`: fold the table's history at or before the
    /// horizon (the end of the last commit at or before the point given) into
    /// a snapshot at the horizon. Afterwards a read before the horizon is an
    /// error; everything at or after it reads as before. The folded events'
    /// documents are removed from the sealed log segments (each rewritten
    /// under a fresh data key), and older snapshots of the table are deleted.
    /// Without `before`, the current horizon stays (all history is kept) and
    /// only the reclaiming is redone. Returns the horizon.
    ///
    /// Crash-safe: the horizon snapshot is written first, then the horizon is
    /// committed as an event; each segment rewrite is an atomic swap, and a
    /// later `COMPACT` finishes any rewrite a crash interrupted.
    pub fn compact(&self, table: &str, before: Option<&AsOf>) -> Result<u64> {
        let mut w = self.lock_writer();
        self.wait_snapshots();
        let (id, h, current) = {
            let st = self.read();
            let def = st.table(table)?;
            let current = st.tables.get(&def.id).map_or(0, |t| t.horizon);
            let h = match before {
                None => current,
                Some(a) => resolve(&st, a)?,
            };
            if let Some(oldest) = st.active.keys().next()
                && h > *oldest
            {
                return Err(Error::Query(format!(
                    "a transaction that reads the database as of @seq:{oldest} is open; COMPACT {table:?} cannot move the horizon past it (to @seq:{h}) until it ends"
                )));
            }
            (def.id, h, current)
        };
        if h > current {
            let rows: Vec<(Pk, Arc<Doc>)> = {
                let st = self.read();
                let t = st.tables.get(&id).ok_or_else(|| Error::NotFound(format!("table {table}")))?;
                if t.snapshots.iter().any(|(s, _)| *s == h) {
                    Vec::new()
                } else {
                    self.rows_at(&st, id, t, h)?.into_iter().collect()
                }
            };
            let has = self.read().tables.get(&id).is_some_and(|t| t.snapshots.iter().any(|(s, _)| *s == h));
            if !has {
                self.write_snapshot(id, h, &rows, (u64::MAX, u64::MAX))?;
            }
            let baseline = {
                let st = self.read();
                let t = st.tables.get(&id).ok_or_else(|| Error::NotFound(format!("table {table}")))?;
                self.rows_at(&st, id, t, h)?
            };
            self.commit_locked(
                &mut w,
                vec![Event {
                    op: Op::Compact,
                    table: id,
                    key: None,
                    doc: Some(Arc::new(Doc::from_value(serde_json::json!({ "horizon": h })))),
                    patch: None,
                }],
            )?;
            let mut st = self.s.state.write().unwrap_or_else(|p| p.into_inner());
            st.fold_history(id, h, baseline.keys());
        }
        let h = h.max(current);
        if h == 0 {
            return Ok(0);
        }
        // Every commit into sealed segments first, so that all of them can
        // be rewritten.
        self.checkpoint(&mut w)?;
        self.s.store.seal_stream(EVENTS_STREAM)?;
        self.reclaim(id, h)?;
        Ok(h)
    }

    /// Remove the documents of table `id`'s events at or before `h` from the
    /// sealed log segments, and its snapshots older than `h`.
    fn reclaim(&self, id: u32, h: u64) -> Result<()> {
        let _m = self.s.maint.lock().unwrap_or_else(|p| p.into_inner());
        let active: Vec<u64> = self
            .s
            .store
            .stream_files(EVENTS_STREAM)
            .into_iter()
            .filter(|f| !matches!(f.state, crate::format::keyring::FileState::Sealed { .. }))
            .map(|f| f.file_id)
            .collect();
        for f in self.s.store.stream_files(EVENTS_STREAM) {
            if active.contains(&f.file_id) {
                continue;
            }
            let starts_before = self.read().commits.iter().any(|c| c.pos.file_id == f.file_id && c.first_seq <= h);
            if !starts_before {
                continue;
            }
            let rewritten = self.s.store.rewrite_file(f.file_id, |rec| {
                let mut c = Commit::decode(rec).map_err(|e| Error::corrupted(&f.name, 0, e.reason))?;
                let mut changed = false;
                for (i, e) in c.events.iter_mut().enumerate() {
                    let seq = c.first_seq + i as u64;
                    if e.table == id && seq <= h && matches!(e.op, Op::Insert | Op::Patch | Op::SoftDelete) {
                        *e = Event { op: Op::Folded, table: id, key: None, doc: None, patch: None };
                        changed = true;
                    }
                }
                Ok(changed.then(|| c.encode()))
            })?;
            if let Some(positions) = rewritten {
                let mut st = self.s.state.write().unwrap_or_else(|p| p.into_inner());
                let mut idx: Vec<usize> =
                    (0..st.commits.len()).filter(|i| st.commits[*i].pos.file_id == f.file_id).collect();
                idx.sort_by_key(|i| st.commits[*i].pos.offset);
                if idx.len() != positions.len() {
                    return Err(Error::corrupted(&f.name, 0, "rewritten segment holds a different number of commits"));
                }
                for (i, p) in idx.into_iter().zip(positions) {
                    st.commits[i].pos = p;
                }
                drop(st);
                let mut cache = self.s.cache.lock().unwrap_or_else(|p| p.into_inner());
                cache.map.clear();
                cache.bytes = 0;
            }
        }
        let old: Vec<u64> = self
            .s
            .store
            .files()
            .into_iter()
            .filter(|f| f.stream == SNAPSHOT_STREAM_BASE + id)
            .filter(|f| SnapMeta::decode(&f.meta).is_ok_and(|m| m.seq < h))
            .map(|f| f.file_id)
            .collect();
        if !old.is_empty() {
            self.s.store.commit(crate::storage::store::Edit { remove: old, ..Default::default() })?;
        }
        Ok(())
    }

    /// Write several changes as one commit (a `ReadCommitted` transaction:
    /// each change is re-applied to the latest state when it commits);
    /// returns the last sequence number. Nothing is committed if `f` or any
    /// change fails.
    pub fn write(&self, f: impl FnOnce(&mut Txn<'_>) -> Result<()>) -> Result<u64> {
        let mut t = self.begin(Isolation::ReadCommitted);
        f(&mut t)?;
        t.commit()
    }

    /// `CREATE TABLE`.
    pub fn create_table(&self, name: &str, pk: &str, indexes: &[&str]) -> Result<u64> {
        self.write(|w| w.create_table(name, pk, indexes))
    }

    /// `INSERT`: returns the event's sequence number.
    pub fn insert(&self, table: &str, doc: Value) -> Result<u64> {
        self.write(|w| w.insert(table, doc))
    }

    /// `INSERT` of a document given as JSON text (see [`Txn::insert_json`]):
    /// returns the event's sequence number.
    pub fn insert_json(&self, table: &str, json: impl Into<String>) -> Result<u64> {
        self.write(|w| w.insert_json(table, json))
    }

    /// `PATCH`: top-level merge; a `null` value removes the field.
    pub fn patch(&self, table: &str, key: &Pk, set: Map<String, Value>) -> Result<u64> {
        self.write(|w| w.patch(table, key, set))
    }

    /// `SOFT DELETE`.
    pub fn soft_delete(&self, table: &str, key: &Pk) -> Result<u64> {
        self.write(|w| w.soft_delete(table, key))
    }

    /// The current document of a row.
    pub fn get(&self, table: &str, key: &Pk) -> Result<Option<Value>> {
        let st = self.read();
        let def = st.table(table)?;
        let Some(t) = st.tables.get(&def.id) else { return Ok(None) };
        Ok(t.rows.get(key).map(|d| t.view_value(d, u64::MAX)))
    }

    /// The document of a row as of sequence number `seq`.
    pub fn get_as_of(&self, table: &str, key: &Pk, seq: u64) -> Result<Option<Value>> {
        let st = self.read();
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

    fn doc_at(&self, st: &State, id: u32, key: &Pk, h: &[Hist], seq: u64) -> Result<Option<Value>> {
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
    fn baseline(&self, st: &State, id: u32) -> Result<Arc<Rows>> {
        let t = st.tables.get(&id).ok_or_else(|| Error::NotFound(format!("table {id}")))?;
        if let Some((h, rows)) = self.s.baselines.lock().unwrap_or_else(|p| p.into_inner()).get(&id)
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
        let rows = Arc::new(load_snapshot(&self.s.store, file, t.horizon)?);
        self.s.baselines.lock().unwrap_or_else(|p| p.into_inner()).insert(id, (t.horizon, rows.clone()));
        Ok(rows)
    }

    /// A decoded commit, from the cache or from disk (no state lock needed).
    fn load_commit_meta(&self, ci: u32, meta: CommitMeta) -> Result<Arc<Commit>> {
        if let Some((c, _)) = self.s.cache.lock().unwrap_or_else(|p| p.into_inner()).map.get(&ci) {
            return Ok(c.clone());
        }
        let rec = self.s.store.read_record(meta.pos)?;
        let name = crate::format::file_name(meta.pos.file_id, FileKind::Segment);
        let c = Commit::decode(&rec).map_err(|e| Error::corrupted(&name, meta.pos.offset, e.reason))?;
        if c.first_seq != meta.first_seq || c.events.len() as u32 != meta.len {
            return Err(Error::tampered(&name, meta.pos.offset, "commit record changed since it was read"));
        }
        let c = Arc::new(c);
        let mut cache = self.s.cache.lock().unwrap_or_else(|p| p.into_inner());
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

    fn read_commit_record(&self, st: &State, ci: u32) -> Result<(Vec<u8>, CommitMeta, String)> {
        let meta = *st.commits.get(ci as usize).ok_or_else(|| Error::NotFound(format!("commit {ci}")))?;
        let rec = self.s.store.read_record(meta.pos)?;
        Ok((rec, meta, crate::format::file_name(meta.pos.file_id, FileKind::Segment)))
    }

    /// One event: from the cache, or by decoding just that event of its commit.
    fn event(&self, st: &State, h: Hist) -> Result<Event> {
        if let Some((c, _)) = self.s.cache.lock().unwrap_or_else(|p| p.into_inner()).map.get(&h.commit) {
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
        let st = self.read();
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
        let st = self.read();
        st.names.values().filter_map(|id| st.defs.get(id).cloned()).collect()
    }

    /// A table's definition.
    pub fn describe(&self, table: &str) -> Result<TableDef> {
        self.read().table(table).cloned()
    }

    /// A table's definition as of a point in history (columns, indexes).
    pub fn describe_at(&self, table: &str, as_of: &AsOf) -> Result<TableDef> {
        let st = self.read();
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
                let st = self.read();
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
    fn rows_at(&self, st: &State, id: u32, t: &TableData, seq: u64) -> Result<Rows> {
        self.replay(replay_plan(st, id, t, seq))
    }

    /// Carry out a replay plan; needs no lock on the state.
    fn replay(&self, plan: ReplayPlan) -> Result<Rows> {
        let id = plan.table;
        let mut rows = match plan.snapshot {
            Some((seq, file)) => load_snapshot(&self.s.store, file, seq)?,
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

    /// Snapshots of a table: sequence numbers, oldest first.
    pub fn snapshots(&self, table: &str) -> Result<Vec<u64>> {
        let st = self.read();
        let id = st.table(table)?.id;
        Ok(st.tables.get(&id).map(|t| t.snapshots.iter().map(|(s, _)| *s).collect()).unwrap_or_default())
    }

    /// Run a `SELECT`. A current read whose `WHERE` has an `=`, `IN` or
    /// range predicate on an indexed field reads only the candidate rows.
    pub fn select(&self, sel: &Select) -> Result<Vec<Value>> {
        {
            let st = self.read();
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
            && let Some(keys) = crate::table::index::plan(f, &t.indexes)
        {
            let docs: Vec<Arc<Doc>> = keys.iter().filter_map(|k| t.rows.get(k)).map(|d| t.view(d, u64::MAX)).collect();
            return crate::query::eval::run_select(sel, docs.into_iter());
        }
        crate::query::eval::run_select(sel, t.rows.values().map(|d| t.view(d, u64::MAX)))
    }

    /// The sequence number an `AS OF` names now.
    pub(crate) fn resolve_as_of(&self, a: &AsOf) -> Result<u64> {
        resolve(&self.read(), a)
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

    /// Run a DriftQL query and deserialize its rows.
    pub fn query<T: serde::de::DeserializeOwned>(&self, driftql: &str) -> Result<Vec<T>> {
        let stmt = crate::query::parse_one(driftql)?;
        let Stmt::Select(sel) = stmt else {
            return Err(Error::Query("query() runs a SELECT; use execute() for other statements".into()));
        };
        self.select(&sel)?
            .into_iter()
            .map(|v| {
                serde_json::from_value(v).map_err(|e| Error::Query(format!("row does not fit the requested type: {e}")))
            })
            .collect()
    }

    /// Execute one statement (outside any transaction: `BEGIN`, `COMMIT` and
    /// `ROLLBACK` belong in a script run by [`Db::execute`]).
    pub fn execute_stmt(&self, stmt: &Stmt) -> Result<Outcome> {
        Ok(match stmt {
            Stmt::Begin(_) | Stmt::Commit | Stmt::Rollback => {
                return Err(Error::Query(format!(
                    "{stmt} is only valid in a script (Db::execute) or through Db::begin"
                )));
            }
            Stmt::CreateTable { name, pk, indexes } => {
                let idx: Vec<&str> = indexes.iter().map(String::as_str).collect();
                Outcome::Committed(self.create_table(name, pk, &idx)?)
            }
            Stmt::Insert { table, doc } => Outcome::Committed(self.insert(table, Value::Object(doc.clone()))?),
            Stmt::Patch { table, key, set } => Outcome::Committed(self.patch(table, key, set.clone())?),
            Stmt::SoftDelete { table, key } => Outcome::Committed(self.soft_delete(table, key)?),
            Stmt::Select(sel) => Outcome::Rows(self.select(sel)?),
            Stmt::ShowTables => Outcome::Tables(self.tables()),
            Stmt::Describe { table, as_of: None } => Outcome::Tables(vec![self.describe(table)?]),
            Stmt::Describe { table, as_of: Some(a) } => Outcome::Tables(vec![self.describe_at(table, a)?]),
            Stmt::Alter { table, alter } => Outcome::Committed(self.write(|t| t.alter(table, alter.clone()))?),
            Stmt::Expect { query, op, value } => {
                let got = crate::query::eval::single_value(&self.select(query)?)?;
                expect_outcome(stmt, got, *op, value)?
            }
            Stmt::ShowDrift { table, key } => Outcome::Drift(self.history(table, key)?),
            Stmt::Snapshot { table } => Outcome::Snapshot(self.snapshot(table)?),
            Stmt::Compact { table, before } => Outcome::Compacted(self.compact(table, before.as_ref())?),
        })
    }

    /// Execute a script. Outside a transaction each write statement is its
    /// own commit; between `BEGIN` and `COMMIT` the writes commit together
    /// or not at all. The first error stops the script and is returned with
    /// the statement's number: statements committed before it stay
    /// committed, and an open transaction is rolled back (the message says
    /// so). A script that ends inside a transaction rolls it back and is an
    /// error.
    pub fn execute(&self, script: &str) -> Result<Vec<Outcome>> {
        let mut out = Vec::new();
        self.execute_each(script, |o| out.push(o))?;
        Ok(out)
    }

    /// [`Db::execute`], handing each statement's outcome to `each` as soon
    /// as it is known.
    pub fn execute_each(&self, script: &str, mut each: impl FnMut(Outcome)) -> Result<()> {
        let stmts = crate::query::parse(script)?;
        let mut txn: Option<(usize, Txn<'_>)> = None;
        for (i, s) in stmts.iter().enumerate() {
            let r = match (&mut txn, s) {
                (None, Stmt::Begin(iso)) => {
                    txn = Some((i + 1, self.begin(iso.unwrap_or_default())));
                    Ok(Outcome::Began(iso.unwrap_or_default()))
                }
                (None, Stmt::Commit | Stmt::Rollback) => Err(Error::Query(format!("{s} outside a transaction"))),
                (None, s) => self.execute_stmt(s),
                (Some(_), Stmt::Begin(_)) => Err(Error::Query("BEGIN inside a transaction (no nesting)".into())),
                (Some(_), Stmt::Commit) => match txn.take() {
                    Some((_, t)) => t.commit().map(Outcome::Committed),
                    None => Err(Error::Query("COMMIT outside a transaction".into())),
                },
                (Some(_), Stmt::Rollback) => {
                    if let Some((_, t)) = txn.take() {
                        t.rollback();
                    }
                    Ok(Outcome::RolledBack)
                }
                (Some((_, t)), s) => Self::execute_in(self, t, s),
            };
            match r {
                Ok(o) => each(o),
                Err(e) => {
                    let aborted = match txn.take() {
                        Some((at, t)) => {
                            t.rollback();
                            format!("; the transaction begun at statement {at} was rolled back")
                        }
                        None if matches!(s, Stmt::Commit) => "; the transaction was rolled back".to_string(),
                        None => String::new(),
                    };
                    return Err(match e {
                        Error::Query(m) => Error::Query(format!("statement {}: {m}{aborted}", i + 1)),
                        Error::Constraint(m) => Error::Constraint(format!("statement {}: {m}{aborted}", i + 1)),
                        Error::Conflict(m) => Error::Conflict(format!("statement {}: {m}{aborted}", i + 1)),
                        other => other,
                    });
                }
            }
        }
        if let Some((at, t)) = txn.take() {
            t.rollback();
            return Err(Error::Query(format!(
                "the transaction begun at statement {at} was not committed (no COMMIT before the end of the script); it was rolled back"
            )));
        }
        Ok(())
    }

    /// One statement inside a script's transaction.
    pub(crate) fn execute_in(&self, t: &mut Txn<'_>, s: &Stmt) -> Result<Outcome> {
        Ok(match s {
            Stmt::CreateTable { name, pk, indexes } => {
                let idx: Vec<&str> = indexes.iter().map(String::as_str).collect();
                t.create_table(name, pk, &idx)?;
                Outcome::Staged
            }
            Stmt::Insert { table, doc } => {
                t.insert(table, Value::Object(doc.clone()))?;
                Outcome::Staged
            }
            Stmt::Patch { table, key, set } => {
                t.patch(table, key, set.clone())?;
                Outcome::Staged
            }
            Stmt::SoftDelete { table, key } => {
                t.soft_delete(table, key)?;
                Outcome::Staged
            }
            Stmt::Select(sel) => Outcome::Rows(t.select(sel)?),
            Stmt::Alter { table, alter } => {
                t.alter(table, alter.clone())?;
                Outcome::Staged
            }
            Stmt::Expect { query, op, value } => {
                let got = crate::query::eval::single_value(&t.select(query)?)?;
                expect_outcome(s, got, *op, value)?
            }
            Stmt::Describe { table, as_of: None } => Outcome::Tables(vec![t.describe(table)?]),
            Stmt::Snapshot { .. } | Stmt::Compact { .. } => {
                return Err(Error::Query(format!("{s} is not allowed inside a transaction")));
            }
            other => self.execute_stmt(other)?,
        })
    }
}

/// The outcome of an `EXPECT` whose query returned `got`.
fn expect_outcome(stmt: &Stmt, got: Value, op: crate::query::ast::CmpOp, value: &Value) -> Result<Outcome> {
    if crate::query::eval::compare(&got, op, value) {
        Ok(Outcome::Expected(got))
    } else {
        Err(Error::Constraint(format!("{stmt} failed: the query returned {got}")))
    }
}

/// Apply one log record while opening; returns the commit's index.
fn replay_record(st: &mut State, kind: FileKind, pos: RecordPos, rec: &[u8]) -> Result<u32> {
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
    for (i, e) in c.events.into_iter().enumerate() {
        let seq = c.first_seq + i as u64;
        let doc = match e.op {
            Op::CreateTable | Op::Compact | Op::Alter => match e.doc {
                Some(t) => Some(Arc::new(Doc::from_text(t).map_err(|err| {
                    Error::corrupted(&name, pos.offset, format!("commit record: event at seq {seq}: {err}"))
                })?)),
                None => None,
            },
            _ if st.rows_from.get(&e.table).is_none_or(|from| seq > *from) => {
                e.doc.map(|t| Arc::new(Doc::from_text_unchecked(t).at(seq)))
            }
            _ => None,
        };
        // A row a snapshot covers only needs its history indexed: no key made.
        let covered = st.rows_from.get(&e.table).is_some_and(|from| seq <= *from);
        let (key, hkey) = match e.key {
            Some(k) if covered => (None, Some(HKey::of_ref(k))),
            k => (k.map(crate::table::KeyRef::to_pk), None),
        };
        events.push(Applied { op: e.op, table: e.table, key, hkey, doc, picks: None });
    }
    let ci = st.commits.len() as u32;
    st.apply_events(c.first_seq, c.time_micros, events, pos, rec.len())
        .map_err(|e| Error::corrupted(&name, pos.offset, e.to_string()))?;
    Ok(ci)
}

/// A row's indexed fields as the index keys them (`None`: missing, or not
/// indexable), in the order of the field list they were picked for: one
/// kept inline (a table with one index: no allocation per row), more in a
/// vector.
#[derive(Clone)]
enum Picked {
    One(Option<IKey>),
    Many(Vec<Option<IKey>>),
}

impl Picked {
    fn from_vec(mut v: Vec<Option<IKey>>) -> Picked {
        if v.len() == 1 { Picked::One(v.pop().flatten()) } else { Picked::Many(v) }
    }

    /// The value of field `i`, taken out.
    fn take(&mut self, i: usize) -> Option<IKey> {
        match self {
            Picked::One(v) if i == 0 => v.take(),
            Picked::One(_) => None,
            Picked::Many(v) => v.get_mut(i).and_then(Option::take),
        }
    }
}

/// The index keys of picked field values.
fn ikeys(vals: Vec<Option<Value>>) -> Vec<Option<IKey>> {
    vals.into_iter().map(|v| v.and_then(crate::table::index::ikey_owned)).collect()
}

/// Check every current row of a table read at open (their documents are
/// still the text of the log's records) and build the table's secondary
/// indexes from them, in one pass, on up to four threads. `pre` holds, by
/// row in key order, the fields `pre_fields` already picked from rows whose
/// text was checked (`None`, or a list shorter than the rows: not done).
fn check_rows_and_index(name: &str, t: &mut TableData, pre_fields: &[String], pre: Vec<Option<Picked>>) -> Result<()> {
    let fields: Vec<String> = t.indexes.keys().cloned().collect();
    let f: Vec<&str> = fields.iter().map(String::as_str).collect();
    // Where each field is in what was picked before (all of them, or unused).
    let at: Option<Vec<usize>> = fields.iter().map(|x| pre_fields.iter().position(|p| p == x)).collect();
    let mut pre = pre.into_iter();
    let mut rows: Vec<(&Pk, &Arc<Doc>, Option<Picked>)> =
        t.rows.iter().map(|(k, d)| (k, d, pre.next().flatten().filter(|_| at.is_some()))).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    // Each part of the rows (in key order) is checked and grouped by field
    // value on its own thread; the parts' groups, joined in order, stay in
    // key order.
    type Groups = Vec<BTreeMap<crate::table::index::IKey, Vec<Pk>>>;
    let pick = |part: &mut [(&Pk, &Arc<Doc>, Option<Picked>)]| -> Result<Groups> {
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

/// What a read of the past needs: the snapshot to start from and the commits after it.
struct ReplayPlan {
    table: u32,
    /// The snapshot to start from: (sequence number, file id).
    snapshot: Option<(u64, u64)>,
    commits: Vec<(u32, CommitMeta)>,
    /// The point read.
    seq: u64,
    /// The table's schema changes up to `seq` (documents read through them).
    alters: Vec<(u64, Alter)>,
}

fn replay_plan(st: &State, id: u32, t: &TableData, seq: u64) -> ReplayPlan {
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

/// The top-level fields `names` of a document: from its parsed form, or
/// picked from its text in one pass (an error if the text does not parse).
fn pick_fields(d: &Doc, names: &[&str]) -> std::result::Result<Vec<Option<Value>>, serde_json::Error> {
    if d.has_value() { Ok(d.fields(names)) } else { crate::table::doc::check(d.text(), names) }
}

/// Every row of a snapshot file, checked.
fn load_snapshot(store: &Store, file: u64, seq: u64) -> Result<Rows> {
    // Snapshot rows are in key order: a bulk build, not an insert per row.
    Ok(load_snapshot_rows(store, file, seq, true)?.rows.into_iter().collect())
}

/// A snapshot's rows, and the indexed values its records carry.
struct SnapRows {
    /// In key order.
    rows: Vec<(Pk, Arc<Doc>)>,
    /// Values per row (0: not every record carries them, or not as many).
    fields: usize,
    /// `rows.len() × fields` values, in row order.
    picked: Vec<Option<IKey>>,
}

/// A snapshot's rows, in key order. Unless `checked`, the documents are
/// left unchecked for the caller (see [`Doc::from_text_unchecked`]).
fn load_snapshot_rows(store: &Store, file: u64, seq: u64, checked: bool) -> Result<SnapRows> {
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

/// A table's latest snapshot as loaded at open: its rows in key order and,
/// by row, the fields `fields` picked from the rows whose text checked.
struct Loaded {
    table: u32,
    fields: Vec<String>,
    rows: Vec<(Pk, Arc<Doc>)>,
    picks: Vec<Option<Picked>>,
}

/// A table's rows at open: those the log wrote after its snapshot
/// (`written`, in key order), and the snapshot's rows (`snap`, in key order) the log
/// neither wrote nor deleted (`gone`) after it; with, by row of the result,
/// the snapshot row's `picks` (none for the rows the log wrote).
fn merge_rows(
    snap: Vec<(Pk, Arc<Doc>)>,
    picks: Vec<Option<Picked>>,
    written: Vec<(Pk, Arc<Doc>)>,
    gone: Option<&FastSet<Pk>>,
) -> (Rows, Vec<Option<Picked>>) {
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

/// The sequence number an `AS OF` names: the end of the last commit at or
/// before it. Beyond the latest sequence, in the future, or before the first
/// commit is an error, never "now".
fn resolve(st: &State, a: &AsOf) -> Result<u64> {
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

fn table_at<'a>(st: &'a State, table: &str, seq: u64) -> Result<&'a TableDef> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_at_open_are_checked_and_indexed() {
        let mut t = TableData::default();
        t.indexes.insert("s".into(), Index::default());
        for i in 0..5000i64 {
            let text = format!(r#"{{"id":{i},"s":"v{}","n":{i}}}"#, i % 3);
            t.rows.insert(Pk::Int(i), Arc::new(Doc::from_text_unchecked(&text)));
        }
        check_rows_and_index("table \"t\"", &mut t, &[], Vec::new()).unwrap();
        let ix = &t.indexes["s"];
        assert_eq!(ix.len(), 3);
        let hits = ix.candidates(crate::query::ast::CmpOp::Eq, &Value::from("v1")).unwrap();
        assert_eq!(hits.len(), 1667);
        assert!(hits.iter().all(|k| matches!(k, Pk::Int(i) if i % 3 == 1)));

        // A row whose text is not JSON is an error naming the table and the
        // row, never a row that reads as null.
        t.rows.insert(Pk::Int(4242), Arc::new(Doc::from_text_unchecked(r#"{"id":4242,"s":"v"#)));
        let e = check_rows_and_index("table \"t\"", &mut t, &[], Vec::new()).unwrap_err().to_string();
        assert!(e.contains("table \"t\"") && e.contains("4242") && e.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn history_keys_of_every_length_around_the_inline_limit_stay_distinct() {
        let mut keys: Vec<Pk> = (0..=HKEY_INLINE + 2).map(|n| Pk::Str("k".repeat(n).into())).collect();
        // Same bytes up to the padding, and a key that is all padding.
        keys.push(Pk::Str("k\0".into()));
        keys.push(Pk::Str("\0".into()));
        keys.extend([Pk::Int(0), Pk::Int(-1), Pk::Int(i64::MAX), Pk::Str("0".into())]);
        let mut h = RowHistory::default();
        for (i, k) in keys.iter().enumerate() {
            for j in 0..=i {
                h.push_key(
                    HKey::of(k),
                    Hist { seq: (i * 100 + j) as u64, op: Op::Patch, commit: 0, idx: 0, folded: false },
                );
            }
        }
        assert_eq!(h.len(), keys.len());
        for (i, k) in keys.iter().enumerate() {
            let got: Vec<u64> = h.get(k).map(|v| v.iter().map(|e| e.seq).collect()).unwrap_or_default();
            assert_eq!(got, (0..=i).map(|j| (i * 100 + j) as u64).collect::<Vec<_>>(), "{k:?}");
        }
        assert!(h.get(&Pk::Str("k".repeat(HKEY_INLINE + 3).into())).is_none());
        assert!(h.get(&Pk::Int(1)).is_none());
    }

    #[test]
    fn history_built_shard_by_shard_equals_history_built_event_by_event() {
        // Open groups entries by shard and fills each shard in turn; every
        // key must end with the same list, in event order, as pushing each
        // event in turn gives.
        let mut one = RowHistory::default();
        let mut by_shard = RowHistory::default();
        let mut parts: Vec<Vec<(HKey, Hist)>> = vec![Vec::new(); HIST_SHARDS];
        let key = |i: u64| {
            if i.is_multiple_of(3) { Pk::Int(i as i64 % 700) } else { Pk::Str(format!("user-{:05}", i % 900).into()) }
        };
        for i in 0..5000u64 {
            let h = Hist { seq: i + 1, op: Op::Patch, commit: i as u32, idx: 0, folded: false };
            one.push_key(HKey::of(&key(i)), h);
            let k = HKey::of(&key(i));
            parts[by_shard.shard_of(&k)].push((k, h));
        }
        for (i, p) in parts.into_iter().enumerate() {
            by_shard.fill_shard(i, p);
        }
        assert_eq!(one.len(), by_shard.len());
        assert!(one.len() > 1000);
        for i in 0..5000u64 {
            let a: Vec<u64> = one.get(&key(i)).map(|v| v.iter().map(|e| e.seq).collect()).unwrap_or_default();
            let b: Vec<u64> = by_shard.get(&key(i)).map(|v| v.iter().map(|e| e.seq).collect()).unwrap_or_default();
            assert!(!a.is_empty());
            assert_eq!(a, b, "{:?}", key(i));
        }
    }

    /// A database whose table `t` (indexed on `s`) has rows 0 to 2, then a
    /// snapshot written by hand of the rows given (each with `s` = "x" in
    /// its text), with the indexed values `picked` (none: the format without);
    /// closed and opened again.
    fn reopened_with_snapshot(picked: Option<&[Option<IKey>]>) -> Db {
        let fs = crate::storage::memfs::MemFs::new();
        let opts = Options {
            store: crate::StoreOptions { vfs: Arc::new(fs.clone()), ..Default::default() },
            ..Options::default()
        };
        let key = KeySource::Raw(crate::crypto::keys::SecretKey::from_bytes([3; 32]));
        let db = Db::create("/db", &key, opts.clone()).unwrap();
        db.create_table("t", "id", &["s"]).unwrap();
        let docs: Vec<(Pk, Vec<u8>)> = (0..3i64)
            .map(|i| {
                db.insert("t", serde_json::json!({"id": i, "s": "x"})).unwrap();
                (Pk::Int(i), format!(r#"{{"id":{i},"s":"x"}}"#).into_bytes())
            })
            .collect();
        let id = db.read().table("t").unwrap().id;
        let meta = SnapMeta { table: id, seq: db.latest_seq(), rows: 3, indexes: vec!["s".into()] };
        let mut b = db.store().build_file(FileKind::Snapshot, SNAPSHOT_STREAM_BASE + id, meta.encode()).unwrap();
        let rows: Vec<(&Pk, Vec<u8>)> = docs.iter().map(|(k, d)| (k, d.clone())).collect();
        b.append(&encode_rows(&rows, picked.map(|p| (1, p)))).unwrap();
        let pending = b.finish().unwrap();
        db.store().commit(crate::Edit { add: vec![pending], ..Default::default() }).unwrap();
        db.close().unwrap();
        Db::open("/db", &key, opts).unwrap()
    }

    fn hits(db: &Db, v: &str) -> usize {
        let r = db.read();
        let t = &r.tables[&r.table("t").unwrap().id];
        t.indexes["s"].candidates(crate::query::ast::CmpOp::Eq, &Value::from(v)).map_or(0, |h| h.len())
    }

    #[test]
    fn log_writes_settle_to_each_keys_last_write_in_key_order() {
        let d = |n: i64| Some(Arc::new(Doc::from_value(serde_json::json!({ "n": n }))));
        let mut w: LogWrites = vec![
            (Pk::Int(3), d(1)),
            (Pk::Int(1), d(2)),
            (Pk::Int(3), None),
            (Pk::Int(2), d(3)),
            (Pk::Int(1), d(4)),
            (Pk::Int(3), d(5)),
            (Pk::Int(4), d(6)),
            (Pk::Int(4), None),
        ];
        settle_writes(&mut w);
        let got: Vec<(Pk, Option<i64>)> =
            w.iter().map(|(k, d)| (k.clone(), d.as_ref().and_then(|d| d.value()["n"].as_i64()))).collect();
        assert_eq!(got, vec![(Pk::Int(1), Some(4)), (Pk::Int(2), Some(3)), (Pk::Int(3), Some(5)), (Pk::Int(4), None)]);
    }

    #[test]
    fn opening_indexes_snapshot_rows_by_the_values_they_carry_without_parsing_them() {
        // Values that differ from the text (no writer makes such a file:
        // here they show which of the two opening used).
        let carried = [Some(IKey::Str("carried".into())), None, Some(IKey::Str("carried".into()))];
        let db = reopened_with_snapshot(Some(&carried));
        assert_eq!((hits(&db, "carried"), hits(&db, "x")), (2, 0));
    }

    #[test]
    fn snapshot_rows_without_indexed_values_are_parsed_and_indexed_at_open() {
        let db = reopened_with_snapshot(None);
        assert_eq!((hits(&db, "carried"), hits(&db, "x")), (0, 3));
    }

    #[test]
    fn snapshots_written_by_the_database_carry_each_rows_indexed_values() {
        use crate::storage::memfs::MemFs;
        let fs = MemFs::new();
        let opts = Options {
            store: crate::StoreOptions { vfs: Arc::new(fs.clone()), ..Default::default() },
            ..Options::default()
        };
        let key = KeySource::Raw(crate::crypto::keys::SecretKey::from_bytes([3; 32]));
        let db = Db::create("/db", &key, opts).unwrap();
        db.create_table("t", "id", &["s", "n"]).unwrap();
        db.insert_json("t", r#"{"id":1,"s":"a","n":2}"#).unwrap();
        db.insert("t", serde_json::json!({"id": 2, "s": [1], "n": 2.5})).unwrap();
        db.insert("t", serde_json::json!({"id": 3, "n": true})).unwrap();
        db.snapshot("t").unwrap();
        let id = db.read().table("t").unwrap().id;
        let file = db.read().tables[&id].snapshots.last().unwrap().1;
        let got = load_snapshot_rows(db.store(), file, 0, true).unwrap();
        assert_eq!(got.fields, 2);
        let num = |f: f64| crate::table::index::ikey(&Value::from(f));
        assert_eq!(
            got.picked,
            vec![Some(IKey::Str("a".into())), num(2.0), None, num(2.5), None, Some(IKey::Bool(true))]
        );
    }

    #[test]
    fn a_snapshot_whose_rows_are_out_of_key_order_is_refused_at_open() {
        use crate::storage::memfs::MemFs;
        let fs = MemFs::new();
        let opts = || Options {
            store: crate::StoreOptions { vfs: Arc::new(fs.clone()), ..Default::default() },
            ..Options::default()
        };
        let key = KeySource::Raw(crate::crypto::keys::SecretKey::from_bytes([3; 32]));
        let db = Db::create("/db", &key, opts()).unwrap();
        db.create_table("t", "id", &["s"]).unwrap();
        for i in 0..3i64 {
            db.insert("t", serde_json::json!({"id": i, "s": "x"})).unwrap();
        }
        // A snapshot (authentic: written with the key) whose rows are not in
        // key order, as only a faulty writer could make it.
        let id = db.read().table("t").unwrap().id;
        let seq = db.latest_seq();
        let meta = SnapMeta { table: id, seq, rows: 2, indexes: vec!["s".into()] };
        let mut b = db.store().build_file(FileKind::Snapshot, SNAPSHOT_STREAM_BASE + id, meta.encode()).unwrap();
        let (k2, k1) = (Pk::Int(2), Pk::Int(1));
        b.append(&encode_rows(&[(&k2, br#"{"id":2,"s":"x"}"#.to_vec()), (&k1, br#"{"id":1,"s":"x"}"#.to_vec())], None))
            .unwrap();
        let pending = b.finish().unwrap();
        let name = crate::format::file_name(pending.file_id(), FileKind::Snapshot);
        db.store().commit(crate::Edit { add: vec![pending], ..Default::default() }).unwrap();
        db.close().unwrap();
        let e = Db::open("/db", &key, opts()).err().expect("open must refuse the snapshot").to_string();
        assert!(e.contains("out of key order") && e.contains(&name), "{e}");
    }
}
