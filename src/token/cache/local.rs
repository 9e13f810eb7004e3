//! Per-thread copies of the cached header value: the hot path.
//!
//! Cloning one shared `HeaderValue` from many threads makes them all bump the same reference
//! count, and that cache line then bounces between cores (measured here: ~9 ns per read on one
//! thread, ~58 ns on two). So each thread keeps its own copy of the current token's header value,
//! made once per token, and a read is: one atomic load of the shared state word (read-only, so
//! it stays in every core's cache), a look in this thread's slots, and a clone of a value only
//! this thread touches. No lock, no allocation, no await.
//!
//! A slot is trusted only while the shared state names its generation without the `CHECK` bit,
//! and, if the state has the `CLOCK` bit, only until the instant its alarm is due (and never past
//! its entry's usable time); see the invariants
//! in `state.rs`.

use std::{
    cell::RefCell,
    sync::{Arc, Weak, atomic::Ordering},
};

use http::HeaderValue;
use tokio::time::Instant;

use super::{
    Lease,
    schedule::Entry,
    state::{CHECK, CLOCK, GENERATION_SHIFT, Shared},
};
use crate::token::Token;

/// At most this many caches keep a copy on one thread; the oldest copy makes room.
const MAX_SLOTS: usize = 8;

struct Slot {
    cache_id: u64,
    generation: u64,
    cache: Weak<Shared>,
    entry: Arc<Entry>,
    /// This thread's own copy of `entry.header`.
    header: HeaderValue,
}

impl Slot {
    /// Whether this is the copy of `generation` of the cache `shared`.
    fn holds(&self, shared: &Shared, generation: u64) -> bool {
        self.cache_id == shared.id && self.generation == generation
    }
}

thread_local! {
    static SLOTS: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
}

/// What the state word says of the valid token, if the hot path may serve it.
#[derive(Clone, Copy)]
struct Valid {
    generation: u64,
    /// Valid only while the clock is before the instant the alarm is due (see `CLOCK`).
    clock: bool,
}

#[inline]
fn valid(shared: &Shared) -> Option<Valid> {
    let state = shared.state.load(Ordering::Acquire);
    (state & CHECK == 0).then_some(Valid {
        generation: state >> GENERATION_SHIFT,
        clock: state & CLOCK != 0,
    })
}

/// Whether the hot path would serve `lease` now: one atomic load, and under `CLOCK` a look at
/// the clock.
#[inline]
pub(super) fn is_usable(shared: &Shared, lease: &Lease) -> bool {
    let state = shared.state.load(Ordering::Acquire);
    // The state word of `lease`'s generation with no flag set: the usual answer, in one
    // comparison. Generations count fetches, one each, so they stay far below 2^62 and the
    // shift loses no bit.
    debug_assert!(lease.generation >> (u64::BITS - GENERATION_SHIFT) == 0);
    let plain = lease.generation << GENERATION_SHIFT;
    state == plain || (state == plain | CLOCK && clock_allows(shared, lease.usable_until))
}

/// Under `CLOCK`: whether the clock is before both the instant the alarm is due and the
/// lease's own usable time (a reader can pair an old state with a newer due instant).
fn clock_allows(shared: &Shared, usable_until: Instant) -> bool {
    let now = Instant::now();
    now < usable_until && shared.before_clock_due(now)
}

/// Runs `f` on this thread's slot for `generation` of `shared`, if there is one.
fn with_slot<R>(shared: &Shared, generation: u64, f: impl FnOnce(&Slot) -> R) -> Option<R> {
    SLOTS
        .try_with(|slots| {
            let slots = slots.borrow();
            let slot = slots.iter().find(|s| s.holds(shared, generation))?;
            Some(f(slot))
        })
        .ok()
        .flatten()
}

/// This thread's copy of the valid token's header value, if there is a valid token: [`lease`]
/// without the rest of the lease, for `TokenCache::cached_header` (building and returning the
/// whole lease, which carries an `Instant`, cost that read a third of its speed).
#[inline]
pub(super) fn header(shared: &Arc<Shared>) -> Option<HeaderValue> {
    let valid = valid(shared)?;
    if valid.clock {
        return lease(shared).map(|lease| lease.header);
    }
    match with_slot(shared, valid.generation, |slot| slot.header.clone()) {
        Some(header) => Some(header),
        // First read of this token on this thread.
        None => Some(lease_entry(shared, &shared.current_entry(valid.generation)?).header),
    }
}

/// This thread's copy of the valid token's header value, if there is a valid token.
pub(super) fn lease(shared: &Arc<Shared>) -> Option<Lease> {
    let valid = valid(shared)?;
    let generation = valid.generation;
    let slot = with_slot(shared, generation, |slot| {
        (slot.header.clone(), slot.entry.usable_until())
    });
    let lease = match slot {
        Some((header, usable_until)) => Lease {
            header,
            generation,
            usable_until,
        },
        // First read of this token on this thread.
        None => lease_entry(shared, &shared.current_entry(generation)?),
    };
    (!valid.clock || clock_allows(shared, lease.usable_until)).then_some(lease)
}

/// The valid token itself, for [`TokenCache::get`](super::TokenCache::get). Unlike the layer's
/// read, it also checks the clock: the alarm that would have flagged an expiry may not have run
/// yet (a runtime idle between `block_on` calls), and `get` promises a valid token.
pub(super) fn cached_token(shared: &Arc<Shared>) -> Option<Token> {
    let valid = valid(shared)?;
    let generation = valid.generation;
    let (entry, copied) = match with_slot(shared, generation, |slot| Arc::clone(&slot.entry)) {
        Some(entry) => (entry, true),
        None => (shared.current_entry(generation)?, false),
    };
    let now = Instant::now();
    // Under CLOCK, past the due instant: the slow path, which starts the refresh that is due.
    if !entry.usable_at(now) || (valid.clock && !shared.before_clock_due(now)) {
        return None;
    }
    if !copied {
        lease_entry(shared, &entry);
    }
    Some(entry.token.clone())
}

/// A lease on `entry`, through this thread's copy (made now if this thread has none yet).
pub(super) fn lease_entry(shared: &Arc<Shared>, entry: &Arc<Entry>) -> Lease {
    let generation = entry.generation;
    let made = SLOTS.try_with(|slots| {
        let mut slots = slots.borrow_mut();
        if let Some(slot) = slots.iter().find(|s| s.holds(shared, generation)) {
            return slot.header.clone();
        }
        // An interned value is already free to clone from any thread.
        let header = if entry.interned {
            entry.header.clone()
        } else {
            private_copy(&entry.header)
        };
        slots.retain(|s| s.cache_id != shared.id && s.cache.strong_count() > 0);
        if slots.len() >= MAX_SLOTS {
            slots.remove(0);
        }
        slots.push(Slot {
            cache_id: shared.id,
            generation,
            cache: Arc::downgrade(shared),
            entry: Arc::clone(entry),
            header: header.clone(),
        });
        header
    });
    // During thread teardown there are no slots: share the cache's value instead.
    let header = made.unwrap_or_else(|_| entry.header.clone());
    Lease {
        header,
        generation,
        usable_until: entry.usable_until(),
    }
}

/// A copy of `value` in an allocation of its own, still marked sensitive.
fn private_copy(value: &HeaderValue) -> HeaderValue {
    let mut copy = HeaderValue::from_bytes(value.as_bytes())
        .expect("bytes taken from a valid header value are a valid header value");
    copy.set_sensitive(true);
    copy
}
