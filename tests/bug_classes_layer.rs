//! Bug classes users of other token middlewares reported (ANCHORS.md), through the layer: a
//! late 401 for a replaced token, a refresh returning the refused token's text, tokens in
//! `Debug`, the token's load time charged to a request timeout, a token past the intern budget
//! stamped without the sensitive flag. Each test fails with its bug put back.

mod common;

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use besender_auth::{BesenderAuthLayer, ReplayBody, Token, TokenCache};
use bytes::Bytes;
use common::{
    settle,
    source::{SourceDown, TestSource},
};
use http::{Request, Response, StatusCode, header};
use http_body_util::Empty;
use tokio::sync::Notify;
use tower::{Layer, Service, ServiceExt};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

type Body = Empty<Bytes>;

/// An API that refuses the header value `refused`; the first request it receives is held until
/// `release`.
#[derive(Clone)]
struct HoldFirst {
    seen: Arc<Mutex<Vec<String>>>,
    release: Arc<Notify>,
    refused: &'static str,
}

impl HoldFirst {
    fn refusing(refused: &'static str) -> Self {
        Self {
            seen: Arc::default(),
            release: Arc::new(Notify::new()),
            refused,
        }
    }
}

impl Service<Request<ReplayBody<Body>>> for HoldFirst {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<()>, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReplayBody<Body>>) -> Self::Future {
        let token = request.headers()[header::AUTHORIZATION]
            .to_str()
            .unwrap()
            .to_owned();
        let first = {
            let mut seen = self.seen.lock().unwrap();
            seen.push(token.clone());
            seen.len() == 1
        };
        let release = Arc::clone(&self.release);
        let refused = token == self.refused;
        Box::pin(async move {
            if first {
                release.notified().await;
            }
            let mut response = Response::new(());
            if refused {
                *response.status_mut() = StatusCode::UNAUTHORIZED;
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    r#"Bearer error="invalid_token""#.parse().unwrap(),
                );
            }
            Ok(response)
        })
    }
}

fn get() -> Request<Body> {
    Request::get("http://127.0.0.1/")
        .body(Empty::new())
        .unwrap()
}

/// A token source that answers every fetch with the same text, `Bearer always-the-same`,
/// counting its fetches in `fetches`.
fn same_text_source(
    fetches: &Arc<AtomicU64>,
) -> impl Fn() -> std::future::Ready<Result<Token, SourceDown>> + Send + Sync + 'static {
    let fetches = Arc::clone(fetches);
    move || {
        fetches.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(Token::bearer("always-the-same", DAY)))
    }
}

/// An API that refuses every request.
#[derive(Clone, Default)]
struct RefuseAll {
    calls: Arc<AtomicU64>,
}

impl Service<Request<ReplayBody<Body>>> for RefuseAll {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<ReplayBody<Body>>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        std::future::ready(Ok(response))
    }
}

/// The layer's view of the same class: a request carrying token-1 is answered 401 only after
/// another request's refusal already replaced token-1 and its retry was accepted. The late 401
/// must neither evict token-2 nor cost a token call; its retry carries token-2.
#[tokio::test(start_paused = true)]
async fn a_late_401_for_the_old_token_keeps_the_fresh_token() {
    let source = TestSource::new(DAY, Duration::ZERO);
    let layer = BesenderAuthLayer::new(source.source());
    let api = HoldFirst::refusing("Bearer token-1");
    let service = layer.layer(api.clone());
    let late = tokio::spawn(service.clone().oneshot(get()));
    settle().await;
    assert_eq!(api.seen.lock().unwrap().len(), 1, "held with token-1");

    let response = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(source.calls(), 2);

    api.release.notify_one();
    let response = late.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(source.calls(), 2, "the late 401 evicted the fresh token");
    assert_eq!(
        *api.seen.lock().unwrap(),
        [
            "Bearer token-1",
            "Bearer token-1",
            "Bearer token-2",
            "Bearer token-2",
            "Bearer token-2",
        ]
    );
}

/// ANCHORS "refresh loop" / BesChannels: a refresh may return the token already held (a new
/// fetch, a new generation, the same text). That is "the same token again": no retry.
#[tokio::test(start_paused = true)]
async fn a_refresh_that_returns_the_same_token_text_is_not_retried() {
    let fetches = Arc::new(AtomicU64::new(0));
    let layer = BesenderAuthLayer::new(same_text_source(&fetches));
    let api = RefuseAll::default();
    let service = layer.layer(api.clone());
    let response = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(fetches.load(Ordering::SeqCst), 2, "the refusal refreshed");
    assert_eq!(
        api.calls.load(Ordering::SeqCst),
        1,
        "retried with the refused token"
    );
    let stats = layer.stats();
    assert_eq!((stats.retries, stats.not_retried_no_new_token), (0, 1));
}

/// The same, for a refusal that comes back late: by then other requests' refusals have made the
/// cache fetch again, and each fetch gave the same text under a new generation. The late refusal
/// is of an older generation than the cache's, yet its fresh token is the refused one: no retry
/// (the cache still knows the older generation's value).
#[tokio::test(start_paused = true)]
async fn a_late_refusal_whose_token_came_back_the_same_from_a_refresh_is_not_retried() {
    late_refusal_after_same_text_refreshes(1, None).await;
}

