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

use crate::format::codec::{DecodeError, Reader, Writer};
use crate::table::Doc;
use serde_json::Value;
use std::sync::Arc;

/// A primary key: an integer or a string, compared exactly (`1` is not `"1"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pk {
    /// An integer key.
    Int(i64),
    /// A string key.
    Str(KeyStr),
}

impl Ord for Pk {
    /// Integers first, then strings (the variants' order). Inlined into the
    /// row map's and the indexes' searches, which compare some fifty keys
    /// for every insert.
    #[inline(always)]
    fn cmp(&self, other: &Pk) -> std::cmp::Ordering {
        match (self, other) {
            (Pk::Str(a), Pk::Str(b)) => a.cmp(b),
            (Pk::Int(a), Pk::Int(b)) => a.cmp(b),
            (Pk::Int(_), Pk::Str(_)) => std::cmp::Ordering::Less,
            (Pk::Str(_), Pk::Int(_)) => std::cmp::Ordering::Greater,
        }
    }
}

impl std::hash::Hash for Pk {
    /// One write per key: the integer, or a short string's length and
    /// zero-padded bytes as one buffer, or a long string's bytes (a `Pk` is
    /// never looked up as another type, so its hash only has to agree with
    /// its own equality, and a string's representation is fixed by its
    /// length; no check of the inline bytes' UTF-8 on every hash).
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        match self {
            Pk::Int(i) => h.write_i64(*i),
            Pk::Str(s) => s.hash_inline(h),
        }
    }
}

impl PartialOrd for Pk {
    #[inline(always)]
    fn partial_cmp(&self, other: &Pk) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The text of a string key: kept inline up to 22 bytes and shared
/// (not copied) beyond, so that a key is cloned without allocating, and
/// the row map and the indexes compare keys without following a pointer.
/// Build it with `.into()` from a `&str` or a `String`; it reads as a `&str`.
#[derive(Clone)]
pub struct KeyStr(KeyRepr);

#[derive(Clone)]
enum KeyRepr {
    /// The text, zero-padded (so that two inline keys compare as three words).
    Inline {
        len: u8,
        buf: [u8; KEY_INLINE],
    },
    Heap(Arc<str>),
}

/// The longest key kept inline.
pub(crate) const KEY_INLINE: usize = 22;

impl KeyStr {
    fn new(s: &str) -> KeyStr {
        match u8::try_from(s.len()) {
            Ok(len) if s.len() <= KEY_INLINE => {
                let mut buf = [0u8; KEY_INLINE];
                buf[..s.len()].copy_from_slice(s.as_bytes());
                KeyStr(KeyRepr::Inline { len, buf })
            }
            _ => KeyStr(KeyRepr::Heap(Arc::from(s))),
        }
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Always valid: the bytes were copied whole from a `&str`.
            KeyRepr::Inline { .. } => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            KeyRepr::Heap(s) => s,
        }
    }

    /// The key's text, as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            KeyRepr::Inline { len, buf } => buf.get(..usize::from(*len)).unwrap_or_default(),
            KeyRepr::Heap(s) => s.as_bytes(),
        }
    }
}

impl KeyStr {
    /// Hash the key in one write (see `Pk`'s `Hash`): equal keys have the
    /// same representation, since it depends on the length alone.
    #[inline]
    fn hash_inline<H: std::hash::Hasher>(&self, h: &mut H) {
        match &self.0 {
            KeyRepr::Inline { len, buf } => {
                let mut b = [0u8; KEY_INLINE + 1];
                b[0] = *len;
                b[1..].copy_from_slice(buf);
                h.write(&b)
            }
            KeyRepr::Heap(s) => h.write(s.as_bytes()),
        }
    }
}

impl Default for KeyStr {
    fn default() -> KeyStr {
        KeyStr(KeyRepr::Inline { len: 0, buf: [0; KEY_INLINE] })
    }
}

