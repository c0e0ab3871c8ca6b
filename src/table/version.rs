//! Row versions as entries of the version tree (`storage::tree`): every
//! insert, patch and soft delete of a row is one entry keyed by
//! (table, key, sequence number), so that the newest version of a row at
//! or before any point is one seek, and a row's history is one range.
//! Secondary indexes are entries of the same tree, keyed by (table,
//! index, value, key, sequence number).
//! `docs/FORMAT.md` §8.6 describes the bytes.

use super::Pk;
use super::index::IKey;
use crate::format::codec::DecodeError;
use crate::format::run::key::{KeyReader, Part, put_desc_u64, put_escaped, put_int, put_str, put_u32, put_u64};

/// Namespace byte of a table's fold marker (see [`fold_key`]).
pub const NS_FOLD: u8 = 0x01;
/// Namespace byte of commits by sequence number (see [`commit_key`]).
pub const NS_COMMIT: u8 = 0x02;
/// Namespace byte of commits by time (see [`commit_time_key`]).
pub const NS_COMMIT_TIME: u8 = 0x03;
/// Namespace byte of catalog checkpoints (see [`catalog_key`]).
pub const NS_CATALOG: u8 = 0x05;
/// Namespace byte of row versions.
pub const NS_ROW: u8 = 0x10;
/// Namespace byte of secondary index entries (see [`index_key`]).
pub const NS_INDEX: u8 = 0x20;

/// What a version did to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionOp {
    /// Inserted it (the value holds the document).
    Insert,
    /// Patched it (the value holds the whole document after the patch).
    Patch,
    /// Soft-deleted it (the value holds the document the event carried, if any).
    SoftDelete,
    /// The row as it was at its table's compaction horizon (the entry's
    /// sequence number), standing for every version before it.
    Folded,
}

impl VersionOp {
    fn code(self) -> u8 {
        match self {
            VersionOp::Insert => 1,
            VersionOp::Patch => 2,
            VersionOp::SoftDelete => 3,
            VersionOp::Folded => 4,
        }
    }
    fn from_code(c: u8) -> Option<VersionOp> {
        Some(match c {
            1 => VersionOp::Insert,
            2 => VersionOp::Patch,
            3 => VersionOp::SoftDelete,
            4 => VersionOp::Folded,
            _ => return None,
        })
    }
    /// Whether the row exists after it.
    pub fn is_live(self) -> bool {
        !matches!(self, VersionOp::SoftDelete)
    }
}

/// The entries of table `table`'s rows begin with this.
pub fn table_prefix(table: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(5);
    k.push(NS_ROW);
    put_u32(&mut k, table);
    k
}

/// The versions of row `key` of table `table` begin with this (it is also
/// what the tree's filters are asked about).
pub fn row_prefix(table: u32, key: &Pk) -> Vec<u8> {
    let mut k = table_prefix(table);
    match key {
        Pk::Int(i) => put_int(&mut k, *i),
        Pk::Str(s) => put_str(&mut k, s.as_bytes()),
    }
    k
}

/// The key of row `key`'s version at `seq`: the newest version at or
/// before `seq` is the first entry at or after it with the row's prefix.
pub fn version_key(table: u32, key: &Pk, seq: u64) -> Vec<u8> {
    let mut k = row_prefix(table, key);
    put_desc_u64(&mut k, seq);
    k
}

/// A version's key read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionKey {
    /// The table id.
    pub table: u32,
    /// The row's key.
    pub key: Pk,
    /// The sequence number of the version.
    pub seq: u64,
}

fn bad(reason: &str) -> DecodeError {
    DecodeError { offset: 0, reason: format!("row version: {reason}") }
}

/// Read a version's key.
pub fn decode_key(k: &[u8]) -> Result<VersionKey, DecodeError> {
    let mut r = KeyReader::new(k);
    if r.u8("namespace")? != NS_ROW {
        return Err(bad("not a row version"));
    }
    let table = r.u32("table")?;
    let key = match r.part()? {
        Part::Int(i) => Pk::Int(i),
        Part::Str(s) => Pk::Str(std::str::from_utf8(&s).map_err(|_| bad("string key is not UTF-8"))?.into()),
    };
    let seq = r.desc_u64("sequence number")?;
    r.finish()?;
    Ok(VersionKey { table, key, seq })
}

