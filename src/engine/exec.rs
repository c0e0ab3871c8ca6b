//! DriftQL statements run against the database (outside or inside a transaction).

use super::*;

/// The outcome of an `EXPECT` whose query returned `got`.
pub(super) fn expect_outcome(stmt: &Stmt, got: Value, op: crate::query::ast::CmpOp, value: &Value) -> Result<Outcome> {
    if crate::query::eval::compare(&got, op, value) {
        Ok(Outcome::Expected(got))
    } else {
        Err(Error::Constraint(format!("{stmt} failed: the query returned {got}")))
    }
}

impl Db {
    /// Run a DriftQL query and deserialize its rows.
    pub fn query<T: serde::de::DeserializeOwned>(&self, driftql: &str) -> Result<Vec<T>> {
        let stmt = crate::query::parse_one(driftql)?;
        let Stmt::Select(sel) = stmt else {
            return Err(Error::Query("query() runs a SELECT; use execute() for other statements".into()));
        };
        self.select(&sel)?
            .into_iter()
            .map(|v| {
                serde_json::from_value(v).map_err(|e| Error::Query(format!("row does not fit the requested type: {e}")))
            })
            .collect()
    }

    /// Execute one statement (outside any transaction: `BEGIN`, `COMMIT` and
    /// `ROLLBACK` belong in a script run by [`Db::execute`]).
    pub fn execute_stmt(&self, stmt: &Stmt) -> Result<Outcome> {
        Ok(match stmt {
            Stmt::Begin(_) | Stmt::Commit | Stmt::Rollback => {
                return Err(Error::Query(format!(
                    "{stmt} is only valid in a script (Db::execute) or through Db::begin"
                )));
            }
            Stmt::CreateTable { name, pk, indexes } => {
                let idx: Vec<&str> = indexes.iter().map(String::as_str).collect();
                Outcome::Committed(self.create_table(name, pk, &idx)?)
            }
            Stmt::Insert { table, doc } => Outcome::Committed(self.insert(table, Value::Object(doc.clone()))?),
            Stmt::Patch { table, key, set } => Outcome::Committed(self.patch(table, key, set.clone())?),
            Stmt::SoftDelete { table, key } => Outcome::Committed(self.soft_delete(table, key)?),
            Stmt::Select(sel) => Outcome::Rows(self.select(sel)?),
            Stmt::ShowTables => Outcome::Tables(self.tables()),
            Stmt::Describe { table, as_of: None } => Outcome::Tables(vec![self.describe(table)?]),
            Stmt::Describe { table, as_of: Some(a) } => Outcome::Tables(vec![self.describe_at(table, a)?]),
            Stmt::Alter { table, alter } => Outcome::Committed(self.write(|t| t.alter(table, alter.clone()))?),
            Stmt::Expect { query, op, value } => {
                let got = crate::query::eval::single_value(&self.select(query)?)?;
                expect_outcome(stmt, got, *op, value)?
            }
            Stmt::ShowDrift { table, key } => Outcome::Drift(self.history(table, key)?),
            Stmt::Snapshot { table } => Outcome::Snapshot(self.snapshot(table)?),
            Stmt::Compact { table, before } => Outcome::Compacted(self.compact(table, before.as_ref())?),
        })
    }

    /// Execute a script. Outside a transaction each write statement is its
    /// own commit; between `BEGIN` and `COMMIT` the writes commit together
    /// or not at all. The first error stops the script and is returned with
    /// the statement's number: statements committed before it stay
    /// committed, and an open transaction is rolled back (the message says
    /// so). A script that ends inside a transaction rolls it back and is an
    /// error.
    pub fn execute(&self, script: &str) -> Result<Vec<Outcome>> {
        let mut out = Vec::new();
        self.execute_each(script, |o| out.push(o))?;
        Ok(out)
    }

