//! The database: tables of JSON documents over the encrypted store.
//!
//! Every change is an event in one database-wide, append-only log. A commit
//! is one record holding all its events, so it is on disk entirely or not at
//! all. It is first written to the write-ahead log (stream [`WAL_STREAM`],
//! files of their own with their own data keys) and synced before the call
//! that made it returns; concurrent committers share that fsync (group
//! commit: the first to take the writer lock writes everyone's queued commits
//! and syncs once). A checkpoint later copies the logged commits into the
//! event segments (stream [`EVENTS_STREAM`]), syncs them and deletes the WAL
//! files; opening replays whatever the WAL holds beyond the segments.
//!
//! Current rows live in memory. Every version of every row is also in the
//! version tree (`versions.rs`): encrypted sorted runs on disk read through
//! a bounded cache, so that any past state, and any row's history, is read
//! from there. Readers take a read lock on the state and never wait for an
//! fsync.

use crate::query::ast::{AsOf, Expr, Select, Stmt};
use crate::storage::store::{CreateOptions, Edit, RecordPos, Store, StoreOptions};
use crate::sync::{Locked, RwLocked};
use crate::table::Isolation;
use crate::table::index::IKey;
use crate::table::schema::{Alter, any_between, apply_between};
use crate::table::snapshot::{SNAPSHOT_STREAM_BASE, SnapMeta, decode_rows_raw, encode_rows};
use crate::table::time::{format_rfc3339, now_micros};
use crate::table::{Commit, Doc, Event, FastMap, FastSet, Op, Pk, RawCommit, TableDef};
use crate::{Argon2Params, Error, FileKind, KeySource, Result};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

mod batch;
mod catalog;
mod checkpoint;
mod commit;
mod compaction;
mod exec;
mod open;
mod options;
mod outcome;
mod policy;
mod reads;
mod rotation;
mod snapshots;
mod state;
#[cfg(test)]
mod tests;
mod txn;
mod validate;
mod versions;

use batch::*;
use commit::*;
use exec::{rows_as, select_of};
use open::*;
use reads::*;
use state::*;
use validate::*;

pub use batch::{MAX_KEY_BYTES, SYSTEM_PREFIX};
pub use options::{Durability, Options, RotateOptions};
pub use outcome::{CompactionPreview, HistoryEntry, Outcome, RotationProgress, RotationStatus};
pub use txn::Txn;

/// The segment stream holding every checkpointed commit.
pub const EVENTS_STREAM: u32 = 1;

/// The write-ahead log stream: commits not yet checkpointed.
pub const WAL_STREAM: u32 = 2;

/// An embedded DriftDB database.
pub struct Db {
    shared: Arc<Shared>,
    /// The application's handle (not a background thread's): dropping it
    /// stops and joins the background threads.
    owner: bool,
}

/// What a `Db` handle and its background threads share.
pub(crate) struct Shared {
    store: Arc<Store>,
    state: RwLock<State>,
    /// Held by the group-commit leader (and by explicit snapshots,
    /// compaction and key rotation; automatic snapshots are written beside
    /// it, see [`Db::snapshot_in_background`]).
    writer: Mutex<WriterState>,
    /// Commit requests waiting for a leader, with the committing thread.
    queue: Mutex<Vec<(std::thread::ThreadId, Request)>>,
    /// Signalled when a request joins the queue while a leader gathers.
    arrived: std::sync::Condvar,
    /// What the next leader expects to gather (see [`Db::gather`]).
    gather: Mutex<Gather>,
    opts: Options,
    flusher: Mutex<Option<Flusher>>,
    /// Held while a sealed file is rewritten and what refers to it is
    /// repointed (compaction's reclaiming, re-encryption, the start of a
    /// rotation): one rewrite at a time, and none across a rotation's start.
    rewriting: Mutex<()>,
    /// The background re-encryption, if one was started.
    rotator: Mutex<Option<std::thread::JoinHandle<Result<()>>>>,
    /// Set to stop the background re-encryption between two files.
    stop: std::sync::atomic::AtomicBool,
    /// Whether a re-encryption is running in this process.
    rotating: std::sync::atomic::AtomicBool,
    /// The thread writing automatic snapshots, if one was started (see
    /// [`Db::snapshot_in_background`]).
    snapshotter: Mutex<Snapshotter>,
    /// The version tree (every row version, see `versions.rs`).
    versions: Option<Arc<crate::storage::tree::Tree>>,
    /// The thread flushing and merging it, if one was started.
    tree_worker: Mutex<Option<versions::TreeWorker>>,
    /// Set to stop that thread.
    tree_worker_stop: Arc<std::sync::atomic::AtomicBool>,
}

