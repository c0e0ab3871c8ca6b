//! Locks, and the one policy for a lock a panicking thread left poisoned.
//!
//! **Policy: a poisoned lock is taken anyway.** Every structure behind
//! DriftDB's locks stays consistent at each point where a panic can unwind
//! through it: the store latches itself (refusing every later write) before
//! a multi-step change can be left half done, a commit group that panics
//! wakes its waiters with an error (see docs/DESIGN.md, "the panicking
//! leader"), and in-memory state is replaced whole or not at all. Refusing
//! the lock instead would turn one panicked thread into a database that
//! can no longer even be closed. A panic is still reported: to the thread
//! that caught it, as an error from the call that panicked.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Take a lock whatever a panicking thread left it as (see the module docs).
pub(crate) trait Locked<T> {
    /// The exclusive guard.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// [`Locked`] for a read-write lock.
pub(crate) trait RwLocked<T> {
    /// A shared guard.
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    /// The exclusive guard.
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T> RwLocked<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Wait on a condition variable, whatever a panicking thread left the lock as.
pub(crate) fn wait_timeout<'a, T>(
    cv: &std::sync::Condvar,
    guard: MutexGuard<'a, T>,
    dur: std::time::Duration,
) -> MutexGuard<'a, T> {
    cv.wait_timeout(guard, dur).unwrap_or_else(|p| p.into_inner()).0
}
