//! Key rotation at the store level: re-wrapping every data key under a new
//! master version in one atomic keyring replacement, re-encrypting files
//! under fresh data keys one atomic swap at a time, the status of every key
//! version, and the hash-chained key audit log.

use super::*;
use crate::format::audit::{AuditEntry, chain};
use crate::format::keyring::{AuditHead, RotationState};

/// The stream of the key audit log.
pub const AUDIT_STREAM: u32 = 3;

/// A new master key: its spec, the key, its check value, and a description
/// of its source.
type DerivedMaster = (MasterSpec, SecretKey, [u8; keyring::KCV_LEN], String);

/// Choices about the new master key of a rotation.
#[derive(Debug, Clone, Copy, Default)]
pub struct NewMaster {
    /// Argon2id cost when it is a passphrase.
    pub argon2: Argon2Params,
    /// Accept Argon2id parameters below the floor (tests only).
    pub allow_weak_kdf: bool,
    /// Accept the current passphrase with other Argon2id parameters: a
    /// rotation that only changes the key derivation's cost.
    pub retune_kdf: bool,
}

/// The entry numbers an `aborted` entry's details name.
fn aborted_entries(detail: &str) -> Vec<u64> {
    serde_json::from_str::<serde_json::Value>(detail)
        .ok()
        .and_then(|v| {
            v.get("entries").and_then(|e| e.as_array()).map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
        })
        .unwrap_or_default()
}

/// Files and bytes whose data keys date from one master key version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyVersionStatus {
    /// Master key version.
    pub version: u32,
    /// `active`, `retiring` (retired as a master key, but live files still
    /// have data keys from its time) or `retired` (none left).
    pub state: &'static str,
    /// Live files whose data keys date from this version.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// The key audit log as read, with what each entry's fate is.
#[derive(Debug, Clone)]
pub struct AuditLog {
    /// Every entry, in order.
    pub entries: Vec<AuditEntry>,
    /// Whether each entry took effect: `false` for an entry whose keyring
    /// write never happened (past the keyring's head, or named by a later
    /// `aborted` entry): the event it describes did not happen.
    pub committed: Vec<bool>,
    /// The chain's end (after the last entry).
    pub head: AuditHead,
    /// The head the keyring records (every entry up to it is committed).
    pub recorded: AuditHead,
}

/// The kind of the entry that records earlier entries as aborted.
pub const AUDIT_ABORTED: &str = "aborted";

impl Store {
    /// Read and check the whole audit log: every entry in order, chained from
    /// the first, and the chain passes through the head the keyring records.
    /// Returns the entries and the head after the last one (which may be
    /// past the recorded head: entries whose keyring write never happened).
    pub fn audit_log(&self) -> Result<(Vec<AuditEntry>, AuditHead)> {
        let log = self.audit()?;
        Ok((log.entries, log.head))
    }

    /// [`Store::audit_log`] with each entry's fate (see [`AuditLog`]).
    pub fn audit(&self) -> Result<AuditLog> {
        // A file of the log may be replaced (merged, re-encrypted) while it
        // is read: read it again.
        let mut tries = 0;
        loop {
            match self.audit_once() {
                Err(Error::NotFound(_)) if tries < 8 => tries += 1,
                r => return r,
            }
        }
    }

