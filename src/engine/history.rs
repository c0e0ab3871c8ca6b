//! Every row's history, by key: which events (by sequence number and log
//! position) wrote it, kept in memory in shards so that opening builds it fast.

use super::*;

/// A commit of the log, as the engine keeps it in memory: where its record
/// is, and which sequence numbers and commit time it holds.
#[derive(Clone, Copy)]
pub(super) struct CommitMeta {
    /// The sequence number of its first event.
    pub(super) first_seq: u64,
    /// Its events.
    pub(super) len: u32,
    /// Its commit time (microseconds since the Unix epoch).
    pub(super) time: i64,
    /// Its record in the segments or the WAL.
    pub(super) pos: RecordPos,
}

/// One event of a row's history: which event it is (read back from the log
/// when its document is needed).
#[derive(Clone, Copy)]
pub(crate) struct EventRef {
    /// Its sequence number.
    pub(crate) seq: u64,
    /// What it did to the row.
    pub(super) op: Op,
    /// Its commit (an index into the state's commits).
    pub(super) commit: u32,
    /// Its place in the commit.
    pub(super) idx: u32,
    /// The row's state at the table's compaction horizon (`seq` is the
    /// horizon); its document is in the horizon snapshot.
    pub(super) folded: bool,
}

/// A row's history, oldest first: most rows have one event, kept inline.
#[derive(Clone)]
pub(crate) enum EventRefs {
    One(EventRef),
    Many(Vec<EventRef>),
}

/// A table's history map, taken out while a commit's entries for it
/// (in event order) are added on another thread.
pub(super) type HistoryWork = (u32, RowHistory, Vec<(Pk, EventRef)>);

impl Default for EventRefs {
    fn default() -> EventRefs {
        EventRefs::Many(Vec::new())
    }
}

impl std::ops::Deref for EventRefs {
    type Target = [EventRef];
    fn deref(&self) -> &[EventRef] {
        match self {
            EventRefs::One(h) => std::slice::from_ref(h),
            EventRefs::Many(v) => v,
        }
    }
}

impl EventRefs {
    pub(super) fn push(&mut self, h: EventRef) {
        match self {
            EventRefs::Many(v) if v.is_empty() => *self = EventRefs::One(h),
            EventRefs::Many(v) => v.push(h),
            EventRefs::One(first) => *self = EventRefs::Many(vec![*first, h]),
        }
    }

    pub(super) fn to_vec_mut(&mut self) -> &mut Vec<EventRef> {
        if let EventRefs::One(h) = *self {
            *self = EventRefs::Many(vec![h]);
        }
        match self {
            EventRefs::Many(v) => v,
            EventRefs::One(_) => unreachable_event_refs(),
        }
    }
}

#[allow(clippy::panic)]
#[cold]
pub(super) fn unreachable_event_refs() -> ! {
    // `to_vec_mut` has just made it `Many`.
    panic!("history list is not a vector")
}

/// Every row's history, by key, in shards picked by a hash of the key that
/// is independent of each shard's own: opening a database groups its
/// history entries by shard first and then builds one shard at a time,
/// so that each insert hits a table small enough to stay in cache instead
/// of one cache miss per event across a table of a million rows.
#[derive(Default)]
pub(crate) struct RowHistory {
    pub(super) pick: foldhash::quality::RandomState,
    /// Empty until the first entry, then `HIST_SHARDS` maps.
    pub(super) shards: Vec<FastMap<Pk, EventRefs>>,
}

/// Shards of a [`RowHistory`].
pub(super) const HIST_SHARDS: usize = 256;

/// Events from which a commit's history entries are recorded on a thread
/// of their own while it is applied (below, a thread costs more than it saves).
pub(super) const PARALLEL_APPLY: u64 = 256;

impl RowHistory {
    /// The shard of key `k`.
    pub(super) fn shard_of(&self, k: &Pk) -> usize {
        use std::hash::BuildHasher;
        (self.pick.hash_one(k) >> 56) as usize % HIST_SHARDS
    }

    pub(crate) fn get(&self, k: &Pk) -> Option<&EventRefs> {
        self.shards.get(self.shard_of(k))?.get(k)
    }

    /// The shards, made on first use.
    pub(super) fn shards_mut(&mut self) -> &mut [FastMap<Pk, EventRefs>] {
        if self.shards.is_empty() {
            self.shards = (0..HIST_SHARDS).map(|_| FastMap::default()).collect();
        }
        &mut self.shards
    }

    pub(super) fn shard_mut(&mut self, k: &Pk) -> &mut FastMap<Pk, EventRefs> {
        let i = self.shard_of(k);
        &mut self.shards_mut()[i]
    }

    pub(super) fn push_key(&mut self, k: Pk, h: EventRef) {
        self.shard_mut(&k).entry(k).or_default().push(h);
    }

    pub(super) fn entry(&mut self, k: &Pk) -> &mut EventRefs {
        self.shard_mut(k).entry(k.clone()).or_default()
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut EventRefs> {
        self.shards.iter_mut().flat_map(|m| m.values_mut())
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|m| m.len()).sum()
    }

    pub(super) fn retain_nonempty(&mut self) {
        for m in &mut self.shards {
            m.retain(|_, v| !v.is_empty());
        }
    }

    /// Add entries that all belong to shard `i` (see [`RowHistory::shard_of`]),
    /// in the order of their events.
    pub(super) fn fill_shard(&mut self, i: usize, entries: Vec<(Pk, EventRef)>) {
        if entries.is_empty() {
            return;
        }
        let Some(m) = self.shards_mut().get_mut(i) else { return };
        m.reserve(entries.len());
        for (k, h) in entries {
            m.entry(k).or_default().push(h);
        }
    }
}