/// As above, after many such refreshes in a row, which nothing rate-limits with a zero
/// forced-refresh interval: the same text, refreshed again and again, is still remembered.
#[tokio::test(start_paused = true)]
async fn a_late_refusal_is_not_retried_after_many_refreshes_to_the_same_text() {
    late_refusal_after_same_text_refreshes(20, Some(Duration::ZERO)).await;
}

/// One request held by the API while `refusals` others are refused and refresh the token (to
/// the same text each time), then the held one refused.
async fn late_refusal_after_same_text_refreshes(refusals: u64, interval: Option<Duration>) {
    let fetches = Arc::new(AtomicU64::new(0));
    let mut cache = TokenCache::builder(same_text_source(&fetches));
    if let Some(interval) = interval {
        cache = cache.min_forced_refresh_interval(interval);
    }
    let layer = BesenderAuthLayer::from_cache(cache.build());
    let api = HoldFirst::refusing("Bearer always-the-same");
    let service = layer.layer(api.clone());
    let late = tokio::spawn(service.clone().oneshot(get()));
    settle().await;
    assert_eq!(api.seen.lock().unwrap().len(), 1, "held");

    // Each refused, refreshed to the same text: not retried.
    for _ in 0..refusals {
        let response = service.clone().oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1 + refusals);

    api.release.notify_one();
    let response = late.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let sent = api.seen.lock().unwrap().len() as u64;
    assert_eq!(sent, 1 + refusals, "the late refusal was retried");
    let stats = layer.stats();
    assert_eq!(
        (stats.retries, stats.not_retried_no_new_token),
        (0, 1 + refusals)
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 1 + refusals);
}

/// ANCHORS "tokens in logs" (Azure #1699, kittycad #1041): `Debug` of every value of ours that
/// holds a token, at the moment it holds one, shows no token.
#[tokio::test(start_paused = true)]
async fn debug_of_everything_holding_a_token_shows_no_token() {
    const TOKEN: &str = "tok-3f9a1c7e5b2d";
    let layer = BesenderAuthLayer::new(Token::bearer(TOKEN, DAY));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&bodies);
    let inner = tower::service_fn(move |request: Request<ReplayBody<Body>>| {
        seen.lock()
            .unwrap()
            .push(format!("{request:?} {:?}", request.body()));
        async { Ok::<_, Infallible>(Response::new(())) }
    });
    let mut service = layer.layer(inner);
    service.ready().await.unwrap();
    let ready = format!("{service:?}");
    let future = service.call(get());
    let in_flight = format!("{future:?}");
    future.await.unwrap();
    let err = format!(
        "{:?}",
        besender_auth::Error::Token(
            TokenCache::new(|| async { Err::<Token, _>(SourceDown) })
                .get()
                .await
                .unwrap_err()
        )
    );
    let token = layer.cache().get().await.unwrap();
    let sent = bodies.lock().unwrap().join(" ");
    let texts = [
        ready,
        in_flight,
        sent,
        format!("{layer:?}"),
        format!("{:?}", layer.stats()),
        format!("{:?}", layer.cache()),
        format!("{token:?}"),
        format!("{:?}", layer.cache().cached_header()),
        err,
    ];
    for text in texts {
        assert!(!text.contains(TOKEN) && !text.contains("3f9a1c"), "{text}");
    }
}

/// smithy-rs #2086: the token's load time must not be charged to the request's timeout. A
/// 1 s request timeout outside the layer, a 5 s token fetch: the request succeeds.
#[tokio::test(start_paused = true)]
async fn a_token_fetch_is_not_charged_to_a_request_timeout_outside_the_layer() {
    let source = TestSource::new(DAY, Duration::from_secs(5));
    let service = tower::ServiceBuilder::new()
        .timeout(Duration::from_secs(1))
        .layer(BesenderAuthLayer::new(source.source()))
        .service(tower::service_fn(|_: Request<ReplayBody<Body>>| async {
            Ok::<_, Infallible>(Response::new(()))
        }));
    let response = service.oneshot(get()).await;
    assert!(response.is_ok(), "{:?}", response.err());
}

/// ANCHORS "tokens in logs" / `set_sensitive(true)`: past the interning budget (1 MiB per
/// process; a token larger than it never fits) each thread's copy of the header value is made
/// afresh; it must still be sensitive, on the hot path, on another thread, and as stamped.
#[tokio::test(start_paused = true)]
async fn a_token_past_the_intern_budget_is_still_stamped_sensitive() {
    let huge = "x".repeat((1 << 20) + 1);
    let layer = BesenderAuthLayer::new(Token::bearer(&huge, DAY));
    let stamped = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&stamped);
    let service = layer.layer(tower::service_fn(
        move |request: Request<ReplayBody<Body>>| {
            seen.lock()
                .unwrap()
                .push(request.headers()[header::AUTHORIZATION].is_sensitive());
            async { Ok::<_, Infallible>(Response::new(())) }
        },
    ));
    service.clone().oneshot(get()).await.unwrap();
    service.oneshot(get()).await.unwrap();
    assert_eq!(*stamped.lock().unwrap(), [true, true]);
    let cache = layer.cache().clone();
    assert!(cache.cached_header().unwrap().is_sensitive());
    let elsewhere = std::thread::spawn(move || cache.cached_header().map(|h| h.is_sensitive()))
        .join()
        .unwrap();
    assert_eq!(elsewhere, Some(true), "another thread's copy");
}
