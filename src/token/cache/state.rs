//! The cache's shared state and its transitions.
//!
//! # Invariants
//! - `Control` (behind a `std::sync::Mutex`, never held across an `.await`) is the truth: the
//!   token served (`entry`), the running fetch (`flight`, at most one), the failure streak and
//!   the alarm. Every transition happens under the lock.
//!   No user code runs under it: not the source (it runs on the fetch's task), and not a
//!   `tracing` subscriber or a source error's `Display` (a transition returns its `Event`,
//!   emitted once the guard is dropped; see `event.rs`).
//! - `state` is the hot path's view of `Control`: `generation << GENERATION_SHIFT`, plus the
//!   `CHECK` and `CLOCK` bits.
//!   Without `CHECK`, the entry with that generation is valid and needs nothing, and any caller
//!   may use it without the lock. `CHECK` means "take the lock and look at the clock".
//! - `state` is cleared of `CHECK` only under the lock, and only when an alarm is armed for the
//!   next instant at which the answer may change (refresh due, retry due, expiry). The alarm,
//!   when it fires, starts what is due (a refresh ahead, as a reader's lookup would, so an idle
//!   cache refreshes on time) and, unless that armed a newer alarm, sets `CHECK`; it sets
//!   `CHECK` too when its task is dropped without firing (its runtime shut
//!   down, possibly before it ever ran): its guard exists before the task is spawned and takes
//!   no lock. A publisher that clears `CHECK` looks at `fired` afterwards and sets `CHECK` again
//!   if its alarm is already gone (both sides `SeqCst`), so a "valid" never outlives its alarm.
//!   The alarm runs on the runtime's timer, and a runtime that is not driven (a `current_thread`
//!   runtime idle between `block_on` calls) runs no timer: an alarm armed on such a runtime
//!   also sets `CLOCK` and publishes the instant it is due (`clock_due`, written before the
//!   state), and every read of a `CLOCK` state compares the clock with that instant itself,
//!   taking the slow path past it, as the alarm would have made it. A multi-thread runtime's workers drive its timers whenever they
//!   park, so an alarm there is late by at most a task's poll (a token sent that late past its
//!   expiry is refused and replaced like any other; retried, with retry on and a replayable
//!   body): its reads trust the state word alone, and read no clock.
//! - A fetch runs on a task of its own and owns its `watch` sender. Once running, it always ends
//!   in `finish`, even if it is cancelled or the source panics (a drop guard); a task dropped
//!   before it first ran drops its sender, which `reap_dead_flight` notices. A fetch whose task
//!   sits on a runtime nobody drives (one cache, several runtimes) stalls: past its fetch
//!   timeout plus a second, waiters give up on their own timers and the next caller starts a
//!   new fetch; a late success is still installed, but clears only its own flight, and a late
//!   failure (with one clock, the only kind) records no backoff and no held error. Waiters never
//!   hang. Single flight holds through this: the fetch's deadline is fixed when it is started;
//!   a task that first runs late gets a whole timeout from then only while the fetch is still
//!   the cache's, moving the stall instant under the lock; and a fetch past its deadline polls its
//!   source once more only on the same condition, claiming a second more: a fetch given up is
//!   never polled alongside the next, whatever order the runtime fires the timers in (a
//!   stalled runtime, or a clock that jumps past both). A source
//!   future polled before the deadline on a runtime that then stops is not polled again, but is
//!   dropped only when that runtime runs the task; and the runtimes sharing a cache must share a
//!   clock (`tokio::time::pause` is per runtime).
//! - A fetch's drop guard takes the lock, so it is created inside the task, on its first poll: a
//!   runtime that is shutting down may drop a new task synchronously inside `spawn`, while we
//!   hold the lock. An alarm's guard takes no lock and exists before its task.
//!
//! Fetches (`flight.rs`), alarms and the publishing of the state word (`alarm.rs`), and the
//! timing policy (when to refresh, how long to back off: `schedule.rs`) live in modules of
//! their own.

