//! DriftQL statements run against the database (outside or inside a transaction).

use super::*;

/// The `SELECT` of `query()` (on a database or a transaction).
pub(super) fn select_of(driftql: &str) -> Result<Select> {
    match crate::query::parse_one(driftql)? {
        Stmt::Select(sel) => Ok(sel),
        _ => Err(Error::Query("query() runs a SELECT; use execute() for other statements".into())),
    }
}

/// Result rows deserialized into the caller's type.
pub(super) fn rows_as<T: serde::de::DeserializeOwned>(rows: Vec<Value>) -> Result<Vec<T>> {
    rows.into_iter()
        .map(|v| {
            serde_json::from_value(v).map_err(|e| Error::Query(format!("row does not fit the requested type: {e}")))
        })
        .collect()
}

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
        rows_as(self.select(&select_of(driftql)?)?)
    }

    /// Execute one statement (outside any transaction: `BEGIN`, `COMMIT` and
    /// `ROLLBACK` belong in a script run by [`Db::execute`]).
    pub fn execute_stmt(&self, stmt: &Stmt) -> Result<Outcome> {
        self.run(None, stmt)
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
        self.run(Some(t), s)
    }

    /// The statement interpreter: against the database itself (`txn`
    /// `None`: each write is its own commit) or inside a transaction (writes
    /// are staged; `SHOW DRIFT`, `SHOW TABLES` and `DESCRIBE ... AS OF` read
    /// committed data; `SNAPSHOT` and `COMPACT` are refused).
    fn run(&self, txn: Option<&mut Txn<'_>>, stmt: &Stmt) -> Result<Outcome> {
        if let Some(op) = write_op(stmt) {
            return match txn {
                Some(t) => t.stage(op).map(|()| Outcome::Staged),
                None => self.write(|t| t.stage(op)).map(Outcome::Committed),
            };
        }
        let mut txn = txn;
        let select = |txn: &mut Option<&mut Txn<'_>>, sel: &Select| match txn {
            Some(t) => t.select(sel),
            None => self.select(sel),
        };
        Ok(match stmt {
            Stmt::Begin(_) | Stmt::Commit | Stmt::Rollback => {
                return Err(Error::Query(format!(
                    "{stmt} is only valid in a script (Db::execute) or through Db::begin"
                )));
            }
            Stmt::Snapshot { .. } | Stmt::Compact { .. } if txn.is_some() => {
                return Err(Error::Query(format!("{stmt} is not allowed inside a transaction")));
            }
            Stmt::Select(sel) => Outcome::Rows(select(&mut txn, sel)?),
            Stmt::Expect { query, op, value } => {
                let got = crate::query::eval::single_value(&select(&mut txn, query)?)?;
                expect_outcome(stmt, got, *op, value)?
            }
            Stmt::Describe { table, as_of: None } => Outcome::Tables(vec![match &txn {
                Some(t) => t.describe(table)?,
                None => self.describe(table)?,
            }]),
            Stmt::Describe { table, as_of: Some(a) } => Outcome::Tables(vec![self.describe_at(table, a)?]),
            Stmt::ShowTables => Outcome::Tables(self.tables()),
            Stmt::ShowDrift { table, key } => Outcome::Drift(self.history(table, key)?),
            Stmt::Snapshot { table } => Outcome::Snapshot(self.snapshot(table)?),
            Stmt::Compact { table, before } => Outcome::Compacted(self.compact(table, before.as_ref())?),
            Stmt::CreateTable { .. }
            | Stmt::Insert { .. }
            | Stmt::Patch { .. }
            | Stmt::SoftDelete { .. }
            | Stmt::Alter { .. } => {
                return Err(Error::Internal(format!("{stmt} has no operation to stage")));
            }
        })
    }
}

/// The operation a write statement stages (`None` for every other statement).
fn write_op(stmt: &Stmt) -> Option<TxnOp> {
    Some(match stmt {
        Stmt::CreateTable { name, pk, indexes } => {
            TxnOp::CreateTable { name: name.clone(), pk: pk.clone(), indexes: indexes.clone() }
        }
        Stmt::Insert { table, doc } => TxnOp::Insert { table: table.clone(), doc: Value::Object(doc.clone()) },
        Stmt::Patch { table, key, set } => TxnOp::Patch { table: table.clone(), key: key.clone(), set: set.clone() },
        Stmt::SoftDelete { table, key } => TxnOp::SoftDelete { table: table.clone(), key: key.clone() },
        Stmt::Alter { table, alter } => TxnOp::Alter { table: table.clone(), alter: alter.clone() },
        _ => return None,
    })
}
