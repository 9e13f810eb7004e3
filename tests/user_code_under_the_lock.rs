//! User code never runs under the cache's lock, which is not reentrant (kube #829/#835: a lock
//! taken again while held): not a `tracing` subscriber, not a source error's `source()` or
//! `Drop`. Each may call back into the cache (here `TokenCache::stats`, which takes the lock);
//! each test runs on a thread of its own and reports a deadlock after 10 s.
//!
//! A binary of its own, with a global subscriber: tracing caches per call site, for the whole
//! process, whether any subscriber wants its events, and a test elsewhere in the same process,
//! without one, could make this test's events go unrecorded.

mod common;

use std::{
    fmt,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use besender_auth::{Token, TokenCache};
use common::{settle, source::SourceDown};
use tokio::time::advance;

/// An error whose `source()` reads the cache's stats (a user error type that logs, meters, or
/// lazily builds its cause from shared state).
#[derive(Debug)]
struct SourceReadsCache(Arc<OnceLock<TokenCache>>);

impl fmt::Display for SourceReadsCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("down")
    }
}

impl std::error::Error for SourceReadsCache {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        if let Some(cache) = self.0.get() {
            let _ = cache.stats();
        }
        None
    }
}

/// An error whose `Drop` reads the cache's stats (a metrics guard, say).
#[derive(Debug)]
struct DropReadsCache(Arc<OnceLock<TokenCache>>);

impl fmt::Display for DropReadsCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("down")
    }
}

impl std::error::Error for DropReadsCache {}

impl Drop for DropReadsCache {
    fn drop(&mut self) {
        if let Some(cache) = self.0.get() {
            let _ = cache.stats();
        }
    }
}

fn on_own_thread(f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("deadlocked: user code ran under the cache's lock");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A failed fetch's error is looked at for the wait it asks for (`Retry-After`, by walking its
/// `source()` chain) before the lock is taken.
#[test]
fn an_error_whose_source_reads_the_cache_does_not_deadlock_it() {
    on_own_thread(|| {
        let slot: Arc<OnceLock<TokenCache>> = Arc::default();
        let for_source = Arc::clone(&slot);
        let cache = TokenCache::new(move || {
            let err = SourceReadsCache(Arc::clone(&for_source));
            async move { Err::<Token, _>(err) }
        });
        slot.set(cache.clone()).unwrap();
        runtime().block_on(async {
            assert!(cache.get().await.is_err());
        });
    });
}

/// The error a fetch replaces is dropped after the lock is released: the cache holds its last
/// copy once callers have dropped theirs.
#[test]
fn an_error_whose_drop_reads_the_cache_does_not_deadlock_it() {
    on_own_thread(|| {
        let slot: Arc<OnceLock<TokenCache>> = Arc::default();
        let for_source = Arc::clone(&slot);
        let calls = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&calls);
        let cache = TokenCache::new(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let err = DropReadsCache(Arc::clone(&for_source));
            async move {
                match n {
                    0 => Err(err),
                    _ => Ok(Token::bearer("t", Duration::from_secs(3600))),
                }
            }
        });
        slot.set(cache.clone()).unwrap();
        runtime().block_on(async {
            // The caller's copy of the error is dropped here; the cache keeps the last one.
            assert!(cache.get().await.is_err());
            tokio::time::advance(Duration::from_secs(5)).await;
            // The next fetch succeeds and clears `last_error` under the lock.
            assert!(cache.get().await.is_ok());
        });
    });
}

/// Records each event's message, and reads the cache's stats as it does (a subscriber that
/// attaches them to every event, say).
struct StatsOnEveryEvent {
    cache: TokenCache,
    messages: Arc<std::sync::Mutex<Vec<String>>>,
}

struct Message<'a>(&'a mut String);

impl tracing::field::Visit for Message<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            *self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for StatsOnEveryEvent {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let _ = self.cache.stats();
        let mut message = String::new();
        event.record(&mut Message(&mut message));
        self.messages.lock().unwrap().push(message);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// kube #829/#835 again: a subscriber is user code, and may call back into the cache (here it
/// reads the stats with every event). The cache's lock is not reentrant, so the cache reports
/// nothing while it holds it: a fetch, a refresh ahead, a failure, a refusal, a rate-limited
/// refusal and an expiry each report, and none deadlocks the thread.
#[test]
fn a_subscriber_that_reads_the_cache_on_every_event_does_not_deadlock_it() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = runtime();
        let calls = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&calls);
        let cache = TokenCache::builder(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    1 => Err(SourceDown),
                    _ => Ok(Token::bearer(format!("t{n}"), Duration::from_secs(100))),
                }
            }
        })
        .refresh_jitter(0.0)
        .build();
        let subscriber = StatsOnEveryEvent {
            cache: cache.clone(),
            messages: Arc::default(),
        };
        let messages = Arc::clone(&subscriber.messages);
        tracing::subscriber::set_global_default(subscriber).unwrap();
        runtime.block_on(async {
            let first = cache.get().await.unwrap();
            // Half-way: the refresh ahead starts, and fails (the token stays).
            advance(Duration::from_secs(51)).await;
            assert!(cache.get().await.unwrap().same_token(&first));
            settle().await;
            assert!(cache.invalidate(&first), "a refusal evicts");
            let forced = cache.get().await.unwrap();
            assert!(!cache.invalidate(&forced), "rate-limited");
            advance(Duration::from_secs(100)).await;
            assert!(!cache.get().await.unwrap().same_token(&forced), "expired");
        });
        let _ = done_tx.send(messages.lock().unwrap().clone());
    });
    let messages = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("an event deadlocked the cache's thread");
    for expected in [
        "access token cached",
        "refreshing the access token ahead of expiry",
        "token fetch failed",
        "access token refused; refreshing",
        "not refreshing again",
        "the cached access token expired",
    ] {
        assert!(
            messages.iter().any(|m| m.contains(expected)),
            "no {expected:?} in {messages:?}"
        );
    }
}
