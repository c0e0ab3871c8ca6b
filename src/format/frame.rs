//! Frames: the unit of every data file.
//!
//! ```text
//! [body_len: u32 LE][flags: u8][crc32: u32 LE][body: AES-256-GCM ciphertext || 16-byte tag]
//! ```
//!
//! The CRC covers `body_len`, `flags` and `body`, and is checked before any
//! decryption and without a key. `body_len` is validated against
//! [`MAX_BODY`] before anything is allocated. Each file has its own frame key
//! (HKDF of the file's data key and its header); the nonce is the frame index
//! and the last-frame flag, and the associated data binds database id, file
//! id, file kind, frame index and flags, so a frame cannot be moved, reordered
//! or replayed anywhere else.

use super::header::FileHeader;
use super::{DB_ID_LEN, FileKind};
use crate::crypto::aead::{AeadError, Backend, Cipher, NONCE_LEN, TAG_LEN, cipher};
use crate::crypto::kdf::{hkdf, label};
use crate::crypto::keys::SecretKey;

/// Frame header length.
pub const FRAME_HEADER_LEN: usize = 9;
/// Largest plaintext a frame carries.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// Largest body (ciphertext + tag).
pub const MAX_BODY: usize = MAX_PAYLOAD + TAG_LEN;
/// Smallest body: an empty payload's tag.
pub const MIN_BODY: usize = TAG_LEN;
/// Flag bit: this is the file's final (sealing) frame.
pub const FLAG_LAST: u8 = 0x01;
/// Flag bit: a sync marker, written right after an fsync returned; every
/// byte before it is durable.
pub const FLAG_SYNC: u8 = 0x02;
/// Length of the final frame's and a sync marker's payload.
pub const FINAL_PAYLOAD_LEN: usize = 16;

/// Why a frame failed its structural check (no key involved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the frame needs; `need` is the full frame length when known.
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The length field is outside `MIN_BODY..=MAX_BODY`.
    BadLength(u32),
    /// Unknown flag bits set.
    BadFlags(u8),
    /// The CRC does not match the bytes.
    CrcMismatch,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated { need, have } => write!(f, "truncated frame: need {need} bytes, {have} present"),
            FrameError::BadLength(n) => write!(f, "frame length {n} out of range {MIN_BODY}..={MAX_BODY}"),
            FrameError::BadFlags(b) => write!(f, "unknown frame flags {b:#04x}"),
            FrameError::CrcMismatch => f.write_str("frame CRC mismatch"),
        }
    }
}

/// A frame whose structure and CRC are good; the body is still sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame<'a> {
    /// Flag bits.
    pub flags: u8,
    /// Ciphertext and tag.
    pub body: &'a [u8],
}

impl RawFrame<'_> {
    /// Bytes the frame occupies on disk.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN + self.body.len()
    }
    /// True for the sealing frame.
    pub fn is_last(&self) -> bool {
        self.flags == FLAG_LAST
    }
    /// True for a sync marker.
    pub fn is_sync_marker(&self) -> bool {
        self.flags == FLAG_SYNC
    }
}

/// Parse the 9-byte frame header: (body length, flags), validated.
pub fn decode_frame_header(buf: &[u8]) -> Result<(usize, u8, u32), FrameError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Err(FrameError::Truncated { need: FRAME_HEADER_LEN, have: buf.len() });
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let flags = buf[4];
    let crc = u32::from_le_bytes([buf[5], buf[6], buf[7], buf[8]]);
    if (len as usize) < MIN_BODY || len as usize > MAX_BODY {
        return Err(FrameError::BadLength(len));
    }
    if flags != 0 && flags != FLAG_LAST && flags != FLAG_SYNC {
        return Err(FrameError::BadFlags(flags));
    }
    Ok((len as usize, flags, crc))
}

/// Structural decode of the frame at the start of `buf`: header, length, CRC.
/// Needs no key; allocates nothing.
pub fn decode_frame(buf: &[u8]) -> Result<RawFrame<'_>, FrameError> {
    let (len, flags, crc) = decode_frame_header(buf)?;
    let total = FRAME_HEADER_LEN + len;
    if buf.len() < total {
        return Err(FrameError::Truncated { need: total, have: buf.len() });
    }
    let body = &buf[FRAME_HEADER_LEN..total];
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[..5]);
    h.update(body);
    if h.finalize() != crc {
        return Err(FrameError::CrcMismatch);
    }
    Ok(RawFrame { flags, body })
}

