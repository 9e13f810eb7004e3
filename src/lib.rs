//! Tower middleware for the Besender open platform.
//!
//! Besender authenticates API calls with OAuth 2.0 client credentials: `POST
//! /open/api/v1/access_token` with the client ID and secret returns an access token (24 h by
//! default), and every business call carries `Authorization: Bearer <access_token>`.
//! [`BesenderAuthLayer`] does all of it for any Tower HTTP client: it fetches the token once for
//! every caller, refreshes it before it expires, stamps it on each request, and when the server
//! refuses the token (HTTP 401, gRPC `UNAUTHENTICATED`) refreshes it and sends the request again,
//! once, body included.
//!
//! ```
//! use besender_auth::{BesenderAuthLayer, BesenderTokenSource, testing::FakeBesender};
//! use bytes::Bytes;
//! use http::Request;
//! use http_body_util::Full;
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let fake = FakeBesender::start().await?; // a real Besender-compatible server on 127.0.0.1
//! # let (base_url, demo_url) = (fake.base_url(), fake.demo_url());
//! # let (client_id, client_secret) = (fake.client_id(), fake.client_secret());
//! let source = BesenderTokenSource::builder(base_url)
//!     .client_id(client_id)          // e.g. 19: sent as a JSON number; "abc": as a string
//!     .client_secret(client_secret)
//!     .build()?;
//! let client = ServiceBuilder::new()
//!     .layer(BesenderAuthLayer::new(source))
//!     .service(Client::builder(TokioExecutor::new()).build_http());
//!
//! let request = Request::post(demo_url).body(Full::new(Bytes::from_static(b"{}")))?;
//! let response = client.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(()) }
//! ```
//!
//! # How it behaves
//! - **Waiting in `poll_ready`.** A request waits for a token before the inner service is asked
//!   for capacity, so no `Buffer` slot or concurrency permit is held during a fetch.
//! - **One token for everyone.** Clones of the layer and of its services share one
//!   [`TokenCache`]: reading a valid token takes no lock; a cold or expired cache runs exactly one
//!   fetch, on its own task; refreshes start ahead of expiry, in the background; outages back off
//!   and never evict a valid token. See [`TokenCache`].
//! - **One transparent retry.** A refusal ([`classify`]) invalidates exactly the refused token,
//!   gets a fresh one and retries once on a fresh clone of the inner service, replaying the body
//!   ([`ReplayBody`], up to 64 KiB). If the fresh token is the same or the body cannot be
//!   replayed, the original response is returned.
//! - **Or none.** [`BesenderAuthLayer::without_retry`] makes services that only stamp the token
//!   and pass the request on as it is, body type included (a [`NoRetry`] mode, for which the
//!   inner service serves `Request<B>`): a refusal still invalidates the refused token, and
//!   reaches the caller.
//! - **Secrets stay secret.** The client secret and tokens never appear in `Debug`, `Display`,
//!   errors or logs; the header is marked sensitive.
//!
//! # tonic
//! tonic's `Channel` takes its own body type: convert under the layer (without retry, a
//! `BesenderAuth<Channel, NoRetry>` needs no conversion). To keep the stack in a struct, name
//! its type with a function rather than a closure.
//!
//! ```no_run
//! use besender_auth::{BesenderAuth, BesenderAuthLayer, ReplayBody};
//! use tonic::{body::Body, transport::Channel};
//! use tower::{Layer, util::MapRequest};
//!
//! type ToTonic = fn(http::Request<ReplayBody<Body>>) -> http::Request<Body>;
//! type GrpcStack = BesenderAuth<MapRequest<Channel, ToTonic>>;
//!
//! fn stack(channel: Channel, layer: &BesenderAuthLayer) -> GrpcStack {
//!     let to_tonic: ToTonic = |request| request.map(Body::new);
//!     layer.layer(MapRequest::new(channel, to_tonic))
//! }
//!
//! # async fn run(channel: Channel, layer: BesenderAuthLayer) -> Result<(), besender_auth::Error> {
//! let mut grpc = tonic::client::Grpc::new(stack(channel.clone(), &layer)); // or YourClient::new(..)
//! grpc.ready().await?; // before each call: this is where a call waits for a token
//! # let with_status = tower::ServiceBuilder::new()
//! #     .map_err(|e: besender_auth::Error| tonic::Status::unavailable(e.to_string()))
//! #     .service(stack(channel, &layer));
//! # let mut grpc = tonic::client::Grpc::new(with_status);
//! # let _: Result<(), tonic::Status> = grpc.ready().await;
//! # Ok(()) }
//! ```
//!
//! A refusal is `grpc-status: 16` in the response headers (a trailers-only answer, which is what
//! a server's interceptor sends); an `UNAUTHENTICATED` that ends a stream the server had begun
//! answering comes too late to retry, and passes through. When no token can be had, tonic sees
//! [`Error::Token`] and, not knowing the type, reports `Code::Unknown`; to choose the code, map
//! the error above the layer, e.g. `ServiceBuilder::new().map_err(|e: besender_auth::Error|
//! tonic::Status::unavailable(e.to_string())).layer(layer)`. See `examples/grpc.rs`.
//!
//! # Modules
//! - [`Token`] and [`TokenSource`]: what a token is and where it comes from;
//!   [`BesenderTokenSource`] is Besender's token call.
//! - [`TokenCache`]: one token for every caller, fetched once, refreshed ahead of expiry.
//! - [`BesenderAuthLayer`], [`BesenderAuth`], [`ResponseFuture`]: the middleware; [`RetryOnce`]
//!   and [`NoRetry`] its modes, [`NoRetryFuture`] the response future without retry.
//! - [`classify`]: what counts as a refusal. [`ReplayBody`]: the replayable request body.
#![cfg_attr(
    feature = "test-util",
    doc = "- [`testing`] (feature `test-util`): [`FakeBesender`](testing::FakeBesender), a real \
           Besender-compatible server on 127.0.0.1 for your own tests."
)]
#![cfg_attr(
    not(feature = "test-util"),
    doc = "- `testing` (feature `test-util`): `FakeBesender`, a real Besender-compatible server \
           on 127.0.0.1 for your own tests."
)]
//!
//! # Features
//! - `rustls` (default): the built-in client of [`BesenderTokenSource`] speaks TLS (rustls with
//!   its `ring` provider, Mozilla's root certificates), so `https://` token endpoints work as
//!   they are. Without it, pass a TLS-capable client with
//!   [`http_client`](BesenderTokenSourceBuilder::http_client).
//! - `test-util`: the `testing` module.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod classify;
mod deadline;
mod error;
mod future;
mod kept_request;
mod layer;
mod replay;
mod service;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;
mod token;

pub use classify::{ClassifyRefusal, DefaultClassifier};
pub use error::{
    BesenderError, BesenderErrorKind, BoxError, ConfigError, Error, TokenError, TokenErrorKind,
};
pub use future::{NoRetryFuture, ResponseFuture};
pub use layer::{AuthStats, BesenderAuthLayer, NoRetry, RetryOnce};
pub use replay::ReplayBody;
pub use service::BesenderAuth;
pub use token::cache::CacheStats;
pub use token::{
    BesenderTokenSource, BesenderTokenSourceBuilder, ClientId, MAX_TOKEN_LIFETIME, Token,
    TokenCache, TokenCacheBuilder, TokenSource,
};
