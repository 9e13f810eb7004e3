//! A server that records every request in full (head, body, trailers) and refuses
//! `Bearer token-1`, for the retry-fidelity tests (which send it `Frames` bodies).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use besender_auth::BesenderAuthLayer;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

use super::source::TestSource;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

/// HTTP/1.1 + h2c server: reads each request in full (body and trailers), records it, answers
/// 401 `Bearer error="invalid_token"` to `Bearer token-1`, 200 otherwise.
pub async fn recording_server() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let log = Arc::clone(&log);
                    async move {
                        let (parts, body) = request.into_parts();
                        let collected = body.collect().await.unwrap();
                        let trailers = collected.trailers().cloned();
                        let body = collected.to_bytes();
                        let refused = parts.headers.get(header::AUTHORIZATION)
                            == Some(&HeaderValue::from_static("Bearer token-1"));
                        log.lock().unwrap().push(Seen {
                            version: parts.version,
                            headers: parts.headers,
                            body,
                            trailers,
                        });
                        let mut response = Response::new(Full::new(Bytes::new()));
                        if refused {
                            *response.status_mut() = StatusCode::UNAUTHORIZED;
                            response.headers_mut().insert(
                                header::WWW_AUTHENTICATE,
                                HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                            );
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

pub fn layer() -> (TestSource, BesenderAuthLayer) {
    let source = TestSource::new(Duration::from_secs(3600), Duration::ZERO);
    let layer = BesenderAuthLayer::new(source.source());
    (source, layer)
}

pub fn without_authorization(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = headers
        .iter()
        .filter(|(n, _)| *n != header::AUTHORIZATION)
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    v.sort();
    v
}
