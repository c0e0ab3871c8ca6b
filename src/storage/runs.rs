//! Sorted runs on disk (the `run` file kind, `format::run`): written once
//! through a [`FileBuilder`], read a block at a time through a
//! [`BlockCache`] of decrypted blocks with a hard byte limit.
//!
//! A run is immutable once committed. Its manifest metadata
//! ([`RunMeta`]) says where its footer is; the footer (kept in memory while
//! the run is open) points at index partitions, which point at data blocks;
//! partitions and blocks are read through the cache. Every frame is
//! authenticated as the frame of this file it claims to be before it is
//! decoded, and every decoder checks what it reads, so a damaged run is an
//! error naming the file and offset, never a wrong answer.

use super::store::{FileBuilder, FileInfo, PendingFile, SealedFile, Store};
use crate::format::FileKind;
use crate::format::run::{
    BlockBuilder, Bloom, DataBlock, Footer, Handle, IndexPartition, MAX_ENTRY_KEY, MAX_RUN_PAYLOAD, PARTITION_TARGET,
    RunMeta, bloom_hash,
};
use crate::{Error, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

fn why(e: &crate::format::codec::DecodeError) -> String {
    format!("{} (byte {} of the payload)", e.reason, e.offset)
}

/// The writer cuts a data block before an entry would take it past this
/// many bytes (the format allows [`crate::format::run::BLOCK_TARGET`]): a read that misses the
/// cache then decrypts and decodes about 4 KiB. Measured with
/// `perf_probe get` on 1M documents and the default 64 MiB cache: 16 KiB
/// blocks 75,000 gets/s, 8 KiB 103,000, 4 KiB 109,000-118,000 (in a cache
/// that holds everything: 185,000, 190,000 and 168,000).
pub const WRITE_BLOCK_TARGET: usize = 4 * 1024;

/// A decrypted, decoded block as the cache holds it.
#[derive(Clone)]
enum Cached {
    Data(Arc<DataBlock>),
    Index(Arc<IndexPartition>),
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<(u64, u64), Cached> for Weigh {
    fn weight(&self, _: &(u64, u64), v: &Cached) -> u64 {
        // The cache's own bookkeeping per item, plus what the item holds.
        64 + match v {
            Cached::Data(b) => b.weight(),
            Cached::Index(p) => p.weight(),
        } as u64
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    bytes_read: AtomicU64,
}

#[derive(Clone)]
struct CountEvictions(Arc<Counters>);

impl quick_cache::Lifecycle<(u64, u64), Cached> for CountEvictions {
    type RequestState = ();
    fn on_evict(&self, _: &mut (), _: (u64, u64), _: Cached) {
        self.0.evictions.fetch_add(1, Relaxed);
    }
}

/// What a [`BlockCache`] has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads that decrypted a frame.
    pub misses: u64,
    /// Blocks evicted (or not admitted) to stay within the budget.
    pub evictions: u64,
    /// Plaintext bytes decrypted by misses.
    pub bytes_read: u64,
    /// Bytes held now (as weighed: each block's memory plus its bookkeeping).
    pub bytes_held: u64,
    /// The budget.
    pub capacity: u64,
}

/// Decrypted blocks of runs (data blocks and index partitions), keyed by
/// file and frame, holding at most its byte budget. Shared by every run of
/// a database; safe to use from many threads (it is sharded, and a block
/// being loaded by one reader is waited for, not loaded twice).
pub struct BlockCache {
    cache: quick_cache::sync::Cache<(u64, u64), Cached, Weigh, quick_cache::DefaultHashBuilder, CountEvictions>,
    counters: Arc<Counters>,
    capacity: u64,
}

impl BlockCache {
    /// A cache holding at most `bytes` (blocks larger than a shard's share
    /// of a tiny budget are read but not kept).
    pub fn new(bytes: u64) -> BlockCache {
        let counters = Arc::new(Counters::default());
        let items = (bytes / (WRITE_BLOCK_TARGET as u64)).clamp(16, 1 << 20) as usize;
        let opts = quick_cache::OptionsBuilder::new().estimated_items_capacity(items).weight_capacity(bytes).build();
        let cache = match opts {
            Ok(o) => quick_cache::sync::Cache::with_options(
                o,
                Weigh,
                quick_cache::DefaultHashBuilder::default(),
                CountEvictions(counters.clone()),
            ),
            // Only an impossible combination of options fails; fall back
            // to the plain constructor with the same budget.
            Err(_) => quick_cache::sync::Cache::with(
                items,
                bytes,
                Weigh,
                quick_cache::DefaultHashBuilder::default(),
                CountEvictions(counters.clone()),
            ),
        };
        BlockCache { cache, counters, capacity: bytes }
    }

    /// Counters and occupancy.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.counters.hits.load(Relaxed),
            misses: self.counters.misses.load(Relaxed),
            evictions: self.counters.evictions.load(Relaxed),
            bytes_read: self.counters.bytes_read.load(Relaxed),
            bytes_held: self.cache.weight(),
            capacity: self.capacity,
        }
    }

    /// Drop every block of `file_id` (a run replaced by a merge or a
    /// rotation: its blocks are never asked for again, but need not wait
    /// for eviction).
    pub fn forget_file(&self, file_id: u64, frames: impl IntoIterator<Item = u64>) {
        for f in frames {
            self.cache.remove(&(file_id, f));
        }
    }

    fn get(&self, file: &SealedFile, h: Handle, load: impl FnOnce(Vec<u8>) -> Result<Cached>) -> Result<Cached> {
        let k = (file.file_id(), h.frame);
        match self.cache.get_value_or_guard(&k, None) {
            quick_cache::sync::GuardResult::Value(v) => {
                self.counters.hits.fetch_add(1, Relaxed);
                Ok(v)
            }
            quick_cache::sync::GuardResult::Guard(g) => {
                self.counters.misses.fetch_add(1, Relaxed);
                self.counters.bytes_read.fetch_add(u64::from(h.len), Relaxed);
                let v = load(file.read_frame(h.frame, h.offset, h.len as usize)?)?;
                let _ = g.insert(v.clone());
                Ok(v)
            }
            // No timeout was given: a guard or a value always comes back.
            quick_cache::sync::GuardResult::Timeout => {
                Err(Error::Internal("the block cache timed out without a timeout".into()))
            }
        }
    }
}