impl PartialEq for KeyStr {
    fn eq(&self, other: &KeyStr) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for KeyStr {}

impl std::hash::Hash for KeyStr {
    /// As its `str` hashes (it borrows as one), whatever the hasher does
    /// with a `str` (a hasher may treat one apart from its bytes).
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

impl Ord for KeyStr {
    /// Byte order, as `str` compares. Two inline keys compare as three
    /// big-endian words of their zero-padded bytes, then by length (equal
    /// words make the shorter key a prefix of the longer); otherwise eight
    /// bytes at a time. A call to `memcmp` per comparison, and then the
    /// decoding of a general small-string type, were each a tenth of a bulk
    /// ingest's time in the row map's and indexes' searches.
    #[inline(always)]
    fn cmp(&self, other: &KeyStr) -> std::cmp::Ordering {
        match (&self.0, &other.0) {
            (KeyRepr::Inline { len: la, buf: a }, KeyRepr::Inline { len: lb, buf: b }) => {
                let word = |x: &[u8; KEY_INLINE], at: usize| -> u64 {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(&x[at..at + 8]);
                    u64::from_be_bytes(w)
                };
                // Words at 0, 8 and 14 (overlapping bytes found equal).
                word(a, 0)
                    .cmp(&word(b, 0))
                    .then_with(|| word(a, 8).cmp(&word(b, 8)))
                    .then_with(|| word(a, KEY_INLINE - 8).cmp(&word(b, KEY_INLINE - 8)))
                    .then(la.cmp(lb))
            }
            _ => bytes_cmp(self.as_bytes(), other.as_bytes()),
        }
    }
}

impl PartialOrd for KeyStr {
    fn partial_cmp(&self, other: &KeyStr) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Lexicographic byte order (what `<[u8]>::cmp` gives), eight bytes at a
/// time: the bytes after the last whole word are compared as the word that
/// ends where the shorter key ends, which overlaps bytes already found equal.
#[inline(never)]
fn bytes_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let n = a.len().min(b.len());
    if n < 8 {
        return a[..n].cmp(&b[..n]).then(a.len().cmp(&b.len()));
    }
    let word = |s: &[u8], at: usize| -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_be_bytes(w)
    };
    let mut at = 0;
    loop {
        let (x, y) = (word(a, at), word(b, at));
        if x != y {
            return x.cmp(&y);
        }
        if at + 8 == n {
            return a.len().cmp(&b.len());
        }
        at = (at + 8).min(n - 8);
    }
}

impl std::ops::Deref for KeyStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for KeyStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for KeyStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for KeyStr {
    fn from(s: &str) -> KeyStr {
        KeyStr::new(s)
    }
}

impl From<String> for KeyStr {
    fn from(s: String) -> KeyStr {
        KeyStr::new(&s)
    }
}

impl From<&String> for KeyStr {
    fn from(s: &String) -> KeyStr {
        KeyStr::new(s)
    }
}

impl From<KeyStr> for String {
    fn from(k: KeyStr) -> String {
        k.as_str().to_owned()
    }
}

impl PartialEq<str> for KeyStr {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for KeyStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl std::fmt::Debug for KeyStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for KeyStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.as_str(), f)
    }
}

impl Pk {
    /// The key of a JSON value: an integer or a string; anything else is not a key.
    pub fn from_json(v: &Value) -> Option<Pk> {
        match v {
            Value::String(s) => Some(Pk::Str(s.as_str().into())),
            Value::Number(n) => n.as_i64().map(Pk::Int),
            _ => None,
        }
    }

    /// As JSON.
    pub fn to_json(&self) -> Value {
        match self {
            Pk::Int(i) => Value::from(*i),
            Pk::Str(s) => Value::from(s.as_str()),
        }
    }
}

/// A primary key as a record holds it (the text not copied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRef<'a> {
    /// An integer key.
    Int(i64),
    /// A string key.
    Str(&'a str),
}

impl KeyRef<'_> {
    /// The key, owned.
    pub fn to_pk(self) -> Pk {
        match self {
            KeyRef::Int(i) => Pk::Int(i),
            KeyRef::Str(s) => Pk::Str(s.into()),
        }
    }
}

impl Pk {
    /// The key, borrowed.
    pub fn as_key_ref(&self) -> KeyRef<'_> {
        match self {
            Pk::Int(i) => KeyRef::Int(*i),
            Pk::Str(s) => KeyRef::Str(s),
        }
    }
}

impl std::fmt::Display for Pk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pk::Int(i) => write!(f, "{i}"),
            Pk::Str(s) => write!(f, "{s:?}"),
        }
    }
}

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

