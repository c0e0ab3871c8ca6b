//! Secondary indexes: for one top-level field, value → primary keys of the
//! live rows holding it. Kept exact under insert, patch and soft delete.
//! Lookups return candidates; the caller re-checks the full `WHERE`, so an
//! index can only narrow a scan, never change its answer.

use super::Pk;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

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

/// One index.
#[derive(Debug, Default, Clone)]
pub struct Index {
    map: BTreeMap<IKey, BTreeSet<Pk>>,
}

impl Index {
    /// Record `pk` under the value of `field` in `doc`.
    #[cfg(test)]
    pub fn add(&mut self, field: &str, doc: &Value, pk: &Pk) {
        self.add_value(doc.get(field), pk);
    }

    /// Build an index from (field value, key) pairs (rows whose field is
    /// missing or not indexable are left out): the keys are gathered per
    /// value, each value's keys then bulk-built into a set, instead of an
    /// ordered insert per row.
    #[cfg(test)]
    pub fn from_pairs(pairs: impl IntoIterator<Item = (Option<Value>, Pk)>) -> Index {
        let mut groups: BTreeMap<IKey, Vec<Pk>> = BTreeMap::new();
        for (k, pk) in pairs.into_iter().filter_map(|(v, pk)| v.and_then(ikey_owned).map(|k| (k, pk))) {
            match groups.get_mut(&k) {
                Some(pks) => pks.push(pk),
                None => {
                    groups.insert(k, vec![pk]);
                }
            }
        }
        Index::from_groups(groups)
    }

    /// Build an index from keys already grouped by value, each group in key order.
    pub fn from_groups(groups: BTreeMap<IKey, Vec<Pk>>) -> Index {
        Index { map: groups.into_iter().map(|(k, pks)| (k, pks.into_iter().collect::<BTreeSet<Pk>>())).collect() }
    }

    /// Record `pk` under the field value `v` (the field's value in its row).
    pub fn add_value(&mut self, v: Option<&Value>, pk: &Pk) {
        if let Some(k) = v.and_then(ikey) {
            self.map.entry(k).or_default().insert(pk.clone());
        }
    }

    /// Forget `pk` under the field value `v`.
    pub fn remove_value(&mut self, v: Option<&Value>, pk: &Pk) {
        if let Some(k) = v.and_then(ikey)
            && let Some(s) = self.map.get_mut(&k)
        {
            s.remove(pk);
            if s.is_empty() {
                self.map.remove(&k);
            }
        }
    }

    /// Number of distinct values.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    fn range(&self, lo: Bound<IKey>, hi: Bound<IKey>, out: &mut BTreeSet<Pk>) {
        for s in self.map.range((lo, hi)).map(|(_, s)| s) {
            out.extend(s.iter().cloned());
        }
    }

    /// Keys of the rows whose value is `lit` ([`Probe::Eq`]), or of `lit`'s
    /// type and at most / at least `lit`; `None` if `lit` is not indexable.
    /// (Bounds are inclusive: the caller re-checks a strict comparison.)
    pub fn candidates(&self, probe: Probe, lit: &Value) -> Option<BTreeSet<Pk>> {
        let k = ikey(lit)?;
        let (type_lo, type_hi) = match &k {
            IKey::Bool(_) => (IKey::Bool(false), Bound::Included(IKey::Bool(true))),
            IKey::Num(_) => (IKey::Num(0), Bound::Included(IKey::Num(u64::MAX))),
            IKey::Str(_) => (IKey::Str("".into()), Bound::Unbounded),
        };
        let mut out = BTreeSet::new();
        match probe {
            Probe::Eq => {
                if let Some(s) = self.map.get(&k) {
                    out.extend(s.iter().cloned());
                }
            }
            Probe::AtMost => self.range(Bound::Included(type_lo), Bound::Included(k), &mut out),
            Probe::AtLeast => self.range(Bound::Included(k), type_hi, &mut out),
        }
        Some(out)
    }
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
    fn built_from_pairs_equals_built_by_inserts() {
        use serde_json::json;
        let docs: Vec<(Pk, Value)> = (0..500)
            .map(|i| {
                let v = match i % 5 {
                    0 => json!({"f": format!("s{}", i % 7)}),
                    1 => json!({"f": (i % 11) as f64 / 2.0}),
                    2 => json!({"f": i % 3 == 0}),
                    3 => json!({"f": null}),
                    _ => json!({"g": 1}),
                };
                (Pk::Int(i), v)
            })
            .collect();
        let mut by_insert = Index::default();
        for (k, d) in &docs {
            by_insert.add("f", d, k);
        }
        let built = Index::from_pairs(docs.iter().map(|(k, d)| (d.get("f").cloned(), k.clone())));
        assert_eq!(built.map, by_insert.map);
        assert!(built.len() > 10);
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
