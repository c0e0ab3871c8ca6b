//! The encrypted file store: one data directory, one keyring (master key
//! versions, wrapped data keys, the manifest of live files), append-only
//! record streams that roll across files, write-once files for snapshots and
//! the like, crash recovery, and the single-writer lock.
//!
//! Layout of a data directory:
//!
//! ```text
//! LOCK                      advisory lock (empty)
//! keyring                   keyring + manifest (replaced atomically)
//! 00000000000000XX.seg|wal|snap|idx|cat|audit    data files, named by opaque id
//! ```

mod files;
mod lifecycle;
mod persist;
mod reads;
mod recovery;
mod rewrite;
mod rotation;
mod streams;
use super::segment::{Expect, FileWriter, ScanOutcome, scan};
use super::vfs::{LockGuard, OpenMode, StdFs, Vfs, VfsFile};
use crate::crypto::aead::Backend;
use crate::crypto::kdf::{Argon2Params, argon2id};
use crate::crypto::keys::{SecretKey, ct_eq};
use crate::crypto::keysource::{KeySource, Material};
use crate::format::frame::{FrameKey, MAX_PAYLOAD};
use crate::format::header::FileHeader;
use crate::format::keyring::{
    self, AuditHead, FileEntry, FileState, KeyringBody, KeyringHeader, MasterCheck, MasterRecord, MasterSpec,
    MasterState, PublicManifest,
};
use crate::format::{DB_ID_LEN, FileKind, file_name, parse_file_name};
use crate::sync::Locked;
use crate::{Error, Result};
use files::*;
pub use files::{FileBuilder, PendingFile};
pub(crate) use lifecycle::missing_keyring;
use lifecycle::*;
pub(crate) use persist::read_keyring_bytes;
pub use reads::SealedFile;
use rewrite::SealedCopy;
pub use rotation::{AUDIT_ABORTED, AUDIT_STREAM, AuditLog, KeyVersionStatus, NewMaster};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Name of the keyring file.
pub const KEYRING_FILE: &str = "keyring";

/// Name of the temporary file a new keyring is written to before the rename.
pub const KEYRING_TMP: &str = "keyring.tmp";

/// Name of the lock file.
pub const LOCK_FILE: &str = "LOCK";

/// How to open a store.
#[derive(Clone)]
pub struct StoreOptions {
    /// The file system (the real one by default).
    pub vfs: Arc<dyn Vfs>,
    /// A stream's file rolls before it would grow past this many bytes.
    pub segment_size: u64,
    /// A stream's file rolls before its frame count reaches this (keeps
    /// every key far below the AES-GCM usage bound of 2^32 messages).
    pub max_frames_per_file: u64,
    /// Open without writing anything (shared lock; no recovery, no merge).
    pub read_only: bool,
    /// AES-GCM implementation for frames.
    pub backend: Backend,
    /// Sealed stream files smaller than this (and than a quarter of the
    /// segment size) are "small"; runs of them are merged, up to a segment.
    pub small_file_bytes: u64,
    /// Merge a run of small sealed files once it is at least this long.
    pub merge_min_files: usize,
    /// Refuse to open a keyring whose generation is below this: the newest
    /// generation the application has seen, so that an older copy of the
    /// whole directory put back in place (a rollback) is detected.
    pub expect_generation: Option<u64>,
    /// Most memory (KiB) a passphrase's Argon2id derivation may use at open.
    /// The keyring header names the cost before anything is authenticated,
    /// so a tampered header could otherwise make an opener allocate 4 GiB.
    pub max_kdf_memory_kib: u32,
}

/// Default [`StoreOptions::max_kdf_memory_kib`]: 1 GiB.
pub const DEFAULT_MAX_KDF_MEMORY_KIB: u32 = 1 << 20;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            vfs: Arc::new(StdFs),
            segment_size: 32 << 20,
            max_frames_per_file: 1 << 24,
            read_only: false,
            backend: Backend::Ring,
            small_file_bytes: 1 << 20,
            merge_min_files: 8,
            expect_generation: None,
            max_kdf_memory_kib: DEFAULT_MAX_KDF_MEMORY_KIB,
        }
    }
}

/// How to create a store.
#[derive(Clone, Default)]
pub struct CreateOptions {
    /// Argon2id cost, used when the key source is a passphrase.
    pub argon2: Argon2Params,
    /// Accept Argon2id parameters below the floor of
    /// [`Argon2Params::check_strength`] (for tests; never for real data).
    pub allow_weak_kdf: bool,
    /// Options for the store once created.
    pub store: StoreOptions,
}

