//! Typed errors.
//!
//! Every error here names what failed (the endpoint, the HTTP status, Besender's `code` and
//! `message`) and never contains the client secret or an access token: messages are built only from
//! values we know to be public, and text the server sent back is scrubbed and truncated.

use std::{error::Error as StdError, fmt, sync::Arc, time::Duration};

mod besender;

pub use besender::{BesenderError, BesenderErrorKind};

/// A type-erased error, as used throughout the Tower ecosystem.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A [`BesenderTokenSource`](crate::BesenderTokenSource) configuration that cannot work.
///
/// Returned by the builder's `build()`; the message says which setting is wrong.
#[derive(Debug)]
pub struct ConfigError {
    reason: String,
}

impl ConfigError {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid Besender token source configuration: {}",
            self.reason
        )
    }
}

impl StdError for ConfigError {}

/// Why no access token could be obtained.
///
/// Cheap to clone: while a token endpoint is down, the cache hands the same error to every caller
/// for a short time instead of starting one fetch per caller. The error of the token source
/// (for example a [`BesenderError`]) is available through [`source`](StdError::source) and
/// [`source_as`](Self::source_as).
#[derive(Clone)]
pub struct TokenError {
    kind: TokenErrorKind,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

/// What kind of failure a [`TokenError`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenErrorKind {
    /// The token source returned an error; see [`source`](StdError::source).
    Source,
    /// The token source did not finish within the cache's fetch timeout.
    Timeout {
        /// The fetch timeout that elapsed.
        after: Duration,
    },
    /// The token source returned a token that cannot be used (already expired, or not a valid
    /// header value).
    UnusableToken {
        /// Why. Never contains the token.
        reason: &'static str,
    },
    /// The task running the fetch was cancelled before it finished, usually because its Tokio
    /// runtime shut down. The next call starts a new fetch.
    Cancelled,
    /// There is no Tokio runtime to run the fetch on.
    NoRuntime,
    /// The token ran out while the service sat ready between `poll_ready` and `call`, and its
    /// refresh had not finished: the request was not sent with a token known to be dead. The
    /// next `poll_ready` waits for the refresh.
    Expired,
}

impl TokenError {
    pub(crate) fn new(kind: TokenErrorKind) -> Self {
        Self { kind, source: None }
    }

    pub(crate) fn from_source(source: BoxError) -> Self {
        Self {
            kind: TokenErrorKind::Source,
            source: Some(Arc::from(source)),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> &TokenErrorKind {
        &self.kind
    }

    /// The token source's own error, if it is of type `E`.
    ///
    /// ```
    /// # use besender_auth::{BesenderError, TokenError};
    /// fn besender_code(err: &TokenError) -> Option<&BesenderError> {
    ///     err.source_as::<BesenderError>()
    /// }
    /// ```
    pub fn source_as<E: StdError + 'static>(&self) -> Option<&E> {
        self.source.as_deref()?.downcast_ref::<E>()
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("could not obtain an access token: ")?;
        match &self.kind {
            // The source's own message is the useful part; it is repeated by `source()` for
            // callers that walk the chain and need the typed error.
            TokenErrorKind::Source => match &self.source {
                Some(source) => write!(f, "{source}"),
                None => f.write_str("the token source failed"),
            },
            TokenErrorKind::Timeout { after } => {
                write!(f, "the token source did not finish within {after:?}")
            }
            TokenErrorKind::UnusableToken { reason } => {
                write!(f, "the token source returned an unusable token: {reason}")
            }
            TokenErrorKind::Cancelled => f.write_str(
                "the token fetch was cancelled before it finished (did its Tokio runtime shut down?)",
            ),
            TokenErrorKind::NoRuntime => f.write_str("no Tokio runtime is running to fetch it on"),
            TokenErrorKind::Expired => f.write_str(
                "the token ran out after `poll_ready` and its refresh has not finished",
            ),
        }
    }
}

impl fmt::Debug for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl StdError for TokenError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// The error of a [`BesenderAuth`](crate::BesenderAuth) service: which part failed.
///
/// ```
/// use besender_auth::Error;
///
/// fn describe(err: &Error) -> &'static str {
///     match err {
///         Error::Token(_) => "no access token (the token endpoint failed)",
///         Error::Inner(_) => "the request itself failed",
///         _ => "other",
///     }
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// No access token could be obtained; the request was not sent.
    Token(TokenError),
    /// The inner service (the HTTP client) failed.
    Inner(BoxError),
    /// `call` was made without a successful `poll_ready` first (a Tower contract breach); the
    /// request was not sent.
    NotReady,
}

impl Error {
    pub(crate) fn inner(err: impl Into<BoxError>) -> Self {
        Error::Inner(err.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Token(err) => write!(f, "{err}"),
            Error::Inner(err) => write!(f, "the request failed: {err}"),
            Error::NotReady => {
                f.write_str("the service was called before `poll_ready` returned ready")
            }
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Token(err) => Some(err),
            Error::Inner(err) => Some(&**err),
            Error::NotReady => None,
        }
    }
}

impl From<TokenError> for Error {
    fn from(err: TokenError) -> Self {
        Error::Token(err)
    }
}
