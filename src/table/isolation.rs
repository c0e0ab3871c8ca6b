//! Transaction isolation levels.

/// Isolation level of a transaction.
///
/// | anomaly                     | ReadCommitted | Snapshot  | Serializable |
/// |-----------------------------|---------------|-----------|--------------|
/// | dirty read                  | prevented     | prevented | prevented    |
/// | non-repeatable read         | possible      | prevented | prevented    |
/// | lost update                 | possible      | prevented | prevented    |
/// | phantom (re-run query)      | possible      | prevented | prevented    |
/// | write skew                  | possible      | possible  | prevented    |
/// | phantom on a predicate read, then write | possible | possible | prevented |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Every read sees the latest committed state; changes are re-applied to
    /// the latest state at commit.
    ReadCommitted,
    /// Reads see the state at `begin`; a write-write conflict with a
    /// transaction that committed meanwhile aborts (first committer wins).
    Snapshot,
    /// Snapshot, and a commit also aborts if anything the transaction read
    /// (rows by key, query predicates) changed meanwhile. The default.
    #[default]
    Serializable,
}

impl Isolation {
    /// DriftQL spelling (`READ COMMITTED`, `SNAPSHOT`, `SERIALIZABLE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "READ COMMITTED",
            Isolation::Snapshot => "SNAPSHOT",
            Isolation::Serializable => "SERIALIZABLE",
        }
    }
}
