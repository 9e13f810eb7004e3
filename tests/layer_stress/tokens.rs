//! The authorization server of a scenario: the token source the cache calls, which at random
//! delays, fails, stalls past the fetch timeout, returns the same token again or panics; and
//! the registry of the tokens it issued, which the API checks and revokes.

use std::{
    collections::BTreeMap,
    ops::Range,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use besender_auth::{Token, TokenSource};
use tokio::time::Instant;

use crate::{
    common::source::SourceDown,
    ledger::{FailedFetch, Ledger},
    rng::{Rng, Stream},
    scenario::{Revocation, Scenario},
};

/// The message of the source's deliberate panics (the panic hook keeps them quiet).
pub const DELIBERATE_PANIC: &str = "layer_stress: the token source panics on purpose";

/// What one call of the source does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceAct {
    /// A token it never issued before.
    Fresh,
    /// The token it issued last, again (a server may answer a refresh with it).
    Same,
    Fail,
    /// Takes longer than the cache's fetch timeout.
    Stall,
    Panic,
}

#[derive(Clone, Debug)]
pub struct SourcePlan {
    pub acts: Vec<(u32, SourceAct)>,
    /// How many calls in a hundred answer at once; the others take up to `delay_max`.
    pub instant_percent: u64,
    pub delay_max: Duration,
    pub lifetime: Range<Duration>,
}

/// A token text the source issued. Re-issued (`SourceAct::Same`), a text keeps the latest
/// times of its issues, so that the checks never call a token dead that one of them allows.
struct Issued {
    expires_at: Instant,
    usable_until: Instant,
    revoked: bool,
}

#[derive(Default)]
struct Registry {
    issued: BTreeMap<String, Issued>,
    newest: Option<String>,
    calls: u64,
}

pub struct Tokens {
    seed: u64,
    plan: SourcePlan,
    /// The cache's expiry margin: a token is usable until its expiry less this (at most a
    /// quarter of its lifetime), as `TokenCacheBuilder::expiry_margin` documents.
    margin: Duration,
    fetch_timeout: Duration,
    refuse_all: Option<Range<Instant>>,
    /// After the scenario's active part: every call returns a fresh token at once.
    healthy: AtomicBool,
    /// Calls under way (the cache drops a call's future at its fetch timeout).
    calling: AtomicUsize,
    ledger: Arc<Ledger>,
    registry: Mutex<Registry>,
}

/// Counts a call of the source until its future is done or dropped.
struct Calling<'a>(&'a AtomicUsize);

impl Drop for Calling<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Tokens {
    pub fn new(sc: &Scenario, t0: Instant, ledger: Arc<Ledger>) -> Arc<Self> {
        Arc::new(Tokens {
            seed: sc.seed,
            plan: sc.source.clone(),
            margin: sc.cache.expiry_margin,
            fetch_timeout: sc.cache.fetch_timeout,
            refuse_all: sc.refuse_all.clone().map(|p| t0 + p.start..t0 + p.end),
            healthy: AtomicBool::new(false),
            calling: AtomicUsize::new(0),
            ledger,
            registry: Mutex::default(),
        })
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A deliberate panic never happens under this lock.
        self.registry.lock().unwrap()
    }

    /// The source for the layer's cache: a closure, cloning what its future needs per call.
    pub fn source(self: &Arc<Self>) -> impl TokenSource {
        let tokens = Arc::clone(self);
        move || {
            let tokens = Arc::clone(&tokens);
            async move { tokens.fetch().await }
        }
    }

