//! `TokenCache`: one token shared by every caller, fetched once, refreshed ahead of expiry.

mod alarm;
mod builder;
mod event;
mod flight;
mod intern;
mod local;
mod recent;
mod refusal;
mod registry;
mod schedule;
mod state;

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use http::HeaderValue;
use tokio::time::Instant;

pub(crate) use self::builder::Config;
pub use self::builder::TokenCacheBuilder;
pub(crate) use self::refusal::RefusalCounters;
use self::state::{Lookup, Shared};
use super::{Token, TokenSource};
use crate::error::{TokenError, TokenErrorKind};

/// One token shared by every caller, fetched once, refreshed ahead of expiry. A cheap handle:
/// clones share one cache.
///
/// ```
/// use std::time::Duration;
/// use besender_auth::{Token, TokenCache};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let cache = TokenCache::new(|| async {
///     Ok::<_, std::io::Error>(Token::bearer("t0k3n", Duration::from_secs(3600)))
/// });
/// let first = cache.get().await.unwrap();
/// let again = cache.get().await.unwrap();
/// assert!(first.same_token(&again)); // one fetch, shared
/// assert_eq!(cache.stats().fetches, 1);
/// # }
/// ```
///
/// # How it behaves
/// - **Hot path.** While a valid token is cached, the layer's read
///   ([`cached_header`](TokenCache::cached_header)) takes no lock, allocates nothing, awaits
///   nothing and writes no memory shared between threads: one atomic load, then a clone of this
///   thread's copy of the header value, itself backed by never-freed bytes while a per-process
///   budget lasts (so the clone bumps no reference count). It reads no clock: a timer flags
///   expiry, except when the cache's timers run on a `current_thread` runtime, which runs none
///   while nobody blocks on it; then each read also compares the clock with the token's usable
///   time. [`get`](TokenCache::get) is as lock-free but always reads the clock and clones the
///   [`Token`] (shared reference counts).
/// - **Single flight.** When no valid token is cached, exactly one fetch runs, on a task of its
///   own; every caller awaits that fetch. Dropping a caller, the one that started the fetch
///   included, neither cancels it nor starts another. Fetching and waiting need a Tokio
///   runtime with timers enabled (`enable_all`, as `#[tokio::main]` does); a caller outside
///   any runtime gets [`TokenErrorKind::NoRuntime`](crate::TokenErrorKind::NoRuntime) whenever
///   it would have to wait.
/// - **Refresh ahead.** Inside a window before expiry (by default the last 10% of the lifetime,
///   at least 60 s, at most half the lifetime, moved earlier by up to half the window of random
///   jitter, never before half-way through the lifetime) a background refresh starts, at its
///   time, whether or not anyone is asking for the token then; every caller keeps the current
///   token and nobody waits. (On a `current_thread` runtime that nobody is driving, no timer
///   runs: the refresh then starts with the next read.)
/// - **Outages.** A failed refresh never evicts a valid token. Consecutive failures back off
///   exponentially with jitter (1 s doubling to 30 s). With no valid token at all, callers get the
///   last error at once until the next attempt is due, instead of one fetch each.
/// - **Invalidation by identity.** [`invalidate`](TokenCache::invalidate) evicts a token only if
///   it is the one cached now, and forces a refresh. Forced refreshes are limited to one per
///   minimum interval (5 s), so a refusal no new token can fix cannot loop; the first refusal of
///   a token from a normal fetch always gets its refresh.
///
/// All timing uses Tokio's clock, so tests can use `#[tokio::test(start_paused = true)]`.
#[derive(Clone)]
pub struct TokenCache {
    shared: Arc<Shared>,
}

/// A token as the layer stamps it: this thread's copy of the header value and the identity of
/// the cached token it came from.
#[derive(Clone)]
pub(crate) struct Lease {
    pub(crate) header: HeaderValue,
    pub(crate) generation: u64,
    /// When the cache stops using the token (its expiry, less the margin if one is set).
    pub(crate) usable_until: Instant,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// A future that resolves when the running fetch finishes.
pub(crate) type LeaseFuture =
    Pin<Box<dyn Future<Output = Result<Lease, TokenError>> + Send + Sync>>;

/// What [`TokenCache::acquire`] found.
pub(crate) enum Acquire {
    Ready(Lease),
    Failed(TokenError),
    Pending(LeaseFuture),
}

impl TokenCache {
    /// A cache over `source` with the default settings.
    pub fn new(source: impl TokenSource) -> Self {
        Self::builder(source).build()
    }