/// Writes one run: entries added in strictly increasing key order are cut
/// into blocks of about [`WRITE_BLOCK_TARGET`] bytes, blocks into index
/// partitions of about [`PARTITION_TARGET`] bytes, then the footer; the
/// run's [`RunMeta`] becomes its manifest metadata.
pub struct RunWriter<'s> {
    b: FileBuilder<'s>,
    level: u8,
    block: BlockBuilder,
    fences: Vec<(Vec<u8>, Handle)>,
    fence_bytes: usize,
    hashes: Vec<u64>,
    last_filter: Option<Vec<u8>>,
    partitions: Vec<(Vec<u8>, Handle)>,
    first_key: Vec<u8>,
    last_key: Vec<u8>,
    entries: u64,
    blocks: u64,
    min_seq: u64,
    max_seq: u64,
    bytes: u64,
}

impl Store {
    /// Start writing a run of `level` as a file of `stream` (written once;
    /// removed if dropped unfinished or uncommitted).
    pub fn build_run(&self, stream: u32, level: u8) -> Result<RunWriter<'_>> {
        let b = self.build_file(FileKind::Run, stream, Vec::new())?;
        Ok(RunWriter {
            b,
            level,
            block: BlockBuilder::new(),
            fences: Vec::new(),
            fence_bytes: 0,
            hashes: Vec::new(),
            last_filter: None,
            partitions: Vec::new(),
            first_key: Vec::new(),
            last_key: Vec::new(),
            entries: 0,
            blocks: 0,
            min_seq: u64::MAX,
            max_seq: 0,
            bytes: 0,
        })
    }
}

