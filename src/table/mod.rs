//! Tables of JSON documents: primary keys, events, commits, the catalog.

pub mod doc;
pub(crate) mod event;
pub(crate) mod index;
pub(crate) mod isolation;
pub mod schema;
pub(crate) mod snapshot;
pub mod time;

pub use doc::Doc;
pub use event::{Commit, Event, KeyRef, KeyStr, Op, Pk, RawCommit, RawEvent, TableDef};
pub use isolation::Isolation;

/// Hash maps keyed by row keys and table ids: foldhash, seeded per process
/// (SipHash cost about a tenth of a write's instructions).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;
/// A set of the same kind as [`FastMap`].
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::quality::RandomState>;
