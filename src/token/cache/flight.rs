//! Fetches: one at a time, on a task of their own, shared by every waiter.

use std::{
    future::{Future, poll_fn},
    pin::{Pin, pin},
    sync::{Arc, Mutex},
    task::Poll,
    time::Duration,
};

use tokio::{runtime::Handle, sync::watch, time::Instant};

use super::{
    schedule::{Entry, Origin},
    state::Shared,
};
use crate::{
    deadline::{Deadline, NoRuntime},
    error::{BoxError, TokenError, TokenErrorKind},
    token::{Token, TokenSource},
};

type FetchFuture = Pin<Box<dyn Future<Output = Result<Token, BoxError>> + Send>>;

/// A [`TokenSource`] with its types erased, so the cache (and the layer) need no type parameter.
pub(super) trait DynSource: Send + Sync {
    fn fetch(&self) -> FetchFuture;
}

impl<T: TokenSource> DynSource for T {
    fn fetch(&self) -> FetchFuture {
        let fetch = TokenSource::fetch(self);
        Box::pin(async move { fetch.await.map_err(Into::into) })
    }
}

/// What a fetch ends with, as its waiters see it; `None` while it runs.
pub(super) type FlightResult = Option<Result<Arc<Entry>, TokenError>>;

/// How long past its deadline a fetch may go on before it counts as stalled: its task may sit
/// on a runtime that nobody drives (one shared cache, several runtimes), and its own timeout is
/// a timer of that runtime.
const STALL_SLACK: Duration = Duration::from_secs(1);

/// The least wait before a refresh ahead cancelled with its runtime is tried again.
const MIN_REFRESH_RETRY: Duration = Duration::from_secs(1);

/// The fetch running now, as the cache records it.
#[derive(Clone)]
pub(super) struct RunningFlight {
    pub(super) id: u64,
    rx: watch::Receiver<FlightResult>,
    /// After this instant the fetch counts as stalled: waiters give up, and a new fetch may start.
    stalled_at: StallAt,
    /// Started by a refusal, with no caller waiting yet: its first waiter (the refused
    /// request's retry, or a caller after `invalidate`) waits for its own refresh, not a
    /// coalesced one.
    pub(super) unclaimed: bool,
}

/// When a fetch counts as stalled, shared by the cache and the fetch's waiters: a fetch whose
/// task first runs late moves it with its deadline (see `Shared::fetch`), and its waiters,
/// whose timers were set for the old instant, wait on to the new one.
#[derive(Clone)]
struct StallAt(Arc<Mutex<Instant>>);

impl StallAt {
    fn new(at: Instant) -> Self {
        Self(Arc::new(Mutex::new(at)))
    }

    fn get(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves it to `at`, if that is later.
    fn extend_to(&self, at: Instant) {
        let mut stalled_at = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *stalled_at = (*stalled_at).max(at);
    }
}

impl RunningFlight {
    /// Whether the fetch can no longer deliver: its task was dropped before it first ran, or it
    /// stalled.
    pub(super) fn is_dead(&self, now: Instant) -> bool {
        self.rx.has_changed().is_err() || now >= self.stalled_at.get()
    }

    /// The instant the fetch counts as stalled.
    pub(super) fn stalled_at(&self) -> Instant {
        self.stalled_at.get()
    }

