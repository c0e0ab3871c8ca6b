//! Tables of JSON documents: primary keys, events, commits, the catalog.

pub mod doc;
pub mod event;
pub mod index;
pub mod snapshot;
pub mod time;

pub use doc::Doc;
pub use event::{Commit, Event, Op, Pk, RawCommit, RawEvent, TableDef};
