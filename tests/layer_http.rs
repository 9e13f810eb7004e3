//! The layer over a hyper-util client, HTTP/1.1 and h2c, against real servers on 127.0.0.1.

mod common;

use std::sync::{Arc, Mutex};

use besender_auth::{BesenderAuthLayer, Error, ReplayBody, testing::FakeBesender};
use common::{
    TestBody, full_body, hyper_client,
    layer::{HANG, LayerService, Stack, body_of, post, refusing_first_token, send},
    source_for, streaming_body,
};
use http::{Request, StatusCode, header};
use tokio::time::timeout;
use tower::ServiceExt;

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

/// README, "early refusal": "the retry waits (up to 1 s) for the first attempt to let go of the
/// body, then replays what was sent and streams the rest; otherwise the original response.
/// Over HTTP/1.1 hyper may report the server's early close as a send error instead."
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
            // Retried: the fake echoes the body it received, which must be the original. Over
            // h2 the body the fake left unread ends with its stream, and the first attempt lets
            // go of it within the wait: there the retry always happens.
            Ok(response) if response.status() == StatusCode::OK => {
                assert_eq!(body_of(response).await, content, "h2: {h2}")
            }
            // Or, over HTTP/1.1, the refusal itself, never a corrupt body.
            Ok(response) if response.status() == StatusCode::UNAUTHORIZED && !h2 => {
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
