//! `BesenderTokenSource` against hostile and broken endpoints: error statuses and bodies,
//! caps, unusable tokens, refused and hanging connections, redirects, bad configuration. (`besender_source.rs` covers the request and the good answers.)

mod common;

use std::{error::Error as _, time::Duration};

use besender_auth::{BesenderErrorKind, BesenderTokenSource, TokenSource};
use common::{
    Reply, ScriptedServer,
    besender::{SECRET, TOKEN, error_from, good_token_fields, ok_body, source},
    refused_addr,
};
use http::StatusCode;

#[tokio::test]
async fn an_http_error_status_with_an_envelope_names_status_code_and_message() {
    let err = error_from(Reply::json(
        401,
        r#"{"code":401,"message":"bad credentials"}"#,
    ))
    .await;
    assert_eq!(
        err.kind(),
        &BesenderErrorKind::Rejected {
            status: StatusCode::UNAUTHORIZED,
            code: Some(401),
            message: Some("bad credentials".into()),
        }
    );
    assert!(err.to_string().contains("HTTP 401 Unauthorized"));
}

/// RFC 6749 §5.2: an OAuth server (or a gateway in front of Besender) answers a bad client with
/// `error` and `error_description` instead of Besender's `code` and `message`.
#[tokio::test]
async fn an_oauth_error_body_is_named_in_the_error() {
    let body = format!(
        r#"{{"error":"invalid_client","error_description":"client {SECRET} failed to authenticate"}}"#
    );
    let err = error_from(Reply::json(401, body)).await;
    let BesenderErrorKind::Rejected {
        status,
        code: None,
        message: Some(message),
    } = err.kind()
    else {
        panic!("{:?}", err.kind());
    };
    assert_eq!(*status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        message,
        "invalid_client: client [redacted] failed to authenticate"
    );
    assert!(err.to_string().contains("invalid_client"), "{err}");
    let err = error_from(Reply::json(400, r#"{"error":"invalid_request"}"#)).await;
    assert!(err.to_string().contains("invalid_request"), "{err}");
}

#[tokio::test]
async fn an_html_error_page_is_reported_as_such() {
    let page = "<html><body><h1>502 Bad Gateway</h1></body></html>";
    let err = error_from(Reply::with_content_type(502, "text/html", page)).await;
    assert!(matches!(
        err.kind(),
        BesenderErrorKind::Rejected { status, code: None, .. } if *status == StatusCode::BAD_GATEWAY
    ));
    assert!(err.is_transient());

    let err = error_from(Reply::with_content_type(200, "text/html", page)).await;
    assert_eq!(
        err.kind(),
        &BesenderErrorKind::NotJson {
            status: StatusCode::OK,
            content_type: Some("text/html".into()),
        }
    );
    assert!(err.to_string().contains("not JSON"));
}

#[tokio::test]
async fn malformed_json_is_reported_with_its_parse_error() {
    let err = error_from(Reply::json(200, r#"{"code":200,"data":{"token":"#)).await;
    assert!(matches!(err.kind(), BesenderErrorKind::NotJson { .. }));
    let source = err.source().expect("the JSON error is the source");
    assert!(source.is::<serde_json::Error>());
}

#[tokio::test]
async fn a_body_over_the_cap_is_refused_with_or_without_content_length() {
    let huge = format!(r#"{{"code":200,"padding":"{}"}}"#, "x".repeat(100 * 1024));
    for reply in [
        Reply::json(200, huge.clone()),
        Reply::json(200, huge).chunked(),
    ] {
        let err = error_from(reply).await;
        assert_eq!(
            err.kind(),
            &BesenderErrorKind::BodyTooLarge { limit: 64 * 1024 }
        );
    }
    // A refusal with an oversize body is still the refusal, with the wait it asked for.
    let huge = format!(r#"{{"padding":"{}"}}"#, "x".repeat(100 * 1024));
    for reply in [
        Reply::json(503, huge.clone()),
        Reply::json(503, huge).chunked(),
    ] {
        let err = error_from(reply.header("retry-after", "7")).await;
        assert!(
            matches!(err.kind(), BesenderErrorKind::Rejected { status, code: None, .. } if status.as_u16() == 503),
            "{err:?}"
        );
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    }
}

#[tokio::test]
async fn the_response_cap_is_configurable() {
    let server = ScriptedServer::start(Reply::json(200, ok_body(&good_token_fields()))).await;
    let err = BesenderTokenSource::builder(server.url())
        .client_id(19)
        .client_secret(SECRET)
        .max_response_bytes(100)
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &BesenderErrorKind::BodyTooLarge { limit: 100 });
}

#[tokio::test]
async fn missing_parts_of_the_envelope_are_named() {
    let cases = [
        (r#"{"code":200,"message":"ok"}"#.to_owned(), "data"),
        (
            r#"{"code":200,"data":{"userInfo":{}}}"#.to_owned(),
            "data.token",
        ),
        (
            r#"{"code":200,"data":{"token":{"token_type":"Bearer","expires_in":60}}}"#.to_owned(),
            "data.token.access_token",
        ),
        (
            format!(r#"{{"data":{{"token":{{{}}}}}}}"#, good_token_fields()),
            "code",
        ),
    ];
    for (body, field) in cases {
        let err = error_from(Reply::json(200, body)).await;
        assert_eq!(err.kind(), &BesenderErrorKind::MissingField { field });
        assert!(err.to_string().contains(field));
    }
}

#[tokio::test]
async fn unusable_expires_in_values_are_refused_without_overflow() {
    for expires_in in [
        "0",
        "-5",
        "0.5",
        "-1.5",
        "\"soon\"",
        "\"0\"",
        "\"-5\"",
        "\"+60\"",
        "\"1.5\"",
        "\"\"",
        "\"99999999999999999999999\"",
        "1e300",
        "1000000000000",
        "18446744073709551615",
        "99999999999999999999999",
        "[]",
    ] {
        let fields =
            format!(r#""token_type":"Bearer","expires_in":{expires_in},"access_token":"{TOKEN}""#);
        let err = error_from(Reply::json(200, ok_body(&fields))).await;
        assert!(
            matches!(
                err.kind(),
                BesenderErrorKind::InvalidField {
                    field: "data.token.expires_in",
                    ..
                }
            ),
            "expires_in {expires_in}: {err:?}"
        );
    }
}

#[tokio::test]
async fn an_unknown_token_type_is_refused() {
    let fields = format!(r#""token_type":"MAC","expires_in":60,"access_token":"{TOKEN}""#);
    let err = error_from(Reply::json(200, ok_body(&fields))).await;
    assert_eq!(
        err.kind(),
        &BesenderErrorKind::UnsupportedTokenType {
            token_type: "MAC".into()
        }
    );
}

#[tokio::test]
async fn a_token_that_cannot_be_a_header_is_refused_without_being_quoted() {
    for bad in [
        format!(r#"{TOKEN}\n"#),
        format!(r#"{TOKEN} x"#),
        format!(r#"{TOKEN}\u0000"#),
        format!("{TOKEN}é"),
        String::new(),
    ] {
        let fields = format!(r#""token_type":"Bearer","expires_in":60,"access_token":"{bad}""#);
        let err = error_from(Reply::json(200, ok_body(&fields))).await;
        assert!(
            matches!(
                err.kind(),
                BesenderErrorKind::InvalidField {
                    field: "data.token.access_token",
                    ..
                }
            ),
            "{err:?}"
        );
    }
    let fields = r#""token_type":"Bearer","expires_in":60,"access_token":42"#;
    let err = error_from(Reply::json(200, ok_body(fields))).await;
    assert!(matches!(err.kind(), BesenderErrorKind::InvalidField { .. }));
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_error() {
    let addr = refused_addr().await;
    let err = source(&format!("http://{addr}")).fetch().await.unwrap_err();
    assert_eq!(err.kind(), &BesenderErrorKind::Transport);
    assert!(err.source().is_some());
    assert!(err.to_string().contains(&addr.to_string()));
    assert!(err.is_transient());
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_that_never_answers_times_out() {
    let server = ScriptedServer::start(Reply::Hang).await;
    let source = BesenderTokenSource::builder(server.url())
        .client_id(19)
        .client_secret(SECRET)
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let err = source.fetch().await.unwrap_err();
    assert_eq!(
        err.kind(),
        &BesenderErrorKind::Timeout {
            after: Duration::from_secs(3)
        }
    );
    assert!(err.to_string().contains("3s"));
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let target = ScriptedServer::start(Reply::json(200, ok_body(&good_token_fields()))).await;
    let redirect = Reply::json(307, "{}").header(
        "location",
        format!("{}/open/api/v1/access_token", target.url()),
    );
    let err = error_from(redirect).await;
    assert_eq!(
        err.kind(),
        &BesenderErrorKind::Redirect {
            status: StatusCode::TEMPORARY_REDIRECT
        }
    );
    assert!(
        target.requests().is_empty(),
        "the secret went to the redirect target"
    );
}

#[test]
fn plain_http_is_refused_unless_loopback_or_allowed() {
    let build = |base: &str, allow: bool| {
        BesenderTokenSource::builder(base)
            .client_id(19)
            .client_secret(SECRET)
            .allow_insecure_http(allow)
            .build()
    };
    let err = build("http://open.example.com", false).unwrap_err();
    assert!(err.to_string().contains("http://"), "{err}");
    assert!(build("http://open.example.com", true).is_ok());
    assert!(build("http://127.0.0.1:9", false).is_ok());
    assert!(build("http://[::1]:9", false).is_ok());
    assert!(build("http://localhost:9", false).is_ok());
    // With the default `rustls` feature the built-in client speaks TLS (tests/besender_tls.rs).
    assert_eq!(
        build("https://open.example.com", false).is_ok(),
        cfg!(feature = "rustls")
    );
}

#[test]
fn missing_credentials_and_bad_headers_are_configuration_errors() {
    let err = BesenderTokenSource::builder("http://127.0.0.1:9")
        .client_secret(SECRET)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("client_id"));
    let err = BesenderTokenSource::builder("http://127.0.0.1:9")
        .client_id(19)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("client_secret"));
    let err = BesenderTokenSource::builder("http://127.0.0.1:9")
        .client_id(19)
        .client_secret(SECRET)
        .header("bad header", "v")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("header"));
}

/// A keep-alive connection is driven by a task on the runtime that opened it: reused from
/// another runtime while that one sits idle (a synchronous wrapper's `current_thread` runtime
/// between `block_on` calls), it would never answer, and the call would stall until its
/// timeout. The built-in client keeps no idle connection.
#[test]
fn a_token_call_from_a_second_runtime_is_not_stalled_by_the_first_runtimes_connection() {
    let current_thread = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    // The server on a runtime of its own thread, always driven.
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        current_thread().block_on(async move {
            let server =
                ScriptedServer::start(Reply::json(200, ok_body(&good_token_fields()))).await;
            url_tx.send(server.url()).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let source = BesenderTokenSource::builder(url_rx.recv().unwrap())
        .client_id(19)
        .client_secret(SECRET)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let first = current_thread();
    first.block_on(source.fetch()).expect("the first call");
    // `first` stays alive, and idle.
    let started = std::time::Instant::now();
    let second = current_thread().block_on(source.fetch());
    let took = started.elapsed();
    assert!(
        second.is_ok() && took < Duration::from_secs(1),
        "from a second runtime: {:?} after {took:?}",
        second.map(|_| ()).map_err(|e| e.to_string())
    );
    drop(first);
}
