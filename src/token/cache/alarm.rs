//! Alarms, the timers that set `CHECK` when something becomes due, and the publishing of the
//! state word they guard; see the invariants in `state.rs`.

use std::sync::{Arc, Weak, atomic::Ordering};

use tokio::{
    runtime::{Handle, RuntimeFlavor},
    task::AbortHandle,
    time::Instant,
};

use super::{
    schedule::Entry,
    state::{CHECK, CLOCK, Control, GENERATION_SHIFT, Shared},
};

/// The alarm armed now.
pub(super) struct Alarm {
    pub(super) at: Instant,
    pub(super) seq: u64,
    pub(super) handle: AbortHandle,
    /// The alarm's runtime drives its timers on its own (a multi-thread runtime's workers),
    /// rather than only while a caller blocks on it (`current_thread`).
    pub(super) driven: bool,
}

impl Shared {
    /// Ensures a live alarm fires at `at`. Returns whether its runtime drives its timers on its
    /// own (see [`Alarm::driven`]), or `None` if there is no runtime to run it on.
    pub(super) fn arm(self: &Arc<Self>, control: &mut Control, at: Instant) -> Option<bool> {
        // `fired` only grows (`fetch_max`): an alarm is live until one as new or newer fired.
        let live = |alarm: &Alarm| self.fired.load(Ordering::SeqCst) < alarm.seq;
        if let Some(alarm) = control.alarm.as_ref().filter(|a| a.at == at && live(a)) {
            return Some(alarm.driven);
        }
        let runtime = Handle::try_current().ok()?;
        // A multi-thread runtime's workers drive its timers; any other flavor (`current_thread`,
        // or one added later) is treated as one that may not be driven: its readers look at the
        // clock.
        let driven = matches!(runtime.runtime_flavor(), RuntimeFlavor::MultiThread);
        if let Some(old) = control.alarm.take() {
            old.handle.abort();
        }
        // `armed` is written only here, under the lock: it is also the sequence counter.
        let seq = self.armed.load(Ordering::SeqCst) + 1;
        self.armed.store(seq, Ordering::SeqCst);
        // Made before the task, so that it runs even if the task is dropped unpolled.
        let guard = AlarmGuard {
            shared: Arc::downgrade(self),
            seq,
        };
        let handle = runtime
            .spawn(async move {
                tokio::time::sleep_until(at).await;
                // Due now: start what is due (a refresh ahead, a fetch after a backoff) here,
                // as the next reader would, so that a service idle at its refresh time still
                // refreshes ahead. Then the guard sets `CHECK`, unless this armed a newer alarm.
                if let Some(shared) = guard.shared.upgrade() {
                    let _ = shared.usable_entry();
                }
                drop(guard);
            })
            .abort_handle();
        control.alarm = Some(Alarm {
            at,
            seq,
            handle,
            driven,
        });
        Some(driven)
    }
}

/// Sets `CHECK` when its alarm fires or is dropped unfired (runtime shutdown, even before the
/// task first ran), unless a newer alarm replaced it. Takes no lock: a runtime that is shutting
/// down may drop a new task inside `spawn`, while the spawner holds the lock.
struct AlarmGuard {
    shared: Weak<Shared>,
    seq: u64,
}

impl Drop for AlarmGuard {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        if shared.armed.load(Ordering::SeqCst) == self.seq {
            // `fetch_max`, not a store: a guard preempted between the check above and here must
            // not take `fired` back below a newer alarm that fired meanwhile (which would make
            // that dead alarm look live).
            shared.fired.fetch_max(self.seq, Ordering::SeqCst);
            shared.state.fetch_or(CHECK, Ordering::SeqCst);
        }
    }
}

impl Shared {
    /// Lets the hot path serve `entry` until the next instant something is due, by arming an
    /// alarm for that instant. Without a runtime no alarm can be armed: callers then keep taking
    /// the slow path, which reads the clock itself.
    pub(super) fn publish_valid(
        self: &Arc<Self>,
        control: &mut Control,
        entry: &Arc<Entry>,
        now: Instant,
    ) {
        if now >= entry.usable_until {
            // Reached when a refresh fails after the token's usable time ended.
            control.entry = None;
            self.publish_check(control);
            return;
        }
        // Next due: while a refresh runs, expiry, or the instant the refresh counts as stalled
        // if that comes first (its runtime may sit idle: readers then take the slow path, which
        // gives it up and starts another, instead of serving the token until it runs out with
        // no refresh coming); otherwise the moment a refresh may start.
        let next = match &control.flight {
            Some(flight) => entry.usable_until.min(flight.stalled_at()),
            None => control
                .refresh_ahead_from(entry, now)
                .min(entry.usable_until),
        };
        let Some(driven) = self.arm(control, next) else {
            self.publish_check(control);
            return;
        };
        let clock = if driven {
            0
        } else {
            // Before the state that tells readers to look at it (its `SeqCst` store releases it).
            self.clock_due
                .store(self.nanos_since_base(next), Ordering::Relaxed);
            CLOCK
        };
        self.state.store(
            entry.generation << GENERATION_SHIFT | clock,
            Ordering::SeqCst,
        );
        // If the alarm already fired or died, its `CHECK` came before this store: set it again.
        let seq = control.alarm.as_ref().map(|alarm| alarm.seq);
        if seq.is_some_and(|seq| self.fired.load(Ordering::SeqCst) >= seq) {
            self.state.fetch_or(CHECK, Ordering::SeqCst);
        }
    }

    /// Whether `now` is before the instant the armed alarm is due; read under `CLOCK` only.
    #[inline]
    pub(super) fn before_clock_due(&self, now: Instant) -> bool {
        self.nanos_since_base(now) < self.clock_due.load(Ordering::Relaxed)
    }

    pub(super) fn nanos_since_base(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    pub(super) fn publish_check(&self, control: &Control) {
        let generation = control.entry.as_ref().map_or(0, |e| e.generation);
        self.state
            .store(generation << GENERATION_SHIFT | CHECK, Ordering::SeqCst);
    }
}
