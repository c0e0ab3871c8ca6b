//! Writing the keyring: temp file, fsync, rename, directory fsync; and the
//! deletion of files a committed change removed.

use super::*;
use crate::sync::Locked;

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

impl Store {
    /// Write `body` as the new keyring: temp file, fsync, rename, fsync
    /// directory. It records the audit head of the last paired write (see
    /// [`Store::persist_paired`]), never entries appended since.
    pub(super) fn persist(&self, inner: &mut Inner, body: KeyringBody) -> Result<()> {
        let header = inner.header.clone();
        self.persist_as(inner, header, body, None, false)
    }

    /// [`Store::persist`] that also commits the audit entries appended since
    /// the last paired write: the key event they describe and its record in
    /// the log take effect together, or (the write failing) neither does.
    pub(super) fn persist_paired(&self, inner: &mut Inner, body: KeyringBody) -> Result<()> {
        let header = inner.header.clone();
        self.persist_as(inner, header, body, None, true)
    }

    /// [`Store::persist`] with a new header and, for a rotation, a new master
    /// key (which replaces the old one in memory once the keyring is durable).
    /// Any failure latches the store: the in-memory state may be ahead of
    /// the keyring on disk, so nothing more is written until it is reopened.
    pub(super) fn persist_as(
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

    pub(super) fn persist_unlatched(
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
        let abandoned = std::mem::take(&mut *self.abandoned.locked());
        if !abandoned.is_empty() {
            if vfs.sync_dir(&self.dir).is_ok() {
                for id in &abandoned {
                    inner.building.remove(id);
                }
            } else {
                self.abandoned.locked().extend(abandoned);
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
    pub(super) fn delete_removed(&self, inner: &mut Inner, ids: &[u64]) -> Result<()> {
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
}
