//! The public types can be shared and sent the way Tower stacks, axum state and tokio tasks need,
//! and stay small where a client moves them.

use besender_auth::{
    BesenderAuth, BesenderAuthLayer, BesenderError, BesenderTokenSource, Error, ReplayBody,
    ResponseFuture, Token, TokenCache, TokenError,
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
