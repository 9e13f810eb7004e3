//! The crate end to end against a fake Besender server on 127.0.0.1.
//!
//! Run with `cargo run --example quickstart`.

use std::time::Duration;

use besender_auth::{BesenderTokenSource, TokenSource, testing::FakeBesender};
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A real HTTP server that speaks Besender's protocol, on a free loopback port.
    let fake = FakeBesender::start().await?;
    println!("fake Besender listening on {}", fake.base_url());

    // Besender's token call: POST /open/api/v1/access_token with the client credentials.
    let source = BesenderTokenSource::builder(fake.base_url())
        .client_id(fake.client_id())
        .client_secret(fake.client_secret())
        .timeout(Duration::from_secs(5))
        .build()?;
    println!("token source: {source:?}");
    let token = source.fetch().await?;
    println!("got a token: {token:?}");

    // A business call with `Authorization: Bearer <token>`.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::post(fake.demo_url())
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::AUTHORIZATION,
            token.header_value().expect("checked").clone(),
        )
        .body(Full::new(Bytes::from_static(
            br#"{"code": "test", "name": "demo"}"#,
        )))?;
    let response = client.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!(
        "POST /api/demo -> {status}: {}",
        String::from_utf8_lossy(&body)
    );
    println!("token calls made: {}", fake.token_calls());
    Ok(())
}
