//! Store tests on the in-memory file system: crash recovery, torn tails,
//! tampering, nonce uniqueness, faults.

use super::memfs::{Faults, MemFs};
use super::store::{KEYRING_FILE, RecoveryEvent, Store, StoreOptions};
use crate::crypto::keys::SecretKey;
use crate::format::{FileKind, file_name};
use crate::{CreateOptions, Error, KeySource};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn key() -> KeySource {
    KeySource::Raw(SecretKey::from_bytes([0x42; 32]))
}

fn dir() -> PathBuf {
    PathBuf::from("/db")
}

fn opts(fs: &MemFs) -> StoreOptions {
    StoreOptions { vfs: Arc::new(fs.clone()), segment_size: 4096, merge_min_files: 1000, ..StoreOptions::default() }
}

fn create(fs: &MemFs) -> Store {
    Store::create(dir(), &key(), CreateOptions { store: opts(fs), ..CreateOptions::default() }).unwrap()
}

fn open(fs: &MemFs) -> crate::Result<Store> {
    Store::open(dir(), &key(), opts(fs))
}

fn record(i: usize) -> Vec<u8> {
    format!("record-{i:05}-{}", "x".repeat(i % 37)).into_bytes()
}

fn read_all(s: &Store, stream: u32) -> crate::Result<Vec<Vec<u8>>> {
    let mut v = Vec::new();
    s.read_stream(stream, |_, p| {
        v.push(p.to_vec());
        Ok(())
    })?;
    Ok(v)
}

fn snapshot(fs: &MemFs) -> Vec<(PathBuf, Vec<u8>)> {
    fs.paths().into_iter().filter_map(|p| fs.contents(&p).map(|c| (p, c))).collect()
}

#[test]
fn records_round_trip_across_rolls_and_reopen() {
    let fs = MemFs::new();
    let s = create(&fs);
    let mut positions = Vec::new();
    for i in 0..300 {
        positions.push(s.append(1, FileKind::Segment, &record(i)).unwrap());
    }
    s.sync().unwrap();
    assert!(s.stream_files(1).len() > 3, "4 KiB segments must roll");
    let expect: Vec<Vec<u8>> = (0..300).map(record).collect();
    assert_eq!(read_all(&s, 1).unwrap(), expect);
    assert_eq!(s.read_record(positions[123]).unwrap(), record(123));
    s.close().unwrap();
    let s = open(&fs).unwrap();
    assert_eq!(read_all(&s, 1).unwrap(), expect);
    assert_eq!(s.read_record(positions[299]).unwrap(), record(299));
    for f in s.stream_files(1) {
        assert!(matches!(f.state, crate::format::keyring::FileState::Sealed { final_frame: true, .. }));
    }
}

#[test]
fn reopening_never_appends_to_an_old_file() {
    let fs = MemFs::new();
    let s = create(&fs);
    let p1 = s.append(1, FileKind::Segment, b"one").unwrap();
    s.close().unwrap();
    let s = open(&fs).unwrap();
    let p2 = s.append(1, FileKind::Segment, b"two").unwrap();
    assert_ne!(p1.file_id, p2.file_id);
    let files = s.stream_files(1);
    assert_ne!(files[0].key_id, files[1].key_id);
    assert_eq!(read_all(&s, 1).unwrap(), vec![b"one".to_vec(), b"two".to_vec()]);
}

#[test]
fn torn_tail_at_every_byte_of_the_last_frame_is_recovered() {
    // After a sync the file holds 5 records and then an (unsynced) sync
    // marker; the last record follows. A crash keeps any prefix of those two.
    let last = record(7);
    let marker_len = super::segment::FileWriter::frame_len(crate::format::frame::FINAL_PAYLOAD_LEN) as usize;
    let frame_len = super::segment::FileWriter::frame_len(last.len()) as usize;
    for keep in 0..=marker_len + frame_len {
        let fs = MemFs::new();
        let s = create(&fs);
        for i in 0..5 {
            s.append(1, FileKind::Segment, &record(i)).unwrap();
        }
        s.sync().unwrap();
        let old_file = s.stream_files(1)[0].file_id;
        s.append(1, FileKind::Segment, &last).unwrap();
        fs.crash_keeping(|_, _| keep);
        drop(s);
        let s = open(&fs).unwrap();
        let got = read_all(&s, 1).unwrap();
        let mut expect: Vec<Vec<u8>> = (0..5).map(record).collect();
        if keep == marker_len + frame_len {
            expect.push(last.clone());
        } else if keep != 0 && keep != marker_len {
            assert!(
                s.recovery_events().iter().any(|e| matches!(e, RecoveryEvent::TruncatedTornTail { .. })),
                "keep={keep}: {:?}",
                s.recovery_events()
            );
        }
        assert_eq!(got, expect, "keep={keep}");
        let p = s.append(1, FileKind::Segment, b"after").unwrap();
        assert_ne!(p.file_id, old_file, "the next write must go to a new file");
        s.sync().unwrap();
        expect.push(b"after".to_vec());
        assert_eq!(read_all(&s, 1).unwrap(), expect);
    }
}

