//! A fetched token's entry, when it is refreshed and stopped being used, and how long to back
//! off after a failed fetch: the cache's timing policy, apart from its state machine
//! (`state.rs`).

use std::{sync::atomic::AtomicBool, time::Duration};

use http::HeaderValue;
use tokio::time::Instant;

use super::state::{Control, Shared};
use crate::{
    error::{BesenderError, TokenError},
    token::Token,
};

/// How a token was obtained: forced refreshes are rate-limited, normal fetches are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Normal,
    Forced,
}

/// One fetched token and its schedule.
pub(crate) struct Entry {
    /// Identity of this fetch; never reused within a cache.
    pub(crate) generation: u64,
    pub(crate) token: Token,
    /// The token's header value (checked valid when the entry was made); interned when the
    /// budget allows, so that clones share no reference count.
    pub(super) header: HeaderValue,
    pub(super) interned: bool,
    pub(super) origin: Origin,
    /// A retry carrying this token was accepted: it fixed a refusal, so a later refusal of it
    /// is a new revocation, not a refusal no token can fix (see [`Shared::invalidate`]).
    pub(super) retry_accepted: AtomicBool,
    pub(super) refresh_at: Instant,
    pub(super) usable_until: Instant,
}

impl Entry {
    /// Until when the token may be used.
    pub(super) fn usable_until(&self) -> Instant {
        self.usable_until
    }

    /// Whether the token may still be used at `now`.
    pub(super) fn usable_at(&self, now: Instant) -> bool {
        now < self.usable_until
    }
}

impl Shared {
    /// The cache's view of a fresh token: when to refresh it and when to stop using it.
    pub(super) fn schedule(
        &self,
        control: &mut Control,
        token: Token,
        origin: Origin,
        now: Instant,
    ) -> Entry {
        let config = &self.config;
        let expires_at = token.expires_at();
        let lifetime = expires_at.saturating_duration_since(now);
        let margin = config.expiry_margin.min(lifetime / 4);
        let usable_until = expires_at - margin;
        let window = lifetime
            .mul_f64(config.refresh_fraction)
            .max(config.min_refresh_window)
            .min(lifetime / 2);
        let spread = config.refresh_jitter * control.random_unit();
        let jitter = window.mul_f64(spread);
        // Margin, window and jitter add up to more than half of a short lifetime (a 20 s token:
        // a window of 10 s and up to 5 s of jitter): the refresh never starts before half-way,
        // as documented, so a short-lived token is not fetched again right after it arrived.
        // The margin is at most a quarter of the lifetime, so half-way is still before
        // `usable_until`. There the jitter moves the refresh later instead, within the first
        // half of what is left, so that a fleet that fetched together does not refresh in
        // lockstep.
        let half_way = now + lifetime / 2;
        let refresh_at = match usable_until.checked_sub(window + jitter) {
            Some(at) if at >= half_way => at,
            _ => {
                half_way
                    + usable_until
                        .saturating_duration_since(half_way)
                        .mul_f64(spread / 2.0)
            }
        }
        .min(usable_until);
        let header = token
            .header_value()
            .expect("fetch() checked the header before the token reached the cache");
        let (header, interned) = match super::intern::intern(header) {
            Some(interned) => (interned, true),
            None => (header.clone(), false),
        };
        Entry {
            generation: control.generation,
            token,
            header,
            interned,
            origin,
            retry_accepted: AtomicBool::new(false),
            refresh_at,
            usable_until,
        }
    }

    /// The delay before the next fetch after `control.failures` consecutive failures (the
    /// caller also honours what the endpoint asked for: see [`asked_wait`]).
    pub(super) fn backoff(&self, control: &mut Control) -> Duration {
        let config = &self.config;
        let doublings = control.failures.saturating_sub(1).min(30);
        let delay = config
            .backoff_initial
            .saturating_mul(1 << doublings)
            .min(config.backoff_max);
        // 50% jitter: between half the delay and all of it.
        let jittered = delay.mul_f64(0.5 + 0.5 * control.random_unit());
        jittered.max(config.error_hold)
    }
}

impl Control {
    /// A pseudo-random number in [0, 1) for jitter (xorshift64*; not for cryptography).
    pub(super) fn random_unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (r >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The longest `Retry-After` honoured: a server that asks for hours (or sends a date far off)
/// must not stop a process from ever asking again.
const MAX_ASKED_WAIT: Duration = Duration::from_secs(10 * 60);

/// The wait a token endpoint asked for with its refusal (`Retry-After`), found anywhere in the
/// error's chain (a custom source may wrap a [`BesenderError`]); capped at [`MAX_ASKED_WAIT`].
pub(super) fn asked_wait(err: &TokenError) -> Duration {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(err) = next {
        if let Some(besender) = err.downcast_ref::<BesenderError>() {
            return besender
                .retry_after()
                .map_or(Duration::ZERO, |wait| wait.min(MAX_ASKED_WAIT));
        }
        next = err.source();
    }
    Duration::ZERO
}
