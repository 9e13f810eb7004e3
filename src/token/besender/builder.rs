//! `BesenderTokenSourceBuilder`: the source's settings and their checks.

use std::{fmt, net::IpAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tower::{Service, ServiceExt, util::BoxCloneSyncService};

use super::{BesenderTokenSource, ClientId, ClientSecret, HttpClient, Inner, TOKEN_PATH};
use crate::error::{BoxError, ConfigError};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Configures a [`BesenderTokenSource`]; made by [`BesenderTokenSource::builder`].
pub struct BesenderTokenSourceBuilder {
    base_url: String,
    client_id: Option<ClientId>,
    client_secret: Option<ClientSecret>,
    timeout: Duration,
    max_response_bytes: usize,
    headers: HeaderMap,
    header_error: Option<String>,
    allow_insecure_http: bool,
    client: Option<HttpClient>,
}

impl fmt::Debug for BesenderTokenSourceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BesenderTokenSourceBuilder")
            .field(
                "base_url",
                &format_args!("{}", shown_base_url(&self.base_url)),
            )
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("extra_headers", &self.headers.keys().collect::<Vec<_>>())
            .field("allow_insecure_http", &self.allow_insecure_http)
            .field("custom_http_client", &self.client.is_some())
            .finish()
    }
}

impl BesenderTokenSourceBuilder {
    pub(super) fn new(base_url: String) -> Self {
        Self {
            base_url,
            client_id: None,
            client_secret: None,
            timeout: DEFAULT_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            headers: HeaderMap::new(),
            header_error: None,
            allow_insecure_http: false,
            client: None,
        }
    }

    /// The client ID from the Besender platform. `.client_id(19)` is sent as the JSON number
    /// `19`, `.client_id("abc")` as the JSON string `"abc"`. Required.
    pub fn client_id(mut self, client_id: impl Into<ClientId>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// The client secret from the Besender platform. Required. Never shown by `Debug` or in errors.
    pub fn client_secret(mut self, client_secret: impl Into<String>) -> Self {
        self.client_secret = Some(ClientSecret(client_secret.into()));
        self
    }

    /// Gives up on a token call that has not fully answered (connect, headers and body) after
    /// this long. Default 10 s: long enough for a slow endpoint, short enough that a dead one
    /// is reported while callers still wait.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest token response read, in bytes. Default 64 KiB; a real answer is about 2 KiB.
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// Adds a header to every token request (for example a gateway key). `Content-Type` and
    /// `Accept` are always `application/json`. An invalid name or value is reported by
    /// [`build`](Self::build). The value is sent marked sensitive; if the name says it carries
    /// a credential (it contains `auth`, `key`, `token`, `secret`, `pass`, `cookie`, `sign`,
    /// `credential` or `session`) and the value has at least 8 bytes, the value is also
    /// scrubbed from any server text an error quotes, as the client secret is.
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        V: TryInto<HeaderValue>,
    {
        match (name.try_into(), value.try_into()) {
            (Ok(name), Ok(mut value)) => {
                value.set_sensitive(true);
                self.headers.append(name, value);
            }
            (Err(_), _) => self.header_error = Some("an extra header has an invalid name".into()),
            (_, Err(_)) => {
                self.header_error = Some("an extra header has an invalid value".into());
            }
        }
        self
    }

    /// Allows a plain `http://` base URL on a host that is not loopback. Off by default: over
    /// plain HTTP the client secret and every token travel in clear text.
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = allow;
        self
    }