#[test]
fn zero_filled_tail_is_a_torn_tail() {
    let fs = MemFs::new();
    let s = create(&fs);
    s.append(1, FileKind::Segment, b"durable").unwrap();
    s.sync().unwrap();
    let name = file_name(s.stream_files(1)[0].file_id, FileKind::Segment);
    fs.crash();
    drop(s);
    let path = dir().join(&name);
    let mut c = fs.contents(&path).unwrap();
    c.extend_from_slice(&[0u8; 700]);
    fs.put(&path, &c);
    let s = open(&fs).unwrap();
    assert_eq!(read_all(&s, 1).unwrap(), vec![b"durable".to_vec()]);
}

#[test]
fn damage_before_a_sync_marker_is_an_error_not_a_torn_tail() {
    let fs = MemFs::new();
    let s = create(&fs);
    for i in 0..4 {
        s.append(1, FileKind::Segment, &record(i)).unwrap();
    }
    s.sync().unwrap();
    // A second sync makes the first sync marker durable.
    s.append(1, FileKind::Segment, &record(4)).unwrap();
    s.sync().unwrap();
    let name = file_name(s.stream_files(1)[0].file_id, FileKind::Segment);
    fs.crash();
    drop(s);
    let path = dir().join(&name);
    let mut c = fs.contents(&path).unwrap();
    c[32 + 12] ^= 0x55; // inside the first frame's body
    fs.put(&path, &c);
    let before = snapshot(&fs);
    match open(&fs) {
        Err(Error::Corrupted { file, offset, .. }) => {
            assert_eq!(file, name);
            assert_eq!(offset, 32);
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a database with a damaged frame"),
    }
    assert_eq!(snapshot(&fs), before, "a failed open must not change anything");
}

#[test]
fn reordered_unsynced_writes_are_cut_not_refused() {
    // Writeback may persist a later page before an earlier one: a hole of
    // zeros in unsynced data followed by a valid frame. No sync marker
    // follows the hole, so it is a torn tail, not corruption.
    let fs = MemFs::new();
    let s = create(&fs);
    s.append(1, FileKind::Segment, &record(0)).unwrap();
    s.sync().unwrap();
    for i in 1..6 {
        s.append(1, FileKind::Segment, &record(i)).unwrap();
    }
    let name = s.stream_files(1)[0].name.clone();
    fs.crash_keeping(|_, n| n);
    drop(s);
    let path = dir().join(&name);
    let mut c = fs.contents(&path).unwrap();
    let fr = frames_of(&c);
    // frames: record 0, sync marker, records 1..5; zero record 2.
    let (off, len) = fr[3];
    c[off..off + len].fill(0);
    fs.put(&path, &c);
    let s = open(&fs).unwrap();
    assert_eq!(read_all(&s, 1).unwrap(), vec![record(0), record(1)]);
    assert!(
        s.recovery_events()
            .iter()
            .any(|e| matches!(e, RecoveryEvent::TruncatedTornTail { offset, .. } if *offset == off as u64))
    );
}

#[test]
fn no_key_nonce_pair_is_reused_across_crash_and_reopen_cycles() {
    crate::crypto::nonce_audit::start();
    let fs = MemFs::new();
    let s = create(&fs);
    s.append(1, FileKind::Segment, b"first").unwrap();
    drop(s);
    let mut rng = 0x9E3779B97F4A7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for cycle in 0..60 {
        let s = open(&fs).unwrap();
        let n = (next() % 40) as usize;
        for i in 0..n {
            s.append((i % 2) as u32, if i % 2 == 0 { FileKind::Segment } else { FileKind::Wal }, &record(i + cycle))
                .unwrap();
            if next() % 5 == 0 {
                s.sync().unwrap();
            }
        }
        match next() % 3 {
            0 => s.close().unwrap(),
            1 => {
                fs.crash();
                drop(s);
            }
            _ => {
                let r = next() as usize;
                fs.crash_keeping(|_, n| if n == 0 { 0 } else { r % (n + 1) });
                drop(s);
            }
        }
        if cycle % 10 == 9 {
            let s = Store::open(dir(), &key(), StoreOptions { merge_min_files: 2, ..opts(&fs) }).unwrap();
            s.close().unwrap();
        }
    }
    let (uses, reuses) = crate::crypto::nonce_audit::stop();
    assert!(uses > 500, "the workload sealed only {uses} frames");
    assert_eq!(reuses, 0, "a (key, nonce) pair was used twice");
}

#[test]
fn nonce_audit_detects_a_reuse() {
    // Control for the test above: sealing the same frame index twice under
    // one key is counted.
    use crate::format::frame::FrameKey;
    use crate::format::header::FileHeader;
    crate::crypto::nonce_audit::start();
    let k = FrameKey::derive(
        &SecretKey::from_bytes([1; 32]),
        &[0; 16],
        &FileHeader::new(FileKind::Segment, 1, 2),
        crate::crypto::aead::Backend::Ring,
    );
    k.encode(0, false, b"a", &mut Vec::new()).unwrap();
    k.encode(0, false, b"b", &mut Vec::new()).unwrap();
    assert_eq!(crate::crypto::nonce_audit::stop(), (2, 1));
}

/// A small database with one sealed segment of 3 records; returns its path.
fn small_sealed(fs: &MemFs) -> PathBuf {
    let s = create(fs);
    for i in 0..3 {
        s.append(1, FileKind::Segment, &record(i)).unwrap();
    }
    let id = s.stream_files(1)[0].file_id;
    s.close().unwrap();
    dir().join(file_name(id, FileKind::Segment))
}

fn open_and_read(fs: &MemFs) -> crate::Result<Vec<Vec<u8>>> {
    let s = open(fs)?;
    read_all(&s, 1)
}

#[test]
fn every_single_byte_flip_in_a_sealed_segment_is_detected() {
    let fs = MemFs::new();
    let path = small_sealed(&fs);
    let original = fs.contents(&path).unwrap();
    let base = snapshot(&fs);
    for i in 0..original.len() {
        for x in [0x01u8, 0x80, 0xFF] {
            for (p, c) in &base {
                fs.put(p, c);
            }
            let mut c = original.clone();
            c[i] ^= x;
            fs.put(&path, &c);
            match open_and_read(&fs) {
                Err(e) => assert!(e.is_integrity(), "flip at {i}: non-integrity error {e}"),
                Ok(got) => panic!("flip at {i} (^{x:#x}) not detected; read {} records", got.len()),
            }
        }
    }
}

#[test]
fn every_single_byte_flip_in_the_keyring_is_detected_and_changes_nothing() {
    let fs = MemFs::new();
    small_sealed(&fs);
    let kr = dir().join(KEYRING_FILE);
    let original = fs.contents(&kr).unwrap();
    let base = snapshot(&fs);
    for i in 0..original.len() {
        for (p, c) in &base {
            fs.put(p, c);
        }
        let mut c = original.clone();
        c[i] ^= 0x10;
        fs.put(&kr, &c);
        let tampered = snapshot(&fs);
        match open(&fs) {
            Err(e) => assert!(e.is_integrity() || e.exit_code() == 3, "flip at {i}: {e}"),
            Ok(_) => panic!("keyring flip at {i} not detected"),
        }
        assert_eq!(snapshot(&fs), tampered, "failed open wrote something");
    }
}

#[test]
fn truncating_a_sealed_segment_anywhere_is_detected() {
    let fs = MemFs::new();
    let path = small_sealed(&fs);
    let original = fs.contents(&path).unwrap();
    for cut in 0..original.len() {
        fs.put(&path, &original[..cut]);
        let e = open_and_read(&fs).expect_err("truncation not detected");
        assert!(e.is_integrity(), "cut at {cut}: {e}");
    }
    // Extending it is detected too.
    let mut longer = original.clone();
    longer.extend_from_slice(&original[32..60]);
    fs.put(&path, &longer);
    assert!(open_and_read(&fs).unwrap_err().is_integrity());
}

fn frames_of(file: &[u8]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut off = 32;
    while off < file.len() {
        let raw = crate::format::frame::decode_frame(&file[off..]).unwrap();
        v.push((off, raw.encoded_len()));
        off += raw.encoded_len();
    }
    v
}

#[test]
fn swapping_frames_is_detected() {
    let fs = MemFs::new();
    let s = create(&fs);
    for i in 0..3 {
        s.append(1, FileKind::Segment, &record(5)).unwrap(); // equal sizes so frames swap in place
        let _ = i;
    }
    let id = s.stream_files(1)[0].file_id;
    s.close().unwrap();
    let path = dir().join(file_name(id, FileKind::Segment));
    let c = fs.contents(&path).unwrap();
    let fr = frames_of(&c);
    let (a, la) = fr[0];
    let (b, lb) = fr[1];
    assert_eq!(la, lb);
    let mut sw = c.clone();
    sw[a..a + la].copy_from_slice(&c[b..b + lb]);
    sw[b..b + lb].copy_from_slice(&c[a..a + la]);
    fs.put(&path, &sw);
    let e = open_and_read(&fs).unwrap_err();
    assert!(matches!(e, Error::Tampered { offset, .. } if offset == a as u64), "{e}");
}

#[test]
fn frames_and_files_moved_between_files_or_databases_are_detected() {
    // Two files in one database with equal-size records.
    let fs = MemFs::new();
    let s = create(&fs);
    s.append(1, FileKind::Segment, &record(1)).unwrap();
    s.seal_stream(1).unwrap();
    s.append(1, FileKind::Segment, &record(1)).unwrap();
    let files = s.stream_files(1);
    s.close().unwrap();
    let pa = dir().join(&files[0].name);
    let pb = dir().join(&files[1].name);
    let (ca, cb) = (fs.contents(&pa).unwrap(), fs.contents(&pb).unwrap());
    let base = snapshot(&fs);

    // A frame moved from file B into file A at the same position.
    let (off, len) = frames_of(&ca)[0];
    let mut moved = ca.clone();
    moved[off..off + len].copy_from_slice(&cb[off..off + len]);
    fs.put(&pa, &moved);
    assert!(matches!(open_and_read(&fs).unwrap_err(), Error::Tampered { .. }));

    // Whole files swapped (names exchanged).
    for (p, c) in &base {
        fs.put(p, c);
    }
    fs.put(&pa, &cb);
    fs.put(&pb, &ca);
    assert!(open_and_read(&fs).unwrap_err().is_integrity());

    // A file dropped.
    for (p, c) in &base {
        fs.put(p, c);
    }
    use crate::storage::vfs::Vfs;
    fs.remove_file(&pb).unwrap();
    let e = open_and_read(&fs).unwrap_err();
    assert!(matches!(&e, Error::Tampered { file, .. } if *file == files[1].name), "{e}");

    // A file copied from another database with the same key and file id.
    for (p, c) in &base {
        fs.put(p, c);
    }
    let other = MemFs::new();
    let s2 = create(&other);
    s2.append(1, FileKind::Segment, &record(1)).unwrap();
    let f2 = s2.stream_files(1)[0].clone();
    s2.close().unwrap();
    assert_eq!(f2.name, files[0].name, "same opaque name in both databases");
    fs.put(&pa, &other.contents(&dir().join(&f2.name)).unwrap());
    assert!(matches!(open_and_read(&fs).unwrap_err(), Error::Tampered { .. }));

    // The keyring of another database (same key) does not open this one's files.
    for (p, c) in &base {
        fs.put(p, c);
    }
    fs.put(&dir().join(KEYRING_FILE), &other.contents(&dir().join(KEYRING_FILE)).unwrap());
    assert!(open_and_read(&fs).is_err());
}

#[test]
fn wrong_key_fails_fast_and_changes_nothing() {
    let fs = MemFs::new();
    let s = create(&fs);
    s.append(1, FileKind::Segment, b"x").unwrap();
    // Leave the file active, as after a crash: recovery would write if the key were accepted.
    fs.crash_keeping(|_, n| n);
    drop(s);
    let before = snapshot(&fs);
    let wrong = KeySource::Raw(SecretKey::from_bytes([0x43; 32]));
    match Store::open(dir(), &wrong, opts(&fs)) {
        Err(Error::WrongKey(msg)) => assert!(!msg.contains("43")),
        Err(e) => panic!("expected WrongKey, got {e}"),
        Ok(_) => panic!("opened with the wrong key"),
    }
    match Store::open(dir(), &KeySource::passphrase("guess"), opts(&fs)) {
        Err(Error::WrongKey(_)) => {}
        Err(e) => panic!("expected WrongKey, got {e}"),
        Ok(_) => panic!("opened with a passphrase"),
    }
    assert_eq!(snapshot(&fs), before);
}

#[test]
fn wrong_passphrase_fails_and_right_one_opens() {
    let fs = MemFs::new();
    let co = CreateOptions {
        argon2: crate::Argon2Params { m_cost_kib: 256, t_cost: 1, p_cost: 1 },
        allow_weak_kdf: true,
        store: opts(&fs),
    };
    let s = Store::create(dir(), &KeySource::passphrase("correct horse"), co).unwrap();
    s.append(1, FileKind::Segment, b"secret").unwrap();
    s.close().unwrap();
    let before = snapshot(&fs);
    assert!(matches!(Store::open(dir(), &KeySource::passphrase("wrong horse"), opts(&fs)), Err(Error::WrongKey(_))));
    assert!(matches!(Store::open(dir(), &key(), opts(&fs)), Err(Error::WrongKey(_))));
    assert_eq!(snapshot(&fs), before);
    let s = Store::open(dir(), &KeySource::passphrase("correct horse"), opts(&fs)).unwrap();
    assert_eq!(read_all(&s, 1).unwrap(), vec![b"secret".to_vec()]);
}

#[test]
fn second_opener_gets_in_use_and_lock_is_released_by_a_crash() {
    let fs = MemFs::new();
    let s = create(&fs);
    assert!(matches!(open(&fs), Err(Error::InUse { .. })));
    fs.crash();
    drop(s);
    let s = open(&fs).unwrap();
    drop(s);
    open(&fs).unwrap();
}

#[test]
fn fsync_failure_poisons_the_store_and_reopen_recovers() {
    let fs = MemFs::new();
    let s = create(&fs);
    s.append(1, FileKind::Segment, b"safe").unwrap();
    s.sync().unwrap();
    fs.set_faults(Faults { fail_sync: true, ..Faults::default() });
    s.append(1, FileKind::Segment, b"unsure").unwrap();
    assert!(s.sync().is_err());
    assert!(matches!(s.append(1, FileKind::Segment, b"more"), Err(Error::Poisoned(_))));
    assert!(matches!(s.sync(), Err(Error::Poisoned(_))));
    fs.set_faults(Faults::default());
    fs.crash();
    drop(s);
    let s = open(&fs).unwrap();
    assert_eq!(read_all(&s, 1).unwrap(), vec![b"safe".to_vec()]);
}

#[test]
fn disk_full_gives_an_error_and_corrupts_nothing() {
    let fs = MemFs::new();
    let s = create(&fs);
    for i in 0..10 {
        s.append(1, FileKind::Segment, &record(i)).unwrap();
    }
    s.sync().unwrap();
    fs.set_faults(Faults { space_left: Some(50), ..Faults::default() });
    let mut failed = false;
    for i in 10..200 {
        if s.append(1, FileKind::Segment, &record(i)).is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "writes past the space limit must fail");
    assert!(s.append(1, FileKind::Segment, b"x").is_err());
    fs.set_faults(Faults::default());
    fs.crash();
    drop(s);
    let s = open(&fs).unwrap();
    let expect: Vec<Vec<u8>> = (0..10).map(record).collect();
    assert_eq!(read_all(&s, 1).unwrap(), expect);
}

#[test]
fn keyring_write_failure_leaves_the_old_keyring_usable() {
    let fs = MemFs::new();
    let s = create(&fs);
    s.append(1, FileKind::Segment, b"a").unwrap();
    s.sync().unwrap();
    fs.set_faults(Faults { space_left: Some(0), ..Faults::default() });
    assert!(s.seal_stream(1).is_err());
    fs.set_faults(Faults::default());
    fs.crash();
    drop(s);
    let s = open(&fs).unwrap();
    assert_eq!(read_all(&s, 1).unwrap(), vec![b"a".to_vec()]);
}

#[test]
fn many_short_sessions_leave_few_files() {
    let fs = MemFs::new();
    create(&fs).close().unwrap();
    let o = StoreOptions { merge_min_files: 8, ..opts(&fs) };
    let mut expect = Vec::new();
    for i in 0..40 {
        let s = Store::open(dir(), &key(), o.clone()).unwrap();
        s.append(1, FileKind::Segment, &record(i)).unwrap();
        expect.push(record(i));
        s.close().unwrap();
    }
    let s = Store::open(dir(), &key(), o).unwrap();
    assert!(s.stream_files(1).len() < 8, "{} files left", s.stream_files(1).len());
    assert_eq!(read_all(&s, 1).unwrap(), expect);
    let data_files = fs.paths().iter().filter(|p| crate::format::parse_file_name(&name_of(p)).is_some()).count();
    assert_eq!(data_files, s.files().len(), "merged-away files are deleted");
}

fn name_of(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[test]
fn an_interrupted_write_once_file_is_removed_and_a_complete_one_set_aside() {
    use crate::storage::vfs::Vfs;
    for finished in [false, true] {
        let fs = MemFs::new();
        let s = create(&fs);
        s.append(1, FileKind::Segment, b"a").unwrap();
        s.sync().unwrap();
        // A write-once file built (sealed or not) but never committed, then a crash.
        let mut b = s.build_file(FileKind::Snapshot, 9, vec![]).unwrap();
        b.append(b"snap").unwrap();
        if finished {
            std::mem::forget(b.finish().unwrap());
        } else {
            std::mem::forget(b);
        }
        fs.sync_dir(&dir()).unwrap();
        fs.crash();
        drop(s);
        let s = open(&fs).unwrap();
        let ev = s.recovery_events();
        if finished {
            // Complete: it may be the only copy of what a lost commit wrote.
            assert!(
                ev.iter().any(
                    |e| matches!(e, RecoveryEvent::Quarantined { reason, .. } if reason.contains("being written"))
                ),
                "{ev:?}"
            );
        } else {
            assert!(
                ev.iter().any(
                    |e| matches!(e, RecoveryEvent::RemovedLeftover { reason, .. } if reason.contains("being written"))
                ),
                "{ev:?}"
            );
        }
        assert!(s.stream_files(9).is_empty());
        assert!(s.verify().ok);
    }
}

#[test]
fn records_appended_together_read_back_in_order_at_their_positions_across_file_rolls() {
    let fs = MemFs::new();
    let s = create(&fs);
    s.append(1, FileKind::Wal, &record(0)).unwrap();
    let mut all = vec![record(0)];
    let mut positions = Vec::new();
    // Batches that fit in the current file and batches that cross the
    // 4 KiB file size (written one by one, rolling files).
    for (b, n) in [3usize, 1, 40, 2, 200, 5].into_iter().enumerate() {
        let recs: Vec<Vec<u8>> = (0..n).map(|i| record(1000 * (b + 1) + i)).collect();
        let refs: Vec<&[u8]> = recs.iter().map(Vec::as_slice).collect();
        positions.extend(s.append_many(1, FileKind::Wal, &refs).unwrap().into_iter().zip(recs.iter().cloned()));
        all.extend(recs);
    }
    s.sync().unwrap();
    assert!(
        s.stream_files(1).len() > 2,
        "{:?}",
        s.stream_files(1).iter().map(|f| (&f.name, f.state)).collect::<Vec<_>>()
    );
    assert_eq!(read_all(&s, 1).unwrap(), all);
    for (pos, rec) in &positions {
        assert_eq!(&s.read_record(*pos).unwrap(), rec);
    }
    drop(s);
    let s = open(&fs).unwrap();
    assert_eq!(read_all(&s, 1).unwrap(), all);
}

#[test]
fn a_failed_write_of_records_appended_together_refuses_further_writes() {
    let fs = MemFs::new();
    let s = create(&fs);
    s.append(1, FileKind::Wal, &record(0)).unwrap();
    s.sync().unwrap();
    fs.set_faults(Faults { fail_writes: true, ..Faults::default() });
    let (a, b) = (record(1), record(2));
    assert!(s.append_many(1, FileKind::Wal, &[&a, &b]).is_err());
    fs.set_faults(Faults::default());
    assert!(matches!(s.append(1, FileKind::Wal, &a), Err(Error::Poisoned(_))));
    drop(s);
    let s = open(&fs).unwrap();
    assert_eq!(read_all(&s, 1).unwrap(), vec![record(0)]);
}

#[test]
fn a_failed_early_sync_of_a_file_built_with_write_behind_fails_the_build() {
    let fs = MemFs::new();
    let s = create(&fs);
    let before = fs.paths();
    let mut b = s.build_file(FileKind::Snapshot, 9, vec![]).unwrap();
    // The first early sync (after 8 MiB) loses the pages and reports it
    // once; the final sync in `finish` would then succeed on a hole.
    fs.set_faults(Faults { sync_failures: 1, ..Faults::default() });
    let r = b.with_write_behind(|b| {
        for _ in 0..10 {
            b.append(&vec![7u8; 1 << 20])?;
        }
        Ok(())
    });
    let err = r.expect_err("the lost write must be reported");
    assert!(err.to_string().contains("syncing"), "{err}");
    drop(b);
    // Nothing was committed, and the half-built file is gone.
    assert!(s.stream_files(9).is_empty());
    assert_eq!(fs.paths(), before);
}

#[test]
fn after_an_early_sync_fails_the_next_append_reports_it() {
    let fs = MemFs::new();
    let s = create(&fs);
    let mut b = s.build_file(FileKind::Snapshot, 9, vec![]).unwrap();
    fs.set_faults(Faults { sync_failures: 1, ..Faults::default() });
    let mut failed_at = None;
    let r = b.with_write_behind(|b| {
        for i in 0..40 {
            if let Err(e) = b.append(&vec![7u8; 1 << 20]) {
                failed_at = Some(i);
                return Err(e);
            }
            if i == 9 {
                // Let the early sync (due after 8 MiB) run and fail.
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
        Ok(())
    });
    assert!(r.is_err());
    let at = failed_at.expect("an append reports the failed sync");
    assert!((10..=17).contains(&at), "reported at append {at}");
}

#[test]
fn a_panic_while_a_file_is_built_with_write_behind_does_not_hang() {
    let fs = MemFs::new();
    let s = Arc::new(create(&fs));
    let (tx, rx) = std::sync::mpsc::channel();
    let s2 = s.clone();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut b = s2.build_file(FileKind::Snapshot, 9, vec![]).unwrap();
            let _ = b.with_write_behind(|b| -> crate::Result<()> {
                b.append(&vec![1u8; 9 << 20])?;
                panic!("a bug while filling the file");
            });
        }));
        let _ = tx.send(r.is_err());
    });
    let panicked = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the build hung after a panic");
    assert!(panicked, "the panic reaches the caller");
    assert!(s.stream_files(9).is_empty());
}

