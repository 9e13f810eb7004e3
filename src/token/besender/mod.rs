//! Besender's token call: `POST {base}/open/api/v1/access_token`.
//!
//! Request: JSON `{"client_id": 19, "client_secret": "..."}`, with `client_id` sent exactly as
//! configured (a number stays a number, a string stays a string). Answer: the envelope
//! `{code, message, data: {token: {token_type, expires_in, access_token}, userInfo}}`, where a
//! `code` other than 200 is a refusal even under HTTP 200, `token_type` must be present and
//! `Bearer` (in any case), and an absent `expires_in` means 24 h.
//!
//! The call is hardened because it carries the client secret: it follows no redirect, times out
//! (10 s by default), reads at most 64 KiB of response, and refuses plain `http://` except to
//! loopback unless explicitly allowed.

mod builder;
mod redact;
mod response;

pub use builder::BesenderTokenSourceBuilder;

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Uri, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use serde_json::Value;
use tokio::time::Instant;
use tower::{ServiceExt, util::BoxCloneSyncService};

use super::{Token, TokenSource};
use crate::error::{BesenderError, BesenderErrorKind, BoxError};

/// The path of the token endpoint, below the base URL.
pub const TOKEN_PATH: &str = "/open/api/v1/access_token";

type HttpClient =
    BoxCloneSyncService<Request<Full<Bytes>>, Response<UnsyncBoxBody<Bytes, BoxError>>, BoxError>;

/// The client ID, sent back exactly as given: a number as a JSON number, a string as a JSON
/// string. (The document types it a string; its example sends the number `19`.)
#[derive(Clone, PartialEq, Eq)]
pub enum ClientId {
    /// Sent as a JSON number, e.g. `19`: any value of any of Rust's 64-bit (or narrower)
    /// integer types, `u64::MAX` included. (Beyond those, which no real ID is, as its decimal
    /// text.)
    Number(i128),
    /// Sent as a JSON string, e.g. `"abc"`.
    Text(String),
}

impl ClientId {
    fn to_json(&self) -> Value {
        match self {
            ClientId::Number(n) => match (i64::try_from(*n), u64::try_from(*n)) {
                (Ok(n), _) => Value::from(n),
                (_, Ok(n)) => Value::from(n),
                _ => Value::from(n.to_string()),
            },
            ClientId::Text(s) => Value::from(s.as_str()),
        }
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientId::Number(n) => write!(f, "{n}"),
            ClientId::Text(s) => write!(f, "{s:?}"),
        }
    }
}

macro_rules! client_id_from_integer {
    ($($t:ty),*) => {$(
        /// A number as a JSON number.
        impl From<$t> for ClientId {
            fn from(n: $t) -> Self {
                // Infallible for every type listed (`TryFrom` for `usize` and `isize`).
                i128::try_from(n).map_or_else(|_| ClientId::Text(n.to_string()), ClientId::Number)
            }
        }
    )*};
}
client_id_from_integer!(i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);

impl From<&String> for ClientId {
    fn from(s: &String) -> Self {
        ClientId::Text(s.clone())
    }
}

impl From<&str> for ClientId {
    fn from(s: &str) -> Self {
        ClientId::Text(s.to_owned())
    }
}

impl From<String> for ClientId {
    fn from(s: String) -> Self {
        ClientId::Text(s)
    }
}

/// The client secret: kept out of every `Debug` and `Display`.
#[derive(Clone)]
struct ClientSecret(String);

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Fetches tokens from Besender's token endpoint.
///
/// ```no_run
/// use besender_auth::{BesenderTokenSource, TokenSource};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let source = BesenderTokenSource::builder("https://open.example.com")
///     .client_id(19)
///     .client_secret("cAREfCzucJ8h...")
///     .build()?;
/// let token = source.fetch().await?;
/// println!("token valid for {:?}", token.remaining());
/// # Ok(()) }
/// ```
///
/// Cloning is cheap and clones share the HTTP client. Each [`fetch`](TokenSource::fetch) makes one
/// call; caching, single flight and refresh ahead are the job of the
/// [`TokenCache`](crate::TokenCache) that the layer puts in front of it.
#[derive(Clone)]
pub struct BesenderTokenSource {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Arc<str>,
    uri: Uri,
    client_id: ClientId,
    secret: ClientSecret,
    /// The secret and the credential headers' values, to scrub from server text.
    redactions: redact::Redactions,
    /// The request body, serialized once; it holds the secret, so it is never formatted.
    body: Bytes,
    timeout: Duration,
    max_response_bytes: usize,
    headers: HeaderMap,
    client: HttpClient,
}

