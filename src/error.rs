//! Typed errors.
//!
//! Every error here names what failed (the endpoint, the HTTP status, Besender's `code` and
//! `message`) and never contains the client secret or an access token: messages are built only from
//! values we know to be public, and text the server sent back is scrubbed and truncated.

use std::{error::Error as StdError, fmt, sync::Arc, time::Duration};

use http::StatusCode;

/// A type-erased error, as used throughout the Tower ecosystem.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Why a call to Besender's token endpoint failed.
///
/// Returned by [`BesenderTokenSource`](crate::BesenderTokenSource). [`kind`](Self::kind) says what
/// went wrong; [`source`](StdError::source) carries the underlying transport or JSON error where
/// there is one.
///
/// ```
/// use besender_auth::{BesenderError, BesenderErrorKind};
///
/// fn is_bad_credentials(err: &BesenderError) -> bool {
///     matches!(err.kind(), BesenderErrorKind::Rejected { code: Some(401), .. })
/// }
/// ```
pub struct BesenderError {
    endpoint: Arc<str>,
    kind: BesenderErrorKind,
    source: Option<BoxError>,
    retry_after: Option<Duration>,
}

/// What went wrong in a call to Besender's token endpoint; see [`BesenderError`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BesenderErrorKind {
    /// The request could not be completed: connection refused, reset, DNS or TLS failure.
    Transport,
    /// No complete answer arrived within the configured timeout.
    Timeout {
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The endpoint answered with a redirect. Token calls never follow redirects, so that the
    /// client secret is only ever sent to the configured endpoint.
    Redirect {
        /// The redirect status.
        status: StatusCode,
    },
    /// The server refused to issue a token: an HTTP error status, or Besender's envelope `code`
    /// other than 200 (which counts as a refusal even under HTTP 200).
    Rejected {
        /// The HTTP status of the answer.
        status: StatusCode,
        /// Besender's `code`, when the body carried the envelope.
        code: Option<i64>,
        /// Besender's `message`, scrubbed and truncated, when the body carried one.
        message: Option<String>,
    },
    /// The response body was larger than the configured cap.
    BodyTooLarge {
        /// The cap, in bytes.
        limit: usize,
    },
    /// The response body could not be read to its end.
    Body,
    /// A successful answer's body is compressed (`Content-Encoding`), although the request
    /// asked for none (`Accept-Encoding: identity`). (A refusal is `Rejected`, whatever its
    /// body: coded, too large or unreadable.)
    Encoded {
        /// The HTTP status of the answer.
        status: StatusCode,
        /// The `Content-Encoding` the server declared, truncated.
        encoding: String,
    },
    /// The response body is not JSON (for example an HTML error page from a proxy).
    NotJson {
        /// The HTTP status of the answer.
        status: StatusCode,
        /// The `Content-Type` the server declared, if any.
        content_type: Option<String>,
    },
    /// A field the token response must carry is absent.
    MissingField {
        /// The JSON path of the field, e.g. `data.token.access_token`.
        field: &'static str,
    },
    /// A field is present but unusable.
    InvalidField {
        /// The JSON path of the field.
        field: &'static str,
        /// Why it is unusable. Never contains the access token.
        reason: String,
    },
    /// `token_type` is not `Bearer` (compared case-insensitively).
    UnsupportedTokenType {
        /// The type the server sent, truncated.
        token_type: String,
    },
}

impl BesenderError {
    pub(crate) fn new(endpoint: Arc<str>, kind: BesenderErrorKind) -> Self {
        Self {
            endpoint,
            kind,
            source: None,
            retry_after: None,
        }
    }

    pub(crate) fn with_source(mut self, source: BoxError) -> Self {
        self.source = Some(source);
        self
    }

    pub(crate) fn with_retry_after(mut self, wait: Option<Duration>) -> Self {
        self.retry_after = wait;
        self
    }