/// The automatic snapshots to write, and the thread writing them.
#[derive(Default)]
struct Snapshotter {
    /// Tables found due, not yet taken by the thread.
    pending: Vec<u32>,
    /// Whether the thread is running (it clears this, under the lock, when
    /// it finds nothing pending, and then ends).
    running: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Db {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        let _ = self.stop_rotation();
        self.wait_snapshots();
        self.stop_tree_worker();
        let flusher = self.shared.flusher.locked().take();
        if let Some(mut f) = flusher {
            let _ = f.stop.send(());
            if let Some(t) = f.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// A table's rows, in key order.
type Rows = BTreeMap<Pk, Arc<Doc>>;

impl Db {
    /// A handle for a background thread (does not stop anything when dropped).
    fn background_handle(&self) -> Db {
        Db { shared: self.shared.clone(), owner: false }
    }

    /// The underlying store (files, keys, verification).
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The keyring's generation, incremented on every keyring write. Keep
    /// the newest value seen somewhere the database's disk is not, and pass
    /// it as [`Options::expect_generation`] on the next open: an older copy
    /// of the whole directory put back in place is then refused.
    pub fn keyring_generation(&self) -> u64 {
        self.shared.store.keyring_generation()
    }

    /// What the version tree's cache of decrypted blocks holds and has
    /// done (hits, misses, evictions, bytes).
    pub fn cache_stats(&self) -> crate::storage::runs::CacheStats {
        self.shared.versions.as_ref().map(|t| t.cache().stats()).unwrap_or_default()
    }

    /// The version tree's runs per level, its memtable, its flushes and merges.
    pub fn version_tree_stats(&self) -> crate::storage::tree::TreeStats {
        self.shared.versions.as_ref().map(|t| t.stats()).unwrap_or_default()
    }

    /// The in-memory state, for reading (never held across an fsync).
    pub(crate) fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.shared.state.read_locked()
    }

    /// The in-memory state, for changing it.
    fn state_mut(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.shared.state.write_locked()
    }

    /// The latest committed sequence number (0 for an empty database).
    pub fn latest_seq(&self) -> u64 {
        self.state().latest_seq()
    }

    /// Stop (and join) the version tree's worker.
    fn stop_tree_worker(&self) {
        self.shared.tree_worker_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let worker = self.shared.tree_worker.locked().take();
        if let Some(mut w) = worker {
            let _ = w.wake.try_send(());
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Wake the version tree's worker if the memtable is due to be flushed.
    pub(super) fn wake_tree_worker(&self) {
        if let Some(w) = self.shared.tree_worker.locked().as_ref() {
            let _ = w.wake.try_send(());
        }
    }

    /// Close the database: checkpoint the write-ahead log, write the row
    /// versions still in memory into the version tree's runs, and seal the
    /// open files.
    pub fn close(self) -> Result<()> {
        self.wait_snapshots();
        let rotation = self.stop_rotation();
        self.stop_tree_worker();
        if !self.shared.store.options().read_only && self.shared.store.poisoned().is_none() {
            let mut w = self.lock_writer();
            self.checkpoint(&mut w)?;
            if let Some(tree) = &self.shared.versions {
                // A catalog checkpoint as of the last commit: the next open
                // replays nothing.
                self.state_mut().put_catalog();
                tree.flush(&self.shared.store)?;
            }
        }
        self.shared.store.close_shared()?;
        rotation
    }
}
