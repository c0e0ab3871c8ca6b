//! Recovery at open: listed files checked, crash-left files sealed, torn
//! tails cut, and every unlisted file sorted (see [`crate::storage::strays`]).

use super::*;

/// A file left active by a crash: (id, kind, name, path, what its scan found).
type CrashLeft = (u64, FileKind, String, PathBuf, ScanOutcome);

/// What recovery's checks found, for its changes to act on.
struct RecoveryPlan {
    /// Torn tails to cut: (path, name, offset, why).
    torn_cuts: Vec<(PathBuf, String, u64, String)>,
    /// Files left active by a crash.
    new_states: Vec<CrashLeft>,
    /// Every file the manifest does not list, sorted (no evidence among them).
    strays: Vec<crate::storage::strays::Stray>,
    /// A `keyring.tmp` is left from an interrupted keyring write.
    keyring_tmp: bool,
}

impl Store {
    /// Recovery at open: check every listed file is present with its
    /// recorded length, scan files left active by a crash, classify every
    /// file the manifest does not list (see [`crate::storage::strays`]), and
    /// only when all of that passed: remove the known leftovers, quarantine
    /// the unexplained, cut torn tails and seal the crash-left files through
    /// the manifest. A check that fails changes nothing on disk.
    pub(super) fn recover(&self) -> Result<Vec<RecoveryEvent>> {
        let mut guard = self.lock_inner();
        let inner = &mut *guard;
        let plan = self.recovery_checks(inner)?;
        let mut events = self.sort_out_strays(inner, &plan)?;
        for (path, name, off, why) in plan.torn_cuts {
            let f = self.opts.vfs.open(&path, OpenMode::ReadWrite).map_err(|e| Error::io("opening", &path, e))?;
            f.set_len(off).and_then(|()| f.sync_data()).map_err(|e| Error::io("truncating torn tail of", &path, e))?;
            events.push(RecoveryEvent::TruncatedTornTail { file: name, offset: off, reason: why });
        }
        events.extend(self.seal_crash_left(inner, plan.new_states)?);
        Ok(events)
    }

    /// Recovery's first phase, which changes nothing: every listed file
    /// present with its length, files left active scanned, and every file
    /// the manifest does not list sorted (an unexplained one is an error).
    fn recovery_checks(&self, inner: &mut Inner) -> Result<RecoveryPlan> {
        use crate::storage::strays::{self, Known, Stray};
        let vfs = self.opts.vfs.clone();
        let names = vfs.read_dir(&self.dir).map_err(|e| Error::io("listing", &self.dir, e))?;
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
            live: inner.body.files.iter().map(|f| (f.file_id, f.kind)).collect(),
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
        let keyring_tmp = names.iter().any(|n| n == KEYRING_TMP);
        Ok(RecoveryPlan { torn_cuts, new_states, strays, keyring_tmp })
    }

    /// Remove the known leftovers (and a leftover `keyring.tmp`) and
    /// quarantine the unexplained files; the keyring then forgets the
    /// leftovers it listed. A leftover that cannot be removed (or set
    /// aside) stays where it is, and listed: the next open tries again. It
    /// blocks nothing.
    fn sort_out_strays(&self, inner: &mut Inner, plan: &RecoveryPlan) -> Result<Vec<RecoveryEvent>> {
        use crate::storage::strays::{self, Stray};
        let vfs = self.opts.vfs.clone();
        let mut events = Vec::new();
        let mut dir_changed = false;
        if plan.keyring_tmp {
            let p = self.dir.join(KEYRING_TMP);
            vfs.remove_file(&p).map_err(|e| Error::io("removing", &p, e))?;
            dir_changed = true;
        }
        let mut kept = std::collections::HashSet::new();
        for st in plan.strays.iter().cloned() {
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
        Ok(events)
    }

    /// Seal every file left active by a crash through the manifest (or
    /// remove it if it holds no record), in one keyring write, which also
    /// records what [`Store::sort_out_strays`] changed and rewrites a
    /// format-2 keyring as format 3, so that from here on every file is
    /// accounted for.
    fn seal_crash_left(&self, inner: &mut Inner, new_states: Vec<CrashLeft>) -> Result<Vec<RecoveryEvent>> {
        let vfs = self.opts.vfs.clone();
        let mut events = Vec::new();
        let listed_leftovers = !inner.header.public.building.is_empty() || !inner.header.public.removed.is_empty();
        if new_states.is_empty() && !listed_leftovers && !inner.legacy {
            return Ok(events);
        }
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
