//! The commit pipeline: transactions queue requests, one leader at a time
//! takes the writer lock, validates and writes the whole group to the
//! write-ahead log with one fsync, applies it, and wakes every waiter.

use super::*;
use crate::sync::Locked;

/// What the writer lock guards: the commits in the WAL not yet checkpointed.
#[derive(Default)]
pub(super) struct WriterState {
    /// (first sequence number, record) of every commit only in the WAL.
    pub(super) pending: Vec<(u64, Vec<u8>)>,
    pub(super) pending_bytes: u64,
}

/// The writer lock, held; releasing it wakes a queued committer to lead
/// the next group. Committers wait parked, not on the writer lock, so that
/// one whose commit a leader already finished returns at once instead of
/// queueing behind the next leader's fsync.
pub(super) struct WriterGuard<'a> {
    pub(super) guard: Option<std::sync::MutexGuard<'a, WriterState>>,
    pub(super) queue: &'a Mutex<Vec<(std::thread::ThreadId, Request)>>,
}

impl std::ops::Deref for WriterGuard<'_> {
    type Target = WriterState;
    fn deref(&self) -> &WriterState {
        // Present until drop.
        self.guard.as_deref().unwrap_or(&EMPTY_WRITER)
    }
}

pub(super) static EMPTY_WRITER: WriterState = WriterState { pending: Vec::new(), pending_bytes: 0 };

impl std::ops::DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut WriterState {
        match self.guard.as_deref_mut() {
            Some(w) => w,
            None => unreachable_writer(),
        }
    }
}

#[allow(clippy::panic)]
#[cold]
pub(super) fn unreachable_writer() -> ! {
    // The guard is only taken out in drop.
    panic!("writer guard used after release")
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        // A committer that queued while the lock was held found it taken
        // and parked (see [`Db::submit`]): wake one to lead.
        if let Some((_, r)) = self.queue.locked().first() {
            r.slot.wake();
        }
    }
}

/// If a group's leader unwinds (see [`Db::run_group`]): the store refuses
/// writes from then on (what was applied is unknown; reopening recovers
/// from the disk), and every committer of the group gets its outcome or
/// that error, and is woken.
pub(super) struct WakeOnUnwind<'a>(&'a Store, Vec<Slot>);

impl Drop for WakeOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let why = "a group-commit leader panicked; reopen the database";
            self.0.poison_with(&Error::Poisoned(why.into()));
            for s in &self.1 {
                s.set_if_empty(Err(Error::Poisoned(why.into())));
                s.wake();
            }
        }
    }
}

/// What a group-commit leader knows of the committers before it takes the
/// queue: who was in the last group, and how long the last fsyncs took.
#[derive(Default)]
pub(super) struct Gather {
    /// The threads of the last group: each is likely to commit again soon.
    pub(super) last: Vec<std::thread::ThreadId>,
    /// Moving average of the WAL fsync, in microseconds (0: none yet, or
    /// not synced per commit); below 50 µs, leaders do not wait.
    pub(super) sync_micros: u64,
    /// The committers a waiting leader still expects: the last of them to
    /// arrive signals `arrived` (one wake-up per group, not one per arrival).
    pub(super) awaited: Vec<std::thread::ThreadId>,
    /// Groups to take without waiting: set when a wait gathered nobody
    /// (committers that commit now and then, not in a loop).
    pub(super) cooldown: u32,
}

/// The background thread of [`Durability::RelaxedSyncEvery`].
pub(super) struct Flusher {
    pub(super) stop: std::sync::mpsc::Sender<()>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl Db {
    pub(super) fn lock_writer(&self) -> WriterGuard<'_> {
        WriterGuard { guard: Some(self.shared.writer.locked()), queue: &self.shared.queue }
    }

