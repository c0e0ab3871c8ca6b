//! Schema changes (`ALTER TABLE`, `CREATE INDEX`, `DROP INDEX`).
//!
//! A schema change is one event in the log (op `ALTER`); no row is
//! rewritten on disk. A document is stored as it was written, at its
//! sequence number `w`; read at a point `s`, it is seen through every schema
//! change of its table with a sequence number in `(w, s]`, in order. So a
//! read before a change sees the document as it was, a read after it sees
//! the change, the history keeps what was written, and a change to a table
//! of a million rows costs one event. A document written after a change is
//! written in the new shape (its writer read through the change).

use super::TableDef;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A declared column: a top-level field, with the default that rows written
/// before it was added read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Field name.
    pub name: String,
    /// What rows without the field read, from the change on (none: nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

/// One schema change, as its `ALTER` event records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "alter", rename_all = "snake_case", deny_unknown_fields)]
pub enum Alter {
    /// `ALTER TABLE t ADD COLUMN f [DEFAULT literal]`: rows without `f`
    /// (or with `null`) read the default from the change on.
    AddColumn {
        /// Field name.
        column: String,
        /// The default (none: the column is declared, no row changes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default: Option<Value>,
    },
    /// `ALTER TABLE t DROP COLUMN f`: reads from the change on no longer
    /// see `f` in rows written before it; an index on `f` is dropped.
    DropColumn {
        /// Field name.
        column: String,
    },
    /// `ALTER TABLE t RENAME COLUMN a TO b`: rows written before the change
    /// read `a`'s value as `b` (a row holding both keeps `a`'s); an index on
    /// `a` becomes the index on `b`.
    RenameColumn {
        /// Old name.
        column: String,
        /// New name.
        to: String,
    },
    /// `CREATE INDEX ON t (f)`.
    CreateIndex {
        /// Field name.
        column: String,
    },
    /// `DROP INDEX ON t (f)`.
    DropIndex {
        /// Field name.
        column: String,
    },
}

/// What a schema change does to a table's secondary indexes
/// ([`Alter::index_effect`]): first the index on `drop` goes, then the index
/// on `rebuild` is built anew from the rows, read through the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEffect<'a> {
    /// The column whose index goes away.
    pub drop: Option<&'a str>,
    /// The column whose index is built from the rows.
    pub rebuild: Option<&'a str>,
}

