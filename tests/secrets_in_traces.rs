//! ANCHORS "tokens in logs": no trace event or span field carries the client secret or a token,
//! over failed fetches the cache logs at WARN (an endpoint that echoes the secret, one that
//! sends the header value as `token_type`), a successful fetch, a refusal of the token by the
//! API, the forced refresh and the retry.

mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use besender_auth::{BesenderAuthLayer, BesenderTokenSource, Token, TokenCache, TokenSource};
use common::{Reply, ScriptedServer, full_body, hyper_client};
use http::{Request, StatusCode};
use tower::{Layer, ServiceExt};

const SECRET: &str = "cAREfCzucJ8hSECRETSECRET";
const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIyIn0.c2lnbmF0dXJl";

fn ok_body() -> String {
    format!(
        r#"{{"code":200,"message":"success","data":{{"token":{{"token_type":"Bearer","expires_in":86400,"access_token":"{TOKEN}"}},"userInfo":{{"id":2}}}}}}"#
    )
}

fn source(base: &str) -> BesenderTokenSource {
    common::besender_source(base, SECRET)
}

#[tokio::test]
async fn no_token_or_secret_reaches_the_trace_output() {
    let events = Arc::new(Mutex::new(String::new()));
    let _guard = tracing::subscriber::set_default(Capture(Arc::clone(&events)));

    // Fetches that fail, through a cache, which logs each failure with its error: a refusal
    // that echoes the secret, and an answer whose `token_type` is the whole header value.
    let token_server = ScriptedServer::start(Reply::json(200, ok_body())).await;
    let echo = ScriptedServer::start(Reply::json(
        200,
        format!(r#"{{"code":401,"message":"bad secret {SECRET}"}}"#),
    ))
    .await;
    let as_type = ScriptedServer::start(Reply::json(
        200,
        ok_body().replace(r#""Bearer""#, &format!(r#""Bearer {TOKEN}""#)),
    ))
    .await;
    for failing in [&echo, &as_type] {
        assert!(TokenCache::new(source(&failing.url())).get().await.is_err());
    }

    let api = common::AuthServer::start().await;
    api.refuse(TOKEN);
    let calls = Arc::new(AtomicU64::new(0));
    let base = token_server.url();
    let src = source(&base);
    let counter = Arc::clone(&calls);
    let layer = BesenderAuthLayer::new(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let src = src.clone();
        async move {
            if n == 0 {
                src.fetch().await
            } else {
                Ok(Token::bearer(
                    "second-token-value",
                    Duration::from_secs(3600),
                ))
            }
        }
    });
    let service = layer.layer(hyper_client::<besender_auth::ReplayBody<common::TestBody>>(
        false,
    ));
    let request = Request::post(api.url()).body(full_body("{}")).unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let text = events.lock().unwrap().clone();
    assert!(!text.is_empty(), "nothing was captured");
    for secret in [SECRET, TOKEN, "c2lnbmF0dXJl", "second-token-value"] {
        assert!(!text.contains(secret), "{secret} in trace output: {text}");
    }
    assert!(
        text.contains("[redacted]"),
        "the failures were not logged: {text}"
    );
}

struct Capture(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut out = self.0.lock().unwrap();
        span.record(&mut Fields(&mut out));
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut out = self.0.lock().unwrap();
        values.record(&mut Fields(&mut out));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut out = self.0.lock().unwrap();
        out.push('\n');
        event.record(&mut Fields(&mut out));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
