//! A log-structured merge tree of sorted runs: entries go into an in-memory
//! *memtable*; a full memtable is frozen and flushed into a level-0 run;
//! runs are merged into deeper levels (leveled: level *n+1* holds about ten
//! times level *n*, and below level 0 the runs of a level do not overlap).
//!
//! The tree stores byte keys and values and knows nothing of tables: a
//! [`KeyShape`] tells it, for each key, the prefix its runs' filters are
//! asked about and the sequence number that key carries. Entries are never
//! overwritten or deleted: a newer version is a new key (the layer above
//! puts the sequence number in it), so a reader that ignores keys newer
//! than its point in time reads a consistent state however flushes and
//! merges move entries meanwhile.
//!
//! Durability is the caller's: the memtable is what the caller's
//! write-ahead log has and the runs do not yet. [`Tree::flushed_seq`] says
//! up to where the runs hold everything. A run joins the manifest in one
//! atomic edit, and a merge swaps its inputs for its outputs in one, so a
//! crash leaves either the old runs or the new ones.
//!
//! Readers take a [`TreeView`] (the memtables and runs of one moment, held
//! by reference counts): a flush or merge that replaces them does not wait
//! for readers, and files it deletes stay readable through the handles the
//! readers' runs hold.

use super::runs::{BlockCache, Run, RunCursor};
use super::store::{Edit, Store};
use crate::format::FileKind;
use crate::format::run::RunMeta;
use crate::sync::{Locked, RwLocked};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

/// For an entry key: the length of the prefix its filter is asked about
/// (`None`: no filter entry) and the sequence number it carries.
pub type KeyShape = fn(&[u8]) -> (Option<usize>, u64);

/// How a tree sizes its memtable, levels and runs.
#[derive(Clone, Copy, Debug)]
pub struct TreeOptions {
    /// The stream its runs are files of.
    pub stream: u32,
    /// What its keys carry.
    pub shape: KeyShape,
    /// A memtable holding this many bytes of keys and values is due to be
    /// flushed ([`Tree::flush_due`]).
    pub memtable_bytes: usize,
    /// Level 0 is merged into level 1 once it holds this many runs.
    pub l0_runs: usize,
    /// Level 1's target size; each deeper level's is ten times the one above.
    pub level1_bytes: u64,
    /// A merge starts a new output run once one reaches this size.
    pub run_bytes: u64,
    /// Merges write at most this many bytes a second (0: no limit), so
    /// that readers keep most of the disk.
    pub merge_bytes_per_sec: u64,
}

impl Default for TreeOptions {
    fn default() -> Self {
        TreeOptions {
            stream: 0,
            shape: seq_suffix_shape,
            memtable_bytes: 8 << 20,
            l0_runs: 4,
            level1_bytes: 64 << 20,
            run_bytes: 32 << 20,
            merge_bytes_per_sec: 0,
        }
    }
}

/// The shape of keys that end with a sequence number written by
/// `put_desc_u64`: the filter is asked about everything before it.
pub fn seq_suffix_shape(key: &[u8]) -> (Option<usize>, u64) {
    match key.len().checked_sub(8) {
        Some(n) => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&key[n..]);
            (Some(n), !u64::from_be_bytes(b))
        }
        None => (None, 0),
    }
}

/// A memtable: sorted entries, their bytes and sequence range.
struct Mem {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
    bytes: AtomicUsize,
}

impl Mem {
    fn new() -> Arc<Mem> {
        Arc::new(Mem { map: RwLock::new(BTreeMap::new()), bytes: AtomicUsize::new(0) })
    }
    fn is_empty(&self) -> bool {
        self.map.read_locked().is_empty()
    }
}