    fn audit_once(&self) -> Result<AuditLog> {
        let recorded = self.lock_inner().body.audit;
        let mut entries = Vec::new();
        let mut head = AuditHead::default();
        let mut at_recorded = recorded.count == 0;
        self.read_stream(AUDIT_STREAM, |pos, rec| {
            let name = file_name(pos.file_id, FileKind::AuditLog);
            let e = AuditEntry::decode(rec)
                .map_err(|e| Error::corrupted(&name, pos.offset, format!("audit entry: {}", e.reason)))?;
            if e.seq != head.count || e.prev != head.hash {
                return Err(Error::tampered(
                    &name,
                    pos.offset,
                    format!("audit entry {} does not follow entry {} (chain broken)", e.seq, head.count as i128 - 1),
                ));
            }
            head = AuditHead { count: head.count + 1, hash: chain(&head.hash, rec) };
            if head.count == recorded.count {
                if head.hash != recorded.hash {
                    return Err(Error::tampered(
                        &name,
                        pos.offset,
                        format!("audit entry {} differs from the one the keyring records", e.seq),
                    ));
                }
                at_recorded = true;
            }
            entries.push(e);
            Ok(())
        })?;
        if !at_recorded {
            return Err(Error::tampered(
                KEYRING_FILE,
                0,
                format!(
                    "the key audit log holds {} entries; the keyring records {}: entries were removed",
                    head.count, recorded.count
                ),
            ));
        }
        let mut committed: Vec<bool> = entries.iter().map(|e| e.seq < recorded.count).collect();
        for e in &entries {
            if e.kind == AUDIT_ABORTED && e.seq < recorded.count {
                for seq in aborted_entries(&e.detail) {
                    if let Some(c) =
                        usize::try_from(seq).ok().filter(|&i| i < e.seq as usize).and_then(|i| committed.get_mut(i))
                    {
                        *c = false;
                    }
                }
            }
        }
        Ok(AuditLog { entries, committed, head, recorded })
    }

    /// The audit head the keyring records.
    pub fn audit_head(&self) -> AuditHead {
        self.lock_inner().body.audit
    }

    /// Before the first audit entry of a session: check the log, and take
    /// its end as the chain's end (entries past the recorded head, written
    /// just before a crash or a failed keyring write, did not happen; the
    /// next key event records them as aborted).
    fn audit_prepare(&self) -> Result<()> {
        if self.lock_inner().audit_checked {
            return Ok(());
        }
        let log = self.audit()?;
        let mut inner = self.lock_inner();
        if !inner.audit_checked {
            inner.audit_tail = log.head;
            inner.audit_checked = true;
        }
        Ok(())
    }

    /// Append the first audit entry of a key event and sync it. It takes
    /// effect only with the keyring write that pairs with it
    /// ([`Store::persist_paired`]), which records the new head. Entries past
    /// the recorded head when a key event starts are ones whose keyring write
    /// never happened (a crash, a failed write, an error between an entry and
    /// its write): an `aborted` entry naming them comes first, so that the
    /// paired write cannot make them count. Returns the new chain end.
    pub(super) fn audit_locked(&self, inner: &mut Inner, kind: &str, detail: String) -> Result<AuditHead> {
        if !inner.audit_checked {
            return Err(Error::InvalidArgument("audit log not checked in this session".into()));
        }
        let (from, to) = (inner.body.audit.count, inner.audit_tail.count);
        if to > from {
            let seqs: Vec<String> = (from..to).map(|s| s.to_string()).collect();
            self.audit_append(
                inner,
                AUDIT_ABORTED,
                format!(
                    "{{\"entries\":[{}],\"reason\":\"the keyring write that was to record them never completed (a crash or a failed write): the events they describe did not happen\"}}",
                    seqs.join(",")
                ),
            )?;
        }
        self.audit_append(inner, kind, detail)
    }

    /// A further audit entry of the key event whose first entry
    /// [`Store::audit_locked`] appended (the same keyring write pairs with both).
    pub(super) fn audit_more(&self, inner: &mut Inner, kind: &str, detail: String) -> Result<AuditHead> {
        if !inner.audit_checked {
            return Err(Error::InvalidArgument("audit log not checked in this session".into()));
        }
        self.audit_append(inner, kind, detail)
    }

