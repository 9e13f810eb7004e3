//! The public types can be shared and sent the way Tower stacks, axum state and tokio tasks need.

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
