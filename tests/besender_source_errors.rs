//! `BesenderTokenSource` against hostile and broken endpoints: error statuses and bodies, caps,
//! unusable tokens, bad configuration. (`besender_source.rs` covers the request and the good
//! answers, `besender_source_transport.rs` connections that fail, hang or redirect.)

mod common;

use std::{error::Error as _, time::Duration};

use besender_auth::{BesenderErrorKind, BesenderTokenSource, TokenSource};
use common::{
    Reply, ScriptedServer,
    besender::{SECRET, TOKEN, error_from, fetch_from, good_token_fields, ok_body},
};
use http::StatusCode;

/// An HTTP error status is a refusal whatever the body says, even a complete token answer
/// (`code` 200 and a token, behind a gateway answering 503): the status wins, and the token in
/// it is not quoted.
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

    let err = error_from(Reply::json(503, ok_body(&good_token_fields()))).await;
    assert!(
        matches!(err.kind(), BesenderErrorKind::Rejected { status, .. } if status.as_u16() == 503),
        "{err:?}"
    );
    assert!(err.is_transient());
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

/// A good answer padded with JSON whitespace to `len` bytes.
fn answer_of_length(len: usize) -> String {
    let mut answer = ok_body(&good_token_fields());
    let close = answer.pop().unwrap();
    let padding = len - answer.len() - 1;
    answer.extend(std::iter::repeat_n(' ', padding));
    answer.push(close);
    answer
}

/// The cap (64 KiB) is the most that is read: an answer of exactly that length is read, one byte
/// more is refused, whether the length was declared or the body streamed.
#[tokio::test]
async fn a_body_over_the_cap_is_refused_with_or_without_content_length() {
    let cap = 64 * 1024;
    for chunked in [false, true] {
        let reply = |len| match chunked {
            false => Reply::json(200, answer_of_length(len)),
            true => Reply::json(200, answer_of_length(len)).chunked(),
        };
        let token = fetch_from(reply(cap)).await;
        assert!(token.is_ok(), "chunked {chunked}: {:?}", token.err());
        let err = error_from(reply(cap + 1)).await;
        assert_eq!(
            err.kind(),
            &BesenderErrorKind::BodyTooLarge { limit: cap },
            "chunked {chunked}"
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
        // RFC 6749 §5.1: `token_type` is required, and a client must not guess it (§7.1).
        (
            ok_body(&format!(r#""expires_in":60,"access_token":"{TOKEN}""#)),
            "data.token.token_type",
        ),
        (
            ok_body(&format!(
                r#""token_type":null,"expires_in":60,"access_token":"{TOKEN}""#
            )),
            "data.token.token_type",
        ),
        (
            ok_body(&format!(
                r#""token_type":" ","expires_in":60,"access_token":"{TOKEN}""#
            )),
            "data.token.token_type",
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

/// Besender issues bearer tokens only: another scheme is refused by name, a type that is not a
/// string as a malformed field.
#[tokio::test]
async fn an_unknown_token_type_is_refused() {
    for token_type in ["MAC", "Basic", "DPoP"] {
        let fields =
            format!(r#""token_type":"{token_type}","expires_in":60,"access_token":"{TOKEN}""#);
        let err = error_from(Reply::json(200, ok_body(&fields))).await;
        assert_eq!(
            err.kind(),
            &BesenderErrorKind::UnsupportedTokenType {
                token_type: token_type.into()
            }
        );
    }
    let fields = format!(r#""token_type":7,"expires_in":60,"access_token":"{TOKEN}""#);
    let err = error_from(Reply::json(200, ok_body(&fields))).await;
    assert!(
        matches!(
            err.kind(),
            BesenderErrorKind::InvalidField {
                field: "data.token.token_type",
                ..
            }
        ),
        "{err:?}"
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
