//! `BesenderAuthLayer::without_retry()`: services of mode `NoRetry`, whose inner service serves
//! the caller's own body type, against real servers on 127.0.0.1: a hyper-util client built for
//! `Full<Bytes>` (HTTP/1.1 and h2c), a tonic `Channel` used as it is, with no body conversion.
//! A refusal reaches the caller as it is, never retried, and invalidates the refused token
//! only; a refusal no token can fix (`insufficient_scope`, a 403, `PERMISSION_DENIED`) keeps
//! it. The token is waited for before the inner service is asked for capacity, and failures say
//! which part failed.

mod common;
#[path = "layer_no_retry/errors.rs"]
mod errors;
#[path = "layer_no_retry/grpc.rs"]
mod grpc;
#[path = "layer_no_retry/readiness.rs"]
mod readiness;

use std::{
    collections::HashSet,
    error::Error as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use besender_auth::{
    BesenderAuth, BesenderAuthLayer, BesenderError, BesenderErrorKind, BoxError, Error, NoRetry,
    Token, TokenCache, TokenErrorKind,
    testing::{FakeBesender, TokenFailure},
};
use bytes::Bytes;
use common::{
    AuthServer, Reply, ScriptedServer, hash_bytes, hyper_client,
    layer::{HANG, body_of},
    refused_addr, settle,
    source::{SourceDown, TestSource},
    source_for,
};
use http::{
    HeaderValue, Request, Response, StatusCode,
    header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE},
};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use tokio::{sync::Notify, time::timeout};
use tonic::{
    Code, Status,
    transport::{Channel, Endpoint},
};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, buffer::Buffer, limit::ConcurrencyLimit};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A hyper-util client for the caller's own body type: no `ReplayBody` anywhere.
type HttpClient = Client<HttpConnector, Full<Bytes>>;
/// What `without_retry()` makes of it.
type Direct = BesenderAuth<HttpClient, NoRetry>;

fn client(h2: bool) -> HttpClient {
    hyper_client(h2)
}

