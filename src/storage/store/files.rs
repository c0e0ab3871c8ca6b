//! New files: ids below the mark, fresh data keys, write-once builders, and
//! the atomic manifest edits that add and remove files.

use super::*;
use crate::sync::Locked;

/// A file written completely but not yet in the manifest; [`Store::commit`] adds it.
/// Dropped uncommitted, its file is removed.
pub struct PendingFile {
    pub(super) entry: FileEntry,
    pub(super) owner: u64,
    pub(super) path: PathBuf,
    pub(super) vfs: Arc<dyn Vfs>,
    pub(super) abandoned: Abandoned,
    pub(super) committed: bool,
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

/// Ids of files being written that were given up (and unlinked): the next
/// keyring write drops them from the files being written.
pub(super) type Abandoned = Arc<Mutex<Vec<u64>>>;

pub(super) fn abandon(list: &Abandoned, vfs: &dyn Vfs, path: &Path, id: u64) {
    if vfs.remove_file(path).is_ok() || !vfs.exists(path).unwrap_or(true) {
        list.locked().push(id);
    }
}

/// Where a new file goes: its kind, stream, place in the stream, and metadata.
pub(super) struct Place {
    pub(super) kind: FileKind,
    pub(super) stream: u32,
    pub(super) ordinal: u64,
    pub(super) meta: Vec<u8>,
}

/// A file reserved by [`Store::reserve_file`].
pub(super) struct Reserved {
    pub(super) entry: FileEntry,
    pub(super) path: PathBuf,
    pub(super) name: String,
    pub(super) header: FileHeader,
    pub(super) key: Arc<FrameKey>,
}

/// Builds a write-once file (snapshot, index, catalog, merged segment...).
pub struct FileBuilder<'s> {
    pub(super) store: &'s Store,
    pub(super) writer: FileWriter,
    pub(super) entry: FileEntry,
    pub(super) path: PathBuf,
    pub(super) done: bool,
    /// While [`FileBuilder::with_write_behind`] runs: wakes its sync thread.
    pub(super) behind: Option<std::sync::mpsc::SyncSender<()>>,
    /// Bytes appended since the sync thread was last woken.
    pub(super) unsynced: u64,
}

impl<'s> FileBuilder<'s> {
    pub(super) fn new(store: &'s Store, writer: FileWriter, entry: FileEntry, path: PathBuf) -> Self {
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

    /// Replace the metadata the manifest will record for this file, for a
    /// file whose metadata depends on what was written into it (where a
    /// run's footer is). It takes effect when the file is committed.
    pub fn set_meta(&mut self, meta: Vec<u8>) -> Result<()> {
        if meta.len() > keyring::MAX_FILE_META {
            return Err(Error::InvalidArgument("file metadata too large".into()));
        }
        self.entry.meta = meta;
        Ok(())
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

/// Bytes appended between early syncs of a file being built with
/// [`FileBuilder::with_write_behind`].
pub(super) const WRITE_BEHIND_BYTES: u64 = 8 << 20;

impl Store {
    pub(super) fn frame_key(&self, inner: &mut Inner, e: &FileEntry) -> Result<Arc<FrameKey>> {
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
    pub(super) fn new_file(
        &self,
        inner: &mut Inner,
        place: Place,
        building: bool,
    ) -> Result<(FileWriter, FileEntry, PathBuf)> {
        let r = self.reserve_file(inner, place, building)?;
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
    pub(super) fn reserve_file(&self, inner: &mut Inner, place: Place, building: bool) -> Result<Reserved> {
        let Place { kind, stream, ordinal, meta } = place;
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

    pub(super) fn next_ordinal(inner: &Inner, stream: u32) -> u64 {
        inner.body.files.iter().filter(|f| f.stream == stream).map(|f| f.ordinal + 1).max().unwrap_or(0)
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
            self.reserve_file(inner, Place { kind, stream, ordinal, meta }, true)?
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
    pub(super) fn commit_locked(
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

    /// Replace the metadata of live sealed files, all in one keyring write
    /// (a run moved to another level keeps its file).
    pub fn set_file_meta(&self, changes: &[(u64, Vec<u8>)]) -> Result<()> {
        let mut guard = self.lock_inner();
        let inner = &mut *guard;
        self.check_writable(inner)?;
        let mut body = inner.body.clone();
        for (id, meta) in changes {
            if meta.len() > keyring::MAX_FILE_META {
                return Err(Error::InvalidArgument("file metadata too large".into()));
            }
            let f = body
                .files
                .iter_mut()
                .find(|f| f.file_id == *id)
                .ok_or_else(|| Error::NotFound(format!("file {id:016x}")))?;
            if !matches!(f.state, FileState::Sealed { .. }) {
                return Err(Error::InvalidArgument(format!("file {id:016x} is not sealed")));
            }
            f.meta = meta.clone();
        }
        self.persist(inner, body)
    }
}