#[test]
fn a_file_built_with_write_behind_reads_back_whole() {
    let fs = MemFs::new();
    let s = create(&fs);
    let mut b = s.build_file(FileKind::Snapshot, 9, vec![]).unwrap();
    b.with_write_behind(|b| {
        for i in 0..20u8 {
            b.append(&vec![i; 1 << 20])?;
        }
        Ok(())
    })
    .unwrap();
    let p = b.finish().unwrap();
    let id = p.file_id();
    s.commit(crate::Edit { add: vec![p], remove: vec![], root: None }).unwrap();
    let mut seen = Vec::new();
    s.read_file(id, |_, rec| {
        seen.push((rec.len(), rec[0]));
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, (0..20u8).map(|i| (1 << 20, i)).collect::<Vec<_>>());
}

#[test]
fn committed_files_and_root_survive_a_crash_atomically() {
    let fs = MemFs::new();
    let s = create(&fs);
    let mut b = s.build_file(FileKind::Snapshot, 9, b"meta".to_vec()).unwrap();
    b.append(b"state-1").unwrap();
    let p1 = b.finish().unwrap();
    s.commit(crate::Edit { add: vec![p1], remove: vec![], root: Some(b"root-1".to_vec()) }).unwrap();
    let old = s.stream_files(9)[0].file_id;
    let mut b = s.build_file(FileKind::Snapshot, 9, b"meta2".to_vec()).unwrap();
    b.append(b"state-2").unwrap();
    let p2 = b.finish().unwrap();
    s.commit(crate::Edit { add: vec![p2], remove: vec![old], root: Some(b"root-2".to_vec()) }).unwrap();
    fs.crash();
    drop(s);
    let s = open(&fs).unwrap();
    assert_eq!(s.root(), b"root-2");
    let f = s.stream_files(9);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].meta, b"meta2");
    let mut got = Vec::new();
    s.read_file(f[0].file_id, |_, p| {
        got.push(p.to_vec());
        Ok(())
    })
    .unwrap();
    assert_eq!(got, vec![b"state-2".to_vec()]);
}