    /// The HTTP client for token calls: any cloneable Tower service from
    /// `Request<Full<Bytes>>` to an HTTP response. Default: a hyper-util legacy client, over
    /// rustls with Mozilla's root certificates for `https://` (feature `rustls`, on by
    /// default). Pass your own for a private certificate authority, a proxy, or `https://`
    /// without the feature.
    ///
    /// The client must not follow redirects: a redirect is reported as
    /// [`BesenderErrorKind::Redirect`](crate::BesenderErrorKind::Redirect) only if it reaches
    /// this source.
    ///
    /// If the source is used from more than one runtime, give it a client that keeps no idle
    /// connection (`pool_max_idle_per_host(0)`, as the built-in one): a kept connection is
    /// driven by a task on the runtime that opened it, and a call reusing it from another stalls
    /// while that runtime is not driven.
    pub fn http_client<C, B>(mut self, client: C) -> Self
    where
        C: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
        C::Error: Into<BoxError>,
        C::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let client = client
            .map_response(|response: Response<B>| {
                response.map(|body| body.map_err(Into::into).boxed_unsync())
            })
            .map_err(Into::into);
        self.client = Some(BoxCloneSyncService::new(client));
        self
    }

    /// Checks the configuration and builds the source.
    ///
    /// # Errors
    /// A [`ConfigError`] if the client ID or secret is missing, the base URL is not an absolute
    /// `http(s)://` URL or carries credentials, a query or a fragment, an extra header is invalid,
    /// the URL is plain `http://` to a host that is not loopback without
    /// [`allow_insecure_http`](Self::allow_insecure_http), or it is `https://` with neither the
    /// `rustls` feature nor a client of your own.
    pub fn build(self) -> Result<BesenderTokenSource, ConfigError> {
        if let Some(reason) = self.header_error {
            return Err(ConfigError::new(reason));
        }
        let client_id = self
            .client_id
            .ok_or_else(|| ConfigError::new("client_id is required"))?;
        let secret = self
            .client_secret
            .ok_or_else(|| ConfigError::new("client_secret is required"))?;
        if secret.0.is_empty() {
            return Err(ConfigError::new("client_secret is empty"));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new("the timeout must be longer than zero"));
        }
        let uri = endpoint_uri(&self.base_url)?;
        let secure = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        if secure && self.client.is_none() && cfg!(not(feature = "rustls")) {
            return Err(ConfigError::new(
                "https:// needs TLS, which the built-in client has only with the `rustls` \
                 feature (on by default); enable it, or pass a TLS-capable client with \
                 `.http_client(..)`",
            ));
        }
        let host = uri.host().unwrap_or_default();
        if !secure && !self.allow_insecure_http && !is_loopback(host) {
            return Err(ConfigError::new(format!(
                "refusing to send the client secret over plain http:// to {host}; use https://, \
                 or `.allow_insecure_http(true)` if the network is trusted"
            )));
        }
        let body = serde_json::json!({
            "client_id": client_id.to_json(),
            "client_secret": secret.0,
        });
        let body = Bytes::from(serde_json::to_vec(&body).expect("a JSON value always serializes"));
        let client = match self.client {
            Some(client) => client,
            None => default_client()?,
        };
        Ok(BesenderTokenSource {
            inner: Arc::new(Inner {
                endpoint: Arc::from(uri.to_string()),
                uri,
                client_id,
                redactions: super::redact::Redactions::new(&secret.0, &self.headers),
                secret,
                body,
                timeout: self.timeout,
                max_response_bytes: self.max_response_bytes,
                headers: self.headers,
                client,
            }),
        })
    }
}

/// The built-in client: hyper-util's, over TLS (rustls, Mozilla's roots) with the `rustls`
/// feature, plain HTTP without it. It keeps no idle connection: a token call comes about once
/// a day, and a kept connection is driven by a task on the runtime that opened it, so a call
/// from another runtime, while that one is alive but not driven (a synchronous wrapper's
/// `current_thread` runtime between `block_on` calls), would reuse it and stall until its
/// timeout.
fn default_client() -> Result<HttpClient, ConfigError> {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_max_idle_per_host(0);
    #[cfg(feature = "rustls")]
    let client = builder.build::<_, Full<Bytes>>(tls::connector()?);
    #[cfg(not(feature = "rustls"))]
    let client = builder.build_http::<Full<Bytes>>();
    let client = client
        .map_response(|response: Response<hyper::body::Incoming>| {
            response.map(|body| body.map_err(Into::into).boxed_unsync())
        })
        .map_err(BoxError::from);
    Ok(BoxCloneSyncService::new(client))
}

#[cfg(feature = "rustls")]
mod tls {
    use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
    use hyper_util::client::legacy::connect::HttpConnector;

    use crate::error::ConfigError;

