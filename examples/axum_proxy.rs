//! An axum proxy that streams its inbound request body upstream through the layer.
//!
//! Run with `cargo run --example axum_proxy`. Three servers on 127.0.0.1: `FakeBesender` (the
//! token endpoint), an upstream API that takes uploads with a valid token and refuses others
//! before reading their body, and an axum proxy that forwards each upload, as it streams in,
//! through `BesenderAuthLayer` over a hyper-util client. The example uploads twice, the second
//! time after the platform revoked every token: the proxy's layer gets a fresh token and sends
//! the upload again, replaying what had been sent and streaming the rest, so the uploader never
//! sees the refusal. It never prints a token.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use besender_auth::{
    BesenderAuth, BesenderAuthLayer, BesenderTokenSource, ReplayBody, testing::FakeBesender,
};
use bytes::Bytes;
use http_body_util::{BodyExt, channel::Channel};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

const CHUNKS: usize = 8;
const CHUNK_BYTES: usize = 4096; // 32 KiB in all: under the layer's 64 KiB replay cap

const FNV_START: u32 = 0x811c_9dc5;

/// FNV-1a, so that both ends can show they saw the same bytes.
fn checksum(hash: u32, bytes: &[u8]) -> u32 {
    bytes.iter().fold(hash, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The upstream API: checks the token first and, like most auth middleware, answers 401
/// without reading the body; with a valid token, reads the upload as it streams in.
async fn store(
    State(fake): State<Arc<FakeBesender>>,
    headers: HeaderMap,
    mut body: Body,
) -> Result<String, Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    // Ask the platform whether it still honours this token.
    if !token.is_some_and(|token| fake.accepts_access_token(token)) {
        println!("   upstream: token not accepted -> 401, body left unread");
        let challenge = [(header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)];
        return Err((StatusCode::UNAUTHORIZED, challenge).into_response());
    }
    let (mut bytes, mut sum) = (0, FNV_START);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| StatusCode::BAD_REQUEST.into_response())?;
        if let Some(data) = frame.data_ref() {
            bytes += data.len();
            sum = checksum(sum, data);
        }
    }
    println!("   upstream: stored {bytes} bytes");
    Ok(format!("stored {bytes} bytes, checksum {sum:08x}"))
}

/// The proxy's client: hyper-util's, with the layer in front. Its body type is what axum hands
/// the handler, wrapped by the layer in a `ReplayBody`.
type Upstream = BesenderAuth<Client<HttpConnector, ReplayBody<Body>>>;

/// The proxy: forwards the inbound body, as it streams in, without collecting it first.
async fn forward(
    State((client, url)): State<(Upstream, String)>,
    request: Request,
) -> Result<http::Response<Body>, StatusCode> {
    let upstream = http::Request::post(url)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(request.into_body())
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    match client.oneshot(upstream).await {
        Ok(response) => Ok(response.map(Body::new)),
        Err(err) => {
            println!("   proxy: upstream call failed: {err}");
            Err(StatusCode::BAD_GATEWAY)
        }
    }
}

/// Serves `app` on 127.0.0.1 port 0 and returns its base URL.
async fn serve(app: Router) -> std::io::Result<String> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// Uploads `CHUNKS` chunks to the proxy, one every few milliseconds, and prints the answer.
async fn upload(proxy: &str, round: u8) -> Result<(), Box<dyn std::error::Error>> {
    let chunks: Vec<Bytes> = (0..CHUNKS)
        .map(|i| {
            (0..CHUNK_BYTES)
                .map(|j| (i * 7 + j) as u8 ^ round)
                .collect()
        })
        .collect();
    let sent = chunks
        .iter()
        .fold(FNV_START, |sum, chunk| checksum(sum, chunk));
    // A body that streams in over ~150 ms: the upstream's refusal arrives mid-upload.
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
    tokio::spawn(async move {
        for chunk in chunks {
            if tx.send_data(chunk).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = http::Request::post(format!("{proxy}/upload")).body(body)?;
    let response = client.request(request).await?;
    let status = response.status();
    let answer = response.into_body().collect().await?.to_bytes();
    let answer = String::from_utf8_lossy(&answer);
    println!(
        "uploader: sent {} bytes, checksum {sent:08x}",
        CHUNKS * CHUNK_BYTES
    );
    println!("uploader: POST /upload -> {status}: {answer}");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fake = Arc::new(FakeBesender::start().await?);
    let upstream = serve(
        Router::new()
            .route("/store", post(store))
            .with_state(Arc::clone(&fake)),
    )
    .await?;

    let source = BesenderTokenSource::builder(fake.base_url())
        .client_id(fake.client_id())
        .client_secret(fake.client_secret())
        .build()?;
    let layer = BesenderAuthLayer::new(source);
    // HTTP/2 to the upstream (h2c; axum::serve speaks it): when the upstream refuses before
    // reading the body, HTTP/2 delivers the 401 and ends the stream, so the layer can retry.
    // Over HTTP/1.1 hyper may report the upstream's early close as a send error instead.
    let client = layer.layer(
        Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http(),
    );
    let proxy = serve(
        Router::new()
            .route("/upload", post(forward))
            .with_state((client, format!("{upstream}/store"))),
    )
    .await?;
    println!(
        "token endpoint {}, upstream {upstream}, proxy {proxy}",
        fake.base_url()
    );

    upload(&proxy, 1).await?;

    fake.revoke_all();
    println!("-- the platform revoked every token --");
    upload(&proxy, 2).await?;

    println!(
        "token calls: {}, layer: {:?}",
        fake.token_calls(),
        layer.stats()
    );
    println!("cache: {:?}", layer.cache().stats());
    Ok(())
}
