//! Shared fixtures for the integration tests: servers on 127.0.0.1 that are not FakeBesender.
#![allow(dead_code)] // each test binary uses its own subset

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{net::TcpListener, task::JoinHandle};

pub mod source;

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Captured {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the scripted server answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A complete answer. `chunked` sends the body in pieces without a `Content-Length`.
    Respond {
        status: StatusCode,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
        chunked: bool,
    },
    /// Read the request, then never answer.
    Hang,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Reply::Respond {
            status: StatusCode::from_u16(status).unwrap(),
            headers: vec![("content-type", "application/json".into())],
            body: body.into().into_bytes(),
            chunked: false,
        }
    }

    pub fn with_content_type(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Reply::Respond {
            status: StatusCode::from_u16(status).unwrap(),
            headers: vec![("content-type", content_type.into())],
            body: body.into(),
            chunked: false,
        }
    }

    pub fn chunked(mut self) -> Self {
        if let Reply::Respond { chunked, .. } = &mut self {
            *chunked = true;
        }
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        if let Reply::Respond { headers, .. } = &mut self {
            headers.push((name, value.into()));
        }
        self
    }
}

/// An HTTP/1.1 + h2c server on 127.0.0.1:0 that records every request and answers each with
/// the same scripted reply.
pub struct ScriptedServer {
    addr: SocketAddr,
    captured: Arc<Mutex<Vec<Captured>>>,
    task: JoinHandle<()>,
}

impl ScriptedServer {
    pub async fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let captured = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&captured);
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let log = Arc::clone(&log);
                let reply = reply.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let log = Arc::clone(&log);
                        let reply = reply.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            log.lock().unwrap().push(Captured {
                                method: parts.method,
                                uri: parts.uri,
                                headers: parts.headers,
                                body,
                            });
                            Ok::<_, Infallible>(respond(reply).await)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            captured,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Captured> {
        self.captured.lock().unwrap().clone()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn respond(reply: Reply) -> Response<Chunks> {
    match reply {
        Reply::Hang => std::future::pending().await,
        Reply::Respond {
            status,
            headers,
            body,
            chunked,
        } => {
            let chunks: VecDeque<Bytes> = if chunked {
                body.chunks(1024).map(Bytes::copy_from_slice).collect()
            } else {
                VecDeque::from([Bytes::from(body)])
            };
            let mut response = Response::new(Chunks {
                chunks,
                exact: !chunked,
            });
            *response.status_mut() = status;
            for (name, value) in headers {
                response
                    .headers_mut()
                    .append(name, HeaderValue::from_str(&value).unwrap());
            }
            response
        }
    }
}

/// A body of ready chunks; with `exact: false` its size is unknown, so hyper sends it chunked.
pub struct Chunks {
    chunks: VecDeque<Bytes>,
    exact: bool,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.chunks.iter().map(|c| c.len() as u64).sum())
        } else {
            SizeHint::default()
        }
    }

    fn is_end_stream(&self) -> bool {
        self.exact && self.chunks.is_empty()
    }
}

/// A loopback address nothing listens on.
pub async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}