    /// [`Db::execute`], handing each statement's outcome to `each` as soon
    /// as it is known.
    pub fn execute_each(&self, script: &str, mut each: impl FnMut(Outcome)) -> Result<()> {
        let stmts = crate::query::parse(script)?;
        let mut txn: Option<(usize, Txn<'_>)> = None;
        for (i, s) in stmts.iter().enumerate() {
            let r = match (&mut txn, s) {
                (None, Stmt::Begin(iso)) => {
                    txn = Some((i + 1, self.begin(iso.unwrap_or_default())));
                    Ok(Outcome::Began(iso.unwrap_or_default()))
                }
                (None, Stmt::Commit | Stmt::Rollback) => Err(Error::Query(format!("{s} outside a transaction"))),
                (None, s) => self.execute_stmt(s),
                (Some(_), Stmt::Begin(_)) => Err(Error::Query("BEGIN inside a transaction (no nesting)".into())),
                (Some(_), Stmt::Commit) => match txn.take() {
                    Some((_, t)) => t.commit().map(Outcome::Committed),
                    None => Err(Error::Query("COMMIT outside a transaction".into())),
                },
                (Some(_), Stmt::Rollback) => {
                    if let Some((_, t)) = txn.take() {
                        t.rollback();
                    }
                    Ok(Outcome::RolledBack)
                }
                (Some((_, t)), s) => Self::execute_in(self, t, s),
            };
            match r {
                Ok(o) => each(o),
                Err(e) => {
                    let aborted = match txn.take() {
                        Some((at, t)) => {
                            t.rollback();
                            format!("; the transaction begun at statement {at} was rolled back")
                        }
                        None if matches!(s, Stmt::Commit) => "; the transaction was rolled back".to_string(),
                        None => String::new(),
                    };
                    return Err(match e {
                        Error::Query(m) => Error::Query(format!("statement {}: {m}{aborted}", i + 1)),
                        Error::Constraint(m) => Error::Constraint(format!("statement {}: {m}{aborted}", i + 1)),
                        Error::Conflict(m) => Error::Conflict(format!("statement {}: {m}{aborted}", i + 1)),
                        other => other,
                    });
                }
            }
        }
        if let Some((at, t)) = txn.take() {
            t.rollback();
            return Err(Error::Query(format!(
                "the transaction begun at statement {at} was not committed (no COMMIT before the end of the script); it was rolled back"
            )));
        }
        Ok(())
    }

    /// One statement inside a script's transaction.
    pub(crate) fn execute_in(&self, t: &mut Txn<'_>, s: &Stmt) -> Result<Outcome> {
        Ok(match s {
            Stmt::CreateTable { name, pk, indexes } => {
                let idx: Vec<&str> = indexes.iter().map(String::as_str).collect();
                t.create_table(name, pk, &idx)?;
                Outcome::Staged
            }
            Stmt::Insert { table, doc } => {
                t.insert(table, Value::Object(doc.clone()))?;
                Outcome::Staged
            }
            Stmt::Patch { table, key, set } => {
                t.patch(table, key, set.clone())?;
                Outcome::Staged
            }
            Stmt::SoftDelete { table, key } => {
                t.soft_delete(table, key)?;
                Outcome::Staged
            }
            Stmt::Select(sel) => Outcome::Rows(t.select(sel)?),
            Stmt::Alter { table, alter } => {
                t.alter(table, alter.clone())?;
                Outcome::Staged
            }
            Stmt::Expect { query, op, value } => {
                let got = crate::query::eval::single_value(&t.select(query)?)?;
                expect_outcome(s, got, *op, value)?
            }
            Stmt::Describe { table, as_of: None } => Outcome::Tables(vec![t.describe(table)?]),
            Stmt::Snapshot { .. } | Stmt::Compact { .. } => {
                return Err(Error::Query(format!("{s} is not allowed inside a transaction")));
            }
            other => self.execute_stmt(other)?,
        })
    }
}