use std::{
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::{
    CacheStats, Config,
    alarm::Alarm,
    event::{self, Event},
    flight::{DynSource, Flight, FlightResult, RunningFlight},
    recent::RecentTokens,
    refusal::RefusalCounters,
    schedule::{Entry, Origin, asked_wait},
};
use crate::{error::TokenError, token::Token};

/// "Take the lock and look at the clock": the state word alone does not say the entry is valid.
pub(super) const CHECK: u64 = 1;
/// "Valid unless the clock says the entry's usable time is over": the alarm runs on a runtime
/// that may not be driven; see the module invariants.
pub(super) const CLOCK: u64 = 2;
/// The generation sits above the flag bits.
pub(super) const GENERATION_SHIFT: u32 = 2;

/// What a caller gets from the slow path.
pub(crate) enum Lookup {
    Ready(Arc<Entry>),
    Failed(TokenError),
    Wait(Flight),
}

pub(super) struct Control {
    /// The token served; `None` once it expired or was invalidated.
    pub(super) entry: Option<Arc<Entry>>,
    /// The generation of the newest entry ever made.
    pub(super) generation: u64,
    /// The header values of the last entries made, as runs of generations with the same text.
    pub(super) recent: RecentTokens,
    pub(super) flight: Option<RunningFlight>,
    /// Consecutive failed fetches.
    pub(super) failures: u32,
    pub(super) last_error: Option<TokenError>,
    /// No fetch starts before this instant (except a forced one), after a failure.
    pub(super) retry_at: Option<Instant>,
    /// No refresh ahead starts before this instant, after one was cancelled with its runtime
    /// (see `FlightGuard`). Apart from `retry_at`: it must not hold back a fetch the token's
    /// eviction makes needed, nor make an old error count as held.
    pub(super) ahead_after: Option<Instant>,
    /// When the last forced refresh started.
    pub(super) last_forced: Option<Instant>,
    /// When a refusal of a vouched-for token last bypassed the rate limit (see `invalidate`).
    pub(super) last_vouched_bypass: Option<Instant>,
    pub(super) alarm: Option<Alarm>,
    pub(super) rng: u64,
    pub(super) stats: CacheStats,
}

pub(crate) struct Shared {
    /// Distinguishes caches in the per-thread copies.
    pub(super) id: u64,
    /// `generation << GENERATION_SHIFT | CLOCK | CHECK`; see the module invariants.
    pub(super) state: AtomicU64,
    /// The sequence number of the alarm armed now.
    pub(super) armed: AtomicU64,
    /// The sequence number of the last current alarm that fired or died.
    pub(super) fired: AtomicU64,
    /// Under `CLOCK`: the instant the armed alarm is due (refresh, retry or expiry), as
    /// nanoseconds since `base`. Readers of a `CLOCK` state past it take the slow path, which
    /// starts the refresh that is due, as the alarm would have.
    pub(super) clock_due: AtomicU64,
    pub(super) base: Instant,
    control: Mutex<Control>,
    pub(super) source: Box<dyn DynSource>,
    pub(super) config: Config,
    /// What the layer's services reported about this cache's tokens.
    pub(crate) refusals: RefusalCounters,
}

static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(1);

impl Shared {
    pub(super) fn new(source: Box<dyn DynSource>, config: Config) -> Arc<Self> {
        let id = NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed);
        // Seed per cache, so processes (and caches) started together jitter differently.
        let seed = RandomState::new().hash_one(id) | 1;
        let shared = Arc::new(Self {
            id,
            state: AtomicU64::new(CHECK),
            armed: AtomicU64::new(0),
            fired: AtomicU64::new(0),
            clock_due: AtomicU64::new(0),
            base: Instant::now(),
            control: Mutex::new(Control {
                entry: None,
                generation: 0,
                recent: RecentTokens::default(),
                flight: None,
                failures: 0,
                last_error: None,
                retry_at: None,
                ahead_after: None,
                last_forced: None,
                last_vouched_bypass: None,
                alarm: None,
                rng: seed,
                stats: CacheStats::default(),
            }),
            source,
            config,
            refusals: RefusalCounters::default(),
        });
        super::registry::register(&shared);
        shared
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Control> {
        // Every critical section leaves `Control` consistent before anything that can panic,
        // so a poisoned lock still guards valid state.
        self.control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    /// The entry with `generation`, if it is still the one served (for a per-thread copy).
    pub(super) fn current_entry(&self, generation: u64) -> Option<Arc<Entry>> {
        self.lock()
            .entry
            .as_ref()
            .filter(|entry| entry.generation == generation)
            .cloned()
    }

    /// For a caller whose wait for a fetch ended in an error, maybe long ago: the failure the
    /// cache holds now, if it would give one to any caller (its backoff runs, and no usable
    /// token or newer fetch is there). A caller polled as its wait ends always finds its own
    /// fetch's failure so, and never waits for fetch after fetch. Not counted as a held error:
    /// for that caller it is usually the end of its own wait.
    pub(crate) fn failure_in_force(&self) -> Option<TokenError> {
        let control = self.lock();
        let now = Instant::now();
        let usable = control.entry.as_ref().is_some_and(|e| e.usable_at(now));
        let fetching = control.flight.as_ref().is_some_and(|f| !f.is_dead(now));
        match control.error_held_at(now) {
            Some(err) if !usable && !fetching => Some(err.clone()),
            _ => None,
        }
    }

    /// The slow path for a caller that neither waits nor fetches a missing token: the cached
    /// entry if it is usable now, after starting the refresh that is due (and republishing the
    /// state), as [`lookup`](Self::lookup) would.
    pub(crate) fn usable_entry(self: &Arc<Self>) -> Option<Arc<Entry>> {
        let mut control = self.lock();
        let now = Instant::now();
        control.reap_dead_flight(now);
        let served = self.serve_locked(&mut control, now);
        drop(control);
        let (entry, event) = served?;
        event::emit(event);
        Some(entry)
    }

    /// The slow path: decide, by the clock, what a caller gets.
    pub(crate) fn lookup(self: &Arc<Self>) -> Lookup {
        self.lookup_with(true)
    }

    /// [`lookup`](Self::lookup); with `will_wait` false, a `Wait` is not counted as a coalesced
    /// wait (the caller drops it).
    pub(crate) fn lookup_with(self: &Arc<Self>, will_wait: bool) -> Lookup {
        let (lookup, event) = self.lookup_locked(will_wait);
        event::emit(event);
        lookup
    }

    /// [`lookup_with`](Self::lookup_with) under the lock, with what it reports.
    fn lookup_locked(self: &Arc<Self>, will_wait: bool) -> (Lookup, Option<Event>) {
        let mut control = self.lock();
        let now = Instant::now();
        control.reap_dead_flight(now);
        if let Some((entry, event)) = self.serve_locked(&mut control, now) {
            return (Lookup::Ready(entry), event);
        }
        let expired = control.entry.take().map(|_| Event::Expired);
        self.publish_check(&control);
        if let Some(flight) = control.flight.as_mut() {
            let waiter = flight.waiter(self.config.fetch_timeout);
            if will_wait {
                if flight.unclaimed {
                    flight.unclaimed = false;
                } else {
                    control.stats.coalesced_waits += 1;
                }
            }
            return (Lookup::Wait(waiter), expired);
        }
        if let Some(err) = control.error_held_at(now).cloned() {
            control.stats.held_errors += 1;
            return (Lookup::Failed(err), expired);
        }
        let lookup = match self.spawn_fetch(&mut control, Origin::Normal) {
            Ok(flight) => Lookup::Wait(flight),
            Err(err) => Lookup::Failed(err),
        };
        (lookup, expired)
    }

    /// Under the lock: the served entry, if it is usable at `now`, after starting the refresh
    /// ahead that is due and republishing the state word; with what that reports.
    fn serve_locked(
        self: &Arc<Self>,
        control: &mut Control,
        now: Instant,
    ) -> Option<(Arc<Entry>, Option<Event>)> {
        let entry = control.entry.clone().filter(|entry| entry.usable_at(now))?;
        let mut event = None;
        if now >= control.refresh_ahead_from(&entry, now) && control.flight.is_none() {
            event = Some(Event::RefreshingAhead {
                remaining: entry.usable_until - now,
            });
            // Without a runtime the fetch cannot start; the token is still good.
            let _ = self.spawn_fetch(control, Origin::Normal);
        }
        self.publish_valid(control, &entry, now);
        Some((entry, event))
    }

    pub(super) fn finish(
        self: &Arc<Self>,
        result: Result<Token, TokenError>,
        origin: Origin,
        flight_id: u64,
    ) -> FlightResult {
        // An error's `source()` and `Drop` are user code: its chain is read before the lock,
        // and the error it replaces is dropped after it.
        let asked = result.as_ref().err().map_or(Duration::ZERO, asked_wait);
        let (result, event, replaced) = self.finish_locked(result, origin, flight_id, asked);
        drop(replaced);
        event.emit();
        result
    }

    /// [`finish`](Self::finish) under the lock, with what it reports and the error it replaced
    /// (to be dropped after the lock); `asked` is the wait the error asked for.
    fn finish_locked(
        self: &Arc<Self>,
        result: Result<Token, TokenError>,
        origin: Origin,
        flight_id: u64,
        asked: Duration,
    ) -> (FlightResult, Event, Option<TokenError>) {
        let mut control = self.lock();
        // A stalled fetch may finish after a newer one started: that one keeps running.
        if control.flight.as_ref().is_some_and(|f| f.id == flight_id) {
            control.flight = None;
        }
        let now = Instant::now();
        match result {
            Ok(token) => {
                control.generation += 1;
                let entry = Arc::new(self.schedule(&mut control, token, origin, now));
                control.recent.record(entry.generation, &entry.header);
                let cached = Event::Cached {
                    generation: entry.generation,
                    refresh_in: entry.refresh_at - now,
                };
                control.entry = Some(Arc::clone(&entry));
                control.failures = 0;
                let replaced = control.last_error.take();
                control.retry_at = None;
                control.ahead_after = None;
                self.publish_valid(&mut control, &entry, now);
                (Some(Ok(entry)), cached, replaced)
            }
            Err(err) => {
                control.stats.failed_fetches += 1;
                if control.stats.fetches > flight_id {
                    // Given up as stalled, this fetch was replaced: its failure says nothing
                    // about the newer fetch's token, and backing off (or holding this error)
                    // would delay that token's refresh.
                    let event = Event::StalledFetchFailed(err.clone());
                    return (Some(Err(err)), event, None);
                }
                control.failures = control.failures.saturating_add(1);
                // What the endpoint asked for, but never past the valid token's usable time:
                // waiting longer would run it out while the endpoint may be back.
                let mut asked = asked;
                if let Some(entry) = control.entry.as_ref().filter(|e| e.usable_at(now)) {
                    asked = asked.min(entry.usable_until.saturating_duration_since(now));
                }
                let delay = self.backoff(&mut control).max(asked);
                let failed = Event::FetchFailed {
                    error: err.clone(),
                    retry_in: delay,
                };
                control.retry_at = Some(now + delay);
                let replaced = control.last_error.replace(err.clone());
                match control.entry.clone() {
                    // A failed refresh never evicts a valid token.
                    Some(entry) => self.publish_valid(&mut control, &entry, now),
                    None => self.publish_check(&control),
                }
                (Some(Err(err)), failed, replaced)
            }
        }
    }
}

impl Control {
    /// When a refresh ahead of `entry` may start: its refresh time, but not before a failure's
    /// backoff or a cancelled refresh's wait is over (`now` stands in for either that is unset).
    pub(super) fn refresh_ahead_from(&self, entry: &Entry, now: Instant) -> Instant {
        entry
            .refresh_at
            .max(self.retry_at.unwrap_or(now))
            .max(self.ahead_after.unwrap_or(now))
    }

    /// The last fetch's failure, while its backoff runs at `now`: what a caller with no token
    /// gets instead of a new fetch.
    pub(super) fn error_held_at(&self, now: Instant) -> Option<&TokenError> {
        let backing_off = self.retry_at.is_some_and(|at| now < at);
        self.last_error.as_ref().filter(|_| backing_off)
    }

    /// Forgets a fetch whose task was dropped before it first ran, or that stalled.
    pub(super) fn reap_dead_flight(&mut self, now: Instant) {
        if self.flight.as_ref().is_some_and(|f| f.is_dead(now)) {
            self.flight = None;
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        super::registry::unregister(self.id);
        let control = self.control.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(alarm) = control.alarm.take() {
            alarm.handle.abort();
        }
    }
}
