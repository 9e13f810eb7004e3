use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use super::*;
use crate::error::{BesenderError, BesenderErrorKind};

fn static_cache(token: &str) -> TokenCache {
    TokenCache::new(Token::bearer(token, Duration::from_secs(3600)))
}

#[test]
fn outside_a_runtime_callers_get_a_clear_error_not_a_panic() {
    let cache = static_cache("abc");
    match cache.acquire() {
        Acquire::Failed(err) => {
            assert_eq!(err.kind(), &crate::TokenErrorKind::NoRuntime);
            assert!(err.to_string().contains("Tokio runtime"));
        }
        _ => panic!("expected NoRuntime"),
    }
    assert!(cache.cached_header().is_none());
}

#[tokio::test(start_paused = true)]
async fn the_hot_path_serves_the_sensitive_header_value_once_cached() {
    let cache = static_cache("abc");
    assert!(cache.cached_header().is_none(), "nothing fetched yet");
    cache.get().await.unwrap();
    let header = cache.cached_header().expect("cached");
    assert_eq!(header, "Bearer abc");
    assert!(header.is_sensitive());
    let lease = cache.try_lease().unwrap();
    assert!(cache.invalidate_generation(lease.generation));
    assert!(cache.cached_header().is_none(), "evicted");
}

#[tokio::test(start_paused = true)]
async fn debug_shows_settings_and_stats_but_no_token() {
    let cache = static_cache("very-secret-token");
    cache.get().await.unwrap();
    let text = format!(
        "{cache:?} {:?}",
        TokenCache::builder(Token::bearer_static("x"))
    );
    assert!(!text.contains("very-secret-token"), "{text}");
    assert!(text.contains("fetches: 1"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn get_checks_the_clock_when_the_alarm_has_not_run() {
    let cache = TokenCache::new(|| async {
        Ok::<_, std::io::Error>(Token::bearer("abc", Duration::from_secs(100)))
    });
    let first = cache.get().await.unwrap();
    // Disown the alarm, as if its runtime had not run it yet: the state word still says valid.
    cache
        .shared
        .armed
        .store(0, std::sync::atomic::Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(200)).await;
    // The alarm was armed on a `current_thread` runtime, which runs no timer while nobody
    // drives it: the layer's read looks at the clock too.
    assert!(
        cache.cached_header().is_none(),
        "the layer's read checks the clock when the alarm may not run"
    );
    let token = cache.get().await.unwrap();
    assert!(
        !token.same_token(&first),
        "get read the clock and refetched"
    );
    assert!(!token.is_expired());
}

/// A cache whose source fails its call number `refused` (from 0), `after` it started, with
/// HTTP 503 asking for `asked` (`Retry-After`), and otherwise issues `token-<call>` valid for
/// `lifetime`; and the count of its calls.
fn cache_refused_once(
    refused: u32,
    after: Duration,
    asked: Duration,
    lifetime: Duration,
) -> (TokenCache, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&calls);
    // The timelines below count on a 10 s margin (usable until 90 s of a 100 s token).
    let cache = TokenCache::builder(move || {
        let call = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            if call == refused {
                tokio::time::sleep(after).await;
                let refusal = BesenderErrorKind::Rejected {
                    status: http::StatusCode::SERVICE_UNAVAILABLE,
                    code: None,
                    message: None,
                };
                return Err(BesenderError::new("http://127.0.0.1/t".into(), refusal)
                    .with_retry_after(Some(asked)));
            }
            Ok(Token::bearer(format!("token-{call}"), lifetime))
        }
    })
    .expiry_margin(Duration::from_secs(10))
    .build();
    (cache, calls)
}

/// RFC 9110 §10.2.3: a refusal's `Retry-After` is honoured (longer than the backoff), capped.
#[tokio::test(start_paused = true)]
async fn a_refusal_that_asks_to_wait_is_not_called_again_before_it_said() {
    for (asked, waited) in [(120, 120), (86_400, 600)] {
        let (cache, calls) = cache_refused_once(
            0,
            Duration::ZERO,
            Duration::from_secs(asked),
            Duration::from_secs(3600),
        );
        let start = tokio::time::Instant::now();
        let err = cache.get().await.unwrap_err();
        assert_eq!(
            err.source_as::<BesenderError>().unwrap().retry_after(),
            Some(Duration::from_secs(asked))
        );
        // Past the backoff (1 s, 50% jitter) and its growth, short of what was asked.
        tokio::time::advance(Duration::from_secs(waited - 1)).await;
        assert!(cache.get().await.is_err(), "held until the asked time");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        cache.get().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(start.elapsed() < Duration::from_secs(waited + 5));
    }
}

/// A refresh ahead refused with a `Retry-After` longer than the valid token has left: the next
/// fetch comes when the token runs out, not after it has been dead for the rest of the wait.
#[tokio::test(start_paused = true)]
async fn a_wait_asked_for_never_runs_a_valid_token_out() {
    let (cache, calls) = cache_refused_once(
        1,
        Duration::ZERO,
        Duration::from_secs(600),
        Duration::from_secs(100),
    );
    let first = cache.get().await.unwrap();
    // Usable until 90 s (10 s margin); the refresh ahead is due by 70 s, and is refused.
    tokio::time::advance(Duration::from_secs(75)).await;
    assert!(cache.get().await.unwrap().same_token(&first));
    tokio::task::yield_now().await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "refreshed ahead, refused");
    // The wait is honoured while the token lasts: no call before 90 s.
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(cache.get().await.unwrap().same_token(&first));
    tokio::task::yield_now().await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the asked wait was kept");
    tokio::time::advance(Duration::from_secs(10)).await;
    let fresh = cache.get().await.expect("fetched when the token ran out");
    assert!(!fresh.same_token(&first));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// The same refresh refused only after the token ran out: nothing valid is left to protect, so
/// the wait asked for is kept in full.
#[tokio::test(start_paused = true)]
async fn a_wait_asked_for_after_the_token_ran_out_is_kept() {
    let (cache, calls) = cache_refused_once(
        1,
        Duration::from_secs(10),
        Duration::from_secs(600),
        Duration::from_secs(100),
    );
    let first = cache.get().await.unwrap();
    tokio::time::advance(Duration::from_secs(85)).await;
    assert!(cache.get().await.unwrap().same_token(&first));
    // The refresh ahead, started by 85 s, is refused at 95 s, past the usable time (90 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(
        cache.get().await.is_err(),
        "held: the endpoint asked for 600 s"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
