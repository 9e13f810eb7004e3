//! `testing::FakeBesender` behaves as the platform document describes.

mod common;

use std::time::Duration;

use besender_auth::{
    BesenderErrorKind, BesenderTokenSource, Token, TokenSource,
    testing::{FakeBesender, TokenFailure},
};
use bytes::Bytes;
use common::source_for;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::{Value, json};

/// POSTs `body` to `url` with an optional bearer token; returns status, headers, body.
async fn post(url: &str, bearer: Option<&str>, body: &str) -> (StatusCode, http::HeaderMap, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::post(url).header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn issues_unique_jwt_shaped_tokens_for_the_right_credentials() {
    let fake = FakeBesender::start().await.unwrap();
    let source = source_for(&fake);
    let a = source.fetch().await.unwrap();
    let b = source.fetch().await.unwrap();
    let (a, b) = (
        a.expose_access_token().unwrap(),
        b.expose_access_token().unwrap(),
    );
    assert_ne!(a, b);
    assert_eq!(a.split('.').count(), 3, "a JWT has three parts");
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.tokens_issued(), 2);
}

#[tokio::test]
async fn answers_with_the_documented_envelope() {
    let fake = FakeBesender::start().await.unwrap();
    let (status, _, body) = post(
        &format!("{}/open/api/v1/access_token", fake.base_url()),
        None,
        &json!({"client_id": 19, "client_secret": fake.client_secret()}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], 200);
    assert_eq!(body["data"]["token"]["token_type"], "Bearer");
    assert_eq!(body["data"]["token"]["expires_in"], 86400);
    assert!(body["data"]["token"]["access_token"].is_string());
    assert_eq!(body["data"]["userInfo"]["account"], "test007");
}

#[tokio::test]
async fn wrong_credentials_get_code_401() {
    let fake = FakeBesender::builder()
        .client_id("app-7")
        .client_secret("right")
        .start()
        .await
        .unwrap();
    let wrong_secret = BesenderTokenSource::builder(fake.base_url())
        .client_id("app-7")
        .client_secret("wrong")
        .build()
        .unwrap();
    let err = wrong_secret.fetch().await.unwrap_err();
    assert!(matches!(
        err.kind(),
        BesenderErrorKind::Rejected {
            code: Some(401),
            ..
        }
    ));
    let wrong_id = BesenderTokenSource::builder(fake.base_url())
        .client_id(8)
        .client_secret("right")
        .build()
        .unwrap();
    assert!(wrong_id.fetch().await.is_err());
    assert!(source_for(&fake).fetch().await.is_ok());
    assert_eq!(fake.tokens_issued(), 1);
}

#[tokio::test]
async fn a_numeric_id_is_accepted_as_number_or_string() {
    let fake = FakeBesender::start().await.unwrap();
    let as_string = BesenderTokenSource::builder(fake.base_url())
        .client_id("19")
        .client_secret(fake.client_secret())
        .build()
        .unwrap();
    assert!(as_string.fetch().await.is_ok());
}

#[tokio::test]
async fn malformed_token_requests_get_400() {
    let fake = FakeBesender::start().await.unwrap();
    let url = format!("{}/open/api/v1/access_token", fake.base_url());
    for body in ["not json", "[]", r#"{"client_id":19}"#] {
        let (status, _, body) = post(&url, None, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], 400);
    }
}

#[tokio::test]
async fn fails_the_next_calls_as_told() {
    let fake = FakeBesender::start().await.unwrap();
    let source = source_for(&fake);
    fake.fail_next_token_calls(2, TokenFailure::Status(StatusCode::SERVICE_UNAVAILABLE));
    fake.fail_next_token_calls(1, TokenFailure::code(500, "busy"));
    for _ in 0..2 {
        let err = source.fetch().await.unwrap_err();
        assert!(matches!(
            err.kind(),
            BesenderErrorKind::Rejected { status, code: Some(503), .. }
                if *status == StatusCode::SERVICE_UNAVAILABLE
        ));
    }
    let err = source.fetch().await.unwrap_err();
    assert!(matches!(
        err.kind(),
        BesenderErrorKind::Rejected { status: StatusCode::OK, code: Some(500), message: Some(m) }
            if m == "busy"
    ));
    assert!(source.fetch().await.is_ok());
    assert_eq!(fake.token_calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn delays_answers_on_tokios_clock() {
    let fake = FakeBesender::start().await.unwrap();
    fake.set_token_delay(Duration::from_secs(20));
    let started = tokio::time::Instant::now();
    let err = BesenderTokenSource::builder(fake.base_url())
        .client_id(fake.client_id())
        .client_secret(fake.client_secret())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), BesenderErrorKind::Timeout { .. }));
    fake.set_token_delay(Duration::ZERO);
    assert!(source_for(&fake).fetch().await.is_ok());
    assert!(started.elapsed() >= Duration::from_secs(5));
}

