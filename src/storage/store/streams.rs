//! Append-only record streams that roll across files, and their syncs.

use super::*;

impl Store {
    /// Records that may be appended to a stream of `kind` files.
    pub(super) fn check_records(kind: FileKind, payloads: &[&[u8]]) -> Result<()> {
        if let Some(p) = payloads.iter().find(|p| p.len() > MAX_PAYLOAD) {
            return Err(Error::InvalidArgument(format!(
                "record of {} bytes exceeds the {MAX_PAYLOAD}-byte limit",
                p.len()
            )));
        }
        if kind == FileKind::Keyring {
            return Err(Error::InvalidArgument("the keyring is not a stream".into()));
        }
        Ok(())
    }

    /// Append a record to `stream` (files of `kind`). Rolls to a new file
    /// (with a new data key) when the current one is full; the first append
    /// of a session always starts a new file. Not durable until [`Store::sync`].
    pub fn append(&self, stream: u32, kind: FileKind, payload: &[u8]) -> Result<RecordPos> {
        Self::check_records(kind, &[payload])?;
        let mut guard = self.lock_inner();
        self.append_locked(&mut guard, stream, kind, payload)
    }

    /// Append several records to a stream, in order: written together when
    /// they fit in its current file, else one by one (rolling files as
    /// [`Store::append`] does).
    pub fn append_many(&self, stream: u32, kind: FileKind, payloads: &[&[u8]]) -> Result<Vec<RecordPos>> {
        Self::check_records(kind, payloads)?;
        let mut guard = self.lock_inner();
        let inner = &mut *guard;
        self.check_writable(inner)?;
        let total: u64 = payloads.iter().map(|p| FileWriter::frame_len(p.len())).sum();
        let fin = FileWriter::frame_len(crate::format::frame::FINAL_PAYLOAD_LEN);
        let (segment_size, max_frames) = (self.opts.segment_size, self.opts.max_frames_per_file);
        match inner.writers.get_mut(&stream) {
            Some(w)
                if w.header.kind == kind
                    && payloads.len() > 1
                    && w.offset + total + fin <= segment_size
                    && w.indexes_used() + payloads.len() as u64 + 3 < max_frames =>
            {
                let file_id = w.header.file_id;
                match w.append_many(payloads) {
                    Ok(v) => Ok(v.into_iter().map(|(index, offset)| RecordPos { file_id, index, offset }).collect()),
                    Err(e) => {
                        Self::poison(inner, &e);
                        Err(e)
                    }
                }
            }
            _ => payloads.iter().map(|p| self.append_locked(inner, stream, kind, p)).collect(),
        }
    }

    pub(super) fn append_locked(
        &self,
        inner: &mut Inner,
        stream: u32,
        kind: FileKind,
        payload: &[u8],
    ) -> Result<RecordPos> {
        self.check_writable(inner)?;
        let need_roll = match inner.writers.get(&stream) {
            None => true,
            Some(w) => {
                if w.header.kind != kind {
                    return Err(Error::InvalidArgument(format!(
                        "stream {stream} holds {:?} files, not {kind:?}",
                        w.header.kind
                    )));
                }
                let fin = FileWriter::frame_len(crate::format::frame::FINAL_PAYLOAD_LEN);
                (w.frames() > 0 && w.offset + FileWriter::frame_len(payload.len()) + fin > self.opts.segment_size)
                    || w.indexes_used() + 3 >= self.opts.max_frames_per_file
            }
        };
        if need_roll {
            if let Some(mut w) = inner.writers.remove(&stream) {
                self.seal_writer(inner, &mut w)?;
            }
            let ordinal = Self::next_ordinal(inner, stream);
            let (w, entry, _) = self.new_file(inner, Place { kind, stream, ordinal, meta: Vec::new() }, false)?;
            let mut body = inner.body.clone();
            body.files.push(entry);
            // On failure the store is latched and the new keyring may or may
            // not list the file: it stays (the next open tells which).
            self.persist(inner, body)?;
            inner.writers.insert(stream, w);
        }
        let Some(w) = inner.writers.get_mut(&stream) else {
            return Err(Error::InvalidArgument("no writer".into()));
        };
        match w.append(payload) {
            Ok((index, offset)) => Ok(RecordPos { file_id: w.header.file_id, index, offset }),
            Err(e) => {
                Self::poison(inner, &e);
                Err(e)
            }
        }
    }

    /// Make every appended record durable. After a failure the store refuses
    /// further writes (reopen to recover).
    pub fn sync(&self) -> Result<()> {
        let mut guard = self.lock_inner();
        let inner = &mut *guard;
        if let Some(p) = &inner.poisoned {
            return Err(Error::Poisoned(p.clone()));
        }
        let mut failure = None;
        for w in inner.writers.values_mut() {
            if let Err(e) = w.sync() {
                failure = Some(e);
                break;
            }
        }
        if let Some(e) = failure {
            Self::poison(inner, &e);
            return Err(e);
        }
        Ok(())
    }

    /// Make the records appended to `stream` durable. The fsync runs without
    /// holding the store's lock, so readers and other streams' writers go on
    /// meanwhile. After a failure the store refuses further writes.
    pub fn sync_stream(&self, stream: u32) -> Result<()> {
        let (file, covered, file_id) = {
            let guard = self.lock_inner();
            if let Some(p) = &guard.poisoned {
                return Err(Error::Poisoned(p.clone()));
            }
            let Some(w) = guard.writers.get(&stream) else { return Ok(()) };
            match w.begin_sync()? {
                Some((f, covered)) => (f, covered, w.header.file_id),
                None => return Ok(()),
            }
        };
        let outcome = file.sync_data();
        let mut guard = self.lock_inner();
        let inner = &mut *guard;
        let same = inner.writers.get(&stream).is_some_and(|w| w.header.file_id == file_id);
        if !same {
            // Sealed meanwhile (sealing synced it); a failure still counts.
            return match outcome {
                Ok(()) => Ok(()),
                Err(e) => {
                    let err = Error::io("syncing", self.dir.join(file_name(file_id, FileKind::Wal)), e);
                    Self::poison(inner, &err);
                    Err(err)
                }
            };
        }
        let Some(w) = inner.writers.get_mut(&stream) else { return Ok(()) };
        if let Err(e) = w.end_sync(covered, outcome) {
            Self::poison(inner, &e);
            return Err(e);
        }
        Ok(())
    }

    pub(super) fn seal_writer(&self, inner: &mut Inner, w: &mut FileWriter) -> Result<()> {
        let (frames, len) = match w.finish() {
            Ok(x) => x,
            Err(e) => {
                Self::poison(inner, &e);
                return Err(e);
            }
        };
        let mut body = inner.body.clone();
        if let Some(e) = body.files.iter_mut().find(|e| e.file_id == w.header.file_id) {
            e.state = FileState::Sealed { frames, len, final_frame: true };
        }
        self.persist(inner, body)
    }

    /// Seal the current file of `stream`, if any; the next append starts a new one.
    pub fn seal_stream(&self, stream: u32) -> Result<()> {
        let mut guard = self.lock_inner();
        let inner = &mut *guard;
        if let Some(mut w) = inner.writers.remove(&stream) {
            self.seal_writer(inner, &mut w)?;
        }
        Ok(())
    }
}
