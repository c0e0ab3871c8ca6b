//! Access paths: which secondary index, if any, narrows a `WHERE`.

use crate::Result;
use crate::query::ast::{CmpOp, Expr};
use crate::table::Pk;
use crate::table::index::Probe;
use serde_json::Value;
use std::collections::BTreeSet;

/// The index probe that answers `field op literal`, if one does (`!=` cannot).
fn probe(op: CmpOp) -> Option<Probe> {
    match op {
        CmpOp::Eq => Some(Probe::Eq),
        CmpOp::Lt | CmpOp::Le => Some(Probe::AtMost),
        CmpOp::Gt | CmpOp::Ge => Some(Probe::AtLeast),
        CmpOp::Ne => None,
    }
}

/// Where an index lookup is answered: `Ok(None)` if `field` has no index
/// or `lit` is not indexable, else the candidate keys.
pub type Lookup<'a> = dyn FnMut(&str, Probe, &Value) -> Result<Option<BTreeSet<Pk>>> + 'a;

/// Candidate keys for a `WHERE` from the first top-level conjunct an index
/// can answer (`=`, `IN`, `<`, `<=`, `>`, `>=` on an indexed field), or
/// `None` when no index applies. Candidates are a superset: the caller
/// re-checks the whole `WHERE` on each row.
pub fn plan(e: &Expr, lookup: &mut Lookup<'_>) -> Result<Option<BTreeSet<Pk>>> {
    match e {
        Expr::And(a, b) => match plan(a, lookup)? {
            Some(c) => Ok(Some(c)),
            None => plan(b, lookup),
        },
        Expr::Cmp(p, op, lit) if p.len() == 1 => match probe(*op) {
            Some(pr) => lookup(&p[0], pr, lit),
            None => Ok(None),
        },
        Expr::In(p, lits) if p.len() == 1 => {
            let mut out = BTreeSet::new();
            for l in lits {
                match lookup(&p[0], Probe::Eq, l)? {
                    Some(c) => out.extend(c),
                    None => return Ok(None),
                }
            }
            Ok(Some(out))
        }
        _ => Ok(None),
    }
}