/// The memtables and runs of one moment.
#[derive(Clone)]
struct Version {
    active: Arc<Mem>,
    /// Frozen memtables, newest first, waiting to be flushed.
    frozen: Vec<Arc<Mem>>,
    /// Level-0 runs, newest first (they may overlap).
    l0: Vec<Arc<Run>>,
    /// Levels 1.. : runs in key order, not overlapping.
    levels: Vec<Vec<Arc<Run>>>,
}

/// What a tree holds and has done.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TreeStats {
    /// Runs per level (level 0 first).
    pub runs: Vec<usize>,
    /// Bytes of run files per level.
    pub bytes: Vec<u64>,
    /// Bytes in memtables (active and frozen).
    pub memtable_bytes: usize,
    /// Flushes done since it was opened.
    pub flushes: u64,
    /// Merges done since it was opened.
    pub merges: u64,
    /// Bytes written by merges since it was opened.
    pub merged_bytes: u64,
    /// Runs moved to the next level without being rewritten (they
    /// overlapped nothing there), since it was opened.
    pub moved: u64,
}

/// A log-structured merge tree (see the module docs).
pub struct Tree {
    opts: TreeOptions,
    cache: Arc<BlockCache>,
    version: RwLock<Arc<Version>>,
    flushing: Mutex<()>,
    merging: Mutex<()>,
    flushes: AtomicU64,
    merges: AtomicU64,
    merged_bytes: AtomicU64,
    moved: AtomicU64,
}

fn overlaps(r: &Run, lo: &[u8], hi: &[u8]) -> bool {
    r.first_key() <= hi && r.last_key() >= lo
}

impl Tree {
    /// Open the tree whose runs are the live run files of `opts.stream`.
    pub fn open(store: &Store, cache: Arc<BlockCache>, opts: TreeOptions) -> Result<Tree> {
        let mut l0 = Vec::new();
        let mut levels: Vec<Vec<Arc<Run>>> = Vec::new();
        for f in store.files() {
            if f.kind != FileKind::Run || f.stream != opts.stream {
                continue;
            }
            let run = Arc::new(Run::open_listed(store, &f, cache.clone())?);
            match run.meta().level {
                0 => l0.push(run),
                n => {
                    let n = n as usize;
                    if levels.len() < n {
                        levels.resize_with(n, Vec::new);
                    }
                    levels[n - 1].push(run);
                }
            }
        }
        // Newest first, as flushed: file ids only grow. (Not by sequence
        // numbers: an entry may be added with an older sequence number than
        // entries flushed before it, replacing one with its key.)
        l0.sort_by_key(|r| std::cmp::Reverse(r.file_id()));
        for (i, level) in levels.iter_mut().enumerate() {
            level.sort_by(|a, b| a.first_key().cmp(b.first_key()));
            if let Some(w) = level.windows(2).find(|w| w[0].last_key() >= w[1].first_key()) {
                return Err(Error::tampered(
                    super::store::KEYRING_FILE,
                    0,
                    format!("runs {:016x} and {:016x} of level {} overlap", w[0].file_id(), w[1].file_id(), i + 1),
                ));
            }
        }
        let v = Version { active: Mem::new(), frozen: Vec::new(), l0, levels };
        Ok(Tree {
            opts,
            cache,
            version: RwLock::new(Arc::new(v)),
            flushing: Mutex::new(()),
            merging: Mutex::new(()),
            flushes: AtomicU64::new(0),
            merges: AtomicU64::new(0),
            merged_bytes: AtomicU64::new(0),
            moved: AtomicU64::new(0),
        })
    }

    fn current(&self) -> Arc<Version> {
        self.version.read_locked().clone()
    }

    /// The cache its runs read through.
    pub fn cache(&self) -> &Arc<BlockCache> {
        &self.cache
    }

