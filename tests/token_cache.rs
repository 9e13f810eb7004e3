//! `TokenCache`: every bug class of ANCHORS.md, on Tokio's paused clock.

mod common;

use std::{sync::Arc, time::Duration};

use besender_auth::{Token, TokenCache, TokenErrorKind};
use common::{
    paused_runtime, settle,
    source::{SourceDown, TestSource},
};
use tokio::time::{Instant, advance, sleep};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

#[tokio::test(start_paused = true)]
async fn ten_thousand_cold_callers_share_one_fetch() {
    let source = TestSource::new(DAY, Duration::from_millis(500));
    let cache = TokenCache::new(source.source());
    let callers: Vec<_> = (0..10_000)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get().await })
        })
        .collect();
    let mut tokens = Vec::with_capacity(callers.len());
    for caller in callers {
        tokens.push(caller.await.unwrap().unwrap());
    }
    assert_eq!(source.calls(), 1);
    assert!(tokens.iter().all(|t| t.same_token(&tokens[0])));
    let stats = cache.stats();
    assert_eq!(stats.fetches, 1);
    assert_eq!(stats.coalesced_waits, 9_999);
}

#[tokio::test(start_paused = true)]
async fn seven_days_of_steady_load_fetch_once_per_lifetime_and_never_wait_after_the_first() {
    let fetch_time = Duration::from_secs(1);
    let source = TestSource::new(DAY, fetch_time);
    let cache = TokenCache::new(source.source());
    cache.get().await.unwrap();
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < 7 * DAY {
        sleep(Duration::from_secs(10)).await;
        let before = Instant::now();
        let token = cache.get().await.unwrap();
        // On the paused clock, waiting for the 1 s fetch would show as elapsed time.
        assert_eq!(
            before.elapsed(),
            Duration::ZERO,
            "a caller waited at {:?}",
            start.elapsed()
        );
        assert!(token.remaining() > Duration::from_secs(60));
        calls += 1;
    }
    assert!(calls > 60_000);
    // Refresh ahead starts 2.4 h (+ up to 1.2 h jitter) before expiry: every 20.4-21.6 h.
    let fetches = source.calls();
    assert!((8..=9).contains(&fetches), "{fetches} fetches in 7 days");
    assert_eq!(cache.stats().coalesced_waits, 0);
    assert_eq!(source.max_in_flight(), 1);
}

