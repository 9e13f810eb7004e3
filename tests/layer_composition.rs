//! The layer among other Tower middleware, against a hyper server on 127.0.0.1: `tower::retry`
//! and tower-http's layers above and below it, `Buffer`/`ConcurrencyLimit`/`Timeout`/`RateLimit`
//! behind a `BoxCloneService`, a client held in axum `State`, calls spawned on either runtime,
//! and requests whose shape is unusual (an absolute URI with no path, data that is not `Bytes`,
//! a replay cap of zero). From the third acceptance-style review.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

mod common;

use besender_auth::{BesenderAuth, BesenderAuthLayer, ReplayBody};
use bytes::Bytes;
use common::{Frames, source::TestSource};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use tokio::net::TcpListener;
use tower::{BoxError, ServiceBuilder, ServiceExt, util::BoxCloneService};

/// A layer over a source handing out `token-1`, `token-2`, ... at once; and the source, which
/// counts its fetches.
fn counting_layer() -> (TestSource, BesenderAuthLayer) {
    let source = TestSource::new(Duration::from_secs(3600), Duration::ZERO);
    let layer = BesenderAuthLayer::new(source.source());
    (source, layer)
}

#[derive(Clone, Debug)]
struct Hit {
    auth: Vec<String>,
    headers: http::HeaderMap,
    body: Bytes,
}

/// Refuses `Bearer token-1` with 401 (`invalid_token`); answers 503 the first time /flaky is
/// asked; echoes the body of everything else with 200. Records every request.
async fn api() -> (String, Arc<Mutex<Vec<Hit>>>) {
    api_refusing("token-1").await
}

