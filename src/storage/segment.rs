//! Data files: a 32-byte header, then frames, then (once sealed) a final
//! frame carrying the data frame count. The writer only ever appends, and a
//! file is never reopened for writing. The scanner checks every frame (CRC,
//! then authentication when it has the key), tells a torn tail from damage,
//! and never allocates more than a frame's validated length.

use super::vfs::{OpenMode, Vfs, VfsFile};
use crate::format::frame::{
    self, FLAG_LAST, FLAG_SYNC, FRAME_HEADER_LEN, FrameError, FrameKey, MAX_BODY, decode_final_payload,
    encode_final_payload,
};
use crate::format::header::{FileHeader, HEADER_LEN};
use crate::{Error, Result};
use std::path::Path;
use std::sync::Arc;

/// Writes one data file.
///
/// Any failed write or sync latches the writer: it refuses every later
/// append, sync and seal, so a frame index is never sealed twice and nothing
/// is written over a partial frame.
pub struct FileWriter {
    file: Arc<dyn VfsFile>,
    pub(crate) name: String,
    key: Arc<FrameKey>,
    pub(crate) header: FileHeader,
    /// Next frame index (data frames, sync markers and the final frame all take one).
    pub(crate) next_index: u64,
    pub(crate) offset: u64,
    pub(crate) data_frames: u64,
    pub(crate) payload_bytes: u64,
    dirty: bool,
    failed: bool,
    buf: Vec<u8>,
}

impl FileWriter {
    /// Create `path` (must not exist) and write and sync its header.
    pub fn create(vfs: &dyn Vfs, path: &Path, name: String, header: FileHeader, key: Arc<FrameKey>) -> Result<Self> {
        let file: Arc<dyn VfsFile> =
            vfs.open(path, OpenMode::CreateNew).map_err(|e| Error::io("creating", path, e))?.into();
        file.write_all_at(&header.encode(), 0).map_err(|e| Error::io("writing header of", path, e))?;
        file.sync_data().map_err(|e| Error::io("syncing", path, e))?;
        Ok(FileWriter {
            file,
            name,
            key,
            header,
            next_index: 0,
            offset: HEADER_LEN as u64,
            data_frames: 0,
            payload_bytes: 0,
            dirty: false,
            failed: false,
            buf: Vec::new(),
        })
    }

    /// Encoded size of a frame carrying `payload_len` bytes.
    pub fn frame_len(payload_len: usize) -> u64 {
        (FRAME_HEADER_LEN + payload_len + crate::crypto::aead::TAG_LEN) as u64
    }

    fn check(&self) -> Result<()> {
        if self.failed {
            return Err(Error::Poisoned(format!("an earlier write to {} failed", self.name)));
        }
        Ok(())
    }

    /// Encode `payloads` as the next frames (each with `flags`) and write
    /// them in one write; `at` gets each frame's (index, offset).
    fn write_frames(&mut self, flags: u8, payloads: &[&[u8]], mut at: impl FnMut(u64, u64)) -> Result<()> {
        self.check()?;
        self.buf.clear();
        let (mut index, mut offset) = (self.next_index, self.offset);
        for p in payloads {
            let start = self.buf.len();
            self.key
                .encode_flags(index, flags, p, &mut self.buf)
                .map_err(|_| Error::InvalidArgument(format!("record of {} bytes is too large for a frame", p.len())))?;
            at(index, offset);
            index += 1;
            offset += (self.buf.len() - start) as u64;
        }
        if let Err(e) = self.file.write_all_at(&self.buf, self.offset) {
            self.failed = true;
            return Err(Error::io("writing to", Path::new(&self.name), e));
        }
        self.next_index = index;
        self.offset = offset;
        Ok(())
    }

    fn write_frame(&mut self, flags: u8, payload: &[u8]) -> Result<(u64, u64)> {
        let mut pos = (0, 0);
        self.write_frames(flags, &[payload], |i, o| pos = (i, o))?;
        Ok(pos)
    }

