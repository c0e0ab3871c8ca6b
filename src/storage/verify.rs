//! Full scrub of a data directory: the keyring, the manifest, every frame's
//! CRC and tag, sealing frames, lengths and counts. With `--no-key`, only
//! what can be checked without a key: structure and CRCs.

use super::segment::{Expect, scan};
use super::store::{KEYRING_FILE, KEYRING_TMP, LOCK_FILE, Store, read_keyring_bytes};
use super::vfs::{OpenMode, Vfs};
use crate::format::header::FileHeader;
use crate::format::{file_name, parse_file_name};
use crate::{Error, Result};
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

/// What verification checked and found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// True when no problem was found.
    pub ok: bool,
    /// Whether frames were authenticated (a key was given).
    pub authenticated: bool,
    /// Active master key version (with a key).
    pub master_version: Option<u32>,
    /// Files in the manifest (with a key) or data files found (without).
    pub files_checked: usize,
    /// Data frames checked.
    pub frames_checked: u64,
    /// Bytes read.
    pub bytes_checked: u64,
    /// Problems: integrity failures, with file and offset.
    pub problems: Vec<Problem>,
    /// Observations that are not integrity failures.
    pub notes: Vec<String>,
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

impl Store {
    /// Verify every live file under the key (the keyring and manifest were
    /// authenticated when the store was opened).
    pub fn verify(&self) -> VerifyReport {
        let mut r =
            VerifyReport { authenticated: true, master_version: Some(self.master_version()), ..Default::default() };
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
                Err(err) => {
                    r.problems.push(Problem {
                        file: name,
                        offset: 0,
                        problem: format!("listed in the manifest but cannot be opened: {err}"),
                    });
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
                Err(err) => r.problems.push(locate(&err, &name)),
            }
        }
        check_stray_files(
            vfs.as_ref(),
            self.dir(),
            Some(&self.files().iter().map(|f| f.file_id).collect::<Vec<_>>()),
            &mut r,
        );
        // The key audit log: every entry in order, chained, and through the
        // head the keyring records (only if its files passed the scan, so a
        // problem is reported once).
        if r.problems.is_empty() {
            match self.audit_log() {
                Ok((entries, _)) => {
                    r.notes.push(format!("key audit log: {} entries, hash chain intact", entries.len()))
                }
                Err(err) => r.problems.push(locate(&err, "audit log")),
            }
        }
        r.ok = r.problems.is_empty();
        r
    }
}

fn check_stray_files(vfs: &dyn Vfs, dir: &Path, live: Option<&[u64]>, r: &mut VerifyReport) {
    let Ok(names) = vfs.read_dir(dir) else {
        r.problems.push(Problem { file: ".".into(), offset: 0, problem: "cannot list the data directory".into() });
        return;
    };
    for n in names {
        if n == KEYRING_FILE || n == LOCK_FILE {
            continue;
        }
        if n == KEYRING_TMP {
            r.notes.push(format!("{n}: left by an interrupted keyring write; removed on the next read-write open"));
            continue;
        }
        match (parse_file_name(&n), live) {
            (Some((id, _)), Some(live)) if !live.contains(&id) => {
                r.notes.push(format!(
                    "{n}: not in the manifest (an interrupted write); removed on the next read-write open"
                ));
            }
            (Some(_), _) => {}
            (None, _) => r.notes.push(format!("{n}: not a DriftDB file")),
        }
    }
}

/// Whether the last bytes of a file form a CRC-valid final frame.
fn ends_with_final_frame(f: &dyn super::vfs::VfsFile) -> bool {
    let n = super::segment::FileWriter::frame_len(crate::format::frame::FINAL_PAYLOAD_LEN);
    let Ok(len) = f.len() else { return false };
    if len < n + crate::format::header::HEADER_LEN as u64 {
        return false;
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact_at(&mut buf, len - n).is_ok()
        && crate::format::frame::decode_frame(&buf).is_ok_and(|raw| raw.is_last() && raw.encoded_len() == buf.len())
}

/// Verify what can be checked without a key: the keyring's structure and
/// CRC, every data file's header, frame structure and CRCs.
pub fn verify_without_key(dir: &Path, vfs: &dyn Vfs) -> Result<VerifyReport> {
    let kr = dir.join(KEYRING_FILE);
    if !vfs.exists(&kr).map_err(|e| Error::io("checking", &kr, e))? {
        return Err(Error::NotADatabase { path: dir.to_path_buf() });
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
    match read_keyring_bytes(vfs, &kr).and_then(|b| {
        crate::format::keyring::decode_keyring(&b)
            .map(|_| b.len())
            .map_err(|e| Error::corrupted(KEYRING_FILE, e.offset as u64, e.reason))
    }) {
        Ok(n) => r.bytes_checked += n as u64,
        Err(e) => r.problems.push(locate(&e, KEYRING_FILE)),
    }
    let names = vfs.read_dir(dir).map_err(|e| Error::io("listing", dir, e))?;
    for n in &names {
        let Some((id, kind)) = parse_file_name(n) else { continue };
        r.files_checked += 1;
        let path = dir.join(n);
        let f = match vfs.open(&path, OpenMode::Read) {
            Ok(f) => f,
            Err(e) => {
                r.problems.push(Problem { file: n.clone(), offset: 0, problem: format!("cannot open: {e}") });
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
            Err(e) => r.problems.push(locate(&e, n)),
        }
    }
    check_stray_files(vfs, dir, None, &mut r);
    r.ok = r.problems.is_empty();
    Ok(r)
}
