//! The tree against a model (a sorted map of every entry inserted), on the
//! in-memory file system: reads at every point in time, after flushes,
//! merges across several levels, reopening, crashes in the middle of a
//! merge, and a cache far smaller than the data.

use super::*;
use crate::format::run::key::{put_desc_u64, put_str, put_u32};
use crate::storage::memfs::{Faults, MemFs};
use crate::storage::store::StoreOptions;
use crate::{CreateOptions, KeySource};
use std::path::PathBuf;

const STREAM: u32 = 9;

fn key() -> KeySource {
    KeySource::Raw(crate::crypto::keys::SecretKey::from_bytes([0x42; 32]))
}
fn store_opts(fs: &MemFs) -> StoreOptions {
    StoreOptions { vfs: Arc::new(fs.clone()), ..StoreOptions::default() }
}
fn create(fs: &MemFs) -> Store {
    Store::create(PathBuf::from("/db"), &key(), CreateOptions { store: store_opts(fs), ..CreateOptions::default() })
        .unwrap()
}
fn reopen(fs: &MemFs) -> Store {
    Store::open(PathBuf::from("/db"), &key(), store_opts(fs)).unwrap()
}
fn small() -> TreeOptions {
    TreeOptions {
        stream: STREAM,
        memtable_bytes: 16 << 10,
        l0_runs: 3,
        level1_bytes: 96 << 10,
        run_bytes: 48 << 10,
        ..TreeOptions::default()
    }
}

fn prefix(pk: u32) -> Vec<u8> {
    let mut k = vec![1];
    put_u32(&mut k, 1);
    put_str(&mut k, format!("pk-{pk:05}").as_bytes());
    k
}
fn entry_key(pk: u32, seq: u64) -> Vec<u8> {
    let mut k = prefix(pk);
    put_desc_u64(&mut k, seq);
    k
}
fn value(pk: u32, seq: u64) -> Vec<u8> {
    format!("{{\"pk\":{pk},\"seq\":{seq},\"pad\":\"{}\"}}", "p".repeat((pk as usize * 7 + seq as usize) % 60))
        .into_bytes()
}

/// What a point read `AS OF` `at` must return: the newest version of `pk`
/// at or before `at`.
fn model_get(m: &BTreeMap<Vec<u8>, Vec<u8>>, pk: u32, at: u64) -> Option<(Vec<u8>, Vec<u8>)> {
    let p = prefix(pk);
    m.range(entry_key(pk, at)..).next().filter(|(k, _)| k.starts_with(&p)).map(|(k, v)| (k.clone(), v.clone()))
}

fn check(tree: &Tree, m: &BTreeMap<Vec<u8>, Vec<u8>>, pks: u32, seq: u64, x: &mut u64) {
    let view = tree.view();
    for _ in 0..300 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        let pk = (*x % u64::from(pks + 5)) as u32;
        let at = (*x >> 20) % (seq + 2);
        let p = prefix(pk);
        assert_eq!(view.seek(&entry_key(pk, at), Some(&p)).unwrap(), model_get(m, pk, at), "pk {pk} at {at}");
    }
    // A whole scan, and one key's history.
    let mut it = view.range(&[], None).unwrap();
    let mut got = Vec::new();
    while it.valid() {
        got.push((it.key().to_vec(), it.value().to_vec()));
        it.advance().unwrap();
    }
    assert_eq!(got.len(), m.len());
    assert!(got.iter().zip(m.iter()).all(|(a, b)| a.0 == *b.0 && a.1 == *b.1), "a full scan differs from the model");
    let p = prefix(3);
    let end = crate::format::run::key::prefix_end(&p).unwrap();
    let mut it = view.range(&p, Some(&end)).unwrap();
    let mut hist = Vec::new();
    while it.valid() {
        hist.push(it.key().to_vec());
        it.advance().unwrap();
    }
    let want: Vec<Vec<u8>> = m.range(p.clone()..end.clone()).map(|(k, _)| k.clone()).collect();
    assert_eq!(hist, want, "one key's history");
}

/// Insert `rounds` commits of versions of random keys, flushing and
/// merging as they fall due; returns the model and the last sequence.
fn fill(
    s: &Store,
    tree: &Tree,
    m: &mut BTreeMap<Vec<u8>, Vec<u8>>,
    pks: u32,
    from: u64,
    rounds: u64,
    x: &mut u64,
) -> u64 {
    let mut seq = from;
    for _ in 0..rounds {
        let mut batch = Vec::new();
        for _ in 0..8 {
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            seq += 1;
            let pk = (*x % u64::from(pks)) as u32;
            batch.push((entry_key(pk, seq), value(pk, seq)));
        }
        for (k, v) in &batch {
            m.insert(k.clone(), v.clone());
        }
        if tree.insert(batch.iter().cloned()) {
            tree.flush(s).unwrap();
        }
        while tree.merge_once(s).unwrap() {}
    }
    seq
}

