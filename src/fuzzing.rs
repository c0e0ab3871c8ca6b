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

/// AES-256-GCM round trip on both backends: arbitrary key, nonce,
/// associated data and plaintext. Both backends produce the same bytes,
/// both open them to the plaintext, and a flipped bit anywhere in the
/// ciphertext, tag or associated data fails on both, leaving no plaintext in
/// the buffer.
pub fn aead_roundtrip(data: &[u8]) {
    use crate::crypto::aead::cipher;
    if data.len() < 32 + 12 + 3 {
        return;
    }
    let Some(key) = SecretKey::from_slice(&data[..32]) else { return };
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&data[32..44]);
    let sel = u16::from_le_bytes([data[45], data[46]]) as usize;
    let rest = &data[47..];
    let (aad, pt) = rest.split_at((data[44] as usize % 64).min(rest.len()));
    let backends = [Backend::Ring, Backend::RustCrypto];
    let sealed: Vec<Vec<u8>> = backends
        .iter()
        .map(|b| {
            let mut buf = pt.to_vec();
            cipher(*b, &key).seal(&nonce, aad, &mut buf).unwrap_or_else(|_| panic!("{b:?} seal failed"));
            buf
        })
        .collect();
    assert_eq!(sealed[0], sealed[1], "the backends disagree");
    let ct = &sealed[0];
    for b in backends {
        let mut buf = ct.clone();
        let n = cipher(b, &key).open(&nonce, aad, &mut buf).unwrap_or_else(|_| panic!("{b:?} cannot open"));
        assert_eq!(&buf[..n], pt, "{b:?} round trip");
    }
    // One flipped bit in the ciphertext, the tag or the associated data.
    let pos = sel % (ct.len() + aad.len());
    let mut bad_ct = ct.clone();
    let mut bad_aad = aad.to_vec();
    if pos < ct.len() {
        bad_ct[pos] ^= 1 << (sel % 8);
    } else {
        bad_aad[pos - ct.len()] ^= 1 << (sel % 8);
    }
    for b in backends {
        let mut buf = bad_ct.clone();
        assert!(cipher(b, &key).open(&nonce, &bad_aad, &mut buf).is_err(), "{b:?} accepted a flipped bit");
        assert!(buf.iter().all(|x| *x == 0), "{b:?} left bytes in the buffer after a failed open");
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

/// Key audit log entry: whatever decodes re-encodes to the same bytes, and
/// its chain hash is a function of those bytes.
pub fn audit(data: &[u8]) {
    use crate::format::audit::{AuditEntry, chain};
    if let Ok(e) = AuditEntry::decode(data) {
        assert_eq!(e.encode(), data, "audit entry re-encode differs");
        assert_eq!(chain(&e.prev, data), chain(&e.prev, &e.encode()));
    }
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
        // The raw decode (opening a database) agrees: same events, and
        // documents whose text checks and parses to the full decode's.
        let raw = crate::table::RawCommit::decode(data).unwrap_or_else(|e| panic!("raw decode fails: {e:?}"));
        assert_eq!((raw.first_seq, raw.time_micros, raw.events.len()), (c.first_seq, c.time_micros, c.events.len()));
        for (r, e) in raw.events.iter().zip(&c.events) {
            assert_eq!((r.op, r.table, r.key.map(crate::table::KeyRef::to_pk)), (e.op, e.table, e.key.clone()));
            let doc = r.doc.map(|t| crate::table::Doc::from_text(t).map(|d| d.value().clone()));
            assert_eq!(doc.transpose().ok(), Some(e.doc.as_ref().map(|d| d.to_value())), "raw document differs");
        }
    } else {
        let _ = Commit::decode_headers(data);
        // The raw decode may accept what the full one rejects (it does not
        // parse JSON); the text of such a document must then fail its check.
        if let Ok(raw) = crate::table::RawCommit::decode(data) {
            for r in raw.events {
                if let Some(t) = r.doc {
                    let _ = crate::table::Doc::from_text(t);
                }
            }
        }
    }
}

