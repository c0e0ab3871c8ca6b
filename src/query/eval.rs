//! Evaluation of `WHERE`, `ORDER BY`, projection and aggregates over JSON
//! documents.
//!
//! Comparisons are type-aware and never coerce: a number compares with a
//! number (integers exactly, otherwise as floating point), a string with a
//! string (by bytes), a boolean with a boolean. A comparison with a missing
//! field or a value of another type is false, for `!=` as well; use
//! `IS NULL` / `IS NOT NULL` for missing fields (a JSON `null` counts as
//! missing). `NOT` negates the result. `ORDER BY` uses a total order:
//! missing/null < booleans < numbers < strings < arrays < objects.

use super::ast::{Agg, CmpOp, Expr, Item, Path, Select, item_name};
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::cmp::Ordering;

/// The value at `path` in `doc`, if any (a JSON `null` counts as missing).
pub fn get_path<'a>(doc: &'a Value, path: &Path) -> Option<&'a Value> {
    let mut v = doc;
    for p in path {
        v = v.as_object()?.get(p)?;
    }
    if v.is_null() { None } else { Some(v) }
}

fn as_int(n: &serde_json::Number) -> Option<i128> {
    n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from))
}

/// Exact comparison of an integer with a float.
fn cmp_int_float(i: i128, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    if f >= 1.0e38 {
        return Some(Ordering::Less);
    }
    if f <= -1.0e38 {
        return Some(Ordering::Greater);
    }
    let t = f.trunc();
    Some(match i.cmp(&(t as i128)) {
        Ordering::Equal if f > t => Ordering::Less,
        Ordering::Equal if f < t => Ordering::Greater,
        o => o,
    })
}