    fn audit_append(&self, inner: &mut Inner, kind: &str, detail: String) -> Result<AuditHead> {
        let e = AuditEntry {
            seq: inner.audit_tail.count,
            time_micros: now_micros(),
            kind: kind.to_string(),
            master_version: inner.header.active.version,
            detail,
            prev: inner.audit_tail.hash,
        };
        let bytes = e.encode();
        self.append_locked(inner, AUDIT_STREAM, FileKind::AuditLog, &bytes)?;
        if let Some(w) = inner.writers.get_mut(&AUDIT_STREAM)
            && let Err(err) = w.sync()
        {
            Self::poison(inner, &err);
            return Err(err);
        }
        let head = AuditHead { count: e.seq + 1, hash: chain(&e.prev, &bytes) };
        inner.audit_tail = head;
        Ok(head)
    }

    /// Record a key event on its own.
    pub(crate) fn audit_event(&self, kind: &str, detail: String) -> Result<()> {
        self.audit_prepare()?;
        let mut guard = self.lock_inner();
        let inner = &mut *guard;
        self.audit_locked(inner, kind, detail)?;
        let body = inner.body.clone();
        self.persist_paired(inner, body)
    }

    /// The master version a file's data key dates from.
    fn origin(masters: &[keyring::MasterRecord], file_id: u64) -> u32 {
        masters.iter().filter(|m| m.first_file_id <= file_id).map(|m| m.version).max().unwrap_or(1)
    }

    /// Every master version: its state and the live files (and bytes) whose
    /// data keys date from it.
    pub fn key_versions(&self) -> Vec<KeyVersionStatus> {
        let inner = self.lock_inner();
        let masters = &inner.body.masters;
        let mut out: Vec<KeyVersionStatus> = masters
            .iter()
            .map(|m| KeyVersionStatus { version: m.version, state: "retired", files: 0, bytes: 0 })
            .collect();
        for f in &inner.body.files {
            let v = Self::origin(masters, f.file_id);
            if let Some(s) = out.iter_mut().find(|s| s.version == v) {
                s.files += 1;
                s.bytes += f.state.sealed_len();
            }
        }
        for s in &mut out {
            s.state = if s.version == inner.header.active.version {
                "active"
            } else if s.files > 0 {
                "retiring"
            } else {
                "retired"
            };
        }
        out.sort_by_key(|s| s.version);
        out
    }

    /// The current or last re-encryption.
    pub fn rotation(&self) -> Option<RotationState> {
        self.lock_inner().body.rotation
    }

    /// The live files a running re-encryption still has to rewrite.
    pub fn rotation_pending(&self) -> Vec<FileInfo> {
        let inner = self.lock_inner();
        let Some(r) = inner.body.rotation.filter(|r| r.finished_unix == 0) else { return Vec::new() };
        let mut v: Vec<FileInfo> =
            inner.body.files.iter().filter(|f| f.file_id < r.mark).map(FileInfo::from_entry).collect();
        v.sort_by_key(|f| (f.stream, f.ordinal, f.file_id));
        v
    }

    /// Rotate: with `new_key`, add a master key version and re-wrap every
    /// data key under it in one atomic keyring replacement (from then on
    /// only the new key opens the database); with `reencrypt`, also start a
    /// re-encryption of every current file under fresh data keys (run it
    /// with [`Store::reencrypt_file`] and [`Store::finish_rotation`]). Every
    /// file being written is sealed first, so all of them can be rewritten.
    /// Returns the active master version.
    pub fn begin_rotation(&self, new_key: Option<&KeySource>, argon2: Argon2Params, reencrypt: bool) -> Result<u32> {
        self.begin_rotation_with(new_key, &NewMaster { argon2, ..NewMaster::default() }, reencrypt)
    }

