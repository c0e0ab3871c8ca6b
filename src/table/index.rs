//! Secondary index values: what a top-level field's value is keyed by in
//! an index (the index entries themselves are in the version tree, see
//! `table::version`). Kept exact under insert, patch and soft delete.
//! Lookups return candidates; the caller re-checks the full `WHERE`, so an
//! index can only narrow a scan, never change its answer.

use serde_json::Value;

/// An indexable value. Numbers are keyed by their `f64` value (bounds are
/// widened to inclusive, so large integers that share an `f64` are still
/// found and then re-checked exactly).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum IKey {
    /// A boolean.
    Bool(bool),
    /// A number, as order-preserving bits of its `f64`.
    Num(u64),
    /// A string (shared: the rows that hold one value can share its text).
    Str(std::sync::Arc<str>),
}

fn f64_key(f: f64) -> u64 {
    let f = if f == 0.0 { 0.0 } else { f };
    let b = f.to_bits();
    if b >> 63 == 1 { !b } else { b | (1 << 63) }
}

/// The number an index key stands for, if [`ikey`] makes that key (a
/// finite number; zero only as +0).
pub fn f64_of_key(k: u64) -> Option<f64> {
    let f = f64::from_bits(if k >> 63 == 1 { k & !(1 << 63) } else { !k });
    (f.is_finite() && f64_key(f) == k).then_some(f)
}

/// The index key of a value; arrays, objects and null are not indexed.
pub fn ikey(v: &Value) -> Option<IKey> {
    match v {
        Value::Bool(b) => Some(IKey::Bool(*b)),
        Value::Number(n) => n.as_f64().map(|f| IKey::Num(f64_key(f))),
        Value::String(s) => Some(IKey::Str(s.as_str().into())),
        _ => None,
    }
}

/// [`ikey`] of a value given away.
pub fn ikey_owned(v: Value) -> Option<IKey> {
    ikey(&v)
}

/// What an index lookup asks for (see [`Index::candidates`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Rows whose value equals the literal.
    Eq,
    /// Rows whose value is of the literal's type and at most it.
    AtMost,
    /// Rows whose value is of the literal's type and at least it.
    AtLeast,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_keys_map_back_to_their_numbers_and_no_other_key_does() {
        for f in [0.0, 1.0, -1.0, 2.5, -2.5, 1e300, -1e300, f64::MIN_POSITIVE, 9007199254740993.0] {
            assert_eq!(f64_of_key(f64_key(f)), Some(f), "{f}");
        }
        assert_eq!(f64_of_key(f64_key(-0.0)), Some(0.0));
        // -0, NaNs and infinities are never keys.
        for bad in [(-0.0f64).to_bits(), f64::NAN.to_bits(), (-f64::NAN).to_bits(), f64::INFINITY.to_bits()] {
            let k = if bad >> 63 == 1 { !bad } else { bad | (1 << 63) };
            assert_eq!(f64_of_key(k), None, "{bad:x}");
        }
    }

    #[test]
    fn number_keys_keep_order() {
        let vals = [-1e300, -5.5, -1.0, -0.0, 0.0, 1e-9, 1.0, 2.5, 1e300];
        let keys: Vec<u64> = vals.iter().map(|f| f64_key(*f)).collect();
        for w in keys.windows(2) {
            assert!(w[0] <= w[1]);
        }
        assert_eq!(f64_key(-0.0), f64_key(0.0));
    }
}
