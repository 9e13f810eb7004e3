//! The layer in a tonic client stack, against a real tonic server on 127.0.0.1 whose interceptor
//! checks the token. Hand-written prost messages; no protoc.

mod common;

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use besender_auth::{BesenderAuthLayer, ReplayBody};
use common::{
    grpc_echo::{echo, start_echo_server},
    source::TestSource,
};
use tonic::{
    Code, Status,
    transport::{Channel, Endpoint},
};
use tower::ServiceBuilder;

/// The server's view: which tokens it refuses, and how many calls reached the interceptor.
#[derive(Clone, Default)]
struct AuthState {
    revoked: Arc<Mutex<HashSet<String>>>,
    calls: Arc<AtomicU64>,
}

impl AuthState {
    fn check(&self, request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if request.metadata().contains_key("x-deny") {
            return Err(Status::permission_denied("not allowed"));
        }
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("no token"))?;
        if !token.starts_with("token-") || self.revoked.lock().unwrap().contains(token) {
            return Err(Status::unauthenticated("invalid token"));
        }
        Ok(request)
    }
}

async fn start_server(auth: AuthState) -> String {
    start_echo_server(move |request| auth.check(request)).await
}

/// A tonic client through the layer. tonic's `Channel` takes its own body type: convert under
/// the layer.
fn grpc_client(
    layer: &BesenderAuthLayer,
    channel: Channel,
) -> tonic::client::Grpc<
    impl tonic::client::GrpcService<
        tonic::body::Body,
        Error = besender_auth::Error,
        ResponseBody = tonic::body::Body,
    >,
> {
    let stack = ServiceBuilder::new()
        .layer(layer.clone())
        .map_request(|request: http::Request<ReplayBody<tonic::body::Body>>| {
            request.map(tonic::body::Body::new)
        })
        .service(channel);
    tonic::client::Grpc::new(stack)
}

#[tokio::test]
async fn unauthenticated_is_retried_once_with_a_fresh_token_and_permission_denied_is_not() {
    let auth = AuthState::default();
    let url = start_server(auth.clone()).await;
    let channel = Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    let source = TestSource::new(Duration::from_secs(3600), Duration::ZERO);
    let layer = BesenderAuthLayer::new(source.source());
    let mut client = grpc_client(&layer, channel);

    assert_eq!(echo(&mut client, false).await.unwrap(), "hello");
    assert_eq!(source.calls(), 1);

    // The server revokes the token: UNAUTHENTICATED, one refresh, one retry, OK.
    auth.revoked.lock().unwrap().insert("token-1".into());
    assert_eq!(echo(&mut client, false).await.unwrap(), "hello");
    assert_eq!(source.calls(), 2);
    assert_eq!(auth.calls.load(Ordering::SeqCst), 3);
    let stats = layer.stats();
    assert_eq!(
        (stats.refusals, stats.retries, stats.successful_retries),
        (1, 1, 1)
    );

    // PERMISSION_DENIED is not a token problem: returned as is, no refresh, no retry.
    let status = echo(&mut client, true).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(source.calls(), 2);
    assert_eq!(auth.calls.load(Ordering::SeqCst), 4);
    assert_eq!(layer.stats().retries, 1);
}

#[tokio::test]
async fn a_token_no_refresh_can_fix_returns_unauthenticated_after_one_retry() {
    let auth = AuthState::default();
    let url = start_server(auth.clone()).await;
    let channel = Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    // Tokens the server never accepts.
    let layer = BesenderAuthLayer::new(besender_auth::Token::bearer(
        "forged",
        Duration::from_secs(3600),
    ));
    let mut client = grpc_client(&layer, channel);
    let status = echo(&mut client, false).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // A static token refreshes to itself: no retry is sent.
    assert_eq!(auth.calls.load(Ordering::SeqCst), 1);
    assert_eq!(layer.stats().not_retried_no_new_token, 1);
}