    /// Add entries (each key new, or the same entry again) to the memtable.
    /// Returns whether a flush is now due.
    pub fn insert(&self, entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> bool {
        // The version stays read-locked while the entries go in, so no
        // flush can freeze (and write out) this memtable halfway.
        let version = self.version.read_locked();
        let active = &version.active;
        let mut added = 0usize;
        {
            let mut map = active.map.write_locked();
            for (k, v) in entries {
                let n = k.len() + v.len() + 32;
                if map.insert(k, v).is_none() {
                    added += n;
                }
            }
        }
        let total = active.bytes.fetch_add(added, Relaxed) + added;
        total >= self.opts.memtable_bytes
    }

    /// Bytes in the memtable being filled.
    pub fn memtable_bytes(&self) -> usize {
        self.current().active.bytes.load(Relaxed)
    }

    /// Whether the memtable holds its budget or frozen memtables wait.
    pub fn flush_due(&self) -> bool {
        let v = self.current();
        !v.frozen.is_empty() || v.active.bytes.load(Relaxed) >= self.opts.memtable_bytes
    }

    /// Whether a merge is due.
    pub fn merge_due(&self) -> bool {
        self.pick_merge(&self.current()).is_some()
    }

    /// Every sequence number up to this one that was inserted is in runs
    /// (0: no run). The caller's log before it need not be replayed.
    pub fn flushed_seq(&self) -> u64 {
        let v = self.current();
        v.l0.iter().chain(v.levels.iter().flatten()).map(|r| r.meta().max_seq).max().unwrap_or(0)
    }

    /// Sizes and counters.
    pub fn stats(&self) -> TreeStats {
        let v = self.current();
        let mut runs = vec![v.l0.len()];
        let mut bytes = vec![v.l0.iter().map(|r| r.file_len()).sum()];
        for l in &v.levels {
            runs.push(l.len());
            bytes.push(l.iter().map(|r| r.file_len()).sum());
        }
        TreeStats {
            runs,
            bytes,
            memtable_bytes: std::iter::once(&v.active).chain(&v.frozen).map(|m| m.bytes.load(Relaxed)).sum(),
            flushes: self.flushes.load(Relaxed),
            merges: self.merges.load(Relaxed),
            merged_bytes: self.merged_bytes.load(Relaxed),
            moved: self.moved.load(Relaxed),
        }
    }

    /// The memtables and runs as they are now, for reads.
    pub fn view(&self) -> TreeView {
        TreeView { v: self.current() }
    }

    /// Freeze the memtable (if it holds anything) and flush every frozen
    /// memtable, oldest first, into a level-0 run each. Returns the runs
    /// written. A failure leaves the memtable frozen (still read) for the
    /// next flush to write.
    pub fn flush(&self, store: &Store) -> Result<Vec<RunMeta>> {
        self.freeze();
        self.flush_frozen(store)
    }

    /// Freeze the memtable if it holds anything: later entries go to a new
    /// one. (A caller whose log must be durable before a run holds what it
    /// logged syncs it between this and [`Tree::flush_frozen`].)
    pub fn freeze(&self) {
        let mut v = self.version.write_locked();
        if !v.active.is_empty() {
            let mut nv = (**v).clone();
            let old = std::mem::replace(&mut nv.active, Mem::new());
            nv.frozen.insert(0, old);
            *v = Arc::new(nv);
        }
    }

    /// Flush every frozen memtable, oldest first, into a level-0 run each.
    pub fn flush_frozen(&self, store: &Store) -> Result<Vec<RunMeta>> {
        let _one = self.flushing.locked();
        let mut written = Vec::new();
        while let Some(mem) = self.current().frozen.last().cloned() {
            let run = {
                let map = mem.map.read_locked();
                let mut w = store.build_run(self.opts.stream, 0)?;
                for (k, v) in map.iter() {
                    let (f, seq) = (self.opts.shape)(k);
                    w.add(k, v, f.map(|n| &k[..n]), seq)?;
                }
                let (pending, meta) = w.finish()?;
                let id = pending.file_id();
                store.commit(Edit { add: vec![pending], ..Edit::default() })?;
                written.push(meta);
                Arc::new(Run::open(store, id, self.cache.clone())?)
            };
            let mut v = self.version.write_locked();
            let mut nv = (**v).clone();
            nv.frozen.retain(|m| !Arc::ptr_eq(m, &mem));
            nv.l0.insert(0, run);
            *v = Arc::new(nv);
            self.flushes.fetch_add(1, Relaxed);
        }
        Ok(written)
    }

    /// Rewrite the whole tree into its deepest level: every entry of every
    /// run (after a flush) except those `drop` names (by key and value), with `extra` (in key
    /// order) added, in one atomic manifest edit. An `extra` entry replaces
    /// an entry with its key, and is never dropped.
    pub fn rewrite(
        &self,
        store: &Store,
        drop: &dyn Fn(&[u8], &[u8]) -> bool,
        extra: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<()> {
        if extra.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(Error::Internal("entries to add to the tree are out of order".into()));
        }
        self.flush(store)?;
        let _one = self.merging.locked();
        let v = self.current();
        let inputs: Vec<Arc<Run>> = v.l0.iter().chain(v.levels.iter().flatten()).cloned().collect();
        let out_level = v.levels.len().max(1);
        let mut sources = vec![Source::Vec(extra.into_iter().collect())];
        for r in &inputs {
            sources.push(Source::Run(r.first()?));
        }
        let keep = |it: &Merged| it.source() == Some(0) || !drop(it.key(), it.value());
        let (outputs, written) = self.write_out(store, Merged::new(sources, None), out_level, &keep, false)?;
        self.install(store, &inputs, outputs, out_level, written)
    }

    /// Swap `inputs` for `outputs` (runs of `out_level`): in the manifest
    /// in one edit, then in the version readers take.
    fn install(
        &self,
        store: &Store,
        inputs: &[Arc<Run>],
        outputs: Vec<(super::store::PendingFile, RunMeta)>,
        out_level: usize,
        written: u64,
    ) -> Result<()> {
        let ids: Vec<u64> = outputs.iter().map(|(p, _)| p.file_id()).collect();
        store.commit(Edit {
            add: outputs.into_iter().map(|(p, _)| p).collect(),
            remove: inputs.iter().map(|r| r.file_id()).collect(),
            root: None,
        })?;
        let mut opened = Vec::with_capacity(ids.len());
        for id in ids {
            opened.push(Arc::new(Run::open(store, id, self.cache.clone())?));
        }
        self.swap_runs(inputs, opened, out_level);
        for r in inputs {
            self.cache.forget_file(r.file_id(), r.frames());
        }
        self.merges.fetch_add(1, Relaxed);
        self.merged_bytes.fetch_add(written, Relaxed);
        Ok(())
    }

    fn level_target(&self, n: usize) -> u64 {
        // Level 1's target, ten times more each level below.
        let mut t = self.opts.level1_bytes.max(1);
        for _ in 1..n {
            t = t.saturating_mul(10);
        }
        t
    }

    /// The inputs and the output level of the merge due, if one is.
    fn pick_merge(&self, v: &Version) -> Option<(Vec<Arc<Run>>, usize)> {
        if v.l0.len() >= self.opts.l0_runs.max(1) {
            let lo = v.l0.iter().map(|r| r.first_key()).min()?;
            let hi = v.l0.iter().map(|r| r.last_key()).max()?;
            let mut inputs: Vec<Arc<Run>> = v.l0.clone();
            if let Some(l1) = v.levels.first() {
                inputs.extend(l1.iter().filter(|r| overlaps(r, lo, hi)).cloned());
            }
            return Some((inputs, 1));
        }
        for (i, level) in v.levels.iter().enumerate() {
            let n = i + 1;
            let bytes: u64 = level.iter().map(|r| r.file_len()).sum();
            if bytes <= self.level_target(n) || level.is_empty() {
                continue;
            }
            // The run with the most entries of the level moves down.
            let pick = level.iter().max_by_key(|r| r.file_len())?.clone();
            let mut inputs = vec![pick.clone()];
            if let Some(next) = v.levels.get(n) {
                inputs.extend(next.iter().filter(|r| overlaps(r, pick.first_key(), pick.last_key())).cloned());
            }
            return Some((inputs, n + 1));
        }
        None
    }

    /// Do one merge if one is due. Returns whether one was done.
    pub fn merge_once(&self, store: &Store) -> Result<bool> {
        let _one = self.merging.locked();
        let Some((inputs, out_level)) = self.pick_merge(&self.current()) else { return Ok(false) };
        if self.try_move(store, &inputs, out_level)? {
            return Ok(true);
        }
        let mut cursors = Vec::with_capacity(inputs.len());
        for r in &inputs {
            cursors.push(Source::Run(r.first()?));
        }
        let (outputs, written) = self.write_out(store, Merged::new(cursors, None), out_level, &|_| true, true)?;
        self.install(store, &inputs, outputs, out_level, written)?;
        Ok(true)
    }

    /// In the version readers take: `gone` out of their levels, `added` into
    /// `out_level` (in key order).
    fn swap_runs(&self, gone: &[Arc<Run>], added: Vec<Arc<Run>>, out_level: usize) {
        // Merges and moves only ever add to levels 1 and below.
        let out_level = out_level.max(1);
        let ids: Vec<u64> = gone.iter().map(|r| r.file_id()).collect();
        let mut v = self.version.write_locked();
        let mut nv = (**v).clone();
        nv.l0.retain(|r| !ids.contains(&r.file_id()));
        for l in nv.levels.iter_mut() {
            l.retain(|r| !ids.contains(&r.file_id()));
        }
        if nv.levels.len() < out_level {
            nv.levels.resize_with(out_level, Vec::new);
        }
        if let Some(level) = nv.levels.get_mut(out_level - 1) {
            level.extend(added);
            level.sort_by(|a, b| a.first_key().cmp(b.first_key()));
        }
        while nv.levels.last().is_some_and(Vec::is_empty) {
            nv.levels.pop();
        }
        *v = Arc::new(nv);
    }

    /// If `inputs` all come from the level above `out_level`, overlap no
    /// run of `out_level` and none of each other, move them there: their
    /// level changes in the manifest (one keyring write), nothing is
    /// rewritten. Returns whether it did.
    fn try_move(&self, store: &Store, inputs: &[Arc<Run>], out_level: usize) -> Result<bool> {
        let v = self.current();
        let from = out_level - 1;
        if inputs.iter().any(|r| usize::from(r.meta().level) != from) {
            return Ok(false);
        }
        let target: &[Arc<Run>] = v.levels.get(out_level - 1).map_or(&[], Vec::as_slice);
        if inputs.iter().any(|r| target.iter().any(|t| overlaps(t, r.first_key(), r.last_key()))) {
            return Ok(false);
        }
        let mut sorted: Vec<&Arc<Run>> = inputs.iter().collect();
        sorted.sort_by(|a, b| a.first_key().cmp(b.first_key()));
        if sorted.windows(2).any(|w| w[0].last_key() >= w[1].first_key()) {
            return Ok(false);
        }
        // Small runs (a short session's flush) are merged instead, so that
        // they do not pile up as files of their own.
        if inputs.iter().any(|r| r.file_len() < self.opts.run_bytes / 8) {
            return Ok(false);
        }
        let Ok(level) = u8::try_from(out_level) else { return Ok(false) };
        let changes: Vec<(u64, Vec<u8>)> =
            inputs.iter().map(|r| (r.file_id(), RunMeta { level, ..*r.meta() }.encode())).collect();
        store.set_file_meta(&changes)?;
        let moved: Vec<Arc<Run>> = inputs.iter().map(|r| Arc::new(r.with_level(level))).collect();
        self.swap_runs(inputs, moved, out_level);
        self.moved.fetch_add(inputs.len() as u64, Relaxed);
        Ok(true)
    }

    /// Write the entries of `it` that `keep` keeps into new runs of
    /// `out_level` (a new one whenever one reaches the run size),
    /// throttled to the merge rate if `throttled`. Returns the runs, not
    /// yet committed, and the bytes written.
    fn write_out(
        &self,
        store: &Store,
        mut it: Merged,
        out_level: usize,
        keep: &dyn Fn(&Merged) -> bool,
        throttled: bool,
    ) -> Result<(Vec<(super::store::PendingFile, RunMeta)>, u64)> {
        let started = std::time::Instant::now();
        let mut outputs = Vec::new();
        let mut w = None;
        let mut written = 0u64;
        let mut checked = 0u64;
        while it.valid() {
            if !keep(&it) {
                it.advance()?;
                continue;
            }
            let k = it.key();
            let (f, seq) = (self.opts.shape)(k);
            let wr = match &mut w {
                Some(wr) => wr,
                None => w.insert(store.build_run(self.opts.stream, out_level.min(255) as u8)?),
            };
            wr.add(k, it.value(), f.map(|n| &k[..n]), seq)?;
            if wr.bytes() >= self.opts.run_bytes
                && let Some(done) = w.take()
            {
                written += done.bytes();
                outputs.push(done.finish()?);
            }
            let so_far = written + w.as_ref().map_or(0, |w| w.bytes());
            if throttled && so_far >> 20 > checked >> 20 {
                checked = so_far;
                self.throttle(started, checked);
            }
            it.advance()?;
        }
        if let Some(done) = w.take() {
            written += done.bytes();
            outputs.push(done.finish()?);
        }
        Ok((outputs, written))
    }

    fn throttle(&self, started: std::time::Instant, written: u64) {
        let rate = self.opts.merge_bytes_per_sec;
        if rate == 0 {
            return;
        }
        let due = std::time::Duration::from_secs_f64(written as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait.min(std::time::Duration::from_secs(1)));
        }
    }