/// The sequence number of a version key, and the length of its row prefix
/// (without decoding the key: its last eight bytes are the sequence).
pub fn split_key(k: &[u8]) -> Option<(usize, u64)> {
    if k.first() != Some(&NS_ROW) || k.len() < 1 + 4 + 2 + 8 {
        return None;
    }
    let n = k.len() - 8;
    let mut b = [0u8; 8];
    b.copy_from_slice(&k[n..]);
    Some((n, !u64::from_be_bytes(b)))
}

/// The tree's key shape: a row version is filtered by its row prefix and
/// carries its sequence number; an index entry carries its sequence number
/// and is not filtered (indexes are read by ranges); a fold marker carries
/// neither.
pub fn shape(k: &[u8]) -> (Option<usize>, u64) {
    if let Some((_, seq)) = split_index_key(k) {
        return (None, seq);
    }
    if let Some(seq) = commit_key_seq(k) {
        return (None, seq);
    }
    if k.first() == Some(&NS_CATALOG) && k.len() == 17 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&k[1..9]);
        return (None, !u64::from_be_bytes(b));
    }
    match split_key(k) {
        Some((n, seq)) => (Some(n), seq),
        None => (None, 0),
    }
}

/// A version's value: what it did, then the document's JSON text (none
/// for a soft delete that carried no document).
pub fn encode_value(op: VersionOp, doc: Option<&str>) -> Vec<u8> {
    let text = doc.unwrap_or_default();
    let mut v = Vec::with_capacity(1 + text.len());
    v.push(op.code());
    v.extend_from_slice(text.as_bytes());
    v
}

/// Read a version's value (the document's text is not parsed).
pub fn decode_value(v: &[u8]) -> Result<(VersionOp, Option<&str>), DecodeError> {
    let (&code, text) = v.split_first().ok_or_else(|| bad("empty value"))?;
    let op = VersionOp::from_code(code).ok_or_else(|| bad(&format!("unknown op {code}")))?;
    let text = std::str::from_utf8(text).map_err(|_| bad("document is not UTF-8"))?;
    if text.is_empty() {
        if matches!(op, VersionOp::Insert | VersionOp::Patch | VersionOp::Folded) {
            return Err(bad("a version of a live row without a document"));
        }
        return Ok((op, None));
    }
    Ok((op, Some(text)))
}

/// The key of table `table`'s fold marker at horizon `h`: the tree's
/// versions of the table at or before `h` have been folded into one
/// version per row live at `h` (the newest marker of a table is the first
/// entry with [`fold_prefix`]).
pub fn fold_key(table: u32, h: u64) -> Vec<u8> {
    let mut k = fold_prefix(table);
    put_desc_u64(&mut k, h);
    k
}

/// The prefix of table `table`'s fold markers.
pub fn fold_prefix(table: u32) -> Vec<u8> {
    let mut k = vec![NS_FOLD];
    put_u32(&mut k, table);
    k
}

/// The horizon a fold marker names.
pub fn decode_fold_key(k: &[u8]) -> Result<(u32, u64), DecodeError> {
    let mut r = KeyReader::new(k);
    if r.u8("namespace")? != NS_FOLD {
        return Err(bad("not a fold marker"));
    }
    let table = r.u32("table")?;
    let h = r.desc_u64("horizon")?;
    r.finish()?;
    Ok((table, h))
}

/// The key of the commit whose first event is at `first_seq`: commits
/// sort newest first, so the commit holding sequence number *s* is the
/// first entry at or after `commit_key(s)`. Its value is
/// [`encode_commit`]'s.
pub fn commit_key(first_seq: u64) -> Vec<u8> {
    let mut k = vec![NS_COMMIT];
    put_desc_u64(&mut k, first_seq);
    k
}

