//! The retry's bounded wait for the first attempt to let go of the body, when the response
//! future is polled on one runtime and then another (a synchronous wrapper gives up a call
//! that takes too long, and polls it again on the next call's runtime): its timer must be the
//! runtime's polling it, never one kept from a runtime since dropped or now idle.

use std::{
    convert::Infallible,
    future::ready,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use besender_auth::{BesenderAuthLayer, Error, ReplayBody, Token, TokenCache};
use bytes::Bytes;
use http::{Request, Response, StatusCode, header::AUTHORIZATION};
use http_body_util::{BodyExt, Full};
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt, service_fn};

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A body the layer streams (a `Full<Bytes>` is whole in memory, and its retry never waits).
type Upload = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

type Held = Arc<Mutex<Option<ReplayBody<Upload>>>>;

/// An inner service that refuses `token-1` at once while it keeps the request's body (as a
/// client still sending it does), and accepts any other token; over a cache issuing
/// `token-1`, `token-2`, ... Its response futures depend on no runtime (as a `Buffer`'s).
fn holding_service(
    replay_wait: Duration,
) -> (
    impl Service<Request<Upload>, Response = Response<()>, Error = Error, Future: Send + 'static>
    + Clone,
    Held,
) {
    let n = Arc::new(AtomicU64::new(0));
    let cache = TokenCache::new(move || {
        let n = n.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            Ok::<_, Infallible>(Token::bearer(
                format!("token-{n}"),
                Duration::from_secs(3600),
            ))
        }
    });
    let held = Arc::new(Mutex::new(None));
    let keep = Arc::clone(&held);
    let inner = service_fn(move |request: Request<ReplayBody<Upload>>| {
        let mut response = Response::new(());
        if request.headers()[AUTHORIZATION] == "Bearer token-1" {
            *keep.lock().unwrap() = Some(request.into_body());
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        ready(Ok::<_, Infallible>(response))
    });
    let service = BesenderAuthLayer::from_cache(cache)
        .replay_wait(replay_wait)
        .layer(inner);
    (service, held)
}

fn post() -> Request<Upload> {
    Request::post("http://api.example/")
        .body(Full::new(Bytes::from_static(b"payload")).boxed_unsync())
        .unwrap()
}

/// A refused request's retry waits for the first attempt to let go of the body. That wait
/// began on a runtime of its own call, which gave up and was dropped; the response future is
/// then polled on the next runtime. Its timer must be that runtime's (the kept one panicked).
#[test]
fn a_replay_wait_begun_on_a_runtime_since_dropped_goes_on_on_the_next() {
    let (service, held) = holding_service(Duration::from_secs(5));
    let per_call = current_thread();
    let mut service = service.clone();
    per_call
        .block_on(async { service.ready().await.map(|_| ()) })
        .unwrap();
    let mut response = Box::pin(service.call(post()));
    let gave_up = per_call
        .block_on(async { tokio::time::timeout(Duration::from_millis(50), &mut response).await });
    assert!(gave_up.is_err(), "the retry waits for the body");
    drop(per_call);

    let next = current_thread();
    let response = next.block_on(async {
        let held = Arc::clone(&held);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            held.lock().unwrap().take();
        });
        tokio::time::timeout(Duration::from_secs(20), &mut response)
            .await
            .expect("the wait hung")
    });
    assert_eq!(
        response.unwrap().status(),
        StatusCode::OK,
        "retried once released"
    );
}

/// The same wait, begun on a runtime that then sits idle, with a body never let go of: it
/// still ends after `replay_wait` with the refusal (its timer on the idle runtime never fired).
#[test]
fn a_replay_wait_begun_on_an_idle_runtime_still_ends_after_replay_wait() {
    let (service, _held) = holding_service(Duration::from_secs(1));
    let idle = current_thread();
    let mut service = service.clone();
    idle.block_on(async { service.ready().await.map(|_| ()) })
        .unwrap();
    let mut response = Box::pin(service.call(post()));
    let gave_up = idle
        .block_on(async { tokio::time::timeout(Duration::from_millis(50), &mut response).await });
    assert!(gave_up.is_err(), "the retry waits for the body");

    let response = current_thread()
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), &mut response).await })
        .expect("the wait never ended");
    assert_eq!(response.unwrap().status(), StatusCode::UNAUTHORIZED);
    drop(idle);
}
