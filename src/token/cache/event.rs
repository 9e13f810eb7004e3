//! What the cache tells `tracing`, said only once its lock is released.
//!
//! A subscriber is user code, and so is the `Display` of a source's error: either may call
//! back into the cache (a layer that attaches `TokenCache::stats` to every event, a log shipper
//! sending through the authenticated client). Under the cache's lock, which is not reentrant,
//! that call would deadlock the thread. So a transition made under the lock returns the event
//! it has to report, and its caller emits it after the guard is dropped.

use std::time::Duration;

use crate::error::TokenError;

/// One thing worth a log line, made under the lock and emitted after it.
#[must_use = "an event is emitted with `emit`, once the lock is released"]
pub(super) enum Event {
    RefreshingAhead {
        remaining: Duration,
    },
    Expired,
    Cached {
        generation: u64,
        refresh_in: Duration,
    },
    StalledFetchFailed(TokenError),
    FetchFailed {
        error: TokenError,
        retry_in: Duration,
    },
    RefusedRecently,
    Refused {
        generation: u64,
    },
}

impl Event {
    /// Emits the event. Call it with no lock of the cache held.
    pub(super) fn emit(self) {
        match self {
            Event::RefreshingAhead { remaining } => {
                tracing::debug!(?remaining, "refreshing the access token ahead of expiry")
            }
            Event::Expired => tracing::debug!("the cached access token expired"),
            Event::Cached {
                generation,
                refresh_in,
            } => tracing::debug!(generation, ?refresh_in, "access token cached"),
            Event::StalledFetchFailed(error) => {
                tracing::debug!(error = %error, "a fetch given up as stalled failed")
            }
            Event::FetchFailed { error, retry_in } => {
                tracing::warn!(error = %error, ?retry_in, "token fetch failed")
            }
            Event::RefusedRecently => tracing::debug!(
                "refused token came from a forced refresh moments ago; not refreshing again"
            ),
            Event::Refused { generation } => {
                tracing::debug!(generation, "access token refused; refreshing")
            }
        }
    }
}

/// Emits `event`, if any: for the callers of a locked transition, after its guard is gone.
pub(super) fn emit(event: Option<Event>) {
    if let Some(event) = event {
        event.emit();
    }
}
