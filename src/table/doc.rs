//! A stored document: its JSON text as the log holds it, parsed on first use.
//!
//! Opening a database keeps every current row as the text its commit or
//! snapshot record holds (checked once, while the secondary indexes are
//! built), instead of building a `serde_json::Value` tree per row: a row is
//! parsed the first time it is read, and the parsed form is kept.

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::borrow::Cow;
use std::sync::OnceLock;

/// A document: JSON text, a parsed value, or both (at least one is set).
pub struct Doc {
    text: OnceLock<Box<str>>,
    value: OnceLock<Value>,
    /// The sequence number its content is as of: the event that wrote it,
    /// or the snapshot it was read from. Schema changes after it apply when
    /// it is read (see [`crate::table::schema`]); `u64::MAX` marks a
    /// document already read through every change.
    seq: u64,
}

impl Doc {
    /// A document from a parsed value.
    pub fn from_value(v: Value) -> Doc {
        Doc { text: OnceLock::new(), value: OnceLock::from(v), seq: u64::MAX }
    }

    /// A document from JSON text, checked now.
    pub fn from_text(t: &str) -> Result<Doc, serde_json::Error> {
        check(t, &[])?;
        Ok(Doc::from_text_unchecked(t))
    }

    /// A document from JSON text the caller checks with [`check`] before
    /// anything reads it (opening a database checks every current row).
    pub(crate) fn from_text_unchecked(t: &str) -> Doc {
        Doc { text: OnceLock::from(Box::<str>::from(t)), value: OnceLock::new(), seq: u64::MAX }
    }

    /// A document from JSON text given away, checked by the caller (or
    /// serialized from a value within the nesting limit).
    pub(crate) fn from_string_unchecked(t: String) -> Doc {
        Doc { text: OnceLock::from(t.into_boxed_str()), value: OnceLock::new(), seq: u64::MAX }
    }

    /// The same document, as of sequence number `seq`.
    pub(crate) fn at(mut self, seq: u64) -> Doc {
        self.seq = seq;
        self
    }

    /// Mark the document as of sequence number `seq`.
    pub(crate) fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// Whether the parsed form is at hand (reading a field costs no parse).
    pub(crate) fn has_value(&self) -> bool {
        self.value.get().is_some()
    }

    /// The sequence number its content is as of (`u64::MAX`: current).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The parsed document.
    pub fn value(&self) -> &Value {
        self.value.get_or_init(|| match self.text.get() {
            Some(t) => parse_checked(t),
            None => Value::Null,
        })
    }

    /// The document as a new value: a copy of the parsed form, or parsed
    /// from the text without keeping the result (a point read of a row
    /// opened from disk leaves nothing behind in memory).
    pub fn to_value(&self) -> Value {
        match (self.value.get(), self.text.get()) {
            (Some(v), _) => v.clone(),
            (None, Some(t)) => parse_checked(t),
            (None, None) => Value::Null,
        }
    }

    /// Run `f` on the parsed document: the kept parse if there is one,
    /// otherwise a parse that is dropped afterwards.
    pub fn peek<R>(&self, f: impl FnOnce(&Value) -> R) -> R {
        match (self.value.get(), self.text.get()) {
            (Some(v), _) => f(v),
            (None, Some(t)) => f(&parse_checked(t)),
            (None, None) => f(&Value::Null),
        }
    }

    /// The document as compact JSON text.
    pub fn text(&self) -> &str {
        self.text.get_or_init(|| serde_json::to_string(self.value()).unwrap_or_default().into_boxed_str())
    }

    /// The top-level field `name`, read from the text without building the
    /// whole tree when the document has not been parsed yet.
    pub fn field(&self, name: &str) -> Option<Value> {
        match (self.value.get(), self.text.get()) {
            (Some(v), _) => v.get(name).cloned(),
            (None, Some(t)) => check(t, &[name]).ok().and_then(|mut f| f.pop().flatten()),
            (None, None) => None,
        }
    }
}

impl Doc {
    /// Several top-level fields (as [`Doc::field`] reads each), in one pass
    /// over the text when the document has not been parsed.
    pub fn fields(&self, names: &[&str]) -> Vec<Option<Value>> {
        match (self.value.get(), self.text.get()) {
            (Some(v), _) => names.iter().map(|n| v.get(*n).cloned()).collect(),
            (None, Some(t)) => check(t, names).unwrap_or_else(|_| vec![None; names.len()]),
            (None, None) => vec![None; names.len()],
        }
    }
}

impl std::ops::Deref for Doc {
    type Target = Value;
    fn deref(&self) -> &Value {
        self.value()
    }
}

impl std::fmt::Debug for Doc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.value(), f)
    }
}

impl PartialEq for Doc {
    fn eq(&self, other: &Doc) -> bool {
        self.value() == other.value()
    }
}

