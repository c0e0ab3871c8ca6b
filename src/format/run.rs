//! Sorted runs (file kind `run`): the order-preserving encoding of the keys
//! they sort by, and their data blocks, index partitions (fence keys and a
//! Bloom filter) and footer. Every one of these is the payload of an
//! encrypted frame: nothing here is ever written in plaintext.
//! `docs/FORMAT.md` §8 describes every byte.
//!
//! A run is a sequence of entries `(key, value)` in strictly increasing
//! byte order of their keys. The layer above decides what keys and values
//! mean ([`key`] gives it the encoding that makes byte order the order it
//! wants); this module only stores, finds and checks them.

use super::codec::{DecodeError, Reader, Writer};

/// A data block is cut once it holds this many bytes (an entry larger than
/// this is a block of its own), so reading one entry decrypts at most one
/// such block.
pub const BLOCK_TARGET: usize = 16 * 1024;
/// An index partition is cut once its fence keys and filter would exceed
/// this many bytes.
pub const PARTITION_TARGET: usize = 16 * 1024;
/// Largest entry key (new primary keys are far shorter, but a database
/// written before their limit may hold long ones).
pub const MAX_ENTRY_KEY: usize = 1 << 20;
/// A data block is also cut once its keys and values, uncompressed, reach
/// this many bytes (so a block of long, shared keys stays small in memory).
pub const BLOCK_DECODED_TARGET: usize = 64 * 1024;
/// The most bytes a data block's keys may take once decoded: a block the
/// writer cuts at [`BLOCK_DECODED_TARGET`] with one more entry of the
/// largest key stays below it; a block beyond it is refused before it is
/// rebuilt (prefix compression lets a few bytes stand for a long key).
pub const MAX_DECODED_KEYS: usize = BLOCK_DECODED_TARGET + 2 * MAX_ENTRY_KEY;
/// Largest payload of any run frame (a frame's own limit).
pub const MAX_RUN_PAYLOAD: usize = super::frame::MAX_PAYLOAD;
/// Bloom filter bits per distinct filter key (about 1% false positives
/// with [`BLOOM_PROBES`] probes).
pub const BLOOM_BITS_PER_KEY: usize = 10;
/// Bloom filter probes per key.
pub const BLOOM_PROBES: u8 = 7;
/// The run format version in a footer and in run metadata.
pub const RUN_VERSION: u8 = 1;

/// Payload kind byte of a data block.
pub const KIND_DATA: u8 = 1;
/// Payload kind byte of an index partition.
pub const KIND_INDEX: u8 = 2;
/// Payload kind byte of a footer.
pub const KIND_FOOTER: u8 = 3;

/// Order-preserving key encoding: the byte order of encoded keys is the
/// order of what they encode, component by component, and every component
/// is self-delimiting, so a key's encoding followed by anything sorts
/// inside the range of that key.
pub mod key {
    use super::DecodeError;
    use std::borrow::Cow;

    /// Tag of an integer component (integers sort before strings).
    pub const TAG_INT: u8 = 0x01;
    /// Tag of a string component.
    pub const TAG_STR: u8 = 0x02;