    /// One call: what it does is drawn from a stream of its own, by its number.
    async fn fetch(&self) -> Result<Token, SourceDown> {
        let n = {
            let mut registry = self.registry();
            registry.calls += 1;
            registry.calls
        };
        self.ledger.source_called();
        self.calling.fetch_add(1, Ordering::SeqCst);
        let _calling = Calling(&self.calling);
        let mut rng = Rng::stream(self.seed, Stream::Source, n);
        let (act, delay) = self.decide(&mut rng);
        if act == SourceAct::Stall {
            // The cache gives up at its fetch timeout, counted from now (the fetch's task is
            // spawned and first polled at this instant).
            let at = Instant::now() + self.fetch_timeout;
            self.ledger.fetch_failed(at, FailedFetch::TimedOut);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match act {
            // A stalled call is given up by the cache before it gets here.
            SourceAct::Fail | SourceAct::Stall => {
                self.ledger.fetch_failed(Instant::now(), FailedFetch::Down);
                Err(SourceDown)
            }
            SourceAct::Panic => {
                self.ledger
                    .fetch_failed(Instant::now(), FailedFetch::Panicked);
                panic!("{DELIBERATE_PANIC}");
            }
            SourceAct::Fresh | SourceAct::Same => {
                let lifetime = self.plan.lifetime.start
                    + (self.plan.lifetime.end - self.plan.lifetime.start)
                        .mul_f64(rng.range(0, 1000) as f64 / 1000.0);
                Ok(self.issue(act, n, lifetime))
            }
        }
    }

    /// What a call does, and how long it takes first.
    fn decide(&self, rng: &mut Rng) -> (SourceAct, Duration) {
        let now = Instant::now();
        if self.healthy.load(Ordering::SeqCst) {
            return (SourceAct::Fresh, Duration::ZERO);
        }
        let act = rng.pick(&self.plan.acts);
        let delay = match rng.chance(self.plan.instant_percent) {
            true => Duration::ZERO,
            false => self
                .plan
                .delay_max
                .mul_f64(rng.range(0, 1000) as f64 / 1000.0),
        };
        // While the API refuses every token, the source works (slowly, perhaps): the calls
        // counted then are the forced refreshes the refusals cost, which the cache bounds.
        if self.refuse_all.as_ref().is_some_and(|p| p.contains(&now)) {
            let act = if act == SourceAct::Same {
                act
            } else {
                SourceAct::Fresh
            };
            return (act, delay.min(self.fetch_timeout / 2));
        }
        match act {
            SourceAct::Stall => (act, self.fetch_timeout + delay + Duration::from_millis(1)),
            _ => (act, delay),
        }
    }

    fn issue(&self, act: SourceAct, n: u64, lifetime: Duration) -> Token {
        let mut registry = self.registry();
        let text = match (&registry.newest, act) {
            (Some(newest), SourceAct::Same) => newest.clone(),
            _ => format!("tok-{n}"),
        };
        let token = Token::bearer(&text, lifetime);
        let now = Instant::now();
        let expires_at = token.expires_at();
        let lifetime = expires_at.saturating_duration_since(now);
        let usable_until = expires_at - self.margin.min(lifetime / 4);
        let issued = registry.issued.entry(text.clone()).or_insert(Issued {
            expires_at,
            usable_until,
            revoked: false,
        });
        issued.expires_at = issued.expires_at.max(expires_at);
        issued.usable_until = issued.usable_until.max(usable_until);
        registry.newest = Some(text);
        token
    }

    /// Whether the API takes `token` at `now`.
    pub fn accepts(&self, token: &str, now: Instant) -> bool {
        let refusing_all = self.refuse_all.as_ref().is_some_and(|p| p.contains(&now));
        !refusing_all
            && self
                .registry()
                .issued
                .get(token)
                .is_some_and(|t| !t.revoked && now < t.expires_at)
    }

    /// Until when the layer may send `token`, if the source issued it.
    pub fn usable_until(&self, token: &str) -> Option<Instant> {
        self.registry().issued.get(token).map(|t| t.usable_until)
    }

    pub fn revoke(&self, which: Revocation) {
        let mut registry = self.registry();
        let Registry { issued, newest, .. } = &mut *registry;
        match which {
            Revocation::Newest => {
                if let Some(token) = newest.as_ref().and_then(|n| issued.get_mut(n)) {
                    token.revoked = true;
                }
            }
            Revocation::All => issued.values_mut().for_each(|t| t.revoked = true),
        }
    }

    /// Calls of the source under way.
    pub fn calling(&self) -> usize {
        self.calling.load(Ordering::SeqCst)
    }

    pub fn set_healthy(&self) {
        self.healthy.store(true, Ordering::SeqCst);
    }
}
