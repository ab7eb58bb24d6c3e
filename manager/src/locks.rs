//! One rule for the manager's `std::sync::Mutex`es: their critical sections are plain map and
//! field updates that never panic halfway, so a poisoned lock still holds consistent data and
//! is taken anyway.

use std::sync::{Mutex, MutexGuard};

/// Lock `m`, ignoring poisoning (see the module doc).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