/// Where a record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordPos {
    /// File id.
    pub file_id: u64,
    /// Frame index in the file.
    pub index: u64,
    /// Byte offset of the frame.
    pub offset: u64,
}

/// A live file, as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// File id.
    pub file_id: u64,
    /// File name in the data directory.
    pub name: String,
    /// What it holds.
    pub kind: FileKind,
    /// Stream it belongs to.
    pub stream: u32,
    /// Position within the stream.
    pub ordinal: u64,
    /// Id of its data key.
    pub key_id: u64,
    /// Master key version wrapping its data key.
    pub kek_version: u32,
    /// Lifecycle state.
    pub state: FileState,
    /// Application metadata.
    pub meta: Vec<u8>,
}

impl FileInfo {
    fn from_entry(e: &FileEntry) -> Self {
        FileInfo {
            file_id: e.file_id,
            name: file_name(e.file_id, e.kind),
            kind: e.kind,
            stream: e.stream,
            ordinal: e.ordinal,
            key_id: e.key_id,
            kek_version: e.wrapped.kek_version,
            state: e.state,
            meta: e.meta.clone(),
        }
    }
}

/// Something recovery did at open.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryEvent {
    /// A torn tail was cut off a file left active by a crash.
    TruncatedTornTail {
        /// File name.
        file: String,
        /// Offset the file was truncated to.
        offset: u64,
        /// Why the tail was judged torn.
        reason: String,
    },
    /// A file left active by a crash was sealed through the manifest.
    Sealed {
        /// File name.
        file: String,
        /// Data frames kept.
        frames: u64,
    },
    /// A file left active by a crash held no record and was removed.
    RemovedEmpty {
        /// File name.
        file: String,
    },
    /// A file not in the manifest (an interrupted creation: a header and
    /// no record) was removed.
    RemovedOrphan {
        /// File name.
        file: String,
    },
    /// A file the keyring records as a leftover (being written when its
    /// session ended, or removed by a committed change) was removed.
    RemovedLeftover {
        /// File name.
        file: String,
        /// What it was.
        reason: String,
    },
    /// A file not in the manifest that could not be explained was moved
    /// into `quarantine/` (never deleted).
    Quarantined {
        /// File name.
        file: String,
        /// Where it is now, relative to the data directory.
        to: String,
        /// Why.
        reason: String,
    },
    /// Merging small files was skipped after a non-integrity failure.
    MergeSkipped {
        /// Why.
        reason: String,
    },
    /// Small sealed files were merged into one under a fresh data key.
    Merged {
        /// Files merged.
        files: usize,
        /// The new file.
        into: String,
    },
}

/// An atomic change to the manifest.
#[derive(Default)]
pub struct Edit {
    /// Finished files to add.
    pub add: Vec<PendingFile>,
    /// Live files to remove (deleted from disk once the change is durable).
    pub remove: Vec<u64>,
    /// New application root, if it changes.
    pub root: Option<Vec<u8>>,
}

struct Inner {
    header: KeyringHeader,
    /// The keyring as last written (or read). Its `next_id` is the id mark:
    /// every id handed out is below it, even after a crash.
    body: KeyringBody,
    master: SecretKey,
    wrap_key: SecretKey,
    writers: HashMap<u32, FileWriter>,
    /// Files replaced in the manifest but kept readable (and on disk) until
    /// released: readers holding their positions finish undisturbed.
    retiring: HashMap<u64, FileEntry>,
    /// The next file id to hand out (at most the mark, `body.next_id`).
    alloc: u64,
    /// Files being written, recorded in the keyring before they are
    /// created (so that a crash's leftovers are known for what they are).
    building: BTreeMap<u64, FileKind>,
    /// Files removed from the manifest whose deletion is not yet durable.
    removed: BTreeMap<u64, FileKind>,
    /// The keyring on disk is format version 2 (no public manifest): until
    /// the first write, files it does not list cannot be told apart.
    legacy: bool,
    /// Whether this session checked the audit log against its chain head.
    audit_checked: bool,
    /// The end of the audit log's chain: entries past the keyring's head
    /// (`body.audit`) are not committed until the keyring write that pairs
    /// with them succeeds.
    audit_tail: AuditHead,
    keys: HashMap<u64, Arc<FrameKey>>,
    poisoned: Option<String>,
    closed: bool,
}