#[test]
fn read_only_open_writes_nothing() {
    let fs = MemFs::new();
    let s = create(&fs);
    s.append(1, FileKind::Segment, b"x").unwrap();
    fs.crash_keeping(|_, n| n);
    drop(s);
    let before = snapshot(&fs);
    let s = Store::open(dir(), &key(), StoreOptions { read_only: true, ..opts(&fs) }).unwrap();
    assert!(matches!(s.append(1, FileKind::Segment, b"y"), Err(Error::ReadOnly)));
    let r = s.verify();
    assert!(r.ok, "{:?}", r.problems);
    drop(s);
    assert_eq!(snapshot(&fs), before);
}

#[test]
fn verify_names_file_and_offset_of_damage() {
    let fs = MemFs::new();
    let path = small_sealed(&fs);
    let mut c = fs.contents(&path).unwrap();
    let fr = frames_of(&c);
    let (off, _) = fr[1];
    c[off + 20] ^= 1;
    fs.put(&path, &c);
    let s = Store::open(dir(), &key(), StoreOptions { read_only: true, ..opts(&fs) }).unwrap();
    let r = s.verify();
    assert!(!r.ok);
    assert_eq!(r.problems[0].file, name_of(&path));
    assert_eq!(r.problems[0].offset, off as u64);
    let r = super::verify::verify_without_key(&dir(), &fs).unwrap();
    assert_eq!(r.problems[0].offset, off as u64, "the CRC catches it without a key");
}