impl RunWriter<'_> {
    /// Payload bytes written or pending so far (about the file's size).
    pub fn bytes(&self) -> u64 {
        self.bytes + self.block.len() as u64
    }

    /// Add an entry. `filter_key` (a prefix of `key`, or `None` for no
    /// filter entry) is what [`Run::seek`] may later be asked about; `seq`
    /// widens the run's sequence range.
    pub fn add(&mut self, key: &[u8], value: &[u8], filter_key: Option<&[u8]>, seq: u64) -> Result<()> {
        if key.is_empty() || key.len() > MAX_ENTRY_KEY {
            return Err(Error::InvalidArgument(format!("run entry key of {} bytes out of range", key.len())));
        }
        if self.entries > 0 && key <= self.last_key.as_slice() {
            return Err(Error::Internal("run entries added out of order".into()));
        }
        let need = self.block.entry_len(key, value);
        // A block of this entry alone: its kind byte and count, and the entry.
        if 5 + need > MAX_RUN_PAYLOAD {
            return Err(Error::InvalidArgument(format!("run entry of {} bytes exceeds a frame", value.len())));
        }
        if !self.block.is_empty()
            && (self.block.len() + need > 8192
                || self.block.decoded_len() + key.len() + value.len() > crate::format::run::BLOCK_DECODED_TARGET)
        {
            self.flush_block()?;
        }
        self.block.add(key, value);
        if let Some(f) = filter_key
            && self.last_filter.as_deref() != Some(f)
        {
            self.hashes.push(bloom_hash(f));
            self.last_filter = Some(f.to_vec());
        }
        if self.entries == 0 {
            self.first_key = key.to_vec();
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.entries += 1;
        self.min_seq = self.min_seq.min(seq);
        self.max_seq = self.max_seq.max(seq);
        Ok(())
    }

    fn flush_block(&mut self) -> Result<()> {
        let last = self.block.last_key().to_vec();
        let payload = self.block.finish();
        let pos = self.b.append(&payload)?;
        self.bytes += payload.len() as u64;
        self.fence_bytes += last.len() + 12;
        self.fences.push((last, Handle { frame: pos.index, offset: pos.offset, len: payload.len() as u32 }));
        self.blocks += 1;
        if self.fence_bytes + self.hashes.len() * crate::format::run::BLOOM_BITS_PER_KEY / 8 >= PARTITION_TARGET {
            self.flush_partition()?;
        }
        Ok(())
    }

    fn flush_partition(&mut self) -> Result<()> {
        let part = IndexPartition { blocks: std::mem::take(&mut self.fences), bloom: Bloom::build(&self.hashes) };
        self.hashes.clear();
        self.fence_bytes = 0;
        // The next partition filters the key it starts with even if this
        // one ended inside the same key's entries.
        self.last_filter = None;
        let last = part.blocks.last().map(|(k, _)| k.clone()).unwrap_or_default();
        let payload = part.encode();
        let pos = self.b.append(&payload)?;
        self.bytes += payload.len() as u64;
        self.partitions.push((last, Handle { frame: pos.index, offset: pos.offset, len: payload.len() as u32 }));
        Ok(())
    }

    /// Write the last block, partition and footer, seal and sync the file.
    /// It joins the manifest (and is removed if dropped before) when the
    /// [`PendingFile`] is committed.
    pub fn finish(mut self) -> Result<(PendingFile, RunMeta)> {
        if self.entries == 0 {
            return Err(Error::Internal("a run needs at least one entry".into()));
        }
        self.flush_block()?;
        if !self.fences.is_empty() {
            self.flush_partition()?;
        }
        let footer = Footer {
            entries: self.entries,
            blocks: self.blocks,
            min_seq: self.min_seq,
            max_seq: self.max_seq,
            first_key: std::mem::take(&mut self.first_key),
            partitions: std::mem::take(&mut self.partitions),
        };
        let payload = footer.encode();
        let pos = self.b.append(&payload)?;
        let meta = RunMeta {
            level: self.level,
            footer: Handle { frame: pos.index, offset: pos.offset, len: payload.len() as u32 },
            entries: self.entries,
            min_seq: self.min_seq,
            max_seq: self.max_seq,
        };
        self.b.set_meta(meta.encode())?;
        Ok((self.b.finish()?, meta))
    }
}

/// An open run: its metadata and footer in memory, its file open, its
/// partitions and blocks read through the shared cache.
pub struct Run {
    meta: RunMeta,
    footer: Arc<Footer>,
    file: Arc<SealedFile>,
    cache: Arc<BlockCache>,
}

impl Run {
    /// Open live run `file_id`: its metadata from the manifest, its footer
    /// from the file.
    pub fn open(store: &Store, file_id: u64, cache: Arc<BlockCache>) -> Result<Run> {
        let info = store
            .files()
            .into_iter()
            .find(|f| f.file_id == file_id)
            .ok_or_else(|| Error::NotFound(format!("run {file_id:016x} is not in the manifest")))?;
        Run::open_listed(store, &info, cache)
    }

