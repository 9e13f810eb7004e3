//! gRPC: a tonic `Channel` under the layer as it is, with no body conversion.

use super::*;
use crate::common::grpc_echo::{self, start_echo_server};

/// The server's interceptor: records the token of every call, denies calls marked `x-deny`
/// (`PERMISSION_DENIED`), refuses revoked tokens (`UNAUTHENTICATED`).
#[derive(Clone, Default)]
struct AuthState {
    revoked: Arc<Mutex<HashSet<String>>>,
    tokens: Arc<Mutex<Vec<Option<String>>>>,
}

impl AuthState {
    fn check(&self, request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        self.tokens.lock().unwrap().push(token.clone());
        if request.metadata().contains_key("x-deny") {
            return Err(Status::permission_denied("not allowed"));
        }
        let token = token.ok_or_else(|| Status::unauthenticated("no token"))?;
        if !token.starts_with("token-") || self.revoked.lock().unwrap().contains(&token) {
            return Err(Status::unauthenticated("invalid token"));
        }
        Ok(request)
    }

    fn tokens(&self) -> Vec<Option<String>> {
        self.tokens.lock().unwrap().clone()
    }
}

async fn start_grpc_server(auth: AuthState) -> String {
    start_echo_server(move |request| auth.check(request)).await
}

/// The point of the mode: the `Channel` itself under the layer, no `map_request`.
type GrpcStack = BesenderAuth<Channel, NoRetry>;

/// `echo`, bounded against hangs.
async fn echo(client: &mut tonic::client::Grpc<GrpcStack>, deny: bool) -> Result<String, Status> {
    timeout(HANG, grpc_echo::echo(client, deny))
        .await
        .expect("the call hung")
}

#[tokio::test]
async fn a_tonic_channel_as_it_is_unauthenticated_evicts_and_permission_denied_does_not() {
    let auth = AuthState::default();
    let url = start_grpc_server(auth.clone()).await;
    let channel = Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    let (source, layer) = no_retry_layer();
    let stack: GrpcStack = layer.layer(channel);
    let mut client = tonic::client::Grpc::new(stack);

    assert_eq!(echo(&mut client, false).await.unwrap(), "hello");
    assert_eq!(auth.tokens(), [Some("token-1".to_owned())]);

    // The server revokes the token: UNAUTHENTICATED reaches the caller, as the server sent it.
    auth.revoked.lock().unwrap().insert("token-1".into());
    let status = echo(&mut client, false).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "invalid token");
    assert_eq!(auth.tokens().len(), 2, "not retried");
    let stats = layer.stats();
    assert_eq!((stats.refusals, stats.retries), (1, 0));

    // The next call carries a fresh token.
    assert_eq!(echo(&mut client, false).await.unwrap(), "hello");
    assert_eq!(auth.tokens()[2].as_deref(), Some("token-2"));
    assert_eq!(source.calls(), 2);

    // PERMISSION_DENIED is not a token problem: returned, and the token stays.
    let status = echo(&mut client, true).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "not allowed");
    assert_eq!(echo(&mut client, false).await.unwrap(), "hello");
    let tokens = auth.tokens();
    assert_eq!(tokens.len(), 5, "not retried");
    assert_eq!(
        tokens[3].as_deref(),
        Some("token-2"),
        "the denied call's token"
    );
    assert_eq!(
        tokens[4].as_deref(),
        Some("token-2"),
        "kept after the denial"
    );
    assert_eq!(source.calls(), 2);
    let stats = layer.stats();
    assert_eq!((stats.refusals, stats.retries), (1, 0));
}

/// No token: tonic sees the layer's `Error::Token` and reports `Code::Unknown` with its
/// message (the crate docs say so), and no call reaches the server.
#[tokio::test]
async fn a_grpc_call_without_a_token_is_unknown_and_reaches_no_server() {
    let auth = AuthState::default();
    let url = start_grpc_server(auth.clone()).await;
    let channel = Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    let (source, layer) = no_retry_layer();
    source.set_down(true);
    let mut client = tonic::client::Grpc::new(layer.layer(channel));
    let status = echo(&mut client, false).await.unwrap_err();
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(
        status.message().contains("the test token endpoint is down"),
        "{status:?}"
    );
    assert!(auth.tokens().is_empty(), "a call reached the server");
    assert_eq!(source.calls(), 1);
}