/// The key of a commit by its time (then its first sequence number),
/// newest first: the last commit at or before time *t* is the first entry
/// at or after `commit_time_key(t, u64::MAX)`. Its value is the commit's
/// last sequence number (u64, big-endian).
pub fn commit_time_key(time: i64, first_seq: u64) -> Vec<u8> {
    let mut k = vec![NS_COMMIT_TIME];
    put_desc_u64(&mut k, (time as u64) ^ (1 << 63));
    put_desc_u64(&mut k, first_seq);
    k
}

/// The value of a commit's [`commit_key`] entry: its events (u32) and its
/// time (microseconds since the Unix epoch, i64), big-endian.
pub fn encode_commit(len: u32, time: i64) -> Vec<u8> {
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(&time.to_be_bytes());
    v
}

/// A commit entry read back: (first sequence number, events, time).
pub fn decode_commit(k: &[u8], v: &[u8]) -> Result<(u64, u32, i64), DecodeError> {
    let mut r = KeyReader::new(k);
    if r.u8("namespace")? != NS_COMMIT {
        return Err(bad("not a commit"));
    }
    let first = r.desc_u64("first sequence number")?;
    r.finish()?;
    let (Ok(len), Ok(time)) =
        (<[u8; 4]>::try_from(v.get(..4).unwrap_or_default()), <[u8; 8]>::try_from(v.get(4..).unwrap_or_default()))
    else {
        return Err(bad("a commit's value is not 12 bytes"));
    };
    let len = u32::from_be_bytes(len);
    if len == 0 || first.checked_add(u64::from(len) - 1).is_none() {
        return Err(bad("a commit of no events, or past the last sequence number"));
    }
    Ok((first, len, i64::from_be_bytes(time)))
}

/// A commit-by-time entry read back: (time, first sequence number, last).
pub fn decode_commit_time(k: &[u8], v: &[u8]) -> Result<(i64, u64, u64), DecodeError> {
    let mut r = KeyReader::new(k);
    if r.u8("namespace")? != NS_COMMIT_TIME {
        return Err(bad("not a commit time"));
    }
    let time = (r.desc_u64("time")? ^ (1 << 63)) as i64;
    let first = r.desc_u64("first sequence number")?;
    r.finish()?;
    let end = <[u8; 8]>::try_from(v).map_err(|_| bad("a commit time's value is not 8 bytes"))?;
    let end = u64::from_be_bytes(end);
    if end < first {
        return Err(bad("a commit that ends before it starts"));
    }
    Ok((time, first, end))
}

/// The sequence number a commit entry's key carries for the tree (its
/// first one; the entries of a commit go into the tree after its events'),
/// without decoding its value.
fn commit_key_seq(k: &[u8]) -> Option<u64> {
    let tail = match k.first() {
        Some(&NS_COMMIT) if k.len() == 9 => &k[1..9],
        Some(&NS_COMMIT_TIME) if k.len() == 17 => &k[9..17],
        _ => return None,
    };
    let mut b = [0u8; 8];
    b.copy_from_slice(tail);
    Some(!u64::from_be_bytes(b))
}

/// The key of part `part` of catalog checkpoint number `number` at sequence
/// number `seq`: newest first by sequence number, then by number (several
/// checkpoints at one point differ in what changed without a commit, such
/// as where log segments start), then by part.
pub fn catalog_key(seq: u64, number: u32, part: u32) -> Vec<u8> {
    let mut k = vec![NS_CATALOG];
    put_desc_u64(&mut k, seq);
    put_u32(&mut k, !number);
    put_u32(&mut k, part);
    k
}

/// A catalog checkpoint key read back: (sequence number, number, part).
pub fn decode_catalog_key(k: &[u8]) -> Result<(u64, u32, u32), DecodeError> {
    let mut r = KeyReader::new(k);
    if r.u8("namespace")? != NS_CATALOG {
        return Err(bad("not a catalog checkpoint"));
    }
    let seq = r.desc_u64("sequence number")?;
    let number = !r.u32("checkpoint number")?;
    let part = r.u32("part")?;
    r.finish()?;
    Ok((seq, number, part))
}