#[test]
fn reads_match_the_model_across_flushes_merges_and_reopens() {
    let fs = MemFs::new();
    let s = create(&fs);
    let cache = Arc::new(BlockCache::new(64 << 10));
    let tree = Tree::open(&s, cache.clone(), small()).unwrap();
    let mut m = BTreeMap::new();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut seq = 0;
    for round in 0..6 {
        seq = fill(&s, &tree, &mut m, 2_000, seq, 400, &mut x);
        check(&tree, &m, 2_000, seq, &mut x);
        if round == 2 {
            tree.flush(&s).unwrap();
        }
    }
    let st = tree.stats();
    assert!(st.runs.len() >= 3, "merges must reach level 2: {st:?}");
    assert!(st.merges > 3 && st.flushes > 10, "{st:?}");
    for level in 1..st.runs.len() {
        assert!(st.runs[level] > 0 || level == st.runs.len() - 1, "{st:?}");
    }
    assert!(cache.stats().evictions > 0, "{:?}", cache.stats());
    // Reopen: what was flushed is there; the memtable is the caller's to
    // replay (everything after `flushed_seq`).
    tree.flush(&s).unwrap();
    let flushed = tree.flushed_seq();
    assert_eq!(flushed, seq);
    drop(tree);
    drop(s);
    let s = reopen(&fs);
    let tree = Tree::open(&s, Arc::new(BlockCache::new(64 << 10)), small()).unwrap();
    assert_eq!(tree.flushed_seq(), seq);
    check(&tree, &m, 2_000, seq, &mut x);
    let seq2 = fill(&s, &tree, &mut m, 2_000, seq, 200, &mut x);
    check(&tree, &m, 2_000, seq2, &mut x);
}

#[test]
fn a_crash_at_any_point_of_a_merge_loses_nothing() {
    // Build a tree with level 0 one run short of a merge, then crash after
    // each number of file-system operations the merge takes.
    let fs = MemFs::new();
    let s = create(&fs);
    let opts = TreeOptions { l0_runs: 3, ..small() };
    let tree = Tree::open(&s, Arc::new(BlockCache::new(1 << 20)), opts).unwrap();
    let mut m = BTreeMap::new();
    let mut seq = 0;
    for _ in 0..3 {
        for i in 0..300u32 {
            seq += 1;
            let (k, v) = (entry_key(i, seq), value(i, seq));
            tree.insert([(k.clone(), v.clone())]);
            m.insert(k, v);
        }
        tree.flush(&s).unwrap();
    }
    assert!(tree.merge_due());
    drop(tree);
    drop(s);
    let durable: Vec<(PathBuf, Vec<u8>)> =
        fs.paths().into_iter().filter_map(|p| fs.contents(&p).map(|c| (p, c))).collect();
    let mut crashed = 0;
    for ops in 0..400u64 {
        // Each attempt starts from the same files.
        let fs = MemFs::new();
        for (p, c) in &durable {
            fs.put(p, c);
        }
        let s = reopen(&fs);
        let tree = Tree::open(&s, Arc::new(BlockCache::new(1 << 20)), opts).unwrap();
        fs.set_faults(Faults { ops_left: Some(ops), ..Faults::default() });
        let r = tree.merge_once(&s);
        fs.set_faults(Faults::default());
        drop(tree);
        drop(s);
        fs.crash();
        let s = reopen(&fs);
        let tree = Tree::open(&s, Arc::new(BlockCache::new(1 << 20)), opts).unwrap();
        let mut x = ops + 1;
        check(&tree, &m, 300, seq, &mut x);
        if r.is_ok() {
            assert!(!tree.merge_due(), "a merge that returned is in the manifest");
            break;
        }
        // Cut short (its manifest edit may or may not have become durable
        // before the crash): the next merge, if one is still due, succeeds.
        if tree.merge_due() {
            assert!(tree.merge_once(&s).unwrap());
        }
        check(&tree, &m, 300, seq, &mut x);
        crashed += 1;
    }
    assert!(crashed > 5, "the merge must have been cut at several points ({crashed})");
}

