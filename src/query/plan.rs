//! Access paths: which secondary index, if any, narrows a `WHERE`.

use crate::query::ast::{CmpOp, Expr};
use crate::table::Pk;
use crate::table::index::{Index, Probe};
use std::collections::{BTreeMap, BTreeSet};

/// The index probe that answers `field op literal`, if one does (`!=` cannot).
fn probe(op: CmpOp) -> Option<Probe> {
    match op {
        CmpOp::Eq => Some(Probe::Eq),
        CmpOp::Lt | CmpOp::Le => Some(Probe::AtMost),
        CmpOp::Gt | CmpOp::Ge => Some(Probe::AtLeast),
        CmpOp::Ne => None,
    }
}

/// Candidate keys for a `WHERE` from the first top-level conjunct an index
/// can answer (`=`, `IN`, `<`, `<=`, `>`, `>=` on an indexed field), or
/// `None` when no index applies. Candidates are a superset: the caller
/// re-checks the whole `WHERE` on each row.
pub fn plan(e: &Expr, indexes: &BTreeMap<String, Index>) -> Option<BTreeSet<Pk>> {
    match e {
        Expr::And(a, b) => plan(a, indexes).or_else(|| plan(b, indexes)),
        Expr::Cmp(p, op, lit) if p.len() == 1 => indexes.get(&p[0])?.candidates(probe(*op)?, lit),
        Expr::In(p, lits) if p.len() == 1 => {
            let ix = indexes.get(&p[0])?;
            let mut out = BTreeSet::new();
            for l in lits {
                out.extend(ix.candidates(Probe::Eq, l)?);
            }
            Some(out)
        }
        _ => None,
    }
}
