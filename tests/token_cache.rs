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
    // Refresh ahead starts 2.4 h (+ up to 1.2 h jitter) + 10 s before expiry: every 20.4-21.6 h.
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
    // Window: max(10% of 1000 s, 60 s) = 100 s before the usable end (1000 - 10 s).
    advance(Duration::from_secs(889)).await;
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

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_never_evicts_a_valid_token_and_backs_off() {
    let source = TestSource::new(Duration::from_secs(1000), Duration::ZERO);
    let cache = TokenCache::builder(source.source())
        .refresh_jitter(0.0)
        .build();
    let first = cache.get().await.unwrap();
    source.set_down(true);
    advance(Duration::from_secs(891)).await;
    // From the refresh point to the usable end (990 s), callers keep the token.
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

#[tokio::test(start_paused = true)]
async fn refreshes_of_a_fleet_are_spread_by_jitter() {
    let sources: Vec<_> = (0..20)
        .map(|_| TestSource::new(DAY, Duration::ZERO))
        .collect();
    let caches: Vec<_> = sources
        .iter()
        .map(|s| TokenCache::new(s.source()))
        .collect();
    for cache in &caches {
        cache.get().await.unwrap();
    }
    let mut refreshed_at = vec![None; caches.len()];
    let start = Instant::now();
    while refreshed_at.iter().any(Option::is_none) && start.elapsed() < DAY {
        sleep(Duration::from_secs(60)).await;
        for (i, cache) in caches.iter().enumerate() {
            cache.get().await.unwrap();
            settle().await;
            if refreshed_at[i].is_none() && sources[i].calls() == 2 {
                refreshed_at[i] = Some(start.elapsed().as_secs() / 60);
            }
        }
    }
    let mut minutes: Vec<_> = refreshed_at.into_iter().map(Option::unwrap).collect();
    minutes.sort_unstable();
    minutes.dedup();
    assert!(
        minutes.len() >= 10,
        "refresh minutes too clustered: {minutes:?}"
    );
    let (first, last) = (minutes[0], minutes[minutes.len() - 1]);
    assert!(first >= 20 * 60 && last <= 22 * 60, "{minutes:?}");
}

/// A short lifetime: the expiry margin (a quarter of it), the window (capped at half) and the
/// jitter add up to more than half of it, yet the refresh never starts before half-way, so a
/// 20 s token is not fetched again right after it arrived; it is refreshed before it runs out,
/// and a fleet's refreshes are still spread by the jitter.
#[tokio::test(start_paused = true)]
async fn a_short_lived_token_is_refreshed_in_its_second_half_only() {
    let lifetime = Duration::from_secs(20);
    let sources: Vec<_> = (0..40)
        .map(|_| TestSource::new(lifetime, Duration::ZERO))
        .collect();
    let caches: Vec<_> = sources
        .iter()
        .map(|s| TokenCache::new(s.source()))
        .collect();
    let start = Instant::now();
    for cache in &caches {
        cache.get().await.unwrap();
    }
    let mut refreshed_at = vec![None; caches.len()];
    while start.elapsed() < lifetime {
        sleep(Duration::from_millis(100)).await;
        for (i, cache) in caches.iter().enumerate() {
            cache.get().await.unwrap();
            settle().await;
            if refreshed_at[i].is_none() && sources[i].calls() == 2 {
                refreshed_at[i] = Some(start.elapsed());
            }
        }
    }
    let mut times: Vec<_> = refreshed_at
        .into_iter()
        .map(|at| at.expect("refreshed within its lifetime"))
        .collect();
    for at in &times {
        // From half-way; the usable time ends 5 s before expiry (the margin is a quarter).
        assert!(
            *at >= lifetime / 2 && *at < lifetime * 3 / 4,
            "refreshed at {at:?}"
        );
    }
    times.sort_unstable();
    times.dedup();
    assert!(times.len() >= 5, "refreshes in lockstep: {times:?}");
}

/// A runtime per call, each dropped before the alarms and fetches it was given could run: the
/// cache must still never hand out an expired token.
#[test]
fn a_runtime_per_call_never_gets_an_expired_token() {
    let source = TestSource::new(Duration::from_secs(3), Duration::ZERO);
    let cache = TokenCache::builder(source.source())
        .refresh_jitter(0.0)
        .build();
    let first = paused_runtime().block_on(cache.get()).unwrap();
    let runtime = paused_runtime();
    // Past the refresh point: this call starts a refresh and arms an alarm, then its runtime
    // is dropped before either task runs.
    runtime.block_on(async {
        tokio::time::advance(Duration::from_millis(2_000)).await;
        cache.get().await.unwrap();
    });
    drop(runtime);
    let runtime = paused_runtime();
    runtime.block_on(async {
        tokio::time::advance(Duration::from_millis(3_500)).await;
        let token = cache.get().await.unwrap();
        assert!(!token.is_expired(), "an expired token was served");
        assert!(!token.same_token(&first));
    });
}

#[tokio::test(start_paused = true)]
async fn absurd_settings_do_not_overflow() {
    let source = TestSource::new(DAY, Duration::ZERO);
    let cache = TokenCache::builder(source.source())
        .min_forced_refresh_interval(Duration::MAX)
        .error_hold(Duration::MAX)
        .backoff(Duration::MAX, Duration::MAX)
        .expiry_margin(Duration::MAX)
        .fetch_timeout(Duration::MAX)
        .refresh_window(f64::NAN, Duration::MAX)
        .build();
    let token = cache.get().await.unwrap();
    assert!(cache.invalidate(&token));
    let fresh = cache.get().await.unwrap();
    assert!(
        !cache.invalidate(&fresh),
        "rate-limited for a (capped) year"
    );
    source.set_down(true);
    let cache = TokenCache::builder(source.source())
        .error_hold(Duration::MAX)
        .backoff(Duration::MAX, Duration::MAX)
        .build();
    assert!(cache.get().await.is_err());
    assert!(cache.get().await.is_err(), "held, not refetched");
}

/// One cache, two runtimes: a fetch started from a runtime that then goes idle must not strand
/// callers on the other runtime.
#[test]
fn a_fetch_stalled_on_an_idle_runtime_does_not_strand_other_runtimes() {
    let source = TestSource::new(DAY, Duration::ZERO);
    let cache = TokenCache::new(source.source());
    let idle = paused_runtime();
    // Starts the fetch on `idle`, which is then never driven again: the fetch never finishes.
    let started = idle.block_on(async { tokio::time::timeout(Duration::ZERO, cache.get()).await });
    assert!(started.is_err());
    let other = paused_runtime();
    other.block_on(async {
        let start = Instant::now();
        let err = cache.get().await.unwrap_err();
        assert!(
            matches!(err.kind(), TokenErrorKind::Timeout { .. }),
            "{err:?}"
        );
        assert!(
            start.elapsed() <= Duration::from_secs(31),
            "gave up on its own timer"
        );
        // The stalled fetch is given up: the next caller starts one here.
        let token = cache.get().await.unwrap();
        assert!(!token.is_expired());
    });
}

/// A fetch given up as stalled fails later, after the fetch that replaced it delivered a token:
/// its failure must not back off that token's refresh, nor be held as the cache's error.
#[test]
fn a_stalled_fetch_failing_late_does_not_back_off_the_fetch_that_replaced_it() {
    let source = TestSource::new(Duration::from_secs(40), Duration::ZERO);
    let cache = TokenCache::builder(source.source())
        .fetch_timeout(Duration::from_secs(10))
        .backoff(Duration::from_secs(600), Duration::from_secs(600))
        .error_hold(Duration::from_secs(600))
        .build();
    let idle = paused_runtime();
    // Starts the fetch on `idle`, which is not driven again for a while.
    let started = idle.block_on(async { tokio::time::timeout(Duration::ZERO, cache.get()).await });
    assert!(started.is_err());
    let other = paused_runtime();
    let replacement = other.block_on(async {
        assert!(cache.get().await.is_err(), "gave the stalled fetch up");
        cache.get().await.unwrap()
    });
    // `idle` runs again past the stalled fetch's deadline: that fetch fails now.
    idle.block_on(advance(Duration::from_secs(12)));
    assert_eq!(cache.stats().failed_fetches, 1);
    other.block_on(async {
        // Past the replacement's lifetime: it was refreshed ahead (or is fetched now), with no
        // backoff or held error left by the stale failure.
        advance(Duration::from_secs(45)).await;
        let token = cache
            .get()
            .await
            .expect("a fresh token, not the stale error");
        assert!(!token.same_token(&replacement));
        assert!(!token.is_expired());
    });
}

/// A source that answers exactly at the fetch timeout has answered in time, as with
/// `tokio::time::timeout`, which polls the future before its timer.
#[tokio::test(start_paused = true)]
async fn a_token_ready_at_the_fetch_timeout_counts() {
    let timeout = Duration::from_secs(10);
    let source = TestSource::new(DAY, timeout);
    let cache = TokenCache::builder(source.source())
        .fetch_timeout(timeout)
        .build();
    let token = cache.get().await.unwrap();
    assert!(!token.is_expired());
}

/// The fetch task first runs `late` after it was spawned (its runtime was busy, or the clock
/// jumped). Its source must not run past the instant waiters give the fetch up, or the next
/// caller's fetch would run alongside it.
async fn a_fetch_that_runs_late_is_never_run_alongside_the_next(late: Duration) {
    let source = TestSource::new(DAY, Duration::from_millis(9_500));
    let cache = TokenCache::builder(source.source())
        .fetch_timeout(Duration::from_secs(10))
        .build();
    // Spawns the fetch task; `advance` moves the clock before the task first runs.
    assert!(
        tokio::time::timeout(Duration::ZERO, cache.get())
            .await
            .is_err()
    );
    advance(late).await;
    // A caller that sees no token keeps asking, as a client does.
    let token = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            if let Ok(token) = cache.get().await {
                break token;
            }
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("recovered");
    assert!(!token.is_expired());
    assert_eq!(source.max_in_flight(), 1, "two fetches ran at once");
}

#[tokio::test(start_paused = true)]
async fn a_fetch_first_polled_late_ends_by_the_deadline_set_when_it_started() {
    // First polled at 2 s, its source would run until 11.5 s: it must not outlast the waiters'
    // fallback (11 s), after which the next caller (at 11.1 s) starts a new fetch.
    a_fetch_that_runs_late_is_never_run_alongside_the_next(Duration::from_secs(2)).await;
}

#[tokio::test(start_paused = true)]
async fn a_fetch_first_polled_past_both_deadlines_never_calls_its_source() {
    // The clock jumps past the fetch timeout (10 s) and the waiters' fallback (11 s) at once.
    a_fetch_that_runs_late_is_never_run_alongside_the_next(Duration::from_secs(12)).await;
}

/// Refresh ahead runs in the background at its time, also when nobody asks for the token
/// then: a service idle through its refresh window still has a fresh token when a request
/// comes (the alarm used to only flag the refresh for the next reader to start).
#[tokio::test(start_paused = true)]
async fn refresh_ahead_runs_at_its_time_without_a_reader() {
    let source = TestSource::new(Duration::from_secs(20), Duration::ZERO);
    let cache = TokenCache::new(source.source());
    let first = cache.get().await.unwrap();
    // A 20 s token refreshes 10-11.25 s after it arrived.
    sleep(Duration::from_millis(9_900)).await;
    assert_eq!(source.calls(), 1, "not before half-way");
    sleep(Duration::from_millis(1_500)).await;
    assert_eq!(source.calls(), 2, "refreshed with no reader");
    let fresh = cache.get().await.unwrap();
    assert!(!fresh.same_token(&first));
    assert_eq!(source.calls(), 2);
}
