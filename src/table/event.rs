//! Events and commits, and their encoding in the event log.
//!
//! One log record (one frame) holds one commit: all its events, so a commit
//! is on disk entirely or not at all.
//!
//! ```text
//! commit := u8 version(1) | u64 first_seq | i64 time_micros | u32 n | event*n
//! event  := u8 op | u32 table | key | blob doc | blob patch
//! key    := u8 0 (none) | u8 1, blob utf8 | u8 2, i64
//! blob   := u32 len | bytes (JSON text; len 0 = absent)
//! ```

use super::{KeyRef, Pk};
use crate::format::codec::{DecodeError, Reader, Writer};
use crate::table::Doc;
use serde_json::Value;
use std::sync::Arc;

/// What an event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A new row (full document).
    Insert,
    /// A top-level merge into a live row (`null` removes a field).
    Patch,
    /// The row leaves current reads; its history stays.
    SoftDelete,
    /// A table is created.
    CreateTable,
    /// A table's history before a horizon is folded (`COMPACT`); the
    /// document is `{"horizon": seq}`.
    Compact,
    /// What compaction leaves of an event it folded: the table id and the
    /// sequence number's place, nothing else.
    Folded,
    /// A table's schema changes; the document is the
    /// [`crate::table::schema::Alter`].
    Alter,
}

impl Op {
    fn code(self) -> u8 {
        match self {
            Op::Insert => 1,
            Op::Patch => 2,
            Op::SoftDelete => 3,
            Op::CreateTable => 10,
            Op::Compact => 11,
            Op::Folded => 12,
            Op::Alter => 13,
        }
    }
    fn from_code(c: u8) -> Option<Op> {
        Some(match c {
            1 => Op::Insert,
            2 => Op::Patch,
            3 => Op::SoftDelete,
            10 => Op::CreateTable,
            11 => Op::Compact,
            12 => Op::Folded,
            13 => Op::Alter,
            _ => return None,
        })
    }
    /// The name shown in `SHOW DRIFT`.
    pub fn name(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Patch => "PATCH",
            Op::SoftDelete => "SOFT_DELETE",
            Op::CreateTable => "CREATE_TABLE",
            Op::Compact => "COMPACT",
            Op::Folded => "FOLDED",
            Op::Alter => "ALTER",
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What it does.
    pub op: Op,
    /// The table's id.
    pub table: u32,
    /// The row's key (none for table events).
    pub key: Option<Pk>,
    /// Insert/patch: the document after the event; soft delete: the document
    /// before it; create table: the table definition. A document being
    /// committed is held as its JSON text (what the log stores and the row
    /// map keeps); a decoded one as its parsed value.
    pub doc: Option<Arc<Doc>>,
    /// Patch: the patch as given.
    pub patch: Option<Value>,
}

/// One commit: events with consecutive sequence numbers and one commit time.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    /// Sequence number of the first event.
    pub first_seq: u64,
    /// Commit time, microseconds since the Unix epoch.
    pub time_micros: i64,
    /// The events, in order.
    pub events: Vec<Event>,
}

const MAX_DOC: usize = crate::format::frame::MAX_PAYLOAD;

/// Append a document's JSON text as a blob.
fn put_doc(w: &mut Writer, d: &Option<Arc<Doc>>) {
    match d {
        None => w.u32(0),
        Some(d) => w.blob(d.text().as_bytes()),
    }
}

/// Append a JSON blob, serialized in place.
fn put_json(w: &mut Writer, v: &Option<Value>) {
    let v = match v {
        None => {
            w.u32(0);
            return;
        }
        Some(v) => v,
    };
    let at = w.buf.len();
    w.u32(0);
    let start = w.buf.len();
    // Serializing a `Value` cannot fail (its map keys are strings).
    if serde_json::to_writer(&mut w.buf, v).is_err() {
        w.buf.truncate(start);
    }
    let len = w.buf.len() - start;
    w.buf[at..start].copy_from_slice(&(len as u32).to_le_bytes());
}

impl Commit {
    /// Encode as a log record.
    pub fn encode(&self) -> Vec<u8> {
        let docs: usize = self.events.iter().filter_map(|e| e.doc.as_ref()).map(|d| d.text().len()).sum();
        let mut w = Writer { buf: Vec::with_capacity(21 + self.events.len() * 32 + docs) };
        w.u8(1);
        w.u64(self.first_seq);
        w.bytes(&self.time_micros.to_le_bytes());
        w.u32(self.events.len() as u32);
        for e in &self.events {
            w.u8(e.op.code());
            w.u32(e.table);
            put_key(&mut w, &e.key);
            put_doc(&mut w, &e.doc);
            put_json(&mut w, &e.patch);
        }
        w.buf
    }