    /// Rewrite run `old_id` with `rewrite` (a re-encryption, returning the
    /// new file's id: same entries, frames and metadata) and read the new
    /// file from then on. No merge or rewrite of the tree runs meanwhile,
    /// so none of them can take the old file as an input after it is gone.
    pub fn replace_run_with(&self, store: &Store, old_id: u64, rewrite: impl FnOnce() -> Result<u64>) -> Result<u64> {
        let _one = self.merging.locked();
        let new_id = rewrite()?;
        if self.holds_run(old_id) {
            self.replace_run(store, old_id, new_id)?;
        }
        Ok(new_id)
    }

    /// A run of this tree was rewritten as `new_id` (a re-encryption): read
    /// the new file from now on.
    fn replace_run(&self, store: &Store, old_id: u64, new_id: u64) -> Result<()> {
        let run = Arc::new(Run::open(store, new_id, self.cache.clone())?);
        let mut v = self.version.write_locked();
        let mut nv = (**v).clone();
        for r in nv.l0.iter_mut().chain(nv.levels.iter_mut().flatten()) {
            if r.file_id() == old_id {
                self.cache.forget_file(old_id, r.frames());
                *r = run.clone();
            }
        }
        *v = Arc::new(nv);
        Ok(())
    }

    /// Whether `file_id` is one of its runs now.
    pub fn holds_run(&self, file_id: u64) -> bool {
        let v = self.current();
        v.l0.iter().chain(v.levels.iter().flatten()).any(|r| r.file_id() == file_id)
    }
}

