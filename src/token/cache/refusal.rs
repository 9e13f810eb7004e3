//! The layer's side of the cache: a refused token is invalidated (exactly that token, and at
//! most once per `min_forced_interval` while fresh tokens keep being refused), an accepted
//! retry vouches for its token, and the layer's refusal counters.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::time::Instant;

use super::{
    event::{self, Event},
    schedule::{Entry, Origin},
    state::Shared,
};

/// Counters of the layer's refusal path, kept with the cache so that response futures reach
/// them through the cache's id instead of a reference count; the hot path never touches them.
#[derive(Default)]
pub(crate) struct RefusalCounters {
    pub(crate) refusals: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) successful_retries: AtomicU64,
    pub(crate) refused_replays: AtomicU64,
    pub(crate) no_new_token: AtomicU64,
}

impl RefusalCounters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// Evicts the served entry if `is_refused` says it is the refused one, and forces a refresh,
    /// subject to the rate limit. Returns whether it evicted.
    pub(super) fn invalidate(self: &Arc<Self>, is_refused: impl Fn(&Entry) -> bool) -> bool {
        let (evicted, event) = self.invalidate_locked(is_refused);
        event::emit(event);
        evicted
    }

    /// [`invalidate`](Self::invalidate) under the lock, with what it reports.
    fn invalidate_locked(
        self: &Arc<Self>,
        is_refused: impl Fn(&Entry) -> bool,
    ) -> (bool, Option<Event>) {
        let mut control = self.lock();
        control.reap_dead_flight(Instant::now());
        let Some(entry) = control.entry.clone() else {
            return (false, None);
        };
        if !is_refused(&entry) {
            return (false, None);
        }
        let now = Instant::now();
        let within =
            |at: Option<Instant>| at.is_some_and(|at| now < at + self.config.min_forced_interval);
        // A token from a forced refresh refused within the interval: refreshing again may be a
        // loop (a 401 that no token can fix). Unless a retry carrying it was accepted: then this
        // is a new revocation. That exception itself at most once per interval, so that
        // backends that refuse and accept by turns (a stale one behind a load balancer) cost at
        // most two token calls per interval, not one per refusal.
        let forced_recently = entry.origin == Origin::Forced && within(control.last_forced);
        let vouched = entry.retry_accepted.load(Ordering::Relaxed);
        if forced_recently && (!vouched || within(control.last_vouched_bypass)) {
            control.stats.rate_limited_refreshes += 1;
            return (false, Some(Event::RefusedRecently));
        }
        let refused = Event::Refused {
            generation: entry.generation,
        };
        if forced_recently {
            // Not limited, so this is the vouched-for exception.
            control.last_vouched_bypass = Some(now);
        }
        control.entry = None;
        control.last_forced = Some(now);
        control.stats.forced_refreshes += 1;
        self.publish_check(&control);
        if control.flight.is_none() {
            // Without a runtime the next caller reports it.
            let _ = self.spawn_fetch(&mut control, Origin::Forced);
        }
        (true, Some(refused))
    }

    /// A retry carrying the token of `generation` was accepted: if that token is still the one
    /// served, a refusal of it may force a refresh at once (it is a new revocation).
    pub(super) fn retry_accepted(&self, generation: u64) {
        let control = self.lock();
        if let Some(entry) = control
            .entry
            .as_ref()
            .filter(|e| e.generation == generation)
        {
            entry.retry_accepted.store(true, Ordering::Relaxed);
        }
    }
}
