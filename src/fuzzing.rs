//! Harness functions for the fuzz targets in `fuzz/`. They live in the
//! library so that `cargo test` runs each of them over the committed seed
//! corpus, and cargo-fuzz runs the very same code.
//!
//! Each harness panics only when an invariant breaks: whatever decodes must
//! re-encode to the same bytes, and decoding never panics by itself.

// Harnesses exist to panic when an invariant breaks.
#![allow(clippy::panic)]

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

/// Event log commit record: decode, re-encode identical; header-only and
/// single-event decodes agree with the full decode.
pub fn commit(data: &[u8]) {
    use crate::table::Commit;
    if let Ok(c) = Commit::decode(data) {
        // JSON text is not canonical (spacing, escapes, number forms), so
        // compare the re-decoded structure, and the second encoding bytewise.
        let enc = c.encode();
        let again = Commit::decode(&enc).unwrap_or_else(|e| panic!("re-encoded commit does not decode: {e:?}"));
        assert_eq!(again, c, "commit re-encode changes meaning");
        assert_eq!(again.encode(), enc, "commit encoding is not stable");
        let h =
            Commit::decode_headers(data).unwrap_or_else(|e| panic!("headers fail where the full decode works: {e:?}"));
        assert_eq!(h.events.len(), c.events.len());
        for (i, e) in c.events.iter().enumerate() {
            let (_, _, one) = Commit::decode_one(data, i).unwrap_or_else(|e| panic!("decode_one fails: {e:?}"));
            assert_eq!(&one, e);
        }
    } else {
        let _ = Commit::decode_headers(data);
    }
}

/// Snapshot metadata and row records.
pub fn snapshot(data: &[u8]) {
    use crate::table::snapshot::{SnapMeta, decode_rows, encode_rows};
    if let Ok(m) = SnapMeta::decode(data) {
        assert_eq!(m.encode(), data);
    }
    if let Ok(rows) = decode_rows(data) {
        let enc: Vec<(&crate::table::Pk, Vec<u8>)> =
            rows.iter().map(|(k, v)| (k, serde_json::to_vec(v).unwrap_or_default())).collect();
        let again = decode_rows(&encode_rows(&enc)).unwrap_or_else(|e| panic!("re-encoded rows do not decode: {e:?}"));
        assert_eq!(again, rows);
    }
}

/// DriftQL: whatever parses prints as DriftQL that parses to the same tree.
pub fn driftql(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(stmts) = crate::query::parse(text) {
        for st in stmts {
            let printed = st.to_string();
            let again = crate::query::parse_one(&printed)
                .unwrap_or_else(|e| panic!("printed statement does not parse: {printed:?}: {e}"));
            assert_eq!(again, st, "print/parse changes the statement: {printed}");
        }
    }
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
        for (name, f) in [
            ("frame", frame as fn(&[u8])),
            ("header", header),
            ("keyring", keyring),
            ("commit", commit),
            ("snapshot", snapshot),
            ("driftql", driftql),
        ] {
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
        use crate::table::{Commit, Event, Op, Pk};
        let c = Commit {
            first_seq: 7,
            time_micros: 1_700_000_000_000_000,
            events: vec![
                Event {
                    op: Op::CreateTable,
                    table: 1,
                    key: None,
                    doc: Some(serde_json::json!({"name": "t", "pk": "id", "indexes": ["a"]})),
                    patch: None,
                },
                Event {
                    op: Op::Insert,
                    table: 1,
                    key: Some(Pk::Int(1)),
                    doc: Some(serde_json::json!({"id": 1, "a": "x"})),
                    patch: None,
                },
                Event {
                    op: Op::Patch,
                    table: 1,
                    key: Some(Pk::Str("k".into())),
                    doc: Some(serde_json::json!({"id": "k"})),
                    patch: Some(serde_json::json!({"a": null})),
                },
                Event {
                    op: Op::SoftDelete,
                    table: 1,
                    key: Some(Pk::Int(1)),
                    doc: Some(serde_json::json!({"id": 1})),
                    patch: None,
                },
                Event { op: Op::Folded, table: 1, key: None, doc: None, patch: None },
            ],
        };
        put("commit", "seed0", &c.encode());
        use crate::table::snapshot::{SnapMeta, encode_rows};
        put("snapshot", "seed0", &SnapMeta { table: 1, seq: 9, rows: 2 }.encode());
        let (a, b) = (Pk::Int(1), Pk::Str("x".into()));
        put(
            "snapshot",
            "seed1",
            &encode_rows(&[(&a, b"{\"id\":1}".to_vec()), (&b, b"{\"id\":\"x\",\"n\":[1,2.5]}".to_vec())]),
        );
        for (i, q) in [
            "CREATE TABLE orders (pk=id, INDEX(status, customer_id))",
            "INSERT INTO orders {\"id\": \"o1\", \"amount\": 100}; PATCH orders KEY \"o1\" SET {\"status\": null}",
            "SOFT DELETE FROM orders KEY 1\nSHOW DRIFT orders KEY \"o1\"\nSHOW TABLES\nDESCRIBE orders",
            "SELECT status, COUNT(*), SUM(a.b) FROM orders WHERE (a = 'x' OR NOT b IN (1, 2.5, true)) AND c IS NOT NULL AS OF @seq:5 GROUP BY status ORDER BY status DESC LIMIT 10 OFFSET 2",
            "SELECT * FROM \"my-orders\" AS OF \"2025-01-01T00:00:00Z\"; COMPACT orders BEFORE @seq:3; SNAPSHOT orders",
        ]
        .iter()
        .enumerate()
        {
            put("driftql", &format!("seed{i}"), q.as_bytes());
        }
    }
}