#[test]
fn a_failed_open_removes_and_truncates_nothing() {
    let fs = MemFs::new();
    let s = create(&fs);
    s.append(1, FileKind::Segment, b"sealed").unwrap();
    s.seal_stream(1).unwrap();
    s.append(2, FileKind::Segment, b"active").unwrap();
    s.sync().unwrap();
    let sealed = dir().join(&s.stream_files(1)[0].name);
    let active = dir().join(&s.stream_files(2)[0].name);
    fs.crash();
    drop(s);
    // An orphan, a torn tail on the active file, and a missing sealed file.
    fs.put(&dir().join("00000000000000ff.seg"), b"orphan");
    let mut a = fs.contents(&active).unwrap();
    a.extend_from_slice(&[9, 0, 0]);
    fs.put(&active, &a);
    use crate::storage::vfs::Vfs;
    fs.clone().remove_file(&sealed).unwrap(); // (a clone: the crashed process's one is dead)
    let before = snapshot(&fs);
    assert!(matches!(open(&fs), Err(Error::Tampered { .. })));
    assert_eq!(snapshot(&fs), before, "recovery must not start before every check passed");
}

#[test]
fn dropping_the_store_after_a_failed_write_keeps_the_database_openable() {
    let fs = MemFs::new();
    let s = create(&fs);
    for i in 0..5 {
        s.append(1, FileKind::Segment, &record(i)).unwrap();
    }
    s.sync().unwrap();
    // The disk fills up in the middle of a frame.
    // (A partial frame longer than a sealing frame, so sealing over it would leave garbage.)
    fs.set_faults(Faults { space_left: Some(100), ..Faults::default() });
    assert!(s.append(1, FileKind::Segment, &[7u8; 300]).is_err());
    fs.set_faults(Faults::default());
    assert!(matches!(s.sync(), Err(Error::Poisoned(_))));
    drop(s); // no crash: Drop runs and must not seal over the partial frame
    let s = open(&fs).unwrap();
    let expect: Vec<Vec<u8>> = (0..5).map(record).collect();
    assert_eq!(read_all(&s, 1).unwrap(), expect);
}

