//! Key rotation at the engine level: the re-wrap, and the background
//! re-encryption that rewrites every file and repoints what refers to it.

use super::*;
use crate::sync::Locked;

impl Db {
    /// Rotate the master key: every data key is re-wrapped under a new
    /// master key version in one atomic keyring replacement, and from the
    /// moment this returns only `new_key` opens the database. Then, unless
    /// `rewrap_only`, every file is re-encrypted under a fresh data key in
    /// the background (see [`Db::rotation_status`]) while reads and writes
    /// go on; a crash or a close leaves it to resume on the next open.
    /// Returns the new master key version.
    pub fn rotate_master_key(&self, new_key: &KeySource, o: RotateOptions) -> Result<u32> {
        self.rotate(Some(new_key), o)
    }

    /// Re-encrypt every file under a fresh data key, keeping the master key.
    pub fn rotate_data_keys(&self, o: RotateOptions) -> Result<()> {
        self.rotate(None, RotateOptions { rewrap_only: false, ..o }).map(|_| ())
    }

    pub(super) fn rotate(&self, new_key: Option<&KeySource>, o: RotateOptions) -> Result<u32> {
        let version = {
            let mut w = self.lock_writer();
            // No file rewrite in flight: a file begun under the old master
            // key must not be committed after the re-wrap.
            self.wait_snapshots();
            let _rewriting = self.shared.rewriting.locked();
            // The WAL's commits into the segments first: no file the
            // re-encryption rewrites is one a commit position points into
            // while it is still being written.
            self.checkpoint(&mut w)?;
            let nm = crate::storage::store::NewMaster {
                argon2: o.argon2,
                allow_weak_kdf: o.allow_weak_kdf,
                retune_kdf: o.retune_kdf,
            };
            self.shared.store.begin_rotation_with(new_key, &nm, !o.rewrap_only)?
        };
        if !o.rewrap_only && o.background {
            self.start_reencryption(o.throttle_bytes_per_sec);
        }
        Ok(version)
    }

    /// Keys and the progress of the current or last re-encryption.
    pub fn rotation_status(&self) -> RotationStatus {
        let store = &self.shared.store;
        let keys = store.key_versions();
        let rotation = match store.rotation() {
            None => RotationProgress { state: "idle", files_done: 0, files_total: 0, bytes_done: 0, bytes_total: 0 },
            Some(r) => {
                let pending = store.rotation_pending();
                let left_bytes: u64 = pending.iter().map(|f| f.state.sealed_len()).sum();
                let state = if r.finished_unix != 0 {
                    "complete"
                } else if self.shared.rotating.load(std::sync::atomic::Ordering::SeqCst) {
                    "running"
                } else {
                    "interrupted"
                };
                RotationProgress {
                    state,
                    files_done: r.files_total.saturating_sub(pending.len() as u64),
                    files_total: r.files_total,
                    bytes_done: r.bytes_total.saturating_sub(left_bytes),
                    bytes_total: r.bytes_total,
                }
            }
        };
        let head = store.audit_head();
        RotationStatus {
            database_id: store.db_id().iter().map(|b| format!("{b:02x}")).collect(),
            active_key_version: store.master_version(),
            keys,
            rotation,
            keyring_generation: store.keyring_generation(),
            audit_head: crate::storage::verify::AuditHeadReport {
                entries: head.count,
                hash: head.hash.iter().map(|b| format!("{b:02x}")).collect(),
            },
        }
    }

