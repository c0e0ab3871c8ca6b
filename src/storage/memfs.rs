//! An in-memory file system with crash and fault injection, for tests (and
//! for applications that want to test their own crash handling).
//!
//! It tracks what is durable the way POSIX promises it: file contents only up
//! to the last `sync_data`, directory entries (creations, renames, removals)
//! only up to the last `sync_dir` of their directory. [`MemFs::crash`]
//! reverts everything else, optionally keeping a torn part of unsynced
//! appends, and invalidates every handle opened before it, as if the process
//! had been killed.

use super::vfs::{LockGuard, OpenMode, Vfs, VfsFile};
use crate::sync::Locked;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
struct Data {
    data: Vec<u8>,
    synced: Vec<u8>,
}

type Node = Arc<Mutex<Data>>;

/// Faults to inject.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Every `sync_data` and `sync_dir` fails with EIO.
    pub fail_sync: bool,
    /// Bytes that may still be written; a write past it writes what fits and fails with ENOSPC.
    pub space_left: Option<u64>,
    /// Every write fails with EIO (nothing written).
    pub fail_writes: bool,
    /// Only `sync_dir` fails with EIO.
    pub fail_dir_sync: bool,
    /// Every `remove_file` fails with EIO (nothing removed).
    pub fail_removes: bool,
    /// Every read of a file whose name ends with this (say `.run`) fails
    /// with EIO.
    pub fail_reads_of: Option<String>,
    /// The next this many `sync_data` calls fail with EIO; later ones
    /// succeed (as a write-back error is reported once).
    pub sync_failures: u32,
    /// Mutating operations (writes, truncations, fsyncs, creations,
    /// renames, removals, directory syncs) that may still happen; every one
    /// after them fails with EIO and does nothing. With [`MemFs::crash`]
    /// afterwards, this puts a crash between any two operations.
    pub ops_left: Option<u64>,
}

#[derive(Default)]
struct State {
    files: BTreeMap<PathBuf, Node>,
    durable: BTreeMap<PathBuf, Node>,
    locks: HashMap<PathBuf, (bool, usize, u64)>,
    epoch: u64,
    faults: Faults,
}

/// The in-memory file system. Cheap to clone (shared state).
///
/// A clone belongs to the "process" of its time: after [`MemFs::crash`],
/// every file-system call through a clone made before it fails, as nothing
/// of a killed process runs on (clone again to "restart").
#[derive(Default)]
pub struct MemFs {
    st: Arc<Mutex<State>>,
    epoch: u64,
}

impl Clone for MemFs {
    fn clone(&self) -> Self {
        MemFs { st: self.st.clone(), epoch: lock(&self.st).epoch }
    }
}

impl MemFs {
    /// The shared state, for a file-system call from this clone's process.
    fn live(&self) -> io::Result<MutexGuard<'_, State>> {
        let st = lock(&self.st);
        if st.epoch != self.epoch {
            return Err(dead());
        }
        Ok(st)
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.locked()
}

fn lockd(m: &Mutex<Data>) -> MutexGuard<'_, Data> {
    m.locked()
}

/// Count one mutating operation against [`Faults::ops_left`].
fn take_op(st: &mut State) -> io::Result<()> {
    match st.faults.ops_left.as_mut() {
        Some(0) => Err(io::Error::other("injected failure: no operations left")),
        Some(n) => {
            *n -= 1;
            Ok(())
        }
        None => Ok(()),
    }
}

fn dead() -> io::Error {
    io::Error::other("file handle from before a simulated crash")
}

impl MemFs {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the faults to inject from now on.
    pub fn set_faults(&self, f: Faults) {
        lock(&self.st).faults = f;
    }

    /// Simulate a crash: keep only durable state, drop every handle and lock.
    pub fn crash(&self) {
        self.crash_keeping(|_, _| 0);
    }

    /// Simulate a crash where, for each file with unsynced appended bytes,
    /// `keep(path, unsynced_len)` of them survive (a torn write).
    pub fn crash_keeping(&self, mut keep: impl FnMut(&Path, usize) -> usize) {
        let mut st = lock(&self.st);
        st.epoch += 1;
        st.locks.clear();
        st.files = st.durable.clone();
        for (p, n) in st.files.iter() {
            let mut d = lockd(n);
            let mut kept = d.synced.clone();
            if d.data.len() > d.synced.len() && d.data.starts_with(&d.synced) {
                let extra = d.data.len() - d.synced.len();
                let k = keep(p, extra).min(extra);
                kept.extend_from_slice(&d.data[d.synced.len()..d.synced.len() + k]);
            }
            d.data = kept.clone();
            d.synced = kept;
        }
    }

    /// The current contents of a file (as a reader would see it).
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        lock(&self.st).files.get(path).map(|n| lockd(n).data.clone())
    }

    /// Replace a file's contents directly (durably), bypassing faults: for tamper tests.
    pub fn put(&self, path: &Path, bytes: &[u8]) {
        let mut st = lock(&self.st);
        let n: Node = Arc::new(Mutex::new(Data { data: bytes.to_vec(), synced: bytes.to_vec() }));
        st.files.insert(path.to_path_buf(), n.clone());
        st.durable.insert(path.to_path_buf(), n);
    }

    /// Every file path.
    pub fn paths(&self) -> Vec<PathBuf> {
        lock(&self.st).files.keys().cloned().collect()
    }
}

struct MemFile {
    node: Node,
    name: String,
    st: Arc<Mutex<State>>,
    epoch: u64,
    writable: bool,
}

