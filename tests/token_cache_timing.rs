//! `TokenCache` timing: when refreshes run (jitter, short lifetimes, ahead of time with no
//! reader), settings at their extremes, and fetches that run late or stall on a runtime nobody
//! drives. On Tokio's paused clock where one runtime suffices.

mod common;

use std::time::Duration;

use besender_auth::{TokenCache, TokenErrorKind};
use common::{paused_runtime, settle, source::TestSource};
use tokio::time::{Instant, advance, sleep};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

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

/// A short lifetime: the window (capped at half) and the jitter add up to more than half of
/// it, yet the refresh never starts before half-way, so a
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
        // From half-way, and within the first half of what is left then.
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
async fn a_fetch_first_polled_late_gets_its_whole_timeout_and_runs_alone() {
    // First polled at 2 s, its source runs until 11.5 s: it gets a whole fetch timeout from
    // then (to 12 s), and the waiters' fallback moves with it (to 13 s), so no caller starts
    // a second fetch while it runs.
    a_fetch_that_runs_late_is_never_run_alongside_the_next(Duration::from_secs(2)).await;
}

#[tokio::test(start_paused = true)]
async fn a_fetch_first_polled_past_both_deadlines_never_runs_alongside_the_next() {
    // The clock jumps past the fetch timeout (10 s) and the waiters' fallback (11 s) at once:
    // the late task, still the cache's fetch, starts its clock afresh and calls its source.
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
    // A 20 s token refreshes 10-12.5 s after it arrived (half-way, then up to a quarter of
    // what is left, for jitter).
    sleep(Duration::from_millis(9_900)).await;
    assert_eq!(source.calls(), 1, "not before half-way");
    sleep(Duration::from_millis(2_700)).await;
    assert_eq!(source.calls(), 2, "refreshed with no reader");
    let fresh = cache.get().await.unwrap();
    assert!(!fresh.same_token(&first));
    assert_eq!(source.calls(), 2);
}

/// A refresh ahead started by a reader whose task first runs after the paused clock was
/// advanced past its fetch timeout (a test stepping the clock by the hour): the source is
/// still called, and its token served, not a timeout that never called the source.
#[tokio::test(start_paused = true)]
async fn a_refresh_whose_task_first_runs_after_a_clock_jump_still_calls_its_source() {
    let source = TestSource::new(Duration::from_secs(100), Duration::ZERO);
    let cache = TokenCache::builder(source.source())
        .refresh_jitter(0.0)
        .build();
    let first = cache.get().await.unwrap();
    advance(Duration::from_secs(60)).await; // the refresh was due at 50 s
    assert!(cache.get().await.unwrap().same_token(&first)); // starts it
    advance(Duration::from_secs(40)).await; // past the first token's expiry
    let fresh = cache
        .get()
        .await
        .expect("the refresh's token, not a timeout");
    assert!(!fresh.same_token(&first));
    assert_eq!(source.calls(), 2);
    assert_eq!(cache.stats().failed_fetches, 0);
}

/// The clock jumps past the fetch timeout while the source is about to answer: its answer
/// counts, for a caller waiting in the same task as the jump too.
#[tokio::test(start_paused = true)]
async fn a_clock_jump_during_a_fetch_keeps_its_answer() {
    let source = TestSource::new(DAY, Duration::from_secs(2));
    let cache = TokenCache::new(source.source());
    let (token, ()) = tokio::join!(cache.get(), async {
        settle().await;
        advance(Duration::from_secs(600)).await;
    });
    assert!(!token.expect("the source answered").is_expired());
    assert_eq!(source.calls(), 1);
}

/// A test stepping the paused clock by the hour, for three days: each refresh ahead is started
/// by a read and its task first runs after the next step, past its fetch timeout. It still
/// calls its source, so no read fails (reads did, before), and with a source that answers at
/// once no refresh counts as failed.
#[tokio::test(start_paused = true)]
async fn hourly_reads_on_a_stepped_clock_never_fail() {
    // A source that answers at once, and one that takes a while, as a network call does (its
    // fetch starts its clock afresh when its task first runs, late).
    for latency in [Duration::ZERO, Duration::from_millis(5)] {
        let source = TestSource::new(DAY, latency);
        let cache = TokenCache::new(source.source());
        for hour in 0..=72 {
            if let Err(err) = cache.get().await {
                panic!("{latency:?}, hour {hour}: {err}");
            }
            advance(Duration::from_secs(3600)).await;
        }
        assert_eq!(source.max_in_flight(), 1, "single flight");
        let stats = cache.stats();
        assert_eq!(
            stats.fetches - stats.failed_fetches,
            4,
            "{latency:?}: one token a day: {stats:?}"
        );
        assert!(stats.failed_fetches <= 3, "{latency:?}: {stats:?}");
        if latency.is_zero() {
            assert_eq!(stats.failed_fetches, 0, "{stats:?}");
            assert_eq!(
                source.calls(),
                stats.fetches,
                "every fetch called its source"
            );
            assert_eq!(stats.fetches, 4, "one per day, ahead of expiry: {stats:?}");
        }
        // With latency, a read can run between a step and the fetch task the step woke, and
        // find the fetch past its stall instant: it starts another, and the first ends unused.
        // Fetches wasted on a stepped clock, but every read above was served.
    }
}

/// A caller waits for a fetch whose task first runs after the clock jumped past the fetch
/// timeout, and whose source then takes a while: the fetch starts its clock afresh, and the
/// caller waits on for it instead of giving up at the instant set when it started.
#[tokio::test(start_paused = true)]
async fn a_caller_waits_on_for_a_fetch_that_first_ran_after_a_clock_jump() {
    let source = TestSource::new(DAY, Duration::from_secs(2));
    let cache = TokenCache::new(source.source());
    let (token, ()) = tokio::join!(cache.get(), advance(Duration::from_secs(600)));
    assert!(!token.expect("the fetch's token").is_expired());
    assert_eq!(source.calls(), 1);
    assert_eq!(cache.stats().failed_fetches, 0);
}