    /// Append one record as the next frame. Returns (frame index, offset).
    pub fn append(&mut self, payload: &[u8]) -> Result<(u64, u64)> {
        let r = self.write_frame(0, payload)?;
        self.data_frames += 1;
        self.payload_bytes += payload.len() as u64;
        self.dirty = true;
        Ok(r)
    }

    /// Append records as the next frames, written together (one write).
    /// Returns (frame index, offset) of each.
    pub fn append_many(&mut self, payloads: &[&[u8]]) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::with_capacity(payloads.len());
        self.write_frames(0, payloads, |i, o| out.push((i, o)))?;
        self.data_frames += payloads.len() as u64;
        self.payload_bytes += payloads.iter().map(|p| p.len() as u64).sum::<u64>();
        self.dirty |= !payloads.is_empty();
        Ok(out)
    }

    /// Make everything appended so far durable, then write a sync marker
    /// (itself made durable by the next sync): recovery treats damage before
    /// a sync marker as corruption, never as a torn tail.
    pub fn sync(&mut self) -> Result<()> {
        self.check()?;
        if !self.dirty {
            return Ok(());
        }
        if let Err(e) = self.file.sync_data() {
            self.failed = true;
            return Err(Error::io("syncing", Path::new(&self.name), e));
        }
        self.dirty = false;
        let mark = encode_final_payload(self.data_frames, self.payload_bytes);
        self.write_frame(FLAG_SYNC, &mark)?;
        Ok(())
    }

    /// The file, for syncs made from another thread while it is written.
    pub(crate) fn file_handle(&self) -> Arc<dyn VfsFile> {
        self.file.clone()
    }

    /// For a sync done without holding the writer: the file handle and the
    /// offset the sync will cover, or `None` when nothing needs syncing.
    pub(crate) fn begin_sync(&self) -> Result<Option<(Arc<dyn VfsFile>, u64)>> {
        self.check()?;
        Ok(self.dirty.then(|| (self.file.clone(), self.offset)))
    }

    /// Finish a sync begun with [`FileWriter::begin_sync`]: on success, and
    /// if nothing was appended meanwhile, write the sync marker; on failure,
    /// latch the writer.
    pub(crate) fn end_sync(&mut self, covered: u64, outcome: std::io::Result<()>) -> Result<()> {
        self.check()?;
        if let Err(e) = outcome {
            self.failed = true;
            return Err(Error::io("syncing", Path::new(&self.name), e));
        }
        if self.offset != covered {
            // Frames appended during the sync are not covered by it: no
            // marker may follow them until a later sync.
            return Ok(());
        }
        if !self.dirty {
            return Ok(());
        }
        self.dirty = false;
        let mark = encode_final_payload(self.data_frames, self.payload_bytes);
        self.write_frame(FLAG_SYNC, &mark)?;
        Ok(())
    }

    /// Write the sealing frame and sync. Returns (data frames, file length).
    pub fn finish(&mut self) -> Result<(u64, u64)> {
        let fin = encode_final_payload(self.data_frames, self.payload_bytes);
        self.write_frame(FLAG_LAST, &fin)?;
        if let Err(e) = self.file.sync_data() {
            self.failed = true;
            return Err(Error::io("syncing", Path::new(&self.name), e));
        }
        self.dirty = false;
        Ok((self.data_frames, self.offset))
    }

    /// Data frames written.
    pub fn frames(&self) -> u64 {
        self.data_frames
    }

    /// Frame indexes used (data frames and sync markers).
    pub fn indexes_used(&self) -> u64 {
        self.next_index
    }
}

/// Reads byte ranges of a file through a sliding window of at least 1 MiB.
pub(crate) struct Window<'a> {
    file: &'a dyn VfsFile,
    pub(crate) len: u64,
    start: u64,
    buf: Vec<u8>,
}

const WINDOW: usize = 1 << 20;

impl<'a> Window<'a> {
    pub(crate) fn new(file: &'a dyn VfsFile, len: u64) -> Self {
        Window { file, len, start: 0, buf: Vec::new() }
    }

