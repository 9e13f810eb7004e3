//! Bug classes users of other token caches reported (ANCHORS.md), at the cache: late refusals
//! of a replaced token, a panicking source, a herd behind a forced refresh, a fetch spawned on
//! a shut-down runtime, the default load timeouts. On Tokio's paused clock. Each test fails with
//! its bug put back.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use besender_auth::{Token, TokenCache};
use common::{
    settle,
    source::{SourceDown, TestSource},
};
use tokio::time::advance;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// ANCHORS "unconditional invalidation": token A is replaced ahead of expiry by B (a normal
/// fetch); a late refusal of A must not evict B.
#[tokio::test(start_paused = true)]
async fn a_late_refusal_of_a_token_refreshed_ahead_never_evicts_its_successor() {
    let source = TestSource::new(Duration::from_secs(100), Duration::ZERO);
    let cache = TokenCache::builder(source.source())
        .refresh_jitter(0.0)
        .build();
    let a = cache.get().await.unwrap();
    // 100 s token: the refresh ahead starts half-way (50 s).
    advance(Duration::from_secs(51)).await;
    let _ = cache.get().await.unwrap();
    settle().await;
    let b = cache.get().await.unwrap();
    assert!(!b.same_token(&a), "refreshed ahead");
    assert_eq!(source.calls(), 2);

    assert!(!cache.invalidate(&a), "a late refusal of A evicted B");
    settle().await;
    assert!(cache.get().await.unwrap().same_token(&b));
    assert_eq!(source.calls(), 2, "B was evicted and refetched");
    assert_eq!(cache.stats().forced_refreshes, 0);
}

/// The same, with B from a forced refresh and the late refusal of A past the minimum interval
/// (which would otherwise hide an unconditional eviction behind the rate limit).
#[tokio::test(start_paused = true)]
async fn a_late_refusal_past_the_interval_never_evicts_the_forced_successor() {
    let source = TestSource::new(DAY, Duration::ZERO);
    let cache = TokenCache::new(source.source());
    let a = cache.get().await.unwrap();
    assert!(cache.invalidate(&a));
    let b = cache.get().await.unwrap();
    advance(Duration::from_secs(6)).await;
    assert!(!cache.invalidate(&a), "a late refusal of A evicted B");
    assert!(cache.get().await.unwrap().same_token(&b));
    assert_eq!(source.calls(), 2);
}

/// ANCHORS "poisoned cache": a source that panicked once is called again after the backoff
/// and its token served: one panic does not stop fetching.
#[tokio::test(start_paused = true)]
async fn a_source_that_panicked_once_is_called_again_and_recovers() {
    let calls = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&calls);
    let cache = TokenCache::new(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                panic!("source bug");
            }
            Ok::<_, SourceDown>(Token::bearer(format!("t{n}"), DAY))
        }
    });
    assert!(cache.get().await.is_err());
    advance(Duration::from_secs(2)).await;
    let token = cache.get().await.expect("recovered after a panic");
    assert!(!token.is_expired());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A refresh ahead whose source panics keeps the valid token, and the refresh is tried again
/// (and succeeds) before the token runs out.
#[tokio::test(start_paused = true)]
async fn a_panicking_refresh_keeps_the_valid_token_and_refreshes_later() {
    let calls = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&calls);
    let cache = TokenCache::builder(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 1 {
                panic!("source bug during the refresh");
            }
            Ok::<_, SourceDown>(Token::bearer(format!("t{n}"), Duration::from_secs(100)))
        }
    })
    .refresh_jitter(0.0)
    .build();
    let first = cache.get().await.unwrap();
    advance(Duration::from_secs(51)).await;
    settle().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the refresh ran (and panicked)"
    );
    assert!(
        cache.get().await.unwrap().same_token(&first),
        "valid token kept"
    );
    advance(Duration::from_secs(5)).await;
    settle().await;
    let _ = cache.get().await.unwrap();
    settle().await;
    let fresh = cache.get().await.unwrap();
    assert!(!fresh.same_token(&first), "refreshed after the panic");
    assert!(fresh.remaining() > Duration::from_secs(90));
}

/// ANCHORS "thundering herd" under a forced refresh rather than a cold start: a thousand
/// callers that each saw the token refused and each ask again share one refresh.
#[tokio::test(start_paused = true)]
async fn a_thousand_refused_callers_asking_again_share_one_forced_refresh() {
    let source = TestSource::new(DAY, Duration::from_millis(300));
    let cache = TokenCache::new(source.source());
    let old = cache.get().await.unwrap();
    let callers: Vec<_> = (0..1000)
        .map(|_| {
            let cache = cache.clone();
            let old = old.clone();
            tokio::spawn(async move {
                cache.invalidate(&old);
                cache.get().await
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for caller in callers {
        tokens.push(caller.await.unwrap().unwrap());
    }
    assert_eq!(source.calls(), 2);
    assert_eq!(source.max_in_flight(), 1);
    assert!(
        tokens
            .iter()
            .all(|t| t.same_token(&tokens[0]) && !t.same_token(&old))
    );
}

/// kube #829/#835 (a lock taken while already held): a fetch spawned on a runtime that is
/// shut down is dropped inside `spawn`, while the cache's lock is held. The caller must get an
/// error, not a deadlock.
#[test]
fn a_fetch_spawned_on_a_shut_down_runtime_neither_deadlocks_nor_hangs() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let handle = runtime.handle().clone();
        drop(runtime);
        let source = TestSource::new(DAY, Duration::ZERO);
        let cache = TokenCache::new(source.source());
        let _entered = handle.enter();
        let mut get = std::pin::pin!(cache.get());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let outcome = match get.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(result) => Some(result.map(|_| ())),
            std::task::Poll::Pending => None,
        };
        let _ = done_tx.send(format!("{outcome:?}"));
    });
    let outcome = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("deadlocked or hung");
    assert!(outcome.starts_with("Some(Err"), "{outcome}");
}

/// ANCHORS "load timeouts": too short (AWS's 5 s) fails spuriously, none hides a dead
/// endpoint. The defaults, 10 s for Besender's call and 30 s for the cache (above it, so the
/// call's more precise error wins), are pinned.
#[tokio::test(start_paused = true)]
async fn the_default_load_timeouts_are_pinned() {
    let cache = TokenCache::new(std::future::pending::<Result<Token, SourceDown>>);
    let start = tokio::time::Instant::now();
    let err = cache.get().await.unwrap_err();
    assert_eq!(
        err.kind(),
        &besender_auth::TokenErrorKind::Timeout {
            after: Duration::from_secs(30)
        }
    );
    assert_eq!(start.elapsed(), Duration::from_secs(30));

    let server = common::ScriptedServer::start(common::Reply::Hang).await;
    let source = common::besender_source(&server.url(), "s3cret-value");
    let start = tokio::time::Instant::now();
    let err = besender_auth::TokenSource::fetch(&source)
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        &besender_auth::BesenderErrorKind::Timeout {
            after: Duration::from_secs(10)
        }
    );
    assert_eq!(start.elapsed(), Duration::from_secs(10));
}