    /// Append `v` big-endian (unsigned order).
    pub fn put_u32(out: &mut Vec<u8>, v: u32) {
        out.extend_from_slice(&v.to_be_bytes());
    }
    /// Append `v` big-endian (unsigned order).
    pub fn put_u64(out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&v.to_be_bytes());
    }
    /// Append `v` so that larger values sort first.
    pub fn put_desc_u64(out: &mut Vec<u8>, v: u64) {
        put_u64(out, !v);
    }
    /// Append an integer component: its tag, then the value big-endian with
    /// its sign bit flipped (so negative numbers sort before positive ones).
    pub fn put_int(out: &mut Vec<u8>, v: i64) {
        out.push(TAG_INT);
        put_u64(out, (v as u64) ^ (1 << 63));
    }
    /// Append a string component: its tag, then [`put_escaped`].
    pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
        out.push(TAG_STR);
        put_escaped(out, s);
    }
    /// Append bytes self-delimited and in order: each `00` as `00 FF`, then
    /// the terminator `00 01` (below every escaped byte, so a string sorts
    /// before every longer string it begins).
    pub fn put_escaped(out: &mut Vec<u8>, s: &[u8]) {
        for part in s.split(|&b| b == 0).enumerate() {
            if part.0 > 0 {
                out.extend_from_slice(&[0x00, 0xFF]);
            }
            out.extend_from_slice(part.1);
        }
        out.extend_from_slice(&[0x00, 0x01]);
    }

    /// The smallest byte string greater than every string that begins with
    /// `prefix`, or `None` when there is none (the prefix is all `FF`).
    pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
        let mut end = prefix.to_vec();
        while let Some(last) = end.pop() {
            if last != 0xFF {
                end.push(last + 1);
                return Some(end);
            }
        }
        None
    }

    /// An integer or string component read back.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Part<'a> {
        /// An integer.
        Int(i64),
        /// A string's bytes (borrowed unless it held a `00`).
        Str(Cow<'a, [u8]>),
    }

    /// Reads components back, every read checked.
    pub struct KeyReader<'a> {
        buf: &'a [u8],
        pos: usize,
    }

    impl<'a> KeyReader<'a> {
        /// Read `buf` from its start.
        pub fn new(buf: &'a [u8]) -> Self {
            KeyReader { buf, pos: 0 }
        }
        /// Offset of the next component.
        pub fn pos(&self) -> usize {
            self.pos
        }
        /// Bytes not read yet.
        pub fn rest(&self) -> &'a [u8] {
            self.buf.get(self.pos..).unwrap_or_default()
        }
        fn err(&self, reason: &str) -> DecodeError {
            DecodeError { offset: self.pos, reason: format!("entry key: {reason}") }
        }
        fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DecodeError> {
            let s = self
                .buf
                .get(self.pos..)
                .and_then(|r| r.get(..N))
                .ok_or_else(|| self.err(&format!("truncated {what}")))?;
            let mut a = [0u8; N];
            a.copy_from_slice(s);
            self.pos += N;
            Ok(a)
        }
        /// A byte.
        pub fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
            Ok(self.take::<1>(what)?[0])
        }
        /// A big-endian u32.
        pub fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
            Ok(u32::from_be_bytes(self.take(what)?))
        }
        /// A big-endian u64.
        pub fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
            Ok(u64::from_be_bytes(self.take(what)?))
        }
        /// A value written by [`put_desc_u64`].
        pub fn desc_u64(&mut self, what: &str) -> Result<u64, DecodeError> {
            Ok(!self.u64(what)?)
        }
        /// An integer or string component.
        pub fn part(&mut self) -> Result<Part<'a>, DecodeError> {
            match self.u8("component tag")? {
                TAG_INT => Ok(Part::Int((self.u64("integer")? ^ (1 << 63)) as i64)),
                TAG_STR => Ok(Part::Str(self.escaped()?)),
                t => Err(self.err(&format!("unknown component tag {t:#04x}"))),
            }
        }
        /// Bytes written by [`put_escaped`].
        pub fn escaped(&mut self) -> Result<Cow<'a, [u8]>, DecodeError> {
            let start = self.pos;
            let rest = self.rest();
            let mut owned: Option<Vec<u8>> = None;
            let mut i = 0;
            loop {
                let Some(z) = rest.get(i..).and_then(|r| r.iter().position(|&b| b == 0)) else {
                    self.pos = start;
                    return Err(self.err("unterminated string"));
                };
                let at = i + z;
                match rest.get(at + 1) {
                    Some(0x01) => {
                        self.pos = start + at + 2;
                        return Ok(match owned {
                            Some(mut o) => {
                                o.extend_from_slice(&rest[i..at]);
                                Cow::Owned(o)
                            }
                            None => Cow::Borrowed(&rest[..at]),
                        });
                    }
                    Some(0xFF) => {
                        let o = owned.get_or_insert_with(Vec::new);
                        o.extend_from_slice(&rest[i..at]);
                        o.push(0);
                        i = at + 2;
                    }
                    _ => {
                        self.pos = start + at;
                        return Err(self.err("bad escape in string"));
                    }
                }
            }
        }
        /// Fail unless every byte was read.
        pub fn finish(&self) -> Result<(), DecodeError> {
            if self.pos != self.buf.len() {
                return Err(self.err("trailing bytes"));
            }
            Ok(())
        }
    }
}

/// Where a frame of the same run file is: its index, its byte offset, and
/// its payload's length (so that it is read with one positioned read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    /// Frame index in the file.
    pub frame: u64,
    /// Byte offset of the frame.
    pub offset: u64,
    /// Plaintext length of its payload.
    pub len: u32,
}

impl Handle {
    fn encode(&self, w: &mut Writer) {
        w.varint(self.frame);
        w.varint(self.offset);
        w.varint(u64::from(self.len));
    }
    fn decode(r: &mut Reader<'_>) -> Result<Handle, DecodeError> {
        let frame = r.varint("frame index")?;
        let offset = r.varint("frame offset")?;
        let at = r.pos();
        let len = r.varint("frame length")?;
        if len > MAX_RUN_PAYLOAD as u64 {
            return Err(DecodeError { offset: at, reason: format!("frame length {len} exceeds {MAX_RUN_PAYLOAD}") });
        }
        Ok(Handle { frame, offset, len: len as u32 })
    }
}