/// An index's id: the sequence number of the event that built it (the
/// table's creation, or the schema change that created or rebuilt it) and
/// its place among the indexes that event built, so that an index dropped
/// and created again starts with no entries.
pub type IndexId = (u64, u32);

/// The entries of index `ix` of table `table` begin with this.
pub fn index_prefix(table: u32, ix: IndexId) -> Vec<u8> {
    let mut k = Vec::with_capacity(20);
    k.push(NS_INDEX);
    put_u32(&mut k, table);
    put_u64(&mut k, ix.0);
    put_u32(&mut k, ix.1);
    k
}

const IX_BOOL: u8 = 0x01;
const IX_NUM: u8 = 0x02;
const IX_STR: u8 = 0x03;

/// Bytes of a string value an index keys (longer strings are keyed by
/// their first bytes: truncation keeps the order, so a lookup of the
/// literal truncated the same way finds a superset, which the caller
/// re-checks).
pub const MAX_INDEXED_STR: usize = 512;

/// A value as index entries key it: a type tag, then a boolean byte, a
/// number's order-preserving u64, or a string's first
/// [`MAX_INDEXED_STR`] bytes escaped as in keys, so that entries sort by
/// value as [`IKey`] does.
pub fn encode_index_value(v: &IKey) -> Vec<u8> {
    let mut k = Vec::new();
    match v {
        IKey::Bool(b) => k.extend_from_slice(&[IX_BOOL, u8::from(*b)]),
        IKey::Num(n) => {
            k.push(IX_NUM);
            put_u64(&mut k, *n);
        }
        IKey::Str(s) => {
            k.push(IX_STR);
            let b = s.as_bytes();
            put_escaped(&mut k, &b[..b.len().min(MAX_INDEXED_STR)]);
        }
    }
    k
}

/// The entries of index `ix` for value `v` begin with this: the index
/// prefix, then the value as [`encode_index_value`] writes it.
pub fn index_value_prefix(table: u32, ix: IndexId, v: &IKey) -> Vec<u8> {
    let mut k = index_prefix(table, ix);
    k.extend_from_slice(&encode_index_value(v));
    k
}

/// The bounds of the entries of index `ix` whose values are of `v`'s type:
/// (start, end exclusive).
pub fn index_type_range(table: u32, ix: IndexId, v: &IKey) -> (Vec<u8>, Vec<u8>) {
    let tag = match v {
        IKey::Bool(_) => IX_BOOL,
        IKey::Num(_) => IX_NUM,
        IKey::Str(_) => IX_STR,
    };
    let mut start = index_prefix(table, ix);
    let mut end = start.clone();
    start.push(tag);
    end.push(tag + 1);
    (start, end)
}

/// The key of the entry saying that from `seq` on, row `key` of table
/// `table` does ([`index_entry_value`] true) or does not (false) hold
/// value `v` in index `ix`: the newest entry at or before a point of a
/// (value, key) pair says whether the row held the value then.
pub fn index_key(table: u32, ix: IndexId, v: &IKey, key: &Pk, seq: u64) -> Vec<u8> {
    index_key_encoded(table, ix, &encode_index_value(v), key, seq)
}

/// [`index_key`] of a value already encoded by [`encode_index_value`].
pub fn index_key_encoded(table: u32, ix: IndexId, value: &[u8], key: &Pk, seq: u64) -> Vec<u8> {
    let mut k = index_prefix(table, ix);
    k.extend_from_slice(value);
    match key {
        Pk::Int(i) => put_int(&mut k, *i),
        Pk::Str(s) => put_str(&mut k, s.as_bytes()),
    }
    put_desc_u64(&mut k, seq);
    k
}

/// An index entry's key read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexKey {
    pub table: u32,
    /// The index (the event that built it).
    pub ix: IndexId,
    /// The value as [`encode_index_value`] wrote it (a string's bytes may
    /// end inside a character, where a long one was cut).
    pub value: Vec<u8>,
    pub key: Pk,
    pub seq: u64,
}

