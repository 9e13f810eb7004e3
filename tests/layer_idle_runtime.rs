//! The layer never stamps a token past its usable time: not after a runtime that is not driven
//! (a `current_thread` runtime idle between `block_on` calls, the shape of a synchronous
//! wrapper) could run none of the cache's timers, nor when a service reported ready and was
//! called (or polled again, as a balancer does) long after. A refusal could repair that only for
//! requests whose body can be replayed. And a refresh that falls due while the timers cannot
//! run still starts ahead of expiry.

use std::{
    convert::Infallible,
    future::{poll_fn, ready},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use besender_auth::{BesenderAuthLayer, ReplayBody, Token, TokenCache, TokenSource};
use bytes::Bytes;
use http::{Request, Response, header::AUTHORIZATION};
use http_body_util::Empty;
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt, service_fn};

const LIFETIME: Duration = Duration::from_secs(60);

fn paused_current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Another paused runtime, whose clock is already `by` later: time that passes while the
/// runtimes made before it are not driven, so none of their timers runs.
fn another_runtime_later(by: Duration) -> Runtime {
    let runtime = paused_current_thread();
    runtime.block_on(tokio::time::advance(by));
    runtime
}

#[test]
fn a_token_is_not_stamped_after_it_ran_out_while_its_alarm_could_not_run() {
    let (service, stamped, fetches) = stamping_service();
    let send = |runtime: &Runtime| {
        runtime.block_on(service.clone().oneshot(get())).unwrap();
    };

    // The first token is fetched on `first`, which also holds the alarm that would flag its
    // expiry; `first` is never driven again.
    let first = paused_current_thread();
    send(&first);
    // On another runtime's clock, the token's lifetime passes; no timer of `first` runs.
    send(&another_runtime_later(LIFETIME + Duration::from_secs(1)));

    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "the run-out token was not replaced"
    );
    assert_eq!(
        *stamped.lock().unwrap(),
        [
            Some("Bearer token-1".to_owned()),
            Some("Bearer token-2".to_owned())
        ],
    );
}

#[test]
fn the_cached_header_is_not_served_after_it_ran_out_while_its_alarm_could_not_run() {
    let layer =
        BesenderAuthLayer::new(|| async { Ok::<_, Infallible>(Token::bearer("token", LIFETIME)) });
    let first = paused_current_thread();
    first.block_on(layer.cache().get()).unwrap();
    assert!(
        first
            .block_on(async { layer.cache().cached_header() })
            .is_some()
    );
    let second = another_runtime_later(LIFETIME);
    assert!(
        second
            .block_on(async { layer.cache().cached_header() })
            .is_none()
    );
}

type Stamped = Arc<Mutex<Vec<Option<String>>>>;

/// A source that counts its fetches and names each token `token-<n>`; every fetch after the
/// first takes `later_fetches_take`.
fn counting_source(later_fetches_take: Duration) -> (impl TokenSource, Arc<AtomicU64>) {
    let fetches = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&fetches);
    let source = move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n > 1 && !later_fetches_take.is_zero() {
                tokio::time::sleep(later_fetches_take).await;
            }
            Ok::<_, Infallible>(Token::bearer(format!("token-{n}"), LIFETIME))
        }
    };
    (source, fetches)
}

/// `layer` over an inner service that records the `Authorization` it was sent.
fn stamping(
    layer: &BesenderAuthLayer,
) -> (
    impl Service<Request<Empty<Bytes>>, Response = Response<()>, Error = besender_auth::Error>
    + Clone
    + use<>,
    Stamped,
) {
    let stamped: Stamped = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&stamped);
    let inner = service_fn(move |request: Request<ReplayBody<Empty<Bytes>>>| {
        let header = request.headers().get(AUTHORIZATION).cloned();
        seen.lock()
            .unwrap()
            .push(header.map(|h| h.to_str().unwrap().to_owned()));
        ready(Ok::<_, Infallible>(Response::new(())))
    });
    (layer.layer(inner), stamped)
}

/// [`stamping`] over a layer on [`counting_source`] whose fetches are instant.
#[allow(clippy::type_complexity)]
fn stamping_service() -> (
    impl Service<Request<Empty<Bytes>>, Response = Response<()>, Error = besender_auth::Error> + Clone,
    Stamped,
    Arc<AtomicU64>,
) {
    let (source, fetches) = counting_source(Duration::ZERO);
    let (service, stamped) = stamping(&BesenderAuthLayer::new(source));
    (service, stamped, fetches)
}

fn get() -> Request<Empty<Bytes>> {
    Request::get("http://api.example/")
        .body(Empty::new())
        .unwrap()
}

/// Tower lets a caller call a service any time after it reported ready, and a balancer polls
/// the services of its ready set again before it calls one: neither may stamp the token that ran
/// out meanwhile (on a driven runtime, whose alarm did flag the expiry).
#[test]
fn a_service_called_long_after_it_reported_ready_stamps_a_fresh_token() {
    readied_then_called_past_the_lifetime(false);
}

/// The same with the alarm on a runtime that is never driven again.
#[test]
fn a_service_readied_on_an_idle_runtime_and_called_later_stamps_a_fresh_token() {
    readied_then_called_past_the_lifetime(true);
}

/// Readies the service (on a runtime of its own that is never driven again, with
/// `idle_runtime`), then, past the token's lifetime, polls it again and calls it: the call
/// carries the fresh token.
fn readied_then_called_past_the_lifetime(idle_runtime: bool) {
    let (mut service, stamped, _) = stamping_service();
    let first = idle_runtime.then(paused_current_thread);
    let runtime = paused_current_thread();
    first
        .as_ref()
        .unwrap_or(&runtime)
        .block_on(service.ready())
        .unwrap();
    runtime.block_on(async {
        tokio::time::advance(LIFETIME + Duration::from_secs(1)).await;
        poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
        service.call(get()).await.unwrap();
    });
    assert_eq!(
        *stamped.lock().unwrap(),
        [Some("Bearer token-2".to_owned())]
    );
}