fn kind_byte(r: &mut Reader<'_>, want: u8, what: &str) -> Result<(), DecodeError> {
    let k = r.u8("payload kind")?;
    if k != want {
        return Err(DecodeError { offset: 0, reason: format!("expected {what} (kind {want}), found kind {k}") });
    }
    Ok(())
}

fn len_checked(r: &mut Reader<'_>, max: usize, what: &str) -> Result<usize, DecodeError> {
    let at = r.pos();
    let n = r.varint(what)?;
    if n > max as u64 || n > r.remaining() as u64 {
        return Err(DecodeError { offset: at, reason: format!("{what} {n} impossible here") });
    }
    Ok(n as usize)
}

/// Builds one data block: entries with their keys prefix-compressed
/// against the previous key.
pub struct BlockBuilder {
    w: Writer,
    count: u32,
    last: Vec<u8>,
    decoded: usize,
}

impl Default for BlockBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockBuilder {
    /// An empty block.
    pub fn new() -> Self {
        let mut w = Writer::default();
        w.u8(KIND_DATA);
        w.u32(0);
        BlockBuilder { w, count: 0, last: Vec::new(), decoded: 0 }
    }
    /// Entries so far.
    pub fn count(&self) -> u32 {
        self.count
    }
    /// Payload bytes so far.
    pub fn len(&self) -> usize {
        self.w.buf.len()
    }
    /// No entry yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Bytes of its keys and values, uncompressed.
    pub fn decoded_len(&self) -> usize {
        self.decoded
    }
    /// The last key added.
    pub fn last_key(&self) -> &[u8] {
        &self.last
    }
    /// Bytes the entry would add.
    pub fn entry_len(&self, key: &[u8], value: &[u8]) -> usize {
        let shared = common_prefix(&self.last, key);
        let v = |n: usize| varint_len(n as u64);
        v(shared) + v(key.len() - shared) + v(value.len()) + key.len() - shared + value.len()
    }
    /// Append an entry. The caller adds keys in strictly increasing order
    /// (the run writer checks it); the decoder refuses any other block.
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        let shared = if self.count == 0 { 0 } else { common_prefix(&self.last, key) };
        self.w.varint(shared as u64);
        self.w.varint((key.len() - shared) as u64);
        self.w.varint(value.len() as u64);
        self.w.bytes(&key[shared..]);
        self.w.bytes(value);
        self.last.clear();
        self.last.extend_from_slice(key);
        self.count += 1;
        self.decoded += key.len() + value.len();
    }
    /// The finished payload; the builder is empty again.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.w.buf);
        buf[1..5].copy_from_slice(&self.count.to_le_bytes());
        *self = BlockBuilder::new();
        buf
    }
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[derive(Debug, Clone, Copy)]
struct Ent {
    key_end: u32,
    val_off: u32,
    val_len: u32,
}

/// A decoded data block: full keys and value positions, for binary search.
#[derive(Debug)]
pub struct DataBlock {
    payload: Vec<u8>,
    keys: Vec<u8>,
    ents: Vec<Ent>,
}