#[test]
fn a_file_builder_refuses_to_reuse_a_frame_index_after_a_failed_write() {
    crate::crypto::nonce_audit::start();
    let fs = MemFs::new();
    let s = create(&fs);
    let mut b = s.build_file(FileKind::Snapshot, 5, vec![]).unwrap();
    b.append(b"one").unwrap();
    fs.set_faults(Faults { fail_writes: true, ..Faults::default() });
    assert!(b.append(b"two").is_err());
    fs.set_faults(Faults::default());
    assert!(b.append(b"three").is_err(), "a retry would seal frame 1 again");
    assert!(b.finish().is_err());
    let (_, reuses) = crate::crypto::nonce_audit::stop();
    assert_eq!(reuses, 0);
}

#[test]
fn a_keyring_whose_directory_sync_failed_is_not_contradicted() {
    // The rename happened but the directory sync failed: the keyring on disk
    // may list the new file, so it must not be deleted.
    let fs = MemFs::new();
    let s = create(&fs);
    fs.set_faults(Faults { fail_dir_sync: true, ..Faults::default() });
    assert!(s.append(1, FileKind::Segment, b"x").is_err());
    assert!(s.poisoned().is_some());
    fs.set_faults(Faults::default());
    drop(s);
    let s = open(&fs).unwrap();
    assert!(read_all(&s, 1).unwrap().is_empty());
}

