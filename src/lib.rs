//! Tower middleware for the Besender open platform.
//!
//! Besender authenticates API calls with OAuth 2.0 client credentials: `POST
//! /open/api/v1/access_token` with the client ID and secret returns an access token (24 h by
//! default), and every business call carries `Authorization: Bearer <access_token>`.
//!
//! ```
//! use std::time::Duration;
//! use besender_auth::{BesenderTokenSource, TokenCache, TokenSource};
//! use besender_auth::testing::FakeBesender;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A real Besender-compatible server on 127.0.0.1, for tests and examples.
//! let fake = FakeBesender::start().await?;
//!
//! let source = BesenderTokenSource::builder(fake.base_url())
//!     .client_id(fake.client_id())
//!     .client_secret(fake.client_secret())
//!     .build()?;
//! let cache = TokenCache::new(source);
//! let token = cache.get().await?;
//! assert_eq!(token.token_type(), "Bearer");
//! assert!(token.remaining() > Duration::from_secs(23 * 3600));
//! assert_eq!(fake.token_calls(), 1);
//! # Ok(()) }
//! ```
//!
//! # Modules
//! - [`Token`] and [`TokenSource`]: what a token is and where it comes from;
//!   [`BesenderTokenSource`] is Besender's token call.
//! - [`TokenCache`]: one token for every caller, fetched once, refreshed ahead of expiry.
//! - [`testing`] (feature `test-util`): [`FakeBesender`](testing::FakeBesender).

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod classify;
mod error;
mod future;
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
pub use future::ResponseFuture;
pub use layer::{AuthStats, BesenderAuthLayer};
pub use replay::ReplayBody;
pub use service::BesenderAuth;
pub use token::cache::CacheStats;
pub use token::{
    BesenderTokenSource, BesenderTokenSourceBuilder, ClientId, MAX_TOKEN_LIFETIME, Token,
    TokenCache, TokenCacheBuilder, TokenSource,
};