    pub(super) fn waiter(&self, fetch_timeout: Duration) -> Flight {
        Flight {
            rx: self.rx.clone(),
            stalled_at: self.stalled_at.clone(),
            fetch_timeout,
        }
    }
}

/// A running fetch, as seen by a waiter.
pub(crate) struct Flight {
    rx: watch::Receiver<FlightResult>,
    stalled_at: StallAt,
    fetch_timeout: Duration,
}

impl Flight {
    /// Waits for the fetch to finish. A fetch whose runtime is not driven (one cache, several
    /// runtimes), or whose source blocks its thread, stalls, so a waiter gives up at
    /// `stalled_at`, on a timer of the runtime polling it (a [`Deadline`]: one kept from an
    /// earlier poll may be on a runtime that now sits idle or is gone). Like any Tokio timer, it
    /// needs a runtime with timers enabled. With no runtime at all there is no timer: the caller
    /// gets `NoRuntime`, as when no fetch runs.
    pub(crate) async fn wait(mut self) -> Result<Arc<Entry>, TokenError> {
        let stalled = TokenError::new(TokenErrorKind::Timeout {
            after: self.fetch_timeout,
        });
        let mut finished = pin!(self.rx.wait_for(Option::is_some));
        let mut deadline = Deadline::new(self.stalled_at.get());
        // Past the stall instant, one more turn of the scheduler before giving up: a clock that
        // jumped (a paused clock advanced) fires the fetch's timers and this one at once, and
        // the fetch's task, woken too, may be about to deliver, or to move the instant.
        let mut grace = true;
        poll_fn(|cx| {
            match finished.as_mut().poll(cx) {
                Poll::Ready(Ok(result)) => {
                    return Poll::Ready(
                        result
                            .clone()
                            .expect("wait_for returns only a finished result"),
                    );
                }
                // The task was dropped before it first ran (its runtime shut down).
                Poll::Ready(Err(_closed)) => {
                    return Poll::Ready(Err(TokenError::new(TokenErrorKind::Cancelled)));
                }
                Poll::Pending => {}
            }
            loop {
                match deadline.poll_elapsed(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(NoRuntime)) => {
                        return Poll::Ready(Err(TokenError::new(TokenErrorKind::NoRuntime)));
                    }
                }
                // A fetch that first ran late moved its stall instant: wait on to it, with a
                // grace turn again (the instant moves at most twice per fetch).
                let stalled_at = self.stalled_at.get();
                if stalled_at <= Instant::now() {
                    break;
                }
                deadline = Deadline::new(stalled_at);
                grace = true;
            }
            // Past it: one more turn of the scheduler first (see `grace`).
            if std::mem::take(&mut grace) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(Err(stalled.clone()))
        })
        .await
    }
}

impl Shared {
    pub(super) fn spawn_fetch(
        self: &Arc<Self>,
        control: &mut super::state::Control,
        origin: Origin,
    ) -> Result<Flight, TokenError> {
        let runtime =
            Handle::try_current().map_err(|_| TokenError::new(TokenErrorKind::NoRuntime))?;
        let (tx, rx) = watch::channel(None);
        control.stats.fetches += 1;
        let id = control.stats.fetches;
        let fetch_timeout = self.config.fetch_timeout;
        // One deadline, fixed now, for the source call and (plus the slack) for the waiters. A
        // task that first runs late moves both, but only under the lock and only while this is
        // still the cache's fetch (`start_fetch_clock`): otherwise its source could run past
        // the instant the cache gives it up and starts another fetch.
        let deadline = Instant::now() + fetch_timeout;
        let flight = RunningFlight {
            id,
            rx,
            stalled_at: StallAt::new(deadline + STALL_SLACK),
            unclaimed: origin == Origin::Forced,
        };
        let waiter = flight.waiter(fetch_timeout);
        control.flight = Some(flight);
        let shared = Arc::clone(self);
        runtime.spawn(async move {
            let mut guard = FlightGuard {
                shared,
                tx: Some(tx),
                origin,
                id,
            };
            let result = guard.shared.fetch(id, deadline).await;
            guard.finish(result);
        });
        Ok(waiter)
    }

    /// One call to the source, ended at `deadline` (the fetch timeout from when the fetch was
    /// started), checked for usability.
    ///
    /// A task that first runs late (its runtime was busy, or a paused clock was stepped before
    /// it ran, as a test stepping the clock by the hour does) has not called its source yet:
    /// while the fetch is still the cache's, it gets a whole fetch timeout from then, set under
    /// the lock with the waiters' stall instant moved with it, so that nobody reaps it and
    /// starts another meanwhile; given up (reaped as stalled, or replaced), it ends without
    /// calling the source. A fetch whose clock passes its deadline while it runs (a clock that
    /// jumps, a runtime that stalls) polls its source once more, if it is still the cache's, as
    /// `tokio::time::timeout` polls its future before its timer: an answer ready by then
    /// counts. So a fetch given up is never polled alongside the one that replaced it. (Its
    /// future is dropped only when its runtime next runs the task; and single flight assumes
    /// the runtimes sharing a cache share a clock, as real clocks do: `tokio::time::pause` is
    /// per runtime.)
    async fn fetch(&self, id: u64, deadline: Instant) -> Result<Token, TokenError> {
        let timeout = self.config.fetch_timeout;
        let timed_out = || TokenError::new(TokenErrorKind::Timeout { after: timeout });
        let Some(deadline) = self.start_fetch_clock(id, deadline) else {
            return Err(timed_out());
        };
        let mut source = self.source.fetch();
        let mut expiry = pin!(tokio::time::sleep_until(deadline));
        let result = std::future::poll_fn(|cx| {
            let late = Instant::now() > deadline;
            // Late and given up: never polled alongside the fetch that replaced it.
            if late && !self.claim_late_poll(id) {
                return Poll::Ready(None);
            }
            // The source before the clock, as `tokio::time::timeout` polls its future before
            // its timer: a token that is ready when the clock jumped past the deadline counts.
            if let Poll::Ready(result) = source.as_mut().poll(cx) {
                return Poll::Ready(Some(result));
            }
            if late {
                return Poll::Ready(None);
            }
            expiry.as_mut().poll(cx).map(|()| None)
        })
        .await;
        drop(source);
        let token = match result {
            Some(Ok(token)) => token,
            Some(Err(err)) => return Err(TokenError::from_source(err)),
            None => return Err(timed_out()),
        };
        token.check()?;
        Ok(token)
    }

