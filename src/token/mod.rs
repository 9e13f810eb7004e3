//! Access tokens and where they come from.
//!
//! A [`Token`] is one access token, ready to stamp: its `Authorization` header value is built (and
//! checked) once, when the token is made, and marked sensitive. A [`TokenSource`] fetches tokens:
//! [`BesenderTokenSource`] calls Besender's token endpoint, any async closure returning
//! `Result<Token, E>` is a source, and a `Token` itself is a static source.
//!
//! ```
//! use std::time::Duration;
//! use besender_auth::{Token, TokenSource};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // A closure is a source: the cache calls it whenever it needs a token.
//! let source = || async {
//!     Ok::<_, std::io::Error>(Token::bearer("my-token", Duration::from_secs(3600)))
//! };
//! let token = source.fetch().await.unwrap();
//! assert_eq!(token.token_type(), "Bearer");
//! // Debug output never shows the token itself.
//! assert!(!format!("{token:?}").contains("my-token"));
//!
//! // The closure is called once per fetch, so what its future owns is cloned for each call.
//! let api_key = String::from("key-from-config");
//! let source = move || {
//!     let api_key = api_key.clone();
//!     async move { Ok::<_, std::io::Error>(Token::bearer(api_key, Duration::from_secs(60))) }
//! };
//! assert!(source.fetch().await.is_ok());
//! # }
//! ```

mod besender;
pub(crate) mod cache;

pub use besender::{BesenderTokenSource, BesenderTokenSourceBuilder, ClientId};
pub use cache::{TokenCache, TokenCacheBuilder};

use std::{
    convert::Infallible,
    fmt,
    future::{Future, Ready, ready},
    sync::Arc,
    time::Duration,
};

use http::HeaderValue;
use serde_json::Value;
use tokio::time::Instant;

use crate::error::BoxError;

/// The longest lifetime a token may claim: one year, so that no expiry computation can overflow
/// an [`Instant`]. [`Token::bearer`] clamps longer lifetimes to it; a token endpoint that claims
/// longer (`expires_in`) is refused as implausible (an absolute time sent by mistake, say).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// One access token, ready to be stamped on requests.
///
/// Holds the `Authorization` header value (`Bearer <token>`, marked sensitive so HTTP/2 never
/// indexes it and `Debug` of the header map hides it), the token type, the expiry as a Tokio
/// [`Instant`] (so tests can use Tokio's paused clock) and, for tokens from Besender, the
/// `userInfo` object. Cloning is cheap. `Debug` never shows the token.
///
/// Two tokens are the *same token* (for [`TokenCache::invalidate`]) only if one is a clone of the
/// other; two fetches that return the same text are different tokens.
#[derive(Clone)]
pub struct Token {
    inner: Arc<TokenInner>,
}

struct TokenInner {
    /// `Bearer <token>`, or why the token cannot be a header value. Checked when the token is
    /// made, so a bad token is reported by the cache as an error instead of panicking anywhere.
    header: Result<HeaderValue, InvalidToken>,
    token_type: String,
    expires_at: Instant,
    user_info: Option<Value>,
}

/// Why a token cannot be used as an HTTP header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InvalidToken {
    Empty,
    /// Only visible ASCII (0x21..=0x7e) may appear in a bearer token.
    IllegalCharacter,
}

impl InvalidToken {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            InvalidToken::Empty => "the access token is empty",
            InvalidToken::IllegalCharacter => {
                "the access token contains characters that cannot appear in an HTTP header \
                 (only visible ASCII, without spaces, is allowed)"
            }
        }
    }
}

fn bearer_header(token: &str) -> Result<HeaderValue, InvalidToken> {
    if token.is_empty() {
        return Err(InvalidToken::Empty);
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InvalidToken::IllegalCharacter);
    }
    let mut value = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| InvalidToken::IllegalCharacter)?;
    value.set_sensitive(true);
    Ok(value)
}

/// `now + lifetime`, with the lifetime clamped to [`MAX_TOKEN_LIFETIME`].
pub(crate) fn expiry_after(now: Instant, lifetime: Duration) -> Instant {
    now + lifetime.min(MAX_TOKEN_LIFETIME)
}

impl Token {
    /// A bearer token that expires `lifetime` from now (clamped to [`MAX_TOKEN_LIFETIME`]).
    ///
    /// Never panics: a token that cannot go into a header (empty, spaces, control or non-ASCII
    /// characters) is reported as a [`TokenError`](crate::TokenError) when a cache receives it.
    /// Use [`try_bearer`](Self::try_bearer) to check it here instead.
    pub fn bearer(access_token: impl AsRef<str>, lifetime: Duration) -> Self {
        Self::build(
            bearer_header(access_token.as_ref()),
            expiry_after(Instant::now(), lifetime),
        )
    }

    /// Like [`bearer`](Self::bearer), but reports a token that cannot go into a header.
    pub fn try_bearer(
        access_token: impl AsRef<str>,
        lifetime: Duration,
    ) -> Result<Self, crate::TokenError> {
        let token = Self::bearer(access_token, lifetime);
        token.check()?;
        Ok(token)
    }

