//! Reading records back, every frame verified.

use super::*;

impl Store {
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
        let f = match self.opts.vfs.open(&path, OpenMode::Read) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let still_listed = self.lock_inner().body.files.iter().any(|f| f.file_id == file_id);
                return Err(if still_listed {
                    Error::tampered(&name, 0, "file listed in the manifest is missing")
                } else {
                    Error::NotFound(format!("{name} was replaced by a concurrent change; read again"))
                });
            }
            Err(e) => return Err(Error::io("opening", &path, e)),
        };
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
        let f = match self.opts.vfs.open(&path, OpenMode::Read) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let still_listed = self.lock_inner().body.files.iter().any(|f| f.file_id == pos.file_id);
                return Err(if still_listed {
                    Error::tampered(&name, 0, "file listed in the manifest is missing")
                } else {
                    Error::NotFound(format!("{name} was replaced by a concurrent change; read again"))
                });
            }
            Err(e) => return Err(Error::io("opening", &path, e)),
        };
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