    /// Decode a log record.
    pub fn decode(buf: &[u8]) -> Result<Commit, DecodeError> {
        Self::decode_inner(buf, true)
    }

    /// Decode a log record without parsing documents (`doc` and `patch` are
    /// `None`): enough to index history.
    pub fn decode_headers(buf: &[u8]) -> Result<Commit, DecodeError> {
        Self::decode_inner(buf, false)
    }

    /// Decode only event `idx` of a log record (documents of the others are
    /// skipped, not parsed). Returns (first sequence number, event count, event).
    pub fn decode_one(buf: &[u8], idx: usize) -> Result<(u64, usize, Event), DecodeError> {
        Self::decode_inner_sel(buf, &|i| i == idx).and_then(|c| {
            let n = c.events.len();
            let first = c.first_seq;
            c.events
                .into_iter()
                .nth(idx)
                .map(|e| (first, n, e))
                .ok_or_else(|| DecodeError { offset: 0, reason: format!("no event {idx} in commit") })
        })
    }

    fn decode_inner(buf: &[u8], docs: bool) -> Result<Commit, DecodeError> {
        Self::decode_inner_sel(buf, &|_| docs)
    }

    fn decode_inner_sel(buf: &[u8], docs_for: &dyn Fn(usize) -> bool) -> Result<Commit, DecodeError> {
        let raw = RawCommit::decode(buf)?;
        let mut events = Vec::with_capacity(raw.events.len());
        for (i, e) in raw.events.into_iter().enumerate() {
            let (doc, patch) = if docs_for(i) || matches!(e.op, Op::CreateTable | Op::Compact | Op::Alter) {
                (
                    parse_json(e.doc, e.doc_at, "document")?.map(|v| Arc::new(Doc::from_value(v))),
                    parse_json(e.patch, e.patch_at, "patch")?,
                )
            } else {
                (None, None)
            };
            events.push(Event { op: e.op, table: e.table, key: e.key.map(KeyRef::to_pk), doc, patch });
        }
        Ok(Commit { first_seq: raw.first_seq, time_micros: raw.time_micros, events })
    }
}

/// A commit record split into its events, documents left as JSON text.
#[derive(Debug)]
pub struct RawCommit<'a> {
    /// Sequence number of the first event.
    pub first_seq: u64,
    /// Commit time, microseconds since the Unix epoch.
    pub time_micros: i64,
    /// The events.
    pub events: Vec<RawEvent<'a>>,
}

/// An event of a [`RawCommit`].
#[derive(Debug)]
pub struct RawEvent<'a> {
    /// What it does.
    pub op: Op,
    /// The table id.
    pub table: u32,
    /// The row's key.
    pub key: Option<KeyRef<'a>>,
    /// The document's JSON text (UTF-8 checked, not parsed), if any.
    pub doc: Option<&'a str>,
    /// Where the document's blob starts in the record.
    pub doc_at: usize,
    /// The patch's JSON text, if any.
    pub patch: Option<&'a str>,
    /// Where the patch's blob starts in the record.
    pub patch_at: usize,
}

impl<'a> RawCommit<'a> {
    /// A commit record's first sequence number and number of events, read
    /// from its head without decoding the events (the record is
    /// authenticated; a full decode checks the rest).
    pub fn peek(buf: &[u8]) -> Result<(u64, u64), DecodeError> {
        let mut r = Reader::new(buf);
        let v = r.u8("commit version")?;
        if v != 1 {
            return Err(DecodeError { offset: 0, reason: format!("unknown commit version {v}") });
        }
        let first_seq = r.u64("first sequence")?;
        let _time: [u8; 8] = r.array("commit time")?;
        let n = r.count(1 << 24, 14, "events")? as u64;
        if n == 0 || first_seq.checked_add(n).is_none() {
            return Err(DecodeError { offset: 1, reason: "a commit of no events, or a sequence overflow".into() });
        }
        Ok((first_seq, n))
    }

    /// Split a commit record. Documents are checked to be UTF-8, not to be JSON.
    pub fn decode(buf: &'a [u8]) -> Result<RawCommit<'a>, DecodeError> {
        let mut r = Reader::new(buf);
        let v = r.u8("commit version")?;
        if v != 1 {
            return Err(DecodeError { offset: 0, reason: format!("unknown commit version {v}") });
        }
        let first_seq = r.u64("first sequence")?;
        let time_micros = i64::from_le_bytes(r.array("commit time")?);
        let n = r.count(1 << 24, 14, "events")?;
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            let at = r.pos();
            let op = Op::from_code(r.u8("op")?)
                .ok_or_else(|| DecodeError { offset: at, reason: "unknown event op".into() })?;
            let table = r.u32("table")?;
            let key = get_key_ref(&mut r)?;
            let doc_at = r.pos();
            let doc = text_blob(&mut r, "document")?;
            let patch_at = r.pos();
            let patch = text_blob(&mut r, "patch")?;
            events.push(RawEvent { op, table, key, doc, doc_at, patch, patch_at });
        }
        r.finish("commit")?;
        if first_seq.checked_add(n as u64).is_none() {
            return Err(DecodeError { offset: 1, reason: "sequence overflow".into() });
        }
        Ok(RawCommit { first_seq, time_micros, events })
    }
}