impl DataBlock {
    /// Decode and check a data block: every length within the payload,
    /// every key at most [`MAX_ENTRY_KEY`] and greater than the one before.
    pub fn decode(payload: Vec<u8>) -> Result<DataBlock, DecodeError> {
        let mut r = Reader::new(&payload);
        kind_byte(&mut r, KIND_DATA, "a data block")?;
        // Each entry takes at least three bytes.
        let n = r.count(MAX_RUN_PAYLOAD, 3, "entry")?;
        let mut keys: Vec<u8> = Vec::new();
        let mut ents = Vec::with_capacity(n);
        let mut prev_start = 0usize;
        for i in 0..n {
            let at = r.pos();
            let shared = r.varint("shared key length")? as usize;
            let prev_len = keys.len() - prev_start;
            if (i == 0 && shared != 0) || shared > prev_len {
                return Err(DecodeError {
                    offset: at,
                    reason: format!("entry {i} shares {shared} bytes of a {prev_len}-byte key"),
                });
            }
            let unshared = len_checked(&mut r, MAX_ENTRY_KEY, "key suffix length")?;
            if shared + unshared > MAX_ENTRY_KEY || shared + unshared == 0 {
                return Err(DecodeError {
                    offset: at,
                    reason: format!("entry {i} key length {} out of range", shared + unshared),
                });
            }
            let vlen = len_checked(&mut r, MAX_RUN_PAYLOAD, "value length")?;
            let suffix = r.take(unshared, "key suffix")?;
            let val_off = r.pos();
            r.take(vlen, "value")?;
            let start = keys.len();
            if start + shared + unshared > MAX_DECODED_KEYS {
                return Err(DecodeError {
                    offset: at,
                    reason: format!("the block's keys take more than {MAX_DECODED_KEYS} bytes decoded"),
                });
            }
            keys.extend_from_within(prev_start..prev_start + shared);
            keys.extend_from_slice(suffix);
            if i > 0 && keys[prev_start..start] >= keys[start..] {
                return Err(DecodeError { offset: at, reason: format!("entry {i} is not after the entry before it") });
            }
            // One encoding per block: the shared prefix is the longest.
            if i > 0 && shared < prev_len && suffix.first() == Some(&keys[prev_start + shared]) {
                return Err(DecodeError {
                    offset: at,
                    reason: format!("entry {i} shares less of its key than it could"),
                });
            }
            prev_start = start;
            ents.push(Ent { key_end: keys.len() as u32, val_off: val_off as u32, val_len: vlen as u32 });
        }
        r.finish("data block")?;
        Ok(DataBlock { payload, keys, ents })
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.ents.len()
    }
    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.ents.is_empty()
    }
    /// Key of entry `i` (`i < len()`).
    pub fn key(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ents[i - 1].key_end as usize };
        &self.keys[start..self.ents[i].key_end as usize]
    }
    /// Value of entry `i` (`i < len()`).
    pub fn value(&self, i: usize) -> &[u8] {
        let e = self.ents[i];
        &self.payload[e.val_off as usize..(e.val_off + e.val_len) as usize]
    }
    /// Index of the first entry whose key is at or after `key` (`len()` if none).
    pub fn seek(&self, key: &[u8]) -> usize {
        let (mut lo, mut hi) = (0, self.ents.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.key(mid) < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
    /// Bytes of memory this block holds (its weight in a cache).
    pub fn weight(&self) -> usize {
        self.payload.capacity() + self.keys.capacity() + self.ents.capacity() * std::mem::size_of::<Ent>()
    }
}

/// A Bloom filter over filter keys (a run's filter keys are what the layer
/// above asks about, e.g. a table and primary key without the sequence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bloom {
    probes: u8,
    bits: Vec<u8>,
}

/// The hash a filter key is probed by: XXH3-64, a fixed published function
/// (the filter is encrypted with its run, so its hash needs no secret).
pub fn bloom_hash(filter_key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(filter_key)
}

impl Bloom {
    /// A filter for these key hashes.
    pub fn build(hashes: &[u64]) -> Bloom {
        let nbits = (hashes.len() * BLOOM_BITS_PER_KEY).max(64).next_multiple_of(8);
        let mut b = Bloom { probes: BLOOM_PROBES, bits: vec![0; nbits / 8] };
        for &h in hashes {
            for bit in b.probe_bits(h) {
                b.bits[bit / 8] |= 1 << (bit % 8);
            }
        }
        b
    }
    fn probe_bits(&self, h: u64) -> impl Iterator<Item = usize> + use<> {
        let nbits = (self.bits.len() * 8) as u64;
        let (h1, h2) = (h & 0xFFFF_FFFF, (h >> 32) | 1);
        (0..u64::from(self.probes)).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % nbits.max(1)) as usize)
    }
    /// False only if no key with this hash was added.
    pub fn may_contain(&self, h: u64) -> bool {
        if self.bits.is_empty() {
            return true;
        }
        self.probe_bits(h).all(|bit| self.bits[bit / 8] & (1 << (bit % 8)) != 0)
    }
    /// Encoded length.
    pub fn encoded_len(&self) -> usize {
        1 + varint_len(self.bits.len() as u64) + self.bits.len()
    }
    fn encode(&self, w: &mut Writer) {
        w.u8(self.probes);
        w.varint(self.bits.len() as u64);
        w.bytes(&self.bits);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Bloom, DecodeError> {
        let at = r.pos();
        let probes = r.u8("filter probes")?;
        if probes == 0 || probes > 30 {
            return Err(DecodeError { offset: at, reason: format!("filter probes {probes} out of range 1..=30") });
        }
        let n = len_checked(r, MAX_RUN_PAYLOAD, "filter length")?;
        Ok(Bloom { probes, bits: r.take(n, "filter bits")?.to_vec() })
    }
}

/// An index partition: for each data block it covers, its last key and
/// where it is; and a Bloom filter over the filter keys of those blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPartition {
    /// `(last key, handle)` of each block, in key order.
    pub blocks: Vec<(Vec<u8>, Handle)>,
    /// The filter over the blocks' filter keys.
    pub bloom: Bloom,
}

