//! Interned header values: the cheapest `HeaderValue` to clone is one with no reference count.
//!
//! Every request needs an owned `HeaderValue`. Cloning a refcounted one costs two atomic
//! read-modify-writes (clone, then drop when the request is done), about 18 ns on the machine
//! the benchmarks ran on, more than all the cache's own work. A value backed by `&'static` bytes
//! clones by copying four words, and threads never write to shared memory to read it.
//!
//! So the cache copies each token's header value once into memory that is never freed, within a
//! fixed budget per process ([`BUDGET`], room for ~800 Besender tokens, or more than two years
//! of daily tokens). Past the budget, values are refcounted as usual, and each thread clones its
//! own copy (see `local.rs`), so only the constant factor changes, never correctness.
//!
//! Keeping expired tokens in memory exposes nothing new: freed heap memory is not zeroed either,
//! and an expired or revoked token authenticates nothing.

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::HeaderValue;

/// Bytes of header values this process may intern, over all caches.
pub(crate) const BUDGET: usize = 1024 * 1024;

static INTERNED: AtomicUsize = AtomicUsize::new(0);

/// A `'static`-backed, sensitive copy of `value`, or `None` once the budget is spent.
pub(super) fn intern(value: &HeaderValue) -> Option<HeaderValue> {
    let len = value.len();
    INTERNED
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            used.checked_add(len).filter(|total| *total <= BUDGET)
        })
        .ok()?;
    let leaked: &'static [u8] = Box::leak(Box::from(value.as_bytes()));
    let mut interned = HeaderValue::from_maybe_shared(Bytes::from_static(leaked)).ok()?;
    interned.set_sensitive(true);
    Some(interned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_values_are_equal_and_sensitive() {
        let mut value = HeaderValue::from_static("Bearer abc");
        value.set_sensitive(true);
        let interned = intern(&value).expect("budget left");
        assert_eq!(interned, value);
        assert!(interned.is_sensitive());
    }
}
