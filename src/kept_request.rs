//! `KeptRequest`: what the retry keeps of a request: a compact copy of its head, and the data
//! of a body whole in memory.
//!
//! A retry needs the first attempt's method, URI, version, headers and extensions, but the inner
//! service consumes the request. Cloning `http::request::Parts` is the obvious copy and the
//! expensive one: every header value and URI part of a freshly built request is a `Bytes` whose
//! first clone allocates a shared header for it (measured here: ~190 ns for five headers, more
//! than the rest of the layer's per-call work). Nearly every request succeeds, so the copy is
//! almost always thrown away. This copy writes the URI and every header name and value back to
//! back into one buffer instead, and the head is rebuilt only when a retry is actually sent.
//!
//! The copy lives in one box, with its buffer, so that what the retry keeps moves as one
//! pointer. A dropped copy goes to a spare slot of the thread that drops it, buffer and all,
//! and the next copy made on that thread takes it: the copy usually allocates nothing.

use std::{cell::Cell, fmt};

use bytes::Bytes;

use http::{
    Extensions, HeaderMap, HeaderName, HeaderValue, Method, Uri, Version,
    header::AUTHORIZATION,
    request::Parts,
    uri::{self, Scheme},
};

/// What the retry keeps of a request (see the module documentation): its head without the
/// `Authorization` header (a retry sets its own), and the data of a body whole in memory. One
/// pointer, so that the retry state it goes into is cheap to move (the copy itself is over a
/// hundred bytes).
pub(crate) struct KeptRequest {
    /// `None` only while it is dropped (the box then goes back to the thread's spare slot).
    copy: Option<Box<Copied>>,
}

struct Copied {
    method: Method,
    version: Version,
    extensions: Extensions,
    /// The URI's scheme if it is `http` or `https`: kept as it is, as it owns no memory (any
    /// other scheme is copied to `bytes`).
    standard_scheme: Option<Scheme>,
    /// Scheme (unless standard), authority and path-and-query, as `(start, end)` in `bytes`;
    /// `None` if absent.
    uri: [Option<(u32, u32)>; 3],
    /// The URI parts, then per header: name length (u32), value length (u32), sensitive (u8),
    /// name, value.
    bytes: Vec<u8>,
    headers: usize,
    /// The data of a body whole in memory (see [`KeptRequest::keep`]).
    data: Option<Bytes>,
}

const HEADER_PREFIX: usize = 4 + 4 + 1;

impl KeptRequest {
    /// Copies the head of `request`, but its `Authorization` header; `None` if a part is too
    /// large to encode (then no retry is possible).
    #[inline]
    pub(crate) fn copy<B>(request: &http::Request<B>) -> Option<Self> {
        let uri = request.uri();
        let scheme = uri.scheme_str();
        let standard_scheme = match scheme {
            Some("http") => Some(Scheme::HTTP),
            Some("https") => Some(Scheme::HTTPS),
            _ => None,
        };
        let uri_parts = [
            scheme.filter(|_| standard_scheme.is_none()),
            uri.authority().map(uri::Authority::as_str),
            uri.path_and_query().map(uri::PathAndQuery::as_str),
        ];
        let uri_len: usize = uri_parts.iter().flatten().map(|s| s.len()).sum();
        // One pass over the headers, into a spare copy of this thread's if there is one; a
        // typical header fits the estimate, and the buffer grows (rarely) otherwise.
        let headers = request.headers();
        let mut copy = spare_copy();
        let bytes = &mut copy.bytes;
        bytes.reserve(uri_len + headers.len() * (HEADER_PREFIX + 40));
        let mut copied = 0;
        // Offsets are `u32`, checked once at the end: every one is at most the final length.
        for (range, part) in copy.uri.iter_mut().zip(uri_parts) {
            *range = part.map(|part| {
                let start = bytes.len() as u32;
                bytes.extend_from_slice(part.as_bytes());
                (start, bytes.len() as u32)
            });
        }
        for (name, value) in headers {
            if name == AUTHORIZATION {
                // The retry carries a fresh token, and a Besender token is over a kilobyte:
                // copying it would double the copy and push the buffer past the allocator's
                // per-thread cache.
                continue;
            }
            copied += 1;
            let name = name.as_str().as_bytes();
            let [n0, n1, n2, n3] = (name.len() as u32).to_le_bytes();
            let [v0, v1, v2, v3] = (value.len() as u32).to_le_bytes();
            let sensitive = u8::from(value.is_sensitive());
            bytes.extend_from_slice(&[n0, n1, n2, n3, v0, v1, v2, v3, sensitive]);
            bytes.extend_from_slice(name);
            bytes.extend_from_slice(value.as_bytes());
        }
        if u32::try_from(bytes.len()).is_err() {
            return None;
        }
        copy.headers = copied;
        copy.standard_scheme = standard_scheme;
        copy.method = request.method().clone();
        copy.version = request.version();
        copy.extensions = request.extensions().clone();
        Some(Self { copy: Some(copy) })
    }