#[tokio::test]
async fn demo_echoes_the_body_for_a_valid_token() {
    let fake = FakeBesender::start().await.unwrap();
    let token = source_for(&fake).fetch().await.unwrap();
    let body = r#"{"code": "test", "name": "测试"}"#;
    let (status, headers, echoed) = post(&fake.demo_url(), token.expose_access_token(), body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(echoed, body.as_bytes());
    assert_eq!(fake.demo_calls(), 1);
    assert_eq!(fake.rejected_demo_calls(), 0);
}

#[tokio::test]
async fn demo_refuses_missing_unknown_and_revoked_tokens_with_invalid_token() {
    let fake = FakeBesender::start().await.unwrap();
    let token = source_for(&fake).fetch().await.unwrap();
    assert!(fake.accepts(&token));
    fake.revoke_all();
    assert!(!fake.accepts(&token));
    for bearer in [
        None,
        Some("unknown.token.value"),
        token.expose_access_token(),
    ] {
        let (status, headers, _) = post(&fake.demo_url(), bearer, "{}").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            headers[header::WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#
        );
    }
    assert_eq!(fake.rejected_demo_calls(), 3);
    // A token issued after the revocation works.
    let fresh = source_for(&fake).fetch().await.unwrap();
    assert!(fake.accepts(&fresh));
}

#[tokio::test(start_paused = true)]
async fn demo_refuses_expired_tokens() {
    let fake = FakeBesender::builder()
        .token_lifetime(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let token = source_for(&fake).fetch().await.unwrap();
    assert!(token.remaining() <= Duration::from_secs(60));
    assert!(fake.accepts(&token));
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(!fake.accepts(&token));
    let (status, _, _) = post(&fake.demo_url(), token.expose_access_token(), "{}").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn token_lifetime_can_change_while_running() {
    let fake = FakeBesender::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(90));
    let token = source_for(&fake).fetch().await.unwrap();
    assert!(token.remaining() <= Duration::from_secs(90));
}

/// `expires_in` counts whole seconds: a lifetime with a fraction is announced rounded up, at
/// least one second, and honoured for just what was announced (a 500 ms lifetime was sent as
/// `expires_in: 0`, which the source rightly refuses; 2.9 s was announced as 2 s but honoured
/// for 2.9 s).
#[tokio::test(start_paused = true)]
async fn a_fractional_token_lifetime_is_announced_and_honoured_in_whole_seconds() {
    for (configured, announced) in [(500, 1), (2_900, 3), (3_000, 3)] {
        let fake = FakeBesender::builder()
            .token_lifetime(Duration::from_millis(configured))
            .start()
            .await
            .unwrap();
        let token = source_for(&fake).fetch().await.expect("a usable token");
        let announced = Duration::from_secs(announced);
        assert!(
            token.remaining() <= announced
                && token.remaining() > announced - Duration::from_millis(100),
            "{configured} ms: remaining {:?}",
            token.remaining()
        );
        tokio::time::advance(announced - Duration::from_millis(1)).await;
        assert!(
            fake.accepts(&token),
            "{configured} ms: honoured while announced"
        );
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(
            !fake.accepts(&token),
            "{configured} ms: expired when announced"
        );
    }
}

#[test]
fn debug_never_shows_the_secret() {
    let builder = FakeBesender::builder().client_secret("hush-hush");
    assert!(!format!("{builder:?}").contains("hush-hush"));
    let token = Token::bearer("abc.def", Duration::from_secs(5));
    assert!(!format!("{token:?}").contains("abc.def"));
}
