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

mod rotation;
pub use rotation::{AUDIT_ABORTED, AUDIT_STREAM, AuditLog, KeyVersionStatus, NewMaster};

use super::segment::{Expect, FileWriter, ScanOutcome, scan};
use super::vfs::{LockGuard, OpenMode, StdFs, Vfs};
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
use crate::{Error, Result};
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

/// A file written completely but not yet in the manifest; [`Store::commit`] adds it.
/// Dropped uncommitted, its file is removed.
pub struct PendingFile {
    entry: FileEntry,
    owner: u64,
    path: PathBuf,
    vfs: Arc<dyn Vfs>,
    abandoned: Abandoned,
    committed: bool,
}

/// Ids of files being written that were given up (and unlinked): the next
/// keyring write drops them from the files being written.
type Abandoned = Arc<Mutex<Vec<u64>>>;

fn abandon(list: &Abandoned, vfs: &dyn Vfs, path: &Path, id: u64) {
    if vfs.remove_file(path).is_ok() || !vfs.exists(path).unwrap_or(true) {
        list.lock().unwrap_or_else(|p| p.into_inner()).push(id);
    }
}

impl PendingFile {
    /// Its file id.
    pub fn file_id(&self) -> u64 {
        self.entry.file_id
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            abandon(&self.abandoned, self.vfs.as_ref(), &self.path, self.entry.file_id);
        }
    }
}

/// A file reserved by [`Store::reserve_file`].
struct Reserved {
    entry: FileEntry,
    path: PathBuf,
    name: String,
    header: FileHeader,
    key: Arc<FrameKey>,
}

/// Builds a write-once file (snapshot, index, catalog, merged segment...).
pub struct FileBuilder<'s> {
    store: &'s Store,
    writer: FileWriter,
    entry: FileEntry,
    path: PathBuf,
    done: bool,
    /// While [`FileBuilder::with_write_behind`] runs: wakes its sync thread.
    behind: Option<std::sync::mpsc::SyncSender<()>>,
    /// Bytes appended since the sync thread was last woken.
    unsynced: u64,
}

/// Bytes appended between early syncs of a file being built with
/// [`FileBuilder::with_write_behind`].
const WRITE_BEHIND_BYTES: u64 = 8 << 20;

impl<'s> FileBuilder<'s> {
    fn new(store: &'s Store, writer: FileWriter, entry: FileEntry, path: PathBuf) -> Self {
        FileBuilder { store, writer, entry, path, done: false, behind: None, unsynced: 0 }
    }