    /// Re-encrypt, in the calling thread, every file an interrupted (or
    /// foreground) rotation has left, calling `progress` after each file;
    /// then record the end of the rotation.
    pub fn resume_rotation(
        &self,
        throttle_bytes_per_sec: Option<u64>,
        mut progress: impl FnMut(&RotationStatus),
    ) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.shared.rotating.swap(true, Ordering::SeqCst) {
            return Err(Error::InvalidArgument("a re-encryption is already running".into()));
        }
        let r = self.reencrypt_all(throttle_bytes_per_sec, &mut progress);
        self.shared.rotating.store(false, Ordering::SeqCst);
        r
    }

    /// Start the background re-encryption (if files remain and none runs).
    pub(super) fn start_reencryption(&self, throttle: Option<u64>) {
        use std::sync::atomic::Ordering;
        if self.shared.store.rotation_pending().is_empty()
            && self.shared.store.rotation().is_none_or(|r| r.finished_unix != 0)
        {
            return;
        }
        if self.shared.rotating.swap(true, Ordering::SeqCst) {
            return;
        }
        self.shared.stop.store(false, Ordering::SeqCst);
        let h = self.background_handle();
        let spawned = std::thread::Builder::new().name("driftdb-reencrypt".into()).spawn(move || {
            let r = h.reencrypt_all(throttle, &mut |_| {});
            h.shared.rotating.store(false, Ordering::SeqCst);
            r
        });
        match spawned {
            Ok(t) => *self.shared.rotator.locked() = Some(t),
            Err(_) => self.shared.rotating.store(false, Ordering::SeqCst),
        }
    }

    /// Wait for the background re-encryption to end; its outcome.
    pub fn wait_for_rotation(&self) -> Result<()> {
        let t = self.shared.rotator.locked().take();
        match t {
            Some(t) => t.join().unwrap_or_else(|_| Err(Error::Poisoned("the re-encryption thread panicked".into()))),
            None => Ok(()),
        }
    }

    /// Stop the background re-encryption after the file in progress.
    pub(super) fn stop_rotation(&self) -> Result<()> {
        self.shared.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wait_for_rotation()
    }

    pub(super) fn reencrypt_all(&self, throttle: Option<u64>, progress: &mut dyn FnMut(&RotationStatus)) -> Result<()> {
        let t0 = std::time::Instant::now();
        let mut bytes = 0u64;
        let stopped = || self.shared.stop.load(std::sync::atomic::Ordering::SeqCst);
        loop {
            if stopped() {
                return Ok(());
            }
            let Some(f) = self.shared.store.rotation_pending().into_iter().next() else {
                // A rotation started meanwhile may have added files: end
                // only when none is left.
                if self.shared.store.finish_rotation()? || self.shared.store.rotation_pending().is_empty() {
                    break;
                }
                continue;
            };
            bytes += f.state.sealed_len();
            self.reencrypt_one(&f)?;
            progress(&self.rotation_status());
            if let Some(rate) = throttle.filter(|r| *r > 0) {
                let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
                while let Some(wait) = due.checked_sub(t0.elapsed()) {
                    if stopped() {
                        return Ok(());
                    }
                    std::thread::sleep(wait.min(Duration::from_millis(50)));
                }
            }
        }
        progress(&self.rotation_status());
        Ok(())
    }

    /// Re-encrypt one file and point everything that refers to it at its
    /// replacement before the old file is deleted.
    pub(super) fn reencrypt_one(&self, f: &crate::storage::store::FileInfo) -> Result<()> {
        let _rewriting = self.shared.rewriting.locked();
        if f.kind == FileKind::Run
            && let Some(tree) = &self.shared.versions
        {
            let store = &self.shared.store;
            let r = tree.replace_run_with(store, f.file_id, || store.reencrypt_file(f.file_id).map(|(id, _)| id));
            return match r {
                // Replaced meanwhile (merged): under a fresh key already.
                Err(Error::NotFound(_)) => Ok(()),
                Err(e) => Err(e),
                Ok(_) => {
                    store.release(f.file_id);
                    Ok(())
                }
            };
        }
        let (new_id, _) = match self.shared.store.reencrypt_file(f.file_id) {
            // Replaced meanwhile (merged or compacted): under a fresh key already.
            Err(Error::NotFound(_)) => return Ok(()),
            r => r?,
        };
        let r = match f.kind {
            FileKind::Segment | FileKind::Wal => {
                self.state_mut().remap_segment(f.file_id, new_id);
                Ok(())
            }
            FileKind::Snapshot => {
                let mut st = self.state_mut();
                for t in st.tables.values_mut() {
                    for s in t.snapshots.iter_mut() {
                        if s.1 == f.file_id {
                            s.1 = new_id;
                        }
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        };
        self.shared.store.release(f.file_id);
        r
    }
}