/// Snapshot metadata and row records.
pub fn snapshot(data: &[u8]) {
    use crate::table::snapshot::{SnapMeta, decode_rows, decode_rows_raw, encode_rows};
    if let Ok(m) = SnapMeta::decode(data) {
        assert_eq!(m.encode(), data);
    }
    if let Ok(raw) = decode_rows_raw(data) {
        // One encoding per record: what decodes encodes back to the same
        // bytes, indexed values included.
        let enc: Vec<(&crate::table::Pk, Vec<u8>)> = raw.rows.iter().map(|(k, t)| (k, t.as_bytes().to_vec())).collect();
        let picked = (raw.fields > 0).then_some((raw.fields, raw.picked.as_slice()));
        assert_eq!(encode_rows(&enc, picked), data, "a decoded record encodes differently");
        assert_eq!(raw.picked.len(), raw.rows.len() * raw.fields);
        match decode_rows(data) {
            // The parsed decode agrees, and so does a field read from the
            // text with the parsed document's field.
            Ok(rows) => {
                assert_eq!(rows.len(), raw.rows.len());
                for ((rk, rt), (k, v)) in raw.rows.iter().zip(&rows) {
                    assert_eq!(rk, k);
                    let d = crate::table::Doc::from_text(rt)
                        .unwrap_or_else(|e| panic!("raw row text fails its check: {e}"));
                    if let Some(first) = v.as_object().and_then(|o| o.keys().next()) {
                        assert_eq!(d.field(first).as_ref(), v.get(first), "field read from text differs");
                    }
                    assert_eq!(d.value(), v);
                }
            }
            // Only a document that does not parse fails it.
            Err(_) => assert!(raw.rows.iter().any(|(_, t)| serde_json::from_str::<serde_json::Value>(t).is_err())),
        }
        for (_, t) in &raw.rows {
            assert!(crate::table::Doc::from_text(t).is_err() || serde_json::from_str::<serde_json::Value>(t).is_ok());
        }
    }
}

