//! Primary keys: integers, or strings kept inline when short (most keys are).

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