/// The memtables and runs of one moment (see [`Tree::view`]).
pub struct TreeView {
    v: Arc<Version>,
}

impl TreeView {
    /// The first entry at or after `key` that begins with `prefix` (which
    /// `key` begins with, and which is a filter prefix of the tree's keys,
    /// or `None` to search without filters).
    pub fn seek(&self, key: &[u8], prefix: Option<&[u8]>) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let starts = |k: &[u8]| prefix.is_none_or(|p| k.starts_with(p));
        let mut best: Option<(Vec<u8>, Vec<u8>)> = None;
        let mut consider = |k: &[u8], v: &[u8]| {
            if starts(k) && best.as_ref().is_none_or(|(b, _)| k < b.as_slice()) {
                best = Some((k.to_vec(), v.to_vec()));
            }
        };
        for m in std::iter::once(&self.v.active).chain(&self.v.frozen) {
            let map = m.map.read_locked();
            if let Some((k, v)) = map.range::<[u8], _>((Bound::Included(key), Bound::Unbounded)).next() {
                consider(k, v);
            }
        }
        for r in &self.v.l0 {
            if let Some(c) = r.seek(key, prefix)?
                && c.valid()
            {
                consider(c.key(), c.value());
            }
        }
        for level in &self.v.levels {
            let i = level.partition_point(|r| r.last_key() < key);
            if let Some(r) = level.get(i)
                && let Some(c) = r.seek(key, prefix)?
                && c.valid()
            {
                consider(c.key(), c.value());
            }
        }
        Ok(best)
    }

    /// Every entry from `start` (inclusive) to `end` (exclusive; `None`:
    /// to the end), in key order, each once.
    pub fn range(&self, start: &[u8], end: Option<&[u8]>) -> Result<Merged> {
        let mut sources = Vec::new();
        for m in std::iter::once(&self.v.active).chain(&self.v.frozen) {
            sources.push(Source::Mem(MemCursor::new(m.clone(), start, end)));
        }
        for r in &self.v.l0 {
            if let Some(c) = r.seek(start, None)? {
                sources.push(Source::Run(c));
            }
        }
        for level in &self.v.levels {
            let i = level.partition_point(|r| r.last_key() < start);
            if let Some(r) = level.get(i)
                && let Some(c) = r.seek(start, None)?
            {
                sources.push(Source::Level(LevelCursor { runs: level.clone(), i, c }));
            }
        }
        Ok(Merged::new(sources, end.map(<[u8]>::to_vec)))
    }
}

