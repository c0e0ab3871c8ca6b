//! Tables of JSON documents: primary keys, events, commits, the catalog.

pub mod event;
pub mod index;
pub mod snapshot;
pub mod time;

pub use event::{Commit, Event, Op, Pk, TableDef};
