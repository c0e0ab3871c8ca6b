//! Test-only recorder of every (key, nonce) pair used to seal a frame on the
//! current thread, so tests can assert none is ever used twice.

use std::cell::RefCell;
use std::collections::HashSet;

/// (seen pairs, uses, reuses)
type Record = (HashSet<([u8; 32], [u8; 12])>, u64, u64);

thread_local! {
    static SEEN: RefCell<Option<Record>> = const { RefCell::new(None) };
}

/// Start recording on this thread (clears earlier records).
pub(crate) fn start() {
    SEEN.with(|s| *s.borrow_mut() = Some((HashSet::new(), 0, 0)));
}

/// Record one use of `nonce` under the key with fingerprint `key_fp`.
pub(crate) fn record(key_fp: [u8; 32], nonce: [u8; 12]) {
    SEEN.with(|s| {
        if let Some((set, uses, reuses)) = s.borrow_mut().as_mut() {
            *uses += 1;
            if !set.insert((key_fp, nonce)) {
                *reuses += 1;
            }
        }
    });
}

/// Stop recording; returns (uses, reuses).
pub(crate) fn stop() -> (u64, u64) {
    SEEN.with(|s| s.borrow_mut().take().map(|(_, u, r)| (u, r)).unwrap_or((0, 0)))
}
