//! `BesenderTokenSource` never shows the client secret or a token: not in `Debug`, and not
//! in errors quoting what a server sent back, whatever encoding the server echoed it in.

mod common;

use besender_auth::{BesenderTokenSource, TokenSource};
use common::{
    Reply, ScriptedServer,
    besender::{SECRET, TOKEN, assert_no_secrets, error_from, good_token_fields, ok_body},
};

#[tokio::test]
async fn a_server_that_echoes_the_secret_does_not_leak_it_into_errors() {
    let body = format!(r#"{{"code":401,"message":"secret {SECRET} is wrong"}}"#);
    let err = error_from(Reply::json(200, body)).await;
    assert!(err.to_string().contains("[redacted]"));
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
    assert!(builder_text_of("http://127.0.0.1:9").contains("127.0.0.1:9"));
}

/// The token an answer carries is as secret as ours: a server that sends the whole header value
/// as `token_type` (`"Bearer eyJ..."`), or quotes the token in a refusal, gets an error that
/// quotes neither, at any level of its `source()` chain (the cache logs it at WARN). However
/// short the token: unlike an extra header's value, it is known to be a credential.
#[tokio::test]
async fn the_answers_own_token_is_not_quoted_in_errors() {
    for (token, secret_part) in [
        (
            "eyJhbGciOiJSUzI1NiJ9.the-answers-own-token.c2lnbmF0dXJl",
            "the-answers-own-token",
        ),
        ("tok123", "tok123"),
    ] {
        let as_type = serde_json::json!({"code": 200, "data": {"token": {
            "access_token": token, "token_type": format!("Bearer {token}"), "expires_in": 3600}}});
        let quoted = serde_json::json!({"code": 500, "message": format!("token {token} revoked"),
            "data": {"token": {"access_token": token}}});
        for body in [as_type, quoted] {
            let err = error_from(Reply::json(200, body.to_string())).await;
            let mut text = format!("{err} {err:?}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                text.push_str(&format!(" {cause} {cause:?}"));
                source = cause.source();
            }
            assert!(!text.contains(secret_part), "{text}");
            assert!(text.contains("[redacted]"), "{text}");
        }
    }
}

/// Besides `message`, an error quotes the answer's `Content-Type` (not JSON), its
/// `Content-Encoding` (not identity) and its `token_type` (not Bearer): a server echoing the
/// secret into any of them does not get it into the error.
#[tokio::test]
async fn a_secret_echoed_in_a_header_or_field_the_error_quotes_is_scrubbed() {
    let in_token_type =
        format!(r#""token_type":"{SECRET}","expires_in":60,"access_token":"{TOKEN}""#);
    for reply in [
        Reply::with_content_type(200, &format!("text/html; x={SECRET}"), "<html>"),
        Reply::json(200, ok_body(&good_token_fields())).header("content-encoding", SECRET),
        Reply::json(200, ok_body(&in_token_type)),
    ] {
        let err = error_from(reply).await;
        assert!(format!("{err:?}").contains("[redacted]"), "{err:?}");
    }
}

fn builder_text_of(base_url: &str) -> String {
    format!("{:?}", BesenderTokenSource::builder(base_url))
}

/// A base URL may carry credentials (a user part, a query, a fragment): the builder's `Debug`
/// does not show it, as `build`'s error does not.
#[test]
fn debug_of_a_builder_never_shows_credentials_in_its_base_url() {
    for url in [
        "https://user:hunter2@open.example.com",
        "https://open.example.com/?key=hunter2",
        "https://open.example.com/#hunter2",
    ] {
        let text = builder_text_of(url);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("not shown"), "{text}");
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

/// Nor the value of an extra header, which may be a gateway's key: its name only.
#[test]
fn debug_of_builder_and_source_never_shows_the_secret() {
    let key = "gw-key-0123456789abcdef";
    let builder = BesenderTokenSource::builder("http://127.0.0.1:9")
        .client_id(19)
        .client_secret(SECRET)
        .header("x-gateway-key", key);
    let builder_text = format!("{builder:?}");
    let source = builder.build().unwrap();
    let source_text = format!("{source:?} {source:#?}");
    for text in [builder_text, source_text] {
        assert_no_secrets(&text);
        assert!(!text.contains(key), "{text}");
        assert!(
            text.contains("[redacted]") && text.contains("x-gateway-key"),
            "{text}"
        );
    }
}