impl BesenderTokenSource {
    /// Starts configuring a source for the platform at `base_url` (for example
    /// `https://open.example.com`; a path prefix is kept, and a URL that already ends in
    /// `/open/api/v1/access_token` is used as is).
    pub fn builder(base_url: impl Into<String>) -> BesenderTokenSourceBuilder {
        BesenderTokenSourceBuilder::new(base_url.into())
    }

    /// The full URL of the token endpoint.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The configured client ID.
    pub fn client_id(&self) -> &ClientId {
        &self.inner.client_id
    }
}

impl fmt::Debug for BesenderTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("BesenderTokenSource")
            .field("endpoint", &inner.endpoint)
            .field("client_id", &inner.client_id)
            .field("client_secret", &inner.secret)
            .field("timeout", &inner.timeout)
            .field("max_response_bytes", &inner.max_response_bytes)
            .field("extra_headers", &inner.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TokenSource for BesenderTokenSource {
    type Error = BesenderError;
    type Future = Pin<Box<dyn Future<Output = Result<Token, BesenderError>> + Send>>;

    fn fetch(&self) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { inner.fetch().await })
    }
}

impl Inner {
    fn error(&self, kind: BesenderErrorKind) -> BesenderError {
        BesenderError::new(Arc::clone(&self.endpoint), kind)
    }

    async fn fetch(&self) -> Result<Token, BesenderError> {
        // The lifetime counts from when the request left: the server's clock started no earlier.
        let sent_at = Instant::now();
        match tokio::time::timeout(self.timeout, self.exchange(sent_at)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(self.error(BesenderErrorKind::Timeout {
                after: self.timeout,
            })),
        }
    }

    async fn exchange(&self, sent_at: Instant) -> Result<Token, BesenderError> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.extend(self.headers.clone());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        // Without it any coding is acceptable (RFC 9110 §12.5.3), and we read only plain JSON.
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );

        tracing::debug!(endpoint = %self.endpoint, "requesting a Besender access token");
        let response = self
            .client
            .clone()
            .oneshot(request)
            .await
            .map_err(|err: BoxError| self.error(BesenderErrorKind::Transport).with_source(err))?;
        let (parts, body) = response.into_parts();
        let status = parts.status;
        if status.is_redirection() {
            return Err(self.error(BesenderErrorKind::Redirect { status }));
        }
        // Only for a success: a refusal is named by its status (and its `Retry-After`), whatever
        // its body.
        let encoding = status.is_success().then(|| {
            parts
                .headers
                .get_all(header::CONTENT_ENCODING)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .map(<[u8]>::trim_ascii)
                .find(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"identity"))
        });
        if let Some(encoding) = encoding.flatten() {
            let encoding = response::echo(&String::from_utf8_lossy(encoding), &self.redactions);
            return Err(self.error(BesenderErrorKind::Encoded { status, encoding }));
        }
        let limit = self.max_response_bytes;
        // A refusal's body is only a detail: too large or unreadable, the refusal is still named
        // by its status, with the wait it asked for.
        let refusal = || {
            self.error(BesenderErrorKind::Rejected {
                status,
                code: None,
                message: None,
            })
            .with_retry_after(retry_after(&parts.headers))
        };
        let too_large = || match status.is_success() {
            true => self.error(BesenderErrorKind::BodyTooLarge { limit }),
            false => refusal(),
        };
        let declared_len = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared_len.is_some_and(|len| len > limit as u64) {
            return Err(too_large());
        }
        let bytes = match read_capped(body, limit).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(too_large()),
            Err(err) if status.is_success() => {
                return Err(self.error(BesenderErrorKind::Body).with_source(err));
            }
            Err(err) => return Err(refusal().with_source(err)),
        };
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let token = response::parse(status, content_type, &bytes, sent_at, &self.redactions)
            .map_err(|(kind, source): response::ParseError| {
                let wait = match kind {
                    BesenderErrorKind::Rejected { .. } => retry_after(&parts.headers),
                    _ => None,
                };
                let err = self.error(kind).with_retry_after(wait);
                match source {
                    Some(source) => err.with_source(source),
                    None => err,
                }
            })?;
        tracing::debug!(
            endpoint = %self.endpoint,
            expires_in = ?token.remaining(),
            "obtained a Besender access token"
        );
        Ok(token)
    }
}

/// The wait a refusal asks for in `Retry-After`: delay-seconds or an HTTP-date (RFC 9110
/// §10.2.3); `None` if absent or unreadable.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits too many for a u64 are a very long wait (the cache caps it).
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Reads `body` to its end, or `None` as soon as it passes `limit` bytes.
async fn read_capped(
    mut body: UnsyncBoxBody<Bytes, BoxError>,
    limit: usize,
) -> Result<Option<Bytes>, BoxError> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if buf.len() + data.len() > limit {
                return Ok(None);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Some(Bytes::from(buf)))
}