    /// Run `fill` (which appends the file's records) while a second thread
    /// syncs what has been appended so far every few MiB, so that the disk
    /// writes while the caller reads and encrypts, and [`FileBuilder::finish`]'s
    /// sync has little left to wait for. A failed early sync fails the build
    /// (a later sync may not report the loss again). Without a second thread,
    /// `fill` runs alone.
    pub fn with_write_behind<T>(&mut self, fill: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let file = self.writer.file_handle();
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::scope(|s| {
            let syncer = std::thread::Builder::new().name("driftdb-write-behind".into()).spawn_scoped(s, move || {
                while rx.recv().is_ok() {
                    file.sync_data()?;
                }
                Ok::<(), std::io::Error>(())
            });
            let Ok(syncer) = syncer else { return fill(self) };
            self.behind = Some(tx);
            self.unsynced = 0;
            // Even if `fill` panics, the sync thread must be told to end
            // before the scope joins it.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fill(self)));
            self.behind = None; // the sync thread ends
            let synced = syncer.join().unwrap_or_else(|_| Err(std::io::Error::other("the sync thread panicked")));
            let v = match r {
                Ok(r) => r?,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            synced.map_err(|e| Error::io("syncing", &self.path, e))?;
            Ok(v)
        })
    }
    /// Append one record.
    pub fn append(&mut self, payload: &[u8]) -> Result<RecordPos> {
        if payload.len() > MAX_PAYLOAD {
            return Err(Error::InvalidArgument(format!(
                "record of {} bytes exceeds the {MAX_PAYLOAD}-byte limit",
                payload.len()
            )));
        }
        if self.writer.indexes_used() + 2 >= self.store.opts.max_frames_per_file {
            return Err(Error::InvalidArgument("too many records for one file".into()));
        }
        let (index, offset) = self.writer.append(payload)?;
        if let Some(tx) = &self.behind {
            self.unsynced += payload.len() as u64;
            if self.unsynced >= WRITE_BEHIND_BYTES {
                self.unsynced = 0;
                match tx.try_send(()) {
                    // Full: a sync is already due, and it will cover this too.
                    Ok(()) | Err(std::sync::mpsc::TrySendError::Full(())) => {}
                    // The sync thread has stopped: an early sync failed.
                    Err(std::sync::mpsc::TrySendError::Disconnected(())) => {
                        return Err(Error::io(
                            "syncing",
                            &self.path,
                            std::io::Error::other("an early sync of this file failed"),
                        ));
                    }
                }
            }
        }
        Ok(RecordPos { file_id: self.entry.file_id, index, offset })
    }

    /// Seal and sync the file; it joins the manifest on [`Store::commit`].
    pub fn finish(mut self) -> Result<PendingFile> {
        let (frames, len) = self.writer.finish()?;
        self.done = true;
        let mut entry = self.entry.clone();
        entry.state = FileState::Sealed { frames, len, final_frame: true };
        Ok(PendingFile {
            entry,
            owner: self.store.session,
            path: self.path.clone(),
            vfs: self.store.opts.vfs.clone(),
            abandoned: self.store.abandoned.clone(),
            committed: false,
        })
    }
}

impl Drop for FileBuilder<'_> {
    fn drop(&mut self) {
        if !self.done {
            abandon(&self.store.abandoned, self.store.opts.vfs.as_ref(), &self.path, self.entry.file_id);
        }
    }
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

/// Most Argon2 derivations tried against retired passphrase versions on a failed unlock.
const MAX_RETIRED_ARGON2_RUNS: usize = 4;

fn take_lock(vfs: &dyn Vfs, dir: &Path, exclusive: bool) -> Result<Box<dyn LockGuard>> {
    let p = dir.join(LOCK_FILE);
    vfs.try_lock(&p, exclusive)
        .map_err(|e| Error::io("locking", &p, e))?
        .ok_or_else(|| Error::InUse { path: dir.to_path_buf() })
}

fn session_token() -> Result<u64> {
    let mut b = [0u8; 8];
    crate::crypto::random_bytes(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The error for a directory without a keyring: not a database at all, or
/// (when data files are there) a database whose keyring is missing.
pub(crate) fn missing_keyring(vfs: &dyn Vfs, dir: &Path) -> Error {
    let names = vfs.read_dir(dir).unwrap_or_default();
    let data = names.iter().filter(|n| parse_file_name(n).is_some()).count();
    if data > 0 {
        Error::tampered(
            KEYRING_FILE,
            0,
            format!(
                "the keyring is missing, but {} holds {data} DriftDB data {}: without its keyring nothing can be read (restore the keyring from a backup)",
                dir.display(),
                if data == 1 { "file" } else { "files" }
            ),
        )
    } else {
        Error::NotADatabase { path: dir.to_path_buf() }
    }
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

/// Derive the master key for `spec` from key-source material.
fn master_for(material: &Material, spec: &MasterSpec) -> Result<Option<SecretKey>> {
    Ok(match (material, spec) {
        (Material::Key(k), MasterSpec::Key) => Some(k.duplicate()),
        (Material::Passphrase(p), MasterSpec::Passphrase { params, salt }) => Some(argon2id(p, salt, *params)?),
        _ => None,
    })
}

impl Store {
    /// Create a new database in `dir` (which must be missing or empty).
    /// Everything that can be checked (the key, the KDF parameters) is
    /// checked before anything is created; a failure after that removes
    /// what was created, so the directory is left as it was found.
    pub fn create(dir: impl AsRef<Path>, key: &KeySource, opts: CreateOptions) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        let vfs = opts.store.vfs.clone();
        if opts.store.read_only {
            return Err(Error::ReadOnly);
        }
        let existed = vfs.exists(&dir).map_err(|e| Error::io("checking", &dir, e))?;
        // What an interrupted `init` leaves (a lock file, a keyring that was
        // never renamed into place) holds nothing: such a directory is empty.
        let leftover = |n: &String| n == LOCK_FILE || n == KEYRING_TMP;
        if existed {
            let entries = vfs.read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))?;
            let entries: Vec<String> = entries.into_iter().filter(|n| !leftover(n)).collect();
            if !entries.is_empty() {
                return Err(Error::AlreadyExists(format!(
                    "{} is not empty ({} {}); init needs a new or empty directory",
                    dir.display(),
                    entries.len(),
                    if entries.len() == 1 { "entry" } else { "entries" }
                )));
            }
        }
        let material = key.material()?;
        if matches!(material, Material::Passphrase(_)) {
            opts.argon2.validate()?;
            if !opts.allow_weak_kdf {
                opts.argon2.check_strength()?;
            }
            if opts.argon2.m_cost_kib > opts.store.max_kdf_memory_kib {
                return Err(Error::InvalidArgument(format!(
                    "Argon2id with {} MiB is above the {} MiB an open allows by default; every open would need --max-kdf-memory-mib",
                    opts.argon2.m_cost_kib / 1024,
                    opts.store.max_kdf_memory_kib / 1024
                )));
            }
        }
        vfs.create_dir_all(&dir).map_err(|e| Error::io("creating directory", &dir, e))?;
        let lock = match take_lock(vfs.as_ref(), &dir, true) {
            Ok(l) => l,
            Err(e) => {
                if !existed {
                    let _ = vfs.remove_file(&dir.join(LOCK_FILE));
                    let _ = vfs.remove_dir(&dir);
                }
                return Err(e);
            }
        };
        // Someone may have created a database here between the check and the lock.
        let entries = vfs.read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))?;
        if entries.iter().any(|n| !leftover(n)) {
            return Err(Error::AlreadyExists(format!("{} is not empty", dir.display())));
        }
        if entries.iter().any(|n| n == KEYRING_TMP) {
            let p = dir.join(KEYRING_TMP);
            vfs.remove_file(&p).map_err(|e| Error::io("removing", &p, e))?;
        }
        match Self::create_locked(&dir, key, material, opts, lock) {
            Ok(s) => Ok(s),
            Err(e) => {
                // Only this call wrote here (the directory was empty, and locked).
                if let Ok(names) = vfs.read_dir(&dir) {
                    for n in names {
                        if n == LOCK_FILE || n == KEYRING_FILE || n == KEYRING_TMP || parse_file_name(&n).is_some() {
                            let _ = vfs.remove_file(&dir.join(&n));
                        }
                    }
                }
                if !existed {
                    let _ = vfs.remove_dir(&dir);
                }
                Err(e)
            }
        }
    }

    fn create_locked(
        dir: &Path,
        key: &KeySource,
        material: Material,
        opts: CreateOptions,
        lock: Box<dyn LockGuard>,
    ) -> Result<Store> {
        let vfs = opts.store.vfs.clone();
        let mut db_id = [0u8; DB_ID_LEN];
        crate::crypto::random_bytes(&mut db_id)?;
        let spec = match &material {
            Material::Key(_) => MasterSpec::Key,
            Material::Passphrase(_) => {
                let mut salt = [0u8; 16];
                crate::crypto::random_bytes(&mut salt)?;
                MasterSpec::Passphrase { params: opts.argon2, salt }
            }
        };
        let master = master_for(&material, &spec)?.ok_or_else(|| Error::KeySource("key material mismatch".into()))?;
        drop(material);
        let header = KeyringHeader {
            version: keyring::KEYRING_VERSION,
            db_id,
            generation: 0,
            write_salt: [0; 32],
            active: MasterCheck { version: 1, spec, kcv: keyring::key_check_value(&master, &db_id) },
            retired: Vec::new(),
            public: PublicManifest::default(),
        };
        let now = now_unix();
        let body = KeyringBody {
            next_id: 1,
            created_unix: now,
            masters: vec![MasterRecord { version: 1, created_unix: now, state: MasterState::Active, first_file_id: 0 }],
            files: Vec::new(),
            root: Vec::new(),
            rotation: None,
            audit: Default::default(),
        };
        let store = Store {
            session: session_token()?,
            dir: dir.to_path_buf(),
            opts: opts.store,
            db_id,
            inner: Mutex::new(Inner::new(header, body.clone(), master)),
            recovery: Vec::new(),
            abandoned: Abandoned::default(),
            _lock: Some(lock),
        };
        {
            let mut inner = store.lock_inner();
            store.persist(&mut inner, body)?;
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            vfs.sync_dir(parent).map_err(|e| Error::io("syncing directory", parent, e))?;
        }
        let kind = match &spec {
            MasterSpec::Key => "key",
            MasterSpec::Passphrase { .. } => "passphrase",
        };
        store.audit_event(
            "database-created",
            format!("{{\"master_version\":1,\"master_kind\":\"{kind}\",\"key_source\":{}}}", json_str(&key.describe())),
        )?;
        Ok(store)
    }

    /// Open an existing database. A wrong key fails before anything is written.
    pub fn open(dir: impl AsRef<Path>, key: &KeySource, opts: StoreOptions) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        let vfs = opts.vfs.clone();
        let kr_path = dir.join(KEYRING_FILE);
        if !vfs.exists(&kr_path).map_err(|e| Error::io("checking", &kr_path, e))? {
            return Err(missing_keyring(vfs.as_ref(), &dir));
        }
        // Lock before reading when the lock file exists. When it does not
        // (a restored copy), it is created only once the key is verified, so
        // a wrong key never writes anything.
        let lock_exists =
            vfs.exists(&dir.join(LOCK_FILE)).map_err(|e| Error::io("checking", dir.join(LOCK_FILE), e))?;
        let mut lock = if lock_exists { Some(take_lock(vfs.as_ref(), &dir, !opts.read_only)?) } else { None };
        let bytes = read_keyring_bytes(vfs.as_ref(), &kr_path)?;
        if let Some(v) = keyring::format_version_of(&bytes)
            && !(keyring::KEYRING_VERSION_MIN..=keyring::KEYRING_VERSION).contains(&v)
        {
            return Err(Error::UnsupportedVersion {
                file: KEYRING_FILE.into(),
                found: v,
                supported: keyring::KEYRING_VERSION,
            });
        }
        let sealed =
            keyring::decode_keyring(&bytes).map_err(|e| Error::corrupted(KEYRING_FILE, e.offset as u64, e.reason))?;
        let material = key.material()?;
        let header = sealed.header.clone();
        let cap = opts.max_kdf_memory_kib;
        if let MasterSpec::Passphrase { params, .. } = &header.active.spec
            && matches!(material, Material::Passphrase(_))
            && params.m_cost_kib > cap
        {
            return Err(Error::KeySource(format!(
                "the keyring asks for {} MiB of Argon2id memory to derive the key, more than the {} MiB allowed; if you set that cost yourself, allow it (--max-kdf-memory-mib, StoreOptions::max_kdf_memory_kib)",
                params.m_cost_kib / 1024,
                cap / 1024
            )));
        }
        let master = match master_for(&material, &header.active.spec)? {
            Some(m) if ct_eq(&keyring::key_check_value(&m, &header.db_id), &header.active.kcv) => m,
            candidate => {
                // Newest first; at most a few Argon2 runs, whatever the header says.
                let mut argon_runs = 0;
                for r in header.retired.iter().rev() {
                    if let MasterSpec::Passphrase { params, .. } = &r.spec {
                        if argon_runs == MAX_RETIRED_ARGON2_RUNS || params.m_cost_kib > cap {
                            continue;
                        }
                        if matches!(material, Material::Passphrase(_)) {
                            argon_runs += 1;
                        }
                    }
                    if let Some(m) = master_for(&material, &r.spec)?
                        && ct_eq(&keyring::key_check_value(&m, &header.db_id), &r.kcv)
                    {
                        log::warn!(
                            target: "driftdb::keys",
                            "failed unlock of {}: the {} is master key version {}, retired by a rotation",
                            dir.display(),
                            key.describe(),
                            r.version
                        );
                        return Err(Error::KeyRetired { version: r.version });
                    }
                }
                log::warn!(
                    target: "driftdb::keys",
                    "failed unlock of {}: the {} does not open it (nothing was written)",
                    dir.display(),
                    key.describe()
                );
                return Err(Error::WrongKey(match (candidate, &header.active.spec) {
                    (None, MasterSpec::Passphrase { .. }) => {
                        "this database is unlocked with a passphrase, but a key was given".into()
                    }
                    (None, MasterSpec::Key) => format!(
                        "this database is unlocked with a key (file, variable or command), but a {} was given",
                        key.describe()
                    ),
                    (Some(_), _) => format!(
                        "the {} does not open this database (master key version {})",
                        key.describe(),
                        header.active.version
                    ),
                }));
            }
        };
        drop(material);
        let plain = keyring::open_keyring(&sealed, &master).map_err(|_| {
            Error::tampered(KEYRING_FILE, sealed.header_bytes.len() as u64, "keyring body failed authentication")
        })?;
        let body = KeyringBody::decode(&plain)
            .map_err(|e| Error::corrupted(KEYRING_FILE, (sealed.header_bytes.len() + e.offset) as u64, e.reason))?;
        drop(plain);
        if header.version >= 3 {
            if header.public.files != keyring::public_files(&body.files) {
                return Err(Error::tampered(KEYRING_FILE, 0, "the public manifest differs from the encrypted one"));
            }
            if header.public.id_mark != body.next_id {
                return Err(Error::tampered(KEYRING_FILE, 0, "the public id mark differs from the encrypted one"));
            }
        }
        if let Some(expected) = opts.expect_generation
            && header.generation < expected
        {
            return Err(Error::RolledBack { found: header.generation, expected });
        }
        if lock.is_none() && !opts.read_only {
            lock = Some(take_lock(vfs.as_ref(), &dir, true)?);
            if read_keyring_bytes(vfs.as_ref(), &kr_path)? != bytes {
                return Err(Error::InUse { path: dir });
            }
        }
        let mut store = Store {
            session: session_token()?,
            dir,
            db_id: header.db_id,
            opts,
            inner: Mutex::new(Inner::new(header, body, master)),
            recovery: Vec::new(),
            abandoned: Abandoned::default(),
            _lock: lock,
        };
        if !store.opts.read_only {
            store.recovery = store.recover()?;
            // Merging is housekeeping: an I/O failure (a full disk, say) must
            // not keep the database from opening. Integrity errors do.
            match store.merge_small_files() {
                Ok(merged) => store.recovery.extend(merged),
                Err(e) if e.is_integrity() => return Err(e),
                Err(e) => store.recovery.push(RecoveryEvent::MergeSkipped { reason: e.to_string() }),
            }
            for e in &store.recovery {
                match e {
                    RecoveryEvent::Merged { .. } => {
                        log::info!(target: "driftdb::recovery", "{}: {e}", store.dir.display())
                    }
                    _ => log::warn!(target: "driftdb::recovery", "{}: {e}", store.dir.display()),
                }
            }
        }
        Ok(store)
    }

    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Write `body` as the new keyring: temp file, fsync, rename, fsync
    /// directory. It records the audit head of the last paired write (see
    /// [`Store::persist_paired`]), never entries appended since.
    fn persist(&self, inner: &mut Inner, body: KeyringBody) -> Result<()> {
        let header = inner.header.clone();
        self.persist_as(inner, header, body, None, false)
    }

    /// [`Store::persist`] that also commits the audit entries appended since
    /// the last paired write: the key event they describe and its record in
    /// the log take effect together, or (the write failing) neither does.
    fn persist_paired(&self, inner: &mut Inner, body: KeyringBody) -> Result<()> {
        let header = inner.header.clone();
        self.persist_as(inner, header, body, None, true)
    }

    /// [`Store::persist`] with a new header and, for a rotation, a new master
    /// key (which replaces the old one in memory once the keyring is durable).
    /// Any failure latches the store: the in-memory state may be ahead of
    /// the keyring on disk, so nothing more is written until it is reopened.
    fn persist_as(
        &self,
        inner: &mut Inner,
        header: KeyringHeader,
        body: KeyringBody,
        new_master: Option<SecretKey>,
        pair_audit: bool,
    ) -> Result<()> {
        self.check_writable(inner)?;
        // Callers change their bookkeeping (files being written or removed,
        // audit entries) before this write: whatever makes it fail, the
        // store must not go on as if it had happened, or had not.
        let r = self.persist_unlatched(inner, header, body, new_master, pair_audit);
        if let Err(e) = &r {
            Self::poison(inner, e);
        }
        r
    }

    fn persist_unlatched(
        &self,
        inner: &mut Inner,
        mut header: KeyringHeader,
        mut body: KeyringBody,
        new_master: Option<SecretKey>,
        pair_audit: bool,
    ) -> Result<()> {
        if body.files.len() > keyring::MAX_FILES {
            return Err(Error::InvalidArgument(format!(
                "the manifest would list {} files, more than the {} allowed",
                body.files.len(),
                keyring::MAX_FILES
            )));
        }
        let vfs = &self.opts.vfs;
        // Files given up since the last write were unlinked: that is made
        // durable before the keyring stops listing them as being written
        // (else a crash could bring back a file nothing explains).
        let abandoned = std::mem::take(&mut *self.abandoned.lock().unwrap_or_else(|p| p.into_inner()));
        if !abandoned.is_empty() {
            if vfs.sync_dir(&self.dir).is_ok() {
                for id in &abandoned {
                    inner.building.remove(id);
                }
            } else {
                self.abandoned.lock().unwrap_or_else(|p| p.into_inner()).extend(abandoned);
            }
        }
        header.version = keyring::KEYRING_VERSION;
        header.generation = inner.header.generation + 1;
        header.public = PublicManifest {
            id_mark: body.next_id,
            files: Vec::new(), // derived from the body by the encoder
            building: inner.building.iter().map(|(id, k)| (*id, *k)).collect(),
            removed: inner.removed.iter().map(|(id, k)| (*id, *k)).collect(),
        };
        body.audit = if pair_audit { inner.audit_tail } else { inner.body.audit };
        crate::crypto::random_bytes(&mut header.write_salt)?;
        let master = new_master.as_ref().unwrap_or(&inner.master);
        let bytes = keyring::encode_keyring(&header, &body, master).map_err(|_| {
            Error::InvalidArgument(format!("the keyring would exceed its {}-byte limit", keyring::MAX_KEYRING_FILE))
        })?;
        let tmp = self.dir.join(KEYRING_TMP);
        let dst = self.dir.join(KEYRING_FILE);
        let written = vfs.open(&tmp, OpenMode::Truncate).and_then(|f| {
            f.write_all_at(&bytes, 0)?;
            f.sync_data()
        });
        if let Err(e) = written {
            // The old keyring is untouched, but this session's state is now
            // ahead of it (ids, files being written, audit entries).
            let _ = vfs.remove_file(&tmp);
            return Err(Error::io("writing", tmp, e));
        }
        if let Err(e) = vfs.rename(&tmp, &dst).and_then(|()| vfs.sync_dir(&self.dir)) {
            return Err(Error::io("replacing", dst, e));
        }
        header.public.files = keyring::public_files(&body.files);
        inner.header = header;
        inner.body = body;
        inner.legacy = false;
        if let Some(m) = new_master {
            inner.wrap_key = keyring::wrap_key(&m, &inner.header.db_id);
            inner.master = m;
        }
        Ok(())
    }

    /// Delete files removed from the manifest, then sync the directory; the
    /// ones whose deletion is durable leave the keyring's list of removed
    /// files with its next write. Failures are logged and the files stay
    /// listed (the next open, or [`Store::finish_rotation`], tries again).
    fn delete_removed(&self, inner: &mut Inner, ids: &[u64]) -> Result<()> {
        let vfs = &self.opts.vfs;
        let mut gone = Vec::new();
        let mut failure = None;
        for id in ids {
            let Some(kind) = inner.removed.get(id).copied() else { continue };
            let p = self.dir.join(file_name(*id, kind));
            match vfs.remove_file(&p) {
                Ok(()) => gone.push(*id),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => gone.push(*id),
                Err(e) => {
                    log::warn!(target: "driftdb::storage", "cannot delete {}: {e}", p.display());
                    failure.get_or_insert(Error::io("removing", p, e));
                }
            }
        }
        if !gone.is_empty() {
            match vfs.sync_dir(&self.dir) {
                Ok(()) => {
                    for id in gone {
                        inner.removed.remove(&id);
                    }
                }
                Err(e) => {
                    log::warn!(target: "driftdb::storage", "cannot sync {}: {e}", self.dir.display());
                    failure.get_or_insert(Error::io("syncing directory", &self.dir, e));
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    fn frame_key(&self, inner: &mut Inner, e: &FileEntry) -> Result<Arc<FrameKey>> {
        if let Some(k) = inner.keys.get(&e.file_id) {
            return Ok(k.clone());
        }
        let name = file_name(e.file_id, e.kind);
        if e.wrapped.kek_version != inner.header.active.version {
            return Err(Error::tampered(
                KEYRING_FILE,
                0,
                format!(
                    "data key of {name} is wrapped under master version {}, not the active one",
                    e.wrapped.kek_version
                ),
            ));
        }
        let dek = keyring::unwrap_dek(&inner.wrap_key, &self.db_id, e)
            .map_err(|_| Error::tampered(KEYRING_FILE, 0, format!("data key of {name} failed to unwrap")))?;
        let k = Arc::new(FrameKey::derive(
            &dek,
            &self.db_id,
            &FileHeader::new(e.kind, e.file_id, e.key_id),
            self.opts.backend,
        ));
        inner.keys.insert(e.file_id, k.clone());
        Ok(k)
    }

    /// Start a new file: fresh random data key, header written and synced.
    /// `building`: a write-once file, recorded as being written before it
    /// is created (a stream file is listed before its first record instead).
    fn new_file(
        &self,
        inner: &mut Inner,
        kind: FileKind,
        stream: u32,
        ordinal: u64,
        meta: Vec<u8>,
        building: bool,
    ) -> Result<(FileWriter, FileEntry, PathBuf)> {
        let r = self.reserve_file(inner, kind, stream, ordinal, meta, building)?;
        let w = match FileWriter::create(self.opts.vfs.as_ref(), &r.path, r.name, r.header, r.key.clone()) {
            Ok(w) => w,
            Err(e) => {
                if building {
                    abandon(&self.abandoned, self.opts.vfs.as_ref(), &r.path, r.entry.file_id);
                }
                return Err(e);
            }
        };
        inner.keys.insert(r.entry.file_id, r.key);
        Ok((w, r.entry, r.path))
    }

    /// A new file's id, data key (wrapped) and header, not created yet. The
    /// id is below the keyring's mark before this returns (the mark moves
    /// ahead [`ID_RESERVE`] ids at a time), and a write-once file is
    /// recorded as being written.
    fn reserve_file(
        &self,
        inner: &mut Inner,
        kind: FileKind,
        stream: u32,
        ordinal: u64,
        meta: Vec<u8>,
        building: bool,
    ) -> Result<Reserved> {
        self.check_writable(inner)?;
        let file_id = inner.alloc;
        let key_id = file_id + 1;
        let bump = file_id + 2 > inner.body.next_id;
        if bump || building {
            let mut body = inner.body.clone();
            if bump {
                body.next_id = file_id + 2 + ID_RESERVE;
            }
            if building {
                inner.building.insert(file_id, kind);
            }
            self.persist(inner, body)?;
        }
        inner.alloc += 2;
        let dek = SecretKey::random()?;
        let header = FileHeader::new(kind, file_id, key_id);
        let wrapped =
            keyring::wrap_dek(&inner.wrap_key, inner.header.active.version, &self.db_id, file_id, key_id, kind, &dek)?;
        let fk = Arc::new(FrameKey::derive(&dek, &self.db_id, &header, self.opts.backend));
        let name = file_name(file_id, kind);
        let path = self.dir.join(&name);
        let entry = FileEntry { file_id, kind, key_id, wrapped, state: FileState::Active, stream, ordinal, meta };
        Ok(Reserved { entry, path, name, header, key: fk })
    }

    fn next_ordinal(inner: &Inner, stream: u32) -> u64 {
        inner.body.files.iter().filter(|f| f.stream == stream).map(|f| f.ordinal + 1).max().unwrap_or(0)
    }

    /// Records that may be appended to a stream of `kind` files.
    fn check_records(kind: FileKind, payloads: &[&[u8]]) -> Result<()> {
        if let Some(p) = payloads.iter().find(|p| p.len() > MAX_PAYLOAD) {
            return Err(Error::InvalidArgument(format!(
                "record of {} bytes exceeds the {MAX_PAYLOAD}-byte limit",
                p.len()
            )));
        }
        if kind == FileKind::Keyring {
            return Err(Error::InvalidArgument("the keyring is not a stream".into()));
        }
        Ok(())
    }

    /// Append a record to `stream` (files of `kind`). Rolls to a new file
    /// (with a new data key) when the current one is full; the first append
    /// of a session always starts a new file. Not durable until [`Store::sync`].
    pub fn append(&self, stream: u32, kind: FileKind, payload: &[u8]) -> Result<RecordPos> {
        Self::check_records(kind, &[payload])?;
        let mut guard = self.lock_inner();
        self.append_locked(&mut guard, stream, kind, payload)
    }

    /// Append several records to a stream, in order: written together when
    /// they fit in its current file, else one by one (rolling files as
    /// [`Store::append`] does).
    pub fn append_many(&self, stream: u32, kind: FileKind, payloads: &[&[u8]]) -> Result<Vec<RecordPos>> {
        Self::check_records(kind, payloads)?;
        let mut guard = self.lock_inner();
        let inner = &mut *guard;
        self.check_writable(inner)?;
        let total: u64 = payloads.iter().map(|p| FileWriter::frame_len(p.len())).sum();
        let fin = FileWriter::frame_len(crate::format::frame::FINAL_PAYLOAD_LEN);
        let (segment_size, max_frames) = (self.opts.segment_size, self.opts.max_frames_per_file);
        match inner.writers.get_mut(&stream) {
            Some(w)
                if w.header.kind == kind
                    && payloads.len() > 1
                    && w.offset + total + fin <= segment_size
                    && w.indexes_used() + payloads.len() as u64 + 3 < max_frames =>
            {
                let file_id = w.header.file_id;
                match w.append_many(payloads) {
                    Ok(v) => Ok(v.into_iter().map(|(index, offset)| RecordPos { file_id, index, offset }).collect()),
                    Err(e) => {
                        Self::poison(inner, &e);
                        Err(e)
                    }
                }
            }
            _ => payloads.iter().map(|p| self.append_locked(inner, stream, kind, p)).collect(),
        }
    }

    fn append_locked(&self, inner: &mut Inner, stream: u32, kind: FileKind, payload: &[u8]) -> Result<RecordPos> {
        self.check_writable(inner)?;
        let need_roll = match inner.writers.get(&stream) {
            None => true,
            Some(w) => {
                if w.header.kind != kind {
                    return Err(Error::InvalidArgument(format!(
                        "stream {stream} holds {:?} files, not {kind:?}",
                        w.header.kind
                    )));
                }
                let fin = FileWriter::frame_len(crate::format::frame::FINAL_PAYLOAD_LEN);
                (w.frames() > 0 && w.offset + FileWriter::frame_len(payload.len()) + fin > self.opts.segment_size)
                    || w.indexes_used() + 3 >= self.opts.max_frames_per_file
            }
        };
        if need_roll {
            if let Some(mut w) = inner.writers.remove(&stream) {
                self.seal_writer(inner, &mut w)?;
            }
            let ordinal = Self::next_ordinal(inner, stream);
            let (w, entry, _) = self.new_file(inner, kind, stream, ordinal, Vec::new(), false)?;
            let mut body = inner.body.clone();
            body.files.push(entry);
            // On failure the store is latched and the new keyring may or may
            // not list the file: it stays (the next open tells which).
            self.persist(inner, body)?;
            inner.writers.insert(stream, w);
        }
        let Some(w) = inner.writers.get_mut(&stream) else {
            return Err(Error::InvalidArgument("no writer".into()));
        };
        match w.append(payload) {
            Ok((index, offset)) => Ok(RecordPos { file_id: w.header.file_id, index, offset }),
            Err(e) => {
                Self::poison(inner, &e);
                Err(e)
            }
        }
    }

    /// Make every appended record durable. After a failure the store refuses
    /// further writes (reopen to recover).
    pub fn sync(&self) -> Result<()> {
        let mut guard = self.lock_inner();
        let inner = &mut *guard;
        if let Some(p) = &inner.poisoned {
            return Err(Error::Poisoned(p.clone()));
        }
        let mut failure = None;
        for w in inner.writers.values_mut() {
            if let Err(e) = w.sync() {
                failure = Some(e);
                break;
            }
        }
        if let Some(e) = failure {
            Self::poison(inner, &e);
            return Err(e);
        }
        Ok(())
    }

    /// Make the records appended to `stream` durable. The fsync runs without
    /// holding the store's lock, so readers and other streams' writers go on
    /// meanwhile. After a failure the store refuses further writes.
    pub fn sync_stream(&self, stream: u32) -> Result<()> {
        let (file, covered, file_id) = {
            let guard = self.lock_inner();
            if let Some(p) = &guard.poisoned {
                return Err(Error::Poisoned(p.clone()));
            }
            let Some(w) = guard.writers.get(&stream) else { return Ok(()) };
            match w.begin_sync()? {
                Some((f, covered)) => (f, covered, w.header.file_id),
                None => return Ok(()),
            }
        };
        let outcome = file.sync_data();
        let mut guard = self.lock_inner();
        let inner = &mut *guard;
        let same = inner.writers.get(&stream).is_some_and(|w| w.header.file_id == file_id);
        if !same {
            // Sealed meanwhile (sealing synced it); a failure still counts.
            return match outcome {
                Ok(()) => Ok(()),
                Err(e) => {
                    let err = Error::io("syncing", self.dir.join(file_name(file_id, FileKind::Wal)), e);
                    Self::poison(inner, &err);
                    Err(err)
                }
            };
        }
        let Some(w) = inner.writers.get_mut(&stream) else { return Ok(()) };
        if let Err(e) = w.end_sync(covered, outcome) {
            Self::poison(inner, &e);
            return Err(e);
        }
        Ok(())
    }

    fn seal_writer(&self, inner: &mut Inner, w: &mut FileWriter) -> Result<()> {
        let (frames, len) = match w.finish() {
            Ok(x) => x,
            Err(e) => {
                Self::poison(inner, &e);
                return Err(e);
            }
        };
        let mut body = inner.body.clone();
        if let Some(e) = body.files.iter_mut().find(|e| e.file_id == w.header.file_id) {
            e.state = FileState::Sealed { frames, len, final_frame: true };
        }
        self.persist(inner, body)
    }

    /// Seal the current file of `stream`, if any; the next append starts a new one.
    pub fn seal_stream(&self, stream: u32) -> Result<()> {
        let mut guard = self.lock_inner();
        let inner = &mut *guard;
        if let Some(mut w) = inner.writers.remove(&stream) {
            self.seal_writer(inner, &mut w)?;
        }
        Ok(())
    }

    /// Seal every active file and release the store.
    pub fn close(self) -> Result<()> {
        self.close_inner()
    }

    /// [`Store::close`] through a shared reference: seal every active file;
    /// afterwards every write is refused.
    pub fn close_shared(&self) -> Result<()> {
        self.close_inner()
    }

    fn close_inner(&self) -> Result<()> {
        let mut guard = self.lock_inner();
        let inner = &mut *guard;
        if inner.closed || self.opts.read_only || inner.poisoned.is_some() {
            // After a failure nothing more is written: the next open recovers.
            inner.closed = true;
            return Ok(());
        }
        let streams: Vec<u32> = inner.writers.keys().copied().collect();
        for s in streams {
            if let Some(mut w) = inner.writers.remove(&s) {
                self.seal_writer(inner, &mut w)?;
            }
        }
        inner.closed = true;
        Ok(())
    }

    /// Start a write-once file.
    pub fn build_file(&self, kind: FileKind, stream: u32, meta: Vec<u8>) -> Result<FileBuilder<'_>> {
        if meta.len() > keyring::MAX_FILE_META {
            return Err(Error::InvalidArgument("file metadata too large".into()));
        }
        if kind == FileKind::Keyring {
            return Err(Error::InvalidArgument("the keyring is not a data file".into()));
        }
        let r = {
            let mut guard = self.lock_inner();
            let inner = &mut *guard;
            let ordinal = Self::next_ordinal(inner, stream);
            self.reserve_file(inner, kind, stream, ordinal, meta, true)?
        };
        // The header is written and synced without the store's lock held
        // (appends and WAL syncs go on meanwhile): the file is nobody
        // else's until it is committed.
        let writer = match FileWriter::create(self.opts.vfs.as_ref(), &r.path, r.name, r.header, r.key.clone()) {
            Ok(w) => w,
            Err(e) => {
                abandon(&self.abandoned, self.opts.vfs.as_ref(), &r.path, r.entry.file_id);
                return Err(e);
            }
        };
        self.lock_inner().keys.insert(r.entry.file_id, r.key);
        Ok(FileBuilder::new(self, writer, r.entry, r.path))
    }

    /// Apply an [`Edit`] atomically: after a crash either all of it is in
    /// the manifest or none of it.
    pub fn commit(&self, edit: Edit) -> Result<()> {
        let mut guard = self.lock_inner();
        self.commit_locked(&mut guard, edit, false, None)
    }

    /// [`Store::commit`] with the lock held. `keep_readable`: removed files
    /// stay on disk and readable until [`Store::release`]d. `audit`: a key
    /// event recorded in the same keyring write.
    fn commit_locked(
        &self,
        inner: &mut Inner,
        mut edit: Edit,
        keep_readable: bool,
        audit: Option<(&str, String)>,
    ) -> Result<()> {
        self.check_writable(inner)?;
        for p in &edit.add {
            if p.owner != self.session {
                return Err(Error::InvalidArgument("the pending file belongs to another store".into()));
            }
            if inner.body.files.iter().any(|f| f.file_id == p.entry.file_id) {
                return Err(Error::InvalidArgument(format!("file {:016x} is already committed", p.entry.file_id)));
            }
            if let Some(r) = inner.body.rotation.filter(|r| r.finished_unix == 0)
                && p.entry.file_id < r.mark
            {
                return Err(Error::InvalidArgument(format!(
                    "file {:016x} was started before the running re-encryption, under a data key it is replacing; write it again",
                    p.entry.file_id
                )));
            }
            if p.entry.wrapped.kek_version != inner.header.active.version {
                return Err(Error::InvalidArgument(format!(
                    "file {:016x} was started under master key version {}, replaced since; write it again",
                    p.entry.file_id, p.entry.wrapped.kek_version
                )));
            }
        }
        for id in &edit.remove {
            if inner.writers.values().any(|w| w.header.file_id == *id) {
                return Err(Error::InvalidArgument(format!("file {id:016x} is being written")));
            }
            if !inner.body.files.iter().any(|f| f.file_id == *id) {
                return Err(Error::NotFound(format!("file {id:016x}")));
            }
        }
        if let Some((kind, detail)) = audit.as_ref() {
            self.audit_locked(inner, kind, detail.clone())?;
        }
        let mut body = inner.body.clone();
        let removed: Vec<FileEntry> = body.files.iter().filter(|f| edit.remove.contains(&f.file_id)).cloned().collect();
        body.files.retain(|f| !edit.remove.contains(&f.file_id));
        for p in &edit.add {
            body.files.push(p.entry.clone());
        }
        if let Some(r) = edit.root.take() {
            if r.len() > keyring::MAX_ROOT {
                return Err(Error::InvalidArgument("root too large".into()));
            }
            body.root = r;
        }
        // The added files leave the files being written and the removed ones
        // join the files removed, in the same keyring write.
        for p in &edit.add {
            inner.building.remove(&p.entry.file_id);
        }
        for e in &removed {
            inner.removed.insert(e.file_id, e.kind);
        }
        let written = if audit.is_some() { self.persist_paired(inner, body) } else { self.persist(inner, body) };
        if let Err(e) = written {
            // The store is latched; the new keyring may be on disk: the next
            // open sorts it out (it knows every file involved).
            for p in &mut edit.add {
                p.committed = true;
            }
            return Err(e);
        }
        for p in &mut edit.add {
            p.committed = true;
        }
        let mut delete = Vec::new();
        for e in removed {
            if keep_readable {
                inner.retiring.insert(e.file_id, e);
                continue;
            }
            inner.keys.remove(&e.file_id);
            delete.push(e.file_id);
        }
        // The change is durable; a deletion that fails is retried later.
        let _ = self.delete_removed(inner, &delete);
        Ok(())
    }

    /// Delete a file replaced by an edit that kept it readable.
    pub fn release(&self, file_id: u64) {
        let mut guard = self.lock_inner();
        let inner = &mut *guard;
        if inner.retiring.remove(&file_id).is_some() {
            inner.keys.remove(&file_id);
            let _ = self.delete_removed(inner, &[file_id]);
        }
    }

    /// Replace the application root atomically.
    pub fn set_root(&self, root: Vec<u8>) -> Result<()> {
        self.commit(Edit { root: Some(root), ..Edit::default() })
    }

    fn entry(&self, inner: &Inner, file_id: u64) -> Result<FileEntry> {
        inner
            .body
            .files
            .iter()
            .find(|f| f.file_id == file_id)
            .or_else(|| inner.retiring.get(&file_id))
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("file {file_id:016x} is not in the manifest")))
    }

    /// Read every record of a live file, verifying each frame (CRC, then
    /// authentication), the sealing frame and the manifest's length and count.
    pub fn read_file(
        &self,
        file_id: u64,
        mut visit: impl FnMut(RecordPos, &[u8]) -> Result<()>,
    ) -> Result<ScanOutcome> {
        let (entry, key, expect) = {
            let mut guard = self.lock_inner();
            let inner = &mut *guard;
            let entry = self.entry(inner, file_id)?;
            let key = self.frame_key(inner, &entry)?;
            let expect = match (entry.state, inner.writers.values().find(|w| w.header.file_id == file_id)) {
                (_, Some(w)) => Expect::Live { len: w.offset },
                (FileState::Sealed { frames, len, final_frame }, None) => Expect::Sealed { frames, len, final_frame },
                (FileState::Active, None) => Expect::Recovering,
            };
            (entry, key, expect)
        };
        let name = file_name(entry.file_id, entry.kind);
        let path = self.dir.join(&name);
        let f = match self.opts.vfs.open(&path, OpenMode::Read) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let still_listed = self.lock_inner().body.files.iter().any(|f| f.file_id == file_id);
                return Err(if still_listed {
                    Error::tampered(&name, 0, "file listed in the manifest is missing")
                } else {
                    Error::NotFound(format!("{name} was replaced by a concurrent change; read again"))
                });
            }
            Err(e) => return Err(Error::io("opening", &path, e)),
        };
        let hdr = FileHeader::new(entry.kind, entry.file_id, entry.key_id);
        let out = scan(f.as_ref(), &name, Some(&hdr), Some(&key), expect, |index, offset, p| {
            visit(RecordPos { file_id, index, offset }, p)
        })?;
        if let Some((off, why)) = &out.torn {
            return Err(Error::corrupted(&name, *off, format!("torn tail not yet recovered: {why}")));
        }
        Ok(out)
    }

    /// Read every record of a stream, file by file in stream order.
    pub fn read_stream(&self, stream: u32, mut visit: impl FnMut(RecordPos, &[u8]) -> Result<()>) -> Result<()> {
        for f in self.stream_files(stream) {
            self.read_file(f.file_id, &mut visit)?;
        }
        Ok(())
    }

    /// Read one record by position.
    pub fn read_record(&self, pos: RecordPos) -> Result<Vec<u8>> {
        let (entry, key, limit) = {
            let mut guard = self.lock_inner();
            let inner = &mut *guard;
            let entry = self.entry(inner, pos.file_id)?;
            let key = self.frame_key(inner, &entry)?;
            let limit = match (entry.state, inner.writers.values().find(|w| w.header.file_id == pos.file_id)) {
                (_, Some(w)) => w.offset,
                (FileState::Sealed { len, .. }, None) => len,
                (FileState::Active, None) => u64::MAX,
            };
            (entry, key, limit)
        };
        let name = file_name(entry.file_id, entry.kind);
        let path = self.dir.join(&name);
        let f = match self.opts.vfs.open(&path, OpenMode::Read) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let still_listed = self.lock_inner().body.files.iter().any(|f| f.file_id == pos.file_id);
                return Err(if still_listed {
                    Error::tampered(&name, 0, "file listed in the manifest is missing")
                } else {
                    Error::NotFound(format!("{name} was replaced by a concurrent change; read again"))
                });
            }
            Err(e) => return Err(Error::io("opening", &path, e)),
        };
        let mut hdr = [0u8; crate::format::frame::FRAME_HEADER_LEN];
        f.read_exact_at(&mut hdr, pos.offset)
            .map_err(|_| Error::corrupted(&name, pos.offset, "record position past the end of the file"))?;
        let (len, _, _) = crate::format::frame::decode_frame_header(&hdr)
            .map_err(|e| Error::corrupted(&name, pos.offset, e.to_string()))?;
        let total = hdr.len() + len;
        if pos.offset.saturating_add(total as u64) > limit {
            return Err(Error::corrupted(&name, pos.offset, "record extends past the end of the file"));
        }
        let mut buf = vec![0u8; total];
        f.read_exact_at(&mut buf, pos.offset).map_err(|e| Error::io("reading", &path, e))?;
        let raw =
            crate::format::frame::decode_frame(&buf).map_err(|e| Error::corrupted(&name, pos.offset, e.to_string()))?;
        if raw.is_last() {
            return Err(Error::corrupted(&name, pos.offset, "position names the final frame, not a record"));
        }
        key.open(pos.index, &raw)
            .map_err(|_| Error::tampered(&name, pos.offset, format!("frame {} failed authentication", pos.index)))
    }

    /// Recovery at open: check every listed file is present with its
    /// recorded length, scan files left active by a crash, classify every
    /// file the manifest does not list (see [`crate::storage::strays`]), and
    /// only when all of that passed: remove the known leftovers, quarantine
    /// the unexplained, cut torn tails and seal the crash-left files through
    /// the manifest. A check that fails changes nothing on disk.
    fn recover(&self) -> Result<Vec<RecoveryEvent>> {
        use crate::storage::strays::{self, Known, Stray};
        let vfs = self.opts.vfs.clone();
        let mut events = Vec::new();
        let mut guard = self.lock_inner();
        let inner = &mut *guard;
        let names = vfs.read_dir(&self.dir).map_err(|e| Error::io("listing", &self.dir, e))?;
        let live: HashMap<u64, FileKind> = inner.body.files.iter().map(|f| (f.file_id, f.kind)).collect();

        // Phase 1: checks only.
        let mut torn_cuts = Vec::new();
        let mut new_states = Vec::new();
        let entries = inner.body.files.clone();
        for e in &entries {
            let name = file_name(e.file_id, e.kind);
            let path = self.dir.join(&name);
            let f = match vfs.open(&path, OpenMode::Read) {
                Ok(f) => f,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::tampered(&name, 0, "file listed in the manifest is missing"));
                }
                Err(err) => return Err(Error::io("opening", &path, err)),
            };
            match e.state {
                FileState::Sealed { len, .. } => {
                    let actual = f.len().map_err(|err| Error::io("reading length of", &path, err))?;
                    if actual != len {
                        return Err(Error::tampered(
                            &name,
                            actual.min(len),
                            format!("file is {actual} bytes, the manifest says {len}"),
                        ));
                    }
                }
                FileState::Active => {
                    let key = self.frame_key(inner, e)?;
                    let hdr = FileHeader::new(e.kind, e.file_id, e.key_id);
                    let out = scan(f.as_ref(), &name, Some(&hdr), Some(&key), Expect::Recovering, |_, _, _| Ok(()))?;
                    if let Some((off, why)) = &out.torn {
                        torn_cuts.push((path.clone(), name.clone(), *off, why.clone()));
                    }
                    new_states.push((e.file_id, e.kind, name, path, out));
                }
            }
        }
        let known = Known {
            live: live.clone(),
            building: inner.building.clone(),
            removed: inner.removed.clone(),
            mark: (!inner.legacy).then_some(inner.body.next_id),
        };
        let strays = strays::classify(vfs.as_ref(), &self.dir, &names, &known)?;
        if let Some(Stray::Evidence { name, why }) = strays.iter().find(|s| matches!(s, Stray::Evidence { .. })) {
            let more = strays.iter().filter(|s| matches!(s, Stray::Evidence { .. })).count() - 1;
            return Err(Error::tampered(
                name,
                0,
                format!(
                    "{why}{}; nothing was changed: put the right keyring back, or move the file out of the data directory (into {}/) to open without it",
                    if more > 0 {
                        format!(" (and {more} more such files: see `driftdb verify`)")
                    } else {
                        String::new()
                    },
                    strays::QUARANTINE_DIR
                ),
            ));
        }

        // Phase 2: changes.
        let mut dir_changed = false;
        if names.iter().any(|n| n == KEYRING_TMP) {
            let p = self.dir.join(KEYRING_TMP);
            vfs.remove_file(&p).map_err(|e| Error::io("removing", &p, e))?;
            dir_changed = true;
        }
        // A leftover that cannot be removed (or set aside) stays where it
        // is, and listed: the next open tries again. It blocks nothing.
        let mut kept = std::collections::HashSet::new();
        for st in strays {
            let id = match &st {
                Stray::Leftover { name, .. } | Stray::Quarantine { name, .. } | Stray::Evidence { name, .. } => {
                    parse_file_name(name).map(|(id, _)| id)
                }
            };
            match st {
                Stray::Leftover { name, why } => {
                    let p = self.dir.join(&name);
                    if let Err(e) = vfs.remove_file(&p) {
                        log::warn!(target: "driftdb::recovery", "cannot remove {}: {e}", p.display());
                        kept.extend(id);
                        continue;
                    }
                    dir_changed = true;
                    match id {
                        Some(id) if inner.building.contains_key(&id) || inner.removed.contains_key(&id) => {
                            events.push(RecoveryEvent::RemovedLeftover { file: name, reason: why });
                        }
                        _ => events.push(RecoveryEvent::RemovedOrphan { file: name }),
                    }
                }
                Stray::Quarantine { name, why } => match strays::quarantine(vfs.as_ref(), &self.dir, &name) {
                    Ok(to) => events.push(RecoveryEvent::Quarantined { file: name, to, reason: why }),
                    Err(e) => {
                        log::warn!(target: "driftdb::recovery", "cannot move {name} into quarantine: {e}");
                        kept.extend(id);
                    }
                },
                Stray::Evidence { .. } => {}
            }
        }
        if dir_changed {
            vfs.sync_dir(&self.dir).map_err(|e| Error::io("syncing directory", &self.dir, e))?;
        }
        // Every other leftover the keyring listed is gone for good now (or
        // was never created): the next keyring write forgets them.
        inner.building.retain(|id, _| kept.contains(id));
        inner.removed.retain(|id, _| kept.contains(id));
        for (path, name, off, why) in torn_cuts {
            let f = vfs.open(&path, OpenMode::ReadWrite).map_err(|e| Error::io("opening", &path, e))?;
            f.set_len(off).and_then(|()| f.sync_data()).map_err(|e| Error::io("truncating torn tail of", &path, e))?;
            events.push(RecoveryEvent::TruncatedTornTail { file: name, offset: off, reason: why });
        }
        let listed_leftovers = !inner.header.public.building.is_empty() || !inner.header.public.removed.is_empty();
        // A format-2 keyring is rewritten as format 3 now, so that from here
        // on every file is accounted for.
        if !new_states.is_empty() || listed_leftovers || inner.legacy {
            let mut body = inner.body.clone();
            let mut drop_files = Vec::new();
            for (id, kind, name, path, out) in new_states {
                if out.frames == 0 {
                    body.files.retain(|f| f.file_id != id);
                    inner.removed.insert(id, kind);
                    drop_files.push(id);
                    events.push(RecoveryEvent::RemovedEmpty { file: name });
                } else if let Some(m) = body.files.iter_mut().find(|m| m.file_id == id) {
                    // What the crashed session wrote after its last fsync may
                    // still be only in the page cache: make the length the
                    // manifest is about to record durable first.
                    vfs.open(&path, OpenMode::ReadWrite)
                        .and_then(|f| f.sync_data())
                        .map_err(|e| Error::io("syncing", &path, e))?;
                    m.state = FileState::Sealed { frames: out.frames, len: out.end, final_frame: out.final_frame };
                    events.push(RecoveryEvent::Sealed { file: name, frames: out.frames });
                }
            }
            self.persist(inner, body)?;
            for id in &drop_files {
                inner.keys.remove(id);
            }
            // Listed as removed: a deletion that fails is tried again later.
            let _ = self.delete_removed(inner, &drop_files);
        }
        Ok(events)
    }

    /// Rewrite a sealed file under a fresh data key, passing each record
    /// through `transform` (which may return it unchanged). The new file takes
    /// the old one's place in its stream (same kind, stream, ordinal and
    /// metadata) in one atomic manifest change, and the old file is deleted.
    /// If `transform` changed nothing, nothing is written and `None` is
    /// returned; otherwise the new position of every record, in order.
    pub fn rewrite_file(
        &self,
        file_id: u64,
        mut transform: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>>,
    ) -> Result<Option<Vec<RecordPos>>> {
        let info = self
            .files()
            .into_iter()
            .find(|f| f.file_id == file_id)
            .ok_or_else(|| Error::NotFound(format!("file {file_id:016x}")))?;
        if !matches!(info.state, FileState::Sealed { .. })
            || self.lock_inner().writers.values().any(|w| w.header.file_id == file_id)
        {
            return Err(Error::InvalidArgument(format!("{} is still being written", info.name)));
        }
        let mut b = {
            let mut guard = self.lock_inner();
            let inner = &mut *guard;
            let (writer, entry, path) =
                self.new_file(inner, info.kind, info.stream, info.ordinal, info.meta.clone(), true)?;
            FileBuilder::new(self, writer, entry, path)
        };
        let mut changed = false;
        let positions = b.with_write_behind(|b| {
            let mut positions = Vec::new();
            self.read_file(file_id, |_, rec| {
                let pos = match transform(rec)? {
                    Some(new) => {
                        changed = true;
                        b.append(&new)?
                    }
                    None => b.append(rec)?,
                };
                positions.push(pos);
                Ok(())
            })?;
            Ok(positions)
        })?;
        if !changed {
            return Ok(None); // the builder's file is removed on drop
        }
        let pending = b.finish()?;
        self.commit(Edit { add: vec![pending], remove: vec![file_id], root: None })?;
        Ok(Some(positions))
    }

    /// Merge runs of small sealed stream files (left by many short sessions)
    /// into one file under a fresh data key. Record order is preserved; record
    /// positions in the merged files change.
    pub fn merge_small_files(&self) -> Result<Vec<RecoveryEvent>> {
        let mut events = Vec::new();
        let files = self.files();
        let active: Vec<u64> = self.lock_inner().writers.values().map(|w| w.header.file_id).collect();
        let mut streams: Vec<u32> = files.iter().map(|f| f.stream).collect();
        streams.dedup();
        for s in streams {
            // Every file of the stream, in order: any file that cannot join
            // the run (another kind, metadata, large, being written) ends it,
            // so merging never reorders a stream.
            let sf: Vec<&FileInfo> = files.iter().filter(|f| f.stream == s).collect();
            let small_below = self.opts.small_file_bytes.min(self.opts.segment_size / 4);
            let size = |f: &FileInfo| match f.state {
                FileState::Sealed { len, .. } => len,
                FileState::Active => u64::MAX,
            };
            let mut run: Vec<&FileInfo> = Vec::new();
            let mut run_bytes = 0u64;
            let mut runs = Vec::new();
            for f in sf {
                let mergeable = size(f) < small_below
                    && !active.contains(&f.file_id)
                    && f.meta.is_empty()
                    && matches!(f.kind, FileKind::Segment | FileKind::AuditLog);
                if mergeable
                    && run.first().is_none_or(|r| r.kind == f.kind)
                    && run_bytes + size(f) <= self.opts.segment_size
                {
                    run_bytes += size(f);
                    run.push(f);
                } else {
                    if run.len() >= self.opts.merge_min_files {
                        runs.push(std::mem::take(&mut run));
                    }
                    run.clear();
                    run_bytes = 0;
                    if mergeable {
                        run_bytes = size(f);
                        run.push(f);
                    }
                }
            }
            if run.len() >= self.opts.merge_min_files {
                runs.push(run);
            }
            for run in runs {
                let first = run[0];
                let mut b = {
                    let mut guard = self.lock_inner();
                    let inner = &mut *guard;
                    let (writer, mut entry, path) =
                        self.new_file(inner, first.kind, s, first.ordinal, first.meta.clone(), true)?;
                    entry.ordinal = first.ordinal;
                    FileBuilder::new(self, writer, entry, path)
                };
                b.with_write_behind(|b| {
                    for f in &run {
                        self.read_file(f.file_id, |_, p| b.append(p).map(|_| ()))?;
                    }
                    Ok(())
                })?;
                let into = b.writer.name.clone();
                let pending = b.finish()?;
                self.commit(Edit { add: vec![pending], remove: run.iter().map(|f| f.file_id).collect(), root: None })?;
                events.push(RecoveryEvent::Merged { files: run.len(), into });
            }
        }
        Ok(events)
    }

    /// Refuse (with the first one named) files that the manifest does not
    /// list and that recovery would refuse: a read-only open runs no
    /// recovery, and must not read an older keyring's view as the truth.
    pub fn check_unlisted(&self) -> Result<()> {
        use crate::storage::strays::{Stray, classify};
        let names = self.opts.vfs.read_dir(&self.dir).map_err(|e| Error::io("listing", &self.dir, e))?;
        let known = self.stray_knowledge();
        if let Some(Stray::Evidence { name, why }) = classify(self.opts.vfs.as_ref(), &self.dir, &names, &known)?
            .into_iter()
            .find(|s| matches!(s, Stray::Evidence { .. }))
        {
            return Err(Error::tampered(&name, 0, format!("{why}; nothing was changed (see `driftdb verify`)")));
        }
        Ok(())
    }

    /// What the keyring knows of the files it does not list (for
    /// verification): live ids, files being written, files removed, and the
    /// id mark (none for a format-2 keyring not yet rewritten).
    pub(crate) fn stray_knowledge(&self) -> crate::storage::strays::Known {
        let inner = self.lock_inner();
        crate::storage::strays::Known {
            live: inner.body.files.iter().map(|f| (f.file_id, f.kind)).collect(),
            building: inner.building.clone(),
            removed: inner.removed.clone(),
            mark: (!inner.legacy).then_some(inner.body.next_id),
        }
    }

    /// Sealed-file state of the manifest, for verification.
    pub(crate) fn verify_plan(&self) -> Vec<VerifyItem> {
        let mut guard = self.lock_inner();
        let inner = &mut *guard;
        let entries = inner.body.files.clone();
        let mut out = Vec::new();
        for e in entries {
            let (key, err) = match self.frame_key(inner, &e) {
                Ok(k) => (Some(k), None),
                Err(err) => (None, Some(err.to_string())),
            };
            let expect = match (e.state, inner.writers.values().find(|w| w.header.file_id == e.file_id)) {
                (_, Some(w)) => Expect::Live { len: w.offset },
                (FileState::Sealed { frames, len, final_frame }, None) => Expect::Sealed { frames, len, final_frame },
                (FileState::Active, None) => Expect::Recovering,
            };
            out.push((e, key, err, expect));
        }
        out
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

/// Read the keyring file with a size cap.
pub(crate) fn read_keyring_bytes(vfs: &dyn Vfs, path: &Path) -> Result<Vec<u8>> {
    let f = vfs.open(path, OpenMode::Read).map_err(|e| Error::io("opening", path, e))?;
    let len = f.len().map_err(|e| Error::io("reading length of", path, e))?;
    if len > keyring::MAX_KEYRING_FILE as u64 {
        return Err(Error::corrupted(
            KEYRING_FILE,
            0,
            format!("keyring is {len} bytes, larger than any valid keyring"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, 0).map_err(|e| Error::io("reading", path, e))?;
    Ok(buf)
}
