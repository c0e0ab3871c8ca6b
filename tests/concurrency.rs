//! Readers never wait for a writer's fsync, and committers that arrive while
//! an fsync is in progress share the next one (group commit). A file system
//! wrapper holds every fsync of the write-ahead log until the test lets it go.

use driftdb::storage::memfs::MemFs;
use driftdb::storage::vfs::{LockGuard, OpenMode, Vfs, VfsFile};
use driftdb::{Db, Isolation, KeySource, Options, Pk, StoreOptions};
use serde_json::{Value, json};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Gate {
    held: Mutex<bool>,
    cv: Condvar,
    waiting: AtomicUsize,
    wal_syncs: AtomicUsize,
    /// Every WAL fsync takes this long (microseconds), like a real disk's.
    delay_us: std::sync::atomic::AtomicU64,
    /// The WAL fsync with this number (counting from 1; 0: none) panics
    /// once past the gate.
    panic_at: AtomicUsize,
    /// Every fsync of a snapshot file waits while this is set.
    snap_held: std::sync::atomic::AtomicBool,
    snap_waiting: AtomicUsize,
}

#[derive(Clone)]
struct StallFs {
    inner: MemFs,
    gate: Arc<Gate>,
}

struct StallFile {
    inner: Box<dyn VfsFile>,
    wal: bool,
    snap: bool,
    gate: Arc<Gate>,
}

impl VfsFile for StallFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.snap {
            self.gate.snap_waiting.fetch_add(1, Ordering::SeqCst);
            while self.gate.snap_held.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.gate.snap_waiting.fetch_sub(1, Ordering::SeqCst);
        }
        if self.wal {
            let n = self.gate.wal_syncs.fetch_add(1, Ordering::SeqCst) + 1;
            let mut held = self.gate.held.lock().unwrap();
            self.gate.waiting.fetch_add(1, Ordering::SeqCst);
            while *held {
                held = self.gate.cv.wait(held).unwrap();
            }
            self.gate.waiting.fetch_sub(1, Ordering::SeqCst);
            drop(held);
            if self.gate.panic_at.load(Ordering::SeqCst) == n {
                panic!("injected panic in WAL fsync {n}");
            }
            std::thread::sleep(Duration::from_micros(self.gate.delay_us.load(Ordering::SeqCst)));
        }
        self.inner.sync_data()
    }
}

impl Vfs for StallFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        let wal = path.extension().is_some_and(|e| e == "wal");
        let snap = path.extension().is_some_and(|e| e == "snap");
        Ok(Box::new(StallFile { inner: self.inner.open(path, mode)?, wal, snap, gate: self.gate.clone() }))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.read_dir(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }
    fn try_lock(&self, path: &Path, exclusive: bool) -> io::Result<Option<Box<dyn LockGuard>>> {
        self.inner.try_lock(path, exclusive)
    }
}

fn setup() -> (Arc<Gate>, Db) {
    let gate = Arc::new(Gate::default());
    let fs = StallFs { inner: MemFs::new(), gate: gate.clone() };
    let o = Options { store: StoreOptions { vfs: Arc::new(fs), ..Default::default() }, ..Default::default() };
    let key = KeySource::Raw(driftdb::crypto::keys::SecretKey::from_bytes([3; 32]));
    let db = Db::create("/db", &key, o).unwrap();
    db.create_table("t", "id", &["v"]).unwrap();
    for i in 0..100 {
        db.insert("t", json!({"id": i, "v": i % 7})).unwrap();
    }
    (gate, db)
}

/// Releases the gate when dropped, so that a failing assertion cannot leave
/// a thread stuck in fsync (and the test hanging instead of failing).
struct Release<'a>(&'a Gate);
impl Drop for Release<'_> {
    fn drop(&mut self) {
        hold(self.0, false);
    }
}