/// A table's definition, as recorded by its `CreateTable` event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableDef {
    /// Table id (never reused).
    #[serde(skip)]
    pub id: u32,
    /// Name.
    pub name: String,
    /// Primary key field.
    pub pk: String,
    /// Indexed fields.
    pub indexes: Vec<String>,
    /// Declared columns (`ALTER TABLE ... ADD COLUMN`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<crate::table::schema::Column>,
    /// Sequence number of its creation.
    #[serde(skip)]
    pub created_seq: u64,
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

    proptest! {
        #[test]
        fn string_keys_order_as_their_bytes(a in "[a-c\\x00\\u{e9}]{0,20}", b in "[a-c\\x00\\u{e9}]{0,20}") {
            let (ka, kb) = (KeyStr::from(a.as_str()), KeyStr::from(b.as_str()));
            prop_assert_eq!(ka.cmp(&kb), a.as_bytes().cmp(b.as_bytes()));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_eq!(ka == kb, a == b);
        }
    }

    /// Keys of both kinds, inline and not, often equal to one another.
    fn any_pk() -> impl Strategy<Value = Pk> {
        prop_oneof![
            any::<i64>().prop_map(Pk::Int),
            (-2i64..2).prop_map(Pk::Int),
            "[a-c\\x00]{0,30}".prop_map(|s| Pk::Str(s.as_str().into())),
            "[ab]{0,2}".prop_map(|s| Pk::Str(s.as_str().into())),
            "a{20,26}".prop_map(|s| Pk::Str(s.as_str().into())),
        ]
    }

    proptest! {
        #[test]
        fn keys_order_integers_first_then_strings_by_their_bytes(
            a in any_pk(),
            b in any_pk(),
        ) {
            let expected = match (&a, &b) {
                (Pk::Int(x), Pk::Int(y)) => x.cmp(y),
                (Pk::Int(_), Pk::Str(_)) => std::cmp::Ordering::Less,
                (Pk::Str(_), Pk::Int(_)) => std::cmp::Ordering::Greater,
                (Pk::Str(x), Pk::Str(y)) => x.as_bytes().cmp(y.as_bytes()),
            };
            prop_assert_eq!(a.cmp(&b), expected);
            prop_assert_eq!(a.partial_cmp(&b), Some(expected));
            prop_assert_eq!(a == b, expected.is_eq());
            prop_assert_eq!(a.cmp(&a.clone()), std::cmp::Ordering::Equal);
            // Equal keys hash alike (the row maps and overlays hash them).
            let h = foldhash::quality::RandomState::default();
            if a == b {
                prop_assert_eq!(std::hash::BuildHasher::hash_one(&h, &a), std::hash::BuildHasher::hash_one(&h, &b));
            }
        }
    }

    #[test]
    fn string_keys_differing_in_any_byte_order_as_their_bytes() {
        // Every length around the 8-byte steps, a difference at every place.
        for n in 0..30usize {
            let base: Vec<u8> = (0..n).map(|i| b'a' + (i % 20) as u8).collect();
            for at in 0..n {
                let mut hi = base.clone();
                hi[at] += 1;
                let (x, y) = (String::from_utf8(base.clone()).unwrap(), String::from_utf8(hi).unwrap());
                assert_eq!(
                    KeyStr::from(x.as_str()).cmp(&KeyStr::from(y.as_str())),
                    std::cmp::Ordering::Less,
                    "{x} {y}"
                );
                assert_eq!(KeyStr::from(y.as_str()).cmp(&KeyStr::from(x.as_str())), std::cmp::Ordering::Greater);
            }
            let x = String::from_utf8(base.clone()).unwrap();
            let longer = format!("{x}a");
            assert_eq!(KeyStr::from(x.as_str()).cmp(&KeyStr::from(longer.as_str())), std::cmp::Ordering::Less);
            assert_eq!(KeyStr::from(x.as_str()).cmp(&KeyStr::from(x.as_str())), std::cmp::Ordering::Equal);
        }
    }

    #[test]
    fn a_key_takes_three_words_and_reads_back_at_every_length() {
        // The row map and the indexes hold millions of keys.
        assert_eq!(std::mem::size_of::<Pk>(), 24);
        for n in 0..=40usize {
            let s: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            let k = KeyStr::from(s.as_str());
            assert_eq!(k.as_str(), s);
            assert_eq!(k.as_bytes(), s.as_bytes());
            assert_eq!(k, KeyStr::from(s.clone()));
            assert_eq!(String::from(k.clone()), s);
            let mut h1 = std::collections::hash_map::DefaultHasher::new();
            let mut h2 = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(&k, &mut h1);
            std::hash::Hash::hash(s.as_str(), &mut h2);
            assert_eq!(std::hash::Hasher::finish(&h1), std::hash::Hasher::finish(&h2), "hashes as its str");
            // The maps' own hasher too: a key found by its `str`.
            let fast = foldhash::quality::RandomState::default();
            assert_eq!(
                std::hash::BuildHasher::hash_one(&fast, &k),
                std::hash::BuildHasher::hash_one(&fast, s.as_str())
            );
            let mut set: crate::table::FastSet<KeyStr> = Default::default();
            set.insert(k.clone());
            assert!(set.contains(s.as_str()));
        }
    }

    #[test]
    fn keys_compare_exactly() {
        assert_eq!(Pk::from_json(&serde_json::json!(1)), Some(Pk::Int(1)));
        assert_ne!(Pk::from_json(&serde_json::json!(1)), Pk::from_json(&serde_json::json!("1")));
        assert_eq!(Pk::from_json(&serde_json::json!(1.5)), None);
        assert_eq!(Pk::from_json(&serde_json::json!(null)), None);
    }
}
