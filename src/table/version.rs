//! Row versions as entries of the version tree (`storage::tree`): every
//! insert, patch and soft delete of a row is one entry keyed by
//! (table, key, sequence number), so that the newest version of a row at
//! or before any point is one seek, and a row's history is one range.
//! `docs/FORMAT.md` §8.6 describes the bytes.

use super::Pk;
use crate::format::codec::DecodeError;
use crate::format::run::key::{KeyReader, Part, put_desc_u64, put_int, put_str, put_u32};

/// Namespace byte of a table's fold marker (see [`fold_key`]).
pub const NS_FOLD: u8 = 0x01;
/// Namespace byte of row versions.
pub const NS_ROW: u8 = 0x10;

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
/// carries its sequence number; a fold marker carries none.
pub fn shape(k: &[u8]) -> (Option<usize>, u64) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