/// Read an index entry's key.
pub fn decode_index_key(k: &[u8]) -> Result<IndexKey, DecodeError> {
    let mut r = KeyReader::new(k);
    if r.u8("namespace")? != NS_INDEX {
        return Err(bad("not an index entry"));
    }
    let table = r.u32("table")?;
    let ix = (r.u64("index")?, r.u32("index number")?);
    let start = r.pos();
    match r.u8("value tag")? {
        IX_BOOL => {
            if r.u8("boolean")? > 1 {
                return Err(bad("a boolean index value is neither 0 nor 1"));
            }
        }
        IX_NUM => {
            if crate::table::index::f64_of_key(r.u64("number")?).is_none() {
                return Err(bad("an index number that no finite number has"));
            }
        }
        IX_STR => {
            if r.escaped()?.len() > MAX_INDEXED_STR {
                return Err(bad("an index string longer than the indexed length"));
            }
        }
        t => return Err(bad(&format!("unknown index value tag {t}"))),
    }
    let value = k[start..r.pos()].to_vec();
    let key = match r.part()? {
        Part::Int(i) => Pk::Int(i),
        Part::Str(s) => Pk::Str(std::str::from_utf8(&s).map_err(|_| bad("string key is not UTF-8"))?.into()),
    };
    let seq = r.desc_u64("sequence number")?;
    r.finish()?;
    Ok(IndexKey { table, ix, value, key, seq })
}

/// The sequence number of an index entry's key, and the length of its
/// (value, key) prefix, without decoding it.
pub fn split_index_key(k: &[u8]) -> Option<(usize, u64)> {
    if k.first() != Some(&NS_INDEX) || k.len() < 1 + 4 + 12 + 2 + 2 + 8 {
        return None;
    }
    let n = k.len() - 8;
    let mut b = [0u8; 8];
    b.copy_from_slice(&k[n..]);
    Some((n, !u64::from_be_bytes(b)))
}

/// An index entry's value: whether the row holds the value from then on.
pub fn index_entry_value(holds: bool) -> Vec<u8> {
    vec![u8::from(holds)]
}