/// Entries of a memtable read a batch at a time, so that no lock is held
/// between calls (entries are only ever added, and those added meanwhile
/// are newer than the reader, who ignores them or sees them: both are
/// consistent).
struct MemCursor {
    mem: Arc<Mem>,
    buf: std::collections::VecDeque<(Vec<u8>, Vec<u8>)>,
    from: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
    done: bool,
}

const MEM_BATCH: usize = 256;

impl MemCursor {
    fn new(mem: Arc<Mem>, start: &[u8], end: Option<&[u8]>) -> MemCursor {
        let mut c = MemCursor {
            mem,
            buf: Default::default(),
            from: Some(start.to_vec()),
            end: end.map(<[u8]>::to_vec),
            done: false,
        };
        c.refill(true);
        c
    }
    fn refill(&mut self, inclusive: bool) {
        let Some(from) = self.from.take() else {
            self.done = true;
            return;
        };
        let map = self.mem.map.read_locked();
        let lo = if inclusive { Bound::Included(from.as_slice()) } else { Bound::Excluded(from.as_slice()) };
        for (k, v) in map.range::<[u8], _>((lo, Bound::Unbounded)).take(MEM_BATCH) {
            if self.end.as_deref().is_some_and(|e| k.as_slice() >= e) {
                break;
            }
            self.buf.push_back((k.clone(), v.clone()));
        }
        if self.buf.len() < MEM_BATCH {
            self.done = true;
        }
        self.from = self.buf.back().map(|(k, _)| k.clone());
    }
    fn valid(&self) -> bool {
        !self.buf.is_empty()
    }
    fn key(&self) -> &[u8] {
        self.buf.front().map(|(k, _)| k.as_slice()).unwrap_or_default()
    }
    fn value(&self) -> &[u8] {
        self.buf.front().map(|(_, v)| v.as_slice()).unwrap_or_default()
    }
    fn advance(&mut self) {
        self.buf.pop_front();
        if self.buf.is_empty() && !self.done {
            self.refill(false);
        }
    }
}

