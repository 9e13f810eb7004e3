//! Retry fidelity on the wire (its framing: `layer_retry_framing.rs`): the cap's boundary, the
//! counters, a concurrency limit of one, an early refusal of an unread body, and a gRPC client
//! stream refused trailers-only. Every server is on 127.0.0.1.

mod common;

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use besender_auth::{BesenderAuth, BesenderAuthLayer, ReplayBody};
use bytes::Bytes;
use common::{
    Frames, hyper_client,
    recording::{layer, recording_server, without_authorization},
    source::TestSource,
};
use http::{Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::Full;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use tokio::{net::TcpListener, time::timeout};
use tower::{Layer, ServiceExt};

const HANG: Duration = Duration::from_secs(20);

/// `AuthStats::refused_replays` counts refusals not retried because the body is over the cap,
/// whether it grew past the cap or declared a size over it (then it is never buffered at all).
#[tokio::test]
async fn refusal_of_a_declared_over_cap_body_counts_as_refused_replay() {
    let (addr, seen) = recording_server().await;
    let (_source, layer) = layer();
    let service: BesenderAuth<Client<HttpConnector, ReplayBody<Full<Bytes>>>> =
        layer.layer(hyper_client(false));
    let body = Full::new(Bytes::from(vec![7u8; 128 * 1024]));
    let request = Request::post(format!("http://{addr}/big"))
        .body(body)
        .unwrap();
    let response = timeout(HANG, service.oneshot(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(seen.lock().unwrap().len(), 1, "not retried");
    let stats = layer.stats();
    assert_eq!(stats.refusals, 1);
    assert_eq!(
        stats.refused_replays, 1,
        "a refusal not retried because the body is over the cap is a refused replay: {stats:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Boundaries and the Tower contract

/// Exactly at the cap (a `Full` of 64 KiB) is replayed; one byte over is returned as is. (A `Full`
/// is taken whole, so its size hint alone is judged; the boundary of a body kept as it streams
/// is tested in `src/replay/tests.rs`.)
#[tokio::test]
async fn cap_boundary_with_full_bodies() {
    for (len, retried) in [(64 * 1024, true), (64 * 1024 + 1, false)] {
        let (addr, seen) = recording_server().await;
        let (_source, layer) = layer();
        let service: BesenderAuth<Client<HttpConnector, ReplayBody<Full<Bytes>>>> =
            layer.layer(hyper_client(true));
        let content = Bytes::from((0..len).map(|i| (i % 253) as u8).collect::<Vec<_>>());
        let request = Request::put(format!("http://{addr}/cap"))
            .body(Full::new(content.clone()))
            .unwrap();
        let response = timeout(HANG, service.oneshot(request))
            .await
            .unwrap()
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        if retried {
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(seen.len(), 2);
            assert_eq!(seen[1].body, content);
            assert_eq!(
                without_authorization(&seen[0].headers),
                without_authorization(&seen[1].headers)
            );
        } else {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(seen.len(), 1);
        }
    }
}

/// A `ConcurrencyLimit(1)` under the layer: the retry's fresh clone gets the permit the first
/// attempt released; two concurrent refused callers both finish.
#[tokio::test]
async fn retry_under_a_concurrency_limit_of_one() {
    let (addr, seen) = recording_server().await;
    let (_source, layer) = layer();
    let service = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .concurrency_limit(1)
        .service(hyper_client::<ReplayBody<Full<Bytes>>>(false));
    let calls: Vec<_> = (0..2)
        .map(|i| {
            let service = service.clone();
            let request = Request::post(format!("http://{addr}/n{i}"))
                .body(Full::new(Bytes::from(format!("body {i}"))))
                .unwrap();
            tokio::spawn(async move { timeout(HANG, service.oneshot(request)).await })
        })
        .collect();
    for call in calls {
        let response = call.await.unwrap().expect("hung").unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert!(seen.lock().unwrap().len() >= 3);
}

/// An axum server that answers 401 without reading a `Full` body (HTTP/1.1 and h2): the retry
/// succeeds, never a hang. (A smoke test over real connections: on loopback hyper has sent the
/// body before the 401 arrives. That a `Full`'s retry never waits for the first attempt is
/// tested in `layer_readiness.rs`.)
#[tokio::test]
async fn early_refusal_of_an_unread_full_body() {
    use axum::{Router, routing::post};
    async fn handler(headers: axum::http::HeaderMap, _body: axum::body::Body) -> StatusCode {
        if headers.get(header::AUTHORIZATION).unwrap() == "Bearer token-1" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        }
    }
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/early", post(handler));
    tokio::spawn(async move { axum::serve(listener, app).await });
    for h2 in [false, true] {
        let (_source, layer) = layer();
        let service: BesenderAuth<Client<HttpConnector, ReplayBody<Full<Bytes>>>> =
            layer.layer(hyper_client(h2));
        let request = Request::post(format!("http://{addr}/early"))
            .body(Full::new(Bytes::from(vec![1u8; 48 * 1024])))
            .unwrap();
        let outcome = timeout(HANG, service.oneshot(request)).await.expect("hung");
        match outcome {
            Ok(r) => assert_eq!(r.status(), StatusCode::OK, "h2 {h2}: {r:?}"),
            Err(e) => panic!("h2 {h2}: {e:?}"),
        }
        assert_eq!(layer.stats().refused_replays, 0, "h2 {h2}");
    }
}

/// No data; at its end once the peer's end of stream arrives, polled or not, as hyper's HTTP/2
/// request body is (a proxy forwards such bodies).
struct EndsUnpolled(Arc<AtomicBool>);

impl Body for EndsUnpolled {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.0.load(Ordering::SeqCst) {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A client frames the request by `is_end_stream` when it writes the head, which may be long
/// after `call` (it connects first): the first attempt must report an end its body reached
/// unpolled, so that it goes out without a body, as its retry does.
#[tokio::test]
async fn an_end_reached_before_the_first_poll_is_reported() {
    let ended = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let inner = {
        let (ended, seen) = (ended.clone(), seen.clone());
        tower::service_fn(move |request: Request<ReplayBody<EndsUnpolled>>| {
            // The end of stream arrives while the client connects.
            ended.store(true, Ordering::SeqCst);
            let mut seen = seen.lock().unwrap();
            seen.push(request.body().is_end_stream());
            let status = match seen.len() {
                1 => StatusCode::UNAUTHORIZED,
                _ => StatusCode::OK,
            };
            let response = Response::builder().status(status).body(()).unwrap();
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let source = TestSource::new(Duration::from_secs(3600), Duration::ZERO);
    let service = BesenderAuthLayer::new(source.source()).layer(inner);
    let request = Request::post("http://127.0.0.1/x")
        .body(EndsUnpolled(ended))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(*seen.lock().unwrap(), [true, true]);
}

// ---------------------------------------------------------------------------------------------
// A body that is not `Unpin`, boxed as `ReplayBody` documents.

pin_project_lite::pin_project! {
    /// A body that must not move once polled (as a `StreamBody` over an `async` stream).
    struct Pinned {
        #[pin]
        frames: Frames,
        #[pin]
        _pinned: std::marker::PhantomPinned,
    }
}

impl Body for Pinned {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.project().frames.poll_frame(cx)
    }
}

#[tokio::test]
async fn a_body_that_is_not_unpin_is_replayed_once_pinned_in_a_box() {
    let (addr, seen) = recording_server().await;
    let (_source, layer) = layer();
    let service: BesenderAuth<Client<HttpConnector, ReplayBody<Pin<Box<Pinned>>>>> =
        layer.layer(hyper_client(false));
    let body = Box::pin(Pinned {
        frames: Frames::new(&["not ", "unpin"], None),
        _pinned: std::marker::PhantomPinned,
    });
    let request = Request::post(format!("http://{addr}/pinned"))
        .body(body)
        .unwrap();
    let response = timeout(HANG, service.oneshot(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "refused, then replayed");
    assert_eq!(
        (&seen[0].body[..], &seen[1].body[..]),
        (&b"not unpin"[..], &b"not unpin"[..])
    );
}