impl IndexPartition {
    /// Encode as a frame payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(KIND_INDEX);
        w.varint(self.blocks.len() as u64);
        for (k, h) in &self.blocks {
            w.varint(k.len() as u64);
            w.bytes(k);
            h.encode(&mut w);
        }
        self.bloom.encode(&mut w);
        w.buf
    }
    /// Decode and check (fence keys strictly increasing, non-empty, bounded).
    pub fn decode(p: &[u8]) -> Result<IndexPartition, DecodeError> {
        let mut r = Reader::new(p);
        kind_byte(&mut r, KIND_INDEX, "an index partition")?;
        let blocks = fences(&mut r, "block")?;
        let bloom = Bloom::decode(&mut r)?;
        r.finish("index partition")?;
        Ok(IndexPartition { blocks, bloom })
    }
    /// The first block whose last key is at or after `key`.
    pub fn find(&self, key: &[u8]) -> Option<usize> {
        let i = self.blocks.partition_point(|(k, _)| k.as_slice() < key);
        (i < self.blocks.len()).then_some(i)
    }
    /// Bytes of memory it holds (its weight in a cache).
    pub fn weight(&self) -> usize {
        self.bloom.bits.capacity()
            + self.blocks.iter().map(|(k, _)| k.capacity() + std::mem::size_of::<(Vec<u8>, Handle)>()).sum::<usize>()
    }
}

fn fences(r: &mut Reader<'_>, what: &str) -> Result<Vec<(Vec<u8>, Handle)>, DecodeError> {
    let at = r.pos();
    // Each fence takes at least four bytes (a one-byte key and three varints).
    let n = r.varint("fence count")?;
    if n == 0 || n > (r.remaining() / 4) as u64 {
        return Err(DecodeError { offset: at, reason: format!("{what} count {n} impossible here") });
    }
    let mut v: Vec<(Vec<u8>, Handle)> = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = r.pos();
        let kl = len_checked(r, MAX_ENTRY_KEY, "fence key length")?;
        let k = r.take(kl, "fence key")?;
        if k.is_empty() || v.last().is_some_and(|(p, _)| p.as_slice() >= k) {
            return Err(DecodeError {
                offset: at,
                reason: format!("{what} {i}'s fence key is not after the one before it"),
            });
        }
        let h = Handle::decode(r)?;
        v.push((k.to_vec(), h));
    }
    Ok(v)
}

/// A run's footer: its counts, its first key, and its index partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// Entries in the run.
    pub entries: u64,
    /// Data blocks in the run.
    pub blocks: u64,
    /// Smallest sequence number of the run's entries (as the writer gave it).
    pub min_seq: u64,
    /// Largest sequence number of the run's entries.
    pub max_seq: u64,
    /// The run's first key (the last is the last partition's fence).
    pub first_key: Vec<u8>,
    /// `(last key, handle)` of each index partition, in key order.
    pub partitions: Vec<(Vec<u8>, Handle)>,
}

impl Footer {
    /// Encode as a frame payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(KIND_FOOTER);
        w.u8(RUN_VERSION);
        w.varint(self.entries);
        w.varint(self.blocks);
        w.varint(self.min_seq);
        w.varint(self.max_seq);
        w.varint(self.first_key.len() as u64);
        w.bytes(&self.first_key);
        w.varint(self.partitions.len() as u64);
        for (k, h) in &self.partitions {
            w.varint(k.len() as u64);
            w.bytes(k);
            h.encode(&mut w);
        }
        w.buf
    }
    /// Decode and check.
    pub fn decode(p: &[u8]) -> Result<Footer, DecodeError> {
        let mut r = Reader::new(p);
        kind_byte(&mut r, KIND_FOOTER, "a run footer")?;
        let v = r.u8("run version")?;
        if v != RUN_VERSION {
            return Err(r.err(format!("run version {v} is not {RUN_VERSION}")));
        }
        let entries = r.varint("entry count")?;
        let blocks = r.varint("block count")?;
        let min_seq = r.varint("smallest sequence")?;
        let max_seq = r.varint("largest sequence")?;
        if entries == 0 || blocks == 0 || blocks > entries || min_seq > max_seq {
            return Err(r.err(format!(
                "counts disagree: {entries} entries in {blocks} blocks, sequences {min_seq}..={max_seq}"
            )));
        }
        let kl = len_checked(&mut r, MAX_ENTRY_KEY, "first key length")?;
        let first_key = r.take(kl, "first key")?.to_vec();
        let partitions = fences(&mut r, "partition")?;
        if first_key.is_empty() || partitions.first().is_some_and(|(k, _)| k.as_slice() < first_key.as_slice()) {
            return Err(r.err("first key is after the first partition's last key"));
        }
        r.finish("run footer")?;
        Ok(Footer { entries, blocks, min_seq, max_seq, first_key, partitions })
    }
    /// The last key of the run.
    pub fn last_key(&self) -> &[u8] {
        self.partitions.last().map(|(k, _)| k.as_slice()).unwrap_or_default()
    }
    /// The first partition whose last key is at or after `key`.
    pub fn find(&self, key: &[u8]) -> Option<usize> {
        let i = self.partitions.partition_point(|(k, _)| k.as_slice() < key);
        (i < self.partitions.len()).then_some(i)
    }
}