/// The runs of one level read as one: when a run ends, the next begins.
struct LevelCursor {
    runs: Vec<Arc<Run>>,
    i: usize,
    c: RunCursor,
}

impl LevelCursor {
    fn advance(&mut self) -> Result<()> {
        self.c.advance()?;
        while !self.c.valid() && self.i + 1 < self.runs.len() {
            self.i += 1;
            self.c = self.runs[self.i].first()?;
        }
        Ok(())
    }
}

enum Source {
    Mem(MemCursor),
    Run(RunCursor),
    Level(LevelCursor),
    Vec(std::collections::VecDeque<(Vec<u8>, Vec<u8>)>),
}

impl Source {
    fn valid(&self) -> bool {
        match self {
            Source::Mem(c) => c.valid(),
            Source::Run(c) => c.valid(),
            Source::Level(c) => c.c.valid(),
            Source::Vec(v) => !v.is_empty(),
        }
    }
    fn key(&self) -> &[u8] {
        match self {
            Source::Mem(c) => c.key(),
            Source::Run(c) => c.key(),
            Source::Level(c) => c.c.key(),
            Source::Vec(v) => v.front().map(|(k, _)| k.as_slice()).unwrap_or_default(),
        }
    }
    fn value(&self) -> &[u8] {
        match self {
            Source::Mem(c) => c.value(),
            Source::Run(c) => c.value(),
            Source::Level(c) => c.c.value(),
            Source::Vec(v) => v.front().map(|(_, x)| x.as_slice()).unwrap_or_default(),
        }
    }
    fn advance(&mut self) -> Result<()> {
        match self {
            Source::Mem(c) => {
                c.advance();
                Ok(())
            }
            Source::Run(c) => c.advance(),
            Source::Level(c) => c.advance(),
            Source::Vec(v) => {
                v.pop_front();
                Ok(())
            }
        }
    }
}

