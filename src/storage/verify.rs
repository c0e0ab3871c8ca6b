//! Full scrub of a data directory: the keyring, the manifest, every frame's
//! CRC and tag, sealing frames, lengths and counts, and every file the
//! manifest does not list. With `--no-key`, what can be checked without a
//! key: the keyring's structure and CRC, and (from format version 3, whose
//! keyring lists the live files in plaintext) every listed file's presence,
//! length, frame count and sealing frame, and every frame's structure and CRC.

use super::segment::{Expect, scan};
use super::store::{KEYRING_FILE, KEYRING_TMP, LOCK_FILE, Store, missing_keyring, read_keyring_bytes};
use super::strays::{Known, QUARANTINE_DIR, Stray, classify, ends_with_final_frame};
use super::vfs::{OpenMode, Vfs};
use crate::format::header::FileHeader;
use crate::format::keyring::FileState;
use crate::format::{file_name, parse_file_name};
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// One problem found by verification.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// File name relative to the data directory.
    pub file: String,
    /// Byte offset of the problem.
    pub offset: u64,
    /// What is wrong.
    pub problem: String,
}

/// The head of the key audit log's hash chain, as a report shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditHeadReport {
    /// Entries the keyring records.
    pub entries: u64,
    /// The chain hash after the last of them, as hex.
    pub hash: String,
}

/// What verification checked and found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// True when no problem was found (and nothing failed to be checked).
    pub ok: bool,
    /// Whether frames were authenticated (a key was given).
    pub authenticated: bool,
    /// Active master key version (with a key).
    pub master_version: Option<u32>,
    /// The keyring's generation (incremented on every keyring write): pin
    /// the newest one seen with `--expect-generation` to detect a rollback.
    pub keyring_generation: Option<u64>,
    /// The key audit log's chain head the keyring records (with a key).
    pub audit_head: Option<AuditHeadReport>,
    /// Files in the manifest (with a key, or from the public manifest) or
    /// data files found (a format-2 keyring without a key).
    pub files_checked: usize,
    /// Data frames checked.
    pub frames_checked: u64,
    /// Bytes read.
    pub bytes_checked: u64,
    /// Problems: integrity failures, with file and offset.
    pub problems: Vec<Problem>,
    /// Checks that could not be made (an I/O error such as a permission
    /// denied): not integrity failures, but the data was not all checked.
    pub errors: Vec<String>,
    /// Observations that are not integrity failures.
    pub notes: Vec<String>,
}

impl VerifyReport {
    fn finish(mut self) -> Self {
        self.ok = self.problems.is_empty() && self.errors.is_empty();
        self
    }
}

/// The problem an integrity error describes (file and offset when it names them).
pub fn locate_public(e: &Error) -> Problem {
    locate(e, "keyring")
}