    /// Up to `n` bytes at `off` (fewer only at end of file). `n` is bounded by the caller.
    pub(crate) fn get(&mut self, off: u64, n: usize) -> std::io::Result<&[u8]> {
        let off = off.min(self.len);
        let end = off.saturating_add(n as u64).min(self.len);
        // `end - off <= n`, so this fits in usize.
        let want = (end - off) as usize;
        if off < self.start || end > self.start + self.buf.len() as u64 {
            let left = usize::try_from(self.len - off).unwrap_or(usize::MAX);
            let size = want.max(WINDOW).min(left);
            self.buf.resize(size, 0);
            self.file.read_exact_at(&mut self.buf, off)?;
            self.start = off;
        }
        let s = (off - self.start) as usize;
        Ok(&self.buf[s..s + want])
    }
}

/// What the scanner expects of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A sealed file: exactly this many data frames and bytes, and a final frame if `final_frame`.
    Sealed {
        /// Data frames.
        frames: u64,
        /// File length.
        len: u64,
        /// Whether a sealing frame ends it.
        final_frame: bool,
    },
    /// A file left active by a crashed session: a torn tail is tolerated.
    Recovering,
    /// The file this session is writing: exactly `len` bytes are valid so far.
    Live {
        /// Bytes written so far.
        len: u64,
    },
}

/// What a scan found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanOutcome {
    /// Data frames verified.
    pub frames: u64,
    /// Payload bytes of those frames (only known when decrypting).
    pub payload_bytes: u64,
    /// Offset just past the last good frame.
    pub end: u64,
    /// Whether the file ended with a valid sealing frame.
    pub final_frame: bool,
    /// A torn tail (offset, reason) that recovery may truncate.
    pub torn: Option<(u64, String)>,
}

