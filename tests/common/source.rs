//! A scriptable `TokenSource` that counts what the cache asks of it.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use besender_auth::{Token, TokenSource};

#[derive(Debug)]
pub struct SourceDown;

impl fmt::Display for SourceDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the test token endpoint is down")
    }
}

impl std::error::Error for SourceDown {}

#[derive(Clone)]
pub struct TestSource {
    inner: Arc<Inner>,
}

struct Inner {
    calls: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    delay_ms: AtomicU64,
    lifetime_s: AtomicU64,
    down: AtomicBool,
}

/// Decrements the in-flight count even when the fetch is dropped half-way.
struct InFlight<'a>(&'a Inner);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TestSource {
    /// Tokens named `token-<n>` valid for `lifetime`; each fetch takes `delay`.
    pub fn new(lifetime: Duration, delay: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                calls: AtomicU64::new(0),
                in_flight: AtomicU64::new(0),
                max_in_flight: AtomicU64::new(0),
                delay_ms: AtomicU64::new(delay.as_millis() as u64),
                lifetime_s: AtomicU64::new(lifetime.as_secs()),
                down: AtomicBool::new(false),
            }),
        }
    }

    pub fn source(&self) -> impl TokenSource + Clone {
        let this = self.clone();
        move || {
            let this = this.clone();
            async move { this.fetch().await }
        }
    }

    async fn fetch(&self) -> Result<Token, SourceDown> {
        let inner = &*self.inner;
        let n = inner.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let now = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        inner.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let _in_flight = InFlight(inner);
        let delay = Duration::from_millis(inner.delay_ms.load(Ordering::SeqCst));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if inner.down.load(Ordering::SeqCst) {
            return Err(SourceDown);
        }
        let lifetime = Duration::from_secs(inner.lifetime_s.load(Ordering::SeqCst));
        Ok(Token::bearer(format!("token-{n}"), lifetime))
    }

    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> u64 {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> u64 {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.inner
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}