/// What the manifest records of a run (its file metadata, kept in the
/// encrypted keyring body): its level, where its footer is, and its counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunMeta {
    /// Its level (0: flushed, possibly overlapping other level-0 runs).
    pub level: u8,
    /// Where its footer is.
    pub footer: Handle,
    /// Entries in the run.
    pub entries: u64,
    /// Smallest sequence number of its entries.
    pub min_seq: u64,
    /// Largest sequence number of its entries.
    pub max_seq: u64,
}

impl RunMeta {
    /// Encode as file metadata.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(RUN_VERSION);
        w.u8(self.level);
        self.footer.encode(&mut w);
        w.varint(self.entries);
        w.varint(self.min_seq);
        w.varint(self.max_seq);
        w.buf
    }
    /// Decode and check.
    pub fn decode(p: &[u8]) -> Result<RunMeta, DecodeError> {
        let mut r = Reader::new(p);
        let v = r.u8("run version")?;
        if v != RUN_VERSION {
            return Err(r.err(format!("run version {v} is not {RUN_VERSION}")));
        }
        let level = r.u8("level")?;
        let footer = Handle::decode(&mut r)?;
        let entries = r.varint("entry count")?;
        let min_seq = r.varint("smallest sequence")?;
        let max_seq = r.varint("largest sequence")?;
        if min_seq > max_seq {
            return Err(r.err("smallest sequence above the largest"));
        }
        r.finish("run metadata")?;
        Ok(RunMeta { level, footer, entries, min_seq, max_seq })
    }
}

#[cfg(test)]
mod tests {
    use super::key::*;
    use super::*;
    use proptest::prelude::*;

    fn int(v: i64) -> Vec<u8> {
        let mut o = Vec::new();
        put_int(&mut o, v);
        o
    }
    fn s(v: &[u8]) -> Vec<u8> {
        let mut o = Vec::new();
        put_str(&mut o, v);
        o
    }