/// File and offset named by an error, when it names one.
pub(crate) fn locate(e: &Error, default_file: &str) -> Problem {
    match e {
        Error::Corrupted { file, offset, reason } => {
            Problem { file: file.clone(), offset: *offset, problem: format!("corruption: {reason}") }
        }
        Error::Tampered { file, offset, reason } => {
            Problem { file: file.clone(), offset: *offset, problem: format!("integrity: {reason}") }
        }
        other => Problem { file: default_file.to_string(), offset: 0, problem: other.to_string() },
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An error that is not about integrity goes to `errors`, an integrity error to `problems`.
fn record(r: &mut VerifyReport, e: Error, file: &str) {
    if e.is_integrity() { r.problems.push(locate(&e, file)) } else { r.errors.push(e.to_string()) }
}

impl Store {
    /// Verify every live file under the key (the keyring and manifest were
    /// authenticated when the store was opened), and every file the
    /// manifest does not list.
    pub fn verify(&self) -> VerifyReport {
        let head = self.audit_head();
        let mut r = VerifyReport {
            authenticated: true,
            master_version: Some(self.master_version()),
            keyring_generation: Some(self.keyring_generation()),
            audit_head: Some(AuditHeadReport { entries: head.count, hash: hex(&head.hash) }),
            ..Default::default()
        };
        let vfs = self.options().vfs.clone();
        for (e, key, key_err, expect) in self.verify_plan() {
            let name = file_name(e.file_id, e.kind);
            r.files_checked += 1;
            if let Some(err) = key_err {
                r.problems.push(Problem { file: name, offset: 0, problem: err });
                continue;
            }
            let path = self.dir().join(&name);
            let f = match vfs.open(&path, OpenMode::Read) {
                Ok(f) => f,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    // Replaced by a concurrent change (a merge, a re-encryption)
                    // since the plan was made: not missing.
                    if self.files().iter().any(|f| f.file_id == e.file_id) {
                        r.problems.push(Problem {
                            file: name,
                            offset: 0,
                            problem: "integrity: file listed in the manifest is missing".into(),
                        });
                    }
                    continue;
                }
                Err(err) => {
                    r.errors.push(Error::io("opening", &path, err).to_string());
                    continue;
                }
            };
            r.bytes_checked += f.len().unwrap_or(0);
            let hdr = FileHeader::new(e.kind, e.file_id, e.key_id);
            match scan(f.as_ref(), &name, Some(&hdr), key.as_deref(), expect, |_, _, _| Ok(())) {
                Ok(out) => {
                    r.frames_checked += out.frames;
                    if let Some((off, why)) = out.torn {
                        r.notes.push(format!(
                            "{name}: torn tail at offset {off} ({why}); cut off on the next read-write open"
                        ));
                    }
                    if expect == Expect::Recovering {
                        r.notes.push(format!(
                            "{name}: left active by a crashed session; sealed on the next read-write open"
                        ));
                    }
                }
                Err(err) => record(&mut r, err, &name),
            }
        }
        check_strays(vfs.as_ref(), self.dir(), &|| self.stray_knowledge(), &mut r);
        // The key audit log: every entry in order, chained, and through the
        // head the keyring records (only if its files passed the scan, so a
        // problem is reported once).
        if r.problems.is_empty() {
            match self.audit() {
                Ok(log) => {
                    r.notes.push(format!(
                        "key audit log: {} {}, hash chain intact, head {}",
                        log.recorded.count,
                        if log.recorded.count == 1 { "entry" } else { "entries" },
                        hex(&log.recorded.hash)
                    ));
                    let pending = log.head.count - log.recorded.count;
                    if pending > 0 {
                        r.notes.push(format!(
                            "key audit log: {pending} more {} past the keyring's head, whose keyring write never completed (the events did not happen); the next key event records {} as aborted",
                            if pending == 1 { "entry" } else { "entries" },
                            if pending == 1 { "it" } else { "them" }
                        ));
                    }
                }
                Err(err) => record(&mut r, err, "audit log"),
            }
        }
        r.finish()
    }
}

/// Report every file the manifest does not list, as recovery would treat it.
/// `known` is asked after the directory is listed: a file is recorded in the
/// keyring before it is created, so every file listed is known by then. A
/// file that looks like evidence is looked at once more (listing, then
/// asking again): a writer in this process may have moved on meanwhile.
fn check_strays(vfs: &dyn Vfs, dir: &Path, known: &dyn Fn() -> Known, r: &mut VerifyReport) {
    let list = |r: &mut VerifyReport| match vfs.read_dir(dir) {
        Ok(n) => Some(n),
        Err(e) => {
            r.errors.push(Error::io("listing", dir, e).to_string());
            None
        }
    };
    let Some(names) = list(r) else { return };
    let first = classify(vfs, dir, &names, &known());
    let first = match first {
        Ok(strays) if strays.iter().any(|s| matches!(s, Stray::Evidence { .. })) => {
            let again = list(r).map(|n| classify(vfs, dir, &n, &known()));
            match again {
                Some(Ok(second)) => Ok(strays
                    .into_iter()
                    .filter(|s| !matches!(s, Stray::Evidence { .. }) || second.contains(s))
                    .collect()),
                Some(Err(e)) => Err(e),
                None => Ok(strays),
            }
        }
        other => other,
    };
    match first {
        Ok(strays) => {
            for s in strays {
                match s {
                    Stray::Leftover { name, why } => {
                        r.notes.push(format!("{name}: not in the manifest: {why}; removed on the next read-write open"))
                    }
                    Stray::Quarantine { name, why } => {
                        r.notes.push(format!("{name}: {why}; moved into {QUARANTINE_DIR}/ on the next read-write open"))
                    }
                    Stray::Evidence { name, why } => {
                        r.problems.push(Problem { file: name, offset: 0, problem: format!("integrity: {why}") })
                    }
                }
            }
        }
        Err(e) => record(r, e, "."),
    }
    for n in &names {
        if n == KEYRING_FILE || n == LOCK_FILE || parse_file_name(n).is_some() {
            continue;
        }
        if n == KEYRING_TMP {
            r.notes.push(format!("{n}: left by an interrupted keyring write; removed on the next read-write open"));
        } else if n == QUARANTINE_DIR {
            let held = vfs.read_dir(&dir.join(n)).map(|v| v.len()).unwrap_or(0);
            r.notes.push(format!(
                "{QUARANTINE_DIR}/: {held} {} set aside by recovery (evidence, never deleted: examine and remove by hand)",
                if held == 1 { "file" } else { "files" }
            ));
        } else {
            r.notes.push(format!("{n}: not a DriftDB file"));
        }
    }
}

/// Verify what can be checked without a key: the keyring's structure and
/// CRC; with a keyring of format version 3, every file its public manifest
/// lists (present, its length, its frame count and sealing frame, every
/// frame's structure and CRC) and every file it does not; with an older
/// keyring, every data file's header, frame structure and CRCs.
pub fn verify_without_key(dir: &Path, vfs: &dyn Vfs) -> Result<VerifyReport> {
    verify_without_key_expecting(dir, vfs, None)
}

/// [`verify_without_key`], refusing a keyring older than `expect_generation`.
pub fn verify_without_key_expecting(dir: &Path, vfs: &dyn Vfs, expect_generation: Option<u64>) -> Result<VerifyReport> {
    let kr = dir.join(KEYRING_FILE);
    if !vfs.exists(&kr).map_err(|e| Error::io("checking", &kr, e))? {
        return Err(missing_keyring(vfs, dir));
    }
    let lock_path = dir.join(LOCK_FILE);
    let _lock = if vfs.exists(&lock_path).map_err(|e| Error::io("checking", &lock_path, e))? {
        Some(
            vfs.try_lock(&lock_path, false)
                .map_err(|e| Error::io("locking", &lock_path, e))?
                .ok_or_else(|| Error::InUse { path: dir.to_path_buf() })?,
        )
    } else {
        None
    };
    let mut r = VerifyReport::default();
    let bytes = read_keyring_bytes(vfs, &kr)?;
    let sealed = match crate::format::keyring::decode_keyring(&bytes) {
        Ok(s) => {
            r.bytes_checked += bytes.len() as u64;
            s
        }
        Err(e) => {
            r.problems.push(locate(&Error::corrupted(KEYRING_FILE, e.offset as u64, e.reason), KEYRING_FILE));
            return Ok(r.finish());
        }
    };
    let h = &sealed.header;
    r.keyring_generation = Some(h.generation);
    if let Some(expected) = expect_generation
        && h.generation < expected
    {
        r.problems.push(locate(&Error::RolledBack { found: h.generation, expected }, KEYRING_FILE));
    }
    let names = vfs.read_dir(dir).map_err(|e| Error::io("listing", dir, e))?;
    if h.version >= 3 {
        for pf in &h.public.files {
            let name = file_name(pf.file_id, pf.kind);
            r.files_checked += 1;
            let path = dir.join(&name);
            let f = match vfs.open(&path, OpenMode::Read) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    r.problems.push(Problem {
                        file: name,
                        offset: 0,
                        problem: "integrity: file listed in the manifest is missing".into(),
                    });
                    continue;
                }
                Err(e) => {
                    r.errors.push(Error::io("opening", &path, e).to_string());
                    continue;
                }
            };
            r.bytes_checked += f.len().unwrap_or(0);
            let expect = match pf.state {
                FileState::Sealed { frames, len, final_frame } => Expect::Sealed { frames, len, final_frame },
                FileState::Active => Expect::Recovering,
            };
            let hdr = FileHeader::new(pf.kind, pf.file_id, 0);
            let header_ok = check_header(f.as_ref(), &name, &hdr, &mut r);
            if !header_ok {
                continue;
            }
            match scan_keyless(f.as_ref(), &name, expect) {
                Ok(out) => {
                    r.frames_checked += out.frames;
                    if let Some((off, why)) = out.torn {
                        r.notes.push(format!(
                            "{name}: left active by a session that did not close, with an unreadable tail at offset {off} ({why}): a torn write, cut off on the next read-write open"
                        ));
                    }
                }
                Err(e) => record(&mut r, e, &name),
            }
        }
        let live: HashMap<u64, crate::format::FileKind> = h.public.files.iter().map(|f| (f.file_id, f.kind)).collect();
        let building: BTreeMap<_, _> = h.public.building.iter().copied().collect();
        let removed: BTreeMap<_, _> = h.public.removed.iter().copied().collect();
        let known = || Known {
            live: live.clone(),
            building: building.clone(),
            removed: removed.clone(),
            mark: Some(h.public.id_mark),
        };
        check_strays(vfs, dir, &known, &mut r);
    } else {
        r.notes.push(
            "the keyring predates format version 3 and lists no file in plaintext: without the key, a missing file or a truncated sealed one cannot be told from a crash's leftovers (one read-write open upgrades the keyring)"
                .into(),
        );
        for n in &names {
            let Some((id, kind)) = parse_file_name(n) else { continue };
            r.files_checked += 1;
            let path = dir.join(n);
            let f = match vfs.open(&path, OpenMode::Read) {
                Ok(f) => f,
                Err(e) => {
                    r.errors.push(Error::io("opening", &path, e).to_string());
                    continue;
                }
            };
            r.bytes_checked += f.len().unwrap_or(0);
            let mut hdr = [0u8; crate::format::header::HEADER_LEN];
            let header = f.read_exact_at(&mut hdr, 0).ok().and_then(|()| FileHeader::decode(&hdr).ok());
            let expected = match header {
                Some(h) if h.file_id == id && h.kind == kind => Some(h),
                Some(h) => {
                    r.problems.push(Problem {
                        file: n.clone(),
                        offset: 0,
                        problem: format!("header names file {:016x} of kind {:?}, not this file", h.file_id, h.kind),
                    });
                    continue;
                }
                None => None,
            };
            match scan(f.as_ref(), n, expected.as_ref(), None, Expect::Recovering, |_, _, _| Ok(())) {
                Ok(out) => {
                    r.frames_checked += out.frames;
                    if let Some((off, why)) = out.torn {
                        if ends_with_final_frame(f.as_ref()) {
                            // A cleanly sealed file has no torn tail: this is damage.
                            r.problems.push(Problem {
                                file: n.clone(),
                                offset: off,
                                problem: format!("corruption: {why}"),
                            });
                        } else {
                            r.notes.push(format!(
                                "{n}: unreadable tail at offset {off} ({why}): a torn write if this file was left active by a crash, damage otherwise; an open with the key tells which"
                            ));
                        }
                    }
                }
                Err(e) => record(&mut r, e, n),
            }
        }
        for n in &names {
            if n == KEYRING_TMP {
                r.notes.push(format!("{n}: left by an interrupted keyring write; removed on the next read-write open"));
            }
        }
    }
    Ok(r.finish())
}

