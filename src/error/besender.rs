//! [`BesenderError`]: why a call to Besender's token endpoint failed.

use std::{error::Error as StdError, fmt, sync::Arc, time::Duration};

use http::StatusCode;

use super::BoxError;

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
        /// The type the server sent, scrubbed (a server may send the whole header value,
        /// token included) and truncated.
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
                    // As sent (control characters are blanked when it is read): `{:?}` would escape
                    // its quotes and backslashes, and the message would no longer be found in it.
                    write!(f, ", message \"{message}\"")?;
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
