//! Locking a `std::sync::Mutex` without inheriting another task's panic.
//!
//! A panic while a lock is held poisons the mutex; with `.expect()` on every lock,
//! that one panic would then fail every later stage of the runner. The runner's
//! critical sections are single operations on a map, a set or a flag, which leave
//! the data consistent even when a panic interrupts the thread holding the lock, so
//! the poisoned guard is taken as is.

use std::sync::{Mutex, MutexGuard, PoisonError};

pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