/// Scan a data file from its header on, verifying every frame, and hand each
/// record to `visit(index, offset, payload)`. Without a key only structure and
/// CRCs are checked (and `visit` gets an empty payload).
pub fn scan(
    file: &dyn VfsFile,
    name: &str,
    expected_header: Option<&FileHeader>,
    key: Option<&FrameKey>,
    expect: Expect,
    mut visit: impl FnMut(u64, u64, &[u8]) -> Result<()>,
) -> Result<ScanOutcome> {
    let file_len = match expect {
        Expect::Live { len } => len,
        _ => file.len().map_err(|e| Error::io("reading length of", Path::new(name), e))?,
    };
    let mut w = Window::new(file, file_len);
    let io = |e| Error::io("reading", Path::new(name), e);
    let hb = w.get(0, HEADER_LEN).map_err(io)?;
    if hb.len() < HEADER_LEN {
        return Err(Error::corrupted(
            name,
            0,
            format!("file is {file_len} bytes, shorter than its {HEADER_LEN}-byte header"),
        ));
    }
    if let Some(v) = FileHeader::version_of(hb)
        && v != crate::format::FORMAT_VERSION
    {
        return Err(Error::UnsupportedVersion {
            file: name.into(),
            found: v,
            supported: crate::format::FORMAT_VERSION,
        });
    }
    let header = FileHeader::decode(hb).map_err(|e| Error::corrupted(name, e.offset as u64, e.reason))?;
    if let Some(exp) = expected_header
        && exp != &header
    {
        return Err(Error::tampered(
            name,
            0,
            format!(
                "header (file {:016x}, kind {:?}, key {:016x}) does not match the manifest (file {:016x}, kind {:?}, key {:016x})",
                header.file_id, header.kind, header.key_id, exp.file_id, exp.kind, exp.key_id
            ),
        ));
    }
    let mut out = ScanOutcome { end: HEADER_LEN as u64, ..Default::default() };
    let mut payload = Vec::new();
    let mut off = HEADER_LEN as u64;
    let mut index = 0u64;
    while off < file_len {
        let structural = {
            let hdr = w.get(off, FRAME_HEADER_LEN).map_err(io)?;
            match frame::decode_frame_header(hdr) {
                Err(e) => Err(e),
                Ok((len, _, _)) => {
                    let total = FRAME_HEADER_LEN + len;
                    let bytes = w.get(off, total).map_err(io)?;
                    frame::decode_frame(bytes).map(|raw| (raw.flags, raw.body.len()))
                }
            }
        };
        let (flags, body_len) = match structural {
            Ok(x) => x,
            Err(fe) => {
                if expect == Expect::Recovering && !sync_marker_after(&mut w, off + 1).map_err(io)? {
                    out.torn = Some((off, fe.to_string()));
                    return Ok(out);
                }
                return Err(match fe {
                    FrameError::Truncated { .. } => Error::tampered(name, off, format!("file truncated: {fe}")),
                    _ => Error::corrupted(name, off, fe.to_string()),
                });
            }
        };
        let total = FRAME_HEADER_LEN + body_len;
        let bytes = w.get(off, total).map_err(io)?;
        let raw = frame::RawFrame { flags, body: &bytes[FRAME_HEADER_LEN..] };
        if let Some(k) = key {
            k.open_into(index, &raw, &mut payload).map_err(|_| {
                Error::tampered(
                    name,
                    off,
                    format!("frame {index} failed authentication (tampered, moved or reordered)"),
                )
            })?;
        }
        if raw.is_last() || raw.is_sync_marker() {
            if key.is_some() {
                match decode_final_payload(&payload) {
                    Some((n, b)) if n == out.frames && b == out.payload_bytes => {}
                    _ => {
                        let what = if raw.is_last() { "final frame" } else { "sync marker" };
                        return Err(Error::tampered(
                            name,
                            off,
                            format!("{what} does not match the {} records before it", out.frames),
                        ));
                    }
                }
            }
            index += 1;
            off += total as u64;
            out.end = off;
            if raw.is_last() {
                out.final_frame = true;
                if off != file_len {
                    return Err(Error::tampered(name, off, "data after the final frame"));
                }
                break;
            }
            continue;
        }
        visit(index, off, &payload)?;
        out.frames += 1;
        out.payload_bytes += payload.len() as u64;
        index += 1;
        off += total as u64;
        out.end = off;
    }
    if let Expect::Sealed { frames, len, final_frame } = expect {
        if file_len != len {
            return Err(Error::tampered(
                name,
                file_len.min(len),
                format!("file is {file_len} bytes, the manifest says {len}"),
            ));
        }
        if out.frames != frames || out.final_frame != final_frame {
            return Err(Error::tampered(
                name,
                out.end,
                format!(
                    "file holds {} frames{}, the manifest says {frames}{}",
                    out.frames,
                    if out.final_frame { " and a final frame" } else { "" },
                    if final_frame { " and a final frame" } else { "" }
                ),
            ));
        }
    }
    Ok(out)
}

/// Whether a CRC-valid sync marker starts anywhere in `from..len`.
///
/// A sync marker is written only after an fsync returned, so damage before
/// one lies in data that was durable: corruption, not a torn write. Damage
/// with no marker after it lies in writes never acknowledged as durable
/// (a torn or reordered write), which recovery may cut off.
/// Past a work budget this answers "yes", the conservative answer.
fn sync_marker_after(w: &mut Window<'_>, from: u64) -> std::io::Result<bool> {
    let len = w.len;
    if from >= len {
        return Ok(false);
    }
    let Ok(remaining) = usize::try_from(len - from) else { return Ok(true) };
    if remaining > 4 * (MAX_BODY + FRAME_HEADER_LEN) {
        return Ok(true);
    }
    let rest = w.get(from, remaining)?.to_vec();
    let mut budget: usize = 256 << 20;
    for p in 0..rest.len() {
        if let Ok((blen, flags, _)) = frame::decode_frame_header(&rest[p..])
            && flags == FLAG_SYNC
            && p + FRAME_HEADER_LEN + blen <= rest.len()
        {
            if budget < blen {
                return Ok(true);
            }
            budget -= blen;
            if frame::decode_frame(&rest[p..]).is_ok() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}