impl Alter {
    /// What this change does to the indexes, given which columns are indexed
    /// before it: `DROP COLUMN` and `DROP INDEX` drop the column's index;
    /// `CREATE INDEX` builds one; `ADD COLUMN ... DEFAULT` rebuilds an index on
    /// the column (rows without it now read the default); `RENAME COLUMN a TO
    /// b` drops `a`'s index and, if `a` or `b` was indexed, builds `b`'s anew
    /// (rows that had `b` already keep their own value).
    pub fn index_effect(&self, indexed: impl Fn(&str) -> bool) -> IndexEffect<'_> {
        let none = IndexEffect { drop: None, rebuild: None };
        match self {
            Alter::DropColumn { column } | Alter::DropIndex { column } => {
                IndexEffect { drop: Some(column), rebuild: None }
            }
            Alter::CreateIndex { column } => IndexEffect { drop: None, rebuild: Some(column) },
            Alter::AddColumn { column, default: Some(_) } if indexed(column) => {
                IndexEffect { drop: None, rebuild: Some(column) }
            }
            Alter::AddColumn { .. } => none,
            Alter::RenameColumn { column, to } => {
                let had = indexed(column);
                IndexEffect {
                    drop: had.then_some(column.as_str()),
                    rebuild: (had || indexed(to)).then_some(to.as_str()),
                }
            }
        }
    }

    /// Whether this change changes how documents read.
    pub fn changes_documents(&self) -> bool {
        matches!(
            self,
            Alter::AddColumn { default: Some(_), .. } | Alter::DropColumn { .. } | Alter::RenameColumn { .. }
        )
    }

    /// Apply the change to a table definition, or say why it cannot apply.
    pub fn apply_def(&self, def: &mut TableDef) -> Result<(), String> {
        let t = &def.name;
        let has_col = |d: &TableDef, c: &str| d.columns.iter().any(|x| x.name == c);
        match self {
            Alter::AddColumn { column, default } => {
                check_field(column)?;
                if *column == def.pk {
                    return Err(format!("column {column:?} is the primary key of table {t:?}"));
                }
                if has_col(def, column) {
                    return Err(format!("table {t:?} already has a column {column:?}"));
                }
                // The default sits one level down in its event and in every row.
                if default.as_ref().is_some_and(|d| !crate::table::doc::within_depth(&serde_json::json!({ "x": d }))) {
                    return Err(format!("the default of column {column:?} nests too deeply"));
                }
                def.columns.push(Column { name: column.clone(), default: default.clone() });
            }
            Alter::DropColumn { column } => {
                check_field(column)?;
                if *column == def.pk {
                    return Err(format!("cannot drop {column:?}: it is the primary key of table {t:?}"));
                }
                def.columns.retain(|c| c.name != *column);
                def.indexes.retain(|i| i != column);
            }
            Alter::RenameColumn { column, to } => {
                check_field(column)?;
                check_field(to)?;
                if column == to {
                    return Err(format!("cannot rename column {column:?} to itself"));
                }
                if *column == def.pk || *to == def.pk {
                    return Err(format!("cannot rename to or from the primary key {:?} of table {t:?}", def.pk));
                }
                if has_col(def, to) || def.indexes.contains(to) {
                    return Err(format!("table {t:?} already has a column or index {to:?}"));
                }
                for c in def.columns.iter_mut().filter(|c| c.name == *column) {
                    c.name = to.clone();
                }
                for i in def.indexes.iter_mut().filter(|i| *i == column) {
                    *i = to.clone();
                }
            }
            Alter::CreateIndex { column } => {
                check_field(column)?;
                if *column == def.pk {
                    return Err(format!("{column:?} is the primary key of table {t:?}; rows are found by it already"));
                }
                if def.indexes.contains(column) {
                    return Err(format!("table {t:?} already has an index on {column:?}"));
                }
                def.indexes.push(column.clone());
            }
            Alter::DropIndex { column } => {
                if !def.indexes.contains(column) {
                    return Err(format!("table {t:?} has no index on {column:?}"));
                }
                def.indexes.retain(|i| i != column);
            }
        }
        Ok(())
    }

    /// Apply the change to a document (an object); returns whether it changed.
    pub fn apply_doc(&self, doc: &mut Map<String, Value>) -> bool {
        match self {
            Alter::AddColumn { column, default: Some(d) } => {
                if doc.get(column).is_none_or(Value::is_null) {
                    doc.insert(column.clone(), d.clone());
                    return true;
                }
                false
            }
            Alter::DropColumn { column } => doc.remove(column).is_some(),
            Alter::RenameColumn { column, to } => match doc.remove(column) {
                Some(v) => {
                    doc.insert(to.clone(), v);
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    /// The column it names (the old name of a rename).
    pub fn column(&self) -> &str {
        match self {
            Alter::AddColumn { column, .. }
            | Alter::DropColumn { column }
            | Alter::RenameColumn { column, .. }
            | Alter::CreateIndex { column }
            | Alter::DropIndex { column } => column,
        }
    }
}

fn check_field(n: &str) -> Result<(), String> {
    if n.is_empty() || n.len() > 256 || n.chars().any(|c| c.is_control()) {
        return Err(format!("invalid column name {n:?}"));
    }
    Ok(())
}

/// Apply the document-changing `alters` with a sequence number in
/// `(written, at]` to `doc`; returns whether anything changed. `alters` is
/// in sequence order.
pub fn apply_between(alters: &[(u64, Alter)], written: u64, at: u64, doc: &mut Value) -> bool {
    let from = alters.partition_point(|(s, _)| *s <= written);
    let mut changed = false;
    for (_, a) in alters[from..].iter().take_while(|(s, _)| *s <= at) {
        if let Value::Object(m) = doc {
            changed |= a.apply_doc(m);
        }
    }
    changed
}

/// Whether any document-changing alter lies in `(written, at]`.
pub fn any_between(alters: &[(u64, Alter)], written: u64, at: u64) -> bool {
    let from = alters.partition_point(|(s, _)| *s <= written);
    alters[from..].iter().take_while(|(s, _)| *s <= at).any(|(_, a)| a.changes_documents())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def() -> TableDef {
        TableDef {
            id: 1,
            name: "users".into(),
            pk: "id".into(),
            indexes: vec!["email".into()],
            columns: vec![],
            created_seq: 1,
        }
    }

    #[test]
    fn alters_round_trip_as_json_and_refuse_unknown_fields() {
        for a in [
            Alter::AddColumn { column: "tier".into(), default: Some(json!("free")) },
            Alter::AddColumn { column: "tier".into(), default: None },
            Alter::DropColumn { column: "x".into() },
            Alter::RenameColumn { column: "a".into(), to: "b".into() },
            Alter::CreateIndex { column: "c".into() },
            Alter::DropIndex { column: "c".into() },
        ] {
            let v = serde_json::to_value(&a).unwrap();
            assert_eq!(serde_json::from_value::<Alter>(v).unwrap(), a);
        }
        assert!(serde_json::from_value::<Alter>(json!({"alter": "drop_column", "column": "x", "y": 1})).is_err());
        assert!(serde_json::from_value::<Alter>(json!({"alter": "truncate", "column": "x"})).is_err());
    }

    #[test]
    fn definitions_refuse_changes_that_cannot_apply() {
        let mut d = def();
        assert!(Alter::DropColumn { column: "id".into() }.apply_def(&mut d).unwrap_err().contains("primary key"));
        assert!(Alter::RenameColumn { column: "id".into(), to: "k".into() }.apply_def(&mut d).is_err());
        assert!(Alter::RenameColumn { column: "a".into(), to: "email".into() }.apply_def(&mut d).is_err());
        assert!(Alter::DropIndex { column: "nope".into() }.apply_def(&mut d).unwrap_err().contains("no index"));
        assert!(Alter::CreateIndex { column: "email".into() }.apply_def(&mut d).is_err());
        Alter::AddColumn { column: "tier".into(), default: Some(json!(0)) }.apply_def(&mut d).unwrap();
        assert!(Alter::AddColumn { column: "tier".into(), default: None }.apply_def(&mut d).is_err());
        assert_eq!(d, {
            let mut e = def();
            e.columns.push(Column { name: "tier".into(), default: Some(json!(0)) });
            e
        });
        // Indexes follow renames and drops.
        Alter::RenameColumn { column: "email".into(), to: "mail".into() }.apply_def(&mut d).unwrap();
        assert_eq!(d.indexes, vec!["mail".to_string()]);
        Alter::DropColumn { column: "mail".into() }.apply_def(&mut d).unwrap();
        assert!(d.indexes.is_empty());
    }

    #[test]
    fn documents_read_through_the_changes_in_their_range_only() {
        let alters = vec![
            (10, Alter::AddColumn { column: "tier".into(), default: Some(json!("free")) }),
            (20, Alter::RenameColumn { column: "name".into(), to: "full_name".into() }),
            (30, Alter::DropColumn { column: "tmp".into() }),
        ];
        let base = json!({"id": 1, "name": "Ada", "tmp": true});
        let at = |w, s| {
            let mut d = base.clone();
            apply_between(&alters, w, s, &mut d);
            d
        };
        assert_eq!(at(5, 9), base);
        assert_eq!(at(5, 10), json!({"id": 1, "name": "Ada", "tmp": true, "tier": "free"}));
        assert_eq!(at(5, 25), json!({"id": 1, "full_name": "Ada", "tmp": true, "tier": "free"}));
        assert_eq!(at(5, 99), json!({"id": 1, "full_name": "Ada", "tier": "free"}));
        // Written after the add: the default is not applied again.
        assert_eq!(at(10, 99), json!({"id": 1, "full_name": "Ada"}));
        assert!(!any_between(&alters, 30, 99));
        assert!(any_between(&alters, 29, 30));
        // An existing value is kept; a null reads the default.
        let mut d = json!({"tier": "gold"});
        apply_between(&alters, 0, 10, &mut d);
        assert_eq!(d, json!({"tier": "gold"}));
        let mut d = json!({"tier": null});
        apply_between(&alters, 0, 10, &mut d);
        assert_eq!(d, json!({"tier": "free"}));
    }

    #[test]
    fn which_change_rebuilds_which_index() {
        let indexed = |cols: &'static [&'static str]| move |c: &str| cols.contains(&c);
        let a = |s: &str| Alter::DropColumn { column: s.into() };
        assert_eq!(a("x").index_effect(indexed(&["x"])), IndexEffect { drop: Some("x"), rebuild: None });
        let c = Alter::CreateIndex { column: "y".into() };
        assert_eq!(c.index_effect(indexed(&[])), IndexEffect { drop: None, rebuild: Some("y") });
        let d = Alter::AddColumn { column: "y".into(), default: Some(Value::from(1)) };
        assert_eq!(d.index_effect(indexed(&["y"])).rebuild, Some("y"));
        assert_eq!(d.index_effect(indexed(&[])).rebuild, None, "no index on the column: nothing to rebuild");
        let n = Alter::AddColumn { column: "y".into(), default: None };
        assert_eq!(n.index_effect(indexed(&["y"])), IndexEffect { drop: None, rebuild: None });
        let r = Alter::RenameColumn { column: "a".into(), to: "b".into() };
        assert_eq!(r.index_effect(indexed(&["a"])), IndexEffect { drop: Some("a"), rebuild: Some("b") });
        assert_eq!(r.index_effect(indexed(&["b"])), IndexEffect { drop: None, rebuild: Some("b") });
        assert_eq!(r.index_effect(indexed(&[])), IndexEffect { drop: None, rebuild: None });
    }
}