    /// Starts configuring a cache over `source`.
    pub fn builder(source: impl TokenSource) -> TokenCacheBuilder {
        TokenCacheBuilder {
            source: Box::new(source),
            config: Config::default(),
        }
    }

    /// A valid token: the cached one, or the result of the fetch that is running or that this
    /// call starts.
    ///
    /// # Errors
    /// The [`TokenError`] of the last fetch while no valid token is cached and the next attempt
    /// is not yet due, or of the fetch this call waited for.
    pub async fn get(&self) -> Result<Token, TokenError> {
        if let Some(token) = local::cached_token(&self.shared) {
            return Ok(token);
        }
        match self.shared.lookup() {
            Lookup::Ready(entry) => Ok(entry.token.clone()),
            Lookup::Failed(err) => Err(err),
            Lookup::Wait(flight) => flight.wait().await.map(|entry| entry.token.clone()),
        }
    }

    /// Evicts `token` if it is the token cached now, and starts a refresh.
    ///
    /// Call it when a server refused `token`. Returns whether it was evicted: `false` if another
    /// token is cached by now (a late refusal of an old token never evicts a new one), or if a
    /// forced refresh already ran within the minimum interval and `token` came from one that
    /// no successful retry has vouched for, or whose vouched-for exception was already used
    /// within the interval (a refusal that no new token can fix must not loop).
    pub fn invalidate(&self, token: &Token) -> bool {
        self.shared
            .invalidate(|entry| entry.token.same_token(token))
    }

    /// The `Authorization` header value (`Bearer <token>`, sensitive) of the cached token, if a
    /// valid one is cached; never waits, and never fetches a token that is not there (it may
    /// start the refresh of the cached one that is due).
    ///
    /// This is the read the layer makes for every request: no lock, no allocation, and no
    /// reference count shared between threads (each thread clones its own copy).
    pub fn cached_header(&self) -> Option<HeaderValue> {
        if let Some(header) = local::header(&self.shared) {
            return Some(header);
        }
        // The state word says "look" (a refresh is due, or, under `CLOCK`, the instant its alarm
        // stood for has passed): the token may still be valid. The slow path serves it, and
        // starts the refresh that is due, without waiting.
        let entry = self.shared.usable_entry()?;
        Some(local::lease_entry(&self.shared, &entry).header)
    }

    /// Counters of what the cache has done so far.
    pub fn stats(&self) -> CacheStats {
        self.shared.stats()
    }

    /// The layer's hot path: this thread's copy of the cached header value, if a valid token is
    /// cached.
    pub(crate) fn try_lease(&self) -> Option<Lease> {
        local::lease(&self.shared)
    }

    /// Whether `lease` is still the token the hot path serves: one atomic load, and, when the
    /// cache's alarm runs on a runtime that may not be driven (`current_thread`), a look at the
    /// clock.
    #[inline]
    pub(crate) fn is_usable(&self, lease: &Lease) -> bool {
        local::is_usable(&self.shared, lease)
    }

    /// The layer's slow path: like [`get`](Self::get), without awaiting unless a fetch runs.
    pub(crate) fn acquire(&self) -> Acquire {
        match self.try_lease() {
            Some(lease) => Acquire::Ready(lease),
            None => self.acquire_slow(),
        }
    }

    /// [`acquire`](Self::acquire) once the hot path found no token: the cache decides.
    fn acquire_slow(&self) -> Acquire {
        match self.shared.lookup() {
            Lookup::Ready(entry) => Acquire::Ready(local::lease_entry(&self.shared, &entry)),
            Lookup::Failed(err) => Acquire::Failed(err),
            Lookup::Wait(flight) => {
                let shared = Arc::clone(&self.shared);
                Acquire::Pending(Box::pin(async move {
                    let entry = flight.wait().await?;
                    Ok(local::lease_entry(&shared, &entry))
                }))
            }
        }
    }