fn json(url: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn send<S>(service: &S, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>, Error = Error> + Clone,
{
    timeout(HANG, service.clone().oneshot(request))
        .await
        .expect("the request hung")
}

/// A layer without retry over a `TestSource` issuing `token-1`, `token-2`, ... (one per fetch).
fn no_retry_layer() -> (TestSource, BesenderAuthLayer<NoRetry>) {
    let source = TestSource::new(HOUR, Duration::ZERO);
    let layer = BesenderAuthLayer::new(source.source()).without_retry();
    (source, layer)
}

/// The `Authorization` values each request carried as the server received it.
fn authorizations(server: &ScriptedServer) -> Vec<Vec<String>> {
    server
        .requests()
        .iter()
        .map(|r| {
            r.headers
                .get_all(AUTHORIZATION)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect()
        })
        .collect()
}

/// A caller's extension, to see that the inner service gets the caller's request.
#[derive(Clone, Debug, PartialEq)]
struct CallerMark(u32);

/// What the service under the layer received: `Authorization` values with their sensitive
/// flag, and the caller's extension.
type Stamped = Arc<Mutex<Vec<(Vec<(String, bool)>, Option<CallerMark>)>>>;

#[tokio::test]
async fn a_client_for_the_callers_body_type_gets_the_token_stamped_sensitive() {
    for h2 in [false, true] {
        let server = ScriptedServer::start(Reply::json(200, r#"{"code":200}"#)).await;
        let (source, layer) = no_retry_layer();
        let stamped = Stamped::default();
        let log = Arc::clone(&stamped);
        let service = ServiceBuilder::new()
            .layer(layer.clone())
            // Under the layer, the request is the caller's `Request<Full<Bytes>>`.
            .map_request(move |request: Request<Full<Bytes>>| {
                let values = request
                    .headers()
                    .get_all(AUTHORIZATION)
                    .iter()
                    .map(|v| (v.to_str().unwrap().to_owned(), v.is_sensitive()))
                    .collect();
                let mark = request.extensions().get::<CallerMark>().cloned();
                log.lock().unwrap().push((values, mark));
                request
            })
            .service(client(h2));

        let mut request = json(&format!("{}/api", server.url()), r#"{"n":1}"#);
        let headers = request.headers_mut();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer caller-set"));
        headers.append(
            AUTHORIZATION,
            HeaderValue::from_static("Basic Y2FsbGVyOnNldA=="),
        );
        headers.insert("x-caller", HeaderValue::from_static("kept"));
        request.extensions_mut().insert(CallerMark(7));
        let response = send(&service, request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "h2: {h2}");
        assert_eq!(body_of(response).await, r#"{"code":200}"#);

        let stamped = stamped.lock().unwrap().clone();
        assert_eq!(
            stamped,
            [(
                vec![("Bearer token-1".to_owned(), true)],
                Some(CallerMark(7))
            )],
            "h2: {h2}: one sensitive value, the caller's two replaced, the extension kept"
        );
        // What went out on the wire.
        assert_eq!(authorizations(&server), [["Bearer token-1"]], "h2: {h2}");
        let seen = &server.requests()[0];
        assert_eq!(seen.uri.path(), "/api");
        assert_eq!(seen.headers["x-caller"], "kept");
        assert_eq!(seen.headers[CONTENT_TYPE], "application/json");
        assert_eq!(seen.body, r#"{"n":1}"#);
        assert_eq!(source.calls(), 1);
        assert_eq!(layer.stats().refusals, 0);
    }
}

/// The service type itself: `BesenderAuth<Client<HttpConnector, Full<Bytes>>, NoRetry>`, the
/// body echoed by an API that reads it in full, over many requests on one token.
#[tokio::test]
async fn requests_share_one_token_and_their_bodies_go_out_as_they_are() {
    for h2 in [false, true] {
        let server = AuthServer::start().await;
        let (source, layer) = no_retry_layer();
        let service: Direct = layer.layer(client(h2));
        let bodies = [r#"{"n":1}"#, r#"{"n":2}"#, ""];
        for body in bodies {
            let response = send(&service, json(&server.url(), body)).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "h2: {h2}");
            assert_eq!(body_of(response).await, body);
        }
        let seen = server.seen();
        assert_eq!(seen.len(), 3, "h2: {h2}");
        for (seen, body) in seen.iter().zip(bodies) {
            assert_eq!(seen.authorization.as_deref(), Some("Bearer token-1"));
            assert_eq!(seen.body_hash, hash_bytes(body.as_bytes()));
        }
        assert_eq!(source.calls(), 1, "h2: {h2}");
    }
}

#[tokio::test]
async fn a_refusal_is_returned_as_it_is_never_retried_and_the_next_request_is_fresh() {
    for h2 in [false, true] {
        let fake = FakeBesender::start().await.unwrap();
        let layer = BesenderAuthLayer::new(source_for(&fake)).without_retry();
        let service: Direct = layer.layer(client(h2));
        let response = send(&service, json(&fake.demo_url(), r#"{"n":1}"#))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "h2: {h2}");
        assert_eq!(body_of(response).await, r#"{"n":1}"#);

        fake.revoke_all();
        let response = send(&service, json(&fake.demo_url(), r#"{"n":2}"#))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "h2: {h2}");
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#
        );
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body: serde_json::Value = serde_json::from_slice(&body_of(response).await).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"code": 401, "message": "invalid or expired access token"}),
            "the server's own refusal"
        );
        assert_eq!(fake.demo_calls(), 2, "h2: {h2}: not retried");
        assert_eq!(fake.rejected_demo_calls(), 1);
        let stats = layer.stats();
        assert_eq!((stats.refusals, stats.retries), (1, 0), "h2: {h2}");

        // Every token issued before the revocation is refused: an accepted request carries a
        // fresh one.
        let response = send(&service, json(&fake.demo_url(), r#"{"n":3}"#))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "h2: {h2}: a fresh token");
        assert_eq!(body_of(response).await, r#"{"n":3}"#);
        assert_eq!((fake.token_calls(), fake.tokens_issued()), (2, 2));
        assert_eq!((fake.demo_calls(), fake.rejected_demo_calls()), (3, 1));
        let stats = layer.stats();
        assert_eq!(
            (stats.refusals, stats.retries, stats.successful_retries),
            (1, 0, 0)
        );
    }
}

/// 100 requests in flight when their token is revoked: 100 refusals reach their callers, the
/// token endpoint is asked once, and the next request carries the fresh token.
#[tokio::test]
async fn refusals_of_one_token_in_flight_force_one_refresh() {
    for h2 in [false, true] {
        let fake = FakeBesender::start().await.unwrap();
        let layer = BesenderAuthLayer::new(source_for(&fake)).without_retry();
        let service: Direct = layer.layer(client(h2));
        send(&service, json(&fake.demo_url(), "{}")).await.unwrap();

        fake.hold_demo_calls();
        let requests: Vec<_> = (0..100)
            .map(|_| {
                let service = service.clone();
                let request = json(&fake.demo_url(), "{}");
                tokio::spawn(async move { send(&service, request).await })
            })
            .collect();
        timeout(HANG, fake.wait_for_demo_calls(101)).await.unwrap();
        fake.revoke_all();
        fake.release_demo_calls();
        for request in requests {
            let response = request.await.unwrap().unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "h2: {h2}");
        }
        assert_eq!(fake.demo_calls(), 101, "h2: {h2}: none retried");
        assert_eq!(layer.stats().refusals, 100);

        let response = send(&service, json(&fake.demo_url(), "{}")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "h2: {h2}");
        assert_eq!(fake.token_calls(), 2, "h2: {h2}: exactly one refresh");
        assert_eq!(layer.stats().retries, 0);
    }
}

/// A 401 whose Bearer challenge says a new token cannot help, and a 403, reach the caller as
/// they are and keep the token: the next request carries the same one.
#[tokio::test]
async fn a_401_no_token_can_fix_and_a_403_keep_the_token() {
    for challenge in [
        r#"Bearer error="insufficient_scope", scope="send""#,
        r#"Bearer error="invalid_request""#,
    ] {
        for h2 in [false, true] {
            let server = ScriptedServer::start(
                Reply::json(401, r#"{"code":401,"message":"scope"}"#)
                    .header("www-authenticate", challenge),
            )
            .await;
            let (source, layer) = no_retry_layer();
            let service: Direct = layer.layer(client(h2));
            for _ in 0..2 {
                let response = send(&service, json(&server.url(), "{}")).await.unwrap();
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
                assert_eq!(response.headers()[WWW_AUTHENTICATE], challenge);
                assert_eq!(body_of(response).await, r#"{"code":401,"message":"scope"}"#);
            }
            assert_eq!(
                authorizations(&server),
                [["Bearer token-1"], ["Bearer token-1"]],
                "{challenge} (h2: {h2}): the same token, once per request"
            );
            assert_eq!(source.calls(), 1, "{challenge}: the token was evicted");
            assert_eq!(layer.stats().refusals, 0, "{challenge}");
        }
    }

    for h2 in [false, true] {
        let server = AuthServer::start().await;
        server.refuse("token-1");
        server.refuse_with(403);
        let (source, layer) = no_retry_layer();
        let service: Direct = layer.layer(client(h2));
        for _ in 0..2 {
            let response = send(&service, json(&server.url(), "{}")).await.unwrap();
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "h2: {h2}");
            assert_eq!(response.headers()["x-served-by"], "auth-server");
        }
        let tokens: Vec<_> = server.seen().into_iter().map(|s| s.authorization).collect();
        assert_eq!(
            tokens,
            [
                Some("Bearer token-1".to_owned()),
                Some("Bearer token-1".to_owned())
            ]
        );
        assert_eq!(source.calls(), 1, "h2: {h2}: a 403 evicted the token");
        assert_eq!(layer.stats().refusals, 0);
    }
}

/// A custom classifier (here: 403 means a refused token) is kept by `without_retry()`, set
/// before or after it, and replaces the default: a 403 then evicts the token, a 401 does not.
#[tokio::test]
async fn a_custom_classifier_decides_what_evicts_the_token() {
    for before in [true, false] {
        let server = AuthServer::start().await;
        server.refuse("token-1");
        server.refuse_with(403);
        let source = TestSource::new(HOUR, Duration::ZERO);
        let forbidden = |status: StatusCode, _: &http::HeaderMap| status == StatusCode::FORBIDDEN;
        let layer = match before {
            true => BesenderAuthLayer::new(source.source())
                .classify_with(forbidden)
                .without_retry(),
            false => BesenderAuthLayer::new(source.source())
                .without_retry()
                .classify_with(forbidden),
        };
        let service: Direct = layer.layer(client(false));
        let first = send(&service, json(&server.url(), "{}")).await.unwrap();
        assert_eq!(first.status(), StatusCode::FORBIDDEN, "before: {before}");
        let second = send(&service, json(&server.url(), "{}")).await.unwrap();
        assert_eq!(second.status(), StatusCode::OK, "before: {before}");
        // A 401 is no refusal to this classifier.
        server.refuse("token-2");
        server.refuse_with(401);
        for _ in 0..2 {
            let response = send(&service, json(&server.url(), "{}")).await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        }
        let tokens: Vec<_> = server
            .seen()
            .into_iter()
            .map(|s| s.authorization.unwrap())
            .collect();
        assert_eq!(
            tokens,
            [
                "Bearer token-1",
                "Bearer token-2",
                "Bearer token-2",
                "Bearer token-2"
            ],
            "before: {before}"
        );
        assert_eq!(source.calls(), 2);
        let stats = layer.stats();
        assert_eq!((stats.refusals, stats.retries), (1, 0));
    }
}

/// README, "refusal": "With retry off (`.without_retry()` ...) no retry can vouch for the
/// refreshed token: if it is refused too within 5 s, callers get those 401s until the 5 s are
/// over". The documented limit, and the setting that lifts it.
#[tokio::test]
async fn a_refreshed_token_refused_again_at_once_is_replaced_only_past_the_forced_refresh_interval()
{
    for interval in [None, Some(Duration::ZERO)] {
        let server = AuthServer::start().await;
        server.refuse("token-1");
        let source = TestSource::new(HOUR, Duration::ZERO);
        let mut cache = TokenCache::builder(source.source());
        if let Some(interval) = interval {
            cache = cache.min_forced_refresh_interval(interval);
        }
        let layer = BesenderAuthLayer::from_cache(cache.build()).without_retry();
        let service: Direct = layer.layer(client(false));
        let status = |r: Result<Response<Incoming>, Error>| r.unwrap().status();
        let url = server.url();
        assert_eq!(status(send(&service, json(&url, "{}")).await), 401);
        assert_eq!(status(send(&service, json(&url, "{}")).await), 200);
        server.refuse("token-2");
        assert_eq!(status(send(&service, json(&url, "{}")).await), 401);
        let last = status(send(&service, json(&url, "{}")).await);
        let tokens: Vec<_> = server
            .seen()
            .into_iter()
            .map(|s| s.authorization.unwrap())
            .collect();
        match interval {
            // Within the default 5 s: the refused token-2 stays, and the next request is
            // refused again (each of its refusals rate-limited).
            None => {
                assert_eq!(last, 401);
                assert_eq!(tokens[3], "Bearer token-2");
                assert_eq!(layer.cache().stats().rate_limited_refreshes, 2);
                assert_eq!(layer.stats().refusals, 3);
                assert_eq!(source.calls(), 2);
            }
            Some(_) => {
                assert_eq!(last, 200);
                assert_eq!(tokens[3], "Bearer token-3");
                assert_eq!(layer.cache().stats().rate_limited_refreshes, 0);
                assert_eq!(layer.stats().refusals, 2);
                assert_eq!(source.calls(), 3);
            }
        }
        assert_eq!(server.seen().len(), 4, "never retried");
    }
}
