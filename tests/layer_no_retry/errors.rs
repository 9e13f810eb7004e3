//! Errors: which part failed, and nothing sent without a token.

use super::*;

#[tokio::test]
async fn a_failing_token_source_is_a_token_error_and_nothing_is_sent() {
    // A `TokenSource` of our own that fails.
    let server = AuthServer::start().await;
    let source = TestSource::new(HOUR, Duration::ZERO);
    source.set_down(true);
    let layer = BesenderAuthLayer::new(source.source()).without_retry();
    let service: Direct = layer.layer(client(false));
    let err = send(&service, json(&server.url(), "{}")).await.unwrap_err();
    let Error::Token(token_err) = &err else {
        panic!("expected a token error, got {err:?}")
    };
    assert_eq!(token_err.kind(), &TokenErrorKind::Source);
    assert!(token_err.source_as::<SourceDown>().is_some(), "{err:?}");
    assert_eq!(
        err.to_string(),
        "could not obtain an access token: the test token endpoint is down"
    );
    assert_eq!(source.calls(), 1);
    assert!(server.seen().is_empty(), "a request reached the server");

    // Besender's token endpoint refuses the credentials.
    let fake = FakeBesender::start().await.unwrap();
    fake.fail_next_token_calls(1, TokenFailure::code(40001, "client disabled"));
    let layer = BesenderAuthLayer::new(source_for(&fake)).without_retry();
    let service: Direct = layer.layer(client(true));
    let err = send(&service, json(&fake.demo_url(), "{}"))
        .await
        .unwrap_err();
    let Error::Token(token_err) = &err else {
        panic!("expected a token error, got {err:?}")
    };
    let besender = token_err.source_as::<BesenderError>().expect("Besender's");
    assert!(
        matches!(
            besender.kind(),
            BesenderErrorKind::Rejected {
                code: Some(40001),
                ..
            }
        ),
        "{besender:?}"
    );
    assert!(err.to_string().contains("40001"), "{err}");
    assert!(err.source().is_some());
    let text = format!("{err} {err:?}");
    assert!(!text.contains(&fake.client_secret()), "{text}");
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.demo_calls(), 0, "a request reached the server");
}

#[tokio::test]
async fn a_failing_inner_service_is_an_inner_error_that_keeps_the_token() {
    for h2 in [false, true] {
        let dead = refused_addr().await;
        let (source, layer) = no_retry_layer();
        let service: Direct = layer.layer(client(h2));
        let err = send(&service, json(&format!("http://{dead}/api"), "{}"))
            .await
            .unwrap_err();
        let Error::Inner(inner) = &err else {
            panic!("expected an inner error, got {err:?}")
        };
        let inner = inner
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .expect("the client's own error");
        assert!(inner.is_connect(), "{inner:?}");
        assert!(err.to_string().starts_with("the request failed: "), "{err}");
        let mut text = format!("{err} {err:?}");
        let mut next = err.source();
        while let Some(cause) = next {
            text.push_str(&format!(" {cause} {cause:?}"));
            next = cause.source();
        }
        assert!(!text.contains("token-1"), "the token leaked: {text}");
        assert_eq!(layer.stats().refusals, 0);

        // A transport failure says nothing about the token: the next request carries it.
        let server = AuthServer::start().await;
        let response = send(&service, json(&server.url(), "{}")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "h2: {h2}");
        assert_eq!(
            server.seen()[0].authorization.as_deref(),
            Some("Bearer token-1")
        );
        assert_eq!(source.calls(), 1, "h2: {h2}");
    }
}

#[tokio::test]
async fn calling_without_poll_ready_is_an_error_and_nothing_is_sent() {
    let server = AuthServer::start().await;
    let (source, layer) = no_retry_layer();
    let mut service: Direct = layer.layer(client(false));
    let err = service.call(json(&server.url(), "{}")).await.unwrap_err();
    assert!(matches!(err, Error::NotReady), "{err:?}");
    assert!(server.seen().is_empty());
    assert_eq!(source.calls(), 0);
}