impl Inner {
    fn new(header: KeyringHeader, body: KeyringBody, master: SecretKey) -> Self {
        let wrap_key = keyring::wrap_key(&master, &header.db_id);
        let legacy = header.version < keyring::KEYRING_VERSION;
        let building = header.public.building.iter().copied().collect();
        let removed = header.public.removed.iter().copied().collect();
        Inner {
            alloc: body.next_id,
            audit_tail: body.audit,
            header,
            body,
            master,
            wrap_key,
            writers: HashMap::new(),
            retiring: HashMap::new(),
            building,
            removed,
            legacy,
            audit_checked: false,
            keys: HashMap::new(),
            poisoned: None,
            closed: false,
        }
    }
}

/// File ids reserved (in the keyring) at a time, so that a stream file's
/// id is below the recorded mark before the file exists.
const ID_RESERVE: u64 = 64;

/// An open data directory.
pub struct Store {
    dir: PathBuf,
    session: u64,
    opts: StoreOptions,
    db_id: [u8; DB_ID_LEN],
    inner: Mutex<Inner>,
    recovery: Vec<RecoveryEvent>,
    abandoned: Abandoned,
    _lock: Option<Box<dyn LockGuard>>,
}

impl std::fmt::Display for RecoveryEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryEvent::TruncatedTornTail { file, offset, reason } => {
                write!(f, "cut the torn tail of {file} at offset {offset} ({reason})")
            }
            RecoveryEvent::Sealed { file, frames } => write!(
                f,
                "sealed {file}, left active by an earlier session, with {frames} {}",
                if *frames == 1 { "record" } else { "records" }
            ),
            RecoveryEvent::RemovedEmpty { file } => {
                write!(f, "removed {file}: left active and empty by an earlier session")
            }
            RecoveryEvent::RemovedOrphan { file } => {
                write!(f, "removed {file}: an interrupted file creation (a header, no record)")
            }
            RecoveryEvent::RemovedLeftover { file, reason } => write!(f, "removed {file}: {reason}"),
            RecoveryEvent::Quarantined { file, to, reason } => write!(f, "moved {file} to {to}: {reason}"),
            RecoveryEvent::MergeSkipped { reason } => write!(f, "merging small files skipped: {reason}"),
            RecoveryEvent::Merged { files, into } => write!(f, "merged {files} small files into {into}"),
        }
    }
}

/// One file to verify: its entry, its frame key (or why there is none), what to expect.
pub(crate) type VerifyItem = (FileEntry, Option<Arc<FrameKey>>, Option<String>, Expect);

impl Drop for Store {
    fn drop(&mut self) {
        // Best effort: seal open files so the next open need not recover them.
        let _ = self.close_inner();
    }
}

impl Store {
    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.locked()
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database id (random, fixed at creation).
    pub fn db_id(&self) -> [u8; DB_ID_LEN] {
        self.db_id
    }

    /// The options this store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    /// What recovery did when this store was opened.
    pub fn recovery_events(&self) -> &[RecoveryEvent] {
        &self.recovery
    }

    /// The active master key version.
    pub fn master_version(&self) -> u32 {
        self.lock_inner().header.active.version
    }

    /// The keyring's write generation.
    pub fn keyring_generation(&self) -> u64 {
        self.lock_inner().header.generation
    }

    /// Every live file.
    pub fn files(&self) -> Vec<FileInfo> {
        let inner = self.lock_inner();
        let mut v: Vec<FileInfo> = inner.body.files.iter().map(FileInfo::from_entry).collect();
        v.sort_by_key(|f| (f.stream, f.ordinal, f.file_id));
        v
    }

    /// The live files of one stream, in stream order.
    pub fn stream_files(&self, stream: u32) -> Vec<FileInfo> {
        self.files().into_iter().filter(|f| f.stream == stream).collect()
    }

    /// The application root.
    pub fn root(&self) -> Vec<u8> {
        self.lock_inner().body.root.clone()
    }

    /// Whether an earlier failure made the store refuse writes.
    pub fn poisoned(&self) -> Option<String> {
        self.lock_inner().poisoned.clone()
    }

    fn check_writable(&self, inner: &Inner) -> Result<()> {
        if self.opts.read_only {
            return Err(Error::ReadOnly);
        }
        if let Some(p) = &inner.poisoned {
            return Err(Error::Poisoned(p.clone()));
        }
        if inner.closed {
            return Err(Error::InvalidArgument("the store is closed".into()));
        }
        Ok(())
    }

    /// Refuse every later write (until reopened) because of `e`: for
    /// callers whose multi-step change failed part-way.
    pub fn poison_with(&self, e: &Error) {
        Self::poison(&mut self.lock_inner(), e);
    }

    fn poison(inner: &mut Inner, e: &Error) {
        if inner.poisoned.is_none() {
            inner.poisoned = Some(e.to_string());
        }
    }
}
