//! A service left waiting for a token fetch, and not polled again until long after that fetch
//! failed, looks at the cache again instead of reporting the old failure (found by the
//! randomized stress test, `layer_stress`, paused clock, seed 728). A `Buffer` over the layer
//! does exactly this: when the request its worker was polling for is cancelled, the worker
//! polls its service again only for the next request. Before the fix that request failed with
//! the old error, although a valid token was cached by then, or the failure's backoff was over
//! (README: the last error is returned only "until the next attempt is due"). A failure that
//! is still the cache's last word (its backoff runs) is still reported at once, without a
//! second fetch.

mod common;

use std::{
    convert::Infallible,
    future::{Ready, ready},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use besender_auth::{
    BesenderAuthLayer, Error, ReplayBody, Token, TokenCache, TokenErrorKind, TokenSource,
};
use bytes::Bytes;
use common::source::SourceDown;
use http::{Request, Response};
use http_body_util::Empty;
use tokio::time::sleep;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

type Body = Empty<Bytes>;

/// Fetch 1 fails after 5 s; the others return a token at once. Counts the fetches.
fn source(calls: Arc<AtomicU64>) -> impl TokenSource {
    move || {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n == 1 {
                sleep(Duration::from_secs(5)).await;
                return Err(SourceDown);
            }
            Ok(Token::bearer(format!("t{n}"), Duration::from_secs(3600)))
        }
    }
}

/// Fetch 1 hangs (until the cache's fetch timeout); the others return a token at once.
fn hanging_once(calls: Arc<AtomicU64>) -> impl TokenSource {
    move || {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n == 1 {
                std::future::pending::<()>().await;
            }
            Ok::<_, SourceDown>(Token::bearer(format!("t{n}"), Duration::from_secs(3600)))
        }
    }
}

fn layer() -> BesenderAuthLayer {
    BesenderAuthLayer::new(source(Arc::default()))
}

/// Answers 200 to every request.
#[derive(Clone)]
struct Api;

impl Service<Request<ReplayBody<Body>>> for Api {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<ReplayBody<Body>>) -> Self::Future {
        ready(Ok(Response::new(())))
    }
}

fn get() -> Request<Body> {
    Request::get("http://127.0.0.1/")
        .body(Empty::new())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_service_polled_again_after_its_fetch_failed_uses_the_token_fetched_since() {
    let layer = layer();
    let mut service = layer.layer(Api);
    // Polled once, it waits for fetch 1; then nobody polls it for a minute.
    let mut cx = Context::from_waker(Waker::noop());
    assert!(service.poll_ready(&mut cx).is_pending());
    sleep(Duration::from_secs(60)).await;
    // Fetch 1 failed long ago; another caller gets fetch 2's token.
    layer.cache().get().await.expect("fetch 2 succeeds");

    service.ready().await.unwrap();
    let response = service.call(get()).await;
    assert!(
        response.is_ok(),
        "the stale failure: {}",
        response.unwrap_err()
    );
}

/// How a user meets it: a request through a `Buffer` over the layer, given up while it waits
/// for the first fetch, makes the next request fail a minute later.
#[tokio::test(start_paused = true)]
async fn a_request_through_a_buffer_after_a_cancelled_one_uses_the_token_at_hand() {
    let layer = layer();
    let stack = ServiceBuilder::new()
        .buffer(4)
        .layer(layer.clone())
        .service(Api);
    let given_up = tokio::time::timeout(Duration::from_secs(1), stack.clone().oneshot(get())).await;
    assert!(given_up.is_err(), "still waiting for fetch 1");
    sleep(Duration::from_secs(60)).await;
    layer.cache().get().await.expect("fetch 2 succeeds");

    let response = stack.oneshot(get()).await;
    assert!(
        response.is_ok(),
        "the stale failure: {}",
        response.unwrap_err()
    );
}

/// Nobody fetched since, but the failure's backoff is long over: the service starts the next
/// fetch and waits for it, as a service polled for the first time would.
#[tokio::test(start_paused = true)]
async fn a_service_polled_again_after_the_backoff_starts_the_next_fetch() {
    let calls = Arc::new(AtomicU64::new(0));
    let mut service = BesenderAuthLayer::new(source(Arc::clone(&calls))).layer(Api);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(service.poll_ready(&mut cx).is_pending());
    sleep(Duration::from_secs(60)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "nobody fetched since");

    service.ready().await.unwrap();
    service.call(get()).await.expect("fetch 2's token");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A failure that is still the cache's last word (its backoff runs) is reported at once, by
/// the call, without another fetch.
#[tokio::test(start_paused = true)]
async fn a_fresh_failure_still_fails_the_call_at_once() {
    let calls = Arc::new(AtomicU64::new(0));
    let mut service = BesenderAuthLayer::new(source(Arc::clone(&calls))).layer(Api);
    service.ready().await.unwrap();
    let err = service.call(get()).await.expect_err("fetch 1 failed");
    assert!(matches!(err, Error::Token(_)), "{err}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no second fetch during the backoff"
    );
}

/// A service polled as its fetch times out reports the timeout, without waiting for another
/// fetch: the failure's backoff runs, as for any caller. Polled again after the backoff, it
/// starts the next fetch, as any caller would (the stress test's seed 105 met a timeout
/// reported long after its backoff).
#[tokio::test(start_paused = true)]
async fn a_fetch_that_timed_out_is_reported_then_the_next_attempt_starts_when_due() {
    let calls = Arc::new(AtomicU64::new(0));
    let cache = TokenCache::builder(hanging_once(Arc::clone(&calls)))
        .fetch_timeout(Duration::from_secs(2))
        .build();
    let layer = BesenderAuthLayer::from_cache(cache);
    let mut prompt = layer.layer(Api);
    prompt.ready().await.unwrap();
    let err = prompt.call(get()).await.expect_err("the fetch timed out");
    match &err {
        Error::Token(token) => assert!(
            matches!(token.kind(), TokenErrorKind::Timeout { .. }),
            "{err}"
        ),
        other => panic!("{other}"),
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no second fetch was waited for"
    );

    // Left waiting for a fetch that then times out, and polled again after the backoff.
    let late = Arc::new(AtomicU64::new(0));
    let cache = TokenCache::builder(hanging_once(Arc::clone(&late)))
        .fetch_timeout(Duration::from_secs(2))
        .build();
    let mut service = BesenderAuthLayer::from_cache(cache).layer(Api);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(service.poll_ready(&mut cx).is_pending());
    sleep(Duration::from_secs(60)).await;
    service.ready().await.unwrap();
    service.call(get()).await.expect("the next fetch's token");
    assert_eq!(late.load(Ordering::SeqCst), 2);
}