fn hold(g: &Gate, on: bool) {
    *g.held.lock().unwrap() = on;
    g.cv.notify_all();
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..5000 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn readers_do_not_wait_for_a_commit_stuck_in_fsync_and_do_not_see_it() {
    let (gate, db) = setup();
    let seq_before = db.latest_seq();
    hold(&gate, true);
    std::thread::scope(|s| {
        let _release = Release(&gate);
        let writer = s.spawn(|| db.insert("t", json!({"id": 1000, "v": 1})).unwrap());
        wait_for("the commit to reach its fsync", || gate.waiting.load(Ordering::SeqCst) == 1);
        // The commit is in its fsync. Every kind of read completes meanwhile,
        // from several threads, and none of them sees the unsynced commit.
        let (tx, rx) = std::sync::mpsc::channel();
        for r in 0..4 {
            let (db, tx) = (&db, tx.clone());
            s.spawn(move || {
                let got = db.get("t", &Pk::Int(1000)).unwrap();
                let past = db.get_as_of("t", &Pk::Int(5), 10).unwrap();
                let q: Vec<Value> = db.query("SELECT COUNT(*) FROM t WHERE v = 1").unwrap();
                let mut t = db.begin(Isolation::Serializable);
                let in_txn = t.get("t", &Pk::Int(3)).unwrap();
                t.rollback();
                tx.send((r, got, past, q, in_txn, db.latest_seq())).unwrap();
            });
        }
        for _ in 0..4 {
            let (r, got, past, q, in_txn, latest) =
                rx.recv_timeout(Duration::from_secs(10)).expect("a reader waited for the writer's fsync");
            assert!(got.is_none(), "reader {r} saw a commit that is not yet durable");
            assert!(past.is_some() && in_txn.is_some(), "reader {r}");
            assert_eq!(q[0]["COUNT(*)"], 15, "reader {r}");
            assert_eq!(latest, seq_before, "reader {r}");
        }
        hold(&gate, false);
        let seq = writer.join().unwrap();
        assert_eq!(seq, seq_before + 1);
    });
    assert!(db.get("t", &Pk::Int(1000)).unwrap().is_some(), "visible once durable");
}

#[test]
fn committers_arriving_during_an_fsync_share_the_next_one() {
    let (gate, db) = setup();
    hold(&gate, true);
    let syncs_before = gate.wal_syncs.load(Ordering::SeqCst);
    std::thread::scope(|s| {
        let _release = Release(&gate);
        let first = s.spawn(|| db.insert("t", json!({"id": 2000})).unwrap());
        wait_for("the first commit's fsync", || gate.waiting.load(Ordering::SeqCst) == 1);
        let db = &db;
        let others: Vec<_> = (0..8)
            .map(|i| {
                s.spawn(move || {
                    let mut t = db.begin(Isolation::Snapshot);
                    t.insert("t", json!({"id": 3000 + i})).unwrap();
                    t.insert("t", json!({"id": 4000 + i})).unwrap();
                    t.commit().unwrap()
                })
            })
            .collect();
        // Let all eight queue up behind the writer lock.
        std::thread::sleep(Duration::from_millis(300));
        hold(&gate, false);
        first.join().unwrap();
        let mut seqs: Vec<u64> = others.into_iter().map(|h| h.join().unwrap()).collect();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), 8, "eight distinct commits");
    });
    let syncs = gate.wal_syncs.load(Ordering::SeqCst) - syncs_before;
    assert!(syncs <= 3, "nine commits took {syncs} WAL fsyncs; the eight waiting ones should share one");
    for i in 0..8 {
        assert!(
            db.get("t", &Pk::Int(3000 + i)).unwrap().is_some() && db.get("t", &Pk::Int(4000 + i)).unwrap().is_some()
        );
    }
}

#[test]
fn committers_in_a_loop_keep_sharing_fsyncs() {
    // Six threads commit one row at a time, each waiting for its commit
    // before the next, on a disk whose fsync takes 3 ms. Without gathering,
    // the group that just synced misses the next group, and groups alternate
    // between smaller groups (46 to 50 fsyncs for 180 commits); a leader that waits
    // for the last group's committers puts nearly all six in each group.
    let (gate, db) = setup();
    gate.delay_us.store(3000, Ordering::SeqCst);
    let (threads, each) = (6u64, 30u64);
    let syncs_before = gate.wal_syncs.load(Ordering::SeqCst);
    std::thread::scope(|s| {
        for t in 0..threads {
            let db = &db;
            s.spawn(move || {
                for i in 0..each {
                    db.insert("t", json!({"id": 10_000 + t * 1000 + i})).unwrap();
                }
            });
        }
    });
    let syncs = gate.wal_syncs.load(Ordering::SeqCst) - syncs_before;
    let commits = threads * each;
    // Measured: 31 or 32 with gathering, 46 to 50 without it.
    assert!(syncs as u64 <= 40, "{commits} commits from {threads} looping committers took {syncs} fsyncs");
    for t in 0..threads {
        for i in 0..each {
            assert!(db.get("t", &Pk::Int((10_000 + t * 1000 + i) as i64)).unwrap().is_some());
        }
    }
}

