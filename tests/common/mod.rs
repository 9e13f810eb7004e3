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

mod auth_server;
pub mod besender;
pub mod grpc_echo;
pub mod layer;
pub mod recording;
pub mod source;

#[allow(unused_imports)] // each test binary uses its own subset
pub use auth_server::{AuthServer, Seen, hash_bytes};

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
    /// An answer. `chunked` sends the body in pieces without a `Content-Length`; `endless`
    /// sends the body, then never ends it.
    Respond {
        status: StatusCode,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
        chunked: bool,
        endless: bool,
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
            endless: false,
        }
    }

    pub fn with_content_type(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Reply::Respond {
            status: StatusCode::from_u16(status).unwrap(),
            headers: vec![("content-type", content_type.into())],
            body: body.into(),
            chunked: false,
            endless: false,
        }
    }

    pub fn chunked(mut self) -> Self {
        if let Reply::Respond { chunked, .. } = &mut self {
            *chunked = true;
        }
        self
    }

    /// The body, then no end: a server that stops sending half-way, or streams forever.
    pub fn endless(mut self) -> Self {
        if let Reply::Respond { endless, .. } = &mut self {
            *endless = true;
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
        let task = serve(listener, move |parts, body| {
            log.lock().unwrap().push(Captured {
                method: parts.method,
                uri: parts.uri,
                headers: parts.headers,
                body,
            });
            respond(reply.clone())
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

/// Serves HTTP/1.1 and h2c on `listener`: each request's body is read in full, then `handle`
/// answers it.
pub fn serve<F, Fut>(listener: TcpListener, handle: F) -> JoinHandle<()>
where
    F: Fn(http::request::Parts, Bytes) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Frames>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let handle = handle.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        Ok::<_, Infallible>(handle(parts, body).await)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn respond(reply: Reply) -> Response<Frames> {
    match reply {
        Reply::Hang => std::future::pending().await,
        Reply::Respond {
            status,
            headers,
            body,
            chunked,
            endless,
        } => {
            let body = if chunked || endless {
                Frames::streamed(body.chunks(1024).map(Bytes::copy_from_slice), None)
            } else {
                Frames::exact(Bytes::from(body))
            };
            let body = if endless { body.never_ending() } else { body };
            let mut response = Response::new(body);
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

/// A body of ready frames, handed out in order, that reports its end once every frame (trailers
/// included) was read. An `exact` body declares its size (the data still to come), so hyper
/// sends a `Content-Length`; otherwise its size is unknown and hyper streams it (chunked over
/// HTTP/1.1), as a caller's streaming body would be. A `never_ending` body has no end; an
/// `end_unannounced` one reports its end only once polled past it.
pub struct Frames {
    frames: VecDeque<Frame<Bytes>>,
    exact: bool,
    endless: bool,
    /// Reports its end only once polled past it (`Some(polled past it)`).
    unannounced: Option<bool>,
}

impl Frames {
    /// One data frame, of declared size.
    pub fn exact(body: Bytes) -> Self {
        Self {
            frames: VecDeque::from([Frame::data(body)]),
            exact: true,
            endless: false,
            unannounced: None,
        }
    }

    /// `chunks`, then `trailers`, of unknown size.
    pub fn streamed(chunks: impl IntoIterator<Item = Bytes>, trailers: Option<HeaderMap>) -> Self {
        let mut frames: VecDeque<_> = chunks.into_iter().map(Frame::data).collect();
        frames.extend(trailers.map(Frame::trailers));
        Self {
            frames,
            exact: false,
            endless: false,
            unannounced: None,
        }
    }

    /// These frames, then nothing, ever: the body stays open (of unknown size).
    pub fn never_ending(mut self) -> Self {
        self.exact = false;
        self.endless = true;
        self
    }

    /// These frames, reporting the end only once polled past it, as a proxied chunked upload
    /// or a channel does: a body that is empty from the start still looks like a body.
    pub fn end_unannounced(mut self) -> Self {
        self.unannounced = Some(false);
        self
    }

    /// [`streamed`](Self::streamed), from text.
    pub fn new(chunks: &[&'static str], trailers: Option<HeaderMap>) -> Self {
        let chunks = chunks.iter().map(|c| Bytes::from_static(c.as_bytes()));
        Self::streamed(chunks, trailers)
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.frames.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            // Never woken: nothing more will come.
            None if self.endless => Poll::Pending,
            None => {
                if let Some(polled_past_the_end) = &mut self.unannounced {
                    *polled_past_the_end = true;
                }
                Poll::Ready(None)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        if !self.exact {
            return SizeHint::default();
        }
        let data = self.frames.iter().filter_map(Frame::data_ref);
        SizeHint::with_exact(data.map(|d| d.len() as u64).sum())
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && !self.endless && self.unannounced != Some(false)
    }
}

/// A loopback address nothing listens on.
pub async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// A boxed request body. Its error is a concrete type, not `Box<dyn Error>`: a `dyn` type in a
/// body type parameter makes `tokio::spawn(async { client.oneshot(req).await })` fail to
/// compile with any Tower HTTP client ("implementation of `Service` is not general enough",
/// rust-lang/rust#64552), ours or not.
pub type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

pub fn full_body(bytes: impl Into<Bytes>) -> TestBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A streaming body of `len` bytes (unknown size up front) sent in 4 KiB chunks by a task, which
/// sends the first chunk, then awaits `after_first` before sending the rest. Returns the body
/// and the bytes it carries.
pub fn streaming_body(
    len: usize,
    after_first: impl std::future::Future<Output = ()> + Send + 'static,
) -> (TestBody, Bytes) {
    let content: Bytes = (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(2);
    let chunks: Vec<Bytes> = content.chunks(4096).map(Bytes::copy_from_slice).collect();
    tokio::spawn(async move {
        let mut chunks = chunks.into_iter();
        if let Some(first) = chunks.next() {
            if tx.send_data(first).await.is_err() {
                return;
            }
        }
        after_first.await;
        for chunk in chunks {
            if tx.send_data(chunk).await.is_err() {
                return;
            }
        }
    });
    (body.map_err(|e| match e {}).boxed_unsync(), content)
}

/// A hyper-util legacy client over plain TCP, HTTP/1.1 or HTTP/2 with prior knowledge (h2c).
pub fn hyper_client<B>(
    h2: bool,
) -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, B>
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http()
}

/// A `BesenderTokenSource` with the fake's credentials.
pub fn source_for(
    fake: &besender_auth::testing::FakeBesender,
) -> besender_auth::BesenderTokenSource {
    besender_auth::BesenderTokenSource::builder(fake.base_url())
        .client_id(fake.client_id())
        .client_secret(fake.client_secret())
        .build()
        .unwrap()
}

/// A `BesenderTokenSource` for client 19 with `secret`, against any server at `base`.
pub fn besender_source(base: &str, secret: &str) -> besender_auth::BesenderTokenSource {
    besender_auth::BesenderTokenSource::builder(base)
        .client_id(19)
        .client_secret(secret)
        .build()
        .unwrap()
}

/// Lets spawned tasks run until they block on something.
pub async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// A current-thread runtime on a paused clock, for tests that outlive one runtime.
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}