    /// How long the endpoint asked callers to wait before the next token call, if its refusal
    /// said (`Retry-After`, in seconds or as a date: RFC 9110 §10.2.3, as with 429 and 503).
    /// [`TokenCache`](crate::TokenCache) waits at least this long (at most 10 minutes, and
    /// never past a cached token's usable time) before it calls again, unless a refused token
    /// forces a refresh.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// What went wrong.
    pub fn kind(&self) -> &BesenderErrorKind {
        &self.kind
    }

    /// The token endpoint that was called.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether trying again later may succeed: transport failures, timeouts, HTTP 408/429/5xx
    /// (as the HTTP status, or as Besender's `code` under HTTP 200, which mirrors HTTP statuses)
    /// and unreadable bodies. Bad credentials and malformed answers are not retryable.
    pub fn is_transient(&self) -> bool {
        let transient_status = |status: u16| {
            (500..600).contains(&status)
                || status == StatusCode::TOO_MANY_REQUESTS.as_u16()
                || status == StatusCode::REQUEST_TIMEOUT.as_u16()
        };
        match &self.kind {
            BesenderErrorKind::Transport | BesenderErrorKind::Timeout { .. } => true,
            BesenderErrorKind::Body => true,
            BesenderErrorKind::Rejected { status, code, .. } => {
                transient_status(status.as_u16())
                    || code.is_some_and(|code| u16::try_from(code).is_ok_and(transient_status))
            }
            _ => false,
        }
    }
}

impl fmt::Display for BesenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoint = &self.endpoint;
        match &self.kind {
            BesenderErrorKind::Transport => {
                write!(f, "could not reach the Besender token endpoint {endpoint}")
            }
            BesenderErrorKind::Timeout { after } => write!(
                f,
                "the Besender token endpoint {endpoint} did not answer within {after:?}"
            ),
            BesenderErrorKind::Redirect { status } => write!(
                f,
                "the Besender token endpoint {endpoint} answered with a redirect (HTTP {status}); \
                 token requests never follow redirects"
            ),
            BesenderErrorKind::Rejected {
                status,
                code,
                message,
            } => {
                write!(
                    f,
                    "the Besender token endpoint {endpoint} refused to issue a token: HTTP {status}"
                )?;
                if let Some(code) = code {
                    write!(f, ", code {code}")?;
                }
                if let Some(message) = message {
                    write!(f, ", message {message:?}")?;
                }
                Ok(())
            }
            BesenderErrorKind::BodyTooLarge { limit } => write!(
                f,
                "the Besender token endpoint {endpoint} sent a response larger than the {limit}-byte cap"
            ),
            BesenderErrorKind::Body => write!(
                f,
                "the response body from the Besender token endpoint {endpoint} could not be read"
            ),
            BesenderErrorKind::Encoded { status, encoding } => write!(
                f,
                "the Besender token endpoint {endpoint} answered HTTP {status} with a body in \
                 content-encoding {encoding:?}, although the request accepted only identity"
            ),
            BesenderErrorKind::NotJson {
                status,
                content_type,
            } => {
                write!(
                    f,
                    "the Besender token endpoint {endpoint} answered HTTP {status} with a body that is not JSON"
                )?;
                match content_type {
                    Some(ct) => write!(f, " (content-type {ct:?})"),
                    None => Ok(()),
                }
            }
            BesenderErrorKind::MissingField { field } => {
                write!(f, "the token response from {endpoint} has no `{field}`")
            }
            BesenderErrorKind::InvalidField { field, reason } => write!(
                f,
                "the token response from {endpoint} has an unusable `{field}`: {reason}"
            ),
            BesenderErrorKind::UnsupportedTokenType { token_type } => write!(
                f,
                "the token response from {endpoint} has token_type {token_type:?}; only Bearer is supported"
            ),
        }
    }
}

impl fmt::Debug for BesenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BesenderError")
            .field("endpoint", &self.endpoint)
            .field("kind", &self.kind)
            .field("source", &self.source)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl StdError for BesenderError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

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
