//! `Tap`: the layer's inner service, right under it. It records every attempt the layer sends
//! (its token, head and declared size, checked as it goes out) and what the layer's response
//! future gets back, and tags the request for the API. It serves any body, so that it sits
//! under the layer in every mode (a `ReplayBody` with retry on or off, the caller's body
//! without retry), and boxes it for what is under it.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::Body;
use http_body_util::BodyExt;
use tower::{BoxError, Service};

use crate::{
    common::recording::without_authorization,
    invariants::Rules,
    ledger::{Delivered, Head, Ledger, Sent},
    mock_api::ResponseTag,
    stack::InnerService,
    tokens::Tokens,
};

/// The header naming a request's id, set by its caller.
pub const ID_HEADER: &str = "x-stress-id";

/// The caller's request extension: a retry must carry extensions over.
#[derive(Clone, Copy, Debug)]
pub struct CallerTag(pub u64);

/// Which attempt of which request the API is answering, and the token it carries.
#[derive(Clone, Debug)]
pub struct AttemptTag {
    pub id: u64,
    /// 1 for the first attempt.
    pub number: u32,
    pub token: String,
}

impl AttemptTag {
    pub fn new(id: u64, number: u32, token: String) -> Self {
        AttemptTag { id, number, token }
    }
}

#[derive(Clone)]
pub struct Tap {
    inner: InnerService,
    ledger: Arc<Ledger>,
    tokens: Arc<Tokens>,
    rules: Arc<Rules>,
}

impl Tap {
    pub fn new(
        inner: InnerService,
        ledger: Arc<Ledger>,
        tokens: Arc<Tokens>,
        rules: Arc<Rules>,
    ) -> Self {
        Tap {
            inner,
            ledger,
            tokens,
            rules,
        }
    }
}

impl<B> Service<Request<B>> for Tap
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<()>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<()>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let id = request
            .headers()
            .get(ID_HEADER)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()?.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        let sent = Sent {
            id,
            usable_until: self.tokens.usable_until(&token),
            token,
            head: Head {
                method: request.method().clone(),
                uri: request.uri().clone(),
                version: request.version(),
                headers: without_authorization(request.headers()),
            },
            exact: request.body().size_hint().exact(),
            tagged: request
                .extensions()
                .get::<CallerTag>()
                .is_some_and(|tag| tag.0 == id),
        };
        let tag = self.ledger.sent(sent, &self.rules);
        let mut request = request.map(|body| body.map_err(Into::into).boxed_unsync());
        request.extensions_mut().insert(tag.clone());
        let future = self.inner.call(request);
        let ledger = Arc::clone(&self.ledger);
        Box::pin(async move {
            let result = future.await;
            // Recorded in the poll that hands the result to the layer's response future.
            let delivered = match &result {
                Ok(response) => match response.extensions().get::<ResponseTag>() {
                    Some(answer) => Delivered::Response(answer.outcome),
                    None => {
                        ledger.violation(format!("request {id}: a response the API never made"));
                        Delivered::Error
                    }
                },
                Err(_) => Delivered::Error,
            };
            ledger.delivered(&tag, delivered);
            result
        })
    }
}