/// Read an index entry's value.
pub fn decode_index_value(v: &[u8]) -> Result<bool, DecodeError> {
    match v {
        [0] => Ok(false),
        [1] => Ok(true),
        _ => Err(bad("an index entry's value is neither 0 nor 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_sort_by_index_value_then_key_newest_first_and_read_back() {
        let num = |f: f64| crate::table::index::ikey(&serde_json::Value::from(f)).unwrap();
        let s = |x: &str| IKey::Str(x.into());
        let keys = [
            index_key(1, (5, 0), &IKey::Bool(false), &Pk::Int(9), 3),
            index_key(1, (5, 0), &IKey::Bool(true), &Pk::Int(1), 3),
            index_key(1, (5, 0), &num(-2.5), &Pk::Int(1), 3),
            index_key(1, (5, 0), &num(0.0), &Pk::Int(1), 3),
            index_key(1, (5, 0), &num(7.0), &Pk::Int(1), 9),
            index_key(1, (5, 0), &num(7.0), &Pk::Int(1), 2),
            index_key(1, (5, 0), &num(7.0), &Pk::Str("a".into()), 2),
            index_key(1, (5, 0), &s(""), &Pk::Int(1), 3),
            index_key(1, (5, 0), &s("a"), &Pk::Int(1), 3),
            index_key(1, (5, 0), &s("a\0"), &Pk::Int(1), 3),
            index_key(1, (5, 0), &s("b"), &Pk::Int(1), 3),
            index_key(1, (5, 1), &IKey::Bool(false), &Pk::Int(1), 3),
            index_key(2, (0, 0), &IKey::Bool(false), &Pk::Int(1), 3),
        ];
        for w in keys.windows(2) {
            assert!(w[0] < w[1], "{:?} {:?}", w[0], w[1]);
        }
        assert!(table_prefix(u32::MAX) < keys[0]);
        let back = decode_index_key(&keys[9]).unwrap();
        assert_eq!(
            back,
            IndexKey { table: 1, ix: (5, 0), value: encode_index_value(&s("a\0")), key: Pk::Int(1), seq: 3 }
        );
        // A long string is keyed by its first bytes, cut anywhere (even
        // inside a character), and the order stays.
        let long = |x: &str| IKey::Str(x.repeat(400).into());
        let (a, b) = (encode_index_value(&long("aé")), encode_index_value(&long("aê")));
        assert_eq!(a, encode_index_value(&long("aéaé")));
        assert!(a.len() <= 1 + 2 * MAX_INDEXED_STR + 2 && a < b);
        let k = index_key(1, (5, 0), &long("aé"), &Pk::Int(1), 3);
        assert_eq!(decode_index_key(&k).unwrap().value, a);
        assert_eq!(shape(&keys[4]), (None, 9));
        assert_eq!(split_index_key(&keys[4]).map(|(_, s)| s), Some(9));
        let (lo, hi) = index_type_range(1, (5, 0), &num(1.0));
        assert!(keys[1] < lo && lo <= keys[2] && keys[6] < hi && hi <= keys[7]);
        assert!(keys[8].starts_with(&index_value_prefix(1, (5, 0), &s("a"))));
        assert!(decode_index_key(&version_key(1, &Pk::Int(1), 1)).is_err());
        assert!(decode_index_value(&index_entry_value(true)).unwrap());
        assert!(decode_index_value(&[2]).is_err());
        // A number no finite value has is refused.
        let mut k = index_prefix(1, (5, 0));
        k.push(0x02);
        put_u64(&mut k, f64::NAN.to_bits() | (1 << 63));
        put_int(&mut k, 1);
        put_desc_u64(&mut k, 1);
        assert!(decode_index_key(&k).is_err());
    }

    #[test]
    fn version_keys_sort_by_table_key_then_newest_first_and_read_back() {
        let keys = [
            version_key(1, &Pk::Int(-3), 9),
            version_key(1, &Pk::Int(-3), 2),
            version_key(1, &Pk::Int(7), 5),
            version_key(1, &Pk::Str("".into()), 5),
            version_key(1, &Pk::Str("a".into()), 8),
            version_key(1, &Pk::Str("a\0".into()), 1),
            version_key(2, &Pk::Int(0), 1),
        ];
        for w in keys.windows(2) {
            assert!(w[0] < w[1]);
        }
        let k = decode_key(&keys[5]).unwrap();
        assert_eq!(k, VersionKey { table: 1, key: Pk::Str("a\0".into()), seq: 1 });
        assert_eq!(split_key(&keys[1]), Some((keys[1].len() - 8, 2)));
        assert_eq!(shape(&keys[1]), (Some(keys[1].len() - 8), 2));
        assert!(keys[1].starts_with(&row_prefix(1, &Pk::Int(-3))));
        assert!(fold_key(9, 5) < table_prefix(0));
        assert_eq!(decode_fold_key(&fold_key(9, 5)).unwrap(), (9, 5));
        assert_eq!(shape(&fold_key(9, 5)), (None, 0));
        assert!(decode_key(&fold_key(9, 5)).is_err());
        let mut bad_utf8 = table_prefix(1);
        put_str(&mut bad_utf8, &[0xFF]);
        put_desc_u64(&mut bad_utf8, 1);
        assert!(decode_key(&bad_utf8).is_err());
    }

    #[test]
    fn values_round_trip_and_a_live_version_needs_its_document() {
        let v = encode_value(VersionOp::Patch, Some("{\"a\":1}"));
        assert_eq!(decode_value(&v).unwrap(), (VersionOp::Patch, Some("{\"a\":1}")));
        assert_eq!(decode_value(&encode_value(VersionOp::SoftDelete, None)).unwrap(), (VersionOp::SoftDelete, None));
        assert!(decode_value(&encode_value(VersionOp::Insert, None)).is_err());
        assert!(decode_value(&[9, b'{', b'}']).is_err());
        assert!(decode_value(&[]).is_err());
        assert!(decode_value(&[1, 0xFF]).is_err());
    }
}
