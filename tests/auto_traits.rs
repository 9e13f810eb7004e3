//! The public types can be shared and sent the way Tower stacks, axum state and tokio tasks need,
//! and stay small where a client moves them.

use std::{convert::Infallible, future::Ready};

use besender_auth::{
    BesenderAuth, BesenderAuthLayer, BesenderError, BesenderTokenSource,
    BesenderTokenSourceBuilder, ConfigError, Error, NoRetry, NoRetryFuture, ReplayBody,
    ResponseFuture, Token, TokenCache, TokenCacheBuilder, TokenError, testing::FakeBesender,
};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use tower::Service;

fn send_sync<T: Send + Sync + 'static>() {}
fn send<T: Send + 'static>() {}

type HyperClient = Client<HttpConnector, ReplayBody<Full<Bytes>>>;

#[test]
fn shared_types_are_send_and_sync() {
    send_sync::<BesenderAuthLayer>();
    send_sync::<BesenderAuth<HyperClient>>();
    send_sync::<TokenCache>();
    send_sync::<Token>();
    send_sync::<BesenderTokenSource>();
    send_sync::<ReplayBody<Full<Bytes>>>();
    send_sync::<Error>();
    send_sync::<TokenError>();
    send_sync::<BesenderError>();
    send_sync::<ConfigError>();
    send_sync::<TokenCacheBuilder>();
    send_sync::<BesenderTokenSourceBuilder>();
    send_sync::<FakeBesender>();
}

fn sync<T: Sync>() {}
fn unpin<T: Unpin>() {}

/// An inner service whose future is `Send`, `Sync` and `Unpin`.
#[derive(Clone)]
struct Plain;

impl Service<Request<ReplayBody<Full<Bytes>>>> for Plain {
    type Response = http::Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<http::Response<()>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<ReplayBody<Full<Bytes>>>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(())))
    }
}

/// As tower-http's futures are: `Sync` and `Unpin` when the inner future is (the retry's wait
/// for the body included).
#[test]
fn the_response_future_is_sync_and_unpin_when_the_inner_future_is() {
    type Future = <BesenderAuth<Plain> as Service<Request<Full<Bytes>>>>::Future;
    sync::<Future>();
    unpin::<Future>();
}

/// An axum proxy's body is `Send` but not `Sync`: its response future is still `Send`, as an
/// axum handler needs.
#[test]
fn the_response_future_of_a_proxy_forwarding_axum_bodies_is_send() {
    type Proxy = Client<HttpConnector, ReplayBody<axum::body::Body>>;
    send::<<BesenderAuth<Proxy> as Service<Request<axum::body::Body>>>::Future>();
}

#[test]
fn the_cache_s_futures_are_send() {
    fn send_value<T: Send>(_: &T) {}
    let cache = TokenCache::new(Token::bearer_static("abc"));
    send_value(&cache.get());
}

#[test]
fn the_response_future_is_send() {
    send::<<BesenderAuth<HyperClient> as Service<Request<Full<Bytes>>>>::Future>();
    send::<
        ResponseFuture<
            <HyperClient as Service<Request<ReplayBody<Full<Bytes>>>>>::Future,
            HyperClient,
            Full<Bytes>,
        >,
    >();
}

/// A client moves the request body and the response future through several futures of its
/// own: what the layer adds to either is copied with every move (README, "Performance").
#[test]
fn the_layer_adds_little_to_what_a_client_moves() {
    use std::mem::size_of;
    type Inner = <HyperClient as Service<Request<ReplayBody<Full<Bytes>>>>>::Future;
    type Outer = <BesenderAuth<HyperClient> as Service<Request<Full<Bytes>>>>::Future;
    // The inner future and a few words: the retry's state is boxed until a refusal.
    assert!(
        size_of::<Outer>() <= size_of::<Inner>() + 64,
        "response future: {} bytes over an inner future of {}",
        size_of::<Outer>(),
        size_of::<Inner>()
    );
    // The caller's body and a tag or two: the first attempt's state lives in the replay's allocation.
    assert!(
        size_of::<ReplayBody<Full<Bytes>>>() <= size_of::<Full<Bytes>>() + 16,
        "body: {} bytes over a body of {}",
        size_of::<ReplayBody<Full<Bytes>>>(),
        size_of::<Full<Bytes>>()
    );
}

/// Without retry, the inner client is built for the caller's own body type; the service is
/// shared and cloned like the default one, and its future is `Send` (for a proxy forwarding
/// axum bodies and for a tonic `Channel` too).
#[test]
fn the_no_retry_service_is_send_sync_and_clone_and_its_future_is_send() {
    fn clone<T: Clone>() {}
    type Plain = Client<HttpConnector, Full<Bytes>>;
    type Proxy = Client<HttpConnector, axum::body::Body>;
    type Channel = tonic::transport::Channel;
    send_sync::<BesenderAuthLayer<NoRetry>>();
    clone::<BesenderAuthLayer<NoRetry>>();
    send_sync::<BesenderAuth<Plain, NoRetry>>();
    clone::<BesenderAuth<Plain, NoRetry>>();
    send::<<BesenderAuth<Plain, NoRetry> as Service<Request<Full<Bytes>>>>::Future>();
    send::<NoRetryFuture<<Plain as Service<Request<Full<Bytes>>>>::Future>>();
    send::<<BesenderAuth<Proxy, NoRetry> as Service<Request<axum::body::Body>>>::Future>();
    send_sync::<BesenderAuth<Channel, NoRetry>>();
    send::<<BesenderAuth<Channel, NoRetry> as Service<Request<tonic::body::Body>>>::Future>();
}
