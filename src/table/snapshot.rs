//! Table snapshots: every live row of one table at one sequence number, in
//! a write-once encrypted file (kind `snap`), so reads of the past and
//! reopening start from the nearest snapshot instead of the log's start.
//!
//! ```text
//! file metadata (in the manifest): u8 version(1) | u32 table | u64 seq | u64 rows
//!   or, with the table's indexed fields: u8 version(2) | u32 table | u64 seq
//!   | u64 rows | u32 n (≥ 1) | n × blob field name
//! record: u32 n | n × (key | blob document)        (rows in key order)
//!   or, with each row's indexed values: u32 0xFFFF_FFFF | u32 n | u8 m (≥ 1)
//!   | n × (key | blob document | m × value)
//! value: u8 0 (absent, or not indexable) | u8 1 (false) | u8 2 (true)
//!   | u8 3, u64 number (an index's order-preserving key) | u8 4, blob UTF-8 string
//! ```

use super::Pk;
use super::event::{get_key, put_key};
use super::index::IKey;
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

/// The first word of a record whose rows carry their indexed values (a
/// row count never reaches it).
const PICKED: u32 = u32::MAX;

/// Most indexed values a row of a record may carry.
pub const MAX_PICKED_FIELDS: usize = 255;

/// Encode one record of rows (documents already serialized as JSON). With
/// `picked` (`m` values per row, `rows.len() × m` in row order, `m` from 1
/// to [`MAX_PICKED_FIELDS`]), each row also carries the values of the
/// fields the snapshot's metadata lists, so that opening indexes the rows
/// without parsing them.
pub fn encode_rows<K: std::borrow::Borrow<Pk>>(
    rows: &[(K, Vec<u8>)],
    picked: Option<(usize, &[Option<IKey>])>,
) -> Vec<u8> {
    let mut w = Writer::default();
    let per_row = match picked {
        Some((m, values)) if (1..=MAX_PICKED_FIELDS).contains(&m) && values.len() == rows.len() * m => {
            w.u32(PICKED);
            w.u32(rows.len() as u32);
            w.u8(m as u8);
            Some((m, values))
        }
        _ => {
            w.u32(rows.len() as u32);
            None
        }
    };
    for (i, (k, doc)) in rows.iter().enumerate() {
        put_key(&mut w, &Some(k.borrow().clone()));
        w.blob(doc);
        if let Some((m, values)) = per_row {
            for v in values.iter().skip(i * m).take(m) {
                put_ikey(&mut w, v.as_ref());
            }
        }
    }
    w.buf
}

fn put_ikey(w: &mut Writer, v: Option<&IKey>) {
    match v {
        None => w.u8(0),
        Some(IKey::Bool(b)) => w.u8(1 + u8::from(*b)),
        Some(IKey::Num(n)) => {
            w.u8(3);
            w.u64(*n);
        }
        Some(IKey::Str(s)) => {
            w.u8(4);
            w.blob(s.as_bytes());
        }
    }
}

/// Strings of the indexed values decoded last (most rows share a few).
const RECENT_STRINGS: usize = 8;

fn get_ikey(r: &mut Reader<'_>, recent: &mut Vec<std::sync::Arc<str>>) -> Result<Option<IKey>, DecodeError> {
    let at = r.pos();
    Ok(match r.u8("indexed value")? {
        0 => None,
        1 => Some(IKey::Bool(false)),
        2 => Some(IKey::Bool(true)),
        3 => {
            let k = r.u64("indexed number")?;
            if crate::table::index::f64_of_key(k).is_none() {
                return Err(DecodeError {
                    offset: at,
                    reason: format!("indexed number key {k:#x} is no finite number's"),
                });
            }
            Some(IKey::Num(k))
        }
        4 => {
            let sat = r.pos();
            let b = r.blob(crate::format::frame::MAX_PAYLOAD, "indexed string")?;
            let s = std::str::from_utf8(b)
                .map_err(|_| DecodeError { offset: sat, reason: "indexed string: not UTF-8".into() })?;
            match recent.iter().find(|x| x.as_bytes() == b) {
                Some(x) => Some(IKey::Str(x.clone())),
                None => {
                    let x: std::sync::Arc<str> = s.into();
                    if recent.len() == RECENT_STRINGS {
                        recent.remove(0);
                    }
                    recent.push(x.clone());
                    Some(IKey::Str(x))
                }
            }
        }
        t => return Err(DecodeError { offset: at, reason: format!("unknown indexed value tag {t}") }),
    })
}

/// One record of rows, documents left as JSON text (UTF-8 checked).
#[derive(Debug, Default)]
pub struct RawRows<'a> {
    /// The rows, in the record's order.
    pub rows: Vec<(Pk, &'a str)>,
    /// Indexed values per row (0: the record carries none).
    pub fields: usize,
    /// `rows.len() × fields` indexed values, in row order.
    pub picked: Vec<Option<IKey>>,
}