impl MemFile {
    fn check(&self) -> io::Result<MutexGuard<'_, State>> {
        let st = lock(&self.st);
        if st.epoch != self.epoch {
            return Err(dead());
        }
        Ok(st)
    }
}

impl VfsFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        {
            let st = self.check()?;
            if st.faults.fail_reads_of.as_ref().is_some_and(|end| self.name.ends_with(end.as_str())) {
                return Err(io::Error::other("injected read failure"));
            }
        }
        let d = lockd(&self.node);
        let off = usize::try_from(offset).unwrap_or(usize::MAX);
        if off >= d.data.len() {
            return Ok(0);
        }
        let n = buf.len().min(d.data.len() - off);
        buf[..n].copy_from_slice(&d.data[off..off + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.check()?;
        if !self.writable {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only handle"));
        }
        if st.faults.fail_writes {
            return Err(io::Error::other("injected write failure"));
        }
        take_op(&mut st)?;
        let (n, err) = match st.faults.space_left {
            Some(left) if (buf.len() as u64) > left => (left as usize, true),
            _ => (buf.len(), false),
        };
        if let Some(left) = st.faults.space_left.as_mut() {
            *left -= n as u64;
        }
        drop(st);
        let mut d = lockd(&self.node);
        let off = offset as usize;
        if d.data.len() < off + n {
            d.data.resize(off + n, 0);
        }
        d.data[off..off + n].copy_from_slice(&buf[..n]);
        if err {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        drop(self.check()?);
        Ok(lockd(&self.node).data.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        take_op(&mut *self.check()?)?;
        lockd(&self.node).data.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.check()?;
        if st.faults.fail_sync {
            return Err(io::Error::other("injected fsync failure"));
        }
        if st.faults.sync_failures > 0 {
            st.faults.sync_failures -= 1;
            // The pages are lost; the next sync finds nothing to report.
            drop(st);
            let mut d = lockd(&self.node);
            d.data = d.synced.clone();
            return Err(io::Error::other("injected fsync failure (reported once)"));
        }
        take_op(&mut st)?;
        drop(st);
        let mut d = lockd(&self.node);
        d.synced = d.data.clone();
        Ok(())
    }
}

struct MemLock {
    st: Arc<Mutex<State>>,
    path: PathBuf,
    epoch: u64,
}

impl LockGuard for MemLock {}

impl Drop for MemLock {
    fn drop(&mut self) {
        let mut st = lock(&self.st);
        if st.epoch != self.epoch {
            return;
        }
        if let Some(e) = st.locks.get_mut(&self.path) {
            e.1 -= 1;
            if e.1 == 0 {
                st.locks.remove(&self.path);
            }
        }
    }
}

impl Vfs for MemFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        let mut st = self.live()?;
        if matches!(mode, OpenMode::CreateNew | OpenMode::Truncate) {
            take_op(&mut st)?;
        }
        let node = match (mode, st.files.get(path)) {
            (OpenMode::CreateNew, Some(_)) => return Err(io::Error::from(io::ErrorKind::AlreadyExists)),
            (OpenMode::Read | OpenMode::ReadWrite, None) => return Err(io::Error::from(io::ErrorKind::NotFound)),
            (OpenMode::Read | OpenMode::ReadWrite, Some(n)) => n.clone(),
            (OpenMode::Truncate, Some(n)) => {
                lockd(n).data.clear();
                n.clone()
            }
            (OpenMode::CreateNew | OpenMode::Truncate, None) => {
                let n: Node = Arc::new(Mutex::new(Data::default()));
                st.files.insert(path.to_path_buf(), n.clone());
                n
            }
        };
        let name = path.to_string_lossy().into_owned();
        Ok(Box::new(MemFile { node, name, st: self.st.clone(), epoch: st.epoch, writable: mode != OpenMode::Read }))
    }

    fn create_dir_all(&self, _path: &Path) -> io::Result<()> {
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let st = self.live()?;
        Ok(st
            .files
            .keys()
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.live()?;
        if st.faults.fail_removes {
            return Err(io::Error::other("injected removal failure"));
        }
        take_op(&mut st)?;
        st.files.remove(path).map(|_| ()).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.live()?;
        take_op(&mut st)?;
        let n = st.files.remove(from).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        st.files.insert(to.to_path_buf(), n);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.live()?;
        if st.faults.fail_sync || st.faults.fail_dir_sync {
            return Err(io::Error::other("injected fsync failure"));
        }
        take_op(&mut st)?;
        let st = &mut *st;
        st.durable.retain(|p, _| p.parent() != Some(path));
        for (p, n) in st.files.iter() {
            if p.parent() == Some(path) {
                st.durable.insert(p.clone(), n.clone());
            }
        }
        Ok(())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let st = self.live()?;
        Ok(st.files.contains_key(path) || st.files.keys().any(|p| p.starts_with(path)))
    }

    fn try_lock(&self, path: &Path, exclusive: bool) -> io::Result<Option<Box<dyn LockGuard>>> {
        let mut st = self.live()?;
        let epoch = st.epoch;
        match st.locks.get_mut(path) {
            Some((ex, n, _)) => {
                if *ex || exclusive {
                    return Ok(None);
                }
                *n += 1;
            }
            None => {
                st.locks.insert(path.to_path_buf(), (exclusive, 1, epoch));
            }
        }
        Ok(Some(Box::new(MemLock { st: self.st.clone(), path: path.to_path_buf(), epoch })))
    }
}
