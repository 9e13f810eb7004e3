//! The recovery from a refusal: invalidate the refused token, get a fresh one, take the body
//! back from the first attempt, and make a fresh clone of the inner service ready, or give up
//! and return the refusal.

use std::{
    future::{Future, poll_fn},
    pin::{Pin, pin},
    task::{Context, Poll, ready},
    time::Duration,
};

use http::{HeaderValue, Request};
use tokio::time::Instant;
use tower_service::Service;

use super::Retry;
use crate::{
    deadline::Deadline,
    error::{BoxError, TokenError},
    replay::{ReplayBody, Take},
    token::cache::{Acquire, Lease, LeaseFuture, RefusalCounters},
};

/// A refused request on its way to the retry.
pub(crate) struct Recovery<R, S, B> {
    pub(super) retry: Retry<S, B>,
    /// The refusal (always `Ok`), returned if no retry is possible.
    pub(super) refusal: Option<R>,
    /// A fresh clone of the inner service, made when the retry is about to be sent.
    pub(super) service: Option<S>,
    /// The header value of the refused token, looked up in the cache by its generation (`None`
    /// if the cache has made many tokens since): a fresh token equal to it is no reason to
    /// retry, whatever its generation.
    refused_header: Option<HeaderValue>,
    step: Step<B>,
}

/// The retry as it will be sent: the request, and the token it carries.
pub(super) type RetryRequest<B> = (Request<ReplayBody<B>>, Lease);

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
    /// Waiting for the fresh clone of the inner service to be ready, until `deadline` (made
    /// when it first says `Pending`).
    Ready {
        request: Option<RetryRequest<B>>,
        deadline: Option<Deadline>,
    },
}

impl<R, S, B> Recovery<R, S, B>
where
    S: Service<Request<ReplayBody<B>>> + Clone,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    /// The recovery of `refused`, the response that refused the token `retry`'s request carried.
    pub(super) fn new(retry: Retry<S, B>, refused: R) -> Self {
        Self {
            retry,
            refusal: Some(refused),
            service: None,
            refused_header: None,
            step: Step::Refused,
        }
    }

    /// Drives the recovery to a retry whose service is ready, or to `None`: no retry is
    /// possible, return the original response.
    pub(super) fn poll_recover(&mut self, cx: &mut Context<'_>) -> Poll<Option<RetryRequest<B>>> {
        loop {
            match &mut self.step {
                Step::Refused => {
                    let cache = &self.retry.core.cache;
                    self.refused_header = cache.header_of_generation(self.retry.refused);
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
                            let wait =
                                wait_released(released, self.retry.core.settings.replay_wait);
                            self.step = Step::Body {
                                lease,
                                wait: Some(Box::pin(wait)),
                            };
                        }
                        Take::Held | Take::Refused => return Poll::Ready(self.no_replay()),
                    }
                }
                Step::Ready { request, deadline } => {
                    let core = &self.retry.core;
                    let service = self.service.get_or_insert_with(|| core.fresh_service());
                    match service.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            let retry = request.take().expect("polled after completion");
                            return Poll::Ready(self.still_usable(retry));
                        }
                        Poll::Ready(Err(err)) => {
                            // The refusal is a better answer than a readiness error of the clone.
                            let err: BoxError = err.into();
                            tracing::debug!(error = %err, "refused request not retried: the inner service is not ready");
                        }
                        Poll::Pending => {
                            let wait = core.settings.retry_ready_wait;
                            let deadline = deadline
                                .get_or_insert_with(|| Deadline::new(Instant::now() + wait));
                            // Outside any runtime there is no timer: no wait.
                            if deadline.poll_elapsed(cx).is_pending() {
                                return Poll::Pending;
                            }
                            tracing::debug!(
                                "refused request not retried: the inner service was not ready in time"
                            );
                        }
                    }
                    // The clone is dropped with the recovery, as soon as the refusal is returned.
                    RefusalCounters::bump(&core.cache.refusals().refused_replays);
                    return Poll::Ready(None);
                }
            }
        }
    }

    /// Moves on with a fresh token, if it differs from the refused one. Returns whether the
    /// retry goes on.
    fn got_token(&mut self, fresh: Result<Lease, TokenError>) -> bool {
        match fresh {
            Ok(lease) if !self.is_refused_token(&lease) => {
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

    /// Whether `lease` carries the refused token: the same entry of the cache, or a later one
    /// with the same value (a token endpoint may answer with the token it gave before).
    fn is_refused_token(&self, lease: &Lease) -> bool {
        lease.generation == self.retry.refused
            || self.refused_header.as_ref() == Some(&lease.header)
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
            Ok(Some(fresh)) if !self.is_refused_token(&fresh) => {
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
                self.step = Step::Ready {
                    request: Some(retry),
                    deadline: None,
                };
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
        let mut parts = self.retry.replay.request().to_parts()?;
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