    /// [`acquire`](Self::acquire) for a caller whose wait for a fetch ended in an error, possibly
    /// long ago: a service is polled again only when its caller wants it (a `Buffer` whose
    /// request was cancelled polls its service again only for the next request). The failure
    /// the cache holds while its backoff runs (see `Shared::failure_in_force`); otherwise what
    /// any caller gets now.
    pub(crate) fn acquire_after_failure(&self) -> Acquire {
        if let Some(lease) = self.try_lease() {
            return Acquire::Ready(lease);
        }
        match self.shared.failure_in_force() {
            Some(err) => Acquire::Failed(err),
            // The hot path was just tried: straight to the cache's decision.
            None => self.acquire_slow(),
        }
    }

    /// [`acquire`](Self::acquire) for a caller that cannot wait: `None` while a fetch runs
    /// (which this call may have started).
    pub(crate) fn acquire_now(&self) -> Option<Result<Lease, TokenError>> {
        if let Some(lease) = self.try_lease() {
            return Some(Ok(lease));
        }
        match self.shared.lookup_with(false) {
            Lookup::Ready(entry) => Some(Ok(local::lease_entry(&self.shared, &entry))),
            Lookup::Failed(err) => Some(Err(err)),
            Lookup::Wait(_) => None,
        }
    }

    /// For a request about to go out with `held`, which is no longer usable (a caller or the
    /// inner service kept it waiting): the cache's token at hand (starting the refresh that is
    /// due, without waiting), as `Some`; else `None`, keep `held`, while its time is not up (a
    /// refusal then gets a fresh one); past it, the error, rather than a token known to be dead.
    pub(crate) fn renew(&self, held: &Lease) -> Result<Option<Lease>, TokenError> {
        let err = match self.acquire_now() {
            Some(Ok(fresh)) => return Ok(Some(fresh)),
            Some(Err(err)) => err,
            None => TokenError::new(TokenErrorKind::Expired),
        };
        if Instant::now() < held.usable_until {
            Ok(None)
        } else {
            Err(err)
        }
    }

    /// This cache's id, for [`refused`](Self::refused).
    pub(crate) fn id(&self) -> u64 {
        self.shared.id
    }

    /// [`invalidate_generation`](Self::invalidate_generation) on the live cache with this id
    /// (nothing if it was dropped), and bumps its refusal counter; with `unreplayable`, also
    /// the counter of refusals not retried because the request could not be sent again.
    pub(crate) fn refused(cache_id: u64, generation: u64, unreplayable: bool) {
        if let Some(shared) = registry::find(cache_id) {
            RefusalCounters::bump(&shared.refusals.refusals);
            if unreplayable {
                RefusalCounters::bump(&shared.refusals.refused_replays);
            }
            TokenCache { shared }.invalidate_generation(generation);
        }
    }

    /// Counts a retry that was not refused, on the live cache with this id, and, if it was
    /// `accepted` (a success), records that the token of `generation` it carried fixed a
    /// refusal.
    pub(crate) fn retried(cache_id: u64, generation: u64, accepted: bool) {
        if let Some(shared) = registry::find(cache_id) {
            RefusalCounters::bump(&shared.refusals.successful_retries);
            if accepted {
                shared.retry_accepted(generation);
            }
        }
    }

    /// The layer's refusal counters.
    pub(crate) fn refusals(&self) -> &RefusalCounters {
        &self.shared.refusals
    }

    /// The header value of the token of `generation`, if it is one of the last few this cache
    /// made (see `recent.rs`): for a refused request, whose fresh token must differ from it.
    pub(crate) fn header_of_generation(&self, generation: u64) -> Option<HeaderValue> {
        self.shared.lock().recent.header_of(generation)
    }

    /// Like [`invalidate`](Self::invalidate), for the token a [`Lease`] with this generation
    /// came from.
    pub(crate) fn invalidate_generation(&self, generation: u64) -> bool {
        self.shared
            .invalidate(|entry| entry.generation == generation)
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Counters of what a [`TokenCache`] has done, from [`TokenCache::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Fetches started, of every kind.
    pub fetches: u64,
    /// Fetches that failed.
    pub failed_fetches: u64,
    /// Refusals that evicted the served token and forced a refresh ([`TokenCache::invalidate`]):
    /// a fetch started, or the one already running (a refresh ahead) joined.
    pub forced_refreshes: u64,
    /// Refusals that did not force a refresh because one ran within the minimum interval.
    pub rate_limited_refreshes: u64,
    /// Callers that waited for a fetch another caller started.
    pub coalesced_waits: u64,
    /// Callers answered with the error of an earlier fetch instead of starting a new one.
    pub held_errors: u64,
}

#[cfg(test)]
mod tests;