#[test]
fn keyring_kind_and_foreign_pending_files_are_refused() {
    let fs = MemFs::new();
    let s = create(&fs);
    assert!(matches!(s.build_file(FileKind::Keyring, 1, vec![]), Err(Error::InvalidArgument(_))));
    let other_fs = MemFs::new();
    let other = create(&other_fs);
    let mut b = other.build_file(FileKind::Snapshot, 1, vec![]).unwrap();
    b.append(b"x").unwrap();
    let p = b.finish().unwrap();
    assert!(matches!(s.commit(crate::Edit { add: vec![p], ..Default::default() }), Err(Error::InvalidArgument(_))));
}

#[test]
fn merging_never_reorders_a_stream() {
    let fs = MemFs::new();
    create(&fs).close().unwrap();
    let o = StoreOptions { merge_min_files: 3, ..opts(&fs) };
    let mut expect = Vec::new();
    for i in 0..12 {
        let s = Store::open(dir(), &key(), o.clone()).unwrap();
        if i == 5 {
            // A file of another kind, with metadata, in the middle of the stream.
            let mut b = s.build_file(FileKind::Snapshot, 1, b"m".to_vec()).unwrap();
            b.append(b"snapshot").unwrap();
            let p = b.finish().unwrap();
            s.commit(crate::Edit { add: vec![p], ..Default::default() }).unwrap();
            expect.push(b"snapshot".to_vec());
        }
        s.append(1, FileKind::Segment, &record(i)).unwrap();
        expect.push(record(i));
        s.close().unwrap();
    }
    let s = Store::open(dir(), &key(), o).unwrap();
    assert!(s.stream_files(1).len() < 8);
    assert_eq!(read_all(&s, 1).unwrap(), expect);
    assert!(s.stream_files(1).iter().any(|f| f.meta == b"m"), "the snapshot keeps its metadata");
}