    /// [`Run::open`] for a file whose manifest entry the caller has.
    pub fn open_listed(store: &Store, info: &FileInfo, cache: Arc<BlockCache>) -> Result<Run> {
        let file_id = info.file_id;
        if info.kind != FileKind::Run {
            return Err(Error::InvalidArgument(format!("{} is not a run", info.name)));
        }
        let meta = RunMeta::decode(&info.meta).map_err(|e| {
            Error::tampered(crate::storage::store::KEYRING_FILE, 0, format!("metadata of {}: {}", info.name, why(&e)))
        })?;
        let file = store.open_sealed(file_id)?;
        let h = meta.footer;
        let p = file.read_frame(h.frame, h.offset, h.len as usize)?;
        let footer = Footer::decode(&p)
            .map_err(|e| Error::corrupted(file.name(), h.offset, format!("run footer: {}", why(&e))))?;
        if footer.entries != meta.entries || footer.min_seq != meta.min_seq || footer.max_seq != meta.max_seq {
            return Err(Error::tampered(file.name(), h.offset, "run footer disagrees with the manifest"));
        }
        Ok(Run { meta, footer: Arc::new(footer), file: Arc::new(file), cache })
    }

    /// The same run, at another level (its metadata changed in the manifest).
    pub fn with_level(&self, level: u8) -> Run {
        Run {
            meta: RunMeta { level, ..self.meta },
            footer: self.footer.clone(),
            file: self.file.clone(),
            cache: self.cache.clone(),
        }
    }

    /// Its file id.
    pub fn file_id(&self) -> u64 {
        self.file.file_id()
    }
    /// Its file's length in bytes.
    pub fn file_len(&self) -> u64 {
        self.file.len()
    }
    /// Its manifest metadata.
    pub fn meta(&self) -> &RunMeta {
        &self.meta
    }
    /// Its first key.
    pub fn first_key(&self) -> &[u8] {
        &self.footer.first_key
    }
    /// Its last key.
    pub fn last_key(&self) -> &[u8] {
        self.footer.last_key()
    }
    /// Frames of its partitions (for [`BlockCache::forget_file`]).
    pub fn frames(&self) -> Vec<u64> {
        self.footer.partitions.iter().map(|(_, h)| h.frame).collect()
    }

    fn partition(&self, i: usize) -> Result<Arc<IndexPartition>> {
        let Some(&(ref last, h)) = self.footer.partitions.get(i) else {
            return Err(Error::Internal("partition index out of range".into()));
        };
        let name = self.file.name();
        match self.cache.get(&self.file, h, |p| {
            let part = IndexPartition::decode(&p)
                .map_err(|e| Error::corrupted(name, h.offset, format!("run index partition: {}", why(&e))))?;
            // Its blocks end where the footer says it ends.
            if part.blocks.last().map(|(k, _)| k) != Some(last) {
                return Err(Error::corrupted(
                    name,
                    h.offset,
                    "index partition ends at another key than the footer says",
                ));
            }
            Ok(Cached::Index(Arc::new(part)))
        })? {
            Cached::Index(p) => Ok(p),
            Cached::Data(_) => {
                Err(Error::corrupted(name, h.offset, "a data block where an index partition was expected"))
            }
        }
    }

    fn block(&self, last: &[u8], h: Handle) -> Result<Arc<DataBlock>> {
        let name = self.file.name();
        match self.cache.get(&self.file, h, |p| {
            let b = DataBlock::decode(p)
                .map_err(|e| Error::corrupted(name, h.offset, format!("run data block: {}", why(&e))))?;
            if b.is_empty() || b.key(b.len() - 1) != last {
                return Err(Error::corrupted(name, h.offset, "data block ends at another key than its index says"));
            }
            Ok(Cached::Data(Arc::new(b)))
        })? {
            Cached::Data(b) => Ok(b),
            Cached::Index(_) => {
                Err(Error::corrupted(name, h.offset, "an index partition where a data block was expected"))
            }
        }
    }

