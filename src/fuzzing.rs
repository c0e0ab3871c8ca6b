//! Harness functions for the fuzz targets in `fuzz/`. They live in the
//! library so that `cargo test` runs each of them over the committed seed
//! corpus, and cargo-fuzz runs the very same code.
//!
//! Each harness panics only when an invariant breaks: whatever decodes must
//! re-encode to the same bytes, and decoding never panics by itself.

use crate::crypto::aead::Backend;
use crate::crypto::keys::SecretKey;
use crate::format::frame::{FrameKey, decode_frame, encode_raw_frame};
use crate::format::header::{FileHeader, HEADER_LEN};
use crate::format::keyring::{KeyringBody, decode_keyring, open_keyring};
use crate::format::{FileKind, parse_file_name};

/// The fixed key the harnesses try, so seeds sealed under it reach the
/// decoders behind the tag check.
pub const FUZZ_KEY: [u8; 32] = [0x46; 32];
/// The database id seeds are made with.
pub const FUZZ_DB_ID: [u8; 16] = [0x44; 16];

/// Frame: structural decode, exact re-encode, then authentication with the fuzz key.
pub fn frame(data: &[u8]) {
    if let Ok(raw) = decode_frame(data) {
        let mut again = Vec::new();
        encode_raw_frame(raw.flags, raw.body, &mut again);
        assert_eq!(&again[..], &data[..raw.encoded_len()], "frame re-encode differs");
        let k = FrameKey::derive(
            &SecretKey::from_bytes(FUZZ_KEY),
            &FUZZ_DB_ID,
            &FileHeader::new(FileKind::Segment, 1, 2),
            Backend::Ring,
        );
        if let Ok(p) = k.open(0, &raw) {
            let mut enc = Vec::new();
            assert!(k.encode(0, raw.is_last(), &p, &mut enc).is_ok());
            assert_eq!(&enc[..], &data[..raw.encoded_len()], "sealed frame re-encode differs");
        }
    }
}

/// Data file header (and file names).
pub fn header(data: &[u8]) {
    if let Ok(h) = FileHeader::decode(data) {
        assert_eq!(&h.encode()[..], &data[..HEADER_LEN], "header re-encode differs");
    }
    if let Ok(s) = std::str::from_utf8(data)
        && let Some((id, kind)) = parse_file_name(s)
    {
        assert_eq!(crate::format::file_name(id, kind), s);
    }
}

/// Keyring file and keyring body.
pub fn keyring(data: &[u8]) {
    if let Ok(sk) = decode_keyring(data) {
        let hb = sk.header.encode(sk.body.len() as u32);
        assert_eq!(&hb[..], sk.header_bytes, "keyring header re-encode differs");
        if let Ok(pt) = open_keyring(&sk, &SecretKey::from_bytes(FUZZ_KEY)) {
            body(&pt);
        }
    }
    body(data);
}

fn body(data: &[u8]) {
    if let Ok(b) = KeyringBody::decode(data) {
        assert_eq!(b.encode(), data, "keyring body re-encode differs");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
        let mut v: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        v.sort();
        assert!(!v.is_empty(), "empty corpus {target}");
        v
    }

    #[test]
    fn seed_corpus_runs_clean() {
        for (name, f) in [("frame", frame as fn(&[u8])), ("header", header), ("keyring", keyring)] {
            for input in corpus(name) {
                f(&input);
            }
        }
    }

    /// Writes the seed corpus (run with `--ignored` after a format change).
    #[test]
    #[ignore]
    fn write_seed_corpus() {
        use crate::format::keyring::*;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        let put = |t: &str, n: &str, b: &[u8]| {
            std::fs::create_dir_all(root.join(t)).unwrap();
            std::fs::write(root.join(t).join(n), b).unwrap();
        };
        let key = SecretKey::from_bytes(FUZZ_KEY);
        let fk = FrameKey::derive(&key, &FUZZ_DB_ID, &FileHeader::new(FileKind::Segment, 1, 2), Backend::Ring);
        for (i, (last, p)) in [(false, &b""[..]), (false, b"{\"id\":1}"), (true, &[0u8; 16][..])].iter().enumerate() {
            let mut out = Vec::new();
            fk.encode(0, *last, p, &mut out).unwrap();
            put("frame", &format!("seed{i}"), &out);
        }
        put("header", "seed0", &FileHeader::new(FileKind::Segment, 1, 2).encode());
        put("header", "seed1", &FileHeader::new(FileKind::Snapshot, u64::MAX, 7).encode());
        put("header", "seed2", b"00000000000000ff.seg");
        let h = KeyringHeader {
            db_id: FUZZ_DB_ID,
            generation: 1,
            write_salt: [3; 32],
            active: MasterCheck { version: 2, spec: MasterSpec::Key, kcv: key_check_value(&key, &FUZZ_DB_ID) },
            retired: vec![MasterCheck {
                version: 1,
                spec: MasterSpec::Passphrase {
                    params: crate::Argon2Params { m_cost_kib: 64, t_cost: 1, p_cost: 1 },
                    salt: [5; 16],
                },
                kcv: [6; 16],
            }],
        };
        let wk = wrap_key(&key, &FUZZ_DB_ID);
        let dek = SecretKey::from_bytes([9; 32]);
        let entry = FileEntry {
            file_id: 1,
            kind: FileKind::Segment,
            key_id: 2,
            wrapped: wrap_dek(&wk, 2, &FUZZ_DB_ID, 1, 2, FileKind::Segment, &dek).unwrap(),
            state: FileState::Sealed { frames: 3, len: 200, final_frame: true },
            stream: 1,
            ordinal: 0,
            meta: b"m".to_vec(),
        };
        let body = KeyringBody {
            next_id: 3,
            created_unix: 1,
            masters: vec![MasterRecord { version: 2, created_unix: 1, state: MasterState::Active }],
            files: vec![entry],
            root: b"root".to_vec(),
        };
        put("keyring", "seed0", &encode_keyring(&h, &body, &key).unwrap());
        put("keyring", "seed1", &body.encode());
        put("keyring", "seed2", &encode_keyring(&h, &KeyringBody::default(), &key).unwrap());
    }
}