    /// A bearer token that never expires (in practice: in [`MAX_TOKEN_LIFETIME`]).
    pub fn bearer_static(access_token: impl AsRef<str>) -> Self {
        Self::bearer(access_token, MAX_TOKEN_LIFETIME)
    }

    pub(crate) fn from_parts(
        header: Result<HeaderValue, InvalidToken>,
        expires_at: Instant,
        user_info: Option<Value>,
    ) -> Self {
        Self {
            inner: Arc::new(TokenInner {
                header,
                token_type: "Bearer".to_owned(),
                expires_at,
                user_info,
            }),
        }
    }

    pub(crate) fn check_access_token(access_token: &str) -> Result<HeaderValue, InvalidToken> {
        bearer_header(access_token)
    }

    fn build(header: Result<HeaderValue, InvalidToken>, expires_at: Instant) -> Self {
        Self::from_parts(header, expires_at, None)
    }

    /// Attaches user information (Besender's `userInfo`).
    pub fn with_user_info(self, user_info: Value) -> Self {
        let inner = &self.inner;
        Self::from_parts(inner.header.clone(), inner.expires_at, Some(user_info))
    }

    /// The `Authorization` header value, `Bearer <token>`, marked sensitive; `None` if the token
    /// cannot be a header value.
    pub fn header_value(&self) -> Option<&HeaderValue> {
        self.inner.header.as_ref().ok()
    }

    /// The access token itself. Named so that every place that reads the secret stands out in
    /// review; never log what it returns.
    pub fn expose_access_token(&self) -> Option<&str> {
        let header = self.header_value()?;
        // The header was built from visible ASCII as "Bearer <token>".
        header.to_str().ok()?.strip_prefix("Bearer ")
    }

    /// The token type; always `Bearer` (other types are refused when a token is fetched).
    pub fn token_type(&self) -> &str {
        &self.inner.token_type
    }

    /// When the token expires, on Tokio's clock.
    pub fn expires_at(&self) -> Instant {
        self.inner.expires_at
    }

    /// How long the token remains valid from now (zero once expired).
    pub fn remaining(&self) -> Duration {
        self.inner
            .expires_at
            .saturating_duration_since(Instant::now())
    }

    /// Whether the token's expiry has passed.
    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.inner.expires_at
    }

    /// Besender's `userInfo` object from the token response, if there was one.
    pub fn user_info(&self) -> Option<&Value> {
        self.inner.user_info.as_ref()
    }

    /// Whether `self` and `other` are the same fetched token (one is a clone of the other).
    pub fn same_token(&self, other: &Token) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Whether the token can be stamped and has not expired.
    pub(crate) fn check(&self) -> Result<(), crate::TokenError> {
        use crate::error::{TokenError, TokenErrorKind};
        if let Err(invalid) = &self.inner.header {
            return Err(TokenError::new(TokenErrorKind::UnusableToken {
                reason: invalid.reason(),
            }));
        }
        if self.is_expired() {
            return Err(TokenError::new(TokenErrorKind::UnusableToken {
                reason: "the token has already expired",
            }));
        }
        Ok(())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let access_token = match &self.inner.header {
            Ok(_) => "[redacted]",
            Err(_) => "[invalid]",
        };
        f.debug_struct("Token")
            .field("access_token", &access_token)
            .field("token_type", &self.inner.token_type)
            .field("remaining", &self.remaining())
            .field(
                "user_info",
                &self.inner.user_info.as_ref().map(|_| "[present]"),
            )
            .finish()
    }
}

/// Where tokens come from: one async fetch.
///
/// The cache calls [`fetch`](Self::fetch) on a task of its own and shares the result with every
/// caller waiting for it, so the future must be `Send + 'static` and must not borrow `self`.
/// Implemented for:
/// - [`BesenderTokenSource`]: Besender's token endpoint;
/// - any `Fn() -> Future<Output = Result<Token, E>>` closure, `E: Into<BoxError>`;
/// - [`Token`]: a static token, returned as is;
/// - `Arc<T>` where `T: TokenSource`.
///
/// A fetch should give up on its own after a while; the cache also applies a timeout of its own
/// ([`TokenCacheBuilder::fetch_timeout`]).
pub trait TokenSource: Send + Sync + 'static {
    /// The error a failed fetch returns.
    type Error: Into<BoxError>;
    /// The future [`fetch`](Self::fetch) returns.
    type Future: Future<Output = Result<Token, Self::Error>> + Send + 'static;

    /// Fetches a new token.
    fn fetch(&self) -> Self::Future;
}

impl<F, Fut, E> TokenSource for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Token, E>> + Send + 'static,
    E: Into<BoxError>,
{
    type Error = E;
    type Future = Fut;

    fn fetch(&self) -> Fut {
        self()
    }
}

impl TokenSource for Token {
    type Error = Infallible;
    type Future = Ready<Result<Token, Infallible>>;

    fn fetch(&self) -> Self::Future {
        ready(Ok(self.clone()))
    }
}

impl<T: TokenSource> TokenSource for Arc<T> {
    type Error = T::Error;
    type Future = T::Future;

    fn fetch(&self) -> Self::Future {
        (**self).fetch()
    }
}