    /// [`Store::begin_rotation`] with every choice about the new master key.
    pub fn begin_rotation_with(&self, new_key: Option<&KeySource>, o: &NewMaster, reencrypt: bool) -> Result<u32> {
        // Derive the new master key (Argon2 for a passphrase: slow) before
        // taking the lock; its salt is fresh, so nothing depends on the state.
        let (derived, same_passphrase) = match new_key {
            None => (None, false),
            Some(k) => {
                let (d, same) = self.derive_new_master(k, o)?;
                (Some(d), same)
            }
        };
        self.audit_prepare()?;
        let mut guard = self.lock_inner();
        let inner = &mut *guard;
        self.check_writable(inner)?;
        if let Some((spec, _, kcv, _)) = &derived {
            if matches!(spec, MasterSpec::Key) && ct_eq(kcv, &inner.header.active.kcv) {
                return Err(Error::InvalidArgument(
                    "the new master key is the current one; give a different key (or rotate data keys only)".into(),
                ));
            }
            if matches!(spec, MasterSpec::Key) && inner.header.retired.iter().any(|r| ct_eq(kcv, &r.kcv)) {
                return Err(Error::InvalidArgument("the new master key was retired by an earlier rotation".into()));
            }
        }
        let streams: Vec<u32> = inner.writers.keys().copied().collect();
        for s in streams {
            if let Some(mut w) = inner.writers.remove(&s) {
                self.seal_writer(inner, &mut w)?;
            }
        }
        let mut new_master = None;
        let mut header = inner.header.clone();
        if let Some((spec, m, kcv, src)) = derived {
            let version = inner.header.active.version + 1;
            header.retired.push(inner.header.active);
            if header.retired.len() > keyring::MAX_RETIRED {
                header.retired.remove(0);
            }
            header.active = MasterCheck { version, spec, kcv };
            new_master = Some((m, version, src));
        }
        let (files_total, bytes_total) =
            (inner.body.files.len() as u64, inner.body.files.iter().map(|f| f.state.sealed_len()).sum::<u64>());
        if let Some((_, version, src)) = &new_master {
            self.audit_locked(
                inner,
                "rewrap",
                format!(
                    "{{\"from_version\":{},\"to_version\":{version},\"data_keys\":{files_total},\"key_source\":{}{}}}",
                    inner.header.active.version,
                    json_str(src),
                    if same_passphrase { ",\"same_passphrase\":true,\"kdf_retuned\":true" } else { "" }
                ),
            )?;
        }
        if reencrypt {
            let detail = format!(
                "{{\"files\":{files_total},\"bytes\":{bytes_total},\"data_keys_only\":{}}}",
                new_master.is_none()
            );
            if new_master.is_some() {
                self.audit_more(inner, "reencrypt-started", detail)?;
            } else {
                self.audit_locked(inner, "reencrypt-started", detail)?;
            }
        }
        // Every data key created so far (the audit file just started
        // included) has been wrapped under the old master key: all of them
        // are to be replaced. (Ids reserved but not handed out yet will get
        // their keys under the new one.)
        let mark = inner.alloc;
        let mut body = inner.body.clone();
        if let Some((m, version, _)) = &new_master {
            let new_wrap = keyring::wrap_key(m, &self.db_id);
            for f in body.files.iter_mut() {
                let dek = keyring::unwrap_dek(&inner.wrap_key, &self.db_id, f).map_err(|_| {
                    Error::tampered(
                        KEYRING_FILE,
                        0,
                        format!("data key of {} failed to unwrap", file_name(f.file_id, f.kind)),
                    )
                })?;
                f.wrapped = keyring::wrap_dek(&new_wrap, *version, &self.db_id, f.file_id, f.key_id, f.kind, &dek)?;
            }
            for r in body.masters.iter_mut() {
                if r.state == MasterState::Active {
                    r.state = MasterState::Retired;
                }
            }
            body.masters.push(keyring::MasterRecord {
                version: *version,
                created_unix: now_unix(),
                state: MasterState::Active,
                first_file_id: mark,
            });
        }
        if reencrypt {
            body.rotation = Some(RotationState {
                target_version: header.active.version,
                mark,
                started_unix: now_unix(),
                // Every file now listed, the audit file just started included.
                files_total: body.files.len() as u64,
                bytes_total: body.files.iter().map(|f| f.state.sealed_len()).sum::<u64>(),
                data_keys_only: new_master.is_none(),
                finished_unix: 0,
            });
        }
        let version = header.active.version;
        self.persist_as(inner, header, body, new_master.map(|(m, _, _)| m), true)?;
        // The audit file written under the old master key is sealed too, so
        // that it can be re-encrypted; the next entry starts a new one.
        // (Best effort: the new key is in force whatever happens here; a file
        // left active is sealed by the next open's recovery.)
        if reencrypt && let Some(mut w) = inner.writers.remove(&AUDIT_STREAM) {
            let _ = self.seal_writer(inner, &mut w);
        }
        Ok(version)
    }

