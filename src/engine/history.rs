//! Every row's history, by key: which events (by sequence number and log
//! position) wrote it, kept in memory in shards so that opening builds it fast.

use super::*;

#[derive(Clone, Copy)]
pub(super) struct CommitMeta {
    pub(super) first_seq: u64,
    pub(super) len: u32,
    pub(super) time: i64,
    pub(super) pos: RecordPos,
}

#[derive(Clone, Copy)]
pub(crate) struct Hist {
    pub(crate) seq: u64,
    pub(super) op: Op,
    pub(super) commit: u32,
    pub(super) idx: u32,
    /// The row's state at the table's compaction horizon (`seq` is the
    /// horizon); its document is in the horizon snapshot.
    pub(super) folded: bool,
}

/// A row's history, oldest first: most rows have one event, kept inline.
#[derive(Clone)]
pub(crate) enum Hists {
    One(Hist),
    Many(Vec<Hist>),
}

/// A table's history map, taken out while a commit's entries for it
/// (in event order) are added on another thread.
pub(super) type HistoryWork = (u32, RowHistory, Vec<(Pk, Hist)>);

impl Default for Hists {
    fn default() -> Hists {
        Hists::Many(Vec::new())
    }
}

impl std::ops::Deref for Hists {
    type Target = [Hist];
    fn deref(&self) -> &[Hist] {
        match self {
            Hists::One(h) => std::slice::from_ref(h),
            Hists::Many(v) => v,
        }
    }
}

impl Hists {
    pub(super) fn push(&mut self, h: Hist) {
        match self {
            Hists::Many(v) if v.is_empty() => *self = Hists::One(h),
            Hists::Many(v) => v.push(h),
            Hists::One(first) => *self = Hists::Many(vec![*first, h]),
        }
    }

    pub(super) fn to_vec_mut(&mut self) -> &mut Vec<Hist> {
        if let Hists::One(h) = *self {
            *self = Hists::Many(vec![h]);
        }
        match self {
            Hists::Many(v) => v,
            Hists::One(_) => unreachable_hists(),
        }
    }
}

#[allow(clippy::panic)]
#[cold]
pub(super) fn unreachable_hists() -> ! {
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
    pub(super) shards: Vec<FastMap<Pk, Hists>>,
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

    pub(crate) fn get(&self, k: &Pk) -> Option<&Hists> {
        self.shards.get(self.shard_of(k))?.get(k)
    }

    /// The shards, made on first use.
    pub(super) fn shards_mut(&mut self) -> &mut [FastMap<Pk, Hists>] {
        if self.shards.is_empty() {
            self.shards = (0..HIST_SHARDS).map(|_| FastMap::default()).collect();
        }
        &mut self.shards
    }

    pub(super) fn shard_mut(&mut self, k: &Pk) -> &mut FastMap<Pk, Hists> {
        let i = self.shard_of(k);
        &mut self.shards_mut()[i]
    }

    pub(super) fn push_key(&mut self, k: Pk, h: Hist) {
        self.shard_mut(&k).entry(k).or_default().push(h);
    }

    pub(super) fn entry(&mut self, k: &Pk) -> &mut Hists {
        self.shard_mut(k).entry(k.clone()).or_default()
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Hists> {
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
    pub(super) fn fill_shard(&mut self, i: usize, entries: Vec<(Pk, Hist)>) {
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