/// A group-commit leader that panics (here, in its WAL fsync) leaves no
/// committer of its group waiting: each gets an error; and the database
/// refuses writes from then on, as what the group applied is unknown.
#[test]
fn a_panicking_group_leader_leaves_no_committer_waiting_and_refuses_later_writes() {
    let (gate, db) = setup();
    let db = Arc::new(db);
    hold(&gate, true);
    let release = Release(&gate);
    let (tx, rx) = std::sync::mpsc::channel();
    let spawn = |id: i64| {
        let (db, tx) = (db.clone(), tx.clone());
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                db.insert_json("t", format!(r#"{{"id":{id}}}"#))
            }));
            let _ = tx.send((id, r.map(|r| r.map_err(|e| e.to_string()))));
        })
    };
    // The first commit waits in its fsync; eight more queue behind it and
    // form the next group, whose fsync panics.
    spawn(5000);
    wait_for("the first commit's fsync", || gate.waiting.load(Ordering::SeqCst) == 1);
    gate.panic_at.store(gate.wal_syncs.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
    for i in 1..=8 {
        spawn(5000 + i);
    }
    std::thread::sleep(Duration::from_millis(300));
    drop(release);
    let mut outcomes = Vec::new();
    for _ in 0..9 {
        let got = rx.recv_timeout(Duration::from_secs(30));
        outcomes.push(got.expect("a committer still waits 30 s after its group's leader panicked"));
    }
    outcomes.sort_by_key(|(id, _)| *id);
    assert!(matches!(outcomes[0].1, Ok(Ok(_))), "the first commit went through");
    let panicked = outcomes.iter().filter(|(_, r)| r.is_err()).count();
    assert_eq!(panicked, 1, "only the leader's own call panics");
    for (id, r) in &outcomes[1..] {
        if let Ok(r) = r {
            let e = r.as_ref().expect_err("no commit of the panicked group succeeds");
            assert!(e.contains("panicked"), "{id}: {e}");
        }
    }
    let e = db.insert_json("t", r#"{"id":6000}"#).unwrap_err().to_string();
    assert!(e.contains("group-commit leader panicked"), "{e}");
    assert!(db.get("t", &Pk::Int(5000)).unwrap().is_some());
}

/// Lets snapshot fsyncs go when dropped (a failing assertion must not leave
/// the snapshot thread stuck).
struct ReleaseSnapshots<'a>(&'a Gate);
impl Drop for ReleaseSnapshots<'_> {
    fn drop(&mut self) {
        self.0.snap_held.store(false, Ordering::SeqCst);
    }
}

#[test]
fn commits_go_on_while_an_automatic_snapshot_is_being_written() {
    let gate = Arc::new(Gate::default());
    let fs = StallFs { inner: MemFs::new(), gate: gate.clone() };
    let o = Options {
        snapshot_every_events: 50,
        store: StoreOptions { vfs: Arc::new(fs.clone()), ..Default::default() },
        ..Default::default()
    };
    let key = KeySource::Raw(driftdb::crypto::keys::SecretKey::from_bytes([3; 32]));
    let db = Db::create("/db", &key, o.clone()).unwrap();
    db.create_table("t", "id", &["v"]).unwrap();
    db.create_table("u", "id", &[]).unwrap();
    gate.snap_held.store(true, Ordering::SeqCst);
    // One thread commits row after row; an automatic snapshot becomes due
    // and stops at its first fsync. The commits after it complete while it
    // is stuck: a snapshot written by the committing thread would hold the
    // writer lock, and they would wait for it.
    const ROWS: usize = 400;
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let _release = ReleaseSnapshots(&gate);
        s.spawn(|| {
            for i in 0..ROWS {
                if i == 100 {
                    // A snapshot became due well before: wait until it is stuck.
                    wait_for("an automatic snapshot", || gate.snap_waiting.load(Ordering::SeqCst) > 0);
                    // A second table becomes due while the first one's
                    // snapshot is stuck, and is not written to again: its
                    // snapshot is still taken once the first is done.
                    for j in 0..60 {
                        db.insert("u", json!({"id": j})).unwrap();
                    }
                }
                db.insert("t", json!({"id": i, "v": i % 7})).unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
        wait_for("an automatic snapshot", || gate.snap_waiting.load(Ordering::SeqCst) > 0);
        let at_start = done.load(Ordering::SeqCst).min(100);
        wait_for("commits while a snapshot is being written", || done.load(Ordering::SeqCst) >= at_start + 100);
        assert_eq!(gate.snap_waiting.load(Ordering::SeqCst), 1, "the snapshot is still being written");
        assert!(db.snapshots("t").unwrap().is_empty(), "not recorded before it is written");
    });
    db.wait_for_snapshots();
    assert!(!db.snapshots("u").unwrap().is_empty(), "the table found due meanwhile has its snapshot");
    let snaps = db.snapshots("t").unwrap();
    assert!(!snaps.is_empty());
    // It holds the rows as of its sequence number, and reopening reads it.
    let at = snaps[0];
    let rows = db.query::<Value>(&format!("SELECT * FROM t AS OF @seq:{at}")).unwrap();
    assert!(!rows.is_empty() && rows.len() < ROWS, "{} rows at the snapshot", rows.len());
    db.close().unwrap();
    let db = Db::open("/db", &key, o).unwrap();
    assert_eq!(db.snapshots("t").unwrap(), snaps);
    assert_eq!(db.query::<Value>("SELECT * FROM t").unwrap().len(), ROWS);
    assert_eq!(db.query::<Value>(&format!("SELECT * FROM t AS OF @seq:{at}")).unwrap(), rows);
}
