//! One rule for the gateway's `std::sync::Mutex`es: their critical sections leave the data
//! consistent before calling anything that can panic, so a poisoned lock still holds consistent
//! data and is taken anyway; a panicking connection must not wedge the rest.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Lock `m`, ignoring poisoning (see the module doc).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
