//! `poll_ready` waits for the token before it asks the inner service for capacity.

mod common;

use std::{
    convert::Infallible,
    future::{Ready, ready},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use besender_auth::{BesenderAuthLayer, ReplayBody, Token};
use bytes::Bytes;
use common::{TestBody, full_body, settle, source::TestSource};
use http::{Request, Response};
use http_body_util::Empty;
use tokio::time::{Instant, advance};
use tower::{Service, ServiceBuilder, ServiceExt, buffer::Buffer};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// An always-ready service that counts how often it is polled and called.
#[derive(Clone, Default)]
struct Counting {
    polls: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
}

impl Service<Request<ReplayBody<Empty<Bytes>>>> for Counting {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<ReplayBody<Empty<Bytes>>>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        ready(Ok(Response::new(())))
    }
}

fn request() -> Request<Empty<Bytes>> {
    Request::get("http://127.0.0.1/")
        .body(Empty::new())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_concurrency_limit_is_not_polled_until_the_token_is_there() {
    let source = TestSource::new(DAY, Duration::from_secs(5));
    let inner = Counting::default();
    let service = ServiceBuilder::new()
        .layer(BesenderAuthLayer::new(source.source()))
        .concurrency_limit(1)
        .service(inner.clone());
    let caller = tokio::spawn(async move { service.oneshot(request()).await });

    advance(Duration::from_secs(4)).await;
    settle().await;
    assert_eq!(source.in_flight(), 1, "the token fetch is running");
    assert_eq!(
        inner.polls.load(Ordering::SeqCst),
        0,
        "no permit taken while fetching"
    );

    advance(Duration::from_secs(1)).await;
    caller.await.unwrap().unwrap();
    assert_eq!(inner.polls.load(Ordering::SeqCst), 1);
    assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_caller_waiting_for_a_token_holds_no_buffer_slot() {
    let inner = Counting::default();
    // One slot, shared by two authenticated clients with different token sources.
    let buffer = Buffer::new(inner.clone(), 1);
    let slow = TestSource::new(DAY, Duration::from_secs(20));
    let slow_client = ServiceBuilder::new()
        .layer(BesenderAuthLayer::new(slow.source()))
        .service(buffer.clone());
    let fast_client = ServiceBuilder::new()
        .layer(BesenderAuthLayer::new(Token::bearer("fast", DAY)))
        .service(buffer);

    let waiting = tokio::spawn(async move { slow_client.oneshot(request()).await });
    settle().await;
    assert_eq!(slow.in_flight(), 1);

    let start = Instant::now();
    for _ in 0..3 {
        fast_client.clone().oneshot(request()).await.unwrap();
    }
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "the fast client never waited for a slot"
    );
    assert!(!waiting.is_finished());
    assert_eq!(inner.calls.load(Ordering::SeqCst), 3);

    waiting.await.unwrap().unwrap();
    assert_eq!(inner.calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn clones_of_the_service_share_one_cache() {
    let source = TestSource::new(DAY, Duration::from_millis(10));
    let layer = BesenderAuthLayer::new(source.source());
    let a = ServiceBuilder::new()
        .layer(layer.clone())
        .service(Counting::default());
    let b = ServiceBuilder::new()
        .layer(layer)
        .service(Counting::default());
    let callers: Vec<_> = (0..50)
        .map(|i| {
            let service = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { service.oneshot(request()).await })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap().unwrap();
    }
    assert_eq!(source.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_token_outage_does_not_kill_a_buffered_service() {
    let source = TestSource::new(DAY, Duration::ZERO);
    let inner = Counting::default();
    let service = ServiceBuilder::new()
        .buffer(8)
        .layer(BesenderAuthLayer::from_cache(
            besender_auth::TokenCache::builder(source.source())
                .error_hold(Duration::from_secs(1))
                .build(),
        ))
        .service(inner.clone());
    source.set_down(true);
    let err = service.clone().oneshot(request()).await.unwrap_err();
    let err = err
        .downcast::<besender_auth::Error>()
        .expect("the layer's error, not Buffer's");
    assert!(matches!(*err, besender_auth::Error::Token(_)));
    assert_eq!(inner.calls.load(Ordering::SeqCst), 0);

    source.set_down(false);
    advance(Duration::from_secs(2)).await;
    service.clone().oneshot(request()).await.unwrap();
    assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
}

/// Ready only after `open` is set.
#[derive(Clone, Default)]
struct Gate {
    open: Arc<std::sync::atomic::AtomicBool>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Service<Request<ReplayBody<Empty<Bytes>>>> for Gate {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.open.load(Ordering::SeqCst) {
            Poll::Ready(Ok(()))
        } else {
            cx.waker().wake_by_ref(); // polled again soon
            Poll::Pending
        }
    }

    fn call(&mut self, request: Request<ReplayBody<Empty<Bytes>>>) -> Self::Future {
        let token = request.headers()["authorization"]
            .to_str()
            .unwrap()
            .to_owned();
        self.seen.lock().unwrap().push(token);
        ready(Ok(Response::new(())))
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_after_a_long_wait_for_the_inner_service_carries_the_current_token() {
    let source = TestSource::new(DAY, Duration::ZERO);
    let layer = BesenderAuthLayer::new(source.source()).retry(false);
    let gate = Gate::default();
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(gate.clone());
    let caller = tokio::spawn(async move { service.oneshot(request()).await });
    settle().await;
    assert_eq!(source.calls(), 1, "token leased, inner not ready");
    // Meanwhile the token is refused elsewhere and replaced.
    let old = layer.cache().get().await.unwrap();
    assert!(layer.cache().invalidate(&old));
    layer.cache().get().await.unwrap();
    gate.open.store(true, Ordering::SeqCst);
    caller.await.unwrap().unwrap();
    assert_eq!(*gate.seen.lock().unwrap(), ["Bearer token-2"]);
}

type Held<B> = Arc<std::sync::Mutex<Option<Request<ReplayBody<B>>>>>;

/// Refuses the first request at once while keeping hold of it (as a server that answers before
/// reading the body keeps the upload going); echoes the body of the next.
struct EarlyRefuser<B> {
    held: Held<B>,
    calls: Arc<AtomicU64>,
}

impl<B> Default for EarlyRefuser<B> {
    fn default() -> Self {
        Self {
            held: Arc::default(),
            calls: Arc::default(),
        }
    }
}

impl<B> Clone for EarlyRefuser<B> {
    fn clone(&self) -> Self {
        Self {
            held: Arc::clone(&self.held),
            calls: Arc::clone(&self.calls),
        }
    }
}

impl<B> Service<Request<ReplayBody<B>>> for EarlyRefuser<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<besender_auth::BoxError>,
{
    type Response = Response<Bytes>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Bytes>, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReplayBody<B>>) -> Self::Future {
        use http_body_util::BodyExt;
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            *self.held.lock().unwrap() = Some(request);
            let mut refusal = Response::new(Bytes::new());
            *refusal.status_mut() = http::StatusCode::UNAUTHORIZED;
            return Box::pin(async move { Ok(refusal) });
        }
        Box::pin(async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            Ok(Response::new(body))
        })
    }
}

const UPLOAD: &[u8] = b"the whole upload";

/// A body the layer streams and keeps as it goes (any body but a `Full<Bytes>`).
fn streamed_upload() -> Request<TestBody> {
    Request::post("http://127.0.0.1/upload")
        .body(full_body(UPLOAD))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_early_refusal_is_retried_once_the_first_attempt_lets_go_of_the_body() {
    let source = TestSource::new(DAY, Duration::ZERO);
    let inner = EarlyRefuser::<TestBody>::default();
    let service = ServiceBuilder::new()
        .layer(BesenderAuthLayer::new(source.source()))
        .service(inner.clone());
    let caller = tokio::spawn(async move { service.oneshot(streamed_upload()).await });
    settle().await;
    assert!(!caller.is_finished(), "the retry waits for the body");
    drop(inner.held.lock().unwrap().take()); // the first attempt lets go
    let response = caller.await.unwrap().unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(response.into_body(), UPLOAD);
    assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
}

/// A `Full<Bytes>` body is whole in memory: each attempt has its own handle on its bytes, so an
/// early refusal is retried at once, while the first attempt still holds its body.
#[tokio::test(start_paused = true)]
async fn an_early_refusal_of_a_body_whole_in_memory_is_retried_at_once() {
    let source = TestSource::new(DAY, Duration::ZERO);
    let inner = EarlyRefuser::<http_body_util::Full<Bytes>>::default();
    let layer = BesenderAuthLayer::new(source.source());
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(inner.clone());
    let upload = Request::post("http://127.0.0.1/upload")
        .body(http_body_util::Full::new(Bytes::from_static(UPLOAD)))
        .unwrap();
    let started = Instant::now();
    let response = service.oneshot(upload).await.unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no wait for the first attempt"
    );
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(response.into_body(), UPLOAD);
    assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    assert_eq!(layer.stats().refused_replays, 0);
    // The first attempt's body, still held, is whole too: it sends every byte.
    use http_body_util::BodyExt;
    let held = inner.held.lock().unwrap().take().expect("still held");
    let first = held.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(first, UPLOAD);
}

#[tokio::test(start_paused = true)]
async fn an_early_refusal_whose_body_is_never_released_returns_the_refusal() {
    let source = TestSource::new(DAY, Duration::ZERO);
    let inner = EarlyRefuser::<TestBody>::default();
    let layer = BesenderAuthLayer::new(source.source()).replay_wait(Duration::from_secs(1));
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(inner.clone());
    let response = service.oneshot(streamed_upload()).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::UNAUTHORIZED);
    assert_eq!(inner.calls.load(Ordering::SeqCst), 1, "not retried");
    assert_eq!(layer.stats().refused_replays, 1);
    assert!(
        inner.held.lock().unwrap().is_some(),
        "still held: no hang, no second reader"
    );
}

/// Never ready; panics if called anyway.
#[derive(Clone)]
struct NeverReady;

impl Service<Request<ReplayBody<Empty<Bytes>>>> for NeverReady {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Pending
    }

    fn call(&mut self, _request: Request<ReplayBody<Empty<Bytes>>>) -> Self::Future {
        panic!("called without being ready")
    }
}

#[tokio::test]
async fn a_call_after_pending_poll_ready_is_refused_not_sent() {
    let layer = BesenderAuthLayer::new(Token::bearer("abc", DAY));
    layer.cache().get().await.unwrap();
    let mut service = tower::Layer::layer(&layer, NeverReady);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(
        service.poll_ready(&mut cx).is_pending(),
        "token at hand, inner not ready"
    );
    let err = service.call(request()).await.unwrap_err();
    assert!(matches!(err, besender_auth::Error::NotReady), "{err:?}");
}