/// Parse text that [`check`] accepted (or that was serialized from a value
/// within the nesting limit): it always parses, so the `Null` fallback is
/// unreachable; should it ever be reached, it is logged.
fn parse_checked(t: &str) -> Value {
    serde_json::from_str(t).unwrap_or_else(|e| {
        log::error!(target: "driftdb::doc", "a checked document does not parse ({e}); read as null");
        Value::Null
    })
}

/// Check that `text` is one JSON value that parses as a `serde_json::Value`
/// (syntax, string escapes, number range, nesting limit: exactly what the
/// full parse accepts), and return the top-level fields `fields` of it
/// (when it is an object), in order.
pub fn check(text: &str, fields: &[&str]) -> Result<Vec<Option<Value>>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let out = Pick { fields, strict: false }.deserialize(&mut de)?;
    de.end()?;
    Ok(out)
}

/// [`check`] for a document entering the database: also refuses an object
/// (at any depth) that names the same key twice, which a parse would
/// silently resolve to the last value.
pub fn check_strict(text: &str, fields: &[&str]) -> Result<Vec<Option<Value>>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let out = Pick { fields, strict: true }.deserialize(&mut de)?;
    de.end()?;
    Ok(out)
}

/// Parse JSON text into a value, refusing an object (at any depth) that
/// names the same key twice; the error says which key and where.
pub fn parse_strict(text: &str) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = StrictValue.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

fn duplicate<E: serde::de::Error>(k: &str) -> E {
    E::custom(format_args!("duplicate key {:?} in an object", k))
}

/// Keys seen in one object, to refuse a repeated one.
#[derive(Default)]
struct Seen<'de> {
    few: Vec<Cow<'de, str>>,
    many: std::collections::HashSet<Cow<'de, str>>,
}

impl<'de> Seen<'de> {
    /// False if `k` was seen before.
    fn insert(&mut self, k: Cow<'de, str>) -> bool {
        if self.many.is_empty() {
            if self.few.contains(&k) {
                return false;
            }
            self.few.push(k);
            if self.few.len() > 16 {
                self.many.extend(self.few.drain(..));
            }
            return true;
        }
        self.many.insert(k)
    }
}

/// A `Value` built by a parse that refuses repeated keys.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(k) = m.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(duplicate(&k));
            }
            let v = m.next_value_seed(StrictValue)?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = s.next_element_seed(StrictValue)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

struct Pick<'f> {
    fields: &'f [&'f str],
    /// Refuse repeated keys (see [`check_strict`]).
    strict: bool,
}

impl<'de> DeserializeSeed<'de> for Pick<'_> {
    type Value = Vec<Option<Value>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Visitor<'de> for Pick<'_> {
    type Value = Vec<Option<Value>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let mut out = vec![None; self.fields.len()];
        let mut seen = Seen::default();
        while let Some(Key(k)) = m.next_key::<Key<'de>>()? {
            if self.strict && !seen.insert(k.clone()) {
                return Err(duplicate(&k));
            }
            let skip = Skip { strict: self.strict };
            match self.fields.iter().position(|f| *f == k) {
                Some(i) => {
                    let v = if self.strict { m.next_value_seed(StrictValue)? } else { m.next_value::<Value>()? };
                    // A field asked for twice (a key field that is also indexed) fills every place.
                    for (o, _) in out.iter_mut().zip(self.fields).skip(i + 1).filter(|(_, f)| **f == k) {
                        *o = Some(v.clone());
                    }
                    if let Some(o) = out.get_mut(i) {
                        *o = Some(v);
                    }
                }
                None => m.next_value_seed(skip)?,
            }
        }
        Ok(out)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
        while s.next_element_seed(Skip { strict: self.strict })?.is_some() {}
        Ok(vec![None; self.fields.len()])
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(vec![None; self.fields.len()])
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(vec![None; self.fields.len()])
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(vec![None; self.fields.len()])
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(vec![None; self.fields.len()])
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(vec![None; self.fields.len()])
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(vec![None; self.fields.len()])
    }
}

/// Reads a value and keeps nothing, through the same paths as a full parse
/// (`deserialize_any`: the nesting limit, number range and string escapes
/// are checked), not serde's `IgnoredAny`, whose skipping checks only the
/// syntax.
#[derive(Clone, Copy)]
struct Skip {
    /// Refuse repeated keys (see [`check_strict`]).
    strict: bool,
}

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
        if !self.strict {
            while m.next_key_seed(self)?.is_some() {
                m.next_value_seed(self)?;
            }
            return Ok(());
        }
        let mut seen = Seen::default();
        while let Some(Key(k)) = m.next_key::<Key<'de>>()? {
            if !seen.insert(k.clone()) {
                return Err(duplicate(&k));
            }
            m.next_value_seed(self)?;
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
        while s.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// How deep a document may nest arrays and objects: the deepest that reads