    /// The new master key of a rotation from `k`: its spec (a fresh salt for
    /// a passphrase), the key, its check value and the source's description;
    /// and whether it is the current passphrase with new Argon2id parameters.
    fn derive_new_master(&self, k: &KeySource, o: &NewMaster) -> Result<(DerivedMaster, bool)> {
        let material = k.material()?;
        if k.is_command() {
            // A command that prints a fresh key each time would lock
            // the database for good: it must print the same key twice.
            let again = k.material()?;
            let same = match (&material, &again) {
                (Material::Key(a), Material::Key(b)) => ct_eq(a.expose(), b.expose()),
                _ => false,
            };
            if !same {
                return Err(Error::KeySource(
                    "the new key command printed a different key when run a second time; a command that makes a new key on every run would lock the database for good (make it print the stored key)".into(),
                ));
            }
        }
        let mut same_passphrase = false;
        let spec = match &material {
            Material::Key(_) => MasterSpec::Key,
            Material::Passphrase(_) => {
                o.argon2.check_new(o.allow_weak_kdf, self.opts.max_kdf_memory_kib)?;
                same_passphrase = self.refuse_known_passphrase(&material, o.argon2, o.retune_kdf)?;
                let mut salt = [0u8; 16];
                crate::crypto::random_bytes(&mut salt)?;
                MasterSpec::Passphrase { params: o.argon2, salt }
            }
        };
        let m = master_for(&material, &spec)?.ok_or_else(|| Error::KeySource("key material mismatch".into()))?;
        let kcv = keyring::key_check_value(&m, &self.db_id);
        Ok(((spec, m, kcv, k.describe()), same_passphrase))
    }

    /// Rewrite one live sealed file under a fresh data key (same records,
    /// same place in its stream) and swap it in atomically. The old file
    /// stays readable until [`Store::release`]: returns its id's
    /// replacement and the new position of every record, in order.
    pub fn reencrypt_file(&self, file_id: u64) -> Result<(u64, Vec<RecordPos>)> {
        self.audit_prepare()?;
        let SealedCopy { info, builder: b, positions, .. } = self.copy_sealed(file_id, |_| Ok(None))?;
        let pending = b.finish()?;
        let new_id = pending.file_id();
        let len = info.state.sealed_len();
        let mut guard = self.lock_inner();
        let remaining = guard
            .body
            .rotation
            .map_or(0, |r| guard.body.files.iter().filter(|f| f.file_id < r.mark && f.file_id != file_id).count());
        self.commit_locked(
            &mut guard,
            Edit { add: vec![pending], remove: vec![file_id], root: None },
            true,
            Some((
                "reencrypt-file",
                format!(
                    "{{\"old_file\":\"{}\",\"new_file\":\"{}\",\"bytes\":{len},\"files_remaining\":{remaining}}}",
                    info.name,
                    file_name(new_id, info.kind)
                ),
            )),
        )?;
        Ok((new_id, positions))
    }

