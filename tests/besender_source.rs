//! `BesenderTokenSource` against servers that are not FakeBesender: the request it sends, and
//! every kind of answer a real or broken endpoint can give.

mod common;

use std::{error::Error as _, time::Duration};

use besender_auth::{BesenderError, BesenderErrorKind, BesenderTokenSource, Token, TokenSource};
use common::{Reply, ScriptedServer, refused_addr};
use http::StatusCode;
use serde_json::Value;

const SECRET: &str = "cAREfCzucJ8hSECRETSECRET";
const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIyIn0.c2lnbmF0dXJl";

fn ok_body(token_fields: &str) -> String {
    format!(
        r#"{{"code":200,"message":"success","data":{{"token":{{{token_fields}}},"userInfo":{{"id":2,"account":"test007","score":"461.74970"}}}}}}"#
    )
}

fn good_token_fields() -> String {
    format!(r#""token_type":"Bearer","expires_in":86400,"access_token":"{TOKEN}""#)
}

fn source(base: &str) -> BesenderTokenSource {
    common::besender_source(base, SECRET)
}

async fn fetch_from(reply: Reply) -> Result<Token, BesenderError> {
    let server = ScriptedServer::start(reply).await;
    source(&server.url()).fetch().await
}

async fn error_from(reply: Reply) -> BesenderError {
    let err = fetch_from(reply)
        .await
        .expect_err("the answer must be refused");
    assert_no_secrets(&format!("{err} {err:?}"));
    err
}

fn assert_no_secrets(text: &str) {
    assert!(!text.contains(SECRET), "client secret leaked: {text}");
    assert!(!text.contains(TOKEN), "access token leaked: {text}");
    assert!(!text.contains("c2lnbmF0dXJl"), "token part leaked: {text}");
}

#[tokio::test]
async fn numeric_client_id_is_sent_as_a_json_number() {
    let server = ScriptedServer::start(Reply::json(200, ok_body(&good_token_fields()))).await;
    source(&server.url()).fetch().await.unwrap();

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, http::Method::POST);
    assert_eq!(request.uri.path(), "/open/api/v1/access_token");
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(
        std::str::from_utf8(&request.body).unwrap(),
        format!(r#"{{"client_id":19,"client_secret":"{SECRET}"}}"#)
    );
}

#[test]
fn client_ids_convert_from_every_integer_and_string_type() {
    use besender_auth::ClientId;
    assert_eq!(ClientId::from(19u64), ClientId::Number(19));
    assert_eq!(ClientId::from(19usize), ClientId::Number(19));
    assert_eq!(ClientId::from(-19isize), ClientId::Number(-19));
    assert_eq!(
        ClientId::from(u64::MAX),
        ClientId::Text(u64::MAX.to_string())
    );
    assert_eq!(
        ClientId::from(&"abc".to_owned()),
        ClientId::Text("abc".into())
    );
    // A bare literal still picks an impl.
    let builder = BesenderTokenSource::builder("http://127.0.0.1:1").client_id(19);
    drop(builder);
}

#[tokio::test]
async fn string_client_id_is_sent_as_a_json_string() {
    let server = ScriptedServer::start(Reply::json(200, ok_body(&good_token_fields()))).await;
    BesenderTokenSource::builder(server.url())
        .client_id("abc")
        .client_secret(SECRET)
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&server.requests()[0].body).unwrap();
    assert_eq!(body["client_id"], Value::String("abc".into()));
    assert_eq!(body["client_secret"], Value::String(SECRET.into()));
}

#[tokio::test]
async fn extra_headers_and_a_base_path_are_honoured() {
    let server = ScriptedServer::start(Reply::json(200, ok_body(&good_token_fields()))).await;
    BesenderTokenSource::builder(format!("{}/gateway/", server.url()))
        .client_id(19)
        .client_secret(SECRET)
        .header("x-gateway-key", "k1")
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap();
    let request = &server.requests()[0];
    assert_eq!(request.uri.path(), "/gateway/open/api/v1/access_token");
    assert_eq!(request.headers["x-gateway-key"], "k1");
}

#[tokio::test]
async fn a_good_answer_gives_a_ready_sensitive_bearer_token() {
    let token = fetch_from(Reply::json(200, ok_body(&good_token_fields())))
        .await
        .unwrap();
    let header = token.header_value().unwrap();
    assert_eq!(header, &format!("Bearer {TOKEN}"));
    assert!(header.is_sensitive());
    assert_eq!(token.expose_access_token(), Some(TOKEN));
    assert_eq!(token.token_type(), "Bearer");
    let remaining = token.remaining();
    assert!(remaining > Duration::from_secs(86_390) && remaining <= Duration::from_secs(86_400));
    assert_eq!(token.user_info().unwrap()["account"], "test007");
    assert_no_secrets(&format!("{token:?}"));
}

