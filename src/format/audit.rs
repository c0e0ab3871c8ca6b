//! Key audit log entries: one record each in the audit stream's files
//! (encrypted frames like every data file), chained by SHA-256. The chain
//! head (entry count and last hash) is kept in the keyring body, so dropping,
//! reordering or altering an entry, or truncating the log, is detected.
//! Pure encode/decode; no I/O.

use super::codec::{DecodeError, Reader, Writer};
use sha2::{Digest, Sha256};

/// Version byte of an entry.
pub const AUDIT_VERSION: u8 = 1;
/// Largest `kind` text.
pub const MAX_KIND: usize = 64;
/// Largest `detail` text.
pub const MAX_DETAIL: usize = 64 * 1024;

/// One key event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the log (0-based).
    pub seq: u64,
    /// Microseconds since the Unix epoch.
    pub time_micros: i64,
    /// What happened: `database-created`, `rewrap`, `reencrypt-started`,
    /// `reencrypt-file`, `reencrypt-finished`, `master-destroyed`.
    pub kind: String,
    /// The master key version active when the entry was written (for a
    /// `rewrap`, the version it replaces).
    pub master_version: u32,
    /// Details, as JSON text (no key material, ever).
    pub detail: String,
    /// Chain hash after the previous entry (zero for the first).
    pub prev: [u8; 32],
}

impl AuditEntry {
    /// Encode.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(AUDIT_VERSION);
        w.u64(self.seq);
        w.u64(self.time_micros as u64);
        w.blob(self.kind.as_bytes());
        w.u32(self.master_version);
        w.blob(self.detail.as_bytes());
        w.bytes(&self.prev);
        w.buf
    }

    /// Decode; the exact inverse of [`AuditEntry::encode`].
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let at = r.pos();
        let v = r.u8("audit entry version")?;
        if v != AUDIT_VERSION {
            return Err(DecodeError { offset: at, reason: format!("unknown audit entry version {v}") });
        }
        let seq = r.u64("audit sequence")?;
        let time_micros = r.u64("audit time")? as i64;
        let kind = text(&mut r, MAX_KIND, "audit kind")?;
        let master_version = r.u32("master version")?;
        let detail = text(&mut r, MAX_DETAIL, "audit detail")?;
        let prev = r.array("previous hash")?;
        r.finish("audit entry")?;
        Ok(AuditEntry { seq, time_micros, kind, master_version, detail, prev })
    }
}

fn text(r: &mut Reader<'_>, max: usize, what: &str) -> Result<String, DecodeError> {
    let at = r.pos();
    let b = r.blob(max, what)?;
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError { offset: at, reason: format!("{what} is not UTF-8") })
}

/// The chain hash after an entry: SHA-256 over a label, the previous hash
/// and the entry's encoding.
pub fn chain(prev: &[u8; 32], encoded: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"driftdb audit chain v1");
    h.update(prev);
    h.update(encoded);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_the_chain_depends_on_every_byte() {
        let e = AuditEntry {
            seq: 3,
            time_micros: 1_700_000_000_000_000,
            kind: "rewrap".into(),
            master_version: 2,
            detail: "{\"from\":1}".into(),
            prev: [9; 32],
        };
        let b = e.encode();
        assert_eq!(AuditEntry::decode(&b).unwrap(), e);
        let h = chain(&e.prev, &b);
        for i in 0..b.len() {
            let mut m = b.clone();
            m[i] ^= 1;
            assert_ne!(chain(&e.prev, &m), h);
        }
        assert_ne!(chain(&[0; 32], &b), h);
        assert!(AuditEntry::decode(&b[..b.len() - 1]).is_err());
    }
}