    /// Keeps, with the head, the data of a body whole in memory: in the same allocation, so
    /// that a request whose body needs no shared state (see `ReplayBody::first`) keeps
    /// everything for its retry in one pointer.
    #[inline]
    pub(crate) fn keep(&mut self, data: Option<Bytes>) {
        // No `expect` here, unlike `copied`: this runs on every request with a whole body, and
        // a panic path cost 11 instructions there; the copy is always present outside `drop`.
        if let Some(copy) = self.copy.as_deref_mut() {
            copy.data = data;
        }
    }

    /// The body data given to [`keep`](Self::keep).
    pub(crate) fn data(&self) -> Option<&Bytes> {
        self.copied().data.as_ref()
    }

    /// The head as it was copied. `None` only if the copy does not parse back, which cannot
    /// happen for heads built through `http`'s checked constructors.
    pub(crate) fn to_parts(&self) -> Option<Parts> {
        self.copied().to_parts()
    }

    fn copied(&self) -> &Copied {
        self.copy.as_deref().expect("only `drop` takes the copy")
    }
}

impl Copied {
    fn to_parts(&self) -> Option<Parts> {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.version = self.version;
        parts.extensions = self.extensions.clone();
        parts.uri = self.uri()?;
        let mut headers = HeaderMap::try_with_capacity(self.headers).ok()?;
        let mut at = self
            .uri
            .iter()
            .flatten()
            .map(|r| r.1 as usize)
            .max()
            .unwrap_or(0);
        for _ in 0..self.headers {
            let prefix = self.bytes.get(at..at + HEADER_PREFIX)?;
            let name_len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
            let value_len = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
            let sensitive = prefix[8] == 1;
            at += HEADER_PREFIX;
            let name_end = at + name_len as usize;
            let name = HeaderName::from_bytes(self.bytes.get(at..name_end)?).ok()?;
            at = name_end;
            let value_end = at + value_len as usize;
            let mut value = HeaderValue::from_bytes(self.bytes.get(at..value_end)?).ok()?;
            at = value_end;
            value.set_sensitive(sensitive);
            headers.append(name, value);
        }
        parts.headers = headers;
        Some(parts)
    }

    fn uri(&self) -> Option<Uri> {
        let part =
            |i: usize| self.uri[i].map(|(start, end)| &self.bytes[start as usize..end as usize]);
        let mut builder = Uri::builder();
        if let Some(scheme) = &self.standard_scheme {
            builder = builder.scheme(scheme.clone());
        } else if let Some(scheme) = part(0) {
            builder = builder.scheme(scheme);
        }
        if let Some(authority) = part(1) {
            builder = builder.authority(authority);
        }
        if let Some(path_and_query) = part(2) {
            builder = builder.path_and_query(path_and_query);
        }
        builder.build().ok()
    }
}

thread_local! {
    /// A copy freed on this thread, with its buffer, for the next copy made here: nearly every
    /// copy is thrown away unused, and reusing it spares two allocations and two frees per
    /// request.
    static SPARE: Cell<Option<Box<Copied>>> = const { Cell::new(None) };
}

/// Copies whose buffer grew larger than this are freed rather than kept (a head with a large
/// cookie).
const SPARE_MAX: usize = 4096;

/// This thread's spare copy (its buffer cleared; see `Drop`), or a new one.
#[inline]
fn spare_copy() -> Box<Copied> {
    match SPARE.try_with(Cell::take) {
        Ok(Some(copy)) => copy,
        _ => Box::new(Copied {
            method: Method::GET,
            version: Version::HTTP_11,
            extensions: Extensions::new(),
            standard_scheme: None,
            uri: [None; 3],
            bytes: Vec::new(),
            headers: 0,
            data: None,
        }),
    }
}

impl Drop for KeptRequest {
    #[inline]
    fn drop(&mut self) {
        let Some(mut copy) = self.copy.take() else {
            return;
        };
        if copy.bytes.capacity() <= SPARE_MAX {
            // Cleared, not zeroed: what it held is no more exposed than freed memory is. The
            // caller's extensions and the body go now, not when the copy is next used; the
            // rest is overwritten then (a method name over 15 bytes, the one other field that
            // can own memory, is not worth the cost of resetting on every request).
            copy.bytes.clear();
            copy.extensions = Extensions::new();
            copy.data = None;
            let _ = SPARE.try_with(|spare| spare.set(Some(copy)));
        }
    }
}

impl fmt::Debug for KeptRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The headers hold the bearer token: never shown.
        let copy = self.copied();
        f.debug_struct("KeptRequest")
            .field("method", &copy.method)
            .field("version", &copy.version)
            .field("headers", &copy.headers)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
