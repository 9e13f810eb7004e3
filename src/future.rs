//! `ResponseFuture`: the first attempt, the recovery from a refusal, and the one retry.
//!
//! ```text
//! First ──response──> refusal? ──no──> done
//!                        │yes
//!                        v
//!                    Recovering: invalidate the refused token, get a fresh one (single flight),
//!                                take the replayable body back from the first attempt,
//!                                make a fresh clone of the inner service ready
//!                        │ any step impossible: the original response
//!                        v
//!                    Retrying ──response──> done (never a second retry)
//! ```

mod no_retry;
mod recovery;

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

pub use self::no_retry::NoRetryFuture;
use self::recovery::Recovery;
use crate::{
    classify::{Classifier, grpc_status},
    error::{BoxError, Error},
    layer::Core,
    replay::{Replay, ReplayBody},
    token::cache::{RefusalCounters, TokenCache},
};

pin_project! {
    /// The response future of [`BesenderAuth`](crate::BesenderAuth) in its default mode
    /// ([`RetryOnce`](crate::RetryOnce); without retry it is a
    /// [`NoRetryFuture`](crate::NoRetryFuture)): `F` is the inner
    /// service's future, `S` the inner service (a retry runs on a fresh clone of it), `B` the
    /// request body.
    ///
    /// It names the inner future as a type parameter rather than `S::Future`, so that futures
    /// holding it stay provably `Send` when `B` contains a `Box<dyn Error>` (rust-lang/rust#64552).
    pub struct ResponseFuture<F, S, B>
    where
        F: Future,
    {
        #[pin]
        state: State<F, S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, B>
    where
        F: Future,
    {
        /// No request was sent.
        Failed { error: Option<Error> },
        /// A request that will not be retried; a refusal still invalidates its token.
        Unretried { #[pin] future: F, refusal: OnRefusal },
        /// The first attempt of a request that may be retried.
        First { #[pin] future: F, retry: Option<Retry<S, B>> },
        /// The first attempt was refused; getting everything ready for the retry. Boxed: only
        /// a refusal allocates it, and every response future stays the inner future and a few
        /// words (a refused response and a clone of the inner service inline would make it
        /// hundreds of bytes, moved with every future).
        Recovering { recovery: Box<Recovery<F::Output, S, B>> },
        /// The one retry, with the token it carries.
        Retrying { #[pin] future: F, refusal: OnRefusal },
    }
}

/// What a response future that will not retry needs if the response is a refusal: with the
/// default classifier no reference count, so that nothing shared is written per request (a
/// custom classifier is one `Arc` clone).
pub(crate) struct OnRefusal {
    pub(crate) classifier: Classifier,
    pub(crate) cache_id: u64,
    pub(crate) generation: u64,
    /// Retry is on, but this request could not be kept for one (its body declared a size over
    /// the cap): a refusal counts as a refused replay too.
    pub(crate) unreplayable: bool,
}

impl OnRefusal {
    /// Whether `response` refuses the token; if so, invalidates the token (by identity).
    #[inline]
    fn check<B>(&self, response: &Response<B>) -> bool {
        let refused = self.classifier.is_refusal(response);
        if refused {
            TokenCache::refused(self.cache_id, self.generation, self.unreplayable);
        }
        refused
    }

    /// The outcome of a request that will not be retried: a response is checked in place (a
    /// refusal invalidates its token), so it is moved once on its way out; an error is the
    /// inner service's.
    #[inline]
    fn settle<B, E: Into<BoxError>>(
        &self,
        result: Result<Response<B>, E>,
    ) -> Result<Response<B>, Error> {
        if let Ok(response) = &result {
            self.check(response);
        }
        result.map_err(Error::inner)
    }
}

/// What a retry needs, kept from `call`: four words, as the head and the body live behind the
/// replay's one pointer (the shared state of a streamed body, or the `KeptRequest` of a body
/// whole in memory).
pub(crate) struct Retry<S, B> {
    /// The request head and body to send again.
    replay: Replay<B>,
    /// The generation of the token the first attempt carried: all that is kept of it, as the
    /// cache looks its value up on refusal (see `Recovery`).
    refused: u64,
    core: Arc<Core<S>>,
}

impl<F: Future, S, B> ResponseFuture<F, S, B> {
    pub(crate) fn failed(error: Error) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
        }
    }

    pub(crate) fn unretried(future: F, refusal: OnRefusal) -> Self {
        Self {
            state: State::Unretried { future, refusal },
        }
    }

    pub(crate) fn first(future: F, retry: Retry<S, B>) -> Self {
        Self {
            state: State::First {
                future,
                retry: Some(retry),
            },
        }
    }
}

impl<S, B> Retry<S, B> {
    pub(crate) fn new(replay: Replay<B>, refused: u64, core: Arc<Core<S>>) -> Self {
        Self {
            replay,
            refused,
            core,
        }
    }
}

impl<F, S, B, ResBody> Future for ResponseFuture<F, S, B>
where
    F: Future<Output = Result<Response<ResBody>, S::Error>>,
    S: Service<Request<ReplayBody<B>>, Future = F> + Clone,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Output = Result<Response<ResBody>, Error>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut state = self.as_mut().project().state;
            match state.as_mut().project() {
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().expect("polled after completion")));
                }
                StateProj::Unretried { future, refusal } => {
                    return Poll::Ready(refusal.settle(ready!(future.poll(cx))));
                }
                StateProj::First { future, retry } => {
                    let response = ready!(future.poll(cx)).map_err(Error::inner)?;
                    let retry = retry.take().expect("polled after completion");
                    let core = &retry.core;
                    if !core.settings.classifier.is_refusal(&response) {
                        return Poll::Ready(Ok(response));
                    }
                    tracing::debug!(status = %response.status(), "token refused; refreshing and retrying once");
                    RefusalCounters::bump(&core.cache.refusals().refusals);
                    state.set(State::Recovering {
                        recovery: Box::new(Recovery::new(retry, Ok(response))),
                    });
                }
                StateProj::Recovering { recovery } => match ready!(recovery.poll_recover(cx)) {
                    None => {
                        let refusal = recovery.refusal.take().expect("polled after completion");
                        // Drops the recovery now, with its clone of the inner service and what
                        // that clone holds or queued for (a permit), whether or not the caller
                        // keeps this finished future; polling it again panics, as it should.
                        state.set(State::Failed { error: None });
                        return Poll::Ready(refusal.map_err(Error::inner));
                    }
                    Some((request, lease)) => {
                        let core = &recovery.retry.core;
                        RefusalCounters::bump(&core.cache.refusals().retries);
                        let refusal = core.on_refusal(lease.generation);
                        let service = recovery.service.as_mut();
                        let future = service.expect("poll_recover made it ready").call(request);
                        // Drops the refused response and what the retry no longer needs.
                        state.set(State::Retrying { future, refusal });
                    }
                },
                StateProj::Retrying { future, refusal } => {
                    let response = ready!(future.poll(cx)).map_err(Error::inner)?;
                    // Never a second retry; the cache rate-limits the refresh a refusal asks for.
                    if !refusal.check(&response) {
                        // Only a success vouches for the token: a 503, or a gRPC failure in
                        // a trailers-only answer, says nothing of it.
                        let accepted = response.status().is_success()
                            && grpc_status(response.headers()).is_none_or(|s| s == b"0");
                        TokenCache::retried(refusal.cache_id, refusal.generation, accepted);
                    }
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

impl<F: Future, S, B> fmt::Debug for ResponseFuture<F, S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
