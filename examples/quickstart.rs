//! The crate end to end against a fake Besender server on 127.0.0.1.
//!
//! Run with `cargo run --example quickstart`. It starts `FakeBesender` (a real HTTP server that
//! speaks Besender's protocol), puts `BesenderAuthLayer` in front of a hyper-util client, calls
//! the protected `/api/demo`, then has the server revoke the token and shows the layer refresh
//! it and retry the call transparently. It never prints a token.

use besender_auth::{BesenderAuthLayer, BesenderTokenSource, testing::FakeBesender};
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tower::{ServiceBuilder, ServiceExt};

/// Prints a response's status and body (the fake echoes what it was sent).
async fn show(response: http::Response<hyper::body::Incoming>) -> Result<(), hyper::Error> {
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!(
        "POST /api/demo -> {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fake = FakeBesender::start().await?;
    println!("fake Besender listening on {}", fake.base_url());

    // Besender's token call: POST /open/api/v1/access_token with the client credentials.
    let source = BesenderTokenSource::builder(fake.base_url())
        .client_id(fake.client_id())
        .client_secret(fake.client_secret())
        .build()?;
    println!("token source: {source:?}");

    // Any Tower HTTP client; here hyper-util's, as most Rust HTTP stacks use.
    let layer = BesenderAuthLayer::new(source);
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(Client::builder(TokioExecutor::new()).build_http());

    let call = |body: &'static str| {
        let request = Request::post(fake.demo_url())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("a valid request");
        client.clone().oneshot(request)
    };

    show(call(r#"{"code": "test", "name": "first call"}"#).await?).await?;
    println!("token calls so far: {}", fake.token_calls());

    // The platform revokes every token; the next call is refused with 401, and the layer
    // refreshes the token and sends the call again, once, with the same body.
    fake.revoke_all();
    println!("the server revoked the token");
    show(call(r#"{"code": "test", "name": "after revocation"}"#).await?).await?;

    let stats = layer.stats();
    println!(
        "token calls: {}, refusals: {}, transparent retries: {} (succeeded: {})",
        fake.token_calls(),
        stats.refusals,
        stats.retries,
        stats.successful_retries
    );
    println!("cache: {:?}", layer.cache().stats());
    Ok(())
}