    /// A cursor at the first entry at or after `key`. With `filter_key`
    /// (what the entry sought begins with, as given to [`RunWriter::add`]),
    /// `None` when the run's filter shows it holds no entry beginning with
    /// it at or after `key`; the cursor may still land on an entry that
    /// does not begin with it (filters have false positives).
    pub fn seek(self: &Arc<Self>, key: &[u8], filter_key: Option<&[u8]>) -> Result<Option<RunCursor>> {
        let Some(pi) = self.footer.find(key) else {
            return Ok(if filter_key.is_some() { None } else { Some(RunCursor::end(self.clone())) });
        };
        let part = self.partition(pi)?;
        if let Some(f) = filter_key
            && !part.bloom.may_contain(bloom_hash(f))
        {
            return Ok(None);
        }
        let mut c = RunCursor { run: self.clone(), part_i: pi, part: Some(part), block_i: 0, block: None, ent: 0 };
        c.seek_in_partition(key)?;
        Ok(Some(c))
    }

    /// A cursor at the run's first entry.
    pub fn first(self: &Arc<Self>) -> Result<RunCursor> {
        let mut c = RunCursor { run: self.clone(), part_i: 0, part: None, block_i: 0, block: None, ent: 0 };
        c.load_partition(0)?;
        c.load_block(0)?;
        Ok(c)
    }
}

/// A position in a run, moving forward. It holds the partition and block
/// it is in (so it does not depend on the cache keeping them).
pub struct RunCursor {
    run: Arc<Run>,
    part_i: usize,
    part: Option<Arc<IndexPartition>>,
    block_i: usize,
    block: Option<Arc<DataBlock>>,
    ent: usize,
}

impl RunCursor {
    fn end(run: Arc<Run>) -> RunCursor {
        let part_i = run.footer.partitions.len();
        RunCursor { run, part_i, part: None, block_i: 0, block: None, ent: 0 }
    }

    fn load_partition(&mut self, i: usize) -> Result<()> {
        self.part_i = i;
        self.block = None;
        self.part = if i < self.run.footer.partitions.len() { Some(self.run.partition(i)?) } else { None };
        Ok(())
    }

    fn load_block(&mut self, i: usize) -> Result<()> {
        self.block_i = i;
        self.ent = 0;
        self.block = match &self.part {
            Some(p) => match p.blocks.get(i) {
                Some((last, h)) => Some(self.run.block(last, *h)?),
                None => None,
            },
            None => None,
        };
        Ok(())
    }

    fn seek_in_partition(&mut self, key: &[u8]) -> Result<()> {
        let Some(p) = &self.part else { return Ok(()) };
        match p.find(key) {
            Some(bi) => {
                self.load_block(bi)?;
                if let Some(b) = &self.block {
                    self.ent = b.seek(key);
                }
                // The block's last key is at or after `key`: the entry is here.
                Ok(())
            }
            None => self.next_partition(),
        }
    }

    fn next_partition(&mut self) -> Result<()> {
        let next = self.part_i + 1;
        self.load_partition(next)?;
        if self.part.is_some() {
            self.load_block(0)?;
        }
        Ok(())
    }

    /// Whether it is at an entry (false past the run's end).
    pub fn valid(&self) -> bool {
        self.block.as_ref().is_some_and(|b| self.ent < b.len())
    }

    /// The entry's key (empty past the end).
    pub fn key(&self) -> &[u8] {
        match &self.block {
            Some(b) if self.ent < b.len() => b.key(self.ent),
            _ => &[],
        }
    }

    /// The entry's value (empty past the end).
    pub fn value(&self) -> &[u8] {
        match &self.block {
            Some(b) if self.ent < b.len() => b.value(self.ent),
            _ => &[],
        }
    }