/// Numbers compare by value, exactly: integers as integers, an integer and a
/// float without rounding, floats as floats.
fn num_cmp(a: &serde_json::Number, b: &serde_json::Number) -> Option<Ordering> {
    match (as_int(a), as_int(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        (Some(x), None) => cmp_int_float(x, b.as_f64()?),
        (None, Some(y)) => cmp_int_float(y, a.as_f64()?).map(Ordering::reverse),
        (None, None) => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// A canonical text of a value: object keys sorted, numbers by value (an
/// integral float is written as an integer), so values that compare equal
/// have equal texts. Used for `GROUP BY` and to order unequal composites.
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    canon(v, &mut out);
    out
}

fn canon(v: &Value, out: &mut String) {
    match v {
        Value::Number(n) => match (as_int(n), n.as_f64()) {
            (Some(i), _) => out.push_str(&i.to_string()),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 1.0e38 => out.push_str(&(f as i128).to_string()),
            _ => out.push_str(&n.to_string()),
        },
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canon(x, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(k.as_str()).to_string());
                out.push(':');
                if let Some(x) = m.get(k) {
                    canon(x, out);
                }
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Ordering of two values of the same type; `None` across types.
pub fn same_type_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => num_cmp(x, y),
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Array(_), Value::Array(_)) | (Value::Object(_), Value::Object(_)) => {
            if canonical(a) == canonical(b) {
                Some(Ordering::Equal)
            } else {
                None
            }
        }
        _ => None,
    }
}

fn rank(v: Option<&Value>) -> u8 {
    match v {
        None | Some(Value::Null) => 0,
        Some(Value::Bool(_)) => 1,
        Some(Value::Number(_)) => 2,
        Some(Value::String(_)) => 3,
        Some(Value::Array(_)) => 4,
        Some(Value::Object(_)) => 5,
    }
}

/// The total order used by `ORDER BY`, `MIN` and `MAX`.
pub fn total_cmp(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match rank(a).cmp(&rank(b)) {
        Ordering::Equal => match (a, b) {
            (Some(x), Some(y)) => same_type_cmp(x, y).unwrap_or_else(|| canonical(x).cmp(&canonical(y))),
            _ => Ordering::Equal,
        },
        o => o,
    }
}

/// Whether `doc` satisfies `e`.
pub fn matches(e: &Expr, doc: &Value) -> bool {
    match e {
        Expr::And(a, b) => matches(a, doc) && matches(b, doc),
        Expr::Or(a, b) => matches(a, doc) || matches(b, doc),
        Expr::Not(a) => !matches(a, doc),
        Expr::IsNull(p, negated) => get_path(doc, p).is_none() != *negated,
        Expr::In(p, vals) => {
            get_path(doc, p).is_some_and(|v| vals.iter().any(|x| same_type_cmp(v, x) == Some(Ordering::Equal)))
        }
        Expr::Cmp(p, op, lit) => {
            let Some(v) = get_path(doc, p) else { return false };
            // Two arrays or two objects are equal or not; they have no order.
            if matches!((v, lit), (Value::Array(_), Value::Array(_)) | (Value::Object(_), Value::Object(_))) {
                let eq = canonical(v) == canonical(lit);
                return match op {
                    CmpOp::Eq => eq,
                    CmpOp::Ne => !eq,
                    _ => false,
                };
            }
            let Some(o) = same_type_cmp(v, lit) else { return false };
            match op {
                CmpOp::Eq => o == Ordering::Equal,
                CmpOp::Ne => o != Ordering::Equal,
                CmpOp::Lt => o == Ordering::Less,
                CmpOp::Le => o != Ordering::Greater,
                CmpOp::Gt => o == Ordering::Greater,
                CmpOp::Ge => o != Ordering::Less,
            }
        }
    }
}

/// Whether `actual op expected` holds, as `EXPECT` compares: with the
/// `WHERE` rules, and `null` (or nothing) equal to `null` only.
pub fn compare(actual: &Value, op: CmpOp, expected: &Value) -> bool {
    if actual.is_null() || expected.is_null() {
        let both = actual.is_null() && expected.is_null();
        return match op {
            CmpOp::Eq => both,
            CmpOp::Ne => !both,
            _ => false,
        };
    }
    let doc = serde_json::json!({ "v": actual });
    matches(&Expr::Cmp(vec!["v".to_string()], op, expected.clone()), &doc)
}

/// The one value of a query's result (one row of one column), for `EXPECT`.
/// No row reads as `null`.
pub fn single_value(rows: &[Value]) -> Result<Value> {
    match rows {
        [] => Ok(Value::Null),
        [Value::Object(m)] if m.len() == 1 => Ok(m.values().next().cloned().unwrap_or(Value::Null)),
        [other] => Err(Error::Query(format!(
            "EXPECT needs a query that returns one value (one row of one column, such as COUNT(*)); it returned the row {other}"
        ))),
        _ => Err(Error::Query(format!("EXPECT needs a query that returns one value; it returned {} rows", rows.len()))),
    }
}

/// Reject comparisons that can never be true (`= null`): say what to write instead.
pub fn check_expr(e: &Expr) -> Result<()> {
    match e {
        Expr::And(a, b) | Expr::Or(a, b) => {
            check_expr(a)?;
            check_expr(b)
        }
        Expr::Not(a) => check_expr(a),
        Expr::Cmp(p, _, Value::Null) => {
            Err(Error::Query(format!("comparison of {} with null: use IS NULL or IS NOT NULL", p.join("."))))
        }
        _ => Ok(()),
    }
}

#[derive(Default, Clone)]
struct Acc {
    count: u64,
    int_sum: Option<i128>,
    float_sum: f64,
    nums: u64,
    all_int: bool,
    min: Option<Value>,
    max: Option<Value>,
}

impl Acc {
    fn new() -> Self {
        Acc { int_sum: Some(0), all_int: true, ..Default::default() }
    }

    fn add(&mut self, v: Option<&Value>) {
        let Some(v) = v else { return };
        self.count += 1;
        if let Value::Number(n) = v {
            self.nums += 1;
            self.float_sum += n.as_f64().unwrap_or(0.0);
            match (as_int(n), self.int_sum) {
                (Some(i), Some(s)) => self.int_sum = s.checked_add(i),
                _ => self.all_int = false,
            }
        }
        if self.min.as_ref().is_none_or(|m| total_cmp(Some(v), Some(m)) == Ordering::Less) {
            self.min = Some(v.clone());
        }
        if self.max.as_ref().is_none_or(|m| total_cmp(Some(v), Some(m)) == Ordering::Greater) {
            self.max = Some(v.clone());
        }
    }

    fn result(&self, agg: Agg, star_count: u64) -> Value {
        match agg {
            Agg::Count => Value::from(star_count),
            Agg::Sum if self.nums == 0 => Value::Null,
            Agg::Sum => match (self.all_int, self.int_sum.and_then(|s| i64::try_from(s).ok())) {
                (true, Some(s)) => Value::from(s),
                _ => serde_json::Number::from_f64(self.float_sum).map_or(Value::Null, Value::Number),
            },
            Agg::Avg if self.nums == 0 => Value::Null,
            Agg::Avg => {
                serde_json::Number::from_f64(self.float_sum / self.nums as f64).map_or(Value::Null, Value::Number)
            }
            Agg::Min => self.min.clone().unwrap_or(Value::Null),
            Agg::Max => self.max.clone().unwrap_or(Value::Null),
        }
    }
}

fn set_path(out: &mut Map<String, Value>, p: &Path, v: Value) {
    out.insert(p.join("."), v);
}

/// Run a `SELECT` over documents (in primary-key order): filter, group and
/// aggregate, order, offset and limit, project.
pub fn run_select(sel: &Select, docs: impl Iterator<Item = std::sync::Arc<crate::table::Doc>>) -> Result<Vec<Value>> {
    if let Some(f) = &sel.filter {
        check_expr(f)?;
    }
    let has_agg = sel.items.iter().any(|i| matches!(i, Item::Agg(..)));
    // A document not parsed yet is parsed for the filter and not kept (a
    // scan leaves the rows it read as they were).
    let mut rows = docs.filter(|d| sel.filter.as_ref().is_none_or(|f| d.peek(|v| matches(f, v))));
    let mut out: Vec<Value> = if has_agg || !sel.group_by.is_empty() {
        for it in &sel.items {
            if let Item::Field(p) = it
                && !sel.group_by.contains(p)
            {
                return Err(Error::Query(format!(
                    "field {} must appear in GROUP BY or inside an aggregate",
                    p.join(".")
                )));
            }
        }
        if sel.items.is_empty() {
            return Err(Error::Query("SELECT * cannot be combined with GROUP BY; name the fields".into()));
        }
        let mut groups: Vec<(Vec<Option<Value>>, Vec<Acc>, u64)> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        // Aggregates fold the rows as they come: none is kept.
        for d in rows.by_ref() {
            d.peek(|d| {
                let key: Vec<Option<Value>> = sel.group_by.iter().map(|p| get_path(d, p).cloned()).collect();
                let k: Vec<String> = key.iter().map(|v| v.as_ref().map(canonical).unwrap_or_default()).collect();
                let k = k.join("\u{0}");
                let gi = *index.entry(k).or_insert_with(|| {
                    groups.push((key.clone(), vec![Acc::new(); sel.items.len()], 0));
                    groups.len() - 1
                });
                let g = &mut groups[gi];
                g.2 += 1;
                for (acc, it) in g.1.iter_mut().zip(&sel.items) {
                    if let Item::Agg(_, Some(p)) = it {
                        acc.add(get_path(d, p));
                    }
                }
            });
        }
        if groups.is_empty() && sel.group_by.is_empty() {
            groups.push((Vec::new(), vec![Acc::new(); sel.items.len()], 0));
        }
        let mut grouped: Vec<Value> = groups
            .into_iter()
            .map(|(key, accs, n)| {
                let mut m = Map::new();
                for (it, acc) in sel.items.iter().zip(&accs) {
                    match it {
                        Item::Field(p) => {
                            let gi = sel.group_by.iter().position(|g| g == p).unwrap_or(0);
                            set_path(&mut m, p, key.get(gi).cloned().flatten().unwrap_or(Value::Null));
                        }
                        Item::Agg(a, None) => {
                            m.insert(item_name(it), acc.result(*a, n));
                        }
                        Item::Agg(a, Some(_)) => {
                            m.insert(item_name(it), acc.result(*a, acc.count));
                        }
                    }
                }
                // Group keys not selected still order the output.
                for (g, k) in sel.group_by.iter().zip(key) {
                    m.entry(g.join(".")).or_insert(k.unwrap_or(Value::Null));
                }
                Value::Object(m)
            })
            .collect();
        sort(&mut grouped, &sel.order_by, true);
        grouped
    } else {
        let mut v: Vec<Value> = rows.map(|d| d.to_value()).collect();
        sort(&mut v, &sel.order_by, false);
        v
    };
    let start = usize::try_from(sel.offset).unwrap_or(usize::MAX).min(out.len());
    out.drain(..start);
    if let Some(l) = sel.limit {
        out.truncate(usize::try_from(l).unwrap_or(usize::MAX));
    }
    if !has_agg && sel.group_by.is_empty() && !sel.items.is_empty() {
        out = out
            .into_iter()
            .map(|d| {
                let mut m = Map::new();
                for it in &sel.items {
                    if let Item::Field(p) = it {
                        set_path(&mut m, p, get_path(&d, p).cloned().unwrap_or(Value::Null));
                    }
                }
                Value::Object(m)
            })
            .collect();
    } else if has_agg || !sel.group_by.is_empty() {
        let names: Vec<String> = sel.items.iter().map(item_name).collect();
        for v in &mut out {
            if let Value::Object(m) = v {
                m.retain(|k, _| names.contains(k));
            }
        }
    }
    Ok(out)
}

fn sort(v: &mut [Value], order: &[(Path, bool)], grouped: bool) {
    if order.is_empty() {
        return;
    }
    v.sort_by(|a, b| {
        for (p, desc) in order {
            let (x, y) = if grouped {
                let k = p.join(".");
                (a.get(&k).filter(|v| !v.is_null()), b.get(&k).filter(|v| !v.is_null()))
            } else {
                (get_path(a, p), get_path(b, p))
            };
            let o = total_cmp(x, y);
            let o = if *desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::ast::Stmt;
    use crate::query::parse_one;
    use serde_json::json;
    use std::sync::Arc;

    fn run(q: &str, docs: &[Value]) -> Result<Vec<Value>> {
        let Stmt::Select(s) = parse_one(q)? else { panic!() };
        run_select(&s, docs.iter().cloned().map(|d| Arc::new(crate::table::Doc::from_value(d))))
    }

    fn docs() -> Vec<Value> {
        vec![
            json!({"id": 1, "status": "paid", "amount": 100, "c": {"x": 1}}),
            json!({"id": 2, "status": "pending", "amount": 50.5}),
            json!({"id": 3, "status": "paid", "amount": "100"}),
            json!({"id": 4, "amount": 7}),
        ]
    }

    #[test]
    fn type_aware_comparisons() {
        let ids = |q: &str| -> Vec<Value> { run(q, &docs()).unwrap().iter().map(|d| d["id"].clone()).collect() };
        assert_eq!(ids("SELECT * FROM t WHERE amount = 100"), vec![json!(1)], "string \"100\" is not 100");
        assert_eq!(ids("SELECT * FROM t WHERE amount = \"100\""), vec![json!(3)]);
        assert_eq!(ids("SELECT * FROM t WHERE amount > 50"), vec![json!(1), json!(2)]);
        assert_eq!(ids("SELECT * FROM t WHERE status != 'paid'"), vec![json!(2)], "missing is not != 'paid'");
        assert_eq!(ids("SELECT * FROM t WHERE NOT status = 'paid'"), vec![json!(2), json!(4)]);
        assert_eq!(ids("SELECT * FROM t WHERE status IS NULL"), vec![json!(4)]);
        assert_eq!(ids("SELECT * FROM t WHERE c.x = 1"), vec![json!(1)]);
        assert_eq!(ids("SELECT * FROM t WHERE id IN (2, 4, '1')"), vec![json!(2), json!(4)]);
        assert_eq!(
            ids("SELECT * FROM t ORDER BY amount DESC LIMIT 2"),
            vec![json!(3), json!(1)],
            "strings sort after numbers"
        );
        assert_eq!(ids("SELECT * FROM t ORDER BY id DESC LIMIT 2 OFFSET 1"), vec![json!(3), json!(2)]);
        assert!(run("SELECT * FROM t WHERE a = null", &docs()).is_err());
        let n = vec![
            json!({"id": 1, "v": 9007199254740992.0}),
            json!({"id": 2, "v": 9007199254740992i64}),
            json!({"id": 3, "v": 9007199254740993i64}),
        ];
        assert_eq!(run("SELECT MAX(v) FROM t", &n).unwrap(), vec![json!({"MAX(v)": 9007199254740993i64})]);
        let ids = |q: &str, d: &[Value]| -> Vec<Value> { run(q, d).unwrap().iter().map(|r| r["id"].clone()).collect() };
        assert_eq!(ids("SELECT * FROM t WHERE v = 9007199254740992.0", &n), vec![json!(1), json!(2)]);
        assert_eq!(ids("SELECT * FROM t WHERE v > 9007199254740992.0", &n), vec![json!(3)]);
        assert_eq!(ids("SELECT * FROM t ORDER BY v DESC, id", &n), vec![json!(3), json!(1), json!(2)]);
        let o = vec![json!({"id": 1, "o": {"a": 1}}), json!({"id": 2, "o": {"a": 2}})];
        assert_eq!(ids("SELECT * FROM t WHERE o != {\"a\": 1}", &o), vec![json!(2)]);
        assert_eq!(ids("SELECT * FROM t WHERE o = {\"a\": 1}", &o), vec![json!(1)]);
    }

    #[test]
    fn aggregates_and_group_by() {
        let r = run("SELECT COUNT(*), COUNT(status), SUM(amount), MIN(amount), MAX(id) FROM t", &docs()).unwrap();
        assert_eq!(
            r,
            vec![json!({"COUNT(*)": 4, "COUNT(status)": 3, "SUM(amount)": 157.5, "MIN(amount)": 7, "MAX(id)": 4})]
        );
        let r = run("SELECT status, COUNT(*), AVG(amount) FROM t GROUP BY status ORDER BY status", &docs()).unwrap();
        assert_eq!(
            r,
            vec![
                json!({"status": null, "COUNT(*)": 1, "AVG(amount)": 7.0}),
                json!({"status": "paid", "COUNT(*)": 2, "AVG(amount)": 100.0}),
                json!({"status": "pending", "COUNT(*)": 1, "AVG(amount)": 50.5}),
            ]
        );
        let r = run("SELECT COUNT(*), SUM(amount) FROM t WHERE id > 100", &docs()).unwrap();
        assert_eq!(r, vec![json!({"COUNT(*)": 0, "SUM(amount)": null})]);
        assert!(run("SELECT id, COUNT(*) FROM t", &docs()).is_err());
        let big = vec![json!({"v": i64::MAX}), json!({"v": 1}), json!({"v": -1})];
        assert_eq!(run("SELECT SUM(v) FROM t", &big).unwrap(), vec![json!({"SUM(v)": i64::MAX})]);
        let mixed =
            vec![json!({"v": 1}), json!({"v": 1.0}), json!({"v": {"a": 1, "b": 2}}), json!({"v": {"b": 2, "a": 1}})];
        assert_eq!(
            run("SELECT v, COUNT(*) FROM t GROUP BY v", &mixed).unwrap().len(),
            2,
            "equal values group together"
        );
        let r = run("SELECT SUM(id) FROM t", &docs()).unwrap();
        assert_eq!(r, vec![json!({"SUM(id)": 10})], "integer sums stay integers");
    }

    #[test]
    fn projection() {
        let r = run("SELECT id, c.x FROM t WHERE id = 1", &docs()).unwrap();
        assert_eq!(r, vec![json!({"id": 1, "c.x": 1})]);
    }
}