    /// End the running re-encryption if no file is left under an old data
    /// key: delete every file removed from the manifest whose deletion is
    /// not yet durable (an error if one cannot be deleted: nothing is
    /// claimed then), record the end, and mark every retired master version
    /// with no file left from its time as destroyed, dropping a destroyed
    /// passphrase version's salt and check value from the plaintext header.
    /// Returns whether it ended.
    pub fn finish_rotation(&self) -> Result<bool> {
        self.audit_prepare()?;
        let mut guard = self.lock_inner();
        let inner = &mut *guard;
        let Some(r) = inner.body.rotation.filter(|r| r.finished_unix == 0) else { return Ok(false) };
        if inner.body.files.iter().any(|f| f.file_id < r.mark) || !inner.retiring.is_empty() {
            return Ok(false);
        }
        self.check_writable(inner)?;
        let pending: Vec<u64> = inner.removed.keys().copied().collect();
        self.delete_removed(inner, &pending)?;
        if !inner.removed.is_empty() {
            return Ok(false);
        }
        self.audit_locked(
            inner,
            "reencrypt-finished",
            format!(
                "{{\"files\":{},\"bytes\":{},\"statement\":\"no live file is encrypted under a data key created before this rotation\"}}",
                r.files_total, r.bytes_total
            ),
        )?;
        let mut destroyed = Vec::new();
        for m in &inner.body.masters {
            if m.state == MasterState::Retired
                && !inner.body.files.iter().any(|f| Self::origin(&inner.body.masters, f.file_id) == m.version)
            {
                destroyed.push(m.version);
            }
        }
        for v in &destroyed {
            self.audit_more(
                inner,
                "master-destroyed",
                format!("{{\"version\":{v},\"statement\":\"no live file is encrypted under key version {v}\"}}"),
            )?;
        }
        let mut body = inner.body.clone();
        for m in body.masters.iter_mut() {
            if destroyed.contains(&m.version) {
                m.state = MasterState::Destroyed;
            }
        }
        body.rotation = Some(RotationState { finished_unix: now_unix().max(1), ..r });
        // A destroyed passphrase version's salt and check value would only
        // invite offline guessing of an old passphrase: they go.
        let mut header = inner.header.clone();
        header.retired.retain(|c| !(destroyed.contains(&c.version) && matches!(c.spec, MasterSpec::Passphrase { .. })));
        self.persist_as(inner, header, body, None, true)?;
        Ok(true)
    }

    /// Refuse a new passphrase that already opens (or once opened) this
    /// database: it would change nothing, while `keys status` would claim
    /// the old version retired. With `retune`, the current passphrase is
    /// accepted with other Argon2id parameters (a new salt and cost; whoever
    /// knew the passphrase still does): returns whether that is the case.
    /// At most a few Argon2id runs.
    fn refuse_known_passphrase(&self, material: &Material, new: Argon2Params, retune: bool) -> Result<bool> {
        let (active, retired) = {
            let inner = self.lock_inner();
            (inner.header.active, inner.header.retired.clone())
        };
        let cap = self.opts.max_kdf_memory_kib;
        let known = std::iter::once((active, true)).chain(retired.into_iter().rev().map(|r| (r, false)));
        let mut runs = 0;
        let mut same = false;
        for (check, is_active) in known {
            let MasterSpec::Passphrase { params, .. } = check.spec else { continue };
            if runs == super::MAX_RETIRED_ARGON2_RUNS || params.m_cost_kib > cap {
                continue;
            }
            runs += 1;
            if let Some(m) = master_for(material, &check.spec)?
                && ct_eq(&keyring::key_check_value(&m, &self.db_id), &check.kcv)
            {
                if is_active && retune && params != new {
                    same = true;
                    continue;
                }
                return Err(Error::InvalidArgument(if is_active && retune {
                    "the new passphrase is the current one with the same Argon2id parameters: that would change nothing"
                        .into()
                } else if is_active {
                    "the new passphrase is the current one: a rotation to it would change nothing; give a different passphrase (or, to change only its Argon2id cost, --retune-kdf with new --kdf-* parameters)".into()
                } else {
                    format!(
                        "the new passphrase is master key version {}, retired by an earlier rotation; give a new one",
                        check.version
                    )
                }));
            }
        }
        Ok(same)
    }
}