    /// For a fetch's task as it first runs, before it calls its source: its deadline, at least
    /// a fetch timeout from now (a task that ran late, even by less than the timeout, gets the
    /// whole of it), with the stall instant moved with it; `None` if the fetch `id` is no
    /// longer the cache's, so its source is never called.
    fn start_fetch_clock(&self, id: u64, deadline: Instant) -> Option<Instant> {
        let deadline = deadline.max(Instant::now() + self.config.fetch_timeout);
        self.hold_off_stall(id, deadline + STALL_SLACK)
            .then_some(deadline)
    }

    /// For a fetch past its deadline, about to poll its source once more: `false` if the
    /// fetch `id` is no longer the cache's. Otherwise it is kept from counting as stalled for
    /// `STALL_SLACK` more, so that no caller can reap it and start another fetch while that
    /// one poll runs (it ends the fetch either way).
    fn claim_late_poll(&self, id: u64) -> bool {
        self.hold_off_stall(id, Instant::now() + STALL_SLACK)
    }

    /// Moves the stall instant of the fetch `id` to at least `until`, under the lock, if it is
    /// still the cache's fetch (not reaped as stalled, not replaced: either would have taken
    /// it out of `flight`); `false` otherwise.
    fn hold_off_stall(&self, id: u64, until: Instant) -> bool {
        let control = self.lock();
        match control.flight.as_ref() {
            Some(flight) if flight.id == id => {
                flight.stalled_at.extend_to(until);
                true
            }
            _ => false,
        }
    }
}

/// Ends every fetch in `finish`: normally with its result, or, if the task is dropped first
/// (its runtime shut down) or the source panicked, with an error, so waiters never hang and a
/// new fetch can start.
struct FlightGuard {
    shared: Arc<Shared>,
    tx: Option<watch::Sender<FlightResult>>,
    origin: Origin,
    id: u64,
}

impl FlightGuard {
    fn finish(&mut self, result: Result<Token, TokenError>) {
        if let Some(tx) = self.tx.take() {
            let outcome = self.shared.finish(result, self.origin, self.id);
            tx.send_replace(outcome);
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if self.tx.is_some() {
            if std::thread::panicking() {
                // A panicking source is a failure like any other, with backoff. (So is a
                // runtime without a timer: `enable_time` is needed for the fetch timeout.)
                let err = TokenError::from_source(
                    "the token fetch panicked (a bug in the token source, or a Tokio runtime \
                     built without `enable_time`)"
                        .into(),
                );
                self.finish(Err(err));
            } else {
                // Cancelled with its runtime: not the endpoint's fault, so no backoff. The next
                // caller re-decides on the slow path. A refresh ahead (the token still good)
                // is tried again only after half the token's remaining time (at least a
                // second): a synchronous wrapper that makes a runtime per call cancels every
                // refresh it starts, and retrying with each request would call the source once
                // per request; this way, a few times per token lifetime (about 15 for a 24 h
                // token), and a runtime shut down mid-refresh still leaves time for another.
                let mut control = self.shared.lock();
                if control.flight.as_ref().is_some_and(|f| f.id == self.id) {
                    control.flight = None;
                    let now = Instant::now();
                    if let Some(entry) = control.entry.as_ref().filter(|e| e.usable_at(now)) {
                        let left = entry.usable_until() - now;
                        let wait = (left / 2).max(MIN_REFRESH_RETRY).min(left);
                        control.ahead_after = Some(now + wait);
                    }
                }
                self.shared.publish_check(&control);
                drop(control);
                if let Some(tx) = self.tx.take() {
                    tx.send_replace(Some(Err(TokenError::new(TokenErrorKind::Cancelled))));
                }
            }
        }
    }
}