#[tokio::test]
async fn absent_expires_in_means_24_hours() {
    let fields = format!(r#""token_type":"Bearer","access_token":"{TOKEN}""#);
    let token = fetch_from(Reply::json(200, ok_body(&fields)))
        .await
        .unwrap();
    assert!(token.remaining() > Duration::from_secs(86_390));
    assert!(token.remaining() <= Duration::from_secs(86_400));
}

/// The document types `expires_in` as an integer; a backend that stringifies numbers (as `code`
/// may be) still gives a usable lifetime.
#[tokio::test]
async fn expires_in_as_a_numeric_string_is_accepted() {
    let fields = format!(r#""token_type":"Bearer","expires_in":" 3600","access_token":"{TOKEN}""#);
    let token = fetch_from(Reply::json(200, ok_body(&fields)))
        .await
        .unwrap();
    assert!(token.remaining() > Duration::from_secs(3590));
    assert!(token.remaining() <= Duration::from_secs(3600));
}

#[tokio::test]
async fn bearer_is_matched_case_insensitively_padded_or_empty_and_message_may_be_absent() {
    for token_type in ["bearer", "BEARER", "Bearer", " Bearer ", ""] {
        let body = format!(
            r#"{{"code":200,"data":{{"token":{{"token_type":"{token_type}","expires_in":60,"access_token":"{TOKEN}"}}}}}}"#
        );
        let token = fetch_from(Reply::json(200, body)).await.unwrap();
        assert!(token.user_info().is_none());
    }
}

#[tokio::test]
async fn data_sent_as_a_json_string_is_accepted() {
    let data =
        serde_json::to_string(&format!(r#"{{"token":{{{}}}}}"#, good_token_fields())).unwrap();
    let body = format!(r#"{{"code":200,"message":"ok","data":{data}}}"#);
    assert!(fetch_from(Reply::json(200, body)).await.is_ok());
}

#[tokio::test]
async fn a_code_other_than_200_is_a_refusal_even_under_http_200() {
    let err = error_from(Reply::json(
        200,
        r#"{"code":401,"message":"client_secret is wrong","data":null}"#,
    ))
    .await;
    assert_eq!(
        err.kind(),
        &BesenderErrorKind::Rejected {
            status: StatusCode::OK,
            code: Some(401),
            message: Some("client_secret is wrong".into()),
        }
    );
    let text = err.to_string();
    for part in [
        "HTTP 200",
        "code 401",
        "client_secret is wrong",
        err.endpoint(),
    ] {
        assert!(text.contains(part), "{text:?} lacks {part:?}");
    }
    assert!(!err.is_transient());
}

#[tokio::test]
async fn code_500_with_a_message_names_both() {
    let err = error_from(Reply::json(
        200,
        r#"{"code":500,"message":"internal error"}"#,
    ))
    .await;
    let text = err.to_string();
    assert!(
        text.contains("code 500") && text.contains("internal error"),
        "{text}"
    );
    assert!(err.is_transient(), "code mirrors HTTP: 5xx may pass");
}

#[tokio::test]
async fn codes_that_mirror_retryable_http_statuses_are_transient() {
    for (code, transient) in [
        (429, true),
        (408, true),
        (503, true),
        (400, false),
        (403, false),
    ] {
        let err = error_from(Reply::json(
            200,
            format!(r#"{{"code":{code},"message":"x"}}"#),
        ))
        .await;
        assert_eq!(err.is_transient(), transient, "code {code}");
    }
}

/// RFC 9110 §10.2.3: `Retry-After` on a refusal, in seconds or as a date, is in the error.
#[tokio::test]
async fn a_refusal_says_how_long_it_asked_to_wait() {
    let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(300));
    for (status, value, expected) in [
        (503, "120".to_owned(), Some(120..=120)),
        (429, soon, Some(290..=300)),
        (503, "soon".to_owned(), None),
        (400, "-5".to_owned(), None),
    ] {
        let err =
            error_from(Reply::json(status, r#"{"code":503}"#).header("retry-after", value)).await;
        let wait = err.retry_after().map(|w| w.as_secs());
        match expected {
            Some(range) => assert!(
                wait.is_some_and(|w| range.contains(&w)),
                "{status}: {wait:?}"
            ),
            None => assert_eq!(wait, None, "{status}"),
        }
    }
    assert_eq!(error_from(Reply::json(503, "{}")).await.retry_after(), None);
}

/// RFC 9110 §12.5.3: with no `Accept-Encoding` any coding is acceptable; we read only plain
/// JSON, so we say so, and a coded body anyway is named for what it is.
#[tokio::test]
async fn only_an_identity_body_is_accepted_and_a_coded_one_is_named() {
    let server = ScriptedServer::start(Reply::json(200, ok_body(&good_token_fields()))).await;
    source(&server.url()).fetch().await.unwrap();
    assert_eq!(server.requests()[0].headers["accept-encoding"], "identity");

    let err = error_from(
        Reply::with_content_type(200, "application/json", vec![0x1f, 0x8b, 8, 0])
            .header("content-encoding", "gzip"),
    )
    .await;
    assert_eq!(
        err.kind(),
        &BesenderErrorKind::Encoded {
            status: StatusCode::OK,
            encoding: "gzip".into()
        }
    );
    assert!(err.to_string().contains("gzip"), "{err}");
    // A refusal is named by its status, whatever its body's coding.
    let err = error_from(
        Reply::with_content_type(503, "application/json", vec![0x1f, 0x8b, 8, 0])
            .header("content-encoding", "gzip")
            .header("retry-after", "30"),
    )
    .await;
    assert!(
        matches!(err.kind(), BesenderErrorKind::Rejected { status, .. } if status.as_u16() == 503),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    let plain =
        Reply::json(200, ok_body(&good_token_fields())).header("content-encoding", "identity");
    fetch_from(plain).await.unwrap();
}

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

#[tokio::test]
async fn a_server_that_echoes_the_secret_does_not_leak_it_into_errors() {
    let body = format!(r#"{{"code":401,"message":"secret {SECRET} is wrong"}}"#);
    let err = error_from(Reply::json(200, body)).await;
    assert!(err.to_string().contains("[redacted]"));
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

/// A server that quotes the refused request back writes the secret in its own encoding (PHP
/// escapes `/` as `\/`, Go escapes `<`, `>` and `&`, a form percent-encodes it), and a gateway
/// may quote the key it refused: none of them reach the error.
#[tokio::test]
async fn secrets_echoed_in_other_encodings_and_refused_gateway_keys_are_scrubbed() {
    let secret = "Zm9v/YmFy+<cAREf>&Czu==";
    let key = "gw-key-7f3a9c1e5b2d4f60";
    for echoed in [
        r#"{"client_id":19,"client_secret":"Zm9v\/YmFy+<cAREf>&Czu=="}"#,
        r#"{"client_secret":"Zm9v/YmFy+\u003ccAREf\u003e\u0026Czu=="}"#,
        "client_id=19&client_secret=Zm9v%2FYmFy%2B%3CcAREf%3E%26Czu%3D%3D",
        "API key gw-key-7f3a9c1e5b2d4f60 is not allowed",
        // .NET's default encoder, uppercase escapes, a WHATWG form.
        r#"{"client_secret":"Zm9v/YmFy\u002B\u003CcAREf\u003E\u0026Czu=="}"#,
        "client_secret=Zm9v%2FYmFy%2B%3CcAREf%3E%26Czu%3D%3D&grant_type=client_credentials",
    ] {
        let body =
            serde_json::json!({"code": 401, "message": format!("invalid: {echoed}"), "data": null});
        let server = ScriptedServer::start(Reply::json(200, body.to_string())).await;
        let err = BesenderTokenSource::builder(server.url())
            .client_id(19)
            .client_secret(secret)
            .header("x-api-key", key)
            .build()
            .unwrap()
            .fetch()
            .await
            .expect_err("refused");
        let text = format!("{err} {err:?} {err:#?}");
        for leaked in ["cAREf", "Czu", key] {
            assert!(!text.contains(leaked), "{echoed}: {text}");
        }
        assert!(text.contains("[redacted]"), "{text}");
    }
}

/// Only credential headers are scrubbed: an ordinary header value stays readable in messages.
#[tokio::test]
async fn an_ordinary_header_value_is_not_cut_out_of_messages() {
    let body = r#"{"code":401,"message":"client 19 is not enabled in production","data":null}"#;
    let server = ScriptedServer::start(Reply::json(200, body)).await;
    let err = BesenderTokenSource::builder(server.url())
        .client_id(19)
        .client_secret(SECRET)
        .header("x-tenant", "production")
        .build()
        .unwrap()
        .fetch()
        .await
        .expect_err("refused");
    assert!(
        err.to_string().contains("not enabled in production"),
        "{err}"
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

#[test]
fn debug_of_builder_and_source_never_shows_the_secret() {
    let builder = BesenderTokenSource::builder("http://127.0.0.1:9")
        .client_id(19)
        .client_secret(SECRET);
    let builder_text = format!("{builder:?}");
    let source = builder.build().unwrap();
    let source_text = format!("{source:?} {source:#?}");
    for text in [builder_text, source_text] {
        assert_no_secrets(&text);
        assert!(text.contains("[redacted]"), "{text}");
    }
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
