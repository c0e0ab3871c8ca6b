//! Table snapshots: every live row of one table at one sequence number, in
//! a write-once encrypted file (kind `snap`), so reads of the past and
//! reopening start from the nearest snapshot instead of the log's start.
//!
//! ```text
//! file metadata (in the manifest): u8 version(1) | u32 table | u64 seq | u64 rows
//!   or, with the table's indexed fields: u8 version(2) | u32 table | u64 seq
//!   | u64 rows | u32 n (≥ 1) | n × blob field name
//! record: u32 n | n × (key | blob document)        (rows in key order)
//! ```

use super::Pk;
use super::event::{get_json_pub, get_key, put_key};
use crate::format::codec::{DecodeError, Reader, Writer};
use serde_json::Value;

/// Snapshot files of table `t` live in stream `SNAPSHOT_STREAM_BASE + t`.
pub const SNAPSHOT_STREAM_BASE: u32 = 0x4000_0000;
/// Target size of one snapshot record.
pub const RECORD_TARGET: usize = 256 * 1024;

/// Most bytes the field names a snapshot's metadata lists may take, each
/// with its u32 length (beyond, none are listed: the list only lets opening
/// index the rows early).
pub const MAX_META_FIELD_BYTES: usize = 4096;

/// Whether `fields` fit in a snapshot's metadata.
pub fn fields_fit(fields: &[String]) -> bool {
    fields.iter().map(|f| f.len() + 4).sum::<usize>() <= MAX_META_FIELD_BYTES
}

/// What the manifest says of a snapshot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapMeta {
    /// Table id.
    pub table: u32,
    /// The sequence number it is the state at.
    pub seq: u64,
    /// Rows it holds.
    pub rows: u64,
    /// The table's indexed fields at `seq` (empty: not listed).
    pub indexes: Vec<String>,
}

impl SnapMeta {
    /// Encode as file metadata (version 1 when no field is listed).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(if self.indexes.is_empty() { 1 } else { 2 });
        w.u32(self.table);
        w.u64(self.seq);
        w.u64(self.rows);
        if !self.indexes.is_empty() {
            w.u32(self.indexes.len() as u32);
            for f in &self.indexes {
                w.blob(f.as_bytes());
            }
        }
        w.buf
    }

    /// Decode file metadata.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let v = r.u8("snapshot version")?;
        if v != 1 && v != 2 {
            return Err(DecodeError { offset: 0, reason: format!("unknown snapshot version {v}") });
        }
        let mut m = SnapMeta { table: r.u32("table")?, seq: r.u64("seq")?, rows: r.u64("rows")?, indexes: Vec::new() };
        if v == 2 {
            let at = r.pos();
            let n = r.count(MAX_META_FIELD_BYTES, 4, "indexed fields")?;
            if n == 0 {
                return Err(DecodeError { offset: at, reason: "version 2 lists no indexed field".into() });
            }
            for _ in 0..n {
                let fat = r.pos();
                let f = std::str::from_utf8(r.blob(MAX_META_FIELD_BYTES, "indexed field")?)
                    .map_err(|_| DecodeError { offset: fat, reason: "indexed field is not UTF-8".into() })?;
                m.indexes.push(f.to_owned());
            }
            if !fields_fit(&m.indexes) {
                return Err(DecodeError { offset: at, reason: "indexed fields exceed 4096 bytes".into() });
            }
        }
        r.finish("snapshot metadata")?;
        Ok(m)
    }
}

/// Encode one record of rows (documents already serialized as JSON).
pub fn encode_rows(rows: &[(&Pk, Vec<u8>)]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u32(rows.len() as u32);
    for (k, doc) in rows {
        put_key(&mut w, &Some((*k).clone()));
        w.blob(doc);
    }
    w.buf
}

/// Decode one record of rows.
pub fn decode_rows(b: &[u8]) -> Result<Vec<(Pk, Value)>, DecodeError> {
    let mut r = Reader::new(b);
    let n = r.count(1 << 24, 6, "rows")?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let at = r.pos();
        let k = get_key(&mut r)?.ok_or_else(|| DecodeError { offset: at, reason: "row without a key".into() })?;
        let v = get_json_pub(&mut r, "row")?
            .ok_or_else(|| DecodeError { offset: at, reason: "row without a document".into() })?;
        out.push((k, v));
    }
    r.finish("snapshot record")?;
    Ok(out)
}

/// Decode one record of rows, documents left as JSON text (UTF-8 checked).
pub fn decode_rows_raw(b: &[u8]) -> Result<Vec<(Pk, &str)>, DecodeError> {
    let mut r = Reader::new(b);
    let n = r.count(1 << 24, 6, "rows")?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let at = r.pos();
        let k = get_key(&mut r)?.ok_or_else(|| DecodeError { offset: at, reason: "row without a key".into() })?;
        let dat = r.pos();
        let d = r.blob(crate::format::frame::MAX_PAYLOAD, "row")?;
        if d.is_empty() {
            return Err(DecodeError { offset: at, reason: "row without a document".into() });
        }
        let d = std::str::from_utf8(d).map_err(|_| DecodeError { offset: dat, reason: "row: not UTF-8".into() })?;
        out.push((k, d));
    }
    r.finish("snapshot record")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips() {
        let m = SnapMeta { table: 3, seq: 99, rows: 2, indexes: vec![] };
        assert_eq!(m.encode().len(), 21);
        assert_eq!(SnapMeta::decode(&m.encode()).unwrap(), m);
        let m2 = SnapMeta { indexes: vec!["status".into(), "".into()], ..m };
        assert_eq!(m2.encode()[0], 2);
        assert_eq!(SnapMeta::decode(&m2.encode()).unwrap(), m2);
        // Version 2 with no field is not canonical; a name must be UTF-8.
        let mut empty = m2.encode()[..21].to_vec();
        empty[0] = 2;
        empty.extend_from_slice(&0u32.to_le_bytes());
        assert!(SnapMeta::decode(&empty).is_err());
        let mut bad = m2.encode();
        let at = bad.len() - 4 - 6 - 4; // the first name's first byte... of "status"
        bad[at + 4] = 0xff;
        assert!(SnapMeta::decode(&bad).is_err());
        let (a, b) = (Pk::Int(1), Pk::Str("x".into()));
        let (da, db) = (json!({"id": 1}), json!({"id": "x", "n": [1, 2]}));
        let rec = encode_rows(&[(&a, serde_json::to_vec(&da).unwrap()), (&b, serde_json::to_vec(&db).unwrap())]);
        assert_eq!(decode_rows(&rec).unwrap(), vec![(a, da), (b, db)]);
        assert!(decode_rows(&rec[..rec.len() - 1]).is_err());
        let raw = decode_rows_raw(&rec).unwrap();
        assert_eq!(raw.len(), 2);
        assert_eq!(serde_json::from_str::<Value>(raw[1].1).unwrap(), json!({"id": "x", "n": [1, 2]}));
        assert!(decode_rows_raw(&rec[..rec.len() - 1]).is_err());
    }
}
