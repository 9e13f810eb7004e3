//! `NoRetryFuture`: the response future of a service that never retries.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::Response;
use pin_project_lite::pin_project;

use super::OnRefusal;
use crate::error::{BoxError, Error};

pin_project! {
    /// The response future of [`BesenderAuth<S, NoRetry>`](crate::BesenderAuth): the inner
    /// service's future `F`, and what a refusal needs to invalidate the token it refused.
    pub struct NoRetryFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        /// No request was sent.
        Failed { error: Option<Error> },
        /// The request was sent; a refusal invalidates its token.
        Sent { #[pin] future: F, refusal: OnRefusal },
    }
}

impl<F> NoRetryFuture<F> {
    pub(crate) fn failed(error: Error) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
        }
    }

    pub(crate) fn sent(future: F, refusal: OnRefusal) -> Self {
        Self {
            state: State::Sent { future, refusal },
        }
    }
}

impl<F, E, ResBody> Future for NoRetryFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Failed { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
            StateProj::Sent { future, refusal } => {
                Poll::Ready(refusal.settle(ready!(future.poll(cx))))
            }
        }
    }
}

impl<F> fmt::Debug for NoRetryFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoRetryFuture").finish_non_exhaustive()
    }
}