    pub(super) fn try_lock_writer(&self) -> Option<WriterGuard<'_>> {
        let guard = match self.shared.writer.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(WriterGuard { guard: Some(guard), queue: &self.shared.queue })
    }

    /// Begin a transaction.
    pub fn begin(&self, iso: Isolation) -> Txn<'_> {
        if iso == Isolation::ReadCommitted {
            return Txn::new(self, iso, self.state().latest_seq(), false);
        }
        // Registered under the write lock, so that every change after the
        // snapshot is kept for the transaction's reads and validation.
        let mut st = self.state_mut();
        let snapshot = st.latest_seq();
        *st.active.entry(snapshot).or_default() += 1;
        Txn::new(self, iso, snapshot, true)
    }

    /// A transaction with snapshot `snapshot` ended.
    pub(crate) fn unregister(&self, snapshot: u64) {
        let mut st = self.state_mut();
        if let Some(n) = st.active.get_mut(&snapshot) {
            *n -= 1;
            if *n == 0 {
                st.active.remove(&snapshot);
            }
        }
        st.prune_changes();
    }

    /// Hand a commit to the group-commit leader (which may be this thread)
    /// and wait for its outcome.
    pub(crate) fn submit(&self, req: Request) -> Result<u64> {
        let slot = req.slot.clone();
        let take = || slot.take();
        let me = std::thread::current().id();
        self.shared.queue.locked().push((me, req));
        {
            let mut g = self.shared.gather.locked();
            if let Some(i) = g.awaited.iter().position(|t| *t == me) {
                g.awaited.swap_remove(i);
                if g.awaited.is_empty() {
                    self.shared.arrived.notify_all();
                }
            }
        }
        // No wake-up is missed: a leader stores the outcome before it wakes
        // the waiter (a wake before `park` makes `park` return at once), and
        // whoever releases the writer lock after this thread found it taken
        // finds this request queued and wakes it to lead.
        loop {
            if let Some(r) = take() {
                return r;
            }
            match self.try_lock_writer() {
                Some(mut w) => {
                    // Answered between the check above and taking the lock:
                    // do not lead (and wait) for nothing.
                    if let Some(r) = take() {
                        return r;
                    }
                    let reqs = self.gather();
                    self.run_group(&mut w, reqs);
                    drop(w);
                    if let Some(r) = take() {
                        return r;
                    }
                }
                None => std::thread::park(),
            }
        }
    }

    /// Take the queued requests for the next group (writer lock held).
    ///
    /// The committers of the last group were answered a moment ago and
    /// are likely building their next commit: when some of them are not
    /// queued yet, the leader waits for them, at most about one fsync, so
    /// that concurrent committers share an fsync instead of alternating
    /// between two half groups. A lone committer never waits (it is its
    /// own last group), nor does anyone when commits are not synced; and
    /// when a wait gathers nobody (committers that commit now and then),
    /// the next groups do not wait.
    pub(super) fn gather(&self) -> Vec<Request> {
        let (expected, limit) = {
            let mut g = self.shared.gather.locked();
            // Not worth a wait when an fsync is nearly free.
            let limit = policy::gather_wait(g.cooldown, g.sync_micros);
            g.cooldown = g.cooldown.saturating_sub(1);
            (std::mem::take(&mut g.last), limit)
        };
        let mut q = self.shared.queue.locked();
        // The expected committers not queued yet.
        let absent = |q: &Vec<(std::thread::ThreadId, Request)>| -> Vec<std::thread::ThreadId> {
            expected.iter().filter(|t| !q.iter().any(|(u, _)| u == *t)).copied().collect()
        };
        let missing = |q: &Vec<(std::thread::ThreadId, Request)>| absent(q).len();
        let mut idle = false;
        let before = missing(&q);
        if !limit.is_zero() && before > 0 {
            let deadline = std::time::Instant::now() + limit;
            // Set under the queue lock: a committer queued later finds itself here.
            self.shared.gather.locked().awaited = absent(&q);
            while missing(&q) > 0 {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                q = crate::sync::wait_timeout(&self.shared.arrived, q, left);
            }
            idle = missing(&q) == before;
            self.shared.gather.locked().awaited.clear();
        }
        let taken = std::mem::take(&mut *q);
        drop(q);
        let mut g = self.shared.gather.locked();
        if idle {
            g.cooldown = policy::COOLDOWN_AFTER_IDLE_WAIT;
        }
        g.last = taken.iter().map(|(t, _)| *t).collect();
        taken.into_iter().map(|(_, r)| r).collect()
    }

    /// The group-commit leader's work (writer lock held): validate and build
    /// every queued commit against the latest state, append them all to the
    /// WAL, sync once, apply them, and answer each request.
    pub(super) fn run_group(&self, w: &mut WriterState, reqs: Vec<Request>) {
        // Should anything below panic, no committer of the group stays
        // parked: each gets its outcome, or an error, and is woken.
        let _unwind = WakeOnUnwind(&self.shared.store, reqs.iter().map(|r| r.slot.clone()).collect());
        let set = |slot: &Slot, r: Result<u64>| {
            slot.set(r);
            slot.wake();
        };
        let accepted = {
            let st = self.state();
            let mut g = GroupView::new(&st);
            for req in reqs {
                g.index_written();
                if let Some(why) = conflict(&st, &g, &req) {
                    set(&req.slot, Err(Error::Conflict(why)));
                    continue;
                }
                let Request { batch, snapshot, slot, .. } = req;
                // The transaction's own batch when nothing it depends on
                // changed; otherwise its changes re-applied to the latest state.
                let mut b = if g.still_valid(&batch, snapshot) {
                    batch
                } else {
                    let mut b = Batch { system: batch.system, ..Batch::default() };
                    let rebuilt =
                        batch.into_ops(&st).and_then(|ops| ops.into_iter().try_for_each(|op| b.stage(&g, op)));
                    if let Err(e) = rebuilt {
                        set(&slot, Err(e));
                        continue;
                    }
                    b
                };
                if b.events.is_empty() {
                    set(&slot, Ok(g.next_seq - 1));
                    continue;
                }
                let time = now_micros().max(g.last_time);
                let commit = Commit { first_seq: g.next_seq, time_micros: time, events: std::mem::take(&mut b.events) };
                let bytes = commit.encode();
                b.events = commit.events;
                if bytes.len() > crate::format::frame::MAX_PAYLOAD {
                    set(
                        &slot,
                        Err(Error::Query(format!(
                            "commit of {} bytes exceeds the {}-byte limit; split it",
                            bytes.len(),
                            crate::format::frame::MAX_PAYLOAD
                        ))),
                    );
                    continue;
                }
                if let Some(e) = b.events.iter().find(|e| match (&e.key, &e.doc) {
                    (Some(k), Some(d)) => !versions::fits(e.table, k, d.text().len()),
                    _ => false,
                }) {
                    let len = e.doc.as_ref().map_or(0, |d| d.text().len());
                    set(
                        &slot,
                        Err(Error::Query(format!(
                            "a document of {len} bytes is too large to keep in the history (about {} bytes at most)",
                            crate::format::run::MAX_RUN_PAYLOAD - 64 - 2 * MAX_KEY_BYTES
                        ))),
                    );
                    continue;
                }
                g.accept(Accepted { batch: b, slot, first_seq: g.next_seq, time, bytes });
            }
            g.accepted
        };
        type Built = (Commit, Vec<u8>, Slot, Vec<(usize, Picks)>);
        let built: Vec<Built> = accepted
            .into_iter()
            .map(|a| {
                let c = Commit { first_seq: a.first_seq, time_micros: a.time, events: a.batch.events };
                (c, a.bytes, a.slot, a.batch.picks)
            })
            .collect();
        if built.is_empty() {
            return;
        }
        // The group's records go to the WAL in one write.
        let records: Vec<&[u8]> = built.iter().map(|(_, bytes, _, _)| bytes.as_slice()).collect();
        let (positions, mut failure) = match self.shared.store.append_many(WAL_STREAM, FileKind::Wal, &records) {
            Ok(p) => (p, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        drop(records);
        if failure.is_none() && self.shared.opts.durability == Durability::Immediate {
            let t = std::time::Instant::now();
            failure = self.shared.store.sync_stream(WAL_STREAM).err();
            let us = t.elapsed().as_micros().min(1_000_000) as u64;
            let mut g = self.shared.gather.locked();
            g.sync_micros = policy::sync_average(g.sync_micros, us);
        }
        if let Some(e) = failure {
            // Nothing of the group is acknowledged or applied, though part
            // of it may be on disk: the store refuses writes from now on
            // (reopen recovers, and decides from what the disk holds).
            self.shared.store.poison_with(&e);
            let msg = e.to_string();
            let mut first = Some(e);
            for (_, _, slot, _) in built {
                let err = first.take().unwrap_or_else(|| Error::Poisoned(msg.clone()));
                set(&slot, Err(err));
            }
            return;
        }
        let mut due: Vec<u32> = Vec::new();
        let mut wake_tree = false;
        let mut answered: Vec<Slot> = Vec::with_capacity(built.len());
        {
            let mut guard = Some(self.state_mut());
            // Set when a commit failed to apply after it was logged.
            let mut broken: Option<String> = None;
            for ((mut commit, bytes, slot, picks), _) in built.into_iter().zip(positions) {
                if let Some(why) = &broken {
                    slot.set(Err(Error::Poisoned(why.clone())));
                    answered.push(slot);
                    continue;
                }
                // A schema change that builds an index builds it first,
                // under the read lock only: readers go on meanwhile.
                if commit.events.iter().any(|e| e.op == Op::Alter) {
                    drop(guard.take());
                    let pre = self.prebuild_indexes(&commit);
                    guard = Some(self.state_mut());
                    if let Some(st) = guard.as_mut() {
                        st.prebuilt = pre;
                    }
                }
                let Some(st) = guard.as_mut() else { break };
                // Woken once the state is released (they would wait for it).
                let r = st.apply_commit(&mut commit, picks, bytes.len());
                // A commit that is logged but failed to apply (a read of the
                // version tree failed) may have left part of itself in the
                // state: nothing more applies until the database is opened
                // again, which replays it from the log.
                if let Err(e) = &r {
                    let why = format!("a logged commit failed to apply: {e}");
                    self.shared.store.poison_with(&Error::Poisoned(why.clone()));
                    broken = Some(why);
                }
                let failed = r.is_err();
                slot.set(r.map(|()| st.latest_seq()));
                answered.push(slot);
                if failed {
                    continue;
                }
                st.prebuilt.clear();
                if st.versions_due {
                    st.versions_due = false;
                    wake_tree = true;
                    // The memtable is due: a catalog checkpoint as of this
                    // commit goes in with it (see `catalog.rs`).
                    st.put_catalog();
                }
                w.pending_bytes += bytes.len() as u64;
                w.pending.push((commit.first_seq, bytes));
                for e in &commit.events {
                    if !due.contains(&e.table) && st.snapshot_due(e.table, &self.shared.opts) {
                        due.push(e.table);
                    }
                }
            }
        }
        // Wake the committers answered above before the housekeeping below.
        for slot in answered {
            slot.wake();
        }
        if wake_tree {
            self.wake_tree_worker();
            // Back-pressure: commits faster than the worker writes their
            // versions out wait for it here, so the memtable stays bounded.
            if let Some(tree) = &self.shared.versions
                && tree.memtable_bytes() as u64 > self.shared.opts.memtable_bytes.saturating_mul(4)
                && let Err(e) = versions::flush(&self.shared.store, tree)
            {
                log::warn!("flushing row versions: {e}");
            }
        }
        if policy::checkpoint_due(w.pending_bytes, self.shared.opts.checkpoint_bytes) {
            // The commits are durable in the WAL: a failed checkpoint only
            // leaves them there (and the store refuses writes until reopened).
            let _ = self.checkpoint(w);
        }
        if !due.is_empty() {
            self.snapshot_in_background(due);
        }
    }

    /// Commit engine-built events (compaction markers) as one commit, writer lock held.
    pub(super) fn commit_locked(&self, w: &mut WriterState, events: Vec<Event>) -> Result<u64> {
        let slot: Slot = SlotCell::new();
        let batch = Batch { events, ..Batch::default() };
        let req = Request {
            batch,
            iso: Isolation::ReadCommitted,
            snapshot: self.latest_seq(),
            reads: Default::default(),
            slot: slot.clone(),
        };
        self.run_group(w, vec![req]);
        let r = slot.take();
        r.unwrap_or_else(|| Err(Error::Poisoned("the commit was lost".into())))
    }

    /// Write several changes as one commit (a `ReadCommitted` transaction:
    /// each change is re-applied to the latest state when it commits);
    /// returns the last sequence number. Nothing is committed if `f` or any
    /// change fails.
    pub fn write(&self, f: impl FnOnce(&mut Txn<'_>) -> Result<()>) -> Result<u64> {
        let mut t = self.begin(Isolation::ReadCommitted);
        f(&mut t)?;
        t.commit()
    }

    /// `CREATE TABLE`.
    pub fn create_table(&self, name: &str, pk: &str, indexes: &[&str]) -> Result<u64> {
        self.write(|w| w.create_table(name, pk, indexes))
    }

    /// `INSERT`: returns the event's sequence number.
    pub fn insert(&self, table: &str, doc: Value) -> Result<u64> {
        self.write(|w| w.insert(table, doc))
    }

    /// `INSERT` of a document given as JSON text (see [`Txn::insert_json`]):
    /// returns the event's sequence number.
    pub fn insert_json(&self, table: &str, json: impl Into<String>) -> Result<u64> {
        self.write(|w| w.insert_json(table, json))
    }

    /// `PATCH`: top-level merge; a `null` value removes the field.
    pub fn patch(&self, table: &str, key: &Pk, set: Map<String, Value>) -> Result<u64> {
        self.write(|w| w.patch(table, key, set))
    }

    /// `SOFT DELETE`.
    pub fn soft_delete(&self, table: &str, key: &Pk) -> Result<u64> {
        self.write(|w| w.soft_delete(table, key))
    }

    /// The indexes the schema changes of `commit` (about to apply) will
    /// build, built now from the current rows under the read lock (the
    /// caller, the group-commit leader, keeps every other writer out).
    pub(super) fn prebuild_indexes(&self, commit: &Commit) -> Vec<Prebuilt> {
        let st = self.state();
        let mut out = Vec::new();
        // Indexed columns per table as the commit's earlier changes leave them.
        let mut indexed: FastMap<u32, Vec<String>> = FastMap::default();
        for (i, e) in commit.events.iter().enumerate() {
            if e.op != Op::Alter {
                continue;
            }
            let Some(Ok(alter)) = e.doc.as_ref().map(|d| serde_json::from_value::<Alter>(d.to_value())) else {
                continue;
            };
            let Some(t) = st.tables.get(&e.table) else { continue };
            let cols = indexed.entry(e.table).or_insert_with(|| t.indexes.keys().cloned().collect());
            let effect = alter.index_effect(|c| cols.iter().any(|x| x == c));
            if let Some(d) = effect.drop {
                cols.retain(|c| c != d);
            }
            let Some(column) = effect.rebuild else { continue };
            if !cols.iter().any(|c| c == column) {
                cols.push(column.to_string());
            }
            // The commit's changes before this one: rows it writes are
            // indexed as the change applies; its schema changes apply here.
            let before = &commit.events[..i];
            let skip: FastSet<&Pk> =
                before.iter().filter(|x| x.table == e.table).filter_map(|x| x.key.as_ref()).collect();
            let alters: Vec<(u64, Alter)> = before
                .iter()
                .enumerate()
                .filter(|(_, x)| x.table == e.table && x.op == Op::Alter)
                .filter_map(|(j, x)| {
                    Some((commit.first_seq + j as u64, serde_json::from_value(x.doc.as_ref()?.to_value()).ok()?))
                })
                .chain(std::iter::once((commit.first_seq + i as u64, alter.clone())))
                .collect();
            let Some(tree) = st.versions.as_ref() else { continue };
            let seq = commit.first_seq + i as u64;
            let mut entries = Vec::new();
            let built = super::versions::for_each_row_at(&tree.view(), t.shape(), e.table, u64::MAX, |k, d| {
                if skip.contains(&k) {
                    return Ok(());
                }
                let mut v = t.view_value(&d, u64::MAX);
                apply_between(&alters, 0, u64::MAX, &mut v);
                if let Some(ik) = v.get(column).and_then(crate::table::index::ikey) {
                    entries.push(super::versions::index_entry(e.table, (seq, 0), &ik, &k, seq, true));
                }
                Ok(())
            });
            // Not built (a read failed): the index is built as the change applies.
            if built.is_err() {
                continue;
            }
            out.push(Prebuilt {
                table: e.table,
                seq,
                column: column.to_string(),
                entries,
                skip: skip.into_iter().cloned().collect(),
            });
        }
        out
    }
}