/// A caller that invalidates a refused token and then asks again waits for its own refresh:
/// only the callers who join it after that are coalesced waits.
#[tokio::test(start_paused = true)]
async fn waiting_for_the_refresh_your_own_refusal_started_is_not_a_coalesced_wait() {
    let source = TestSource::new(DAY, Duration::from_millis(500));
    let cache = TokenCache::new(source.source());
    let token = cache.get().await.unwrap();
    assert!(cache.invalidate(&token));
    let fresh = cache.get().await.unwrap();
    assert!(!fresh.same_token(&token));
    assert_eq!(cache.stats().coalesced_waits, 0, "{:?}", cache.stats());

    // Three callers after the next refusal (past the minimum interval between forced
    // refreshes): the first claims the refresh, two join it.
    advance(Duration::from_secs(10)).await;
    assert!(cache.invalidate(&fresh));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get().await })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap().unwrap();
    }
    assert_eq!(source.calls(), 3);
    assert_eq!(cache.stats().coalesced_waits, 2, "{:?}", cache.stats());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_caller_that_started_the_fetch_neither_cancels_nor_repeats_it() {
    let source = TestSource::new(DAY, Duration::from_secs(2));
    let cache = TokenCache::new(source.source());
    let leader = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get().await }
    });
    settle().await;
    assert_eq!(source.in_flight(), 1, "the leader started the fetch");
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());

    let followers: Vec<_> = (0..3)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get().await })
        })
        .collect();
    for follower in followers {
        follower.await.unwrap().unwrap();
    }
    assert_eq!(source.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_keeps_serving_the_current_token_while_it_runs() {
    let source = TestSource::new(Duration::from_secs(1000), Duration::from_secs(5));
    let cache = TokenCache::builder(source.source())
        .refresh_jitter(0.0)
        .build();
    let first = cache.get().await.unwrap();
    // Window: max(10% of 1000 s, 60 s) = 100 s before expiry (no margin by default).
    advance(Duration::from_secs(899)).await;
    assert!(cache.get().await.unwrap().same_token(&first));
    assert_eq!(source.calls(), 1);
    advance(Duration::from_secs(2)).await;
    settle().await; // the refresh alarm fires
    let during = cache.get().await.unwrap();
    assert!(
        during.same_token(&first),
        "served the current token at once"
    );
    settle().await;
    assert_eq!(source.in_flight(), 1, "one background refresh running");
    advance(Duration::from_secs(5)).await;
    settle().await;
    let after = cache.get().await.unwrap();
    assert!(!after.same_token(&first));
    assert_eq!(source.calls(), 2);
}

/// DESIGN.md decision 5 to the last second: with the endpoint down, the token is served until
/// it expires (there is no expiry margin by default), and only then does the outage show.
#[tokio::test(start_paused = true)]
async fn an_outage_shows_only_once_the_token_has_expired() {
    let source = TestSource::new(Duration::from_secs(3600), Duration::ZERO);
    let cache = TokenCache::new(source.source());
    let first = cache.get().await.unwrap();
    source.set_down(true);
    sleep(Duration::from_millis(3_599_500)).await;
    assert!(!first.is_expired());
    let held = cache
        .get()
        .await
        .expect("the valid token, half a second before it expires");
    assert!(held.same_token(&first));
    sleep(Duration::from_secs(1)).await;
    assert!(first.is_expired());
    assert!(
        cache.get().await.is_err(),
        "no token left: the outage's error"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_never_evicts_a_valid_token_and_backs_off() {
    let source = TestSource::new(Duration::from_secs(1000), Duration::ZERO);
    let cache = TokenCache::builder(source.source())
        .refresh_jitter(0.0)
        .build();
    let first = cache.get().await.unwrap();
    source.set_down(true);
    advance(Duration::from_secs(901)).await;
    // From the refresh point (900 s) to the usable end (999 s of it), callers keep the token.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(98) {
        let token = cache.get().await.unwrap();
        assert!(token.same_token(&first));
        sleep(Duration::from_millis(100)).await;
    }
    // Backoff after each failure: 1 s, then 2, 4, 8, 16, 30 s, each jittered down to no less
    // than half (and the 1 s hold). Fastest schedule in 98 s: attempts at 0, 1, 2, 4, 8, 16,
    // 31, 46, 61, 76, 91 s (11); slowest: 0, 1, 3, 7, 15, 31, 61, 91 s (8).
    let attempts = source.calls() - 1;
    assert!((8..=11).contains(&attempts), "{attempts} refresh attempts");
    source.set_down(false);
    // After expiry the next attempt recovers.
    sleep(Duration::from_secs(40)).await;
    let recovered = cache.get().await.unwrap();
    assert!(!recovered.same_token(&first));
}

#[tokio::test(start_paused = true)]
async fn an_outage_with_no_token_holds_the_error_backs_off_and_recovers_at_once() {
    let source = TestSource::new(DAY, Duration::ZERO);
    let cache = TokenCache::new(source.source());
    source.set_down(true);
    let outage = Duration::from_secs(600);
    let start = Instant::now();
    let mut errors = 0u64;
    while start.elapsed() < outage {
        for _ in 0..10 {
            let err = cache.get().await.unwrap_err();
            assert_eq!(err.kind(), &TokenErrorKind::Source);
            assert!(
                err.source_as::<SourceDown>().is_some(),
                "typed source: {err:?}"
            );
            assert!(err.to_string().contains("endpoint is down"), "{err}");
            errors += 1;
        }
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(errors, 60_000, "100 callers/s for 10 minutes");
    // Backoff: delays of at least 1 s (the hold), 1, 2, 4, 8, then 15 s (half of the 30 s cap):
    // 16 s for the first five, then one attempt per 15 s at most.
    let bound = 1 + 5 + (outage.as_secs() - 16) / 15;
    let fetches = source.calls();
    assert!(fetches <= bound, "{fetches} fetches, bound {bound}");
    assert!(fetches >= 600 / 30, "{fetches}: still retrying at the cap");

    source.set_down(false);
    let recovered_at = Instant::now();
    let token = loop {
        match cache.get().await {
            Ok(token) => break token,
            Err(_) => sleep(Duration::from_millis(10)).await,
        }
    };
    assert!(recovered_at.elapsed() <= Duration::from_secs(30));
    assert!(token.remaining() > DAY - Duration::from_secs(31));
    // Served at once from then on: no held error, no further fetch.
    let calls = source.calls();
    for _ in 0..100 {
        assert!(cache.get().await.unwrap().same_token(&token));
    }
    assert_eq!(source.calls(), calls);
}

#[tokio::test(start_paused = true)]
async fn a_thousand_invalidations_of_one_token_cause_one_refresh() {
    let source = TestSource::new(DAY, Duration::from_millis(100));
    let cache = TokenCache::new(source.source());
    let old = cache.get().await.unwrap();
    let invalidations: Vec<_> = (0..1000)
        .map(|_| {
            let cache = cache.clone();
            let old = old.clone();
            tokio::spawn(async move { cache.invalidate(&old) })
        })
        .collect();
    let mut evicted = 0;
    for invalidation in invalidations {
        evicted += usize::from(invalidation.await.unwrap());
    }
    assert_eq!(evicted, 1);
    let new = cache.get().await.unwrap();
    assert!(!new.same_token(&old));
    assert_eq!(source.calls(), 2);
    assert_eq!(cache.stats().forced_refreshes, 1);

    // A late refusal of the old token does not evict the new one.
    assert!(!cache.invalidate(&old));
    assert!(cache.get().await.unwrap().same_token(&new));
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn forced_refreshes_are_rate_limited_but_the_first_refusal_always_refreshes() {
    let source = TestSource::new(DAY, Duration::ZERO);
    let cache = TokenCache::new(source.source());
    let a = cache.get().await.unwrap();
    // Right after start-up: a normally fetched token's first refusal refreshes.
    assert!(cache.invalidate(&a));
    let b = cache.get().await.unwrap();
    assert!(!b.same_token(&a));
    // The forced token is refused at once: no second refresh within 5 s.
    assert!(!cache.invalidate(&b));
    assert!(cache.get().await.unwrap().same_token(&b));
    assert_eq!(cache.stats().rate_limited_refreshes, 1);
    advance(Duration::from_secs(5)).await;
    assert!(cache.invalidate(&b));
    let c = cache.get().await.unwrap();
    assert!(!c.same_token(&b));
    assert_eq!(source.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn persistent_refusal_costs_at_most_one_fetch_per_interval() {
    let source = TestSource::new(DAY, Duration::ZERO);
    let cache = TokenCache::new(source.source());
    let start = Instant::now();
    // A server that refuses every token: every caller invalidates what it got.
    while start.elapsed() < Duration::from_secs(60) {
        let token = cache.get().await.unwrap();
        cache.invalidate(&token);
        sleep(Duration::from_millis(10)).await;
    }
    // The first fetch, the first refusal's refresh, then one per 5 s.
    assert!(source.calls() <= 2 + 60 / 5, "{} fetches", source.calls());
}

#[tokio::test(start_paused = true)]
async fn a_hanging_source_times_out_instead_of_hanging_callers() {
    let cache = TokenCache::builder(std::future::pending::<Result<Token, SourceDown>>)
        .fetch_timeout(Duration::from_secs(7))
        .build();
    let start = Instant::now();
    let err = cache.get().await.unwrap_err();
    assert_eq!(
        err.kind(),
        &TokenErrorKind::Timeout {
            after: Duration::from_secs(7)
        }
    );
    assert_eq!(start.elapsed(), Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn unusable_tokens_from_a_source_are_errors_not_panics() {
    let cache = TokenCache::new(|| async {
        Ok::<_, SourceDown>(Token::bearer("has space", Duration::from_secs(60)))
    });
    let err = cache.get().await.unwrap_err();
    assert!(matches!(err.kind(), TokenErrorKind::UnusableToken { .. }));
    assert!(!err.to_string().contains("has space"));

    let cache =
        TokenCache::new(|| async { Ok::<_, SourceDown>(Token::bearer("expired", Duration::ZERO)) });
    let err = cache.get().await.unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_source_fails_callers_and_backs_off() {
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = Arc::clone(&calls);
    let cache = TokenCache::new(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { panic!("source bug") as Result<Token, SourceDown> }
    });
    let err = cache.get().await.unwrap_err();
    assert!(err.to_string().contains("panicked"), "{err}");
    // Held: no new fetch for the next callers.
    assert!(cache.get().await.is_err());
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_cache_outlives_the_runtime_it_started_on() {
    let source = TestSource::new(Duration::from_secs(1000), Duration::ZERO);
    let cache = TokenCache::builder(source.source())
        .refresh_jitter(0.0)
        .build();
    let first = paused_runtime().block_on(cache.get()).unwrap();
    // The first runtime, its alarm and its timers are gone; a new one takes over.
    let runtime = paused_runtime();
    runtime.block_on(async {
        let again = cache.get().await.unwrap();
        assert!(again.same_token(&first));
        assert_eq!(source.calls(), 1);
    });
    // Tokio's paused clock starts at "now" per runtime; this one still serves and refreshes.
    runtime.block_on(async {
        sleep(Duration::from_secs(995)).await;
        let fresh = cache.get().await.unwrap();
        assert!(!fresh.same_token(&first), "expired token replaced");
    });
}
