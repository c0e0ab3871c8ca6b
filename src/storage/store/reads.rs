//! Reading records back, every frame verified.

use super::*;

impl Store {
    /// Open data file `file_id` (`name` at `path`) to read it. Missing, it
    /// is tampering while the manifest lists it, and otherwise a file a
    /// concurrent change replaced (read again).
    fn open_for_read(&self, file_id: u64, name: &str, path: &Path) -> Result<Box<dyn VfsFile>> {
        match self.opts.vfs.open(path, OpenMode::Read) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let still_listed = self.lock_inner().body.files.iter().any(|f| f.file_id == file_id);
                Err(if still_listed {
                    Error::tampered(name, 0, "file listed in the manifest is missing")
                } else {
                    Error::NotFound(format!("{name} was replaced by a concurrent change; read again"))
                })
            }
            Err(e) => Err(Error::io("opening", path, e)),
        }
    }

    pub(super) fn entry(&self, inner: &Inner, file_id: u64) -> Result<FileEntry> {
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
        let f = self.open_for_read(file_id, &name, &path)?;
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
        let f = self.open_for_read(pos.file_id, &name, &path)?;
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
}

/// A sealed file held open for reads of single frames at known places
/// (a run's blocks): one positioned read and one authentication a frame.
pub struct SealedFile {
    file_id: u64,
    name: String,
    file: Box<dyn VfsFile>,
    key: Arc<FrameKey>,
    len: u64,
}

impl SealedFile {
    /// Its file id.
    pub fn file_id(&self) -> u64 {
        self.file_id
    }
    /// Its file name (for error messages).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether it is empty (never, for a sealed file).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The payload of the data frame `index` at `offset`, whose payload is
    /// `payload_len` bytes: CRC checked, then authenticated as that frame
    /// of this file (so a position that names any other frame fails).
    pub fn read_frame(&self, index: u64, offset: u64, payload_len: usize) -> Result<Vec<u8>> {
        use crate::format::frame::{FRAME_HEADER_LEN, decode_frame};
        let total = FRAME_HEADER_LEN + payload_len + crate::crypto::aead::TAG_LEN;
        if payload_len > MAX_PAYLOAD || offset.saturating_add(total as u64) > self.len {
            return Err(Error::corrupted(
                &self.name,
                offset,
                format!("frame {index} of {payload_len} bytes extends past the end of the file"),
            ));
        }
        let mut buf = vec![0u8; total];
        self.file.read_exact_at(&mut buf, offset).map_err(|e| Error::io("reading", Path::new(&self.name), e))?;
        let raw = decode_frame(&buf).map_err(|e| Error::corrupted(&self.name, offset, e.to_string()))?;
        if raw.encoded_len() != total || raw.is_last() || raw.is_sync_marker() {
            return Err(Error::corrupted(
                &self.name,
                offset,
                format!("no data frame {index} of {payload_len} bytes here"),
            ));
        }
        self.key
            .open(index, &raw)
            .map_err(|_| Error::tampered(&self.name, offset, format!("frame {index} failed authentication")))
    }
}

impl Store {
    /// Open a live sealed write-once file (one without sync markers, as
    /// [`FileBuilder`] writes them) for [`SealedFile::read_frame`]: its
    /// length, its header and its sealing frame are checked first, so that
    /// a file cut short, given another header or another sealing frame is
    /// an error at once, whatever is read of it later.
    pub fn open_sealed(&self, file_id: u64) -> Result<SealedFile> {
        let (entry, key) = {
            let mut guard = self.lock_inner();
            let inner = &mut *guard;
            let entry = self.entry(inner, file_id)?;
            let key = self.frame_key(inner, &entry)?;
            (entry, key)
        };
        let name = file_name(entry.file_id, entry.kind);
        let FileState::Sealed { len, frames, final_frame: true } = entry.state else {
            return Err(Error::InvalidArgument(format!("{name} is not a sealed write-once file")));
        };
        let path = self.dir.join(&name);
        let file = self.open_for_read(file_id, &name, &path)?;
        let on_disk = file.len().map_err(|e| Error::io("reading the length of", &path, e))?;
        if on_disk != len {
            return Err(Error::tampered(
                &name,
                on_disk.min(len),
                format!("file is {on_disk} bytes, the manifest says {len}"),
            ));
        }
        use crate::format::frame::{FINAL_PAYLOAD_LEN, FRAME_HEADER_LEN, decode_final_payload, decode_frame};
        use crate::format::header::HEADER_LEN;
        let mut hdr = [0u8; HEADER_LEN];
        file.read_exact_at(&mut hdr, 0).map_err(|e| Error::io("reading", &path, e))?;
        if hdr != FileHeader::new(entry.kind, entry.file_id, entry.key_id).encode() {
            return Err(Error::tampered(&name, 0, "header does not match the manifest"));
        }
        let fin_len = (FRAME_HEADER_LEN + FINAL_PAYLOAD_LEN + crate::crypto::aead::TAG_LEN) as u64;
        let at = len
            .checked_sub(fin_len)
            .filter(|at| *at >= HEADER_LEN as u64)
            .ok_or_else(|| Error::tampered(&name, 0, "too short for its sealing frame"))?;
        let mut fin = vec![0u8; fin_len as usize];
        file.read_exact_at(&mut fin, at).map_err(|e| Error::io("reading", &path, e))?;
        let sealed = decode_frame(&fin)
            .ok()
            .filter(|raw| raw.is_last() && raw.encoded_len() == fin.len())
            .and_then(|raw| key.open(frames, &raw).ok())
            .and_then(|p| decode_final_payload(&p));
        if sealed.is_none_or(|(n, _)| n != frames) {
            return Err(Error::tampered(&name, at, "sealing frame missing, damaged or not this file's"));
        }
        Ok(SealedFile { file_id, name, file, key, len })
    }
}
