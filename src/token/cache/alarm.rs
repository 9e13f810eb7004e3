//! Alarms: the timer that sets `CHECK` when something becomes due; see the invariants in
//! `state.rs`.

use std::sync::{Arc, Weak, atomic::Ordering};

use tokio::{
    runtime::{Handle, RuntimeFlavor},
    task::AbortHandle,
    time::Instant,
};

use super::state::{CHECK, Control, Shared};

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
                let _guard = guard;
                tokio::time::sleep_until(at).await;
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
