//! Data files the manifest does not list. Such a file is evidence, never
//! garbage: it is removed only when the keyring itself says what it is (a
//! file being written when a session ended, or one a committed change
//! removed), or when it holds nothing but (part of) a header, the leftover
//! of a stream file whose creation was interrupted before the keyring listed
//! it (a stream file gets its first record only once it is listed). A file
//! being written that is complete (sealed) may be the only copy of what a
//! lost commit wrote, or the keyring may be older than its commit: it is
//! moved into `quarantine/`, never deleted. A file above the keyring's id
//! mark, or one holding records that nothing explains, means the keyring is
//! older than the files (a restored or rolled-back keyring) or that the file
//! came from elsewhere: opening and `verify` refuse it, naming the file, and
//! nothing is changed. A keyring of format version 2 records neither the
//! files being written nor the mark; there every unlisted file holding
//! records is moved into `quarantine/` (reported, never deleted).

use super::vfs::{OpenMode, Vfs, VfsFile};
use crate::format::header::HEADER_LEN;
use crate::format::{FileKind, parse_file_name};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Name of the folder unlisted files are moved into.
pub const QUARANTINE_DIR: &str = "quarantine";

/// What the keyring knows about the files of a data directory.
pub(crate) struct Known {
    /// Live files (the manifest): id and kind.
    pub live: HashMap<u64, FileKind>,
    /// Files being written, recorded before they were created.
    pub building: BTreeMap<u64, FileKind>,
    /// Files removed by a committed change, deletion not yet durable.
    pub removed: BTreeMap<u64, FileKind>,
    /// The id mark (`None`: a format-2 keyring, which has none).
    pub mark: Option<u64>,
}

/// What to do with a file the manifest does not list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stray {
    /// A known leftover: removed by the next read-write open.
    Leftover {
        /// File name.
        name: String,
        /// What it is.
        why: String,
    },
    /// Unexplained, but holding no complete file: moved into `quarantine/`.
    Quarantine {
        /// File name.
        name: String,
        /// Why it is set aside.
        why: String,
    },
    /// Evidence of a replaced keyring or a file from elsewhere: refused.
    Evidence {
        /// File name.
        name: String,
        /// What gives it away.
        why: String,
    },
}

/// Whether the last bytes of a file form a CRC-valid final frame.
pub(crate) fn ends_with_final_frame(f: &dyn VfsFile) -> bool {
    let n = super::segment::FileWriter::frame_len(crate::format::frame::FINAL_PAYLOAD_LEN);
    let Ok(len) = f.len() else { return false };
    if len < n + HEADER_LEN as u64 {
        return false;
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact_at(&mut buf, len - n).is_ok()
        && crate::format::frame::decode_frame(&buf).is_ok_and(|raw| raw.is_last() && raw.encoded_len() == buf.len())
}

/// Classify every data file in `names` that the manifest does not list.
pub(crate) fn classify(vfs: &dyn Vfs, dir: &Path, names: &[String], known: &Known) -> crate::Result<Vec<Stray>> {
    let mut out = Vec::new();
    for n in names {
        let Some((id, kind)) = parse_file_name(n) else { continue };
        let name = n.clone();
        match known.live.get(&id) {
            Some(k) if *k == kind => continue,
            Some(k) => {
                out.push(Stray::Evidence {
                    name,
                    why: format!("named after the live {k:?} file of the same id, but of another kind ({kind:?})"),
                });
                continue;
            }
            None => {}
        }
        if known.removed.get(&id) == Some(&kind) {
            out.push(Stray::Leftover { name, why: "a file a committed change removed".into() });
            continue;
        }
        let path = dir.join(n);
        let f = match vfs.open(&path, OpenMode::Read) {
            Ok(f) => f,
            // Gone since the directory was listed: nothing to explain.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(crate::Error::io("opening", &path, e)),
        };
        let len = f.len().map_err(|e| crate::Error::io("reading length of", &path, e))?;
        let sealed = len > HEADER_LEN as u64 && ends_with_final_frame(f.as_ref());
        if known.building.get(&id) == Some(&kind) {
            // A crash between sealing such a file and committing it leaves
            // it complete; so does an older keyring put back after its
            // commit. Either way it may be the only copy of something: kept.
            if sealed {
                out.push(Stray::Quarantine {
                    name,
                    why: format!(
                        "a complete file ({len} bytes) that was being written when its session ended: its commit did not happen, or the keyring is older than the commit"
                    ),
                });
            } else {
                out.push(Stray::Leftover { name, why: "a file being written when its session ended".into() });
            }
            continue;
        }
        if let Some(mark) = known.mark
            && id >= mark
        {
            out.push(Stray::Evidence {
                name,
                why: format!(
                    "not in the manifest, and created after this keyring was written (its id is at or above the keyring's id mark {mark:016x}): the keyring is older than the data files (restored or rolled back?), or the file comes from elsewhere"
                ),
            });
            continue;
        }
        if len <= HEADER_LEN as u64 {
            out.push(Stray::Leftover { name, why: format!("an interrupted file creation ({len} bytes, no record)") });
            continue;
        }
        let what = if sealed { "a complete sealed file" } else { "a file holding records" };
        if known.mark.is_some() {
            out.push(Stray::Evidence {
                name,
                why: format!(
                    "{what} ({len} bytes) that the manifest does not list: the keyring is older than the data files (restored or rolled back?), or the file comes from elsewhere"
                ),
            });
        } else {
            out.push(Stray::Quarantine {
                name,
                why: format!(
                    "{what} ({len} bytes) that the manifest does not list; a keyring of format version 2 cannot say whether it was being written when a session ended, or is newer than the keyring"
                ),
            });
        }
    }
    Ok(out)
}

/// Move `name` from `dir` into `dir/quarantine/` (under a fresh name if one
/// is taken), durably. Returns its path relative to `dir`.
pub(crate) fn quarantine(vfs: &dyn Vfs, dir: &Path, name: &str) -> crate::Result<String> {
    let q = dir.join(QUARANTINE_DIR);
    vfs.create_dir_all(&q).map_err(|e| crate::Error::io("creating directory", &q, e))?;
    let mut target = name.to_string();
    let mut i = 1;
    while vfs.exists(&q.join(&target)).map_err(|e| crate::Error::io("checking", q.join(&target), e))? {
        target = format!("{name}.{i}");
        i += 1;
    }
    let to = q.join(&target);
    vfs.rename(&dir.join(name), &to).map_err(|e| crate::Error::io("moving into quarantine", &to, e))?;
    vfs.sync_dir(&q).map_err(|e| crate::Error::io("syncing directory", &q, e))?;
    vfs.sync_dir(dir).map_err(|e| crate::Error::io("syncing directory", dir, e))?;
    Ok(format!("{QUARANTINE_DIR}/{target}"))
}
