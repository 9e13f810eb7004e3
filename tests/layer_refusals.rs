//! The layer's judgement of refusals over a hyper-util client against real servers on
//! 127.0.0.1: what is a refusal (the challenges of a 401, judged on the head alone), revocations
//! in quick succession and by turns, persistent refusal, dropped futures, retry off, and
//! failures of the token endpoint or the inner service.

mod common;

use std::{error::Error as _, time::Duration};

use besender_auth::{
    BesenderAuthLayer, BesenderError, BesenderTokenSource, ClassifyRefusal, Error,
    testing::FakeBesender,
};
use common::{
    AuthServer, Reply, ScriptedServer, full_body, hyper_client,
    layer::{HANG, LayerService, body_of, post, refusing_first_token, send},
    refused_addr,
    source::TestSource,
    source_for,
};
use http::StatusCode;
use tokio::time::timeout;
use tower::{Service, ServiceExt};

/// DESIGN.md decision 8: a 401 is a refusal unless a Bearer challenge says
/// `insufficient_scope` or `invalid_request`, whatever other schemes it offers (a server that
/// checks bearer tokens may name its own, as Django REST framework's `Token` does). Were such
/// a 401 not a refusal, the revoked token would stay cached and be sent on until it expired.
#[tokio::test]
async fn a_401_that_offers_only_other_schemes_is_a_refusal_of_the_token() {
    for challenge in [r#"Basic realm="api""#, r#"Token realm="api""#] {
        let server =
            ScriptedServer::start(Reply::json(401, "{}").header("www-authenticate", challenge))
                .await;
        let source = TestSource::new(Duration::from_secs(3600), Duration::ZERO);
        let layer = BesenderAuthLayer::new(source.source());
        let service = layer.layer_service(hyper_client(false));
        let response = send(&service, post(&server.url(), full_body("{}")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{challenge}");
        assert_eq!(server.requests().len(), 2, "{challenge}: retried once");
        assert_eq!(
            source.calls(),
            2,
            "{challenge}: the refused token was evicted"
        );
        let stats = layer.stats();
        assert_eq!((stats.refusals, stats.retries), (2, 1), "{challenge}");
    }
}

/// What a 401's challenges say, read as RFC 9110 §11.6.1 writes them: one `WWW-Authenticate`
/// value may list several challenges and a response may carry several values; auth-param is
/// `token BWS "=" BWS ( token / quoted-string )` (§11.2), and a quoted string may hold commas,
/// `=` and escaped quotes; a scheme may carry a token68 (`=` padding included) instead of
/// parameters. A `Bearer` challenge saying `insufficient_scope` (RFC 6750 §3.1) is no reason
/// for a new token; anything else is a refusal. The
/// rows the classifier's own tests (src/classify/tests.rs) do not decide, through the layer:
/// a refusal is retried once with a fresh token; otherwise the 401 is returned, not retried,
/// and the token stays cached.
#[tokio::test]
async fn www_authenticate_is_read_as_rfc_9110_writes_challenges() {
    let table: &[(&[&str], bool)] = &[
        // §11.1, §11.2: scheme and parameter names are case-insensitive.
        (&[r#"BEARER Error="insufficient_scope""#], false),
        // Other schemes only, one per value: a refusal (DESIGN.md decision 8).
        (
            &[r#"Basic realm="x""#, r#"Digest realm="y", nonce="z""#],
            true,
        ),
        // §11.6.1's own example: escaped quotes inside a quoted string, then another challenge
        // (whose `error` is not Bearer's).
        (
            &[
                r#"Newauth realm="apps", type=1, title="Login to \"apps\", error=insufficient_scope", Basic realm="simple", error="insufficient_scope""#,
            ],
            true,
        ),
        (
            &[
                r#"Newauth realm="apps", title="Login to \"apps\"", Bearer error="insufficient_scope""#,
            ],
            false,
        ),
        // Whitespace around `=`.
        (&[r#"Bearer error = "insufficient_scope""#], false),
        // A quoted string is one value, whatever it holds.
        (
            &[r#"Bearer realm="a, error=\"insufficient_scope\"", error="invalid_token""#],
            true,
        ),
        (&[r#"Bearer realm="error=\"invalid_request\"""#], true),
        (&[r#"Bearer realm="a\", error=insufficient_scope""#], true),
        (
            &[r#"Bearer error_description="error=insufficient_scope""#],
            true,
        ),
        // A token68 ends its challenge: the Bearer challenge after it counts.
        (
            &[r#"Negotiate YIIabc==, Bearer error="insufficient_scope""#],
            false,
        ),
        (&[r#"Negotiate YIIabc==, Bearer realm="r""#], true),
    ];
    for &(challenges, refusal) in table {
        let reply = challenges
            .iter()
            .fold(Reply::json(401, "{}"), |reply, challenge| {
                reply.header("www-authenticate", *challenge)
            });
        let server = ScriptedServer::start(reply).await;
        let source = TestSource::new(Duration::from_secs(3600), Duration::ZERO);
        let layer = BesenderAuthLayer::new(source.source());
        let service = layer.layer_service(hyper_client(false));
        let response = send(&service, post(&server.url(), full_body("{}")))
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{challenges:?}"
        );
        if refusal {
            assert_eq!(server.requests().len(), 2, "{challenges:?}: not retried");
            assert_eq!(source.calls(), 2, "{challenges:?}: no fresh token");
        } else {
            assert_eq!(server.requests().len(), 1, "{challenges:?}: retried");
            send(&service, post(&server.url(), full_body("{}")))
                .await
                .unwrap();
            assert_eq!(source.calls(), 1, "{challenges:?}: the token was evicted");
        }
    }
}

/// The refusal is judged on the response head (src/classify.rs: "decided on the status and
/// headers alone, before the response body is read"): a 401 whose body never ends is retried at
/// once, its body unread. Over HTTP/1.1 the refusal's connection stays busy with that body, so
/// the retry goes out on another.
#[tokio::test]
async fn a_refusal_whose_body_never_ends_is_retried_without_reading_it() {
    for h2 in [false, true] {
        let server = ScriptedServer::start(
            Reply::json(401, r#"{"code":401,"message":"#)
                .header("www-authenticate", r#"Bearer error="invalid_token""#)
                .endless(),
        )
        .await;
        let source = TestSource::new(Duration::from_secs(3600), Duration::ZERO);
        let layer = BesenderAuthLayer::new(source.source());
        let service = layer.layer_service(hyper_client(h2));
        let response = send(&service, post(&server.url(), full_body("{}")))
            .await
            .unwrap();
        // The retry's answer: the same endless refusal.
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "h2: {h2}");
        assert_eq!(server.requests().len(), 2, "h2 {h2}: not retried");
        assert_eq!(layer.stats().retries, 1, "h2: {h2}");
    }
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