    /// `https://` with rustls and its `ring` provider, named explicitly (a process-wide default
    /// provider may be missing, or ambiguous when another crate enables a second one), and
    /// Mozilla's root certificates; `http://` as is, for loopback and opted-in hosts. HTTP/2
    /// where the server offers it by ALPN.
    pub(super) fn connector() -> Result<HttpsConnector<HttpConnector>, ConfigError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let tls = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|err| ConfigError::new(format!("TLS setup failed: {err}")))?;
        Ok(tls
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http))
    }
}

/// `base_url` quoted, for errors and `Debug`, only where it cannot hold credentials: a user
/// part, a query or a fragment (even one that does not parse) may carry a password or a secret.
fn shown_base_url(base_url: &str) -> String {
    match base_url.contains(['@', '?', '#']) {
        true => "(not shown: it may carry credentials)".to_owned(),
        false => format!("{base_url:?}"),
    }
}

/// `{base}/open/api/v1/access_token`, checked.
fn endpoint_uri(base_url: &str) -> Result<Uri, ConfigError> {
    let shown = shown_base_url(base_url);
    let bad = |why: &str| ConfigError::new(format!("base URL {shown} {why}"));
    let base: Uri = base_url
        .trim()
        .parse()
        .map_err(|_| bad("is not a valid URL"))?;
    let scheme = base.scheme_str().ok_or_else(|| bad("has no scheme"))?;
    if scheme != "http" && scheme != "https" {
        return Err(bad("must start with http:// or https://"));
    }
    let authority = base.authority().ok_or_else(|| bad("has no host"))?;
    if authority.as_str().contains('@') {
        // Do not echo it: the user part may be a password.
        return Err(ConfigError::new("the base URL must not carry credentials"));
    }
    if base.query().is_some() || base_url.contains('#') {
        return Err(bad("must not have a query or a fragment"));
    }
    let prefix = base.path().trim_end_matches('/');
    let path = if prefix.ends_with(TOKEN_PATH) {
        prefix.to_owned()
    } else {
        format!("{prefix}{TOKEN_PATH}")
    };
    format!("{scheme}://{authority}{path}")
        .parse()
        .map_err(|_| bad("cannot be joined with the token path"))
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_is_joined_below_the_base_path() {
        let uri = |base| endpoint_uri(base).unwrap().to_string();
        assert_eq!(
            uri("http://127.0.0.1:8080"),
            "http://127.0.0.1:8080/open/api/v1/access_token"
        );
        assert_eq!(
            uri("https://open.example.com/gw/"),
            "https://open.example.com/gw/open/api/v1/access_token"
        );
        assert_eq!(
            uri("https://h.example/open/api/v1/access_token"),
            "https://h.example/open/api/v1/access_token"
        );
    }

    #[test]
    fn endpoint_refuses_credentials_queries_and_other_schemes() {
        for base in [
            "ftp://h.example",
            "h.example",
            "https://user:pw@h.example",
            "https://h.example/?a=1",
            "https://h.example/#x",
            "not a url",
        ] {
            assert!(endpoint_uri(base).is_err(), "{base} was accepted");
        }
        let err = endpoint_uri("https://user:pw@h.example").unwrap_err();
        assert!(!err.to_string().contains("pw"));
        // Nor where the URL fails an earlier check, or does not parse at all.
        for base in [
            "ftp://user:hunter2@h.example",
            "user:hunter2@h.example",
            "https://user:hunter 2@h.example",
            "https://user:hunter2#x@h.example",
            "https://h.example/?client_secret=hunter2",
        ] {
            let err = endpoint_uri(base).unwrap_err();
            assert!(
                !format!("{err} {err:?}").contains("hunter"),
                "{base}: {err}"
            );
        }
        // A URL that cannot hold credentials is named.
        let err = endpoint_uri("ftp://h.example").unwrap_err();
        assert!(err.to_string().contains("ftp://h.example"), "{err}");
    }

    #[test]
    fn loopback_hosts_are_recognized() {
        for host in ["127.0.0.1", "127.3.2.1", "[::1]", "localhost", "LOCALHOST"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["10.0.0.1", "example.com", "[::2]", "localhost.example.com"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