    /// Move to the next entry.
    pub fn advance(&mut self) -> Result<()> {
        let Some(b) = &self.block else { return Ok(()) };
        self.ent += 1;
        if self.ent < b.len() {
            return Ok(());
        }
        let blocks = self.part.as_ref().map_or(0, |p| p.blocks.len());
        if self.block_i + 1 < blocks { self.load_block(self.block_i + 1) } else { self.next_partition() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::run::key::{put_desc_u64, put_str, put_u32};
    use crate::storage::memfs::MemFs;
    use crate::storage::store::{Edit, StoreOptions};
    use crate::{CreateOptions, KeySource};
    use std::path::PathBuf;

    const STREAM: u32 = 7;

    fn key() -> KeySource {
        KeySource::Raw(crate::crypto::keys::SecretKey::from_bytes([0x42; 32]))
    }
    fn opts(fs: &MemFs) -> StoreOptions {
        StoreOptions { vfs: Arc::new(fs.clone()), ..StoreOptions::default() }
    }
    fn create(fs: &MemFs) -> Store {
        Store::create(PathBuf::from("/db"), &key(), CreateOptions { store: opts(fs), ..CreateOptions::default() })
            .unwrap()
    }

    /// `(table 1, "pk-N", seq)` keys; `versions` versions of each of `n` keys.
    fn prefix(i: u32) -> Vec<u8> {
        let mut k = vec![1];
        put_u32(&mut k, 1);
        put_str(&mut k, format!("canary-pk-{i:06}").as_bytes());
        k
    }
    fn entry_key(i: u32, seq: u64) -> Vec<u8> {
        let mut k = prefix(i);
        put_desc_u64(&mut k, seq);
        k
    }
    fn value(i: u32, seq: u64) -> Vec<u8> {
        format!("{{\"canary-field\":\"canary-value-{i}-{seq}\",\"pad\":\"{}\"}}", "x".repeat((i % 50) as usize))
            .into_bytes()
    }

    fn write_run(s: &Store, n: u32, versions: u64) -> u64 {
        let mut w = s.build_run(STREAM, 0).unwrap();
        for i in 0..n {
            // Newest first within a key: sequence descending.
            for v in (0..versions).rev() {
                let seq = u64::from(i) * 10 + v + 1;
                w.add(&entry_key(i, seq), &value(i, seq), Some(&prefix(i)), seq).unwrap();
            }
        }
        let (p, meta) = w.finish().unwrap();
        assert_eq!(meta.entries, u64::from(n) * versions);
        let id = p.file_id();
        s.commit(Edit { add: vec![p], ..Edit::default() }).unwrap();
        id
    }

    /// The newest version of key `i` at or before `at`, as a point read does.
    fn get_at(run: &Arc<Run>, i: u32, at: u64) -> Option<Vec<u8>> {
        let p = prefix(i);
        let c = run.seek(&entry_key(i, at), Some(&p)).unwrap()?;
        (c.valid() && c.key().starts_with(&p)).then(|| c.value().to_vec())
    }

    #[test]
    fn every_version_is_found_through_a_cache_far_smaller_than_the_run() {
        let fs = MemFs::new();
        let s = create(&fs);
        let id = write_run(&s, 20_000, 3);
        let cache = Arc::new(BlockCache::new(64 << 10));
        let run = Arc::new(Run::open(&s, id, cache.clone()).unwrap());
        for i in (0..20_000).step_by(7) {
            let base = u64::from(i) * 10;
            assert_eq!(get_at(&run, i, base + 3), Some(value(i, base + 3)), "newest of {i}");
            assert_eq!(get_at(&run, i, base + 2), Some(value(i, base + 2)), "as of its second version");
            assert_eq!(get_at(&run, i, base + 1), Some(value(i, base + 1)));
            // Before its first version: the seek lands on the next key.
            assert_eq!(get_at(&run, i, base), None);
            assert_eq!(get_at(&run, i, u64::MAX), Some(value(i, base + 3)));
        }
        // Absent keys: the filter answers most without reading a block.
        let before = cache.stats();
        let absent = (20_000..21_000).filter(|&i| get_at(&run, i, u64::MAX).is_some()).count();
        assert_eq!(absent, 0);
        let st = cache.stats();
        assert!(st.evictions > 0, "a 64 KiB cache over a multi-MiB run must evict: {st:?}");
        assert!(st.bytes_held <= st.capacity, "{st:?}");
        assert!(st.misses - before.misses < 100, "the filter kept absent keys from reading blocks: {st:?}");
        // A full scan reads every entry once, in order.
        let mut c = run.first().unwrap();
        let mut n = 0u64;
        let mut prev = Vec::new();
        while c.valid() {
            assert!(c.key() > prev.as_slice());
            prev = c.key().to_vec();
            n += 1;
            c.advance().unwrap();
        }
        assert_eq!(n, 60_000);
        assert_eq!(run.first_key(), entry_key(0, 3));
        assert_eq!(run.last_key(), entry_key(19_999, 199_991));
    }

    #[test]
    fn a_run_reopens_and_survives_reencryption() {
        let fs = MemFs::new();
        let s = create(&fs);
        let id = write_run(&s, 2_000, 2);
        drop(s);
        let s = Store::open(PathBuf::from("/db"), &key(), opts(&fs)).unwrap();
        let cache = Arc::new(BlockCache::new(1 << 20));
        let run = Arc::new(Run::open(&s, id, cache.clone()).unwrap());
        assert_eq!(get_at(&run, 1234, u64::MAX), Some(value(1234, 12342)));
        let (new_id, _) = s.reencrypt_file(id).unwrap();
        assert_ne!(new_id, id);
        let moved = Arc::new(Run::open(&s, new_id, cache).unwrap());
        assert_eq!(moved.meta(), run.meta());
        for i in (0..2_000).step_by(13) {
            assert_eq!(get_at(&moved, i, u64::from(i) * 10 + 1), Some(value(i, u64::from(i) * 10 + 1)));
        }
    }

    #[test]
    fn no_key_value_or_field_appears_in_the_file() {
        let fs = MemFs::new();
        let s = create(&fs);
        write_run(&s, 3_000, 2);
        for p in fs.paths() {
            let Some(c) = fs.contents(&p) else { continue };
            for needle in [&b"canary"[..], b"pk-0", b"value-1"] {
                assert!(!c.windows(needle.len()).any(|w| w == needle), "{} holds {needle:?}", p.display());
            }
        }
    }

    #[test]
    fn a_damaged_run_is_an_error_naming_it_never_a_wrong_answer() {
        let fs = MemFs::new();
        let s = create(&fs);
        let id = write_run(&s, 5_000, 1);
        let name = crate::format::file_name(id, FileKind::Run);
        let path = PathBuf::from("/db").join(&name);
        let good = fs.contents(&path).unwrap();
        // Flip one byte at a spread of places: every read either finds the
        // right value or fails with an error naming the file, and a scan
        // of the whole run (which reads every frame but the sealing one)
        // fails.
        let sealing_frame = crate::format::frame::FRAME_HEADER_LEN
            + crate::format::frame::FINAL_PAYLOAD_LEN
            + crate::crypto::aead::TAG_LEN;
        let mut flips = 0;
        for at in (crate::format::header::HEADER_LEN..good.len() - sealing_frame).step_by(good.len() / 40) {
            flips += 1;
            let mut bad = good.clone();
            bad[at] ^= 0x20;
            fs.put(&path, &bad);
            let cache = Arc::new(BlockCache::new(1 << 20));
            let r = Run::open(&s, id, cache).map(Arc::new).and_then(|run| {
                for i in (0..5_000).step_by(97) {
                    let p = prefix(i);
                    if let Some(c) = run.seek(&entry_key(i, u64::MAX), Some(&p))? {
                        assert_eq!(c.value(), &value(i, u64::from(i) * 10 + 1)[..], "wrong data after a flip at {at}");
                    }
                }
                let mut c = run.first()?;
                while c.valid() {
                    c.advance()?;
                }
                Ok(())
            });
            let e = r.expect_err(&format!("a flip at {at} of {} went unnoticed", good.len()));
            assert!(e.to_string().contains(&name), "{e}");
        }
        assert!(flips >= 30);
        fs.put(&path, &good[..good.len() - 1]);
        assert!(Run::open(&s, id, Arc::new(BlockCache::new(1 << 20))).is_err());
    }

    #[test]
    fn entries_out_of_order_are_refused_and_nothing_is_left() {
        let fs = MemFs::new();
        let s = create(&fs);
        let before = fs.paths().len();
        {
            let mut w = s.build_run(STREAM, 0).unwrap();
            w.add(&entry_key(2, 1), b"v", None, 1).unwrap();
            assert!(w.add(&entry_key(1, 1), b"v", None, 1).is_err());
            assert!(w.add(&entry_key(2, 1), b"v", None, 1).is_err());
        }
        assert_eq!(fs.paths().len(), before, "an unfinished run is removed");
        assert!(s.build_run(STREAM, 0).unwrap().finish().is_err(), "an empty run is refused");
    }
}
