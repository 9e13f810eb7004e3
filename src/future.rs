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

use std::{
    fmt,
    future::{Future, poll_fn},
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use crate::{
    classify::{Classifier, grpc_status},
    deadline::Deadline,
    error::{BoxError, Error, TokenError},
    layer::Core,
    replay::{Replay, ReplayBody, Take},
    token::cache::{Acquire, Lease, LeaseFuture, RefusalCounters, TokenCache},
};

pin_project! {
    /// The response future of [`BesenderAuth`](crate::BesenderAuth): `F` is the inner
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
}

/// What a retry needs, kept from `call`: three words, as the head, the body and the refused
/// token's header live in the replay's shared state.
pub(crate) struct Retry<S, B> {
    /// The request head and body to send again.
    replay: Replay<B>,
    /// The generation of the token the first attempt carried.
    refused: u64,
    core: Arc<Core<S>>,
}

/// A refused request on its way to the retry.
pub(crate) struct Recovery<R, S, B> {
    retry: Retry<S, B>,
    /// The refusal (always `Ok`), returned if no retry is possible.
    refusal: Option<R>,
    /// A fresh clone of the inner service, made when the retry is about to be sent.
    service: Option<S>,
    step: Step<B>,
}

/// The retry as it will be sent: the request, and the token it carries.
type RetryRequest<B> = (Request<ReplayBody<B>>, Lease);

/// Where the recovery is.
// Inside the boxed `Recovery`, made only on the refusal path: the size of its largest variant
// costs nothing per request.
#[allow(clippy::large_enum_variant)]
enum Step<B> {
    /// Just refused: invalidate the refused token, get a fresh one.
    Refused,
    /// Waiting for a fresh token.
    Token(LeaseFuture),
    /// Waiting for the first attempt to let go of the body.
    Body {
        lease: Lease,
        wait: Option<Pin<Box<dyn Future<Output = bool> + Send + Sync>>>,
    },
    /// Waiting for the fresh clone of the inner service to be ready.
    Ready(Option<RetryRequest<B>>),
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

impl<R, S, B> Recovery<R, S, B>
where
    S: Service<Request<ReplayBody<B>>> + Clone,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    /// Drives the recovery to a retry whose service is ready, or to `None`: no retry is
    /// possible, return the original response.
    fn poll_recover(&mut self, cx: &mut Context<'_>) -> Poll<Option<RetryRequest<B>>> {
        loop {
            match &mut self.step {
                Step::Refused => {
                    let cache = &self.retry.core.cache;
                    cache.invalidate_generation(self.retry.refused);
                    let fresh = match cache.acquire() {
                        Acquire::Ready(lease) => Ok(lease),
                        Acquire::Failed(err) => Err(err),
                        Acquire::Pending(wait) => {
                            self.step = Step::Token(wait);
                            continue;
                        }
                    };
                    if !self.got_token(fresh) {
                        return Poll::Ready(None);
                    }
                }
                Step::Token(wait) => {
                    let fresh = ready!(wait.as_mut().poll(cx));
                    if !self.got_token(fresh) {
                        return Poll::Ready(None);
                    }
                }
                Step::Body { lease, wait } => {
                    // Past an unsuccessful wait: one last look, then give up.
                    let may_wait = match wait {
                        Some(waiting) => {
                            let released = ready!(waiting.as_mut().poll(cx));
                            *wait = None;
                            released
                        }
                        None => true,
                    };
                    let lease = lease.clone();
                    match self.retry.replay.take() {
                        Take::Ready(body) => {
                            if !self.prepare(lease, body) {
                                return Poll::Ready(self.no_replay());
                            }
                        }
                        Take::Held if may_wait => {
                            // The server answered before the first attempt finished sending.
                            let released = self.retry.replay.released();
                            let wait = wait_released(released, self.retry.core.replay_wait);
                            self.step = Step::Body {
                                lease,
                                wait: Some(Box::pin(wait)),
                            };
                        }
                        Take::Held | Take::Refused => return Poll::Ready(self.no_replay()),
                    }
                }
                Step::Ready(request) => {
                    let core = &self.retry.core;
                    let service = self.service.get_or_insert_with(|| core.fresh_service());
                    if let Err(err) = ready!(service.poll_ready(cx)) {
                        // The refusal is a better answer than a readiness error of the clone.
                        let err: BoxError = err.into();
                        tracing::debug!(error = %err, "refused request not retried: the inner service is not ready");
                        return Poll::Ready(self.no_replay());
                    }
                    let retry = request.take().expect("polled after completion");
                    return Poll::Ready(self.still_usable(retry));
                }
            }
        }
    }

    /// Moves on with a fresh token, if it differs from the refused one. Returns whether the
    /// retry goes on.
    fn got_token(&mut self, fresh: Result<Lease, TokenError>) -> bool {
        match fresh {
            Ok(lease) if lease.header != self.retry.replay.token() => {
                self.step = Step::Body { lease, wait: None };
                return true;
            }
            // Rate-limited or the server's choice: a retry would be refused again.
            Ok(_) => tracing::debug!("refused request not retried: the token is unchanged"),
            Err(err) => {
                tracing::debug!(error = %err, "refused request not retried: no fresh token")
            }
        }
        RefusalCounters::bump(&self.retry.core.cache.refusals().no_new_token);
        false
    }

    /// The retry with a token that may still be used: the clone may have kept it waiting long
    /// (a `ConcurrencyLimit` held by slow requests), and a token known to be dead is never
    /// sent. Takes the cache's token then, or keeps this one while its time is not up; `None`
    /// (no retry) past it, or if the cache has only the refused token.
    fn still_usable(&self, (mut request, lease): RetryRequest<B>) -> Option<RetryRequest<B>> {
        let cache = &self.retry.core.cache;
        if cache.is_usable(&lease) {
            return Some((request, lease));
        }
        match cache.renew(&lease) {
            Ok(None) => Some((request, lease)),
            Ok(Some(fresh)) if fresh.header != self.retry.replay.token() => {
                let headers = request.headers_mut();
                headers.insert(http::header::AUTHORIZATION, fresh.header.clone());
                Some((request, fresh))
            }
            Ok(Some(_)) | Err(_) => {
                tracing::debug!("refused request not retried: its fresh token ran out");
                RefusalCounters::bump(&cache.refusals().no_new_token);
                None
            }
        }
    }

    /// Builds the retry with `body` and moves on to making the service ready. Returns false if
    /// the request head does not rebuild.
    fn prepare(&mut self, lease: Lease, body: ReplayBody<B>) -> bool {
        match self.request(lease, body) {
            Some(retry) => {
                self.step = Step::Ready(Some(retry));
                true
            }
            None => false,
        }
    }

    /// Gives up on a refusal whose request cannot be sent again.
    fn no_replay(&self) -> Option<RetryRequest<B>> {
        tracing::debug!("refused request not retried: it cannot be sent again");
        RefusalCounters::bump(&self.retry.core.cache.refusals().refused_replays);
        None
    }

    /// The retry: the kept request head with the fresh token, and the replayed body; `None` if
    /// the head does not rebuild.
    fn request(&self, lease: Lease, body: ReplayBody<B>) -> Option<RetryRequest<B>> {
        let mut parts = self.retry.replay.head().to_parts()?;
        parts
            .headers
            .insert(http::header::AUTHORIZATION, lease.header.clone());
        Some((Request::from_parts(parts, body), lease))
    }
}

/// Whether the first attempt let go of the body within `timeout`. On a timer of the runtime
/// polling the wait (a [`Deadline`]: the response future may be polled on another runtime
/// later); outside any runtime, no wait.
async fn wait_released(released: impl Future<Output = ()>, timeout: Duration) -> bool {
    let mut released = pin!(released);
    let mut deadline = Deadline::new(Instant::now() + timeout);
    poll_fn(|cx| {
        if released.as_mut().poll(cx).is_ready() {
            return Poll::Ready(true);
        }
        deadline.poll_elapsed(cx).map(|_| false)
    })
    .await
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
                    // Checked in place, so the response is moved once on its way out.
                    let result = ready!(future.poll(cx));
                    if let Ok(response) = &result {
                        refusal.check(response);
                    }
                    return Poll::Ready(result.map_err(Error::inner));
                }
                StateProj::First { future, retry } => {
                    let response = ready!(future.poll(cx)).map_err(Error::inner)?;
                    let retry = retry.take().expect("polled after completion");
                    let core = &retry.core;
                    if !core.classifier.is_refusal(&response) {
                        return Poll::Ready(Ok(response));
                    }
                    tracing::debug!(status = %response.status(), "token refused; refreshing and retrying once");
                    RefusalCounters::bump(&core.cache.refusals().refusals);
                    state.set(State::Recovering {
                        recovery: Box::new(Recovery {
                            retry,
                            refusal: Some(Ok(response)),
                            service: None,
                            step: Step::Refused,
                        }),
                    });
                }
                StateProj::Recovering { recovery } => match ready!(recovery.poll_recover(cx)) {
                    None => {
                        let refusal = recovery.refusal.take().expect("polled after completion");
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