/// Check a data file's header against the public manifest (id and kind;
/// the key id is not public). False (with a problem recorded) if it differs.
fn check_header(f: &dyn super::vfs::VfsFile, name: &str, want: &FileHeader, r: &mut VerifyReport) -> bool {
    let mut hdr = [0u8; crate::format::header::HEADER_LEN];
    match f.read_exact_at(&mut hdr, 0).ok().map(|()| FileHeader::decode(&hdr)) {
        Some(Ok(h)) if h.file_id == want.file_id && h.kind == want.kind => true,
        Some(Ok(h)) => {
            r.problems.push(Problem {
                file: name.to_string(),
                offset: 0,
                problem: format!(
                    "integrity: header names file {:016x} of kind {:?}, not the file the manifest lists",
                    h.file_id, h.kind
                ),
            });
            false
        }
        Some(Err(e)) => {
            r.problems.push(Problem {
                file: name.to_string(),
                offset: e.offset as u64,
                problem: format!("corruption: {}", e.reason),
            });
            false
        }
        None => {
            r.problems.push(Problem {
                file: name.to_string(),
                offset: 0,
                problem: "integrity: file truncated: shorter than its header".into(),
            });
            false
        }
    }
}

/// Scan a file without a key against what the public manifest expects
/// (the header was checked already, so it is not compared again).
fn scan_keyless(f: &dyn super::vfs::VfsFile, name: &str, expect: Expect) -> Result<super::segment::ScanOutcome> {
    scan(f, name, None, None, expect, |_, _, _| Ok(()))
}
