//! The layer over a hyper-util client, HTTP/1.1 and h2c, against real servers on 127.0.0.1.

mod common;

use std::{
    error::Error as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use besender_auth::{
    BesenderAuth, BesenderAuthLayer, BesenderError, BesenderTokenSource, ClassifyRefusal, Error,
    ReplayBody, testing::FakeBesender,
};
use bytes::Bytes;
use common::{
    AuthServer, Reply, ScriptedServer, TestBody, full_body, hyper_client, refused_addr,
    source::TestSource, source_for, streaming_body,
};
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use tokio::time::timeout;
use tower::{Service, ServiceExt};

type Stack = BesenderAuth<Client<HttpConnector, ReplayBody<TestBody>>>;

/// Generous bound against hangs; never a timing assertion.
const HANG: Duration = Duration::from_secs(20);

fn post(url: &str, body: TestBody) -> Request<TestBody> {
    Request::post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap()
}

async fn send(service: &Stack, request: Request<TestBody>) -> Result<Response<Incoming>, Error> {
    timeout(HANG, service.clone().oneshot(request))
        .await
        .expect("the request hung")
}

async fn body_of(response: Response<Incoming>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn the_header_is_stamped_sensitive_and_replaces_the_callers() {
    for h2 in [false, true] {
        let fake = FakeBesender::start().await.unwrap();
        let layer = BesenderAuthLayer::new(source_for(&fake));
        let sensitive = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&sensitive);
        let service = tower::ServiceBuilder::new()
            .layer(layer.clone())
            .map_request(move |request: Request<ReplayBody<TestBody>>| {
                let value = &request.headers()[header::AUTHORIZATION];
                seen.lock().unwrap().push(value.is_sensitive());
                request
            })
            .service(hyper_client(h2));
        let mut request = post(&fake.demo_url(), full_body(r#"{"code":"test"}"#));
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, "Bearer caller-set".parse().unwrap());
        let response = timeout(HANG, service.oneshot(request))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "h2: {h2}");
        assert_eq!(body_of(response).await, r#"{"code":"test"}"#);
        assert_eq!(*sensitive.lock().unwrap(), [true]);
        assert_eq!(
            layer.stats().refusals,
            0,
            "the caller's header never went out"
        );
        assert_eq!(fake.token_calls(), 1);
    }
}

#[tokio::test]
async fn a_retry_carries_only_the_fresh_token_never_the_callers_header() {
    for h2 in [false, true] {
        let fake = FakeBesender::start().await.unwrap();
        let layer = BesenderAuthLayer::new(source_for(&fake));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&attempts);
        let service = tower::ServiceBuilder::new()
            .layer(layer.clone())
            .map_request(move |request: Request<ReplayBody<TestBody>>| {
                let values: Vec<_> = request
                    .headers()
                    .get_all(header::AUTHORIZATION)
                    .iter()
                    .map(|v| (v.as_bytes().to_vec(), v.is_sensitive()))
                    .collect();
                seen.lock().unwrap().push(values);
                request
            })
            .service(hyper_client(h2));
        layer.cache().get().await.unwrap();
        fake.revoke_all();
        let mut request = post(&fake.demo_url(), full_body(r#"{"code":"again"}"#));
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, "Bearer caller-set".parse().unwrap());
        let response = timeout(HANG, service.oneshot(request))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "h2: {h2}");
        assert_eq!(body_of(response).await, r#"{"code":"again"}"#);
        let attempts = attempts.lock().unwrap();
        assert_eq!(attempts.len(), 2, "one refused attempt, one retry");
        for values in attempts.iter() {
            assert_eq!(
                values.len(),
                1,
                "exactly one Authorization header per attempt"
            );
            let (value, sensitive) = &values[0];
            assert!(sensitive);
            assert!(value.starts_with(b"Bearer ") && value != b"Bearer caller-set");
        }
        assert_ne!(
            attempts[0][0].0, attempts[1][0].0,
            "the retry carries a fresh token"
        );
        assert_eq!(fake.token_calls(), 2);
    }
}

#[tokio::test]
async fn a_token_revoked_with_200_requests_in_flight_is_refreshed_once() {
    for h2 in [false, true] {
        let fake = FakeBesender::start().await.unwrap();
        let layer = BesenderAuthLayer::new(source_for(&fake));
        let service: Stack = layer.layer_service(hyper_client(h2));
        let warm = send(&service, post(&fake.demo_url(), full_body("{}")))
            .await
            .unwrap();
        assert_eq!(warm.status(), StatusCode::OK);

        fake.hold_demo_calls();
        let requests: Vec<_> = (0..200)
            .map(|i| {
                let service = service.clone();
                let request = post(&fake.demo_url(), full_body(format!(r#"{{"n":{i}}}"#)));
                tokio::spawn(async move { send(&service, request).await })
            })
            .collect();
        fake.wait_for_demo_calls(201).await;
        fake.revoke_all(); // every request in flight now carries a revoked token
        fake.release_demo_calls();

        for (i, request) in requests.into_iter().enumerate() {
            let response = request.await.unwrap().unwrap();
            assert_eq!(response.status(), StatusCode::OK, "h2: {h2}");
            assert_eq!(body_of(response).await, format!(r#"{{"n":{i}}}"#));
        }
        assert_eq!(fake.token_calls(), 2, "exactly one refresh (h2: {h2})");
        let stats = layer.stats();
        assert_eq!(stats.refusals, 200);
        assert_eq!(stats.retries, 200);
        assert_eq!(stats.successful_retries, 200);
    }
}

/// Builds the service a layer makes, for tests that need the concrete type.
trait LayerService {
    fn layer_service(&self, client: Client<HttpConnector, ReplayBody<TestBody>>) -> Stack;
}

impl LayerService for BesenderAuthLayer {
    fn layer_service(&self, client: Client<HttpConnector, ReplayBody<TestBody>>) -> Stack {
        tower::Layer::layer(self, client)
    }
}

/// An API that refuses the first token (`token-1`), and a layer whose source issues
/// `token-1`, `token-2`, ...
async fn refusing_first_token(h2: bool) -> (AuthServer, TestSource, BesenderAuthLayer, Stack) {
    let server = AuthServer::start().await;
    server.refuse("token-1");
    let source = TestSource::new(Duration::from_secs(3600), Duration::ZERO);
    let layer = BesenderAuthLayer::new(source.source());
    let service = layer.layer_service(hyper_client(h2));
    (server, source, layer, service)
}

#[tokio::test]
async fn a_refused_streaming_upload_is_replayed_byte_for_byte() {
    for h2 in [false, true] {
        let (server, _source, _layer, service) = refusing_first_token(h2).await;

        let (body, content) = streaming_body(32 * 1024, async {});
        let response = send(&service, post(&server.url(), body)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "h2: {h2}");
        assert_eq!(body_of(response).await, content);

        let seen = server.seen();
        assert_eq!(seen.len(), 2, "one retry");
        assert_eq!(seen[0].authorization.as_deref(), Some("Bearer token-1"));
        assert_eq!(seen[1].authorization.as_deref(), Some("Bearer token-2"));
        assert_eq!(seen[0].body_len, 32 * 1024);
        assert_eq!(seen[0].body_hash, seen[1].body_hash);
        assert_eq!(seen[1].body_hash, common::hash_bytes(&content));
    }
}

#[tokio::test]
async fn a_refused_upload_over_the_cap_returns_the_refusal_unchanged() {
    for h2 in [false, true] {
        let (server, source, layer, service) = refusing_first_token(h2).await;

        let (body, _) = streaming_body(256 * 1024, async {});
        let response = send(&service, post(&server.url(), body)).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "h2: {h2}");
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#
        );
        assert_eq!(response.headers()["x-served-by"], "auth-server");
        assert_eq!(server.seen().len(), 1, "not retried");
        assert_eq!(server.seen()[0].body_len, 256 * 1024);
        assert_eq!(layer.stats().refused_replays, 1);
        // The refusal still invalidated the token: the next request gets a fresh one.
        let response = send(&service, post(&server.url(), full_body("{}")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(source.calls(), 2);
    }
}

#[tokio::test]
async fn an_early_refusal_of_a_streaming_body_ends_in_a_correct_outcome() {
    for h2 in [false, true] {
        let fake = Arc::new(FakeBesender::start().await.unwrap());
        let layer = BesenderAuthLayer::new(source_for(&fake));
        let service = layer.layer_service(hyper_client(h2));
        send(&service, post(&fake.demo_url(), full_body("{}")))
            .await
            .unwrap();
        fake.revoke_all();

        // The fake answers 401 before reading the body; the rest is sent only after that.
        let refused = {
            let fake = Arc::clone(&fake);
            async move { fake.wait_for_demo_calls(2).await }
        };
        let (body, content) = streaming_body(32 * 1024, refused);
        let outcome = send(&service, post(&fake.demo_url(), body)).await;
        match outcome {
            // Retried: the fake echoes the body it received, which must be the original.
            Ok(response) if response.status() == StatusCode::OK => {
                assert_eq!(body_of(response).await, content, "h2: {h2}")
            }
            // Or the refusal itself, never a corrupt body.
            Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {
                assert!(layer.stats().refused_replays >= 1)
            }
            // HTTP/1.1: the server closes the connection after its early answer, and hyper
            // reports the interrupted upload instead of the answer.
            Err(Error::Inner(err)) if !h2 => {
                assert!(format!("{err:?}").contains("BodyWrite"), "{err:?}")
            }
            other => panic!("unexpected {other:?} (h2: {h2})"),
        }
        // Either way the token was replaced and the next request succeeds.
        let response = send(&service, post(&fake.demo_url(), full_body("{}")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(fake.token_calls(), 2);
    }
}

/// RFC 9110 §11.6.1: a 401 whose challenges are all of another scheme says what the resource
/// accepts, and a bearer token is not it: the response passes through, the token stays cached,
/// and nothing is fetched or sent again.
#[tokio::test]
async fn a_401_that_offers_only_basic_is_not_a_refusal_of_the_token() {
    let server = ScriptedServer::start(
        Reply::json(401, "{}").header("www-authenticate", r#"Basic realm="api""#),
    )
    .await;
    let source = TestSource::new(Duration::from_secs(3600), Duration::ZERO);
    let layer = BesenderAuthLayer::new(source.source());
    let service = layer.layer_service(hyper_client(false));
    for _ in 0..3 {
        let response = send(&service, post(&server.url(), full_body("{}")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(server.requests().len(), 3, "never retried");
    assert_eq!(source.calls(), 1, "the token was not evicted");
    assert_eq!(layer.stats().refusals, 0);
}

/// An API that signals a refused token with 403: a custom classifier, as a closure (whose
/// argument types are inferred) or as a `ClassifyRefusal` type, makes it a refusal, and
/// replaces the default: a 401 is then passed through.
#[tokio::test]
async fn a_custom_classifier_decides_what_is_a_refusal() {
    struct Forbidden;
    impl ClassifyRefusal for Forbidden {
        fn is_refusal(&self, status: StatusCode, _headers: &http::HeaderMap) -> bool {
            status == StatusCode::FORBIDDEN
        }
    }
    for as_type in [false, true] {
        let server = AuthServer::start().await;
        server.refuse("token-1");
        server.refuse_with(403);
        let source = TestSource::new(Duration::from_secs(3600), Duration::ZERO);
        let layer = BesenderAuthLayer::new(source.source());
        let layer = match as_type {
            false => layer.classify_with(|status, _headers| status == StatusCode::FORBIDDEN),
            true => layer.classifier(Forbidden),
        };
        let service = layer.layer_service(hyper_client(false));
        let response = send(&service, post(&server.url(), full_body("{}")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "as a type: {as_type}");
        let tokens: Vec<_> = server.seen().into_iter().map(|s| s.authorization).collect();
        let expected = ["Bearer token-1", "Bearer token-2"].map(|t| Some(t.to_owned()));
        assert_eq!(tokens, expected, "refused, then retried with a fresh token");
        assert_eq!(layer.stats().successful_retries, 1);

        // A 401 is no refusal to this classifier.
        server.refuse("token-2");
        server.refuse_with(401);
        let response = send(&service, post(&server.url(), full_body("{}")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(server.seen().len(), 3, "not retried");
        assert_eq!(source.calls(), 2, "the token was not evicted");
    }

    // The default classifier: a 403 is not a refusal.
    let server = AuthServer::start().await;
    server.refuse("token-1");
    server.refuse_with(403);
    let source = TestSource::new(Duration::from_secs(3600), Duration::ZERO);
    let service = BesenderAuthLayer::new(source.source()).layer_service(hyper_client(false));
    let response = send(&service, post(&server.url(), full_body("{}")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!((server.seen().len(), source.calls()), (1, 1));
}

/// The token a refusal's refresh brought, accepted by the server, is revoked in turn moments
/// later: a new revocation, refreshed and retried at once, not mistaken for a refusal no token
/// can fix (which the minimum interval between forced refreshes is for).
#[tokio::test]
async fn a_token_revoked_twice_in_quick_succession_is_replaced_both_times() {
    for h2 in [false, true] {
        let (server, source, layer, service) = refusing_first_token(h2).await;
        let response = send(&service, post(&server.url(), full_body("{}")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "h2: {h2}");
        server.refuse("token-2");
        let response = send(&service, post(&server.url(), full_body(r#"{"n":2}"#)))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "h2: {h2}");
        assert_eq!(body_of(response).await, r#"{"n":2}"#);
        assert_eq!(source.calls(), 3, "two forced refreshes (h2: {h2})");
        let tokens: Vec<_> = server
            .seen()
            .into_iter()
            .map(|seen| seen.authorization.unwrap())
            .collect();
        assert_eq!(
            tokens,
            [
                "Bearer token-1",
                "Bearer token-2",
                "Bearer token-2",
                "Bearer token-3"
            ]
        );
        let stats = layer.stats();
        assert_eq!((stats.retries, stats.successful_retries), (2, 2));
    }
}

/// Behind a balancer, one backend refuses every token and another accepts it: every refused
/// request's retry is accepted. That must not make every refusal a forced refresh: at most one
/// more per minimum interval than a refusal no token can fix.
#[tokio::test]
async fn refusals_and_acceptances_by_turns_cannot_loop_the_token_endpoint() {
    let server = AuthServer::start().await;
    server.refuse_by_turns();
    let source = TestSource::new(Duration::from_secs(3600), Duration::ZERO);
    let layer = BesenderAuthLayer::new(source.source());
    let service = layer.layer_service(hyper_client(false));
    let start = std::time::Instant::now();
    for _ in 0..100 {
        let response = send(&service, post(&server.url(), full_body("{}")))
            .await
            .unwrap();
        assert!(matches!(
            response.status(),
            StatusCode::OK | StatusCode::UNAUTHORIZED
        ));
    }
    // The first token, its refusal's refresh, and one more for a refresh whose retry was
    // accepted; two more for each 5 s the loop took on a slow machine.
    let intervals = start.elapsed().as_secs() / 5;
    assert!(source.calls() >= 3, "the vouched-for refresh ran");
    assert!(
        source.calls() <= 3 + 2 * intervals,
        "{} token calls in {} intervals",
        source.calls(),
        intervals
    );
}

#[tokio::test]
async fn persistent_refusal_retries_each_request_at_most_once() {
    let server = ScriptedServer::start(
        Reply::json(401, r#"{"code":401}"#)
            .header("www-authenticate", r#"Bearer error="invalid_token""#),
    )
    .await;
    let source = TestSource::new(Duration::from_secs(3600), Duration::ZERO);
    let layer = BesenderAuthLayer::new(source.source());
    let service = layer.layer_service(hyper_client(false));
    for _ in 0..20 {
        let response = send(&service, post(&server.url(), full_body("{}")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // The first request: its token and one forced refresh. Then the refresh is rate-limited
    // (5 s), so later requests get the same token and are not retried.
    assert_eq!(source.calls(), 2);
    assert_eq!(server.requests().len(), 21);
    let stats = layer.stats();
    assert_eq!(stats.retries, 1);
    assert_eq!(stats.successful_retries, 0);
    assert_eq!(stats.not_retried_no_new_token, 19);
}

#[tokio::test]
async fn dropping_a_response_future_mid_refresh_leaves_the_service_healthy() {
    let fake = FakeBesender::start().await.unwrap();
    let layer = BesenderAuthLayer::new(source_for(&fake));
    let service = layer.layer_service(hyper_client(false));
    send(&service, post(&fake.demo_url(), full_body("{}")))
        .await
        .unwrap();
    fake.revoke_all();
    fake.hold_token_calls();
    let doomed = {
        let service = service.clone();
        let request = post(&fake.demo_url(), full_body("{}"));
        tokio::spawn(async move { send(&service, request).await })
    };
    fake.wait_for_token_calls(2).await; // the refusal's refresh is running
    doomed.abort();
    assert!(doomed.await.unwrap_err().is_cancelled());
    fake.release_token_calls();

    let response = send(&service, post(&fake.demo_url(), full_body(r#"{"a":1}"#)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.token_calls(), 2, "the refresh survived its caller");
}

#[tokio::test]
async fn with_retry_off_a_refusal_is_returned_and_the_next_request_is_fresh() {
    let fake = FakeBesender::start().await.unwrap();
    let layer = BesenderAuthLayer::new(source_for(&fake)).retry(false);
    let service = layer.layer_service(hyper_client(false));
    send(&service, post(&fake.demo_url(), full_body("{}")))
        .await
        .unwrap();
    fake.revoke_all();
    let response = send(&service, post(&fake.demo_url(), full_body("{}")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = send(&service, post(&fake.demo_url(), full_body("{}")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(layer.stats().retries, 0);
}

#[tokio::test]
async fn a_failing_token_endpoint_is_a_token_error_and_nothing_is_sent() {
    let server = AuthServer::start().await;
    let dead = refused_addr().await;
    let source = BesenderTokenSource::builder(format!("http://{dead}"))
        .client_id(19)
        .client_secret("s3cret")
        .build()
        .unwrap();
    let mut service = BesenderAuthLayer::new(source).layer_service(hyper_client(false));
    // Ready (an outage is not a dead service, to Tower), but the call fails without being sent.
    let ready = timeout(HANG, service.ready()).await.unwrap().unwrap();
    let err = ready
        .call(post(&server.url(), full_body("{}")))
        .await
        .unwrap_err();
    let Error::Token(token_err) = &err else {
        panic!("expected a token error, got {err:?}")
    };
    assert!(token_err.source_as::<BesenderError>().is_some());
    assert!(err.to_string().contains("could not reach"), "{err}");
    assert!(err.source().is_some());
    assert!(!format!("{err} {err:?}").contains("s3cret"));
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn a_failing_inner_service_is_an_inner_error() {
    let fake = FakeBesender::start().await.unwrap();
    let dead = refused_addr().await;
    let service = BesenderAuthLayer::new(source_for(&fake)).layer_service(hyper_client(false));
    let err = send(
        &service,
        post(&format!("http://{dead}/api"), full_body("{}")),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Inner(_)), "{err:?}");
    assert!(err.to_string().contains("request failed"), "{err}");
}

#[tokio::test]
async fn calling_without_poll_ready_is_an_error_not_a_panic() {
    let fake = FakeBesender::start().await.unwrap();
    let mut service = BesenderAuthLayer::new(source_for(&fake)).layer_service(hyper_client(false));
    let err = service
        .call(post(&fake.demo_url(), full_body("{}")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotReady));
    assert_eq!(fake.demo_calls(), 0);
}
