//! The 32-byte plaintext header at the start of every data file.
//!
//! It holds only the magic, format version, file kind, file id and key id.
//! A CRC-32 lets the header be checked without a key; the whole header is
//! also bound into the derivation of the file's frame key, so changing any
//! header byte makes every frame fail authentication.

use super::codec::{DecodeError, Reader, Writer};
use super::{FORMAT_VERSION, FileKind};

/// Magic bytes at offset 0 of every data file.
pub const MAGIC: [u8; 8] = *b"DRIFTDB\0";
/// Encoded header length.
pub const HEADER_LEN: usize = 32;

/// A data file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// Format version (see [`FORMAT_VERSION`]).
    pub version: u16,
    /// What the file holds.
    pub kind: FileKind,
    /// The file's id (also its name).
    pub file_id: u64,
    /// The id of the file's data key in the keyring.
    pub key_id: u64,
}

impl FileHeader {
    /// A header of the current format version.
    pub fn new(kind: FileKind, file_id: u64, key_id: u64) -> Self {
        FileHeader { version: FORMAT_VERSION, kind, file_id, key_id }
    }

    /// Encode to exactly [`HEADER_LEN`] bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut w = Writer::default();
        w.bytes(&MAGIC);
        w.u16(self.version);
        w.u8(self.kind as u8);
        w.u8(0);
        w.u64(self.file_id);
        w.u64(self.key_id);
        let crc = crc32fast::hash(&w.buf);
        w.u32(crc);
        let mut out = [0u8; HEADER_LEN];
        out.copy_from_slice(&w.buf);
        out
    }

    /// The format version of a data file header, if its magic is right.
    pub fn version_of(buf: &[u8]) -> Option<u16> {
        (buf.len() >= 10 && buf[..8] == MAGIC).then(|| u16::from_le_bytes([buf[8], buf[9]]))
    }

    /// Decode and check magic, CRC, version and kind.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let magic: [u8; 8] = r.array("magic")?;
        if magic != MAGIC {
            return Err(DecodeError { offset: 0, reason: "bad magic: not a DriftDB data file".into() });
        }
        let version = r.u16("format version")?;
        let kind_b = r.u8("file kind")?;
        let reserved = r.u8("reserved byte")?;
        let file_id = r.u64("file id")?;
        let key_id = r.u64("key id")?;
        let crc = r.u32("header crc")?;
        if crc32fast::hash(&buf[..HEADER_LEN - 4]) != crc {
            return Err(DecodeError { offset: 28, reason: "header CRC mismatch".into() });
        }
        if version != FORMAT_VERSION {
            return Err(DecodeError { offset: 8, reason: format!("unsupported format version {version}") });
        }
        let kind = match FileKind::from_u8(kind_b) {
            Some(k) if k != FileKind::Keyring => k,
            _ => return Err(DecodeError { offset: 10, reason: format!("unknown file kind {kind_b}") }),
        };
        if reserved != 0 {
            return Err(DecodeError { offset: 11, reason: "reserved byte is not zero".into() });
        }
        Ok(FileHeader { version, kind, file_id, key_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(kind in 2u8..=7, file_id in any::<u64>(), key_id in any::<u64>()) {
            let h = FileHeader::new(FileKind::from_u8(kind).unwrap(), file_id, key_id);
            let b = h.encode();
            prop_assert_eq!(FileHeader::decode(&b).unwrap(), h);
        }

        #[test]
        fn every_single_byte_change_is_rejected(pos in 0usize..HEADER_LEN, x in 1u8..=255) {
            let h = FileHeader::new(FileKind::Segment, 42, 43);
            let mut b = h.encode();
            b[pos] ^= x;
            prop_assert!(FileHeader::decode(&b).is_err());
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = FileHeader::decode(&b);
        }
    }
}
