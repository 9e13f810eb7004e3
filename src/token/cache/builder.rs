//! [`TokenCacheBuilder`]: a cache's settings, each default with its reason.

use std::{fmt, time::Duration};

use super::{TokenCache, flight::DynSource, state::Shared};

/// Settings of a [`TokenCache`]; see [`TokenCacheBuilder`] for each default and its reason.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) refresh_fraction: f64,
    pub(crate) min_refresh_window: Duration,
    pub(crate) refresh_jitter: f64,
    pub(crate) expiry_margin: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) error_hold: Duration,
    pub(crate) min_forced_interval: Duration,
    pub(crate) fetch_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            refresh_fraction: 0.10,
            min_refresh_window: Duration::from_secs(60),
            refresh_jitter: 0.5,
            expiry_margin: Duration::ZERO,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            error_hold: Duration::from_secs(1),
            min_forced_interval: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(30),
        }
    }
}

/// Configures a [`TokenCache`]; made by [`TokenCache::builder`].
///
/// ```
/// use std::time::Duration;
/// use besender_auth::{Token, TokenCache};
///
/// let cache = TokenCache::builder(Token::bearer_static("abc"))
///     .refresh_window(0.2, Duration::from_secs(300))
///     .backoff(Duration::from_millis(500), Duration::from_secs(60))
///     .build();
/// ```
pub struct TokenCacheBuilder {
    pub(super) source: Box<dyn DynSource>,
    pub(super) config: Config,
}

impl fmt::Debug for TokenCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCacheBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Every duration setting is capped at a year, so that no deadline computed from one can overflow.
fn capped(duration: Duration) -> Duration {
    duration.min(crate::MAX_TOKEN_LIFETIME)
}

impl TokenCacheBuilder {
    /// When to refresh ahead: in the last `fraction` of a token's lifetime, but at least
    /// `min_window` before expiry (and never earlier than half-way through the lifetime).
    ///
    /// Default: 10% and 60 s, so a 24 h Besender token is refreshed about 2.4 h before it
    /// expires. The anchors range from 10 s (Go x/oauth2, AWS's lazy cache) to half the lifetime
    /// (MSAL); a long window leaves hours to ride out an outage of the token endpoint, and the
    /// 60 s floor keeps short-lived tokens from being refreshed at the last second.
    /// `fraction` is clamped to 0..=0.5.
    pub fn refresh_window(mut self, fraction: f64, min_window: Duration) -> Self {
        self.config.refresh_fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 0.5)
        };
        self.config.min_refresh_window = capped(min_window);
        self
    }

    /// Random jitter: the refresh starts earlier by up to `fraction` of the window, so a fleet
    /// that fetched at the same moment does not refresh in the same second. Default 0.5;
    /// clamped to 0..=1.
    pub fn refresh_jitter(mut self, fraction: f64) -> Self {
        self.config.refresh_jitter = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// A token counts as expired this long before its stated expiry (at most a quarter of its
    /// lifetime), for requests that take long to reach the server. Default zero: the refresh
    /// ahead (at least 60 s before expiry, or half-way through a shorter lifetime) already
    /// leaves the headroom, and a token is served until it expires when no refresh succeeds (a
    /// failed refresh never evicts a valid token). [`BesenderTokenSource`] counts expiry from
    /// when its token request was sent, so the server's is later still; a custom source that
    /// counts it from when the answer arrived may want a small margin.
    ///
    /// [`BesenderTokenSource`]: crate::BesenderTokenSource
    pub fn expiry_margin(mut self, margin: Duration) -> Self {
        self.config.expiry_margin = capped(margin);
        self
    }

    /// Delay before the next fetch after consecutive failures: `initial`, doubling up to `max`,
    /// each with 50% random jitter. Default 1 s to 30 s: fast enough to notice recovery within
    /// half a minute, slow enough that a down endpoint sees a few requests per minute from each
    /// process, however busy.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.config.backoff_initial = capped(initial);
        self.config.backoff_max = capped(max.max(initial));
        self
    }

    /// With no valid token, the last error is returned to callers for at least this long before
    /// a new fetch is tried (longer once the backoff has grown). Default 1 s, within the 1-5 s
    /// that AWS's cache holds unrecoverable errors.
    pub fn error_hold(mut self, hold: Duration) -> Self {
        self.config.error_hold = capped(hold);
        self
    }

    /// At most one forced refresh ([`TokenCache::invalidate`]) per this interval, except that
    /// the first refusal of a normally fetched token always refreshes, and so does (once per
    /// interval) a refusal of a token from a forced refresh whose retry the server accepted (it
    /// fixed a refusal, so this one is a new revocation). Default 5 s: a token revoked by the
    /// server is replaced at once, even twice in a row, while refusals no token can fix cost at
    /// most two token calls per 5 s (one where no retry is ever accepted).
    pub fn min_forced_refresh_interval(mut self, interval: Duration) -> Self {
        self.config.min_forced_interval = capped(interval);
        self
    }

    /// Gives up on a fetch after this long, so a hanging source fails callers instead of
    /// hanging them (waiters give up a second later on their own timers, even if the fetch's
    /// runtime is not driven). Default 30 s, above [`BesenderTokenSource`](crate::BesenderTokenSource)'s own 10 s
    /// timeout so that its more precise error wins.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.config.fetch_timeout = capped(timeout);
        self
    }

    /// Builds the cache. Nothing is fetched until the first caller asks.
    pub fn build(self) -> TokenCache {
        TokenCache {
            shared: Shared::new(self.source, self.config),
        }
    }
}