fn text_blob<'a>(r: &mut Reader<'a>, what: &str) -> Result<Option<&'a str>, DecodeError> {
    let at = r.pos();
    let b = r.blob(MAX_DOC, what)?;
    if b.is_empty() {
        return Ok(None);
    }
    std::str::from_utf8(b).map(Some).map_err(|_| DecodeError { offset: at, reason: format!("{what}: not UTF-8") })
}

fn parse_json(t: Option<&str>, at: usize, what: &str) -> Result<Option<Value>, DecodeError> {
    match t {
        None => Ok(None),
        Some(t) => {
            serde_json::from_str(t).map(Some).map_err(|e| DecodeError { offset: at, reason: format!("{what}: {e}") })
        }
    }
}

pub(crate) fn put_key(w: &mut Writer, key: &Option<Pk>) {
    match key {
        None => w.u8(0),
        Some(Pk::Str(s)) => {
            w.u8(1);
            w.blob(s.as_bytes());
        }
        Some(Pk::Int(i)) => {
            w.u8(2);
            w.bytes(&i.to_le_bytes());
        }
    }
}

/// Decode an optional key.
pub(crate) fn get_key(r: &mut Reader<'_>) -> Result<Option<Pk>, DecodeError> {
    Ok(get_key_ref(r)?.map(KeyRef::to_pk))
}

/// Decode an optional key, borrowing its text.
pub(crate) fn get_key_ref<'a>(r: &mut Reader<'a>) -> Result<Option<KeyRef<'a>>, DecodeError> {
    let kat = r.pos();
    Ok(match r.u8("key tag")? {
        0 => None,
        1 => Some(KeyRef::Str(
            std::str::from_utf8(r.blob(MAX_DOC, "key")?)
                .map_err(|_| DecodeError { offset: kat, reason: "key is not UTF-8".into() })?,
        )),
        2 => Some(KeyRef::Int(i64::from_le_bytes(r.array("key")?))),
        t => return Err(DecodeError { offset: kat, reason: format!("unknown key tag {t}") }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z0-9 ]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        (
            prop_oneof![
                Just(Op::Insert),
                Just(Op::Patch),
                Just(Op::SoftDelete),
                Just(Op::CreateTable),
                Just(Op::Compact),
                Just(Op::Folded),
                Just(Op::Alter)
            ],
            any::<u32>(),
            prop_oneof![
                Just(None),
                any::<i64>().prop_map(|i| Some(Pk::Int(i))),
                "[a-z]{0,6}".prop_map(|s| Some(Pk::Str(s.into())))
            ],
            proptest::option::of(arb_json()),
            proptest::option::of(arb_json()),
        )
            .prop_map(|(op, table, key, doc, patch)| Event {
                op,
                table,
                key,
                doc: doc.map(|v| Arc::new(Doc::from_value(v))),
                patch,
            })
    }

    proptest! {
        #[test]
        fn commit_round_trip(first_seq in 0u64..u64::MAX / 2, t in any::<i64>(), events in proptest::collection::vec(arb_event(), 0..6)) {
            let c = Commit { first_seq, time_micros: t, events };
            let b = c.encode();
            let d = Commit::decode(&b).unwrap();
            prop_assert_eq!(&d, &c);
            prop_assert_eq!(&d.encode(), &b);
            for (i, e) in c.events.iter().enumerate() {
                let (f, n, one) = Commit::decode_one(&b, i).unwrap();
                prop_assert_eq!((f, n, &one), (c.first_seq, c.events.len(), e));
            }
            // The raw decode finds each document's text.
            let raw = RawCommit::decode(&b).unwrap();
            for (e, r) in c.events.iter().zip(&raw.events) {
                prop_assert_eq!(e.doc.as_ref().map(|d| d.text()), r.doc);
            }
            let h = Commit::decode_headers(&c.encode()).unwrap();
            prop_assert_eq!(h.events.len(), c.events.len());
            for (a, b) in h.events.iter().zip(&c.events) {
                prop_assert_eq!((a.op, a.table, &a.key), (b.op, b.table, &b.key));
            }
        }

        #[test]
        fn decoder_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Commit::decode(&b);
        }
    }
}
