//! `BesenderTokenSource` against servers that are not FakeBesender: the request it sends, and
//! every kind of answer a real or broken endpoint can give.

mod common;

use std::time::Duration;

use besender_auth::{BesenderErrorKind, BesenderTokenSource, TokenSource};
use common::{
    Reply, ScriptedServer,
    besender::{
        SECRET, TOKEN, assert_no_secrets, error_from, fetch_from, good_token_fields, ok_body,
        source,
    },
};
use http::StatusCode;
use serde_json::Value;

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
    // Framed by its length, as a PHP backend behind nginx expects (no chunked upload), and no
    // credential of ours but the body's.
    assert_eq!(
        request.headers["content-length"],
        request.body.len().to_string()
    );
    assert!(!request.headers.contains_key("transfer-encoding"));
    assert!(!request.headers.contains_key("authorization"));
    assert_eq!(request.uri.query(), None);
}

#[test]
fn client_ids_convert_from_every_integer_and_string_type() {
    use besender_auth::ClientId;
    assert_eq!(ClientId::from(19u64), ClientId::Number(19));
    assert_eq!(ClientId::from(19usize), ClientId::Number(19));
    assert_eq!(ClientId::from(-19isize), ClientId::Number(-19));
    assert_eq!(ClientId::from(u64::MAX), ClientId::Number(u64::MAX.into()));
    assert_eq!(ClientId::from(i64::MIN), ClientId::Number(i64::MIN.into()));
    assert_eq!(
        ClientId::from(&"abc".to_owned()),
        ClientId::Text("abc".into())
    );
    // A bare literal still picks an impl.
    let builder = BesenderTokenSource::builder("http://127.0.0.1:1").client_id(19);
    drop(builder);
}

/// "Sent back exactly as given": a string as a JSON string, and a number of any integer type
/// as a JSON number, to its last digit, at both ends of the 64-bit range.
#[tokio::test]
async fn client_ids_are_sent_exactly_as_given() {
    use besender_auth::ClientId;
    for (id, json) in [
        (ClientId::from("abc"), r#""abc""#),
        (ClientId::from(u64::MAX), "18446744073709551615"),
        (ClientId::from(i64::MIN), "-9223372036854775808"),
    ] {
        let server = ScriptedServer::start(Reply::json(200, ok_body(&good_token_fields()))).await;
        BesenderTokenSource::builder(server.url())
            .client_id(id)
            .client_secret(SECRET)
            .build()
            .unwrap()
            .fetch()
            .await
            .unwrap();
        let body = String::from_utf8(server.requests()[0].body.to_vec()).unwrap();
        assert_eq!(
            body,
            format!(r#"{{"client_id":{json},"client_secret":"{SECRET}"}}"#)
        );
    }
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

/// The platform document's example answer (its 响应示例) as the document prints it: its JWT is
/// far longer than the tests' own and carries `-` and `_`, and it has no `message`.
#[tokio::test]
async fn the_documents_example_answer_gives_its_token() {
    let answer = include_str!("common/document_token_answer.json");
    let example: Value = serde_json::from_str(answer).unwrap();
    let access_token = example["data"]["token"]["access_token"].as_str().unwrap();
    let token = fetch_from(Reply::json(200, answer)).await.unwrap();
    assert_eq!(token.expose_access_token(), Some(access_token));
    assert_eq!(
        token.header_value().unwrap(),
        &format!("Bearer {access_token}")
    );
    assert!(token.remaining() > Duration::from_secs(86_390));
    assert_eq!(token.user_info(), Some(&example["data"]["userInfo"]));
    assert!(!format!("{token:?}").contains(&access_token[..40]));
}

/// The document: "access token会过期，默认设置为24小时" (it expires, by default after 24 hours).
#[tokio::test]
async fn absent_or_null_expires_in_means_24_hours() {
    for expires_in in ["", r#""expires_in":null,"#] {
        let fields = format!(r#""token_type":"Bearer",{expires_in}"access_token":"{TOKEN}""#);
        let token = fetch_from(Reply::json(200, ok_body(&fields)))
            .await
            .unwrap();
        assert!(token.remaining() > Duration::from_secs(86_390));
        assert!(token.remaining() <= Duration::from_secs(86_400));
    }
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
async fn bearer_is_matched_case_insensitively_or_padded_and_message_may_be_absent() {
    for token_type in ["bearer", "BEARER", "Bearer", " Bearer "] {
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

/// The message reaches the error's text as the server wrote it: quotes, backslashes and
/// Chinese included (only control characters are blanked, so it cannot forge log lines).
#[tokio::test]
async fn the_message_is_quoted_as_sent() {
    let message = r#"client_secret "c:\x" 错误"#;
    let body = serde_json::json!({"code": 401, "message": format!("{message}\nforged line")});
    let err = error_from(Reply::json(200, body.to_string())).await;
    let text = err.to_string();
    assert!(text.contains(message), "{text}");
    assert!(
        text.contains(r#"message "client_secret "c:\x" 错误 forged line""#),
        "{text}"
    );
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
