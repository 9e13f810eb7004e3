//! `BesenderAuth<S, NoRetry>`: stamps the token and passes the request on as it is.

use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::BesenderAuth;
use crate::{
    error::{BoxError, Error},
    future::NoRetryFuture,
    layer::NoRetry,
};

impl<S, B, ResBody> Service<Request<B>> for BesenderAuth<S, NoRetry>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = Error;
    type Future = NoRetryFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.poll_token_then_inner::<Request<B>>(cx)
    }

    #[inline]
    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let generation = match self.stamp(&mut request) {
            Ok(generation) => generation,
            Err(err) => return NoRetryFuture::failed(err),
        };
        let future = self.inner.call(request);
        NoRetryFuture::sent(future, self.core.on_refusal(generation))
    }
}
