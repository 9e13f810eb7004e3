//! Retry fidelity on the wire: the retry goes out as the first attempt did (the same header
//! section but for the token, the same framing, the same body bytes and trailers), the cap's
//! boundary, the counters, a concurrency limit of one, an early refusal of an unread body, and
//! a gRPC client stream refused trailers-only. Every server is on 127.0.0.1.

mod common;

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
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
use common::{hyper_client, source::TestSource};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{net::TcpListener, time::timeout};
use tower::{Layer, ServiceExt};

const HANG: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A well-behaved streaming body: frames handed out in order, size unknown, and
/// `is_end_stream` true once every frame (trailers included) was read.
struct Frames(VecDeque<Frame<Bytes>>);

impl Frames {
    fn new(chunks: &[&'static str], trailers: Option<HeaderMap>) -> Self {
        let mut frames: VecDeque<_> = chunks
            .iter()
            .map(|c| Frame::data(Bytes::from_static(c.as_bytes())))
            .collect();
        if let Some(t) = trailers {
            frames.push_back(Frame::trailers(t));
        }
        Self(frames)
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default() // unknown: the caller streams it
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

/// HTTP/1.1 + h2c server: reads each request in full (body and trailers), records it, answers
/// 401 `Bearer error="invalid_token"` to `Bearer token-1`, 200 otherwise.
async fn recording_server() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let log = Arc::clone(&log);
                    async move {
                        let (parts, body) = request.into_parts();
                        let collected = body.collect().await.unwrap();
                        let trailers = collected.trailers().cloned();
                        let body = collected.to_bytes();
                        let refused = parts.headers.get(header::AUTHORIZATION)
                            == Some(&HeaderValue::from_static("Bearer token-1"));
                        log.lock().unwrap().push(Seen {
                            version: parts.version,
                            headers: parts.headers,
                            body,
                            trailers,
                        });
                        let mut response = Response::new(Full::new(Bytes::new()));
                        if refused {
                            *response.status_mut() = StatusCode::UNAUTHORIZED;
                            response.headers_mut().insert(
                                header::WWW_AUTHENTICATE,
                                HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                            );
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn layer() -> (TestSource, BesenderAuthLayer) {
    let source = TestSource::new(Duration::from_secs(3600), Duration::ZERO);
    let layer = BesenderAuthLayer::new(source.source());
    (source, layer)
}

fn without_authorization(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = headers
        .iter()
        .filter(|(n, _)| *n != header::AUTHORIZATION)
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 request trailers survive the retry.

/// RFC 9110 §6.5 / RFC 9112 §7.1.2: trailers travel in chunked framing. The first attempt of a
/// streaming body is chunked (unknown size) and carries its trailers; so must the retry. (An
/// earlier version reported the replay's exact size, so hyper framed the retry with
/// Content-Length, which has no room for trailers, and dropped them.)
#[tokio::test]
async fn h1_retry_keeps_request_trailers() {
    let (addr, seen) = recording_server().await;
    let (_source, layer) = layer();
    let service: BesenderAuth<Client<HttpConnector, ReplayBody<Frames>>> =
        layer.layer(hyper_client(false));
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
    let request = Request::post(format!("http://{addr}/upload"))
        .header(header::TRAILER, "x-checksum")
        .body(Frames::new(&["hello ", "world"], Some(trailers.clone())))
        .unwrap();
    let response = timeout(HANG, service.oneshot(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one refusal, one retry");
    assert_eq!(seen[0].body, "hello world");
    assert_eq!(seen[1].body, "hello world");
    assert_eq!(
        seen[0].trailers.as_ref(),
        Some(&trailers),
        "the first attempt carried its trailers"
    );
    assert_eq!(
        seen[1].trailers.as_ref(),
        Some(&trailers),
        "the retry lost the request trailers (retry headers: {:?})",
        seen[1].headers
    );
}

// ---------------------------------------------------------------------------------------------
// The retry's framing headers are the first attempt's.

/// The retry carries the same header section as the first attempt (but for the token). For a
/// streaming body of unknown size the first attempt goes out chunked (HTTP/1.1) or with no
/// Content-Length (h2), and so does the retry: the replay declares an exact size only if the
/// caller's body did.
#[tokio::test]
async fn retry_keeps_the_first_attempts_framing_headers() {
    let mut mismatches = Vec::new();
    for h2 in [false, true] {
        let (addr, seen) = recording_server().await;
        let (_source, layer) = layer();
        let service: BesenderAuth<Client<HttpConnector, ReplayBody<Frames>>> =
            layer.layer(hyper_client(h2));
        let request = Request::post(format!("http://{addr}/upload?x=1"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Frames::new(&["hello ", "world"], None))
            .unwrap();
        let response = timeout(HANG, service.oneshot(request))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "h2: {h2}");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].version, seen[1].version);
        assert_eq!(seen[1].body, "hello world");
        let (first, retry) = (
            without_authorization(&seen[0].headers),
            without_authorization(&seen[1].headers),
        );
        if first != retry {
            let show = |h: &[(String, Vec<u8>)]| {
                h.iter()
                    .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            mismatches.push(format!(
                "{}: first [{}] retry [{}]",
                if h2 { "h2" } else { "HTTP/1.1" },
                show(&first),
                show(&retry)
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "the retry's headers differ from the first attempt's:\n{}",
        mismatches.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// A refusal of a body declared over the cap is counted as a refused replay.

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

/// Exactly at the cap (a `Full` of 64 KiB) is replayed; one byte over is returned as is.
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

/// An axum server that answers 401 without reading a `Full` body (HTTP/1.1 and h2): the
/// outcome is a retry that succeeds or the 401, never a hang.
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
            Ok(r) => assert!(
                r.status() == StatusCode::OK || r.status() == StatusCode::UNAUTHORIZED,
                "h2 {h2}: {r:?}"
            ),
            Err(e) => panic!("h2 {h2}: {e:?}"),
        }
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