/// back (serde_json refuses to parse the 128th level).
pub const MAX_DEPTH: usize = 127;

/// Whether `v` nests arrays and objects at most [`MAX_DEPTH`] deep.
pub fn within_depth(v: &Value) -> bool {
    let mut stack: Vec<(&Value, usize)> = vec![(v, 0)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        if d + 1 > MAX_DEPTH {
            return false;
        }
        stack.extend(children.map(|c| (c, d + 1)));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_and_value_agree_both_ways() {
        let v = json!({"id": "a", "n": 1.5, "tags": ["x", {"y": null}], "s": "é\"\\u0001"});
        let t = serde_json::to_string(&v).unwrap();
        let a = Doc::from_text(&t).unwrap();
        assert_eq!(a.to_value(), v);
        assert!(a.value.get().is_none(), "to_value() must not keep a parsed copy");
        assert_eq!(a.value(), &v);
        let b = Doc::from_value(v.clone());
        assert_eq!(b.text(), t);
        assert_eq!(a, b);
    }

    #[test]
    fn field_reads_text_without_parsing_and_matches_the_value() {
        let v = json!({"id": "a", "status": "act\\ive", "n": {"deep": [1, 2]}, "z": 12345678901234567890u64});
        let t = serde_json::to_string(&v).unwrap();
        let d = Doc::from_text(&t).unwrap();
        for f in ["id", "status", "n", "z", "missing"] {
            assert_eq!(d.field(f), v.get(f).cloned(), "{f}");
        }
        assert!(d.value.get().is_none(), "field() must not parse the whole document");
        let picked = check(&t, &["z", "status"]).unwrap();
        assert_eq!(picked, vec![v.get("z").cloned(), v.get("status").cloned()]);
    }

    #[test]
    fn a_repeated_key_is_refused_at_any_depth_where_documents_enter() {
        for bad in [
            r#"{"id": 500, "id": 501}"#,
            r#"{"id": 1, "a": {"x": 1, "y": 2, "x": 3}}"#,
            r#"{"id": 1, "a": [{"k": 1}, {"k": 1, "k": 2}]}"#,
        ] {
            let e = parse_strict(bad).unwrap_err().to_string();
            assert!(e.contains("duplicate key"), "{bad}: {e}");
            assert!(e.contains("line 1"), "the error says where: {e}");
            let e = check_strict(bad, &["id"]).unwrap_err().to_string();
            assert!(e.contains("duplicate key"), "{bad}: {e}");
            // What was stored before this check existed still reads.
            assert!(check(bad, &["id"]).is_ok());
        }
        let many: String = (0..40).map(|i| format!("\"k{i}\": {i}")).collect::<Vec<_>>().join(", ");
        assert!(parse_strict(&format!("{{{many}}}")).is_ok());
        assert!(parse_strict(&format!("{{{many}, \"k7\": 0}}")).is_err(), "past the small-object path too");
        let v = json!({"id": "a", "n": [1, 2.5, {"x": null}], "s": "é"});
        assert_eq!(parse_strict(&v.to_string()).unwrap(), v);
        assert_eq!(check_strict(&v.to_string(), &["id", "n"]).unwrap(), vec![Some(json!("a")), Some(v["n"].clone())]);
    }

    #[test]
    fn check_rejects_malformed_text_and_trailing_bytes() {
        for bad in [r#"{"a":1"#, r#"{"a":1}x"#, r#"{"a":01}"#, "\"\u{1}\"", r#"{"a":"\q"}"#, "", "[1,]"] {
            assert!(check(bad, &["a"]).is_err(), "{bad:?}");
            assert!(Doc::from_text(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check("[1, {\"a\": 2}]", &["a"]).unwrap(), vec![None]);
        // What a full parse refuses, the check refuses too, picked or not:
        // numbers out of range, lone surrogates, nesting past the limit.
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        for bad in [
            r#"{"a":1e400}"#.to_string(),
            r#"{"b":1e400}"#.to_string(),
            r#"{"b":"\ud800"}"#.to_string(),
            r#"{"a":"\udc00x"}"#.to_string(),
            format!(r#"{{"b":{}}}"#, deep(MAX_DEPTH)),
            deep(MAX_DEPTH + 1),
        ] {
            assert!(serde_json::from_str::<Value>(&bad).is_err(), "{bad:.40}");
            assert!(check(&bad, &["a"]).is_err(), "{bad:.40}");
        }
        let ok = format!(r#"{{"b":{}}}"#, deep(MAX_DEPTH - 1));
        assert!(serde_json::from_str::<Value>(&ok).is_ok() && check(&ok, &["a"]).is_ok());
        assert_eq!(check("7", &[]).unwrap(), Vec::<Option<Value>>::new());
    }
}
