//! An axum proxy that forwards its inbound, streaming request body through the layer.

mod common;

use std::sync::Arc;

use axum::{Router, extract::State, http::StatusCode, routing::post};
use besender_auth::{BesenderAuth, BesenderAuthLayer, ReplayBody, testing::FakeBesender};
use bytes::Bytes;
use common::{hyper_client, source_for, streaming_body};
use http::{Request, Response, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use tokio::net::TcpListener;
use tower::ServiceExt;

type Upstream = BesenderAuth<Client<HttpConnector, ReplayBody<axum::body::Body>>>;

#[derive(Clone)]
struct Proxy {
    client: Upstream,
    upstream: String,
}

/// Forwards the request body, as it streams in, to the upstream API.
async fn forward(
    State(proxy): State<Proxy>,
    request: axum::extract::Request,
) -> Result<Response<axum::body::Body>, StatusCode> {
    let upstream = Request::post(&proxy.upstream)
        .header(header::CONTENT_TYPE, "application/json")
        .body(request.into_body())
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let response = proxy
        .client
        .oneshot(upstream)
        .await
        .map_err(|_| StatusCode::BAD_GATEWAY)?;
    Ok(response.map(axum::body::Body::new))
}

async fn start_proxy(fake: &FakeBesender, layer: BesenderAuthLayer) -> String {
    // HTTP/2 upstream: the fake answers refusals before reading the body, which HTTP/1.1
    // turns into a broken pipe (see layer_http.rs); h2 lets the answer through.
    let client = tower::Layer::layer(&layer, hyper_client(true));
    let app = Router::new()
        .route("/forward", post(forward))
        .with_state(Proxy {
            client,
            upstream: fake.demo_url(),
        });
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/forward")
}

async fn post_streaming(url: &str, len: usize) -> (StatusCode, Bytes, Bytes) {
    let (body, content) = streaming_body(len, async {});
    let request = Request::post(url).body(body).unwrap();
    let response = hyper_client(false).request(request).await.unwrap();
    let status = response.status();
    let echoed = response.into_body().collect().await.unwrap().to_bytes();
    (status, echoed, content)
}

#[tokio::test]
async fn a_proxy_forwards_streaming_bodies_and_survives_a_revoked_token() {
    let fake = Arc::new(FakeBesender::start().await.unwrap());
    let layer = BesenderAuthLayer::new(source_for(&fake));
    let url = start_proxy(&fake, layer.clone()).await;

    let (status, echoed, sent) = post_streaming(&url, 16 * 1024).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echoed, sent);

    fake.revoke_all();
    let (status, echoed, sent) = post_streaming(&url, 16 * 1024).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the refusal was handled inside the proxy"
    );
    assert_eq!(echoed, sent, "the streamed body was replayed intact");
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(layer.stats().successful_retries, 1);
}