/// [`api`], refusing `refused` instead.
async fn api_refusing(refused: &'static str) -> (String, Arc<Mutex<Vec<Hit>>>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(Mutex::new(Vec::new()));
    let log = hits.clone();
    let flaky = Arc::new(AtomicUsize::new(0));
    common::serve(listener, move |parts, body| {
        let auth: Vec<String> = parts
            .headers
            .get_all("authorization")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        log.lock().unwrap().push(Hit {
            auth: auth.clone(),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
        let response = if auth.iter().any(|a| *a == format!("Bearer {refused}")) {
            Response::builder()
                .status(401)
                .header("www-authenticate", "Bearer error=\"invalid_token\"")
                .body(Frames::exact(Bytes::new()))
                .unwrap()
        } else if parts.uri.path() == "/flaky" && flaky.fetch_add(1, Ordering::SeqCst) == 0 {
            Response::builder()
                .status(503)
                .body(Frames::exact(Bytes::new()))
                .unwrap()
        } else {
            Response::new(Frames::exact(body))
        };
        std::future::ready(response)
    });
    (format!("http://{addr}"), hits)
}

fn client() -> Client<HttpConnector, ReplayBody<Full<Bytes>>> {
    common::hyper_client(false)
}

fn post(url: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(url)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// `Buffer`, `ConcurrencyLimit`, `Timeout` and `RateLimit` above the layer, boxed: 20
/// concurrent callers, one refusal, one refresh.
#[tokio::test]
async fn tower_middleware_above_the_layer_boxed() {
    let (base, hits) = api().await;
    let (calls, layer) = counting_layer();
    let stack = ServiceBuilder::new()
        .map_err(|e: BoxError| e)
        .buffer(16)
        .concurrency_limit(4)
        .timeout(Duration::from_secs(10))
        .rate_limit(1000, Duration::from_secs(1))
        .layer(layer.clone())
        .service(client());
    let svc: BoxCloneService<Request<Full<Bytes>>, Response<Incoming>, BoxError> =
        BoxCloneService::new(stack);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let svc = svc.clone();
        let url = format!("{base}/x{i}");
        tasks.push(tokio::spawn(async move {
            let r = svc.oneshot(post(&url, "payload")).await.unwrap();
            (
                r.status(),
                r.into_body().collect().await.unwrap().to_bytes(),
            )
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(&body[..], b"payload");
    }
    assert_eq!(calls.calls(), 2);
    assert!(hits.lock().unwrap().iter().all(|h| h.auth.len() == 1));
}

/// `tower::retry` above the layer, retrying a 503: the layer's own 401 retry and the outer
/// retry compose; the outer policy sees the layer's final answers.
#[tokio::test]
async fn tower_retry_above_the_layer() {
    #[derive(Clone)]
    struct RetryOn503(usize);
    impl tower::retry::Policy<Request<Full<Bytes>>, Response<Incoming>, besender_auth::Error>
        for RetryOn503
    {
        type Future = std::future::Ready<()>;
        fn retry(
            &mut self,
            _req: &mut Request<Full<Bytes>>,
            result: &mut Result<Response<Incoming>, besender_auth::Error>,
        ) -> Option<Self::Future> {
            match result {
                Ok(r) if r.status() == 503 && self.0 > 0 => {
                    self.0 -= 1;
                    Some(std::future::ready(()))
                }
                _ => None,
            }
        }
        fn clone_request(&mut self, req: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
            let mut r = Request::new(req.body().clone());
            *r.method_mut() = req.method().clone();
            *r.uri_mut() = req.uri().clone();
            *r.headers_mut() = req.headers().clone();
            Some(r)
        }
    }
    let (base, hits) = api().await;
    let (calls, layer) = counting_layer();
    let svc = ServiceBuilder::new()
        .retry(RetryOn503(2))
        .layer(layer.clone())
        .service(client());
    let r = svc
        .oneshot(post(&format!("{base}/flaky"), "abc"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // 401 (token-1), 503 (token-2), 200 (token-2)
    let auths: Vec<_> = hits
        .lock()
        .unwrap()
        .iter()
        .map(|h| h.auth.clone())
        .collect();
    assert_eq!(
        auths,
        vec![
            vec!["Bearer token-1".to_owned()],
            vec!["Bearer token-2".to_owned()],
            vec!["Bearer token-2".to_owned()]
        ]
    );
    assert_eq!(calls.calls(), 2);
}

/// tower-http's `Trace` and `SetRequestHeader` above and below the layer: the retry carries
/// the outer header once, and the inner layer, which runs again for the retry, sets its header
/// once, not twice.
#[tokio::test]
async fn tower_http_layers_around_the_layer() {
    use tower_http::{set_header::SetRequestHeaderLayer, trace::TraceLayer};
    let (base, hits) = api().await;
    let (_calls, layer) = counting_layer();
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestHeaderLayer::overriding(
            http::header::HeaderName::from_static("x-outer"),
            HeaderValue::from_static("outer"),
        ))
        .layer(layer.clone())
        .layer(SetRequestHeaderLayer::appending(
            http::header::HeaderName::from_static("x-inner"),
            HeaderValue::from_static("inner"),
        ))
        .service(client());
    let r = svc
        .oneshot(post(&format!("{base}/echo"), "the body"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"the body");
    let hits = hits.lock().unwrap();
    assert_eq!(hits.len(), 2);
    for h in hits.iter() {
        assert_eq!(h.headers["x-outer"], "outer");
        assert_eq!(
            h.headers.get_all("x-inner").iter().count(),
            1,
            "{:?}",
            h.headers
        );
        assert_eq!(&h.body[..], b"the body");
    }
}

/// A layered client in axum `State` (Send + Sync + Clone + 'static), used from a handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_state_holds_the_client() {
    use axum::{Router, extract::State, routing::get};
    #[derive(Clone)]
    struct AppState {
        client: BesenderAuth<Client<HttpConnector, ReplayBody<Full<Bytes>>>>,
        upstream: String,
    }
    fn assert_state<T: Clone + Send + Sync + 'static>() {}
    assert_state::<AppState>();
    async fn handler(State(state): State<AppState>) -> Result<String, StatusCode> {
        let r = state
            .client
            .clone()
            .oneshot(post(&state.upstream, "from axum"))
            .await
            .map_err(|_| StatusCode::BAD_GATEWAY)?;
        let status = r.status();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        Ok(format!("{status} {}", String::from_utf8_lossy(&body)))
    }
    let (base, _hits) = api().await;
    let (calls, layer) = counting_layer();
    let state = AppState {
        client: tower::Layer::layer(&layer, client()),
        upstream: format!("{base}/up"),
    };
    let app = Router::new().route("/", get(handler)).with_state(state);
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let plain: Client<HttpConnector, Full<Bytes>> = common::hyper_client(false);
    for _ in 0..5 {
        let r = plain
            .get(format!("http://{addr}/").parse().unwrap())
            .await
            .unwrap();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"200 OK from axum");
    }
    assert_eq!(calls.calls(), 2);
}

fn spawned_calls_on(rt: tokio::runtime::Runtime) {
    rt.block_on(async {
        let (base, _hits) = api().await;
        let (calls, layer) = counting_layer();
        let svc = tower::Layer::layer(&layer, client());
        let mut tasks = Vec::new();
        for i in 0..10 {
            let svc = svc.clone();
            let url = format!("{base}/t{i}");
            tasks.push(tokio::spawn(async move {
                svc.oneshot(post(&url, "spawned")).await.unwrap().status()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200);
        }
        assert_eq!(calls.calls(), 2);
    });
}

#[test]
fn spawned_on_current_thread() {
    spawned_calls_on(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
    );
}

#[test]
fn spawned_on_multi_thread() {
    spawned_calls_on(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    );
}

/// An absolute URI with no path (`http://host:port`, with or without a query) is valid, and
/// hyper-util sends it as `/`: the retry rebuilds it too.
#[tokio::test]
async fn a_uri_without_a_path_is_retried() {
    for suffix in ["", "?x=1"] {
        let (base, hits) = api().await;
        let (calls, layer) = counting_layer();
        let client = tower::Layer::layer(&layer, client());
        let uri: Uri = format!("{base}{suffix}").parse().unwrap();
        let request = Request::get(uri.clone())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200, "{uri}: the refusal was not retried");
        assert_eq!(hits.lock().unwrap().len(), 2, "{uri}");
        assert_eq!(calls.calls(), 2);
    }
}

/// `max_replay_bytes(0)`: a request with no body is still retried (there is nothing to
/// replay).
#[tokio::test]
async fn a_zero_replay_cap_still_retries_bodiless_requests() {
    let (base, hits) = api().await;
    let (_calls, layer) = counting_layer();
    let client = tower::Layer::layer(&layer.max_replay_bytes(0), client());
    let get = Request::get(format!("{base}/g"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(client.oneshot(get).await.unwrap().status(), 200);
    assert_eq!(hits.lock().unwrap().len(), 2);
}

/// Bodies whose data is not `Bytes` (a `&'static [u8]`, a `Cursor<Vec<u8>>`) are replayed
/// byte for byte.
#[tokio::test]
async fn bodies_whose_data_is_not_bytes_are_replayed() {
    let (base, hits) = api().await;
    let (_calls, layer) = counting_layer();
    let client = tower::Layer::layer(&layer, common::hyper_client(false));
    let request = Request::post(format!("{base}/s"))
        .body(Full::new(&b"static slice"[..]))
        .unwrap();
    assert_eq!(client.oneshot(request).await.unwrap().status(), 200);
    // Refused again, with a body of another data type, after the next revocation.
    let (base, cursor_hits) = api_refusing("token-2").await;
    let client = tower::Layer::layer(&layer, common::hyper_client(false));
    let request = Request::post(format!("{base}/c"))
        .body(Full::new(std::io::Cursor::new(b"cursor body".to_vec())))
        .unwrap();
    assert_eq!(client.oneshot(request).await.unwrap().status(), 200);
    let bodies = |hits: &Mutex<Vec<Hit>>| -> Vec<Bytes> {
        hits.lock()
            .unwrap()
            .iter()
            .map(|h| h.body.clone())
            .collect()
    };
    assert_eq!(bodies(&hits), [&b"static slice"[..], b"static slice"]);
    assert_eq!(bodies(&cursor_hits), [&b"cursor body"[..], b"cursor body"]);
}
