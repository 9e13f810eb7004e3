//! Is this response a refusal of the token? Decided on the status and headers alone, before the
//! response body is read.
//!
//! [`DefaultClassifier`] follows HTTP and RFC 6750:
//! - HTTP 401 is a refusal, unless a `Bearer` challenge in `WWW-Authenticate` says
//!   `error="insufficient_scope"` or `error="invalid_request"` (RFC 6750 §3.1: a new token
//!   cannot fix those). A 401 with no challenge, or with challenges of other schemes only, is a
//!   refusal: the token it was sent with is evicted, so that a revoked token is never sent on
//!   for the rest of its lifetime. The `error` of another scheme's challenge does not count.
//! - `grpc-status: 16` (`UNAUTHENTICATED`) in the response headers is a refusal: gRPC reports
//!   auth failures as HTTP 200 with a trailers-only response. Every other gRPC status, `7`
//!   (`PERMISSION_DENIED`) included, is not. A response that carries `grpc-status` is judged by
//!   it alone, whatever its HTTP status, as gRPC clients do (they map the HTTP status only when
//!   `grpc-status` is absent).
//!
//! Supply your own [`ClassifyRefusal`] (any `Fn(StatusCode, &HeaderMap) -> bool` is one) for an
//! API that signals refusal differently.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, Response, StatusCode, header::WWW_AUTHENTICATE};

/// Decides whether a response means the server refused the access token, so that refreshing
/// it and retrying once may help.
///
/// ```
/// use besender_auth::{BesenderAuthLayer, Token};
/// use http::{HeaderMap, StatusCode};
///
/// // An API that answers 403 to expired tokens.
/// let layer = BesenderAuthLayer::new(Token::bearer_static("abc"))
///     .classifier(|status: StatusCode, _headers: &HeaderMap| status == StatusCode::FORBIDDEN);
/// ```
pub trait ClassifyRefusal: Send + Sync + 'static {
    /// Whether a response with this status and these headers refuses the token.
    fn is_refusal(&self, status: StatusCode, headers: &HeaderMap) -> bool;
}

impl<F> ClassifyRefusal for F
where
    F: Fn(StatusCode, &HeaderMap) -> bool + Send + Sync + 'static,
{
    fn is_refusal(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        self(status, headers)
    }
}

/// The default classifier; see the [module documentation](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

/// gRPC's `UNAUTHENTICATED`.
const GRPC_UNAUTHENTICATED: &[u8] = b"16";

/// A ready name, so that looking it up does not parse a string on every response.
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

impl ClassifyRefusal for DefaultClassifier {
    // Inlined into every response future: nearly every response takes the two cheap checks.
    #[inline]
    fn is_refusal(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        if let Some(grpc_status) = grpc_status(headers) {
            return grpc_status == GRPC_UNAUTHENTICATED;
        }
        status == StatusCode::UNAUTHORIZED && unauthorized_is_refusal(headers)
    }
}

/// The `grpc-status` in `headers` (a trailers-only gRPC answer), trimmed, if there is one.
#[inline]
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(&GRPC_STATUS)
        .map(|status| status.as_bytes().trim_ascii())
}

/// Whether a 401 may be fixed by a new token: not if a `Bearer` challenge says
/// `insufficient_scope` or `invalid_request` (RFC 6750 §3.1), unless another says
/// `invalid_token`. Any other 401 is a refusal, as DESIGN.md decision 8 has it: servers that
/// check bearer tokens often send no challenge, or one of their own scheme (`Token`, `OAuth`),
/// and a 401 that is not a refusal leaves the token it refused cached and sent on until it
/// expires.
#[cold]
fn unauthorized_is_refusal(headers: &HeaderMap) -> bool {
    let mut hopeless = false;
    for value in headers.get_all(WWW_AUTHENTICATE) {
        // Lossy: a realm with obs-text must not hide the challenge it belongs to.
        let value = String::from_utf8_lossy(value.as_bytes());
        for error in bearer_errors(&value) {
            if error.eq_ignore_ascii_case("invalid_token") {
                return true;
            }
            hopeless |= error.eq_ignore_ascii_case("insufficient_scope")
                || error.eq_ignore_ascii_case("invalid_request");
        }
    }
    !hopeless
}

/// The layer's classifier: the default one is matched statically, so it costs no indirect call.
#[derive(Clone)]
pub(crate) enum Classifier {
    Default,
    Custom(Arc<dyn ClassifyRefusal>),
}

impl Classifier {
    #[inline]
    pub(crate) fn is_refusal<B>(&self, response: &Response<B>) -> bool {
        let (status, headers) = (response.status(), response.headers());
        match self {
            Classifier::Default => DefaultClassifier.is_refusal(status, headers),
            Classifier::Custom(custom) => custom.is_refusal(status, headers),
        }
    }
}

/// The `error` parameters of the `Bearer` challenges in one `WWW-Authenticate` value (RFC 9110
/// §11.6.1 challenge syntax, RFC 6750 §3 parameters).
fn bearer_errors(value: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut parser = Parser { rest: value };
    let mut in_bearer = false;
    loop {
        parser.skip(|c| c == ',' || c == ' ' || c == '\t');
        let Some(token) = parser.token() else { break };
        if token.is_empty() {
            // A stray delimiter (`"`, `=`): neither a scheme nor a parameter.
            continue;
        }
        parser.skip(|c| c == ' ' || c == '\t');
        if parser.eat('=') {
            // An auth-param of the current challenge (or token68 padding, which has no name we
            // look for).
            parser.skip(|c| c == ' ' || c == '\t');
            let value = parser.param_value();
            if in_bearer && token.eq_ignore_ascii_case("error") {
                found.push(value);
            }
        } else if token.bytes().all(is_tchar) {
            // A scheme name (or an unpadded token68, taken for another scheme: harmless, as
            // only `Bearer` is looked for).
            in_bearer = token.eq_ignore_ascii_case("bearer");
        }
    }
    found
}

/// RFC 9110 `tchar`: what a scheme name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

struct Parser<'a> {
    rest: &'a str,
}

impl<'a> Parser<'a> {
    fn skip(&mut self, what: impl Fn(char) -> bool) {
        self.rest = self.rest.trim_start_matches(what);
    }

    fn eat(&mut self, c: char) -> bool {
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// An RFC 9110 token (or, leniently, any run of characters up to a delimiter).
    fn token(&mut self) -> Option<&'a str> {
        let end = self
            .rest
            .find([' ', '\t', ',', '=', '"'])
            .unwrap_or(self.rest.len());
        if end == 0 {
            // A stray delimiter: step over it so the parser always advances.
            let mut chars = self.rest.chars();
            chars.next()?;
            self.rest = chars.as_str();
            return Some("");
        }
        let (token, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(token)
    }

    /// A token or a quoted-string, unquoted.
    fn param_value(&mut self) -> String {
        if !self.eat('"') {
            return self.token().unwrap_or_default().to_owned();
        }
        let mut value = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[i + 1..];
                    return value;
                }
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                c => value.push(c),
            }
        }
        self.rest = "";
        value
    }
}

#[cfg(test)]
mod tests;