/// Append the on-disk bytes of a frame with the given sealed body.
pub fn encode_raw_frame(flags: u8, body: &[u8], out: &mut Vec<u8>) {
    let len = (body.len() as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(&[flags]);
    h.update(body);
    out.extend_from_slice(&len);
    out.push(flags);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(body);
}

/// The key that seals one file's frames, with everything bound into its AAD.
pub struct FrameKey {
    cipher: Box<dyn Cipher>,
    db_id: [u8; DB_ID_LEN],
    file_id: u64,
    kind: FileKind,
    #[cfg(test)]
    fingerprint: [u8; 32],
}

impl FrameKey {
    /// Derive the frame key of a file from its data key, the database id and
    /// the file's exact header bytes.
    pub fn derive(dek: &SecretKey, db_id: &[u8; DB_ID_LEN], header: &FileHeader, backend: Backend) -> FrameKey {
        let hb = header.encode();
        let key = hkdf(dek.expose(), None, &[label::FRAME, db_id, &hb]);
        FrameKey {
            cipher: cipher(backend, &key),
            db_id: *db_id,
            file_id: header.file_id,
            kind: header.kind,
            #[cfg(test)]
            fingerprint: {
                use sha2::Digest;
                sha2::Sha256::digest(key.expose()).into()
            },
        }
    }

    /// The nonce of frame `index`: 8-byte big-endian index, 3 zero bytes, flags.
    pub fn nonce(index: u64, flags: u8) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[..8].copy_from_slice(&index.to_be_bytes());
        n[11] = flags;
        n
    }

    /// The associated data of frame `index`.
    pub fn aad(&self, index: u64, flags: u8) -> [u8; 4 + DB_ID_LEN + 8 + 1 + 8 + 1] {
        let mut a = [0u8; 4 + DB_ID_LEN + 8 + 1 + 8 + 1];
        a[..4].copy_from_slice(b"DDBF");
        a[4..20].copy_from_slice(&self.db_id);
        a[20..28].copy_from_slice(&self.file_id.to_le_bytes());
        a[28] = self.kind as u8;
        a[29..37].copy_from_slice(&index.to_le_bytes());
        a[37] = flags;
        a
    }

    /// Seal `payload` as frame `index` (a data frame, or the final frame if
    /// `last`) and append its on-disk bytes to `out`.
    pub fn encode(&self, index: u64, last: bool, payload: &[u8], out: &mut Vec<u8>) -> Result<(), AeadError> {
        self.encode_flags(index, if last { FLAG_LAST } else { 0 }, payload, out)
    }

    /// Seal `payload` as frame `index` with the given flags.
    pub fn encode_flags(&self, index: u64, flags: u8, payload: &[u8], out: &mut Vec<u8>) -> Result<(), AeadError> {
        if payload.len() > MAX_PAYLOAD || !(flags == 0 || flags == FLAG_LAST || flags == FLAG_SYNC) {
            return Err(AeadError);
        }
        let nonce = Self::nonce(index, flags);
        #[cfg(test)]
        crate::crypto::nonce_audit::record(self.fingerprint, nonce);
        let start = out.len();
        out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
        out.extend_from_slice(payload);
        let tag = match self.cipher.seal_detached(&nonce, &self.aad(index, flags), &mut out[start + FRAME_HEADER_LEN..])
        {
            Ok(t) => t,
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        };
        out.extend_from_slice(&tag);
        let len = ((payload.len() + TAG_LEN) as u32).to_le_bytes();
        out[start..start + 4].copy_from_slice(&len);
        out[start + 4] = flags;
        let mut h = crc32fast::Hasher::new();
        h.update(&out[start..start + 5]);
        h.update(&out[start + FRAME_HEADER_LEN..]);
        let crc = h.finalize().to_le_bytes();
        out[start + 5..start + FRAME_HEADER_LEN].copy_from_slice(&crc);
        Ok(())
    }

    /// Verify and decrypt a structurally valid frame expected at `index`.
    pub fn open(&self, index: u64, raw: &RawFrame<'_>) -> Result<Vec<u8>, AeadError> {
        let mut buf = Vec::new();
        self.open_into(index, raw, &mut buf)?;
        Ok(buf)
    }

    /// Like [`FrameKey::open`], into a reusable buffer (cleared first; left
    /// empty on failure).
    pub fn open_into(&self, index: u64, raw: &RawFrame<'_>, out: &mut Vec<u8>) -> Result<(), AeadError> {
        out.clear();
        out.extend_from_slice(raw.body);
        match self.cipher.open(&Self::nonce(index, raw.flags), &self.aad(index, raw.flags), out) {
            Ok(n) => {
                out.truncate(n);
                Ok(())
            }
            Err(e) => {
                out.clear();
                Err(e)
            }
        }
    }
}

/// Payload of the sealing frame and of a sync marker: data frames and
/// payload bytes before it.
pub fn encode_final_payload(frames: u64, payload_bytes: u64) -> [u8; FINAL_PAYLOAD_LEN] {
    let mut p = [0u8; FINAL_PAYLOAD_LEN];
    p[..8].copy_from_slice(&frames.to_le_bytes());
    p[8..].copy_from_slice(&payload_bytes.to_le_bytes());
    p
}