/// Sorted-run payloads (data block, index partition, footer, run metadata),
/// order-preserving key components and the version tree's keys and values:
/// whatever decodes re-encodes to the same bytes, and a decoded block finds
/// each of its keys.
pub fn run(data: &[u8]) {
    use crate::format::run::key::{KeyReader, Part, put_int, put_str};
    use crate::format::run::{BlockBuilder, DataBlock, Footer, IndexPartition, RunMeta};
    if let Ok(b) = DataBlock::decode(data.to_vec()) {
        let mut again = BlockBuilder::new();
        for i in 0..b.len() {
            again.add(b.key(i), b.value(i));
            assert_eq!(b.seek(b.key(i)), i, "a block's key is not found where it is");
        }
        assert_eq!(again.finish(), data, "a decoded block encodes differently");
    }
    if let Ok(p) = IndexPartition::decode(data) {
        assert_eq!(p.encode(), data, "a decoded index partition encodes differently");
    }
    if let Ok(f) = Footer::decode(data) {
        assert_eq!(f.encode(), data, "a decoded footer encodes differently");
        assert!(f.first_key.as_slice() <= f.last_key());
    }
    if let Ok(m) = RunMeta::decode(data) {
        assert_eq!(m.encode(), data, "decoded run metadata encodes differently");
    }
    // The version tree's keys and values (row versions, fold markers,
    // index entries, commits, catalog checkpoint keys): whatever decodes
    // encodes back to the same bytes.
    {
        use crate::table::version as ver;
        if let Ok(k) = ver::decode_key(data) {
            assert_eq!(ver::version_key(k.table, &k.key, k.seq), data, "a row version key encodes differently");
            assert_eq!(ver::split_key(data).map(|(_, s)| s), Some(k.seq));
        }
        if let Ok((t, h)) = ver::decode_fold_key(data) {
            assert_eq!(ver::fold_key(t, h), data, "a fold marker encodes differently");
        }
        if let Ok(k) = ver::decode_index_key(data) {
            let again = ver::index_key_encoded(k.table, k.ix, &k.value, &k.key, k.seq);
            assert_eq!(again, data, "an index entry key encodes differently");
            assert_eq!(ver::split_index_key(data).map(|(_, s)| s), Some(k.seq));
        }
        if let Ok((seq, number, part)) = ver::decode_catalog_key(data) {
            assert_eq!(ver::catalog_key(seq, number, part), data, "a catalog checkpoint key encodes differently");
        }
        // A commit entry: key and value split at every point of the input.
        for at in [9, 17].into_iter().filter(|&n| n <= data.len()) {
            let (k, v) = data.split_at(at);
            if let Ok((first, len, time)) = ver::decode_commit(k, v) {
                assert_eq!((ver::commit_key(first), ver::encode_commit(len, time)), (k.to_vec(), v.to_vec()));
            }
            if let Ok((time, first, end)) = ver::decode_commit_time(k, v) {
                assert_eq!(ver::commit_time_key(time, first), k, "a commit time key encodes differently");
                assert_eq!(end.to_be_bytes(), v);
            }
        }
        if let Ok(holds) = ver::decode_index_value(data) {
            assert_eq!(ver::index_entry_value(holds), data);
        }
        if let Ok((op, text)) = ver::decode_value(data) {
            assert_eq!(ver::encode_value(op, text), data, "a row version value encodes differently");
        }
    }
    let mut r = KeyReader::new(data);
    let mut again = Vec::new();
    while let Ok(p) = r.part() {
        match p {
            Part::Int(i) => put_int(&mut again, i),
            Part::Str(s) => put_str(&mut again, &s),
        }
        assert_eq!(&again[..], &data[..r.pos()], "a key component encodes differently");
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

/// Model fuzzer: bytes become a sequence of operations (insert, patch, soft
/// delete, multi-row commit, snapshot, compact, clean reopen, crash and
/// reopen) on two tables, run against the engine on [`MemFs`] and against a
/// naive in-memory oracle. After every operation the current state and a read
/// `AS OF` a past commit (chosen by the input) must equal the oracle's.
///
/// [`MemFs`]: crate::storage::memfs::MemFs
pub fn model(data: &[u8]) {
    use crate::query::ast::AsOf;
    use crate::storage::memfs::MemFs;
    use crate::table::Pk;
    use crate::{Db, KeySource, Options, StoreOptions};
    use serde_json::{Map, Value, json};
    use std::collections::BTreeMap;

    type State = [BTreeMap<Pk, Value>; 2];
    const TABLES: [&str; 2] = ["a", "b"];
    let fs = MemFs::new();
    let mut key_byte = FUZZ_KEY[0];
    let key_of = |b: u8| KeySource::Raw(SecretKey::from_bytes([b; 32]));
    let opts = || Options {
        store: StoreOptions { vfs: std::sync::Arc::new(fs.clone()), segment_size: 1024, ..Default::default() },
        snapshot_every_events: 5,
        // A version tree of many small runs read through a cache that
        // cannot hold them: flushes, merges and evictions all the time.
        memtable_bytes: 256,
        cache_bytes: 4 << 10,
        ..Default::default()
    };
    let Ok(mut db) = Db::create("/db", &key_of(key_byte), opts()) else { return };
    for t in TABLES {
        assert!(db.create_table(t, "id", &["v"]).is_ok());
    }
    let mut cur: State = Default::default();
    // (commit end, state after it)
    let mut states: Vec<(u64, State)> = vec![(0, cur.clone()), (1, cur.clone()), (2, cur.clone())];
    let mut horizon = [0u64; 2];
    // The name the indexed field has now (renamed by schema changes).
    let mut vname = ["v"; 2];
    let k = |b: u8| Pk::Int(i64::from(b % 6));
    for op in data.chunks(4) {
        let [code, x, y, z] = [op[0], *op.get(1).unwrap_or(&0), *op.get(2).unwrap_or(&0), *op.get(3).unwrap_or(&0)];
        let t = usize::from(x & 1);
        let before = db.latest_seq();
        match code % 11 {
            0 | 1 => {
                let doc = json!({"id": i64::from(y % 6), "v": z});
                let ok = !cur[t].contains_key(&k(y));
                assert_eq!(db.insert(TABLES[t], doc.clone()).is_ok(), ok, "insert");
                if ok {
                    cur[t].insert(k(y), doc);
                }
            }
            2 => {
                let mut set = Map::new();
                set.insert("v".into(), if z % 3 == 0 { Value::Null } else { json!(z) });
                let r = db.patch(TABLES[t], &k(y), set);
                assert_eq!(r.is_ok(), cur[t].contains_key(&k(y)), "patch");
                if let Some(Value::Object(m)) = cur[t].get_mut(&k(y)) {
                    if z % 3 == 0 {
                        m.remove("v");
                    } else {
                        m.insert("v".into(), json!(z));
                    }
                }
            }
            3 => {
                let r = db.soft_delete(TABLES[t], &k(y));
                assert_eq!(r.is_ok(), cur[t].remove(&k(y)).is_some(), "soft delete");
            }
            4 => {
                // Two inserts in one commit: both or neither.
                let (d1, d2) = (json!({"id": i64::from(y % 6)}), json!({"id": i64::from(z % 6)}));
                let ok = !cur[t].contains_key(&k(y)) && !cur[t].contains_key(&k(z)) && k(y) != k(z);
                let r = db.write(|w| {
                    w.insert(TABLES[t], d1.clone())?;
                    w.insert(TABLES[t], d2.clone())
                });
                assert_eq!(r.is_ok(), ok, "batch");
                if ok {
                    cur[t].insert(k(y), d1);
                    cur[t].insert(k(z), d2);
                }
            }
            5 => {
                assert!(db.snapshot(TABLES[t]).is_ok());
            }
            6 => {
                let target = before * u64::from(z) / 255;
                let i = states.partition_point(|(s, _)| *s <= target);
                let end = states[i - 1].0;
                match db.compact(TABLES[t], Some(&AsOf::Seq(target))) {
                    Ok(h) => {
                        assert_eq!(h, end.max(horizon[t]), "compaction horizon");
                        horizon[t] = h;
                    }
                    Err(e) => panic!("compact failed: {e}"),
                }
            }
            7 => {
                // A transaction: it reads its own writes; rolled back, it
                // leaves nothing; a write to a row it wrote, committed by
                // someone else first, makes it fail whole (Snapshot).
                use crate::Isolation;
                let mut tx = db.begin(if x & 2 == 0 { Isolation::Serializable } else { Isolation::Snapshot });
                assert_eq!(tx.get(TABLES[t], &k(y)).ok().flatten(), cur[t].get(&k(y)).cloned(), "txn read");
                let ins = !cur[t].contains_key(&k(z));
                let d = json!({"id": i64::from(z % 6), "tx": y});
                assert_eq!(tx.insert(TABLES[t], d.clone()).is_ok(), ins, "txn insert");
                if ins {
                    assert_eq!(tx.get(TABLES[t], &k(z)).ok().flatten(), Some(d.clone()), "txn reads its write");
                }
                match x % 3 {
                    0 => tx.rollback(),
                    1 if ins => {
                        // Someone else inserts the same key first.
                        let other = json!({"id": i64::from(z % 6), "other": true});
                        assert!(db.insert(TABLES[t], other.clone()).is_ok());
                        cur[t].insert(k(z), other);
                        states.push((db.latest_seq(), cur.clone()));
                        assert!(matches!(tx.commit(), Err(crate::Error::Conflict(_))), "txn conflict");
                    }
                    _ => {
                        assert!(tx.commit().is_ok(), "txn commit");
                        if ins {
                            cur[t].insert(k(z), d);
                        }
                    }
                }
            }
            8 => {
                // Rotate the master key; the re-encryption may still be
                // running at the next crash or close, and resumes on open.
                let next = key_byte.wrapping_add(1 + y % 7);
                if next != key_byte {
                    let o = crate::RotateOptions { rewrap_only: z % 4 == 0, ..Default::default() };
                    match db.rotate_master_key(&key_of(next), o) {
                        Ok(_) => key_byte = next,
                        // An old key coming back is refused; nothing changed.
                        Err(crate::Error::InvalidArgument(_)) => {}
                        Err(e) => panic!("rotation failed: {e}"),
                    }
                    if y & 1 == 0 {
                        assert!(db.wait_for_rotation().is_ok());
                    }
                }
            }
            9 => {
                // Rename the indexed field back and forth: rows written
                // before read (and are indexed) under the new name.
                let (from, to) = if vname[t] == "v" { ("v", "w") } else { ("w", "v") };
                let stmt = format!("ALTER TABLE {} RENAME COLUMN {from} TO {to}", TABLES[t]);
                let r = crate::query::parse_one(&stmt).and_then(|st| db.execute_stmt(&st));
                assert!(r.is_ok(), "{stmt}: {r:?}");
                for d in cur[t].values_mut() {
                    if let Some(m) = d.as_object_mut()
                        && let Some(x) = m.remove(from)
                    {
                        m.insert(to.into(), x);
                    }
                }
                vname[t] = to;
            }
            _ => {
                if y & 1 == 0 {
                    assert!(db.close().is_ok());
                } else {
                    fs.crash();
                    drop(db);
                }
                db = match Db::open("/db", &key_of(key_byte), opts()) {
                    Ok(db) => db,
                    Err(e) => panic!("reopen failed: {e}"),
                };
            }
        }
        if db.latest_seq() != before {
            states.push((db.latest_seq(), cur.clone()));
        }
        // Every acknowledged commit is there; the present and a past point read right.
        assert_eq!(db.latest_seq(), states.last().map_or(0, |s| s.0), "latest sequence");
        let past = u64::from(z) * db.latest_seq() / 255;
        for (t, name) in TABLES.iter().enumerate() {
            let now: Vec<Value> =
                db.scan(name, None).map(|v| v.iter().map(|d| (**d).clone()).collect()).unwrap_or_default();
            assert_eq!(now, cur[t].values().cloned().collect::<Vec<_>>(), "current state of {name}");
            // The index on the indexed field answers as the model does (kept
            // as rows change and schema changes rename it, rebuilt at open);
            // so does a scan on the other name.
            for f in ["v", "w"] {
                if let Ok(crate::query::ast::Stmt::Select(sel)) =
                    crate::query::parse_one(&format!("SELECT * FROM {name} WHERE {f} = {z}"))
                {
                    let got = db.select(&sel).unwrap_or_else(|e| panic!("select on {name}: {e}"));
                    let want: Vec<Value> = cur[t].values().filter(|d| d.get(f) == Some(&json!(z))).cloned().collect();
                    assert_eq!(got, want, "{name} WHERE {f} = {z} (indexed: {})", vname[t]);
                }
            }
            let i = states.partition_point(|(s, _)| *s <= past);
            let (end, want) = &states[i - 1];
            match db.scan(name, Some(&AsOf::Seq(past))) {
                Ok(rows) => {
                    let got: Vec<Value> = rows.iter().map(|d| (**d).clone()).collect();
                    assert!(*end >= horizon[t], "read before the horizon of {name} succeeded");
                    assert_eq!(got, want[t].values().cloned().collect::<Vec<_>>(), "{name} AS OF @seq:{past}");
                }
                Err(e) => assert!(*end < horizon[t] || *end < 1 + t as u64, "{name} AS OF @seq:{past}: {e}"),
            }
        }
    }
}

/// The manifest (the keyring body, as decrypted): whatever decodes
/// re-encodes to the same bytes.
pub fn manifest(data: &[u8]) {
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
        for (name, f) in [
            ("frame", frame as fn(&[u8])),
            ("header", header),
            ("keyring", keyring),
            ("commit", commit),
            ("audit", audit),
            ("aead_roundtrip", aead_roundtrip),
            ("manifest", manifest),
            ("snapshot", snapshot),
            ("run", run),
            ("driftql", driftql),
            ("model", model),
        ] {
            for input in corpus(name) {
                f(&input);
            }
        }
    }

    /// The model harness over pseudo-random operation sequences (a cheap,
    /// deterministic stand-in for a fuzzing campaign in the normal suite).
    #[test]
    fn model_runs_clean_over_random_operation_sequences() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..150 {
            let mut input = Vec::new();
            let len = 40 + (x % 120) as usize;
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                input.push((x >> 24) as u8);
            }
            if std::env::var("MODEL_DEBUG").is_ok() {
                eprintln!(
                    "input {:?}",
                    input
                        .chunks(4)
                        .map(|c| (
                            c[0] % 10,
                            c.get(1).copied().unwrap_or(0) & 1,
                            c.get(2).copied().unwrap_or(0),
                            c.get(3).copied().unwrap_or(0)
                        ))
                        .collect::<Vec<_>>()
                );
            }
            model(&input);
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
            version: KEYRING_VERSION,
            public: PublicManifest {
                id_mark: 9,
                files: Vec::new(),
                building: vec![(5, FileKind::Snapshot)],
                removed: vec![(3, FileKind::Segment)],
            },
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
            next_id: 9,
            created_unix: 1,
            masters: vec![MasterRecord { version: 2, created_unix: 1, state: MasterState::Active, first_file_id: 0 }],
            files: vec![entry],
            root: b"root".to_vec(),
            rotation: None,
            audit: Default::default(),
        };
        put("keyring", "seed0", &encode_keyring(&h, &body, &key).unwrap());
        put("keyring", "seed1", &body.encode());
        put("manifest", "seed0", &body.encode());
        put("manifest", "seed1", &KeyringBody::default().encode());
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
                    doc: Some(std::sync::Arc::new(crate::table::Doc::from_value(
                        serde_json::json!({"name": "t", "pk": "id", "indexes": ["a"]}),
                    ))),
                    patch: None,
                },
                Event {
                    op: Op::Insert,
                    table: 1,
                    key: Some(Pk::Int(1)),
                    doc: Some(std::sync::Arc::new(crate::table::Doc::from_value(
                        serde_json::json!({"id": 1, "a": "x"}),
                    ))),
                    patch: None,
                },
                Event {
                    op: Op::Patch,
                    table: 1,
                    key: Some(Pk::Str("k".into())),
                    doc: Some(std::sync::Arc::new(crate::table::Doc::from_value(serde_json::json!({"id": "k"})))),
                    patch: Some(serde_json::json!({"a": null})),
                },
                Event {
                    op: Op::SoftDelete,
                    table: 1,
                    key: Some(Pk::Int(1)),
                    doc: Some(std::sync::Arc::new(crate::table::Doc::from_value(serde_json::json!({"id": 1})))),
                    patch: None,
                },
                Event { op: Op::Folded, table: 1, key: None, doc: None, patch: None },
            ],
        };
        put("commit", "seed0", &c.encode());
        let a = crate::format::audit::AuditEntry {
            seq: 0,
            time_micros: 1_700_000_000_000_000,
            kind: "database-created".into(),
            master_version: 1,
            detail: "{\"master_version\":1}".into(),
            prev: [0; 32],
        };
        put("audit", "seed0", &a.encode());
        let mut seed = vec![7u8; 32 + 12];
        seed.extend_from_slice(&[5, 3, 0]);
        seed.extend_from_slice(b"aad--plaintext of a frame");
        put("aead_roundtrip", "seed0", &seed);
        put("aead_roundtrip", "seed1", &[1u8; 47]);
        use crate::table::snapshot::{SnapMeta, encode_rows};
        put("snapshot", "seed0", &SnapMeta { table: 1, seq: 9, rows: 2, indexes: vec![] }.encode());
        put(
            "snapshot",
            "seed-fields",
            &SnapMeta { table: 1, seq: 9, rows: 2, indexes: vec!["status".into()] }.encode(),
        );
        let (a, b) = (Pk::Int(1), Pk::Str("x".into()));
        let rows = [(&a, b"{\"id\":1}".to_vec()), (&b, b"{\"id\":\"x\",\"n\":[1,2.5]}".to_vec())];
        put("snapshot", "seed1", &encode_rows(&rows, None));
        use crate::table::index::IKey;
        let picked = [
            Some(IKey::Str("x".into())),
            None,
            crate::table::index::ikey(&serde_json::json!(7)),
            Some(IKey::Bool(true)),
        ];
        put("snapshot", "seed-picked", &encode_rows(&rows, Some((2, &picked))));
        {
            use crate::format::run::key::{put_desc_u64, put_int, put_str, put_u32};
            use crate::format::run::{BlockBuilder, Bloom, Footer, Handle, IndexPartition, RunMeta};
            let k = |pk: &[u8], seq: u64| {
                let mut k = vec![1];
                put_u32(&mut k, 1);
                put_str(&mut k, pk);
                put_desc_u64(&mut k, seq);
                k
            };
            let mut b = BlockBuilder::new();
            b.add(&k(b"a", 9), b"{\"id\":\"a\"}");
            b.add(&k(b"a", 3), b"");
            b.add(&k(b"a\0b", 3), b"x");
            put("run", "block", &b.finish());
            let h = |f: u64| Handle { frame: f, offset: 32 + 200 * f, len: 100 };
            let part =
                IndexPartition { blocks: vec![(k(b"a", 3), h(0)), (k(b"b", 1), h(1))], bloom: Bloom::build(&[1, 2]) };
            put("run", "partition", &part.encode());
            let footer = Footer {
                entries: 3,
                blocks: 2,
                min_seq: 1,
                max_seq: 9,
                first_key: k(b"a", 9),
                partitions: vec![(k(b"b", 1), h(2))],
            };
            put("run", "footer", &footer.encode());
            put("run", "meta", &RunMeta { level: 1, footer: h(3), entries: 3, min_seq: 1, max_seq: 9 }.encode());
            let mut parts = Vec::new();
            put_int(&mut parts, -5);
            put_str(&mut parts, b"x\0y");
            put("run", "key", &parts);
            put(
                "run",
                "index-key",
                &crate::table::version::index_key(
                    3,
                    (7, 1),
                    &crate::table::index::IKey::Str("idle\0x".into()),
                    &crate::table::Pk::Int(-4),
                    12,
                ),
            );
        }
        put(
            "model",
            "seed0",
            &[
                0, 0, 1, 7, 0, 1, 2, 9, 2, 0, 1, 3, 4, 1, 3, 4, 5, 0, 0, 0, 3, 0, 2, 0, 7, 0, 1, 0, 6, 0, 0, 200, 0, 1,
                5, 5, 7, 0, 0, 0, 2, 1, 3, 6,
            ],
        );
        put(
            "model",
            "seed1",
            &[
                1, 0, 0, 1, 1, 0, 1, 2, 1, 0, 2, 3, 1, 0, 3, 4, 1, 0, 4, 5, 1, 0, 5, 6, 6, 0, 0, 128, 2, 0, 4, 9, 7, 0,
                1, 255,
            ],
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
