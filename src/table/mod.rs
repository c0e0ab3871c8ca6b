//! Tables of JSON documents: primary keys, events, commits, the catalog.

pub(crate) mod def;
pub mod doc;
pub(crate) mod event;
pub(crate) mod index;
pub(crate) mod isolation;
pub(crate) mod key;
pub mod schema;
pub(crate) mod snapshot;
pub mod time;
pub(crate) mod version;

pub use def::TableDef;
pub use doc::Doc;
pub use event::{Commit, Event, Op, RawCommit, RawEvent};
pub use isolation::Isolation;
pub use key::{KeyRef, KeyStr, Pk};

/// Hash maps keyed by row keys and table ids: foldhash, seeded per process
/// (SipHash cost about a tenth of a write's instructions).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;
/// A set of the same kind as [`FastMap`].
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::quality::RandomState>;