/// A 60 s token is usable until 60 s and refreshed from 30 s (half-way). Its alarm sits on a
/// runtime that is never driven again; a request at 40 s from another runtime starts the
/// refresh ahead of expiry, as the alarm would have, and is sent with the current token.
#[test]
fn a_refresh_due_while_the_alarm_cannot_run_still_starts_ahead_of_expiry() {
    let (service, stamped, fetches) = stamping_service();
    let first = paused_current_thread();
    first.block_on(service.clone().oneshot(get())).unwrap();
    another_runtime_later(Duration::from_secs(40)).block_on(async {
        service.clone().oneshot(get()).await.unwrap();
        // Let the background refresh finish.
        tokio::time::sleep(Duration::from_millis(10)).await;
    });
    assert_eq!(fetches.load(Ordering::SeqCst), 2, "no refresh started");
    assert_eq!(
        *stamped.lock().unwrap(),
        [
            Some("Bearer token-1".to_owned()),
            Some("Bearer token-1".to_owned())
        ],
        "the current token serves while its refresh runs"
    );
}

/// Called long after it reported ready, with the token run out and no fresh one to be had (the
/// source now fails): the call fails with the token error, and the dead token is never sent.
#[test]
fn a_late_call_with_no_fresh_token_fails_instead_of_sending_the_dead_one() {
    let fetches = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&fetches);
    let layer = BesenderAuthLayer::new(move || {
        let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                Ok(Token::bearer("token-1", LIFETIME))
            } else {
                Err(std::io::Error::other("token endpoint down"))
            }
        }
    });
    let sent = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&sent);
    let inner = service_fn(move |_: Request<ReplayBody<Empty<Bytes>>>| {
        count.fetch_add(1, Ordering::SeqCst);
        ready(Ok::<_, Infallible>(Response::new(())))
    });
    let mut service = layer.layer(inner);
    let result = paused_current_thread().block_on(async {
        service.ready().await.unwrap();
        tokio::time::advance(LIFETIME + Duration::from_secs(1)).await;
        service.call(get()).await
    });
    assert!(
        matches!(result, Err(besender_auth::Error::Token(_))),
        "{result:?}"
    );
    assert_eq!(sent.load(Ordering::SeqCst), 0, "the dead token was sent");
}

fn counting_cache() -> (TokenCache, Arc<AtomicU64>) {
    let (source, fetches) = counting_source(Duration::ZERO);
    (TokenCache::new(source), fetches)
}

/// A 60 s token: usable until 60 s, refresh due at 30 s. Its alarm is on `first`, which is never
/// driven again (CLOCK). At 40 s the token is valid, and `cached_header()` serves it (a version
/// stopped serving it at the due instant, with nothing on its path to start the refresh).
#[test]
fn the_cached_header_is_served_past_its_refresh_time_while_its_alarm_cannot_run() {
    let (cache, fetches) = counting_cache();
    let first = paused_current_thread();
    first.block_on(cache.get()).unwrap();
    another_runtime_later(Duration::from_secs(40)).block_on(async {
        let token = cache.get().await.unwrap();
        assert!(token.same_token(&cache.get().await.unwrap()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            cache.cached_header().is_some(),
            "a valid token is cached (get() just returned it), but cached_header() is None \
             (fetches = {})",
            fetches.load(Ordering::SeqCst)
        );
    });
}

/// Through `TokenCache::get`: under CLOCK, `get()` at 40 s starts the refresh that was due at
/// 30 s (without it, at 60 s every caller would wait for a blocking fetch).
#[test]
fn get_starts_the_refresh_ahead_while_the_alarm_cannot_run() {
    let (cache, fetches) = counting_cache();
    let first = paused_current_thread();
    first.block_on(cache.get()).unwrap();
    another_runtime_later(Duration::from_secs(40)).block_on(async {
        cache.get().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    });
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "get() at 40 s did not start the refresh that was due at 30 s"
    );
}

/// The same steps on one driven runtime.
#[test]
fn get_starts_the_refresh_ahead_on_a_driven_runtime() {
    let (cache, fetches) = counting_cache();
    paused_current_thread().block_on(async {
        cache.get().await.unwrap();
        tokio::time::sleep(Duration::from_secs(40)).await;
        cache.get().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    });
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
}

/// A service that reported ready holds token-1; another request's refusal then invalidates it
/// and a forced refresh runs (slow). The late `call` keeps token-1 (inside its usable time: a
/// refusal then gets a fresh one) and counts no coalesced wait, since it waits for nothing.
#[test]
fn a_late_call_counts_no_wait_it_did_not_make() {
    let (source, _) = counting_source(Duration::from_secs(5));
    let layer = BesenderAuthLayer::new(source);
    let cache = layer.cache().clone();
    let (mut service, stamped) = stamping(&layer);
    paused_current_thread().block_on(async {
        service.ready().await.unwrap();
        let token = cache.get().await.unwrap();
        assert!(cache.invalidate(&token));
        let before = cache.stats().coalesced_waits;
        let _ = service.call(get()).await;
        assert_eq!(
            *stamped.lock().unwrap(),
            [Some("Bearer token-1".to_owned())]
        );
        assert_eq!(
            cache.stats().coalesced_waits,
            before,
            "a dropped waiter counted as a coalesced wait"
        );
    });
}
