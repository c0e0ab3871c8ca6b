//! The engine's decisions, as pure functions of what they depend on (the
//! workers that act on them are elsewhere): when a table's snapshot is
//! due, when the write-ahead log is checkpointed, and how long a
//! group-commit leader waits for the committers it expects.

use std::time::Duration;

/// Whether a table that holds `rows` rows, with `since_events` events and
/// `since_bytes` bytes of them since its last snapshot, is due for one:
/// after `every_events` events, but not before as many events as it had
/// rows at its last snapshot (so a snapshot's cost, linear in the rows,
/// stays linear in the events); or after `every_bytes` bytes of events once
/// at least half its row count in events has accumulated.
pub(super) fn snapshot_due(
    rows: u64,
    since_events: u64,
    since_bytes: u64,
    every_events: u64,
    every_bytes: u64,
) -> bool {
    since_events >= every_events.max(rows.saturating_sub(since_events))
        || (since_bytes >= every_bytes && since_events >= rows / 2)
}

/// Whether the write-ahead log, holding `pending_bytes` of commits not yet
/// in the segments, is to be checkpointed now.
pub(super) fn checkpoint_due(pending_bytes: u64, checkpoint_bytes: u64) -> bool {
    pending_bytes >= checkpoint_bytes
}

/// How long a group-commit leader waits for the committers of the last
/// group to queue again: nothing after a wait gathered nobody (`cooldown`
/// groups), nothing when an fsync is nearly free (under 50 µs), and at
/// most one fsync's time (the moving average `sync_micros`), capped at 2 ms.
pub(super) fn gather_wait(cooldown: u32, sync_micros: u64) -> Duration {
    if cooldown > 0 || sync_micros < 50 { Duration::ZERO } else { Duration::from_micros(sync_micros.min(2_000)) }
}

/// Groups taken without waiting after a wait that gathered nobody (the
/// committers commit now and then, not in a loop).
pub(super) const COOLDOWN_AFTER_IDLE_WAIT: u32 = 4;

/// The moving average of the WAL fsync after one took `us` microseconds.
pub(super) fn sync_average(average: u64, us: u64) -> u64 {
    if average == 0 { us } else { (average * 3 + us) / 4 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_due_after_enough_events_but_never_sooner_than_the_rows_it_copies() {
        // A small table: the event count rules.
        assert!(!snapshot_due(10, 9_999, 0, 10_000, 64 << 20));
        assert!(snapshot_due(10, 10_000, 0, 10_000, 64 << 20));
        // A table of a million rows: not before half a million events
        // (rows − events ≤ events), whatever the setting says.
        assert!(!snapshot_due(1_000_000, 10_000, 0, 10_000, 64 << 20));
        assert!(!snapshot_due(1_000_000, 499_999, 0, 10_000, 64 << 20));
        assert!(snapshot_due(1_000_000, 500_000, 0, 10_000, 64 << 20));
        // Bytes count once half the row count in events has accumulated.
        assert!(!snapshot_due(1_000, 400, 65 << 20, 10_000, 64 << 20));
        assert!(snapshot_due(1_000, 500, 65 << 20, 10_000, 64 << 20));
        assert!(!snapshot_due(1_000, 500, 63 << 20, 10_000, 64 << 20));
    }

    #[test]
    fn the_log_is_checkpointed_once_it_holds_the_threshold() {
        assert!(!checkpoint_due((8 << 20) - 1, 8 << 20));
        assert!(checkpoint_due(8 << 20, 8 << 20));
        assert!(checkpoint_due(0, 0), "a threshold of 0 checkpoints every group");
    }

    #[test]
    fn a_leader_waits_at_most_one_fsync_and_not_after_an_idle_wait() {
        assert_eq!(gather_wait(0, 0), Duration::ZERO, "no fsync measured (or none per commit)");
        assert_eq!(gather_wait(0, 49), Duration::ZERO, "an fsync that is nearly free");
        assert_eq!(gather_wait(0, 300), Duration::from_micros(300));
        assert_eq!(gather_wait(0, 9_000), Duration::from_millis(2), "capped");
        assert_eq!(gather_wait(COOLDOWN_AFTER_IDLE_WAIT, 300), Duration::ZERO);
        assert_eq!(sync_average(0, 400), 400);
        assert_eq!(sync_average(400, 800), 500);
    }
}