/// Decode one record of rows, documents left as JSON text (UTF-8 checked).
pub fn decode_rows_raw(b: &[u8]) -> Result<RawRows<'_>, DecodeError> {
    let mut r = Reader::new(b);
    let first = r.u32("rows")?;
    let (n, fields) = if first == PICKED {
        let n = r.count(1 << 24, 7, "rows")?;
        let at = r.pos();
        let m = usize::from(r.u8("indexed values per row")?);
        if m == 0 {
            return Err(DecodeError { offset: at, reason: "a record with indexed values lists none per row".into() });
        }
        // The smallest row (a 5-byte key, a 1-byte document with its
        // length, one byte per value) bounds the count before anything is
        // allocated for it.
        if n.saturating_mul(10 + m) > r.remaining() {
            return Err(DecodeError { offset: at, reason: format!("rows: count {n} exceeds the record") });
        }
        (n, m)
    } else {
        let n = usize::try_from(first).unwrap_or(usize::MAX);
        if n > 1 << 24 || n.saturating_mul(6) > r.remaining() {
            return Err(DecodeError { offset: 0, reason: format!("rows: count {n} exceeds the record") });
        }
        (n, 0)
    };
    let mut out = RawRows { rows: Vec::with_capacity(n), fields, picked: Vec::with_capacity(n * fields) };
    let mut recent = Vec::new();
    for _ in 0..n {
        let at = r.pos();
        let k = get_key(&mut r)?.ok_or_else(|| DecodeError { offset: at, reason: "row without a key".into() })?;
        let dat = r.pos();
        let d = r.blob(crate::format::frame::MAX_PAYLOAD, "row")?;
        if d.is_empty() {
            return Err(DecodeError { offset: at, reason: "row without a document".into() });
        }
        let d = std::str::from_utf8(d).map_err(|_| DecodeError { offset: dat, reason: "row: not UTF-8".into() })?;
        out.rows.push((k, d));
        for _ in 0..fields {
            out.picked.push(get_ikey(&mut r, &mut recent)?);
        }
    }
    r.finish("snapshot record")?;
    Ok(out)
}

/// Decode one record of rows, documents parsed (indexed values, if any, checked and dropped).
pub fn decode_rows(b: &[u8]) -> Result<Vec<(Pk, Value)>, DecodeError> {
    let raw = decode_rows_raw(b)?;
    raw.rows
        .into_iter()
        .map(|(k, t)| {
            let v = serde_json::from_str(t).map_err(|e| DecodeError {
                offset: 0,
                reason: format!("row {k}: the document is not valid JSON: {e}"),
            })?;
            Ok((k, v))
        })
        .collect()
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
        let rows = [(&a, serde_json::to_vec(&da).unwrap()), (&b, serde_json::to_vec(&db).unwrap())];
        let rec = encode_rows(&rows, None);
        assert_eq!(decode_rows(&rec).unwrap(), vec![(a.clone(), da.clone()), (b.clone(), db.clone())]);
        assert!(decode_rows(&rec[..rec.len() - 1]).is_err());
        let raw = decode_rows_raw(&rec).unwrap();
        assert_eq!((raw.rows.len(), raw.fields, raw.picked.len()), (2, 0, 0));
        assert_eq!(serde_json::from_str::<Value>(raw.rows[1].1).unwrap(), json!({"id": "x", "n": [1, 2]}));
        assert!(decode_rows_raw(&rec[..rec.len() - 1]).is_err());
    }

    #[test]
    fn rows_with_their_indexed_values_round_trip_and_every_damage_is_refused() {
        let (a, b) = (Pk::Int(1), Pk::Str("x".into()));
        let rows = [(&a, r#"{"id":1,"s":"é","n":2}"#.as_bytes().to_vec()), (&b, br#"{"id":"x","t":true}"#.to_vec())];
        let picked = vec![
            Some(IKey::Str("é".into())),
            crate::table::index::ikey(&json!(42)),
            None,
            None,
            Some(IKey::Bool(true)),
            Some(IKey::Bool(false)),
        ];
        let rec = encode_rows(&rows, Some((3, &picked)));
        let raw = decode_rows_raw(&rec).unwrap();
        assert_eq!(raw.fields, 3);
        assert_eq!(raw.picked, picked);
        assert_eq!(raw.rows, vec![(a.clone(), r#"{"id":1,"s":"é","n":2}"#), (b.clone(), r#"{"id":"x","t":true}"#)]);
        // The parsed decode skips the values.
        assert_eq!(decode_rows(&rec).unwrap()[1], (b.clone(), json!({"id": "x", "t": true})));
        // Values that do not match the rows are not written.
        assert_eq!(decode_rows_raw(&encode_rows(&rows, Some((3, &picked[..5])))).unwrap().fields, 0);
        assert_eq!(decode_rows_raw(&encode_rows(&rows, Some((0, &[])))).unwrap().fields, 0);
        // Every cut is refused, and so is an unknown tag or a string that is not UTF-8.
        for n in 0..rec.len() {
            assert!(decode_rows_raw(&rec[..n]).is_err(), "cut at {n}");
        }
        let mut bad = rec.clone();
        *bad.last_mut().unwrap() = 9; // the last value, `false`, is its tag alone

        assert!(decode_rows_raw(&bad).unwrap_err().reason.contains("tag 9"));
        let s_at = rec.windows(2).position(|w| w == "é".as_bytes()).unwrap();
        let s_at = rec[s_at + 1..].windows(2).position(|w| w == "é".as_bytes()).unwrap() + s_at + 1;
        let mut bad = rec.clone();
        bad[s_at] = 0xff;
        assert!(decode_rows_raw(&bad).unwrap_err().reason.contains("not UTF-8"));
        let nan = encode_rows(&rows[..1], Some((1, &[Some(IKey::Num(f64::NAN.to_bits() | (1 << 63)))])));
        assert!(decode_rows_raw(&nan).unwrap_err().reason.contains("no finite number"));
        let mut none = rec.clone();
        none[8] = 0; // m = 0
        assert!(decode_rows_raw(&none).unwrap_err().reason.contains("lists none per row"));
        // A count the record cannot hold is refused before anything is allocated for it.
        let mut many = rec.clone();
        many[8] = 255; // two rows of at least 265 bytes each
        assert!(decode_rows_raw(&many).unwrap_err().reason.contains("exceeds the record"));
    }
}