/// Entries of several sources merged in key order, each key once (from the
/// first source holding it: the newest).
pub struct Merged {
    sources: Vec<Source>,
    cur: Option<usize>,
    end: Option<Vec<u8>>,
}

impl Merged {
    fn new(sources: Vec<Source>, end: Option<Vec<u8>>) -> Merged {
        let mut m = Merged { sources, cur: None, end };
        m.pick();
        m
    }
    fn pick(&mut self) {
        let mut cur: Option<usize> = None;
        for (i, s) in self.sources.iter().enumerate() {
            if s.valid() && cur.is_none_or(|c| s.key() < self.sources[c].key()) {
                cur = Some(i);
            }
        }
        self.cur = cur.filter(|&c| self.end.as_deref().is_none_or(|e| self.sources[c].key() < e));
    }
    /// Whether it is at an entry.
    pub fn valid(&self) -> bool {
        self.cur.is_some()
    }
    /// Which source the entry comes from (its place in the list given).
    fn source(&self) -> Option<usize> {
        self.cur
    }
    /// The entry's key (empty past the end).
    pub fn key(&self) -> &[u8] {
        self.cur.map_or(&[][..], |c| self.sources[c].key())
    }
    /// The entry's value (empty past the end).
    pub fn value(&self) -> &[u8] {
        self.cur.map_or(&[][..], |c| self.sources[c].value())
    }
    /// Move to the next key.
    pub fn advance(&mut self) -> Result<()> {
        let Some(c) = self.cur else { return Ok(()) };
        let k = self.sources[c].key().to_vec();
        for s in self.sources.iter_mut() {
            if s.valid() && s.key() == k.as_slice() {
                s.advance()?;
            }
        }
        self.pick();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