/// Decode the sealing frame's payload.
pub fn decode_final_payload(p: &[u8]) -> Option<(u64, u64)> {
    if p.len() != FINAL_PAYLOAD_LEN {
        return None;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&p[..8]);
    let mut b = [0u8; 8];
    b.copy_from_slice(&p[8..]);
    Some((u64::from_le_bytes(a), u64::from_le_bytes(b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(file_id: u64) -> FrameKey {
        let h = FileHeader::new(FileKind::Segment, file_id, file_id);
        FrameKey::derive(&SecretKey::from_bytes([5; 32]), &[1; 16], &h, Backend::Ring)
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..5000), index in any::<u64>(), last in any::<bool>()) {
            let k = key(1);
            let mut out = vec![0xEEu8; 3];
            k.encode(index, last, &payload, &mut out).unwrap();
            prop_assert_eq!(&out[..3], &[0xEE; 3]);
            let raw = decode_frame(&out[3..]).unwrap();
            prop_assert_eq!(raw.encoded_len(), out.len() - 3);
            prop_assert_eq!(raw.is_last(), last);
            prop_assert_eq!(k.open(index, &raw).unwrap(), payload);
            // Re-encoding the raw frame reproduces the bytes exactly.
            let mut again = Vec::new();
            encode_raw_frame(raw.flags, raw.body, &mut again);
            prop_assert_eq!(&again[..], &out[3..]);
        }

        #[test]
        fn any_byte_flip_is_caught_by_crc_or_tag(payload in proptest::collection::vec(any::<u8>(), 0..300), pos in any::<usize>(), x in 1u8..=255) {
            let k = key(1);
            let mut out = Vec::new();
            k.encode(7, false, &payload, &mut out).unwrap();
            let p = pos % out.len();
            out[p] ^= x;
            match decode_frame(&out) {
                Err(_) => {}
                Ok(raw) => prop_assert!(k.open(7, &raw).is_err()),
            }
        }

        #[test]
        fn final_payload_round_trip(frames in any::<u64>(), bytes in any::<u64>()) {
            prop_assert_eq!(decode_final_payload(&encode_final_payload(frames, bytes)), Some((frames, bytes)));
        }

        #[test]
        fn decoder_never_panics(b in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(raw) = decode_frame(&b) { let _ = key(1).open(0, &raw); }
        }
    }

    #[test]
    fn moved_frames_fail_authentication() {
        let k = key(1);
        let mut out = Vec::new();
        k.encode(3, false, b"payload", &mut out).unwrap();
        let raw = decode_frame(&out).unwrap();
        assert!(k.open(3, &raw).is_ok());
        assert!(k.open(4, &raw).is_err(), "other position");
        assert!(key(2).open(3, &raw).is_err(), "other file");
        let other_db = FrameKey::derive(
            &SecretKey::from_bytes([5; 32]),
            &[2; 16],
            &FileHeader::new(FileKind::Segment, 1, 1),
            Backend::Ring,
        );
        assert!(other_db.open(3, &raw).is_err(), "other database");
        let other_kind = FrameKey::derive(
            &SecretKey::from_bytes([5; 32]),
            &[1; 16],
            &FileHeader::new(FileKind::Wal, 1, 1),
            Backend::Ring,
        );
        assert!(other_kind.open(3, &raw).is_err(), "other file kind");
        // The flags are authenticated: changing them and fixing the CRC fails.
        for f in [FLAG_LAST, FLAG_SYNC] {
            let mut forged = Vec::new();
            encode_raw_frame(f, raw.body, &mut forged);
            let raw2 = decode_frame(&forged).unwrap();
            assert!(k.open(3, &raw2).is_err());
        }
        assert_eq!(decode_frame_header(&[16, 0, 0, 0, 3, 0, 0, 0, 0]), Err(FrameError::BadFlags(3)));
    }

    #[test]
    fn lengths_checked_before_allocation() {
        let mut b = vec![0u8; 9];
        b[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_frame(&b), Err(FrameError::BadLength(u32::MAX)));
        // All-zero bytes never pass: length 0 is below the minimum.
        assert_eq!(decode_frame(&[0u8; 64]), Err(FrameError::BadLength(0)));
        assert!(key(1).encode(0, false, &vec![0; MAX_PAYLOAD + 1], &mut Vec::new()).is_err());
    }

    #[test]
    fn both_backends_produce_identical_frames() {
        let h = FileHeader::new(FileKind::Segment, 9, 9);
        let dek = SecretKey::from_bytes([8; 32]);
        let a = FrameKey::derive(&dek, &[3; 16], &h, Backend::Ring);
        let b = FrameKey::derive(&dek, &[3; 16], &h, Backend::RustCrypto);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        a.encode(5, true, b"same bytes", &mut x).unwrap();
        b.encode(5, true, b"same bytes", &mut y).unwrap();
        assert_eq!(x, y);
        assert_eq!(b.open(5, &decode_frame(&x).unwrap()).unwrap(), b"same bytes");
    }
}