#[test]
fn readers_see_every_published_version_while_flushes_and_merges_run() {
    // Version `seq` belongs to key `seq % KEYS`; the writer publishes each
    // sequence number after inserting it, and readers check point reads at
    // published points against that rule while the tree flushes and merges.
    const KEYS: u64 = 500;
    let fs = MemFs::new();
    let s = create(&fs);
    let tree = Tree::open(&s, Arc::new(BlockCache::new(128 << 10)), small()).unwrap();
    let published = AtomicU64::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        let readers: Vec<_> = (0..2u64)
            .map(|r| {
                let (tree, published, done) = (&tree, &published, &done);
                sc.spawn(move || {
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ r;
                    let mut reads = 0u64;
                    while !done.load(Relaxed) || reads < 1000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let top = published.load(Relaxed);
                        if top == 0 {
                            continue;
                        }
                        let pk = x % KEYS;
                        let at = 1 + (x >> 16) % top;
                        // The newest seq <= at with seq % KEYS == pk.
                        let want = (at >= pk.max(1)).then(|| at - (at + KEYS - pk) % KEYS).filter(|&s| s >= 1);
                        let got = tree
                            .view()
                            .seek(&entry_key(pk as u32, at), Some(&prefix(pk as u32)))
                            .unwrap()
                            .map(|(_, v)| v);
                        assert_eq!(got, want.map(|s| value(pk as u32, s)), "pk {pk} at {at} (published {top})");
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for seq in 1..=20_000u64 {
            let pk = (seq % KEYS) as u32;
            let (k, v) = (entry_key(pk, seq), value(pk, seq));
            if tree.insert([(k, v)]) {
                tree.flush(&s).unwrap();
            }
            published.store(seq, Relaxed);
            if seq % 500 == 0 {
                while tree.merge_once(&s).unwrap() {}
            }
        }
        done.store(true, Relaxed);
        for r in readers {
            assert!(r.join().unwrap() >= 1000);
        }
    });
    let st = tree.stats();
    assert!(st.merges > 0 && st.flushes > 5, "{st:?}");
}

#[test]
fn a_rewrite_drops_what_it_is_told_adds_what_it_is_given_and_survives_reopen() {
    let fs = MemFs::new();
    let s = create(&fs);
    let tree = Tree::open(&s, Arc::new(BlockCache::new(256 << 10)), small()).unwrap();
    let mut m = BTreeMap::new();
    let mut x = 7u64;
    let seq = fill(&s, &tree, &mut m, 500, 0, 300, &mut x);
    // Drop every version of even keys at or before `h`; add a version at
    // `h` for each of them (as a fold would), one of them replacing an
    // existing entry.
    let h = seq / 2;
    let evens: Vec<u32> = (0..500u32).step_by(2).collect();
    let dropped = |k: &[u8], _: &[u8]| {
        let (_, sq) = super::seq_suffix_shape(k);
        sq <= h && evens.iter().any(|pk| k.starts_with(&prefix(*pk)))
    };
    let mut extra: Vec<(Vec<u8>, Vec<u8>)> = evens.iter().map(|&pk| (entry_key(pk, h), b"folded".to_vec())).collect();
    extra.sort();
    m.retain(|k, v| !dropped(k, v));
    for (k, v) in &extra {
        m.insert(k.clone(), v.clone());
    }
    tree.rewrite(&s, &dropped, extra).unwrap();
    let st = tree.stats();
    assert!(st.runs[..st.runs.len() - 1].iter().all(|n| *n == 0), "everything in the deepest level: {st:?}");
    check(&tree, &m, 500, seq, &mut x);
    drop(tree);
    drop(s);
    let s = reopen(&fs);
    let tree = Tree::open(&s, Arc::new(BlockCache::new(256 << 10)), small()).unwrap();
    check(&tree, &m, 500, seq, &mut x);
}

#[test]
fn runs_in_key_order_move_down_the_levels_without_being_rewritten() {
    // Keys that only grow (an audit log's, a sequence's): each flushed run
    // is past every other, so merges move runs instead of rewriting them.
    let fs = MemFs::new();
    let s = create(&fs);
    let tree = Tree::open(&s, Arc::new(BlockCache::new(256 << 10)), small()).unwrap();
    let mut m = BTreeMap::new();
    let mut seq = 0u64;
    for pk in 0..6_000u32 {
        seq += 1;
        let (k, v) = (entry_key(pk, seq), value(pk, seq));
        m.insert(k.clone(), v.clone());
        if tree.insert([(k, v)]) {
            tree.flush(&s).unwrap();
        }
        while tree.merge_once(&s).unwrap() {}
    }
    tree.flush(&s).unwrap();
    while tree.merge_once(&s).unwrap() {}
    let st = tree.stats();
    assert!(st.moved > 10 && st.merged_bytes == 0, "{st:?}");
    assert!(st.runs.len() >= 3, "{st:?}");
    let mut x = 5;
    check(&tree, &m, 6_000, seq, &mut x);
    drop(tree);
    drop(s);
    let s = reopen(&fs);
    let tree = Tree::open(&s, Arc::new(BlockCache::new(256 << 10)), small()).unwrap();
    assert_eq!(tree.stats().runs, st.runs, "the levels are in the manifest");
    check(&tree, &m, 6_000, seq, &mut x);
}
