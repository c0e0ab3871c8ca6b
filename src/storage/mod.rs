//! Files on disk: the file-system trait, data-file writer and reader, the
//! keyring store with its manifest, crash recovery and verification.

pub mod memfs;
pub mod runs;
pub(crate) mod segment;
pub mod store;
pub(crate) mod strays;
pub mod tree;
pub mod verify;
pub mod vfs;

#[cfg(test)]
mod tests;

pub use store::{CreateOptions, FileInfo, RecordPos, Store, StoreOptions};
pub use vfs::{StdFs, Vfs, VfsFile};