    #[test]
    fn varints_round_trip_and_refuse_overlong_forms() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut w = Writer::default();
            w.varint(v);
            assert_eq!(w.buf.len(), varint_len(v));
            let mut r = Reader::new(&w.buf);
            assert_eq!(r.varint("v").unwrap(), v);
            assert_eq!(r.remaining(), 0);
        }
        // 0 written in two bytes, and an eleventh byte: refused.
        assert!(Reader::new(&[0x80, 0x00]).varint("v").is_err());
        assert!(Reader::new(&[0xFF; 11]).varint("v").is_err());
        assert!(Reader::new(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02]).varint("v").is_err());
        assert!(Reader::new(&[0x80]).varint("v").is_err());
    }

    #[test]
    fn strings_with_zero_bytes_sort_and_read_back() {
        let cases: [&[u8]; 7] = [b"", b"\0", b"\0\0", b"\0\x01", b"a", b"a\0", b"a\0b"];
        for w in cases.windows(2) {
            assert!(s(w[0]) < s(w[1]), "{:?} < {:?}", w[0], w[1]);
        }
        for c in cases {
            let e = s(c);
            let mut r = KeyReader::new(&e);
            assert_eq!(r.part().unwrap(), Part::Str(c.to_vec().into()));
            r.finish().unwrap();
        }
        assert!(int(i64::MAX) < s(b""));
    }

    #[test]
    fn malformed_components_are_errors() {
        for bad in [&b""[..], b"\x03", b"\x01\0\0", b"\x02abc", b"\x02a\0\x02", b"\x02a\0"] {
            assert!(KeyReader::new(bad).part().is_err(), "{bad:?}");
        }
        assert!(KeyReader::new(b"\x02a\0\x01x").finish().is_err());
    }

    #[test]
    fn prefix_end_bounds_every_extension() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xFF"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xFF\xFF"), None);
        let p = s(b"k");
        let end = prefix_end(&p).unwrap();
        let mut longer = p.clone();
        put_desc_u64(&mut longer, 0);
        assert!(longer < end && longer > p);
        // A longer string sharing the prefix's bytes is another key: outside.
        assert!(s(b"k\0") >= end || !s(b"k\0").starts_with(&p));
    }

    fn block_of(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut b = BlockBuilder::new();
        for (k, v) in entries {
            let before = b.len();
            let n = b.entry_len(k, v);
            b.add(k, v);
            assert_eq!(b.len() - before, n, "entry_len agrees with add");
        }
        b.finish()
    }

    #[test]
    fn a_block_finds_every_key_and_the_gaps_between() {
        let entries: Vec<(Vec<u8>, Vec<u8>)> =
            (0..200).map(|i| (format!("key-{:05}", i * 2).into_bytes(), format!("v{i}").into_bytes())).collect();
        let b = DataBlock::decode(block_of(&entries)).unwrap();
        assert_eq!(b.len(), 200);
        for (i, (k, v)) in entries.iter().enumerate() {
            assert_eq!(b.seek(k), i);
            assert_eq!(b.key(i), &k[..]);
            assert_eq!(b.value(i), &v[..]);
            let gap = format!("key-{:05}", i * 2 + 1).into_bytes();
            assert_eq!(b.seek(&gap), i + 1);
        }
        assert_eq!(b.seek(b""), 0);
        assert_eq!(b.seek(b"z"), 200);
    }

    #[test]
    fn blocks_out_of_order_or_overrunning_are_refused() {
        let good = block_of(&[(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())]);
        DataBlock::decode(good.clone()).unwrap();
        let dup = block_of(&[(b"a".to_vec(), b"1".to_vec()), (b"a".to_vec(), b"2".to_vec())]);
        assert!(DataBlock::decode(dup).unwrap_err().reason.contains("not after"));
        let back = block_of(&[(b"b".to_vec(), b"1".to_vec()), (b"a".to_vec(), b"2".to_vec())]);
        assert!(DataBlock::decode(back).is_err());
        for cut in 0..good.len() {
            assert!(DataBlock::decode(good[..cut].to_vec()).is_err(), "cut at {cut}");
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(DataBlock::decode(extra).is_err());
        let mut lying = good.clone();
        lying[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(DataBlock::decode(lying).is_err());
        let mut wrong_kind = good;
        wrong_kind[0] = KIND_INDEX;
        assert!(DataBlock::decode(wrong_kind).unwrap_err().reason.contains("data block"));
    }

    #[test]
    fn a_block_whose_keys_rebuild_beyond_the_limit_is_refused() {
        // Each entry shares all but one byte of a long key: a few bytes on
        // disk, a megabyte each rebuilt.
        let mut w = Writer::default();
        w.u8(KIND_DATA);
        let n = (MAX_DECODED_KEYS / MAX_ENTRY_KEY) as u32 + 2;
        w.u32(n);
        for i in 0..n {
            let (shared, suffix) =
                if i == 0 { (0, vec![0u8; MAX_ENTRY_KEY]) } else { (MAX_ENTRY_KEY - 1, vec![i as u8]) };
            w.varint(shared as u64);
            w.varint(suffix.len() as u64);
            w.varint(0);
            w.bytes(&suffix);
        }
        let e = DataBlock::decode(w.buf).unwrap_err();
        assert!(e.reason.contains("decoded"), "{e:?}");
        // The writer's largest blocks stay below it: entries up to the
        // decoded target (it cuts a block before one would pass it), or a
        // single entry of the longest key.
        let mut b = BlockBuilder::new();
        let mut i = 0u32;
        while b.decoded_len() + 16 * 1024 < BLOCK_DECODED_TARGET {
            let mut k = vec![7u8; 16 * 1024 - 4];
            k.extend_from_slice(&i.to_be_bytes());
            b.add(&k, b"v");
            i += 1;
        }
        assert!(DataBlock::decode(b.finish()).is_ok());
        let mut b = BlockBuilder::new();
        b.add(&vec![9u8; MAX_ENTRY_KEY], b"v");
        assert!(DataBlock::decode(b.finish()).is_ok());
    }

    #[test]
    fn bloom_has_no_false_negatives_and_few_false_positives() {
        let hashes: Vec<u64> = (0..10_000u32).map(|i| bloom_hash(&i.to_le_bytes())).collect();
        let b = Bloom::build(&hashes);
        assert!(hashes.iter().all(|&h| b.may_contain(h)));
        let fp = (10_000..110_000u32).filter(|i| b.may_contain(bloom_hash(&i.to_le_bytes()))).count();
        assert!(fp < 2_000, "{fp} false positives in 100000");
        assert!(Bloom::build(&[]).bits.len() >= 8);
    }

    #[test]
    fn index_footer_and_meta_round_trip_and_refuse_damage() {
        let h = |f| Handle { frame: f, offset: 4096 * f, len: 16_000 };
        let part = IndexPartition {
            blocks: vec![(b"b".to_vec(), h(0)), (b"d".to_vec(), h(1))],
            bloom: Bloom::build(&[1, 2, 3]),
        };
        let e = part.encode();
        assert_eq!(IndexPartition::decode(&e).unwrap(), part);
        assert_eq!(part.find(b"a"), Some(0));
        assert_eq!(part.find(b"c"), Some(1));
        assert_eq!(part.find(b"e"), None);
        for cut in 0..e.len() {
            assert!(IndexPartition::decode(&e[..cut]).is_err());
        }
        let unsorted = IndexPartition { blocks: vec![(b"d".to_vec(), h(0)), (b"b".to_vec(), h(1))], ..part.clone() };
        assert!(IndexPartition::decode(&unsorted.encode()).is_err());
        let f = Footer {
            entries: 10,
            blocks: 2,
            min_seq: 3,
            max_seq: 9,
            first_key: b"a".to_vec(),
            partitions: vec![(b"d".to_vec(), h(2))],
        };
        let e = f.encode();
        assert_eq!(Footer::decode(&e).unwrap(), f);
        assert_eq!(f.last_key(), b"d");
        for cut in 0..e.len() {
            assert!(Footer::decode(&e[..cut]).is_err());
        }
        assert!(Footer::decode(&Footer { first_key: b"e".to_vec(), ..f.clone() }.encode()).is_err());
        assert!(Footer::decode(&Footer { min_seq: 10, ..f.clone() }.encode()).is_err());
        assert!(Footer::decode(&part.encode()).unwrap_err().reason.contains("footer"));
        let m = RunMeta { level: 2, footer: h(3), entries: 10, min_seq: 3, max_seq: 9 };
        assert_eq!(RunMeta::decode(&m.encode()).unwrap(), m);
        let mut v = m.encode();
        v[0] = 9;
        assert!(RunMeta::decode(&v).is_err());
    }

    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
    enum K {
        I(i64),
        S(Vec<u8>),
    }

    fn enc(t: u32, k: &K, seq: u64) -> Vec<u8> {
        let mut o = vec![1];
        put_u32(&mut o, t);
        match k {
            K::I(i) => put_int(&mut o, *i),
            K::S(s) => put_str(&mut o, s),
        }
        put_desc_u64(&mut o, seq);
        o
    }

    proptest! {
        /// Byte order of encoded (table, key, sequence) is table, then key
        /// (integers before strings), then sequence descending; and every
        /// key reads back.
        #[test]
        fn encoded_order_is_entry_order(
            a in (0u32..4, prop_oneof![any::<i64>().prop_map(K::I), proptest::collection::vec(0u8..4, 0..6).prop_map(K::S)], any::<u64>()),
            b in (0u32..4, prop_oneof![any::<i64>().prop_map(K::I), proptest::collection::vec(0u8..4, 0..6).prop_map(K::S)], any::<u64>()),
        ) {
            let want = (a.0, &a.1, std::cmp::Reverse(a.2)).cmp(&(b.0, &b.1, std::cmp::Reverse(b.2)));
            prop_assert_eq!(enc(a.0, &a.1, a.2).cmp(&enc(b.0, &b.1, b.2)), want);
            let e = enc(a.0, &a.1, a.2);
            let mut r = KeyReader::new(&e);
            prop_assert_eq!(r.u8("ns").unwrap(), 1);
            prop_assert_eq!(r.u32("t").unwrap(), a.0);
            let part = r.part().unwrap();
            match (&a.1, part) {
                (K::I(i), Part::Int(j)) => prop_assert_eq!(*i, j),
                (K::S(s), Part::Str(t)) => prop_assert_eq!(&s[..], &t[..]),
                _ => prop_assert!(false, "component type changed"),
            }
            prop_assert_eq!(r.desc_u64("seq").unwrap(), a.2);
            prop_assert!(r.finish().is_ok());
        }

        /// Any sorted set of entries round-trips through a block.
        #[test]
        fn blocks_round_trip(mut keys in proptest::collection::btree_map(proptest::collection::vec(any::<u8>(), 1..24), proptest::collection::vec(any::<u8>(), 0..40), 1..60)) {
            let entries: Vec<(Vec<u8>, Vec<u8>)> = std::mem::take(&mut keys).into_iter().collect();
            let b = DataBlock::decode(block_of(&entries)).unwrap();
            prop_assert_eq!(b.len(), entries.len());
            for (i, (k, v)) in entries.iter().enumerate() {
                prop_assert_eq!(b.key(i), &k[..]);
                prop_assert_eq!(b.value(i), &v[..]);
                prop_assert_eq!(b.seek(k), i);
            }
        }
    }
}
